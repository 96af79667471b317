"""LoD sequences to and from padded batches, and per-sequence reordering:
``sequence_pad``, ``sequence_unpad``, ``sequence_reverse``, ``sequence_concat``."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from ..backend import to_numpy
from ..registry import KernelContext, ShapeContext, register_grad, register_op
from .lod_util import checked_offsets, last_offsets, seg_ids


def _positions(off: np.ndarray) -> np.ndarray:
    """Each row's position inside its sequence."""
    return np.arange(off[-1]) - np.repeat(off[:-1], np.diff(off))


# ------------------------------------------------------------- sequence_pad
def _pad_infer(ctx: ShapeContext) -> None:
    x = ctx.var("X")
    n = int(ctx.attr("padded_length"))
    ctx.set("Out", (-1, n) + tuple(x.shape[1:]), x.dtype, 0)
    ctx.set("Length", (-1,), "int64", 0)


def _pad_layout(ctx: KernelContext, nrows: int) -> tuple[np.ndarray, int]:
    off = last_offsets(ctx, "X", nrows, "sequence_pad")
    longest = int(np.diff(off).max()) if off.size > 1 else 0
    n = int(ctx.attrs["padded_length"])
    if n == -1:
        n = longest
    elif n < longest:
        raise InvalidArgumentError(
            f"op 'sequence_pad': padded_length {n} is shorter than the longest sequence ({longest}) of "
            f"'{ctx.ins['X'][0]}'")
    return off, n


@register_op("sequence_pad", _pad_infer, no_grad_inputs=("PadValue",), grad_outputs=("Out",),
             attrs={"padded_length": -1})
def sequence_pad(ctx: KernelContext) -> None:
    """[num_seqs, padded_length, ...] with each sequence's rows first and PadValue after."""
    xp, x = ctx.xp, ctx.x("X")
    off, n = _pad_layout(ctx, x.shape[0])
    pad = ctx.x("PadValue")
    out = xp.zeros((off.size - 1, n) + x.shape[1:], dtype=x.dtype)
    if pad is not None:  # one value, or one padding row shaped like a row of X
        out[...] = pad.reshape(pad.shape if pad.size > 1 else ()).astype(x.dtype, copy=False)
    out[xp.asarray(seg_ids(off)), xp.asarray(_positions(off))] = x
    ctx.out("Out", out)
    ctx.out("Length", xp.asarray(np.diff(off)))


@register_grad("sequence_pad")
def sequence_pad_grad(ctx: KernelContext) -> None:
    xp, x = ctx.xp, ctx.x("X")
    off, _ = _pad_layout(ctx, x.shape[0])
    g = ctx.x("Out@GRAD")
    ctx.out("X@GRAD", g[xp.asarray(seg_ids(off)), xp.asarray(_positions(off))], ctx.lod("X"))


# ----------------------------------------------------------- sequence_unpad
def _unpad_infer(ctx: ShapeContext) -> None:
    x = ctx.var("X")
    if len(x.shape) < 2:
        raise ctx.fail(f"X must be [num_seqs, padded_length, ...], got {list(x.shape)}")
    ctx.set("Out", (-1,) + tuple(x.shape[2:]), x.dtype, 1)


def _unpad_offsets(ctx: KernelContext, x: Any) -> np.ndarray:
    lens = to_numpy(ctx.x("Length")).reshape(-1).astype(np.int64)
    if lens.size != x.shape[0] or (lens < 0).any() or (lens > x.shape[1]).any():
        raise InvalidArgumentError(
            f"op 'sequence_unpad': Length '{ctx.ins['Length'][0]}' must hold {x.shape[0]} lengths in "
            f"[0, {x.shape[1]}], got {lens.tolist()[:12]}")
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)


@register_op("sequence_unpad", _unpad_infer, no_grad_inputs=("Length",))
def sequence_unpad(ctx: KernelContext) -> None:
    """The first Length[i] rows of each padded sequence i, as a LoD tensor."""
    xp, x = ctx.xp, ctx.x("X")
    off = _unpad_offsets(ctx, x)
    ctx.out("Out", x[xp.asarray(seg_ids(off)), xp.asarray(_positions(off))], [off.tolist()])


@register_grad("sequence_unpad")
def sequence_unpad_grad(ctx: KernelContext) -> None:
    xp, x = ctx.xp, ctx.x("X")
    off = _unpad_offsets(ctx, x)
    dx = xp.zeros(x.shape, dtype=x.dtype)
    dx[xp.asarray(seg_ids(off)), xp.asarray(_positions(off))] = ctx.x("Out@GRAD")
    ctx.out("X@GRAD", dx)


# --------------------------------------------------------- sequence_reverse
def _reverse_index(ctx: KernelContext, nrows: int) -> Any:
    off = last_offsets(ctx, "X", nrows, "sequence_reverse")
    seg = seg_ids(off)
    return ctx.xp.asarray(off[:-1][seg] + off[1:][seg] - 1 - np.arange(nrows))


@register_op("sequence_reverse", lambda ctx: ctx.share("X", "Y"))
def sequence_reverse(ctx: KernelContext) -> None:
    """Each sequence's rows in reverse order (the LoD is kept)."""
    x = ctx.x("X")
    ctx.out("Y", x[_reverse_index(ctx, x.shape[0])], ctx.lod("X"))


@register_grad("sequence_reverse")
def sequence_reverse_grad(ctx: KernelContext) -> None:
    g = ctx.x("Y@GRAD")
    ctx.out("X@GRAD", g[_reverse_index(ctx, g.shape[0])], ctx.lod("X"))


# ---------------------------------------------------------- sequence_concat
def _concat_infer(ctx: ShapeContext) -> None:
    xs = ctx.vars("X")
    if any(tuple(v.shape[1:]) != tuple(xs[0].shape[1:]) for v in xs):
        raise ctx.fail("every input must have the same row shape")
    ctx.set("Out", (-1,) + tuple(xs[0].shape[1:]), xs[0].dtype, 1)


def _concat_index(ctx: KernelContext, rows: list[int]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """For each output row: which input and which of its rows; and the output offsets."""
    offs = []
    for i, (name, n) in enumerate(zip(ctx.ins["X"], rows)):
        lod = ctx.lod("X", i)
        if not lod:
            raise InvalidArgumentError(f"op 'sequence_concat': input '{name}' has no LoD")
        offs.append(checked_offsets(lod[-1], n, "sequence_concat", name))
    if len({o.size for o in offs}) != 1:
        raise InvalidArgumentError(
            f"op 'sequence_concat': the inputs {ctx.ins['X']} hold different numbers of sequences "
            f"{[o.size - 1 for o in offs]}")
    lens = np.stack([np.diff(o) for o in offs], axis=1)  # [num_seqs, num_inputs]
    which = np.repeat(np.tile(np.arange(len(offs)), lens.shape[0]), lens.reshape(-1))
    starts = np.stack([o[:-1] for o in offs], axis=1).reshape(-1)
    block_off = np.concatenate([[0], np.cumsum(lens.reshape(-1))])
    row = np.arange(block_off[-1]) - np.repeat(block_off[:-1] - starts, lens.reshape(-1))
    return which, row, np.concatenate([[0], np.cumsum(lens.sum(1))]).astype(np.int64).tolist()


@register_op("sequence_concat", _concat_infer)
def sequence_concat(ctx: KernelContext) -> None:
    """Sequence i of the output is sequence i of every input, one after the other."""
    xp, xs = ctx.xp, ctx.xs("X")
    which, row, off = _concat_index(ctx, [x.shape[0] for x in xs])
    allx = xp.concatenate(xs, axis=0)
    base = np.concatenate([[0], np.cumsum([x.shape[0] for x in xs])[:-1]])
    ctx.out("Out", allx[xp.asarray(base[which] + row)], [off])


@register_grad("sequence_concat")
def sequence_concat_grad(ctx: KernelContext) -> None:
    xp, xs = ctx.xp, ctx.xs("X")
    which, row, _ = _concat_index(ctx, [x.shape[0] for x in xs])
    g = ctx.x("Out@GRAD")
    grads = []
    for i, x in enumerate(xs):
        d = xp.zeros(x.shape, dtype=x.dtype)
        pick = which == i
        d[xp.asarray(row[pick])] = g[xp.asarray(np.nonzero(pick)[0])]
        grads.append(d)
    names = ctx.op.outputs.get("X@GRAD", [])
    ctx.outs_list("X@GRAD", grads, [ctx.lod("X", i) for i in range(len(names))])
