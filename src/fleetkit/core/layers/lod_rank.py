"""fluid 1.4's LoD rank-table layers (ops in core/ops/lod_rank.py): ``lod_rank_table``,
``max_sequence_len``, ``lod_tensor_to_array``, ``array_to_lod_tensor``, ``shrink_memory``,
``reorder_lod_tensor_by_rank``.  ``DynamicRNN`` does all of this for you; these are for
loops written by hand with ``While``."""
from __future__ import annotations

from typing import Any

from ...errors import InvalidArgumentError
from ..framework import Variable
from ..layer_helper import LayerHelper
from .checks import need_var

__all__ = ["lod_rank_table", "max_sequence_len", "lod_tensor_to_array", "array_to_lod_tensor", "shrink_memory",
           "reorder_lod_tensor_by_rank"]


def _need_table(layer: str, arg: str, v: Any) -> Variable:
    if need_var(layer, arg, v).type != "lod_rank_table":
        raise InvalidArgumentError(f"{layer}: '{arg}' ('{v.name}') must be a rank table (from lod_rank_table), "
                                   f"it is a {v.type}")
    return v


def lod_rank_table(x: Variable, level: int = 0) -> Variable:
    """The sequences of ``x``'s LoD level ``level`` as (index, length), longest first."""
    need_var("lod_rank_table", "x", x)
    helper = LayerHelper("lod_rank_table")
    table = helper.create_variable(name=f"{helper.name}.out", type="lod_rank_table", stop_gradient=True)
    helper.append_op("lod_rank_table", {"X": [x]}, {"Out": [table]}, {"level": int(level)})
    return table


def max_sequence_len(rank_table: Variable) -> Variable:
    """The longest sequence's length, a one-element int64 tensor."""
    _need_table("max_sequence_len", "rank_table", rank_table)
    helper = LayerHelper("max_sequence_len")
    out = helper.create_variable_for_type_inference("int64", stop_gradient=True)
    helper.append_op("max_sequence_len", {"RankTable": [rank_table]}, {"Out": [out]})
    return out


def lod_tensor_to_array(x: Variable, table: Variable) -> Variable:
    """A tensor array of ``x``'s time steps: element t holds the t-th row of every sequence
    longer than t, in ``table`` order."""
    need_var("lod_tensor_to_array", "x", x)
    _need_table("lod_tensor_to_array", "table", table)
    helper = LayerHelper("lod_tensor_to_array")
    array = helper.create_variable(name=f"{helper.name}.out", type="lod_tensor_array", dtype=x.dtype)
    helper.append_op("lod_tensor_to_array", {"X": [x], "RankTable": [table]}, {"Out": [array]})
    return array


def array_to_lod_tensor(x: Variable, table: Variable) -> Variable:
    """Undo ``lod_tensor_to_array``: one LoD tensor, sequences in their original order."""
    need_var("array_to_lod_tensor", "x", x)
    _need_table("array_to_lod_tensor", "table", table)
    helper = LayerHelper("array_to_lod_tensor")
    out = helper.create_variable_for_type_inference(x.dtype)
    helper.append_op("array_to_lod_tensor", {"X": [x], "RankTable": [table]}, {"Out": [out]})
    return out


def shrink_memory(x: Variable, i: Variable, table: Variable) -> Variable:
    """The first rows (sequences, if ``x`` has LoD) of ``x``: one per sequence longer than step ``i``."""
    need_var("shrink_memory", "x", x)
    need_var("shrink_memory", "i", i)
    _need_table("shrink_memory", "table", table)
    helper = LayerHelper("shrink_memory")
    out = helper.create_variable_for_type_inference(x.dtype)
    helper.append_op("shrink_rnn_memory", {"X": [x], "I": [i], "RankTable": [table]}, {"Out": [out]})
    return out


def reorder_lod_tensor_by_rank(x: Variable, rank_table: Variable) -> Variable:
    """``x``'s sequences (its rows, without LoD) in ``rank_table`` order."""
    need_var("reorder_lod_tensor_by_rank", "x", x)
    _need_table("reorder_lod_tensor_by_rank", "rank_table", rank_table)
    helper = LayerHelper("reorder_lod_tensor_by_rank")
    out = helper.create_variable_for_type_inference(x.dtype)
    helper.append_op("reorder_lod_tensor_by_rank", {"X": [x], "RankTable": [rank_table]}, {"Out": [out]})
    return out
