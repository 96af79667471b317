"""Matrix products, elementwise binary ops with fluid broadcasting, mean, scale."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..registry import KernelContext, ShapeContext, register_grad, register_op, same_shape_infer
from .common import bcast_shape_y, full, unbroadcast


# ----------------------------------------------------------------- mul (fc)
def _flat2d(shape: tuple, k: int) -> tuple[int, int]:
    return math.prod(shape[:k]), math.prod(shape[k:])  # math.prod: np.prod costs ~3 us per call


def _mul_infer(ctx: ShapeContext) -> None:
    xs, ys = ctx.shape("X"), ctx.shape("Y")
    xk, yk = ctx.attr("x_num_col_dims"), ctx.attr("y_num_col_dims")
    if len(xs) <= xk or len(ys) <= yk:
        raise ctx.fail(f"x_num_col_dims={xk} / y_num_col_dims={yk} exceed the input ranks")
    x_cols = int(np.prod(xs[xk:])) if all(d > 0 for d in xs[xk:]) else -1
    y_rows = int(np.prod(ys[:yk]))
    if x_cols != -1 and x_cols != y_rows:
        raise ctx.fail(f"X flattened at dim {xk} has {x_cols} columns but Y has {y_rows} rows")
    ctx.set("Out", tuple(xs[:xk]) + tuple(ys[yk:]), ctx.dtype("X"), ctx.var("X").lod_level)


@register_op("mul", _mul_infer, attrs={"x_num_col_dims": 1, "y_num_col_dims": 1})
def mul(ctx: KernelContext) -> None:
    x, y = ctx.x("X"), ctx.x("Y")
    attrs = ctx.attrs
    xk, yk = attrs["x_num_col_dims"], attrs["y_num_col_dims"]
    if x.ndim == 2 and y.ndim == 2 and xk == 1 and yk == 1:  # the fc case: no reshapes
        ctx.out("Out", x @ y, ctx.lod("X"))
        return
    x2 = x if x.ndim == 2 and xk == 1 else x.reshape(_flat2d(x.shape, xk))
    y2 = y if y.ndim == 2 and yk == 1 else y.reshape(_flat2d(y.shape, yk))
    out = x2 @ y2
    if x.ndim != 2 or y.ndim != 2:
        out = out.reshape(x.shape[:xk] + y.shape[yk:])
    ctx.out("Out", out, ctx.lod("X"))


@register_grad("mul")
def mul_grad(ctx: KernelContext) -> None:
    x, y, g = ctx.x("X"), ctx.x("Y"), ctx.x("Out@GRAD")
    xk, yk = ctx.attrs["x_num_col_dims"], ctx.attrs["y_num_col_dims"]
    if x.ndim == 2 and y.ndim == 2 and xk == 1 and yk == 1:  # the fc case: no reshapes
        if ctx.wants("X@GRAD"):
            ctx.out("X@GRAD", g @ y.T, ctx.lod("X"))
        if ctx.wants("Y@GRAD"):
            ctx.out("Y@GRAD", x.T @ g)
        return
    x2 = x.reshape(_flat2d(x.shape, xk))
    y2 = y.reshape(_flat2d(y.shape, yk))
    g2 = g.reshape(x2.shape[0], y2.shape[1])
    if ctx.wants("X@GRAD"):
        ctx.out("X@GRAD", (g2 @ y2.T).reshape(x.shape), ctx.lod("X"))
    if ctx.wants("Y@GRAD"):
        ctx.out("Y@GRAD", (x2.T @ g2).reshape(y.shape))


# ----------------------------------------------------------------- matmul
def _matmul_infer(ctx: ShapeContext) -> None:
    xs, ys = list(ctx.shape("X")), list(ctx.shape("Y"))
    if len(xs) == 1:
        xs = [1] + xs
    if len(ys) == 1:
        ys = ys + [1]
    if ctx.attr("transpose_X"):
        xs[-1], xs[-2] = xs[-2], xs[-1]
    if ctx.attr("transpose_Y"):
        ys[-1], ys[-2] = ys[-2], ys[-1]
    if xs[-1] > 0 and ys[-2] > 0 and xs[-1] != ys[-2]:
        raise ctx.fail(f"inner dimensions differ: {xs[-1]} vs {ys[-2]}")
    batch = xs[:-2] if len(xs) >= len(ys) else ys[:-2]
    ctx.set("Out", batch + [xs[-2], ys[-1]], ctx.dtype("X"))


def _t(a: np.ndarray) -> np.ndarray:
    return a.swapaxes(-1, -2)


@register_op("matmul", _matmul_infer, attrs={"transpose_X": False, "transpose_Y": False, "alpha": 1.0})
def matmul(ctx: KernelContext) -> None:
    x, y = ctx.x("X"), ctx.x("Y")
    x = x[None] if x.ndim == 1 else x
    y = y[:, None] if y.ndim == 1 else y
    x = _t(x) if ctx.attrs["transpose_X"] else x
    y = _t(y) if ctx.attrs["transpose_Y"] else y
    out = x @ y
    alpha = ctx.attrs["alpha"]
    ctx.out("Out", out * alpha if alpha != 1.0 else out)


@register_grad("matmul")
def matmul_grad(ctx: KernelContext) -> None:
    x0, y0, g = ctx.x("X"), ctx.x("Y"), ctx.x("Out@GRAD")
    tx, ty, alpha = ctx.attrs["transpose_X"], ctx.attrs["transpose_Y"], ctx.attrs["alpha"]
    x = x0[None] if x0.ndim == 1 else x0
    y = y0[:, None] if y0.ndim == 1 else y0
    g = g * alpha if alpha != 1.0 else g
    xe = _t(x) if tx else x
    ye = _t(y) if ty else y
    if ctx.wants("X@GRAD"):
        dxe = g @ _t(ye)
        dx = _t(dxe) if tx else dxe
        ctx.out("X@GRAD", unbroadcast(ctx.xp, dx, x.shape).reshape(x0.shape))
    if ctx.wants("Y@GRAD"):
        dye = _t(xe) @ g
        dy = _t(dye) if ty else dye
        ctx.out("Y@GRAD", unbroadcast(ctx.xp, dy, y.shape).reshape(y0.shape))


# ------------------------------------------------------- elementwise binary
def _ew_infer(ctx: ShapeContext) -> None:
    xs, ys = ctx.shape("X"), ctx.shape("Y")
    axis = ctx.attr("axis", -1)
    if len(ys) > len(xs):
        raise ctx.fail("Y must not have more dimensions than X")
    pad = bcast_shape_y(xs, ys, axis)
    if pad is not None:
        if len(pad) != len(xs):
            raise ctx.fail(f"Y cannot be broadcast to X at axis {axis}")
        for dx, dy in zip(xs, pad):
            if dx > 0 and dy > 0 and dy != 1 and dx != dy and dx != 1:
                raise ctx.fail(f"Y (as {list(pad)} at axis {axis}) does not broadcast against X")
    ctx.set("Out", xs, ctx.dtype("X"), ctx.var("X").lod_level)


def _operands(ctx: KernelContext) -> tuple:
    x, y = ctx.x("X"), ctx.x("Y")
    return x, _aligned_y(ctx, x, y)


def _is_bias(ctx: KernelContext, x_shape: Any, y: Any) -> bool:
    """A [D] Y along the last dim of a [N, D] X (not ``axis=0``, which lines a [N] Y up with
    the rows, even when N == D)."""
    return (y.ndim == 1 and len(x_shape) == 2 and y.shape[0] == x_shape[1]
            and ctx.attrs.get("axis", -1) in (-1, 1))


def _aligned_y(ctx: KernelContext, x: Any, y: Any) -> Any:
    """Y reshaped so numpy broadcasting lines it up with X as fluid's ``axis`` says."""
    if _is_bias(ctx, x.shape, y):
        return y  # bias add: numpy broadcasting already lines Y up with X's last dim
    if y.ndim != x.ndim or ctx.attrs.get("axis", -1) != -1:
        pad = bcast_shape_y(x.shape, y.shape, ctx.attrs.get("axis", -1))
        if pad is not None:
            y = y.reshape(pad)
    return y


def _linear_grad(ctx: KernelContext, sign_y: float) -> None:
    """elementwise_add / _sub gradients: dX = g, dY = +-g summed over Y's broadcast axes.

    Neither needs the values of X, Y or Out, only their shapes, so those are not computed.
    """
    x, y0, g = ctx.x("X"), ctx.x("Y"), ctx.x("Out@GRAD")
    if ctx.wants("X@GRAD"):
        ctx.out("X@GRAD", g if g.shape == x.shape else unbroadcast(ctx.xp, g, x.shape), ctx.lod("X"))
    if ctx.wants("Y@GRAD"):
        gy = g if sign_y > 0 else -g
        if _is_bias(ctx, g.shape, y0):
            ctx.out("Y@GRAD", gy.sum(axis=0))  # bias gradient: one column sum
        else:
            y = _aligned_y(ctx, x, y0)
            ctx.out("Y@GRAD", unbroadcast(ctx.xp, gy, y.shape).reshape(y0.shape))


def _register_elementwise(name: str, fwd, dx, dy, linear: float = 0.0) -> None:
    """fwd(x, y); dx(x, y, out, g) / dy(x, y, out, g) give full-shape grads.

    ``linear`` = +1 / -1 marks add / sub, whose gradient needs only shapes.
    """

    def kernel(ctx: KernelContext) -> None:
        x, y = _operands(ctx)
        ctx.out("Out", fwd(x, y), ctx.lod("X"))

    def grad(ctx: KernelContext) -> None:
        if linear:
            _linear_grad(ctx, linear)
            return
        x, y = _operands(ctx)
        y_shape = ctx.x("Y").shape
        out, g = ctx.x("Out"), ctx.x("Out@GRAD")
        if ctx.wants("X@GRAD"):
            ctx.out("X@GRAD", unbroadcast(ctx.xp, dx(x, y, out, g), x.shape), ctx.lod("X"))
        if ctx.wants("Y@GRAD"):
            dyv = dy(x, y, out, g)
            if _is_bias(ctx, dyv.shape, y):
                ctx.out("Y@GRAD", dyv.sum(axis=0))  # bias gradient: one column sum
            else:
                ctx.out("Y@GRAD", unbroadcast(ctx.xp, dyv, y.shape).reshape(y_shape))

    register_op(name, _ew_infer, attrs={"axis": -1})(kernel)
    register_grad(name)(grad)


_register_elementwise("elementwise_add", lambda x, y: x + y,
                      lambda x, y, o, g: g, lambda x, y, o, g: g, linear=1.0)
_register_elementwise("elementwise_sub", lambda x, y: x - y,
                      lambda x, y, o, g: g, lambda x, y, o, g: -g, linear=-1.0)
_register_elementwise("elementwise_mul", lambda x, y: x * y,
                      lambda x, y, o, g: g * y, lambda x, y, o, g: g * x)
_register_elementwise("elementwise_div", lambda x, y: x / y,
                      lambda x, y, o, g: g / y, lambda x, y, o, g: -g * o / y)
_register_elementwise("elementwise_max", lambda x, y: np.maximum(x, y),
                      lambda x, y, o, g: g * (x >= y), lambda x, y, o, g: g * (x < y))
_register_elementwise("elementwise_min", lambda x, y: np.minimum(x, y),
                      lambda x, y, o, g: g * (x <= y), lambda x, y, o, g: g * (x > y))
_register_elementwise("elementwise_pow", lambda x, y: x ** y,
                      lambda x, y, o, g: g * y * x ** (y - 1),
                      lambda x, y, o, g: g * o * np.log(np.where(x > 0, x, 1)))


# ---------------------------------------------------------------- mean / scale
def _mean_infer(ctx: ShapeContext) -> None:
    ctx.set("Out", (1,), ctx.dtype("X"), 0)


@register_op("mean", _mean_infer)
def mean(ctx: KernelContext) -> None:
    x = ctx.x("X")
    # sum * (1/n) rather than x.mean(): same value, half the Python overhead on small inputs
    ctx.out("Out", (x.sum(dtype=x.dtype) * x.dtype.type(1.0 / max(x.size, 1))).reshape(1))


@register_grad("mean")
def mean_grad(ctx: KernelContext) -> None:
    x, g = ctx.x("X"), ctx.x("Out@GRAD")
    ctx.out("X@GRAD", full(ctx.xp, x.shape, g.reshape(()) / max(x.size, 1), x.dtype), ctx.lod("X"))


@register_op("scale", same_shape_infer, attrs={"scale": 1.0, "bias": 0.0, "bias_after_scale": True})
def scale(ctx: KernelContext) -> None:
    x, s, b = ctx.x("X"), ctx.attrs["scale"], ctx.attrs["bias"]
    out = x * s + b if ctx.attrs["bias_after_scale"] else (x + b) * s
    ctx.out("Out", out.astype(x.dtype, copy=False), ctx.lod("X"))


@register_grad("scale")
def scale_grad(ctx: KernelContext) -> None:
    g = ctx.x("Out@GRAD")
    ctx.out("X@GRAD", (g * ctx.attrs["scale"]).astype(g.dtype, copy=False), ctx.lod("X"))
