"""More activation and math layers (fluid 1.4 names, arguments and defaults)."""
from __future__ import annotations

from typing import Any

from ...errors import InvalidArgumentError
from ..framework import Variable
from ..initializer import Constant
from ..layer_helper import LayerHelper
from ..ops.activation_ext import SELU_ALPHA, SELU_SCALE
from .checks import need_var

__all__ = ["logsigmoid", "hard_sigmoid", "swish", "brelu", "soft_relu", "stanh", "pow", "selu", "hard_shrink",
           "softshrink", "thresholded_relu", "tanh_shrink", "rsqrt", "ceil", "floor", "round", "cos", "sin",
           "acos", "asin", "atan", "prelu"]


def _unary(op_type: str, x: Variable, attrs: dict | None = None, name: str | None = None) -> Variable:
    need_var(op_type, "x", x)
    helper = LayerHelper(op_type, name=name)
    out = helper.create_variable_for_type_inference(x.dtype)
    helper.append_op(op_type, {"X": [x]}, {"Out": [out]}, {k: float(v) for k, v in (attrs or {}).items()})
    return out


def _plain(op_type: str, doc: str):
    def layer(x: Variable, name: str | None = None) -> Variable:
        return _unary(op_type, x, name=name)
    layer.__name__ = op_type
    layer.__doc__ = doc
    return layer


logsigmoid = _plain("logsigmoid", "log(sigmoid(x)), computed without overflow.")
tanh_shrink = _plain("tanh_shrink", "x - tanh(x).")
rsqrt = _plain("rsqrt", "1 / sqrt(x).")
ceil = _plain("ceil", "Smallest integer >= x (zero gradient).")
floor = _plain("floor", "Largest integer <= x (zero gradient).")
round = _plain("round", "Nearest integer, halves away from zero (zero gradient).")
cos = _plain("cos", "cos(x).")
sin = _plain("sin", "sin(x).")
acos = _plain("acos", "arccos(x).")
asin = _plain("asin", "arcsin(x).")
atan = _plain("atan", "arctan(x).")


def softshrink(x: Variable, name: str | None = None, alpha: float = 0.5) -> Variable:
    """x - alpha above alpha, x + alpha below -alpha, 0 between (fluid's attr ``lambda``)."""
    return _unary("softshrink", x, {"lambda": alpha}, name)


def hard_sigmoid(x: Variable, slope: float = 0.2, offset: float = 0.5, name: str | None = None) -> Variable:
    """clip(slope * x + offset, 0, 1)."""
    return _unary("hard_sigmoid", x, {"slope": slope, "offset": offset}, name)


def swish(x: Variable, beta: float = 1.0, name: str | None = None) -> Variable:
    """x * sigmoid(beta * x)."""
    return _unary("swish", x, {"beta": beta}, name)


def brelu(x: Variable, t_min: float = 0.0, t_max: float = 24.0, name: str | None = None) -> Variable:
    """clip(x, t_min, t_max)."""
    if t_min > t_max:
        raise InvalidArgumentError(f"brelu: t_min {t_min} > t_max {t_max}")
    return _unary("brelu", x, {"t_min": t_min, "t_max": t_max}, name)


def soft_relu(x: Variable, threshold: float = 40.0, name: str | None = None) -> Variable:
    """log(1 + exp(clip(x, -threshold, threshold)))."""
    return _unary("soft_relu", x, {"threshold": threshold}, name)


def stanh(x: Variable, scale_a: float = 2.0 / 3.0, scale_b: float = 1.7159, name: str | None = None) -> Variable:
    """scale_b * tanh(scale_a * x)."""
    return _unary("stanh", x, {"scale_a": scale_a, "scale_b": scale_b}, name)


def pow(x: Variable, factor: float = 1.0, name: str | None = None) -> Variable:
    """x ** factor."""
    return _unary("pow", x, {"factor": factor}, name)


def selu(x: Variable, scale: float | None = None, alpha: float | None = None, name: str | None = None) -> Variable:
    """scale * (x if x > 0 else alpha * (exp(x) - 1)), with the self-normalizing defaults."""
    return _unary("selu", x, {"scale": SELU_SCALE if scale is None else scale,
                              "alpha": SELU_ALPHA if alpha is None else alpha}, name)


def hard_shrink(x: Variable, threshold: float | None = None) -> Variable:
    """x where |x| > threshold (default 0.5), else 0."""
    return _unary("hard_shrink", x, {"threshold": 0.5 if threshold is None else threshold})


def thresholded_relu(x: Variable, threshold: float | None = None) -> Variable:
    """x where x > threshold (default 1.0), else 0."""
    return _unary("thresholded_relu", x, {"threshold": 1.0 if threshold is None else threshold})


def prelu(x: Variable, mode: str, param_attr: Any = None, name: str | None = None) -> Variable:
    """max(0, x) + alpha * min(0, x) with a learned alpha (init 0.25): one for "all", one
    per channel (dim 1) for "channel", one per element for "element"."""
    if mode not in ("all", "channel", "element"):
        raise InvalidArgumentError(f"prelu: mode must be 'all', 'channel' or 'element', got {mode!r}")
    if mode == "channel" and (len(x.shape) < 2 or x.shape[1] <= 0):
        raise InvalidArgumentError(f"prelu: mode 'channel' needs a known dim 1, '{x.name}' is {list(x.shape)}")
    if mode == "element" and any(d <= 0 for d in x.shape[1:]):
        raise InvalidArgumentError(f"prelu: mode 'element' needs known dims after the batch, got {list(x.shape)}")
    helper = LayerHelper("prelu", name=name)
    shape = {"all": [1], "channel": [1, x.shape[1]] + [1] * (len(x.shape) - 2),
             "element": [1] + list(x.shape[1:])}[mode]
    alpha = helper.create_parameter(param_attr, shape, x.dtype, default_initializer=Constant(0.25))
    out = helper.create_variable_for_type_inference(x.dtype)
    helper.append_op("prelu", {"X": [x], "Alpha": [alpha]}, {"Out": [out]}, {"mode": mode})
    return out
