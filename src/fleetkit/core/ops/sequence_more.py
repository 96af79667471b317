"""``sequence_expand_as``, ``sequence_slice``, ``sequence_enumerate`` and ``row_conv``
(lookahead convolution over each sequence)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from ..backend import scatter_add, to_numpy
from ..registry import KernelContext, ShapeContext, register_grad, register_op
from .lod_util import last_offsets, seg_ids, segment_sum


# ------------------------------------------------------- sequence_expand_as
def _expand_as_infer(ctx: ShapeContext) -> None:
    if ctx.var("Y").lod_level < 1:
        raise ctx.fail(f"Y '{ctx.var('Y').name}' must be a LoD tensor")
    ctx.set("Out", (-1,) + tuple(ctx.shape("X")[1:]), ctx.dtype("X"), 1)


def _y_offsets(ctx: KernelContext, rows: int) -> np.ndarray:
    y = ctx.x("Y")
    off = last_offsets(ctx, "Y", y.shape[0], "sequence_expand_as")
    if off.size - 1 != rows:
        raise InvalidArgumentError(f"op 'sequence_expand_as': X '{ctx.ins['X'][0]}' has {rows} rows but Y "
                                   f"'{ctx.ins['Y'][0]}' has {off.size - 1} sequences")
    return off


@register_op("sequence_expand_as", _expand_as_infer, no_grad_inputs=("Y",))
def sequence_expand_as(ctx: KernelContext) -> None:
    """Row i of X repeated as many times as sequence i of Y is long (Out takes Y's LoD)."""
    x = ctx.x("X")
    off = _y_offsets(ctx, x.shape[0])
    ctx.out("Out", x[ctx.xp.asarray(seg_ids(off))], [off.tolist()])


@register_grad("sequence_expand_as")
def sequence_expand_as_grad(ctx: KernelContext) -> None:
    x, g = ctx.x("X"), ctx.x("Out@GRAD")
    off = _y_offsets(ctx, x.shape[0])
    ctx.out("X@GRAD", segment_sum(ctx.xp, g.reshape(g.shape[0], -1), off).reshape(x.shape))


# ----------------------------------------------------------- sequence_slice
def _slice_infer(ctx: ShapeContext) -> None:
    ctx.set("Out", (-1,) + tuple(ctx.shape("X")[1:]), ctx.dtype("X"), 1)


def _slice_rows(ctx: KernelContext, nrows: int) -> tuple[np.ndarray, list[int]]:
    off = last_offsets(ctx, "X", nrows, "sequence_slice")
    start = to_numpy(ctx.x("Offset")).reshape(-1).astype(np.int64)
    length = to_numpy(ctx.x("Length")).reshape(-1).astype(np.int64)
    lens = np.diff(off)
    if start.size != lens.size or length.size != lens.size:
        raise InvalidArgumentError(f"op 'sequence_slice': Offset and Length need one value per sequence "
                                   f"({lens.size})")
    if (start < 0).any() or (length < 0).any() or (start + length > lens).any():
        i = int(np.argmax((start < 0) | (length < 0) | (start + length > lens)))
        raise InvalidArgumentError(f"op 'sequence_slice': sequence {i} of '{ctx.ins['X'][0]}' has {lens[i]} rows; "
                                   f"offset {start[i]} + length {length[i]} does not fit")
    out_off = np.concatenate([[0], np.cumsum(length)])
    src = np.arange(out_off[-1]) + np.repeat(off[:-1] + start - out_off[:-1], length)
    return src, out_off.astype(np.int64).tolist()


@register_op("sequence_slice", _slice_infer, no_grad_inputs=("Offset", "Length"))
def sequence_slice(ctx: KernelContext) -> None:
    """Rows Offset[i] ... Offset[i] + Length[i] - 1 of each sequence i."""
    x = ctx.x("X")
    src, off = _slice_rows(ctx, x.shape[0])
    ctx.out("Out", x[ctx.xp.asarray(src)], [off])


@register_grad("sequence_slice")
def sequence_slice_grad(ctx: KernelContext) -> None:
    x = ctx.x("X")
    src, _ = _slice_rows(ctx, x.shape[0])
    dx = ctx.xp.zeros_like(x)
    dx[ctx.xp.asarray(src)] = ctx.x("Out@GRAD")
    ctx.out("X@GRAD", dx, ctx.lod("X"))


# ------------------------------------------------------- sequence_enumerate
def _enumerate_infer(ctx: ShapeContext) -> None:
    if int(ctx.attr("win_size")) < 1:
        raise ctx.fail(f"win_size must be >= 1, got {ctx.attr('win_size')}")
    ctx.set("Out", (ctx.shape("X")[0], int(ctx.attr("win_size"))), ctx.dtype("X"), ctx.var("X").lod_level)


@register_op("sequence_enumerate", _enumerate_infer, no_grad_inputs=("X",), attrs={"win_size": 2, "pad_value": 0})
def sequence_enumerate(ctx: KernelContext) -> None:
    """Out[t] = the ``win_size`` ids starting at row t of its sequence, ``pad_value`` past its end."""
    x = ctx.x("X").reshape(-1)
    off = last_offsets(ctx, "X", x.shape[0], "sequence_enumerate")
    src = np.arange(x.shape[0])[:, None] + np.arange(int(ctx.attrs["win_size"]))[None, :]
    inside = src < off[1:][seg_ids(off)][:, None]
    vals = x[ctx.xp.asarray(np.where(inside, src, 0))]
    ctx.out("Out", ctx.xp.where(ctx.xp.asarray(inside), vals, int(ctx.attrs["pad_value"])).astype(x.dtype),
            ctx.lod("X"))


# ------------------------------------------------------------------ row_conv
def _row_conv_infer(ctx: ShapeContext) -> None:
    x, f = ctx.shape("X"), ctx.shape("Filter")
    if len(x) != 2 or len(f) != 2 or (x[1] > 0 and f[1] != x[1]):
        raise ctx.fail("X must be [T, D] and Filter [future_context_size + 1, D]")
    ctx.share("X", "Out")


def _future_rows(ctx: KernelContext, nrows: int, k: int) -> tuple[Any, Any]:
    off = last_offsets(ctx, "X", nrows, "row_conv")
    src = np.arange(nrows)[:, None] + np.arange(k)[None, :]
    inside = src < off[1:][seg_ids(off)][:, None]
    return ctx.xp.asarray(np.where(inside, src, 0)), ctx.xp.asarray(inside)


@register_op("row_conv", _row_conv_infer)
def row_conv(ctx: KernelContext) -> None:
    """Out[t] = sum_k Filter[k] * X[t + k] over the rows ahead of t in its sequence."""
    x, f = ctx.x("X"), ctx.x("Filter")
    src, inside = _future_rows(ctx, x.shape[0], f.shape[0])
    ctx.out("Out", (x[src] * inside[:, :, None] * f[None]).sum(1), ctx.lod("X"))


@register_grad("row_conv")
def row_conv_grad(ctx: KernelContext) -> None:
    xp, x, f, g = ctx.xp, ctx.x("X"), ctx.x("Filter"), ctx.x("Out@GRAD")
    src, inside = _future_rows(ctx, x.shape[0], f.shape[0])
    m = inside[:, :, None].astype(x.dtype)
    if ctx.wants("Filter@GRAD"):
        ctx.out("Filter@GRAD", (x[src] * m * g[:, None, :]).sum(0))
    if ctx.wants("X@GRAD"):
        dx = xp.zeros_like(x)
        scatter_add(dx, src.reshape(-1), (g[:, None, :] * f[None] * m).reshape(-1, x.shape[1]))
        ctx.out("X@GRAD", dx, ctx.lod("X"))
