"""Ranking/distribution losses and assorted tensor layers (fluid 1.4 names, arguments and
defaults): rank_loss, margin_rank_loss, bpr_loss, kldiv_loss, maxout, multiplex, scatter,
reduce_all, reduce_any, where, sampling_id, gaussian_random_batch_size_like,
autoincreased_step_counter."""
from __future__ import annotations

from typing import Sequence

from ...errors import InvalidArgumentError
from ..framework import Variable, convert_dtype, default_main_program, default_startup_program
from ..layer_helper import LayerHelper
from ..ops.misc_ext import REDUCTIONS
from .checks import need_vars

__all__ = ["rank_loss", "margin_rank_loss", "bpr_loss", "kldiv_loss", "maxout", "multiplex", "scatter",
           "reduce_all", "reduce_any", "where", "sampling_id", "gaussian_random_batch_size_like",
           "autoincreased_step_counter"]


def _op(op_type: str, inputs: dict, out_slot: str = "Out", attrs: dict | None = None, dtype: str | None = None,
        extra: Sequence[str] = (), name: str | None = None, stop_gradient: bool = False) -> Variable:
    helper = LayerHelper(op_type, name=name)
    first = next(iter(inputs.values()))
    first = first[0] if isinstance(first, list) else first
    out = helper.create_variable_for_type_inference(dtype or first.dtype, stop_gradient=stop_gradient)
    outs = {out_slot: [out], **{s: [helper.create_variable_for_type_inference(first.dtype, True)] for s in extra}}
    helper.append_op(op_type, {k: v if isinstance(v, list) else [v] for k, v in inputs.items()}, outs, attrs or {})
    return out


def rank_loss(label: Variable, left: Variable, right: Variable, name: str | None = None) -> Variable:
    """RankNet loss [N, 1]: log(1 + exp(left - right)) - label * (left - right)."""
    need_vars("rank_loss", label=label, left=left, right=right)
    return _op("rank_loss", {"Label": label, "Left": left, "Right": right}, name=name)


def margin_rank_loss(label: Variable, left: Variable, right: Variable, margin: float = 0.1,
                     name: str | None = None) -> Variable:
    """max(0, -label * (left - right) + margin), label in {-1, 1}."""
    need_vars("margin_rank_loss", label=label, left=left, right=right)
    return _op("margin_rank_loss", {"Label": label, "Left": left, "Right": right}, attrs={"margin": float(margin)},
               extra=("Activated",), name=name)


def bpr_loss(input: Variable, label: Variable, name: str | None = None) -> Variable:
    """Bayesian personalized ranking loss [N, 1] of scores ``input`` [N, C] for the positive ``label``."""
    need_vars("bpr_loss", input=input, label=label)
    return _op("bpr_loss", {"X": input, "Label": label}, out_slot="Y", name=name)


def kldiv_loss(x: Variable, target: Variable, reduction: str = "mean", name: str | None = None) -> Variable:
    """KL divergence of ``target`` from exp(``x``) (x holds log-probabilities), reduced by
    "none", "batchmean", "mean" or "sum"."""
    need_vars("kldiv_loss", x=x, target=target)
    if reduction not in REDUCTIONS:
        raise InvalidArgumentError(f"kldiv_loss: reduction {reduction!r} is not one of {list(REDUCTIONS)}")
    return _op("kldiv_loss", {"X": x, "Target": target}, out_slot="Loss", attrs={"reduction": reduction}, name=name)


def maxout(x: Variable, groups: int, name: str | None = None) -> Variable:
    """Max over each run of ``groups`` channels of an [N, C, H, W] tensor."""
    need_vars("maxout", x=x)
    return _op("maxout", {"X": x}, attrs={"groups": int(groups)}, name=name)


def multiplex(inputs: Sequence[Variable], index: Variable) -> Variable:
    """Row i of the result is row i of inputs[index[i]]."""
    xs = list(inputs)
    need_vars("multiplex", index=index, **{f"inputs[{i}]": v for i, v in enumerate(xs)})
    if len(xs) < 2:
        raise InvalidArgumentError("multiplex: needs at least two inputs")
    return _op("multiplex", {"X": xs, "Ids": index})


def scatter(input: Variable, index: Variable, updates: Variable, name: str | None = None,
            overwrite: bool = True) -> Variable:
    """A copy of ``input`` with rows ``index`` replaced by ``updates`` (summed when not ``overwrite``)."""
    need_vars("scatter", input=input, index=index, updates=updates)
    return _op("scatter", {"X": input, "Ids": index, "Updates": updates}, attrs={"overwrite": bool(overwrite)},
               name=name)


def _bool_reduce(op_type: str):
    def layer(input: Variable, dim: int | Sequence[int] | None = None, keep_dim: bool = False,
              name: str | None = None) -> Variable:
        need_vars(op_type, input=input)
        dims = [0] if dim is None else ([int(dim)] if isinstance(dim, int) else [int(d) for d in dim])
        return _op(op_type, {"X": input}, attrs={"dim": dims, "keep_dim": bool(keep_dim), "reduce_all": dim is None},
                   dtype="bool", name=name, stop_gradient=True)
    layer.__name__ = op_type
    layer.__doc__ = f"Logical {op_type[7:]} of a bool tensor over ``dim`` (every dim when None)."
    return layer


reduce_all = _bool_reduce("reduce_all")
reduce_any = _bool_reduce("reduce_any")


def where(condition: Variable) -> Variable:
    """The int64 coordinates [K, rank] of the true elements of ``condition``."""
    need_vars("where", condition=condition)
    helper = LayerHelper("where")
    out = helper.create_variable_for_type_inference("int64", stop_gradient=True)
    helper.append_op("where", {"Condition": [condition]}, {"Out": [out]})
    return out


def sampling_id(x: Variable, min: float = 0.0, max: float = 1.0, seed: int = 0, dtype: str = "float32") -> Variable:
    """One int64 column index per row of ``x``, drawn with the row's (unnormalized) probabilities."""
    need_vars("sampling_id", x=x)
    return _op("sampling_id", {"X": x}, attrs={"min": float(min), "max": float(max), "seed": int(seed)},
               dtype="int64", stop_gradient=True)


def gaussian_random_batch_size_like(input: Variable, shape: Sequence[int], input_dim_idx: int = 0,
                                    output_dim_idx: int = 0, mean: float = 0.0, std: float = 1.0, seed: int = 0,
                                    dtype: str = "float32") -> Variable:
    """Normal(mean, std) samples shaped like ``shape`` with the batch dim taken from ``input``."""
    need_vars("gaussian_random_batch_size_like", input=input)
    dt = convert_dtype(dtype)
    return _op("gaussian_random_batch_size_like", {"Input": input},
               attrs={"shape": [int(d) for d in shape], "dtype": dt, "input_dim_idx": int(input_dim_idx),
                      "output_dim_idx": int(output_dim_idx), "mean": float(mean), "std": float(std),
                      "seed": int(seed)}, dtype=dt, stop_gradient=True)


def autoincreased_step_counter(counter_name: str | None = None, begin: int = 1, step: int = 1) -> Variable:
    """A persistable int64 [1] counter (``@STEP_COUNTER@``) that the main program advances by
    ``step`` at the start of every run.  As in fluid 1.4 it starts at ``begin - 1``, so the
    first run reads ``begin - 1 + step`` (``begin`` with the default step of 1)."""
    name = counter_name or "@STEP_COUNTER@"
    block = default_main_program().global_block()
    if block.has_var(name):
        return block.var(name)
    counter = block.create_var(name=name, shape=[1], dtype="int64", persistable=True, stop_gradient=True)
    sblock = default_startup_program().global_block()
    sblock.create_var(name=name, shape=[1], dtype="int64", persistable=True)
    sblock.append_op("fill_constant", {}, {"Out": [name]}, {"shape": [1], "dtype": "int64", "value": float(begin - 1)})
    block._prepend_op("increment", {"X": [counter]}, {"Out": [counter]}, {"step": float(step)})
    return counter
