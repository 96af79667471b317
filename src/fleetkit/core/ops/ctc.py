"""``warpctc``: the connectionist temporal classification loss of each sequence of
unnormalized logits against its label sequence, and its gradient.

The forward (alpha) and backward (beta) recursions run over the extended label
(blank, l1, blank, l2, ..., blank) in log space, all sequences of the batch at once:
one vectorized step per time step.  Log-probabilities use a large negative number
instead of -inf so impossible paths never make inf - inf; a label sequence that
cannot fit its input gets a loss of about 1e30.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from ..backend import scatter_add, to_numpy
from ..registry import KernelContext, ShapeContext, register_grad, register_op
from .lod_util import last_offsets, seg_ids

NEG = -1e30


def _ctc_infer(ctx: ShapeContext) -> None:
    if ctx.var("Logits").lod_level < 1 or ctx.var("Label").lod_level < 1:
        raise ctx.fail("Logits and Label must be LoD tensors (one sequence per example)")
    ctx.set("Loss", (-1, 1), ctx.dtype("Logits"), 0)
    ctx.set("WarpCTCGrad", ctx.shape("Logits"), ctx.dtype("Logits"), 0)


def _lae(xp: Any, *terms: Any) -> Any:
    out = terms[0]
    for t in terms[1:]:
        out = xp.logaddexp(out, t)
    return out


class _Problem:
    """The batch laid out as [time, sequence, extended-label position]."""

    def __init__(self, ctx: KernelContext) -> None:
        xp = self.xp = ctx.xp
        x = ctx.x("Logits")
        self.xo = last_offsets(ctx, "Logits", x.shape[0], "warpctc")
        lab = to_numpy(ctx.x("Label")).reshape(-1).astype(np.int64)
        lo = last_offsets(ctx, "Label", lab.size, "warpctc")
        blank, c = int(ctx.attrs["blank"]), x.shape[1]
        if self.xo.size != lo.size:
            raise InvalidArgumentError(f"op 'warpctc': {self.xo.size - 1} logit sequences but {lo.size - 1} labels")
        if lab.size and (lab.min() < 0 or lab.max() >= c or (lab == blank).any()):
            raise InvalidArgumentError(f"op 'warpctc': labels must be classes in [0, {c}) other than blank={blank}")
        self.t, n = np.diff(self.xo), self.xo.size - 1
        self.s = 2 * np.diff(lo) + 1
        smax, tmax = int(self.s.max()) if n else 1, int(self.t.max()) if n else 0
        ext = np.full((n, smax), blank, dtype=np.int64)
        ext[seg_ids(lo), 2 * (np.arange(lab.size) - np.repeat(lo[:-1], np.diff(lo))) + 1] = lab  # odd slots
        self.ext = ext
        pos = np.arange(smax)
        prev2 = np.concatenate([np.full((n, 2), -1), ext[:, :-2]], axis=1)
        self.skip = xp.asarray((pos >= 2) & (ext != blank) & (ext != prev2))
        self.inside = xp.asarray(pos[None, :] < self.s[:, None])  # [N, S]
        m = x.max(axis=1, keepdims=True)
        self.logp = x - m - xp.log(xp.exp(x - m).sum(axis=1, keepdims=True))
        rows = np.minimum(self.xo[:-1][None, :] + np.arange(tmax)[:, None], max(x.shape[0] - 1, 0))  # [T, N]
        self.rows = rows
        emit = self.logp[xp.asarray(rows)[:, :, None], xp.asarray(ext)[None, :, :]] if tmax else \
            xp.zeros((0, n, smax), x.dtype)
        self.emit = xp.where(self.inside[None], emit, NEG)
        self.n, self.smax, self.tmax = n, smax, tmax

    def _shift(self, a: Any, k: int) -> Any:
        return self.xp.concatenate([self.xp.full((a.shape[0], k), NEG, a.dtype), a[:, :-k]], axis=1)

    def _unshift(self, a: Any, k: int) -> Any:
        return self.xp.concatenate([a[:, k:], self.xp.full((a.shape[0], k), NEG, a.dtype)], axis=1)

    def alpha(self) -> Any:
        xp, e = self.xp, self.emit
        a = xp.full((self.n, self.smax), NEG, e.dtype)
        a[:, :2] = e[0, :, :2]
        out = [a]
        for t in range(1, self.tmax):
            a = _lae(xp, a, self._shift(a, 1), xp.where(self.skip, self._shift(a, 2), NEG)) + e[t]
            out.append(a)
        return xp.stack(out)

    def beta(self) -> Any:
        """Backward scores by each sequence's own time (its last frame first)."""
        xp, e = self.xp, self.emit
        beta = xp.full(e.shape, NEG, e.dtype)
        ar = xp.arange(self.n)
        b = None
        for tau in range(self.tmax):
            t = np.maximum(self.t - 1 - tau, 0)
            et = e[xp.asarray(t), ar]
            if tau == 0:
                last = xp.asarray(self.s - 1)
                b = xp.full((self.n, self.smax), NEG, e.dtype)
                b[ar, last] = et[ar, last]
                two = xp.asarray(np.maximum(self.s - 2, 0))
                b[ar, two] = xp.where(xp.asarray(self.s >= 2), et[ar, two], b[ar, two])
            else:
                b = _lae(xp, b, self._unshift(b, 1), self._unshift(xp.where(self.skip, b, NEG), 2)) + et
            live = np.nonzero(tau < self.t)[0]
            beta[xp.asarray(t[live]), xp.asarray(live)] = b[xp.asarray(live)]
        return beta

    def log_z(self, alpha: Any) -> Any:
        xp, ar = self.xp, self.xp.arange(self.n)
        a_end = alpha[xp.asarray(np.maximum(self.t - 1, 0)), ar]
        z = a_end[ar, xp.asarray(self.s - 1)]
        z2 = a_end[ar, xp.asarray(np.maximum(self.s - 2, 0))]
        return xp.where(xp.asarray(self.s >= 2), xp.logaddexp(z, z2), z)


@register_op("warpctc", _ctc_infer, no_grad_inputs=("Label",), grad_outputs=("Loss",),
             attrs={"blank": 0, "norm_by_times": False})
def warpctc(ctx: KernelContext) -> None:
    """Loss[i] = -log p(label i | logits i), summed over every alignment (softmax inside)."""
    p = _Problem(ctx)
    if (p.t == 0).any():
        raise InvalidArgumentError("op 'warpctc': every logit sequence needs at least one time step")
    loss = -p.log_z(p.alpha())
    ctx.out("Loss", loss.reshape(-1, 1).astype(ctx.x("Logits").dtype, copy=False))


@register_grad("warpctc")
def warpctc_grad(ctx: KernelContext) -> None:
    """softmax(logits) minus each class's alignment occupancy, times the upstream gradient
    (divided by the sequence length with norm_by_times, as fluid)."""
    xp = ctx.xp
    p = _Problem(ctx)
    alpha, beta = p.alpha(), p.beta()
    occ = alpha + beta - p.emit - p.log_z(alpha)[None, :, None]
    live = np.arange(p.tmax)[:, None] < p.t[None, :]  # [T, N]
    weight = xp.where(xp.asarray(live)[:, :, None] & p.inside[None], xp.exp(xp.minimum(occ, 0.0)), 0)
    x = ctx.x("Logits")
    grad = xp.exp(p.logp)
    rows = np.broadcast_to(p.rows[:, :, None], weight.shape)
    flat = (xp.asarray(rows) * x.shape[1] + xp.asarray(p.ext)[None]).reshape(-1)
    g2 = grad.reshape(-1)
    scatter_add(g2, flat, -weight.reshape(-1))
    scale = ctx.x("Loss@GRAD").reshape(-1)
    if ctx.attrs["norm_by_times"]:
        scale = scale / xp.asarray(p.t.astype(x.dtype))
    per_row = scale[xp.asarray(np.repeat(np.arange(p.n), p.t))]
    ctx.out("Logits@GRAD", (grad * per_row[:, None]).astype(x.dtype, copy=False), ctx.lod("Logits"))
