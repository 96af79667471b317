"""Linear-chain CRF: ``linear_chain_crf`` (negative log-likelihood of the label
sequence, with its gradient from forward-backward marginals) and ``crf_decoding``
(Viterbi path).

Transition [D + 2, D] is fluid 1.4's layout: row 0 holds the start weights, row 1
the end weights, rows 2.. the weight of moving from tag i to tag j.  Sequences run
together as in ``rnn``: sorted longest first, step t updates the sequences longer
than t at once, in log space (logsumexp), so nothing overflows.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from ..backend import scatter_add, to_numpy
from ..registry import KernelContext, ShapeContext, register_grad, register_op
from .lod_util import last_offsets, seg_ids
from .rnn import _Steps


def _crf_infer(ctx: ShapeContext) -> None:
    x, w = ctx.var("Emission"), ctx.var("Transition")
    if len(x.shape) != 2 or len(w.shape) != 2:
        raise ctx.fail("Emission must be [T, D] and Transition [D + 2, D]")
    d = x.shape[1]
    if d > 0 and tuple(w.shape) != (d + 2, d):
        raise ctx.fail(f"Transition must be [{d + 2}, {d}] for {d} tags, got {list(w.shape)}")
    if ctx.op.type == "linear_chain_crf":
        ctx.set("LogLikelihood", (-1, 1), x.dtype, 0)
    else:
        ctx.set("ViterbiPath", (x.shape[0], 1), "int64", x.lod_level)


def _lse(xp: Any, a: Any, axis: int) -> Any:
    m = a.max(axis=axis, keepdims=True)
    return (m + xp.log(xp.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _setup(ctx: KernelContext, op: str) -> tuple[Any, Any, np.ndarray]:
    x = ctx.x("Emission")
    off = last_offsets(ctx, "Emission", x.shape[0], op)
    if (np.diff(off) == 0).any():
        raise InvalidArgumentError(f"op '{op}': Emission '{ctx.ins['Emission'][0]}' has an empty sequence")
    return x, ctx.x("Transition"), off


def _labels(ctx: KernelContext, d: int) -> np.ndarray:
    lab = to_numpy(ctx.x("Label")).reshape(-1).astype(np.int64)
    if lab.size and (lab.min() < 0 or lab.max() >= d):
        raise InvalidArgumentError(f"op 'linear_chain_crf': Label '{ctx.ins['Label'][0]}' holds a tag outside "
                                   f"[0, {d})")
    return lab


def _alpha_beta(xp: Any, x: Any, w: Any, off: np.ndarray) -> tuple[Any, Any, Any]:
    """Per row: log forward scores alpha, log backward scores beta; per sequence: log Z."""
    start, end, trans = w[0], w[1], w[2:]
    alpha, beta = xp.empty_like(x), xp.empty_like(x)
    fwd, bwd = _Steps(xp, off, False), _Steps(xp, off, True)
    a = None
    for t, rows in enumerate(fwd.rows):
        n = rows.shape[0]
        a = start + x[rows] if t == 0 else _lse(xp, a[:n, :, None] + trans, 1) + x[rows]
        alpha[rows] = a
    b, prev = None, None
    for t, rows in enumerate(bwd.rows):
        n = rows.shape[0]
        b = xp.broadcast_to(end, (n, x.shape[1])) if t == 0 else \
            _lse(xp, trans[None] + (x[prev[:n]] + b[:n])[:, None, :], 2)
        beta[rows] = b
        prev = rows
    last = xp.asarray(off[1:] - 1)
    log_z = _lse(xp, alpha[last] + end, 1)
    return alpha, beta, log_z


def _path_score(xp: Any, x: Any, w: Any, off: np.ndarray, lab: np.ndarray) -> Any:
    start, end, trans = w[0], w[1], w[2:]
    seg = seg_ids(off)
    rows = np.arange(off[-1])
    emit = xp.zeros(off.size - 1, x.dtype)
    scatter_add(emit, xp.asarray(seg), x[xp.asarray(rows), xp.asarray(lab)])
    inner = np.ones(off[-1], bool)
    inner[off[:-1]] = False  # rows with a predecessor in their sequence
    r = rows[inner]
    moves = trans[xp.asarray(lab[r - 1]), xp.asarray(lab[r])]
    scatter_add(emit, xp.asarray(seg[r]), moves)
    return emit + start[xp.asarray(lab[off[:-1]])] + end[xp.asarray(lab[off[1:] - 1])]


@register_op("linear_chain_crf", _crf_infer, no_grad_inputs=("Label",), grad_outputs=("LogLikelihood",))
def linear_chain_crf(ctx: KernelContext) -> None:
    """LogLikelihood[i] = log Z_i - score(label path i): the cost to minimize."""
    xp = ctx.xp
    x, w, off = _setup(ctx, "linear_chain_crf")
    lab = _labels(ctx, x.shape[1])
    _, _, log_z = _alpha_beta(xp, x, w, off)
    ctx.out("LogLikelihood", (log_z - _path_score(xp, x, w, off, lab)).reshape(-1, 1))


@register_grad("linear_chain_crf")
def linear_chain_crf_grad(ctx: KernelContext) -> None:
    """Expected minus observed counts (node and transition marginals), times the upstream gradient."""
    xp = ctx.xp
    x, w, off = _setup(ctx, "linear_chain_crf")
    lab = _labels(ctx, x.shape[1])
    alpha, beta, log_z = _alpha_beta(xp, x, w, off)
    seg = seg_ids(off)
    g = ctx.x("LogLikelihood@GRAD").reshape(-1)
    g_row = g[xp.asarray(seg)][:, None]
    node = xp.exp(alpha + beta - log_z[xp.asarray(seg)][:, None])
    onehot = xp.zeros_like(x)
    onehot[xp.asarray(np.arange(x.shape[0])), xp.asarray(lab)] = 1
    dx = (node - onehot) * g_row
    if ctx.wants("Emission@GRAD"):
        ctx.out("Emission@GRAD", dx, ctx.lod("Emission"))
    if not ctx.wants("Transition@GRAD"):
        return
    dw = xp.zeros_like(w)
    first, last = xp.asarray(off[:-1]), xp.asarray(off[1:] - 1)
    dw[0] = dx[first].sum(0)
    dw[1] = dx[last].sum(0)
    inner = np.ones(off[-1], bool)
    inner[off[:-1]] = False
    r = np.nonzero(inner)[0]
    if r.size:
        rr, rp = xp.asarray(r), xp.asarray(r - 1)
        pair = xp.exp(alpha[rp][:, :, None] + w[2:][None] + (x[rr] + beta[rr])[:, None, :]
                      - log_z[xp.asarray(seg[r])][:, None, None])
        dw[2:] = (pair * g_row[rr][:, :, None]).sum(0)
        seen = xp.zeros((r.size, x.shape[1] * x.shape[1]), x.dtype)
        seen[xp.arange(r.size), xp.asarray(lab[r - 1] * x.shape[1] + lab[r])] = 1
        dw[2:] -= (seen * g_row[rr]).sum(0).reshape(x.shape[1], x.shape[1])
    ctx.out("Transition@GRAD", dw)


@register_op("crf_decoding", _crf_infer, no_grad_inputs=("Emission", "Transition", "Label"))
def crf_decoding(ctx: KernelContext) -> None:
    """The highest-scoring tag path of each sequence; with Label, 1 where the path matches it."""
    xp = ctx.xp
    x, w, off = _setup(ctx, "crf_decoding")
    start, end, trans = w[0], w[1], w[2:]
    steps = _Steps(xp, off, False)
    score = xp.zeros((steps.num, x.shape[1]), x.dtype)  # sorted order; finished sequences keep theirs
    back = []
    for t, rows in enumerate(steps.rows):
        n = rows.shape[0]
        if t == 0:
            score[:n] = start + x[rows]
            continue
        cand = score[:n, :, None] + trans  # [n, from, to]
        back.append(cand.argmax(axis=1))
        score[:n] = cand.max(axis=1) + x[rows]
    cur = (score + end).argmax(axis=1)  # each sequence's best last tag
    path = xp.zeros(x.shape[0], dtype=np.int64)
    for t in range(len(steps.rows) - 1, -1, -1):  # walk the back-pointers to the first row
        rows = steps.rows[t]
        n = rows.shape[0]
        path[rows] = cur[:n]
        if t:
            cur = xp.concatenate([back[t - 1][xp.arange(n), cur[:n]], cur[n:]])
    if ctx.has("Label"):
        path = (path == ctx.xp.asarray(to_numpy(ctx.x("Label")).reshape(-1))).astype(np.int64)
    ctx.out("ViterbiPath", path.reshape(-1, 1), ctx.lod("Emission"))
