"""Embedding and LoD sequence layers (fluid 1.4 names and arguments)."""
from __future__ import annotations

from typing import Any, Sequence

from ...errors import InvalidArgumentError
from ..framework import Variable
from ..layer_helper import LayerHelper
from ..ops.sequence import POOL_TYPES
from .checks import need_var

__all__ = ["embedding", "sequence_pool", "sequence_first_step", "sequence_last_step"]


def embedding(input: Variable, size: Sequence[int], is_sparse: bool = False, is_distributed: bool = False,
              padding_idx: int | None = None, param_attr: Any = None, dtype: str = "float32") -> Variable:
    """Look up rows of a [vocabulary, width] table for int64 ids ``input`` [..., 1].

    ``is_sparse`` makes the table's gradient a SelectedRows holding only the
    looked-up rows.  Ids equal to ``padding_idx`` (negative counts from the
    end of the vocabulary) give zero rows and no gradient.  The output keeps
    the ids' LoD.
    """
    need_var("embedding", "input", input)
    if len(size) != 2:
        raise InvalidArgumentError(f"embedding: size must be [vocabulary, width], got {list(size)}")
    vocab = int(size[0])
    if padding_idx is None:
        pad = -1
    else:
        pad = int(padding_idx) if padding_idx >= 0 else vocab + int(padding_idx)
        if not 0 <= pad < vocab:
            raise InvalidArgumentError(
                f"embedding: padding_idx {padding_idx} is outside the vocabulary of {vocab} rows")
    helper = LayerHelper("embedding", param_attr=param_attr)
    w = helper.create_parameter(param_attr, [vocab, int(size[1])], dtype)
    out = helper.create_variable_for_type_inference(dtype)
    helper.append_op("lookup_table", {"Ids": [input], "W": [w]}, {"Out": [out]},
                     {"is_sparse": bool(is_sparse), "is_distributed": bool(is_distributed),
                      "padding_idx": pad, "remote_prefetch": False})
    return out


def sequence_pool(input: Variable, pool_type: str, is_test: bool = False, pad_value: float = 0.0) -> Variable:
    """Pool each sequence of a LoD tensor to one row.

    ``pool_type``: "sum", "average", "sqrt" (sum / sqrt(length)), "max",
    "first" or "last".  Empty sequences give ``pad_value``.
    """
    need_var("sequence_pool", "input", input)
    pt = str(pool_type).upper()
    if pt not in POOL_TYPES:
        raise InvalidArgumentError(
            f"sequence_pool: pool_type {pool_type!r} is not one of {', '.join(p.lower() for p in POOL_TYPES)}")
    helper = LayerHelper("sequence_pool")
    out = helper.create_variable_for_type_inference(input.dtype)
    max_index = helper.create_variable_for_type_inference("int32", stop_gradient=True)
    helper.append_op("sequence_pool", {"X": [input]}, {"Out": [out], "MaxIndex": [max_index]},
                     {"pooltype": pt, "is_test": is_test, "pad_value": float(pad_value)})
    return out


def sequence_first_step(input: Variable) -> Variable:
    """The first row of each sequence."""
    return sequence_pool(input, "first")


def sequence_last_step(input: Variable) -> Variable:
    """The last row of each sequence."""
    return sequence_pool(input, "last")
