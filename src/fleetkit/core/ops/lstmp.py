"""``lstmp`` (``layers.dynamic_lstmp``): an LSTM whose recurrent state is a projection
r = proj_act(h @ ProjWeight) of its hidden state, with optional cell and projection
clipping.  Same batching, gate order and bias layout as ``lstm`` in ``rnn``; Weight is
[P, 4D] because the recurrence reads the projection."""
from __future__ import annotations

from typing import Any

from ..registry import KernelContext, ShapeContext, register_grad, register_op
from .rnn import ACTS, _LSTM_ACTS, _act, _clip, _lstm_bias, _lstm_cell, _lstm_cell_grad, _Steps, _steps


def _lstmp_infer(ctx: ShapeContext) -> None:
    x, w, pw = ctx.shape("Input"), ctx.shape("Weight"), ctx.shape("ProjWeight")
    p, d = w[0], w[1] // 4 if len(w) == 2 else -1
    if len(w) != 2 or w[1] % 4 or tuple(pw) != (d, p) or (x[1] > 0 and x[1] != 4 * d):
        raise ctx.fail(f"need Input [T, 4D], Weight [P, 4D] and ProjWeight [D, P], got Weight {list(w)} and "
                       f"ProjWeight {list(pw)}")
    for name in ("gate_activation", "cell_activation", "candidate_activation", "proj_activation"):
        if ctx.attr(name) not in ACTS:
            raise ctx.fail(f"{name} {ctx.attr(name)!r} is not one of {sorted(ACTS)}")
    lod = ctx.var("Input").lod_level
    ctx.set("Projection", (x[0], p), ctx.dtype("Input"), lod)
    ctx.set("Cell", (x[0], d), ctx.dtype("Input"), lod)


def _init_projection(ctx: KernelContext, steps: _Steps, p: int) -> tuple[Any, Any]:
    """r0 = proj_act(H0 @ ProjWeight) in sorted order (zeros without H0), and H0 sorted."""
    xp, h0 = ctx.xp, ctx.x("H0")
    if h0 is None:
        return xp.zeros((steps.num, p), ctx.x("Input").dtype), None
    h0s = steps.sorted_init(xp, h0, 0, h0.dtype)
    return _act(ctx.attrs, "proj_activation")[0](xp, h0s @ ctx.x("ProjWeight")), h0s


def _lstmp_forward(ctx: KernelContext, steps: _Steps, keep: bool) -> tuple[Any, Any, list]:
    xp, x, w, wp = ctx.xp, ctx.x("Input"), ctx.x("Weight"), ctx.x("ProjWeight")
    a_ = ctx.attrs
    p, d, peep = w.shape[0], w.shape[1] // 4, bool(a_["use_peepholes"])
    bg, *peeps = _lstm_bias(ctx.x("Bias"), d, peep)
    acts = tuple(_act(a_, n)[0] for n in _LSTM_ACTS)
    proj = _act(a_, "proj_activation")[0]
    r, _ = _init_projection(ctx, steps, p)
    c = steps.sorted_init(xp, ctx.x("C0"), d, x.dtype)
    out_r, out_c = xp.zeros((x.shape[0], p), x.dtype), xp.zeros((x.shape[0], d), x.dtype)
    caches = []
    for rows in steps.rows:
        n = rows.shape[0]
        rp, cp = r[:n], c[:n]
        i, f, cc, o, cn, tc, cmask = _lstm_cell(xp, x[rows] + rp @ w + bg, cp, d, peeps, acts,
                                                float(a_["cell_clip"]))
        hn = o * tc
        rn, rmask = _clip(xp, proj(xp, hn @ wp), float(a_["proj_clip"]))
        out_r[rows], out_c[rows] = rn, cn
        if keep:
            caches.append((rp, cp, i, f, cc, o, cn, tc, hn, rn, cmask, rmask))
        r, c = xp.concatenate([rn, r[n:]]), xp.concatenate([cn, c[n:]])
    return out_r, out_c, caches


_ATTRS = {"use_peepholes": True, "is_reverse": False, "gate_activation": "sigmoid", "cell_activation": "tanh",
          "candidate_activation": "tanh", "proj_activation": "tanh", "cell_clip": 0.0, "proj_clip": 0.0}


@register_op("lstmp", _lstmp_infer, grad_outputs=("Projection", "Cell"), attrs=_ATTRS)
def lstmp(ctx: KernelContext) -> None:
    """LSTM with a recurrent projection over each sequence of Input (projected to the gates)."""
    r, c, _ = _lstmp_forward(ctx, _steps(ctx, "lstmp"), keep=False)
    ctx.out("Projection", r, ctx.lod("Input"))
    ctx.out("Cell", c, ctx.lod("Input"))


def _zeros_or(ctx: KernelContext, slot: str, shape: tuple, dtype: Any) -> Any:
    g = ctx.x(slot)
    return ctx.xp.zeros(shape, dtype) if g is None else g


@register_grad("lstmp")
def lstmp_grad(ctx: KernelContext) -> None:
    xp, x, w, wp, a_ = ctx.xp, ctx.x("Input"), ctx.x("Weight"), ctx.x("ProjWeight"), ctx.attrs
    p, d, peep = w.shape[0], w.shape[1] // 4, bool(a_["use_peepholes"])
    _, *peeps = _lstm_bias(ctx.x("Bias"), d, peep)
    dacts = tuple(_act(a_, n)[1] for n in _LSTM_ACTS)
    dproj = _act(a_, "proj_activation")[1]
    steps = _steps(ctx, "lstmp")
    _, _, caches = _lstmp_forward(ctx, steps, keep=True)
    gr = _zeros_or(ctx, "Projection@GRAD", (x.shape[0], p), x.dtype)
    gc = ctx.x("Cell@GRAD")
    dr, dc = xp.zeros((steps.num, p), x.dtype), xp.zeros((steps.num, d), x.dtype)
    dx, dw, dwp = xp.zeros_like(x), xp.zeros_like(w), xp.zeros_like(wp)
    db = xp.zeros(ctx.x("Bias").size, x.dtype)
    for rows, cache in zip(reversed(steps.rows), reversed(caches)):
        rp, cp, i, f, cc, o, cn, tc, hn, rn, cmask, rmask = cache
        n = rows.shape[0]
        dpre = (gr[rows] + dr[:n]) * dproj(xp, rn)
        if rmask is not None:
            dpre = dpre * rmask
        dwp += hn.T @ dpre
        dhn = dpre @ wp.T
        da, dcp = _lstm_cell_grad(xp, dhn, dc[:n], None if gc is None else gc[rows],
                                  (cp, i, f, cc, o, cn, tc, cmask), peeps, dacts, db)
        dx[rows] = da
        dw += rp.T @ da
        db[:4 * d] += da.sum(0)
        dr, dc = xp.concatenate([da @ w.T, dr[n:]]), xp.concatenate([dcp, dc[n:]])
    _outputs(ctx, steps, dx, dw, dwp, db, dr, dc)


def _outputs(ctx: KernelContext, steps: _Steps, dx: Any, dw: Any, dwp: Any, db: Any, dr: Any, dc: Any) -> None:
    xp = ctx.xp
    r0, h0s = _init_projection(ctx, steps, dw.shape[0])
    if h0s is not None:  # r0 = proj_act(H0 @ ProjWeight): back through the initial projection
        dpre0 = dr * _act(ctx.attrs, "proj_activation")[1](xp, r0)
        dwp = dwp + h0s.T @ dpre0
        if ctx.wants("H0@GRAD"):
            ctx.out("H0@GRAD", steps.unsort(xp, dpre0 @ ctx.x("ProjWeight").T))
    if ctx.wants("Input@GRAD"):
        ctx.out("Input@GRAD", dx, ctx.lod("Input"))
    if ctx.wants("Weight@GRAD"):
        ctx.out("Weight@GRAD", dw)
    if ctx.wants("ProjWeight@GRAD"):
        ctx.out("ProjWeight@GRAD", dwp)
    if ctx.wants("Bias@GRAD"):
        ctx.out("Bias@GRAD", db.reshape(ctx.x("Bias").shape))
    if ctx.wants("C0@GRAD"):
        ctx.out("C0@GRAD", steps.unsort(xp, dc))
