"""Unary activations and math functions.  Gradients use Out where it is cheaper."""
from __future__ import annotations

from typing import Callable

from ..registry import KernelContext, register_grad, register_op, same_shape_infer


#: op type -> (fwd, bwd) of the unary ops below (the executor's fc fusion calls them directly)
UNARY: dict[str, tuple[Callable, Callable]] = {}


def _register_unary(name: str, fwd: Callable, bwd: Callable, attrs: dict | None = None) -> None:
    """fwd(xp, x, attrs) -> out; bwd(xp, x, out, g, attrs) -> dx."""
    UNARY[name] = (fwd, bwd)

    def kernel(ctx: KernelContext) -> None:
        ctx.out("Out", fwd(ctx.xp, ctx.x("X"), ctx.attrs), ctx.lod("X"))

    def grad(ctx: KernelContext) -> None:
        ctx.out("X@GRAD", bwd(ctx.xp, ctx.x("X"), ctx.x("Out"), ctx.x("Out@GRAD"), ctx.attrs), ctx.lod("X"))

    register_op(name, same_shape_infer, attrs=attrs)(kernel)
    register_grad(name)(grad)


def _sigmoid(xp, x, a):
    # split by sign so exp never overflows
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


_register_unary("relu", lambda xp, x, a: xp.maximum(x, 0), lambda xp, x, o, g, a: g * (o > 0))
_register_unary("leaky_relu", lambda xp, x, a: xp.where(x > 0, x, x * a["alpha"]).astype(x.dtype, copy=False),
                lambda xp, x, o, g, a: xp.where(x > 0, g, g * a["alpha"]).astype(x.dtype, copy=False),
                {"alpha": 0.02})
_register_unary("sigmoid", _sigmoid, lambda xp, x, o, g, a: g * o * (1 - o))
_register_unary("tanh", lambda xp, x, a: xp.tanh(x), lambda xp, x, o, g, a: g * (1 - o * o))
_register_unary("exp", lambda xp, x, a: xp.exp(x), lambda xp, x, o, g, a: g * o)
_register_unary("log", lambda xp, x, a: xp.log(x), lambda xp, x, o, g, a: g / x)
_register_unary("sqrt", lambda xp, x, a: xp.sqrt(x), lambda xp, x, o, g, a: g * 0.5 / o)
_register_unary("square", lambda xp, x, a: x * x, lambda xp, x, o, g, a: g * 2 * x)
_register_unary("abs", lambda xp, x, a: xp.abs(x), lambda xp, x, o, g, a: g * xp.sign(x))
_register_unary("softplus", lambda xp, x, a: xp.logaddexp(0, x).astype(x.dtype, copy=False),
                lambda xp, x, o, g, a: g * _sigmoid(xp, x, a))
_register_unary("softsign", lambda xp, x, a: x / (1 + xp.abs(x)),
                lambda xp, x, o, g, a: g / (1 + xp.abs(x)) ** 2)
_register_unary("relu6", lambda xp, x, a: xp.clip(x, 0, a["threshold"]),
                lambda xp, x, o, g, a: g * ((x > 0) & (x < a["threshold"])), {"threshold": 6.0})
_register_unary("elu", lambda xp, x, a: xp.where(x > 0, x, a["alpha"] * (xp.exp(x) - 1)).astype(x.dtype, copy=False),
                lambda xp, x, o, g, a: xp.where(x > 0, g, g * (o + a["alpha"])).astype(x.dtype, copy=False),
                {"alpha": 1.0})
_register_unary("reciprocal", lambda xp, x, a: 1 / x, lambda xp, x, o, g, a: -g * o * o)
