"""More tensor, comparison and loss layers (fluid 1.4 names, arguments and defaults)."""
from __future__ import annotations

from typing import Any, Sequence

from ...errors import InvalidArgumentError
from ..framework import Variable, convert_dtype
from ..layer_helper import LayerHelper
from .tensor import sums
from .checks import need_var

__all__ = ["cumsum", "reverse", "pad", "unstack", "label_smooth", "sequence_mask", "less_than", "less_equal",
           "greater_than", "greater_equal", "equal", "not_equal", "logical_and", "logical_or", "logical_xor",
           "logical_not", "l2_normalize", "cos_sim", "smooth_l1", "huber_loss", "sum", "increment"]


def _op(op_type: str, inputs: dict, attrs: dict | None = None, out: Variable | None = None,
        dtype: str | None = None, name: str | None = None, extra: tuple[str, ...] = ()) -> Any:
    """Append ``op_type``; its Out (plus ``extra`` stop-gradient outputs); returns Out."""
    helper = LayerHelper(op_type, name=name)
    first = next(iter(inputs.values()))
    if out is None:
        out = helper.create_variable_for_type_inference(dtype or first.dtype)
    outs = {"Out": [out]}
    for slot in extra:
        outs[slot] = [helper.create_variable_for_type_inference(first.dtype, stop_gradient=True)]
    helper.append_op(op_type, {k: [v] for k, v in inputs.items() if v is not None}, outs, attrs or {})
    return out


def cumsum(x: Variable, axis: int | None = None, exclusive: bool | None = None,
           reverse: bool | None = None) -> Variable:
    """Running sums along ``axis`` (default -1); ``exclusive`` leaves each element out,
    ``reverse`` sums from the end."""
    need_var("cumsum", "x", x)
    return _op("cumsum", {"X": x}, {"axis": -1 if axis is None else int(axis), "exclusive": bool(exclusive),
                                    "reverse": bool(reverse)})


def reverse(x: Variable, axis: int | Sequence[int]) -> Variable:
    """``x`` with the order along ``axis`` (an int or a list) reversed."""
    need_var("reverse", "x", x)
    return _op("reverse", {"X": x}, {"axis": [int(axis)] if isinstance(axis, int) else [int(a) for a in axis]})


def pad(x: Variable, paddings: Sequence[int], pad_value: float = 0.0, name: str | None = None) -> Variable:
    """Pad every dim i with paddings[2i] before and paddings[2i+1] after."""
    need_var("pad", "x", x)
    return _op("pad", {"X": x}, {"paddings": [int(p) for p in paddings], "pad_value": float(pad_value)}, name=name)


def unstack(x: Variable, axis: int = 0, num: int | None = None) -> list[Variable]:
    """Split ``x`` into its ``num`` slices along ``axis`` (the dim removed)."""
    need_var("unstack", "x", x)
    n = x.shape[axis] if num is None else int(num)
    if n <= 0:
        raise InvalidArgumentError(f"unstack: dim {axis} of '{x.name}' {list(x.shape)} is unknown; pass num")
    helper = LayerHelper("unstack")
    outs = [helper.create_variable_for_type_inference(x.dtype) for _ in range(n)]
    helper.append_op("unstack", {"X": [x]}, {"Y": outs}, {"axis": int(axis), "num": n})
    return outs


def label_smooth(label: Variable, prior_dist: Variable | None = None, epsilon: float = 0.1,
                 dtype: str = "float32", name: str | None = None) -> Variable:
    """(1 - epsilon) * label + epsilon * prior_dist (uniform when not given), for one-hot labels."""
    need_var("label_smooth", "label", label)
    return _op("label_smooth", {"X": label, "PriorDist": prior_dist}, {"epsilon": float(epsilon)},
               dtype=convert_dtype(dtype), name=name)


def sequence_mask(x: Variable, maxlen: int | None = None, dtype: str = "int64", name: str | None = None) -> Variable:
    """mask[..., j] = j < x[...]: ``maxlen`` columns (default: the longest length)."""
    need_var("sequence_mask", "x", x)
    helper = LayerHelper("sequence_mask", name=name)
    out = helper.create_variable_for_type_inference(convert_dtype(dtype), stop_gradient=True)
    helper.append_op("sequence_mask", {"X": [x]}, {"Y": [out]},
                     {"maxlen": -1 if maxlen is None else int(maxlen), "out_dtype": convert_dtype(dtype)})
    return out


def _compare(op_type: str):
    def layer(x: Variable, y: Variable, cond: Variable | None = None, **kw: Any) -> Variable:
        need_var(op_type, "x", x)
        need_var(op_type, "y", y)
        out = _op(op_type, {"X": x, "Y": y}, {"axis": -1, "force_cpu": bool(kw.get("force_cpu"))},
                  out=cond, dtype="bool")
        out.stop_gradient = True
        return out
    layer.__name__ = op_type
    layer.__doc__ = f"Elementwise ``{op_type}`` as a bool tensor (into ``cond`` if given)."
    return layer


less_than = _compare("less_than")
less_equal = _compare("less_equal")
greater_than = _compare("greater_than")
greater_equal = _compare("greater_equal")
equal = _compare("equal")
not_equal = _compare("not_equal")


def _logical(op_type: str):
    def layer(x: Variable, y: Variable, out: Variable | None = None, name: str | None = None) -> Variable:
        need_var(op_type, "x", x)
        need_var(op_type, "y", y)
        return _op(op_type, {"X": x, "Y": y}, {"axis": -1}, out=out, dtype="bool", name=name)
    layer.__name__ = op_type
    layer.__doc__ = f"Elementwise ``{op_type}`` of two bool tensors."
    return layer


logical_and = _logical("logical_and")
logical_or = _logical("logical_or")
logical_xor = _logical("logical_xor")


def logical_not(x: Variable, out: Variable | None = None, name: str | None = None) -> Variable:
    """Elementwise not of a bool tensor."""
    need_var("logical_not", "x", x)
    return _op("logical_not", {"X": x}, out=out, dtype="bool", name=name)


def l2_normalize(x: Variable, axis: int, epsilon: float = 1e-12, name: str | None = None) -> Variable:
    """x / sqrt(sum(x^2 along axis) + epsilon)."""
    need_var("l2_normalize", "x", x)
    return _op("norm", {"X": x}, {"axis": int(axis), "epsilon": float(epsilon)}, name=name, extra=("Norm",))


def cos_sim(X: Variable, Y: Variable) -> Variable:
    """Cosine similarity [N, 1] of the rows of X with those of Y (or Y's single row)."""
    need_var("cos_sim", "X", X)
    need_var("cos_sim", "Y", Y)
    return _op("cos_sim", {"X": X, "Y": Y}, extra=("XNorm", "YNorm"))


def smooth_l1(x: Variable, y: Variable, inside_weight: Variable | None = None,
              outside_weight: Variable | None = None, sigma: float | None = None) -> Variable:
    """Smooth L1 loss per row [N, 1] (quadratic below 1 / sigma^2, linear above)."""
    need_var("smooth_l1", "x", x)
    need_var("smooth_l1", "y", y)
    return _op("smooth_l1_loss", {"X": x, "Y": y, "InsideWeight": inside_weight, "OutsideWeight": outside_weight},
               {"sigma": 1.0 if sigma is None else float(sigma)}, extra=("Diff",))


def huber_loss(input: Variable, label: Variable, delta: float) -> Variable:
    """Huber loss [N, 1] of [N, 1] predictions: quadratic within ``delta`` of the label, linear outside."""
    need_var("huber_loss", "input", input)
    need_var("huber_loss", "label", label)
    return _op("huber_loss", {"X": input, "Y": label}, {"delta": float(delta)}, extra=("Residual",))


def sum(x: Sequence[Variable] | Variable) -> Variable:
    """Elementwise sum of tensors (fluid's ``layers.sum``; same as ``sums``)."""
    return sums(x if isinstance(x, (list, tuple)) else [x])


def increment(x: Variable, value: float = 1.0, in_place: bool = True) -> Variable:
    """x + value for a one-element counter, written back into ``x`` when ``in_place``."""
    need_var("increment", "x", x)
    helper = LayerHelper("increment")
    out = x if in_place else helper.create_variable_for_type_inference(x.dtype)
    helper.append_op("increment", {"X": [x]}, {"Out": [out]}, {"step": float(value)})
    return out
