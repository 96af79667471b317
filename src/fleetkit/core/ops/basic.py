"""Constants, copies, sums and random fills."""
from __future__ import annotations

import numpy as np

from ..registry import KernelContext, ShapeContext, register_grad, register_op, same_shape_infer
from ..scope import LoDTensor, SelectedRows
from .common import full


def _shape_attr_infer(ctx: ShapeContext) -> None:
    ctx.set("Out", ctx.attr("shape"), ctx.attr("dtype", "float32"))


def _np_dtype(ctx: KernelContext) -> str:
    return ctx.attr("dtype", "float32")


@register_op("fill_constant", _shape_attr_infer, attrs={"dtype": "float32", "value": 0.0})
def fill_constant(ctx: KernelContext) -> None:
    ctx.out("Out", ctx.xp.full(tuple(ctx.attr("shape")), ctx.attr("value"), dtype=_np_dtype(ctx)))


@register_op("fill_any_like", same_shape_infer, attrs={"value": 0.0})
def fill_any_like(ctx: KernelContext) -> None:
    x = ctx.x("X")
    ctx.out("Out", full(ctx.xp, x.shape, ctx.attr("value"), x.dtype), ctx.lod("X"))


@register_op("fill_zeros_like", same_shape_infer)
def fill_zeros_like(ctx: KernelContext) -> None:
    x = ctx.x("X")
    ctx.out("Out", ctx.xp.zeros(x.shape, dtype=x.dtype), ctx.lod("X"))


@register_op("assign", same_shape_infer)
def assign(ctx: KernelContext) -> None:
    v = ctx.raw("X")
    if isinstance(v, SelectedRows):
        ctx.env[ctx.outs["Out"][0]] = SelectedRows(v.rows.copy(), v.values.copy(), v.height)
    else:
        ctx.out("Out", ctx.x("X").copy(), ctx.lod("X"))


@register_grad("assign")
def assign_grad(ctx: KernelContext) -> None:
    ctx.out("X@GRAD", ctx.x("Out@GRAD"))


@register_op("assign_value", _shape_attr_infer)
def assign_value(ctx: KernelContext) -> None:
    a = np.asarray(ctx.attr("values"), dtype=_np_dtype(ctx)).reshape(ctx.attr("shape"))
    ctx.out("Out", ctx.xp.asarray(a))


def _sum_infer(ctx: ShapeContext) -> None:
    xs = ctx.vars("X")
    shapes = {tuple(v.shape) for v in xs}
    known = {tuple(d for d in s) for s in shapes}
    if len({len(s) for s in known}) > 1:
        raise ctx.fail("all inputs must have the same shape")
    ctx.set("Out", xs[0].shape, xs[0].dtype, xs[0].lod_level)


@register_op("sum", _sum_infer)
def sum_op(ctx: KernelContext) -> None:
    """Sum of inputs; SelectedRows inputs are concatenated (or densified when mixed)."""
    vals = [ctx.raw("X", i) for i in range(len(ctx.ins["X"]))]
    sparse = [v for v in vals if isinstance(v, SelectedRows)]
    if sparse and len(sparse) == len(vals):
        xp = ctx.xp
        ctx.env[ctx.outs["Out"][0]] = SelectedRows(
            np.concatenate([v.rows for v in sparse]), xp.concatenate([v.values for v in sparse]),
            sparse[0].height)
        return
    dense = [v.to_dense() if isinstance(v, SelectedRows) else (v.values if isinstance(v, LoDTensor) else v)
             for v in vals]
    out = dense[0].copy()
    for d in dense[1:]:
        out += d
    ctx.out("Out", out, ctx.lod("X"))


@register_grad("sum")
def sum_grad(ctx: KernelContext) -> None:
    g = ctx.x("Out@GRAD")
    ctx.outs_list("X@GRAD", [g] * len(ctx.outs["X@GRAD"]))


def _random_out(ctx: KernelContext, a: np.ndarray) -> None:
    ctx.out("Out", ctx.xp.asarray(a.astype(_np_dtype(ctx), copy=False)))


@register_op("uniform_random", _shape_attr_infer, attrs={"min": -1.0, "max": 1.0, "seed": 0}, random=True)
def uniform_random(ctx: KernelContext) -> None:
    _random_out(ctx, ctx.rng.uniform(ctx.attr("min"), ctx.attr("max"), size=tuple(ctx.attr("shape"))))


@register_op("gaussian_random", _shape_attr_infer, attrs={"mean": 0.0, "std": 1.0, "seed": 0}, random=True)
def gaussian_random(ctx: KernelContext) -> None:
    _random_out(ctx, ctx.rng.normal(ctx.attr("mean"), ctx.attr("std"), size=tuple(ctx.attr("shape"))))


@register_op("truncated_gaussian_random", _shape_attr_infer, attrs={"mean": 0.0, "std": 1.0, "seed": 0},
             random=True)
def truncated_gaussian_random(ctx: KernelContext) -> None:
    """Normal samples redrawn until within 2 std of the mean."""
    shape = tuple(ctx.attr("shape"))
    n = int(np.prod(shape))
    out = np.empty(0)
    while out.size < n:
        s = ctx.rng.standard_normal(2 * n + 16)
        out = np.concatenate([out, s[np.abs(s) <= 2.0]])
    _random_out(ctx, out[:n].reshape(shape) * ctx.attr("std") + ctx.attr("mean"))
