"""Embedding lookup (``lookup_table``) and LoD sequence pooling (``sequence_pool``).

Sequence kernels work on the offsets of the last LoD level.  Index arrays
derived from the offsets are built on the host with numpy (offsets are host
lists) and moved to the kernel's array module once per call; reductions use
``ufunc.reduceat`` where the array module has it and a scatter-add otherwise,
so no kernel loops over sequences in Python.
"""
from __future__ import annotations

import functools

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from ..backend import scatter_add, to_numpy
from ..registry import KernelContext, ShapeContext, register_grad, register_op
from ..scope import SelectedRows, lod_lists


def scatter_add_rows(xp: Any, out: Any, rows: Any, values: Any) -> None:
    """out[rows[i]] += values[i], duplicates accumulated (in place)."""
    scatter_add(out, rows, values)


# ------------------------------------------------------------- lookup_table
def lookup_table_infer(ctx: ShapeContext) -> None:
    """Shape inference of a table lookup (Out = [*Ids.shape[:-1], width]); public because
    ``distributed_lookup_table`` (pserver) checks its inputs the same way."""
    ws, ids = ctx.shape("W"), ctx.shape("Ids")
    if len(ws) != 2:
        raise ctx.fail(f"W must be a [vocabulary, width] table, got shape {list(ws)}")
    if ids and ids[-1] not in (1, -1):  # an empty shape means "not declared": checked at run time
        raise ctx.fail(f"Ids must have a last dimension of 1 (shape [..., 1]), got {list(ids)}")
    if np.dtype(ctx.dtype("Ids")).kind not in "iu":
        raise ctx.fail(f"Ids must be int64, got {ctx.dtype('Ids')}")
    pad = int(ctx.attr("padding_idx"))
    if pad != -1 and ws[0] > 0 and not 0 <= pad < ws[0]:
        raise ctx.fail(f"padding_idx {pad} is outside the vocabulary [0, {ws[0]})")
    lead = tuple(ids[:-1]) if ids else (-1,)
    ctx.set("Out", lead + (ws[1],), ctx.dtype("W"), ctx.var("Ids").lod_level)


def _checked_ids(ctx: KernelContext, vocab: int) -> Any:
    ids = ctx.x("Ids")
    flat = ids.reshape(-1)
    if flat.size:
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= vocab:
            bad = hi if hi >= vocab else lo
            # MultiSlot ids are uint64 stored as int64: show what the data said, not "id -1"
            shown = str(bad) if bad >= 0 else f"{bad + 2**64} (uint64; {bad} as int64)"
            raise InvalidArgumentError(
                f"op 'lookup_table': Ids '{ctx.ins['Ids'][0]}' holds id {shown}, outside the vocabulary "
                f"[0, {vocab}) of table '{ctx.ins['W'][0]}' (shape {list(ctx.x('W').shape)})")
    return flat


@register_op("lookup_table", lookup_table_infer, no_grad_inputs=("Ids",),
             attrs={"is_sparse": False, "is_distributed": False, "padding_idx": -1, "remote_prefetch": False},
             sparse_grad=lambda op: {"W"} if op.attrs.get("is_sparse") else set())
def lookup_table(ctx: KernelContext) -> None:
    """Out[i] = W[Ids[i]]; rows whose id is padding_idx are zeros."""
    xp, w = ctx.xp, ctx.x("W")
    ids = _checked_ids(ctx, w.shape[0])
    out = xp.take(w, ids, axis=0)
    pad = ctx.attrs["padding_idx"]
    if pad != -1:
        out[ids == pad] = 0
    ids_shape = ctx.x("Ids").shape
    lead = ids_shape[:-1] if len(ids_shape) > 1 and ids_shape[-1] == 1 else ids_shape
    ctx.out("Out", out.reshape(lead + w.shape[1:]), ctx.lod("Ids"))


@register_grad("lookup_table")
def lookup_table_grad(ctx: KernelContext) -> None:
    """dW: SelectedRows(ids, dOut) when is_sparse, else a dense scatter-add.

    Padding rows receive no gradient (dropped from the sparse rows, not added
    to the dense table).
    """
    if not ctx.wants("W@GRAD"):
        return
    xp, w = ctx.xp, ctx.x("W")
    ids = ctx.x("Ids").reshape(-1)
    g = ctx.x("Out@GRAD").reshape(ids.shape[0], -1)
    pad = ctx.attrs["padding_idx"]
    if pad != -1:
        keep = ids != pad
        ids, g = ids[keep], g[keep]
    if ctx.attrs["is_sparse"]:
        ctx.out("W@GRAD", SelectedRows(to_numpy(ids), g.astype(w.dtype, copy=False), w.shape[0]))
        return
    dw = xp.zeros(w.shape, dtype=w.dtype)
    scatter_add_rows(xp, dw, ids, g)
    ctx.out("W@GRAD", dw)


# ------------------------------------------------------------ sequence_pool
POOL_TYPES = ("SUM", "AVERAGE", "SQRT", "MAX", "FIRST", "LAST")


def _pool_infer(ctx: ShapeContext) -> None:
    pt = str(ctx.attr("pooltype")).upper()
    if pt not in POOL_TYPES:
        raise ctx.fail(f"pooltype {ctx.attr('pooltype')!r} is not one of {', '.join(POOL_TYPES)}")
    x = ctx.var("X")
    rest = tuple(x.shape[1:])
    ctx.set("Out", (-1,) + rest, x.dtype, max(x.lod_level - 1, 0))
    ctx.set("MaxIndex", (-1,) + rest, "int32", 0)


class _Segments:
    """Host-side index arrays of one LoD level: offsets, lengths, non-empty mask."""

    __slots__ = ("offsets", "lengths", "nonempty", "all_nonempty", "starts")

    def __init__(self, offsets: list[int]) -> None:
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.diff(self.offsets)
        self.nonempty = self.lengths > 0
        self.all_nonempty = bool(self.nonempty.all())
        self.starts = self.offsets[:-1][self.nonempty]

    @property
    def seg_of_row(self) -> np.ndarray:
        """The sequence each row belongs to."""
        return np.repeat(np.arange(len(self.lengths)), self.lengths)


def _segments(ctx: KernelContext, nrows: int) -> tuple[_Segments, list[list[int]] | None]:
    lod = ctx.lod("X")
    name = ctx.ins["X"][0]
    if not lod:
        raise InvalidArgumentError(
            f"op 'sequence_pool': input '{name}' has no LoD; feed it as a LoDTensor with lod_level >= 1 "
            f"(fleetkit.create_lod_tensor or a (values, sequence_lengths) tuple)")
    last = lod[-1]
    seg = _Segments(last)
    if not len(last) or last[0] != 0 or last[-1] != nrows or (seg.lengths.size and seg.lengths.min() < 0):
        last = lod_lists([last])[0]
        shown = last if len(last) <= 12 else last[:6] + ["..."] + last[-5:]
        raise InvalidArgumentError(
            f"op 'sequence_pool': the LoD offsets {shown} of input '{name}' do not fit its {nrows} rows "
            f"(they must start at 0, never decrease and end at {nrows})")
    return seg, (lod[:-1] or None)


def _segment_reduce(xp: Any, ufunc: str, x2: Any, seg: _Segments) -> Any:
    """ufunc-reduce each non-empty segment of the rows of ``x2``: [num_nonempty, D]."""
    if xp is np:
        return getattr(np, ufunc).reduceat(x2, seg.starts, axis=0)
    if ufunc != "add":
        raise NotImplementedError(ufunc)
    out = xp.zeros((len(seg.lengths), x2.shape[1]), dtype=x2.dtype)
    scatter_add_rows(xp, out, seg.seg_of_row, x2)
    return out[xp.asarray(seg.nonempty)]


def _segment_argmax(xp: Any, x2: Any, seg: _Segments) -> tuple[Any, Any]:
    """Per non-empty segment and column: the max and the row index of its first occurrence."""
    if xp is np:
        mx = np.maximum.reduceat(x2, seg.starts, axis=0)
        rows = np.arange(x2.shape[0], dtype=np.int64)[:, None]
        lens = seg.lengths[seg.nonempty]
        hit = x2 == np.repeat(mx, lens, axis=0)
        first = np.minimum.reduceat(np.where(hit, rows, x2.shape[0]), seg.starts, axis=0)
        return mx, first
    # other array modules: pad to [segments, longest, D] and reduce along the middle axis
    lens = seg.lengths[seg.nonempty]
    nseg, longest = len(lens), int(lens.max())
    seg_ids = np.repeat(np.arange(nseg), lens)
    pos = np.arange(x2.shape[0]) - np.repeat(seg.starts, lens)
    padded = xp.full((nseg, longest, x2.shape[1]), -xp.inf, dtype=x2.dtype)
    padded[xp.asarray(seg_ids), xp.asarray(pos)] = x2
    arg = padded.argmax(axis=1)
    return padded.max(axis=1), arg + xp.asarray(seg.starts)[:, None]


def _pool_nonempty(xp: Any, pt: str, x2: Any, seg: _Segments, is_test: bool) -> tuple[Any, Any]:
    """Pooled rows of the non-empty segments, plus MaxIndex rows for MAX when training."""
    if pt == "MAX":
        if is_test and xp is np:  # inference needs no MaxIndex (it only feeds the gradient)
            return np.maximum.reduceat(x2, seg.starts, axis=0), None
        return _segment_argmax(xp, x2, seg)
    if pt == "FIRST":
        return x2[xp.asarray(seg.starts)], None
    if pt == "LAST":
        return x2[xp.asarray(seg.offsets[1:][seg.nonempty] - 1)], None
    s = _segment_reduce(xp, "add", x2, seg)
    lens = seg.lengths[seg.nonempty].astype(x2.dtype)[:, None]
    if pt == "AVERAGE":
        s = s / xp.asarray(lens)
    elif pt == "SQRT":
        s = s / xp.asarray(np.sqrt(lens))
    return s, None


@functools.lru_cache(maxsize=16)
def _unit_offsets(nrows: int) -> list[int]:
    return list(range(nrows + 1))


@functools.lru_cache(maxsize=16)
def _unit_offset_array(nrows: int) -> np.ndarray:
    return np.arange(nrows + 1, dtype=np.int64)


def _one_row_each(ctx: KernelContext, nrows: int) -> bool:
    """Whether every sequence of X's last LoD level holds exactly one row (offsets 0, 1, ...,
    nrows: a one-id slot, the commonest CTR input), where every pool type is the identity.
    One compare at C speed (list or array level); a bad LoD takes the general path."""
    lod = ctx.lod("X")
    last = lod[-1] if lod else None
    if last is None or len(last) != nrows + 1 or last[-1] != nrows:
        return False
    if type(last) is list:
        return last == _unit_offsets(nrows)
    return bool((last == _unit_offset_array(nrows)).all())


@register_op("sequence_pool", _pool_infer, grad_outputs=("Out",),
             attrs={"pooltype": "AVERAGE", "is_test": False, "pad_value": 0.0})
def sequence_pool(ctx: KernelContext) -> None:
    """One row per sequence of the last LoD level; empty sequences give ``pad_value``."""
    xp, x = ctx.xp, ctx.x("X")
    pt = ctx.attrs["pooltype"].upper()
    if _one_row_each(ctx, x.shape[0]):   # each pooled row is its one row (a copy: Out is its own)
        ctx.out("Out", x.copy(), ctx.lod("X")[:-1] or None)
        if pt == "MAX" and not ctx.attrs.get("is_test"):
            rows = xp.arange(x.shape[0], dtype=np.int32).reshape((-1,) + (1,) * (x.ndim - 1))
            ctx.out("MaxIndex", xp.broadcast_to(rows, x.shape).copy())
        return
    seg, out_lod = _segments(ctx, x.shape[0])
    x2 = x.reshape(x.shape[0], -1)
    nseq, width = len(seg.lengths), x2.shape[1]
    is_test = bool(ctx.attrs.get("is_test"))
    if seg.all_nonempty and nseq:
        out, max_index = _pool_nonempty(xp, pt, x2, seg, is_test)
    else:  # empty sequences keep pad_value (and MaxIndex -1)
        out = xp.full((nseq, width), ctx.attrs["pad_value"], dtype=x.dtype)
        max_index = None
        if pt == "MAX" and not is_test:
            max_index = xp.full((nseq, width), -1, dtype=np.int32)
        if seg.starts.size:
            pooled, pooled_index = _pool_nonempty(xp, pt, x2, seg, is_test)
            ne = xp.asarray(seg.nonempty)
            out[ne] = pooled
            if max_index is not None and pooled_index is not None:
                max_index[ne] = pooled_index
    ctx.out("Out", out.astype(x.dtype, copy=False).reshape((nseq,) + x.shape[1:]), out_lod)
    if max_index is not None:
        ctx.out("MaxIndex", max_index.astype(np.int32, copy=False).reshape((nseq,) + x.shape[1:]))


@register_grad("sequence_pool")
def sequence_pool_grad(ctx: KernelContext) -> None:
    if not ctx.wants("X@GRAD"):
        return
    xp, x = ctx.xp, ctx.x("X")
    pt = ctx.attrs["pooltype"].upper()
    if _one_row_each(ctx, x.shape[0]):   # every pool type passed its one row through
        g = ctx.x("Out@GRAD")
        ctx.out("X@GRAD", g.astype(x.dtype, copy=True).reshape(x.shape), ctx.lod("X"))
        return
    seg, _ = _segments(ctx, x.shape[0])
    g = ctx.x("Out@GRAD").reshape(len(seg.lengths), -1)
    dx = _pool_grad(xp, pt, x.shape[0], g, seg, ctx)
    ctx.out("X@GRAD", dx.astype(x.dtype, copy=False).reshape(x.shape), ctx.lod("X"))


def _pool_grad(xp: Any, pt: str, nrows: int, g: Any, seg: _Segments, ctx: KernelContext) -> Any:
    """dX rows from the per-sequence gradient ``g`` [num_seqs, D]."""
    d = g.shape[1]
    if pt in ("SUM", "AVERAGE", "SQRT"):
        if pt != "SUM":
            lens = np.maximum(seg.lengths, 1).astype(g.dtype)[:, None]
            g = g / xp.asarray(lens if pt == "AVERAGE" else np.sqrt(lens))
        if xp is np:
            return np.repeat(g, seg.lengths, axis=0)
        return g[xp.asarray(seg.seg_of_row)]
    dx = xp.zeros((nrows, d), dtype=g.dtype)
    if pt == "MAX":
        idx = ctx.x("MaxIndex").reshape(-1, d)
        ne = xp.asarray(seg.nonempty)
        cols = xp.arange(d)[None, :]
        dx[idx[ne].astype(np.int64), cols] = g[ne]  # (row, col) pairs are unique: rows lie in one segment
        return dx
    rows = seg.starts if pt == "FIRST" else seg.offsets[1:][seg.nonempty] - 1
    dx[xp.asarray(rows)] = g[xp.asarray(seg.nonempty)]
    return dx
