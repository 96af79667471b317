"""Indexing ops: slice (ranges per axis), gather (rows by index) and one_hot.

Split from ``tensor`` (the shape ops); registered by ``core.ops``' import of this
module.  Shape inference keeps -1 (the unknown batch dim) wherever it propagates.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from ..backend import scatter_add
from ..framework import convert_dtype
from ..registry import KernelContext, ShapeContext, register_grad, register_op
from .tensor import _norm_axis


# ------------------------------------------------------------------- slice
def _slice_bounds(dim: int, start: int, end: int) -> tuple[int, int]:
    """Fluid slice bounds: negatives count from the end, both clamped to [0, dim]."""
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    return start, max(end, start)


def _slice_infer(ctx: ShapeContext) -> None:
    x = ctx.var("Input")
    axes, starts, ends = (list(ctx.attr(k)) for k in ("axes", "starts", "ends"))
    if not len(axes) == len(starts) == len(ends):
        raise ctx.fail(f"axes {axes}, starts {starts} and ends {ends} must have the same length")
    out = list(x.shape)
    for a, s, e in zip(axes, starts, ends):
        a = _norm_axis(a, len(out), ctx, "axes entry")
        if out[a] >= 0:
            lo, hi = _slice_bounds(out[a], int(s), int(e))
            out[a] = hi - lo
    rows_kept = 0 not in [a % len(out) for a in axes]
    ctx.set("Out", out, x.dtype, x.lod_level if rows_kept else 0)


def _slices(ctx: KernelContext, shape: tuple) -> tuple:
    sl = [slice(None)] * len(shape)
    for a, s, e in zip(ctx.attrs["axes"], ctx.attrs["starts"], ctx.attrs["ends"]):
        a %= len(shape)
        sl[a] = slice(*_slice_bounds(shape[a], int(s), int(e)))
    return tuple(sl)


def _slice_lod(ctx: KernelContext, rank: int) -> Any:
    return ctx.lod("Input") if 0 not in [a % rank for a in ctx.attrs["axes"]] else None


@register_op("slice", _slice_infer, attrs={"axes": [], "starts": [], "ends": []})
def slice_op(ctx: KernelContext) -> None:
    x = ctx.x("Input")
    ctx.out("Out", x[_slices(ctx, x.shape)], _slice_lod(ctx, x.ndim))


@register_grad("slice")
def slice_grad(ctx: KernelContext) -> None:
    x, g = ctx.x("Input"), ctx.x("Out@GRAD")
    dx = ctx.xp.zeros(x.shape, dtype=g.dtype)
    dx[_slices(ctx, x.shape)] = g
    ctx.out("Input@GRAD", dx, ctx.lod("Input"))


# ------------------------------------------------------------------ gather
def _gather_infer(ctx: ShapeContext) -> None:
    x, idx = ctx.var("X"), ctx.var("Index")
    if np.dtype(idx.dtype).kind not in "iu":
        raise ctx.fail(f"Index must be int32 or int64, got {idx.dtype}")
    ishape = list(idx.shape)
    if not (len(ishape) == 1 or (len(ishape) == 2 and ishape[1] in (1, -1))):
        raise ctx.fail(f"Index must be 1-D or [N, 1], got shape {ishape}")
    if not x.shape:
        raise ctx.fail("X must have at least one dim")
    ctx.set("Out", [ishape[0]] + list(x.shape[1:]), x.dtype, 0)


def _gather_index(ctx: KernelContext, rows: int) -> Any:
    idx = ctx.x("Index").reshape(-1)
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= rows):
        bad = int(idx.max()) if int(idx.max()) >= rows else int(idx.min())
        raise InvalidArgumentError(f"op 'gather': Index '{ctx.ins['Index'][0]}' holds {bad}, outside "
                                   f"[0, {rows}) for X '{ctx.ins['X'][0]}'")
    return idx


@register_op("gather", _gather_infer, no_grad_inputs=("Index",))
def gather(ctx: KernelContext) -> None:
    x = ctx.x("X")
    ctx.out("Out", ctx.xp.take(x, _gather_index(ctx, x.shape[0]), axis=0))


@register_grad("gather")
def gather_grad(ctx: KernelContext) -> None:
    x, g = ctx.x("X"), ctx.x("Out@GRAD")
    dx = ctx.xp.zeros(x.shape, dtype=g.dtype)
    scatter_add(dx, ctx.x("Index").reshape(-1), g)
    ctx.out("X@GRAD", dx, ctx.lod("X"))


# ----------------------------------------------------------------- one_hot
def _one_hot_infer(ctx: ShapeContext) -> None:
    x = ctx.var("X")
    depth = int(ctx.attr("depth"))
    if depth < 1:
        raise ctx.fail(f"depth must be positive, got {depth}")
    if not x.shape or x.shape[-1] not in (1, -1):
        raise ctx.fail(f"X must have a last dim of 1 (shape [N, 1]), got {list(x.shape)}")
    ctx.set("Out", list(x.shape[:-1]) + [depth], convert_dtype(ctx.attr("dtype")), x.lod_level)


@register_op("one_hot", _one_hot_infer, no_grad_inputs=("X",),
             attrs={"depth": 1, "dtype": "float32", "allow_out_of_range": False})
def one_hot(ctx: KernelContext) -> None:
    xp, x, depth = ctx.xp, ctx.x("X"), int(ctx.attrs["depth"])
    bad = (x < 0) | (x >= depth)
    if not ctx.attrs["allow_out_of_range"] and bool(bad.any()):
        v = int(x[bad].reshape(-1)[0])
        raise InvalidArgumentError(f"op 'one_hot': X '{ctx.ins['X'][0]}' holds {v}, outside [0, {depth})")
    # out-of-range ids (when allowed) match no column and give an all-zero row
    out = (x.reshape(x.shape[:-1] + (1,)) == xp.arange(depth)).astype(convert_dtype(ctx.attrs["dtype"]))
    ctx.out("Out", out, ctx.lod("X"))
