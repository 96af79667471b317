"""Value ops on tensors: cast, clip, clip_by_norm, the reduce_* family, argsort,
sign, finiteness checks and elementwise mod/floordiv.  Registered on import of
``ops.tensor`` (the shape ops) so the two modules form one family.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...errors import InvalidArgumentError
from ..framework import convert_dtype
from ..registry import KernelContext, ShapeContext, register_grad, register_op, same_shape_infer
from .math import _ew_infer, _operands


def _fill(xp: Any, shape: tuple, value: Any) -> Any:
    """A writable array of ``shape`` holding ``value`` broadcast (grads are never read-only views)."""
    out = xp.empty(shape, dtype=value.dtype)
    out[...] = value
    return out


# -------------------------------------------------------------------- cast
def _cast_infer(ctx: ShapeContext) -> None:
    x = ctx.var("X")
    ctx.set("Out", x.shape, convert_dtype(ctx.attr("out_dtype")), x.lod_level)


@register_op("cast", _cast_infer, attrs={"in_dtype": "float32", "out_dtype": "float32"})
def cast(ctx: KernelContext) -> None:
    ctx.out("Out", ctx.x("X").astype(convert_dtype(ctx.attrs["out_dtype"]), copy=False), ctx.lod("X"))


@register_grad("cast")
def cast_grad(ctx: KernelContext) -> None:
    # back to the input's own dtype (the attr may be stale after a program edit)
    ctx.out("X@GRAD", ctx.x("Out@GRAD").astype(ctx.x("X").dtype, copy=False), ctx.lod("X"))


# ------------------------------------------------------- clip / clip_by_norm
def _clip_infer(ctx: ShapeContext) -> None:
    lo, hi = float(ctx.attr("min")), float(ctx.attr("max"))
    if lo > hi:
        raise ctx.fail(f"min ({lo}) must not exceed max ({hi})")
    ctx.share("X", "Out")


@register_op("clip", _clip_infer, attrs={"min": -1.0, "max": 1.0})
def clip(ctx: KernelContext) -> None:
    x = ctx.x("X")
    out = ctx.xp.clip(x, ctx.attrs["min"], ctx.attrs["max"]).astype(x.dtype, copy=False)
    ctx.out("Out", out, ctx.lod("X"))


@register_grad("clip")
def clip_grad(ctx: KernelContext) -> None:
    x, g = ctx.x("X"), ctx.x("Out@GRAD")
    inside = (x > ctx.attrs["min"]) & (x < ctx.attrs["max"])
    ctx.out("X@GRAD", (g * inside).astype(g.dtype, copy=False), ctx.lod("X"))


def _clip_norm_infer(ctx: ShapeContext) -> None:
    if float(ctx.attr("max_norm")) <= 0:
        raise ctx.fail(f"max_norm must be positive, got {ctx.attr('max_norm')}")
    ctx.share("X", "Out")


def _norm_scale(xp: Any, x: Any, max_norm: float) -> tuple[Any, Any, Any]:
    """(norm, clipped?, scale) as 0-d arrays: no host sync on a device."""
    norm = xp.sqrt((x * x).sum())
    over = norm > max_norm
    scale = xp.where(over, max_norm / xp.maximum(norm, 1e-30), 1.0).astype(x.dtype)
    return norm, over, scale


@register_op("clip_by_norm", _clip_norm_infer, attrs={"max_norm": 1.0})
def clip_by_norm(ctx: KernelContext) -> None:
    """Out = X * max_norm / ||X|| when ||X|| > max_norm, else X."""
    x = ctx.x("X")
    _, _, scale = _norm_scale(ctx.xp, x, float(ctx.attrs["max_norm"]))
    ctx.out("Out", (x * scale).astype(x.dtype, copy=False), ctx.lod("X"))


@register_grad("clip_by_norm")
def clip_by_norm_grad(ctx: KernelContext) -> None:
    # when clipped, d(m x / n) = m/n (g - x (x.g) / n^2)
    xp, x, g = ctx.xp, ctx.x("X"), ctx.x("Out@GRAD")
    m = float(ctx.attrs["max_norm"])
    norm, over, scale = _norm_scale(xp, x, m)
    coef = xp.where(over, m * (x * g).sum() / xp.maximum(norm, 1e-30) ** 3, 0.0)
    ctx.out("X@GRAD", (g * scale - x * coef).astype(g.dtype, copy=False), ctx.lod("X"))


# -------------------------------------------------------------- reductions
def reduce_axes(rank: int, dims: Any, reduce_all: bool, fail: Any = None) -> tuple[int, ...]:
    """Reduced axes from ``dim`` / ``reduce_all`` (an empty ``dim`` reduces everything)."""
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    if reduce_all or not dims:
        return tuple(range(rank))
    out = set()
    for d in dims:
        if not -rank <= d < rank:
            msg = f"dim {dims}: {d} is out of range for a rank-{rank} input"
            raise fail(msg) if fail else InvalidArgumentError(msg)
        out.add(d % rank)
    return tuple(sorted(out))


def _reduced_shape(shape: Sequence[int], axes: Sequence[int], keep: bool) -> list[int]:
    if keep:
        return [1 if i in axes else d for i, d in enumerate(shape)]
    return [d for i, d in enumerate(shape) if i not in axes] or [1]


def _reduce_infer(ctx: ShapeContext) -> None:
    x = ctx.var("X")
    axes = reduce_axes(len(x.shape), ctx.attr("dim"), ctx.attr("reduce_all"), ctx.fail)
    out = _reduced_shape(x.shape, axes, bool(ctx.attr("keep_dim")))
    ctx.set("Out", out, x.dtype, x.lod_level if 0 not in axes else 0)


def _prod_grad(xp: Any, x: Any, axes: tuple, g_keep: Any) -> Any:
    """d prod / dx_i = product of the others, by exclusive cumulative products (safe with zeros)."""
    nd, k = x.ndim, len(axes)
    dest = tuple(range(nd - k, nd))
    moved = xp.moveaxis(x, axes, dest)
    flat = moved.reshape(-1, int(np.prod([x.shape[a] for a in axes], dtype=np.int64)))
    ones = xp.ones((flat.shape[0], 1), dtype=x.dtype)
    left = xp.concatenate([ones, xp.cumprod(flat, axis=1)[:, :-1]], axis=1)
    right = xp.concatenate([ones, xp.cumprod(flat[:, ::-1], axis=1)[:, :-1]], axis=1)[:, ::-1]
    g_flat = xp.moveaxis(g_keep, axes, dest).reshape(-1, 1)
    return xp.moveaxis((left * right * g_flat).reshape(moved.shape), dest, axes)


_REDUCERS = {
    "reduce_sum": lambda xp, x, ax, keep: x.sum(axis=ax, keepdims=keep, dtype=x.dtype),
    "reduce_mean": lambda xp, x, ax, keep: x.mean(axis=ax, keepdims=keep).astype(x.dtype, copy=False),
    "reduce_max": lambda xp, x, ax, keep: x.max(axis=ax, keepdims=keep),
    "reduce_min": lambda xp, x, ax, keep: x.min(axis=ax, keepdims=keep),
    "reduce_prod": lambda xp, x, ax, keep: x.prod(axis=ax, keepdims=keep, dtype=x.dtype),
}


def _reduce_grad_value(name: str, xp: Any, x: Any, out: Any, g_keep: Any, axes: tuple) -> Any:
    if name == "reduce_sum":
        return _fill(xp, x.shape, g_keep)
    if name == "reduce_mean":
        count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
        return _fill(xp, x.shape, g_keep / max(count, 1))
    if name in ("reduce_max", "reduce_min"):
        # every position equal to the extreme gets the gradient (ties share it, as fluid does)
        return (x == out.reshape(g_keep.shape)) * g_keep
    return _prod_grad(xp, x, axes, g_keep)


def _register_reduce(name: str) -> None:
    reducer = _REDUCERS[name]

    def kernel(ctx: KernelContext) -> None:
        x = ctx.x("X")
        axes = reduce_axes(x.ndim, ctx.attrs["dim"], ctx.attrs["reduce_all"])
        keep = bool(ctx.attrs["keep_dim"])
        out = reducer(ctx.xp, x, axes, keep)
        if out.ndim == 0:
            out = out.reshape(1)
        ctx.out("Out", out, ctx.lod("X") if 0 not in axes else None)

    def grad(ctx: KernelContext) -> None:
        x, g = ctx.x("X"), ctx.x("Out@GRAD")
        axes = reduce_axes(x.ndim, ctx.attrs["dim"], ctx.attrs["reduce_all"])
        g_keep = g.reshape(_reduced_shape(x.shape, axes, True))
        out = ctx.x("Out") if name in ("reduce_max", "reduce_min") else None
        dx = _reduce_grad_value(name, ctx.xp, x, out, g_keep, axes)
        ctx.out("X@GRAD", dx.astype(x.dtype, copy=False), ctx.lod("X"))

    kernel.__name__ = name
    register_op(name, _reduce_infer, attrs={"dim": [0], "keep_dim": False, "reduce_all": False})(kernel)
    register_grad(name)(grad)


for _reduce in _REDUCERS:
    _register_reduce(_reduce)


# ----------------------------------------------------------------- argsort
def _argsort_infer(ctx: ShapeContext) -> None:
    x = ctx.var("X")
    rank = len(x.shape)
    if not -rank <= int(ctx.attr("axis")) < rank:
        raise ctx.fail(f"axis {ctx.attr('axis')} is out of range for a rank-{rank} input")
    ctx.set("Out", x.shape, x.dtype, x.lod_level)
    ctx.set("Indices", x.shape, "int64", x.lod_level)


@register_op("argsort", _argsort_infer, no_grad_inputs=("X",), attrs={"axis": -1})
def argsort(ctx: KernelContext) -> None:
    xp, x = ctx.xp, ctx.x("X")
    axis = int(ctx.attrs["axis"]) % x.ndim
    idx = xp.argsort(x, axis=axis)
    ctx.out("Out", xp.take_along_axis(x, idx, axis=axis), ctx.lod("X"))
    ctx.out("Indices", idx.astype(np.int64, copy=False), ctx.lod("X"))


# ------------------------------------------------------- sign / checks
@register_op("sign", same_shape_infer, no_grad_inputs=("X",))
def sign(ctx: KernelContext) -> None:
    """sign(x); its gradient is zero almost everywhere, so none flows back."""
    ctx.out("Out", ctx.xp.sign(ctx.x("X")), ctx.lod("X"))


def _flag_infer(ctx: ShapeContext) -> None:
    ctx.set("Out", [1], "bool", 0)


def _register_flag(name: str, fn: Any) -> None:
    """A [1] bool verdict over the whole input (no gradient)."""
    def kernel(ctx: KernelContext) -> None:
        ctx.out("Out", fn(ctx.xp, ctx.x("X")).reshape(1))
    kernel.__name__ = name
    register_op(name, _flag_infer, no_grad_inputs=("X",))(kernel)


_register_flag("isfinite", lambda xp, x: xp.isfinite(x).all())
_register_flag("isinf", lambda xp, x: xp.isinf(x).any())
_register_flag("isnan", lambda xp, x: xp.isnan(x).any())


# ------------------------------------------- elementwise_mod / floordiv
# Fluid 1.4 rounds toward zero (C semantics): -7 mod 3 = -1, -7 floordiv 3 = -2.
def _trunc_div(xp: Any, x: Any, y: Any) -> Any:
    if x.dtype.kind in "iu":
        return (x - xp.fmod(x, y)) // y  # exact division once the remainder is removed
    return xp.trunc(x / y)


def _register_int_math(name: str, fn: Any) -> None:
    """Elementwise X op Y with fluid broadcasting and no gradient."""
    def kernel(ctx: KernelContext) -> None:
        x, y = _operands(ctx)
        ctx.out("Out", fn(ctx.xp, x, y).astype(x.dtype, copy=False), ctx.lod("X"))
    kernel.__name__ = name
    register_op(name, _ew_infer, no_grad_inputs=("X", "Y"), attrs={"axis": -1})(kernel)


_register_int_math("elementwise_mod", lambda xp, x, y: xp.fmod(x, y))
_register_int_math("elementwise_floordiv", _trunc_div)
