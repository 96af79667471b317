"""Sequence metrics: ``edit_distance`` (Levenshtein distance per sequence pair) and
``chunk_eval`` (chunk precision / recall / F1 for IOB, IOE, IOBES and plain tags).

Both run on the host over int64 LoD tensors and have no gradient.  chunk_eval reads
its tags with a small state machine (a chunk's end depends on whether one is open),
so it steps through the tags of each sequence in Python; metrics see few tokens per
batch compared with the layers that produce them.
"""
from __future__ import annotations

import numpy as np

from ...errors import InvalidArgumentError
from ..backend import to_numpy
from ..registry import KernelContext, ShapeContext, register_op
from .lod_util import last_offsets


def _host_seqs(ctx: KernelContext, slot: str, op: str) -> tuple[np.ndarray, np.ndarray]:
    x = to_numpy(ctx.x(slot)).reshape(-1).astype(np.int64)
    return x, last_offsets(ctx, slot, x.shape[0], op)


# ------------------------------------------------------------ edit_distance
def _edit_infer(ctx: ShapeContext) -> None:
    ctx.set("Out", (-1, 1), "float32", 0)
    ctx.set("SequenceNum", (1,), "int64", 0)


def levenshtein(a: np.ndarray, b: np.ndarray) -> int:
    """Edit distance with unit costs; one vectorized row update per element of ``a``.

    The insertion term makes row[j] depend on row[j - 1]; it is a running minimum
    of (candidate[k] - k) + j, so each row is a numpy ``minimum.accumulate``.
    """
    if a.size == 0 or b.size == 0:
        return int(max(a.size, b.size))
    j = np.arange(b.size + 1)
    row = j.copy()
    for i, ai in enumerate(a, start=1):
        cand = np.empty_like(row)
        cand[0] = i
        cand[1:] = np.minimum(row[1:] + 1, row[:-1] + (b != ai))
        row = np.minimum.accumulate(cand - j) + j
    return int(row[-1])


@register_op("edit_distance", _edit_infer, no_grad_inputs=("Hyps", "Refs"), attrs={"normalized": False})
def edit_distance(ctx: KernelContext) -> None:
    """Out[i] = edit distance of hypothesis i and reference i (divided by the reference
    length when ``normalized``); SequenceNum = the number of pairs."""
    hyps, hoff = _host_seqs(ctx, "Hyps", "edit_distance")
    refs, roff = _host_seqs(ctx, "Refs", "edit_distance")
    if hoff.size != roff.size:
        raise InvalidArgumentError(
            f"op 'edit_distance': {hoff.size - 1} hypotheses ('{ctx.ins['Hyps'][0]}') but {roff.size - 1} "
            f"references ('{ctx.ins['Refs'][0]}')")
    out = np.zeros((hoff.size - 1, 1), dtype=np.float32)
    for i in range(hoff.size - 1):
        h, r = hyps[hoff[i]:hoff[i + 1]], refs[roff[i]:roff[i + 1]]
        d = float(levenshtein(h, r))
        if ctx.attrs["normalized"]:
            if r.size == 0:
                raise InvalidArgumentError(f"op 'edit_distance': reference {i} is empty, cannot normalize")
            d /= r.size
        out[i, 0] = d
    ctx.out("Out", ctx.xp.asarray(out))
    ctx.out("SequenceNum", ctx.xp.asarray(np.array([hoff.size - 1], dtype=np.int64)))


# --------------------------------------------------------------- chunk_eval
#: scheme -> (tags per chunk type, begin, inside, end, single); -1: the scheme has no such tag
SCHEMES = {"IOB": (2, 0, 1, -1, -1), "IOE": (2, -1, 0, 1, -1), "IOBES": (4, 0, 1, 2, 3), "plain": (1, -1, -1, -1, -1)}


def _chunk_infer(ctx: ShapeContext) -> None:
    if ctx.attr("chunk_scheme") not in SCHEMES:
        raise ctx.fail(f"chunk_scheme {ctx.attr('chunk_scheme')!r} is not one of {list(SCHEMES)}")
    if int(ctx.attr("num_chunk_types")) < 1:
        raise ctx.fail(f"num_chunk_types must be >= 1, got {ctx.attr('num_chunk_types')}")
    for slot in ("Precision", "Recall", "F1-Score"):
        ctx.set(slot, (1,), "float32", 0)
    for slot in ("NumInferChunks", "NumLabelChunks", "NumCorrectChunks"):
        ctx.set(slot, (1,), "int64", 0)


def _ends(prev_tag: int, prev_type: int, tag: int, typ: int, other: int, s: tuple) -> bool:
    _, begin, inside, end, single = s
    if prev_type == other:
        return False
    if typ == other or typ != prev_type:
        return True
    if prev_tag in (begin, inside):
        return tag == begin or tag == single
    return prev_tag in (end, single)


def _begins(prev_tag: int, prev_type: int, tag: int, typ: int, other: int, s: tuple) -> bool:
    _, begin, inside, end, single = s
    if prev_type == other:
        return typ != other
    if typ == other:
        return False
    if typ != prev_type or tag in (begin, single):
        return True
    if tag in (inside, end):
        return prev_tag in (end, single)
    return False


def chunks(tags: np.ndarray, scheme: str, num_types: int) -> set[tuple[int, int, int]]:
    """(start, end, type) of every chunk in one sequence of tag ids."""
    s = SCHEMES[scheme]
    per = s[0]
    other = num_types
    out, start, open_, tag, typ = set(), 0, False, -1, other
    for i, t in enumerate(tags.tolist()):
        prev_tag, prev_type = tag, typ
        tag, typ = (t % per, t // per) if t < num_types * per else (-1, other)
        if open_ and _ends(prev_tag, prev_type, tag, typ, other, s):
            out.add((start, i - 1, prev_type))
            open_ = False
        if _begins(prev_tag, prev_type, tag, typ, other, s):
            start, open_ = i, True
    if open_:
        out.add((start, len(tags) - 1, typ))
    return out


def _checked_tags(ctx: KernelContext, slot: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
    x, off = _host_seqs(ctx, slot, "chunk_eval")
    if x.size and (x.min() < 0 or x.max() > limit):
        bad = int(x.max() if x.max() > limit else x.min())
        raise InvalidArgumentError(f"op 'chunk_eval': {slot} '{ctx.ins[slot][0]}' holds tag {bad}, outside "
                                   f"[0, {limit}] ({limit} is the outside tag 'O')")
    return x, off


@register_op("chunk_eval", _chunk_infer, no_grad_inputs=("Inference", "Label"),
             attrs={"num_chunk_types": 1, "chunk_scheme": "IOB", "excluded_chunk_types": []})
def chunk_eval(ctx: KernelContext) -> None:
    """Chunks found in Inference and Label per sequence; precision, recall, F1 and the counts."""
    a = ctx.attrs
    n_types, scheme = int(a["num_chunk_types"]), a["chunk_scheme"]
    limit = n_types * SCHEMES[scheme][0]
    inf, ioff = _checked_tags(ctx, "Inference", limit)
    lab, loff = _checked_tags(ctx, "Label", limit)
    if ioff.tolist() != loff.tolist():
        raise InvalidArgumentError("op 'chunk_eval': Inference and Label must have the same LoD")
    excluded = {int(t) for t in a["excluded_chunk_types"]}
    n_inf = n_lab = n_ok = 0
    for lo, hi in zip(ioff[:-1], ioff[1:]):
        ci = {c for c in chunks(inf[lo:hi], scheme, n_types) if c[2] not in excluded}
        cl = {c for c in chunks(lab[lo:hi], scheme, n_types) if c[2] not in excluded}
        n_inf, n_lab, n_ok = n_inf + len(ci), n_lab + len(cl), n_ok + len(ci & cl)
    p = n_ok / n_inf if n_inf else 0.0
    r = n_ok / n_lab if n_lab else 0.0
    f1 = 2 * p * r / (p + r) if n_ok else 0.0
    xp = ctx.xp
    for slot, v, dt in (("Precision", p, np.float32), ("Recall", r, np.float32), ("F1-Score", f1, np.float32),
                        ("NumInferChunks", n_inf, np.int64), ("NumLabelChunks", n_lab, np.int64),
                        ("NumCorrectChunks", n_ok, np.int64)):
        ctx.out(slot, xp.asarray(np.array([v], dtype=dt)))


# ----------------------------------------------------------- sequence_erase
def _erase_infer(ctx: ShapeContext) -> None:
    x = ctx.var("X")
    ctx.set("Out", (-1,) + tuple(x.shape[1:]), x.dtype, max(x.lod_level, 1))


@register_op("sequence_erase", _erase_infer, no_grad_inputs=("X",), attrs={"tokens": []})
def sequence_erase(ctx: KernelContext) -> None:
    """X without the rows whose token is in ``tokens``; the LoD shrinks to match."""
    x, off = _host_seqs(ctx, "X", "sequence_erase")
    keep = ~np.isin(x, np.asarray(ctx.attrs["tokens"], dtype=np.int64))
    kept = np.concatenate([[0], np.cumsum(keep)])
    ctx.out("Out", ctx.xp.asarray(x[keep].reshape(-1, 1)), [kept[off].astype(np.int64).tolist()])
