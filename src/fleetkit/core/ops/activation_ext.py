"""More unary activations and math functions of fluid 1.4 (same registration as
``activation``: forward f(x), gradient from x, out and the upstream gradient), and
``prelu`` (a learned negative slope)."""
from __future__ import annotations

from typing import Any

from ..registry import KernelContext, ShapeContext, register_grad, register_op
from .activation import _register_unary, _sigmoid
from .common import unbroadcast

SELU_SCALE = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717


def _cast(x: Any, like: Any) -> Any:
    return x.astype(like.dtype, copy=False)


def _swish(xp: Any, x: Any, a: dict) -> Any:
    return x * _sigmoid(xp, a["beta"] * x, a)


def _swish_grad(xp: Any, x: Any, o: Any, g: Any, a: dict) -> Any:
    s = _sigmoid(xp, a["beta"] * x, a)
    return g * (s + a["beta"] * x * s * (1 - s))


def _soft_relu(xp: Any, x: Any, a: dict) -> Any:
    t = a["threshold"]
    return _cast(xp.logaddexp(0, xp.clip(x, -t, t)), x)


def _selu(xp: Any, x: Any, a: dict) -> Any:
    return _cast(a["scale"] * xp.where(x > 0, x, a["alpha"] * (xp.exp(x) - 1)), x)


def _selu_grad(xp: Any, x: Any, o: Any, g: Any, a: dict) -> Any:
    return _cast(g * xp.where(x > 0, a["scale"], o + a["scale"] * a["alpha"]), x)


def _softshrink(xp: Any, x: Any, a: dict) -> Any:
    lam = a["lambda"]
    return _cast(xp.where(x > lam, x - lam, xp.where(x < -lam, x + lam, 0)), x)


_register_unary("logsigmoid", lambda xp, x, a: _cast(-xp.logaddexp(0, -x), x),
                lambda xp, x, o, g, a: g * _sigmoid(xp, -x, a))
_register_unary("hard_sigmoid", lambda xp, x, a: xp.clip(a["slope"] * x + a["offset"], 0, 1),
                lambda xp, x, o, g, a: g * a["slope"] * ((o > 0) & (o < 1)), {"slope": 0.2, "offset": 0.5})
_register_unary("swish", _swish, _swish_grad, {"beta": 1.0})
_register_unary("brelu", lambda xp, x, a: xp.clip(x, a["t_min"], a["t_max"]),
                lambda xp, x, o, g, a: g * ((x > a["t_min"]) & (x < a["t_max"])), {"t_min": 0.0, "t_max": 24.0})
_register_unary("soft_relu", _soft_relu,
                lambda xp, x, o, g, a: g * (1 - xp.exp(-o)) * ((x > -a["threshold"]) & (x < a["threshold"])),
                {"threshold": 40.0})
_register_unary("stanh", lambda xp, x, a: a["scale_b"] * xp.tanh(a["scale_a"] * x),
                lambda xp, x, o, g, a: g * a["scale_a"] * a["scale_b"] * (1 - xp.tanh(a["scale_a"] * x) ** 2),
                {"scale_a": 2.0 / 3.0, "scale_b": 1.7159})
_register_unary("pow", lambda xp, x, a: _cast(x ** a["factor"], x),
                lambda xp, x, o, g, a: _cast(g * a["factor"] * x ** (a["factor"] - 1), x), {"factor": 1.0})
_register_unary("selu", _selu, _selu_grad, {"scale": SELU_SCALE, "alpha": SELU_ALPHA})
_register_unary("hard_shrink", lambda xp, x, a: x * (xp.abs(x) > a["threshold"]),
                lambda xp, x, o, g, a: g * (xp.abs(x) > a["threshold"]), {"threshold": 0.5})
_register_unary("softshrink", _softshrink, lambda xp, x, o, g, a: g * (xp.abs(x) > a["lambda"]), {"lambda": 0.5})
_register_unary("thresholded_relu", lambda xp, x, a: x * (x > a["threshold"]),
                lambda xp, x, o, g, a: g * (x > a["threshold"]), {"threshold": 1.0})
_register_unary("tanh_shrink", lambda xp, x, a: x - xp.tanh(x), lambda xp, x, o, g, a: g * xp.tanh(x) ** 2)
_register_unary("rsqrt", lambda xp, x, a: 1 / xp.sqrt(x), lambda xp, x, o, g, a: -0.5 * g * o ** 3)
# rounding: piecewise constant, so the gradient is zero (as in fluid)
def _zero_grad(xp: Any, x: Any, o: Any, g: Any, a: dict) -> Any:
    return xp.zeros_like(g)


_register_unary("ceil", lambda xp, x, a: xp.ceil(x), _zero_grad)
_register_unary("floor", lambda xp, x, a: xp.floor(x), _zero_grad)
# halves round away from zero (C's round), not to even as numpy's around does
_register_unary("round", lambda xp, x, a: xp.where(x >= 0, xp.floor(x + 0.5), xp.ceil(x - 0.5)), _zero_grad)
_register_unary("cos", lambda xp, x, a: xp.cos(x), lambda xp, x, o, g, a: -g * xp.sin(x))
_register_unary("sin", lambda xp, x, a: xp.sin(x), lambda xp, x, o, g, a: g * xp.cos(x))
_register_unary("acos", lambda xp, x, a: xp.arccos(x), lambda xp, x, o, g, a: -g / xp.sqrt(1 - x * x))
_register_unary("asin", lambda xp, x, a: xp.arcsin(x), lambda xp, x, o, g, a: g / xp.sqrt(1 - x * x))
_register_unary("atan", lambda xp, x, a: xp.arctan(x), lambda xp, x, o, g, a: g / (1 + x * x))


# -------------------------------------------------------------------- prelu
def _prelu_infer(ctx: ShapeContext) -> None:
    x, a = ctx.var("X"), ctx.var("Alpha")
    if ctx.attr("mode") not in ("all", "channel", "element"):
        raise ctx.fail(f"mode must be 'all', 'channel' or 'element', got {ctx.attr('mode')!r}")
    if ctx.attr("mode") != "all" and len(a.shape) != len(x.shape):
        raise ctx.fail(f"Alpha must have X's rank {len(x.shape)} for mode {ctx.attr('mode')!r}")
    ctx.share("X", "Out")


def _alpha(ctx: KernelContext, x: Any) -> Any:
    a = ctx.x("Alpha")
    return a.reshape(()) if ctx.attrs["mode"] == "all" else a


@register_op("prelu", _prelu_infer, attrs={"mode": "all"})
def prelu(ctx: KernelContext) -> None:
    """x where x > 0, alpha * x elsewhere (alpha shared, per channel or per element)."""
    x = ctx.x("X")
    ctx.out("Out", _cast(ctx.xp.where(x > 0, x, _alpha(ctx, x) * x), x), ctx.lod("X"))


@register_grad("prelu")
def prelu_grad(ctx: KernelContext) -> None:
    xp, x, g = ctx.xp, ctx.x("X"), ctx.x("Out@GRAD")
    pos = x > 0
    if ctx.wants("X@GRAD"):
        ctx.out("X@GRAD", _cast(xp.where(pos, g, _alpha(ctx, x) * g), x), ctx.lod("X"))
    if ctx.wants("Alpha@GRAD"):
        a = ctx.x("Alpha")
        da = xp.where(pos, 0, g * x)
        ctx.out("Alpha@GRAD", _cast(da.sum().reshape(a.shape) if ctx.attrs["mode"] == "all"
                                    else unbroadcast(xp, da, a.shape), a))
