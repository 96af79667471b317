"""LoD sequence ops: ``sequence_conv``, ``sequence_softmax``, ``sequence_expand``,
``sequence_reshape`` and ``lod_reset``.

Each works on the offsets of the last LoD level (see ``lod_util``); the index
arrays that say which input row feeds which output row are built on the host
once per call, then one gather (forward) and one scatter-add (gradient) move
the data.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from ..backend import scatter_add, to_numpy
from ..registry import KernelContext, ShapeContext, register_grad, register_op
from .lod_util import checked_offsets, last_offsets, seg_ids, segment_max, segment_sum


# ------------------------------------------------------------ sequence_conv
def _seq_conv_infer(ctx: ShapeContext) -> None:
    x, f = ctx.var("X"), ctx.var("Filter")
    length = int(ctx.attr("contextLength"))
    if int(ctx.attr("contextStride")) != 1:
        raise ctx.fail(f"contextStride must be 1 (the only stride fluid supports), got {ctx.attr('contextStride')}")
    if length < 1:
        raise ctx.fail(f"contextLength must be >= 1, got {length}")
    if len(x.shape) != 2 or len(f.shape) != 2:
        raise ctx.fail("X must be [T, D] and Filter [contextLength * D, num_filters]")
    if x.shape[1] > 0 and f.shape[0] != length * x.shape[1]:
        raise ctx.fail(f"Filter has {f.shape[0]} rows but contextLength * D = {length} * {x.shape[1]}")
    ctx.set("Out", (x.shape[0], f.shape[1]), x.dtype, x.lod_level)


def _context_index(off: np.ndarray, length: int, start: int) -> tuple[np.ndarray, np.ndarray]:
    """[T, length] source row of each context slot (0 where padded) and its validity mask."""
    seg = seg_ids(off)
    src = np.arange(off[-1])[:, None] + start + np.arange(length)[None, :]
    valid = (src >= off[:-1][seg][:, None]) & (src < off[1:][seg][:, None])
    return np.where(valid, src, 0), valid


def _seq_conv_cols(ctx: KernelContext) -> tuple[Any, Any, Any]:
    xp, x = ctx.xp, ctx.x("X")
    off = last_offsets(ctx, "X", x.shape[0], "sequence_conv")
    src, valid = _context_index(off, int(ctx.attrs["contextLength"]), int(ctx.attrs["contextStart"]))
    mask = xp.asarray(valid.astype(x.dtype))[:, :, None]
    cols = x[xp.asarray(src)] * mask  # [T, L, D]; rows outside the sequence are zero padding
    return cols, xp.asarray(src), mask


@register_op("sequence_conv", _seq_conv_infer,
             attrs={"contextLength": 3, "contextStart": -1, "contextStride": 1, "paddingTrainable": False})
def sequence_conv(ctx: KernelContext) -> None:
    """Out[t] = concat(X[t + start], ..., X[t + start + L - 1]) @ Filter, zero rows outside the sequence."""
    if ctx.attrs.get("paddingTrainable"):
        raise InvalidArgumentError("op 'sequence_conv': paddingTrainable=True is not supported")
    cols, _, _ = _seq_conv_cols(ctx)
    f = ctx.x("Filter")
    ctx.out("Out", cols.reshape(cols.shape[0], -1) @ f, ctx.lod("X"))


@register_grad("sequence_conv")
def sequence_conv_grad(ctx: KernelContext) -> None:
    x, f, g = ctx.x("X"), ctx.x("Filter"), ctx.x("Out@GRAD")
    cols, src, mask = _seq_conv_cols(ctx)
    if ctx.wants("Filter@GRAD"):
        ctx.out("Filter@GRAD", cols.reshape(cols.shape[0], -1).T @ g)
    if ctx.wants("X@GRAD"):
        dcols = (g @ f.T).reshape(cols.shape) * mask
        dx = ctx.xp.zeros(x.shape, dtype=x.dtype)
        scatter_add(dx, src.reshape(-1), dcols.reshape(-1, x.shape[1]))
        ctx.out("X@GRAD", dx, ctx.lod("X"))


# --------------------------------------------------------- sequence_softmax
def _seq_softmax_infer(ctx: ShapeContext) -> None:
    x = ctx.var("X")
    if len(x.shape) == 2 and x.shape[1] not in (1, -1) or len(x.shape) > 2:
        raise ctx.fail(f"X must be [T] or [T, 1], got {list(x.shape)}")
    ctx.share("X", "Out")


@register_op("sequence_softmax", _seq_softmax_infer, attrs={"use_cudnn": False})
def sequence_softmax(ctx: KernelContext) -> None:
    """Softmax over the rows of each sequence."""
    xp, x = ctx.xp, ctx.x("X")
    flat = x.reshape(-1, 1)
    off = last_offsets(ctx, "X", flat.shape[0], "sequence_softmax")
    seg = xp.asarray(seg_ids(off))
    e = xp.exp(flat - segment_max(xp, flat, off)[seg])
    out = e / segment_sum(xp, e, off)[seg]
    ctx.out("Out", out.reshape(x.shape).astype(x.dtype, copy=False), ctx.lod("X"))


@register_grad("sequence_softmax")
def sequence_softmax_grad(ctx: KernelContext) -> None:
    xp, y, g = ctx.xp, ctx.x("Out"), ctx.x("Out@GRAD")
    y2, g2 = y.reshape(-1, 1), g.reshape(-1, 1)
    off = last_offsets(ctx, "X", y2.shape[0], "sequence_softmax")
    dot = segment_sum(xp, g2 * y2, off)[xp.asarray(seg_ids(off))]
    ctx.out("X@GRAD", (y2 * (g2 - dot)).reshape(y.shape), ctx.lod("X"))


# ---------------------------------------------------------- sequence_expand
MAX_EXPANDED_ROWS = 1 << 28
def _seq_expand_infer(ctx: ShapeContext) -> None:
    x, y = ctx.var("X"), ctx.var("Y")
    if x.lod_level > 1:
        raise ctx.fail(f"X may have at most one LoD level, '{x.name}' has {x.lod_level}")
    if y.lod_level < 1:
        raise ctx.fail(f"Y '{y.name}' must be a LoD tensor (lod_level >= 1)")
    ref = int(ctx.attr("ref_level"))
    if not -1 <= ref < y.lod_level:
        raise ctx.fail(f"ref_level {ref} is outside Y's {y.lod_level} LoD levels")
    ctx.set("Out", (-1,) + tuple(x.shape[1:]), x.dtype, x.lod_level)


def _expand_index(ctx: KernelContext, nrows: int) -> tuple[np.ndarray, list[list[int]] | None]:
    """Source row of every output row, and the output LoD (only when X has one)."""
    y_lod = ctx.lod("Y")
    if not y_lod:
        raise InvalidArgumentError(f"op 'sequence_expand': Y '{ctx.ins['Y'][0]}' has no LoD")
    ref = int(ctx.attrs["ref_level"])
    ref_off = np.asarray(y_lod[ref], dtype=np.int64)
    x_lod = ctx.lod("X")
    x_off = (checked_offsets(x_lod[-1], nrows, "sequence_expand", ctx.ins["X"][0]) if x_lod
             else np.arange(nrows + 1, dtype=np.int64))
    if ref_off.size != x_off.size:
        raise InvalidArgumentError(
            f"op 'sequence_expand': X '{ctx.ins['X'][0]}' has {x_off.size - 1} sequences but level {ref} of "
            f"Y '{ctx.ins['Y'][0]}' has {ref_off.size - 1}")
    repeats = np.diff(ref_off)
    total = int((np.diff(x_off) * repeats).sum())
    if total > MAX_EXPANDED_ROWS:  # the LoD (data) decides the size: bound it before allocating
        raise InvalidArgumentError(
            f"op 'sequence_expand': expanding '{ctx.ins['X'][0]}' by the LoD of '{ctx.ins['Y'][0]}' would make "
            f"{total} rows (more than {MAX_EXPANDED_ROWS})")
    block = np.repeat(np.arange(x_off.size - 1), repeats)  # the X sequence each output block copies
    lens = np.diff(x_off)[block]
    out_off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    src = np.arange(out_off[-1]) + np.repeat(x_off[:-1][block] - out_off[:-1], lens)
    return src, ([out_off.tolist()] if x_lod else None)


@register_op("sequence_expand", _seq_expand_infer, no_grad_inputs=("Y",), attrs={"ref_level": -1})
def sequence_expand(ctx: KernelContext) -> None:
    """Repeat sequence i of X (row i when X has no LoD) as often as Y's level ``ref_level`` says."""
    x = ctx.x("X")
    src, lod = _expand_index(ctx, x.shape[0])
    ctx.out("Out", x[ctx.xp.asarray(src)], lod)


@register_grad("sequence_expand")
def sequence_expand_grad(ctx: KernelContext) -> None:
    if not ctx.wants("X@GRAD"):
        return
    x, g = ctx.x("X"), ctx.x("Out@GRAD")
    src, _ = _expand_index(ctx, x.shape[0])
    dx = ctx.xp.zeros(x.shape, dtype=g.dtype)
    scatter_add(dx, ctx.xp.asarray(src), g)
    ctx.out("X@GRAD", dx, ctx.lod("X"))


# --------------------------------------------------------- sequence_reshape
def _seq_reshape_infer(ctx: ShapeContext) -> None:
    x, d = ctx.var("X"), int(ctx.attr("new_dim"))
    if d < 1 or len(x.shape) != 2:
        raise ctx.fail(f"X must be [T, D] and new_dim >= 1, got new_dim={d}")
    ctx.set("Out", (-1, d), x.dtype, x.lod_level)


def _reshaped_lod(ctx: KernelContext, x: Any, new_dim: int) -> list[list[int]]:
    off = last_offsets(ctx, "X", x.shape[0], "sequence_reshape")
    total = off * x.shape[1]
    if (total % new_dim).any():
        bad = int(np.diff(off)[np.argmax(np.diff(total) % new_dim != 0)])
        raise InvalidArgumentError(
            f"op 'sequence_reshape': a sequence of '{ctx.ins['X'][0]}' has {bad} rows of width {x.shape[1]}, "
            f"which does not divide into rows of new_dim={new_dim}")
    return ctx.lod("X")[:-1] + [(total // new_dim).tolist()]


@register_op("sequence_reshape", _seq_reshape_infer, attrs={"new_dim": 1})
def sequence_reshape(ctx: KernelContext) -> None:
    """Each sequence's values re-cut into rows of ``new_dim``; offsets scale by D / new_dim."""
    x, d = ctx.x("X"), int(ctx.attrs["new_dim"])
    lod = _reshaped_lod(ctx, x, d)  # checks every sequence divides before reshaping
    ctx.out("Out", x.reshape(-1, d), lod)


@register_grad("sequence_reshape")
def sequence_reshape_grad(ctx: KernelContext) -> None:
    x = ctx.x("X")
    ctx.out("X@GRAD", ctx.x("Out@GRAD").reshape(x.shape), ctx.lod("X"))


# ------------------------------------------------------------------ lod_reset
def _lod_reset_infer(ctx: ShapeContext) -> None:
    x = ctx.var("X")
    level = 1
    if ctx.has("Y"):
        y = ctx.var("Y")
        level = max(y.lod_level, 1)
    elif not ctx.attr("target_lod"):
        raise ctx.fail("lod_reset needs Y or a non-empty target_lod")
    ctx.set("Out", x.shape, x.dtype, level)


def _target_lod(ctx: KernelContext, nrows: int) -> list[list[int]]:
    if ctx.has("Y"):
        y_lod = ctx.lod("Y")
        if y_lod:
            lod = [list(map(int, lv)) for lv in y_lod]
        else:
            lod = [to_numpy(ctx.x("Y")).reshape(-1).astype(np.int64).tolist()]
        what = f"the LoD from Y '{ctx.ins['Y'][0]}'"
    else:
        lod = [list(map(int, ctx.attrs["target_lod"]))]
        what = "target_lod"
    try:
        checked_offsets(lod[-1], nrows, "lod_reset", ctx.ins["X"][0])
    except InvalidArgumentError as e:
        raise InvalidArgumentError(f"{e} ({what})") from None
    return lod


@register_op("lod_reset", _lod_reset_infer, no_grad_inputs=("Y",), attrs={"target_lod": []})
def lod_reset(ctx: KernelContext) -> None:
    """X's values with a new LoD: Y's LoD, Y's values as offsets, or ``target_lod``."""
    x = ctx.x("X")
    ctx.out("Out", x, _target_lod(ctx, x.shape[0]))


@register_grad("lod_reset")
def lod_reset_grad(ctx: KernelContext) -> None:
    ctx.out("X@GRAD", ctx.x("Out@GRAD"), ctx.lod("X"))
