"""Recurrent ops over LoD sequences: ``lstm`` (``layers.dynamic_lstm``) and ``gru``
(``layers.dynamic_gru``).

The sequences of a batch run together: sorted longest first, step t updates the
prefix of sequences longer than t with one matrix product, so Python loops over
time steps only, never over sequences or rows.  With ``is_reverse`` each
sequence is read from its last row to its first.  The gradient kernels re-run
the forward pass to rebuild the gates (nothing extra is kept between the
forward and the backward op), then go back through time.

Layouts follow fluid 1.4 so its checkpoints load:
- lstm: Input [T, 4D] and Weight [D, 4D] hold the candidate, input, forget and
  output gates in that order; Bias is [1, 4D], or [1, 7D] with peepholes (the
  input, forget and output peephole weights follow the gate biases).
- gru: Input [T, 3D] holds the update, reset and candidate parts; Weight [D, 3D]
  is stored as the [D, 2D] update/reset matrix followed by the [D, D] candidate
  matrix in memory order.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ...errors import InvalidArgumentError
from ..registry import KernelContext, ShapeContext, register_grad, register_op
from .activation import _sigmoid
from .lod_util import last_offsets

#: activation name -> (f(x), f'(x) written from y = f(x))
ACTS: dict[str, tuple[Callable, Callable]] = {
    "sigmoid": (lambda xp, x: _sigmoid(xp, x, None), lambda xp, y: y * (1 - y)),
    "tanh": (lambda xp, x: xp.tanh(x), lambda xp, y: 1 - y * y),
    "relu": (lambda xp, x: xp.maximum(x, 0), lambda xp, y: (y > 0).astype(y.dtype)),
    "identity": (lambda xp, x: x, lambda xp, y: xp.ones_like(y)),
}


def _act(ctx_attrs: dict, name: str) -> tuple[Callable, Callable]:
    a = ctx_attrs[name]
    if a not in ACTS:
        raise InvalidArgumentError(f"{name} {a!r} is not one of {sorted(ACTS)}")
    return ACTS[a]


class _Steps:
    """Per time step, the rows of the sequences still running (longest sequences first)."""

    def __init__(self, xp: Any, off: np.ndarray, reverse: bool) -> None:
        lens = np.diff(off)
        self.order = np.argsort(-lens, kind="stable")
        slens, starts = lens[self.order], off[:-1][self.order]
        self.rows = []
        for t in range(int(slens.max()) if slens.size else 0):
            n = int((slens > t).sum())
            pos = slens[:n] - 1 - t if reverse else np.full(n, t)
            self.rows.append(xp.asarray(starts[:n] + pos))
        self.num = lens.size

    def sorted_init(self, xp: Any, v: Any, width: int, dtype: Any) -> Any:
        """The initial state of every sequence in sorted order (zeros when not given)."""
        if v is None:
            return xp.zeros((self.num, width), dtype=dtype)
        return v[xp.asarray(self.order)]

    def unsort(self, xp: Any, v: Any) -> Any:
        out = xp.empty_like(v)
        out[xp.asarray(self.order)] = v
        return out


def _steps(ctx: KernelContext, op: str) -> _Steps:
    x = ctx.x("Input")
    off = last_offsets(ctx, "Input", x.shape[0], op)
    return _Steps(ctx.xp, off, bool(ctx.attrs["is_reverse"]))


def _check_init(ctx: ShapeContext, slot: str, d: int) -> None:
    if ctx.has(slot):
        s = ctx.shape(slot)
        if len(s) != 2 or (s[1] > 0 and s[1] != d):
            raise ctx.fail(f"{slot} must be [num_sequences, {d}], got {list(s)}")


def _rnn_infer(gates: int, outs: tuple[str, ...]) -> Callable[[ShapeContext], None]:
    def infer(ctx: ShapeContext) -> None:
        x, w = ctx.var("Input"), ctx.var("Weight")
        if len(w.shape) != 2 or w.shape[1] != gates * w.shape[0]:
            raise ctx.fail(f"Weight must be [D, {gates}D], got {list(w.shape)}")
        d = w.shape[0]
        if len(x.shape) != 2 or (x.shape[1] > 0 and x.shape[1] != gates * d):
            raise ctx.fail(f"Input must be [T, {gates} * {d}] for a hidden size of {d}, got {list(x.shape)}")
        for slot in ("H0", "C0"):
            _check_init(ctx, slot, d)
        for name in ("gate_activation", "cell_activation", "candidate_activation", "activation"):
            if ctx.attr(name) is not None and ctx.attr(name) not in ACTS:
                raise ctx.fail(f"{name} {ctx.attr(name)!r} is not one of {sorted(ACTS)}")
        for slot in outs:
            ctx.set(slot, (x.shape[0], d), x.dtype, x.lod_level)
    return infer


# -------------------------------------------------------------------- lstm
def _lstm_bias(b: Any, d: int, peep: bool) -> tuple[Any, Any, Any, Any]:
    b = b.reshape(-1)
    if not peep:
        return b, None, None, None
    return b[:4 * d], b[4 * d:5 * d], b[5 * d:6 * d], b[6 * d:7 * d]


#: the activation attributes of an LSTM cell, in the order _lstm_cell takes them
_LSTM_ACTS = ("gate_activation", "cell_activation", "candidate_activation")


def _clip(xp: Any, v: Any, bound: float) -> tuple[Any, Any]:
    """v clipped to [-bound, bound] (bound <= 0: no clipping) and where it passed unchanged."""
    if bound <= 0:
        return v, None
    return xp.clip(v, -bound, bound), xp.abs(v) <= bound


def _lstm_cell(xp: Any, a: Any, cp: Any, d: int, peeps: Any, acts: tuple, cell_clip: float = 0.0) -> tuple:
    """One LSTM step (lstm and lstmp) from the projected gates ``a`` (fluid's order: candidate,
    input, forget, output) and the previous cell ``cp``: (i, f, candidate, o, cell, act(cell),
    cell-clip mask or None). ``peeps`` are the peephole weights (wic, wfc, woc) or Nones."""
    gate, cell_act, cand = acts
    wic, wfc, woc = peeps
    ac, ai, af, ao = a[:, :d], a[:, d:2 * d], a[:, 2 * d:3 * d], a[:, 3 * d:]
    if wic is not None:
        ai, af = ai + wic * cp, af + wfc * cp
    i, f, cc = gate(xp, ai), gate(xp, af), cand(xp, ac)
    cn, cmask = _clip(xp, f * cp + i * cc, cell_clip)
    o = gate(xp, ao + woc * cn if woc is not None else ao)
    return i, f, cc, o, cn, cell_act(xp, cn), cmask


def _lstm_cell_grad(xp: Any, dhn: Any, dc_next: Any, gc: Any, cell: tuple, peeps: Any, dacts: tuple,
                    db: Any) -> tuple[Any, Any]:
    """The backward of ``_lstm_cell``: from the gradients of the new hidden state ``dhn``, of the
    new cell carried from the next step ``dc_next`` and fetched ``gc`` (or None), and the step's
    ``cell`` = (cp, i, f, candidate, o, cell, act(cell), clip mask): (d gates, d previous cell);
    the peephole gradients are added to ``db[4d:]``."""
    dgate, dcell, dcand = dacts
    wic, wfc, woc = peeps
    cp, i, f, cc, o, cn, tc, cmask = cell
    d = cp.shape[1]
    dcn = dc_next + dhn * o * dcell(xp, tc)
    if gc is not None:
        dcn = dcn + gc
    dao = dhn * tc * dgate(xp, o)
    if woc is not None:
        dcn = dcn + dao * woc
    if cmask is not None:
        dcn = dcn * cmask
    dai, daf, dac = dcn * cc * dgate(xp, i), dcn * cp * dgate(xp, f), dcn * i * dcand(xp, cc)
    dcp = dcn * f
    if wic is not None:
        dcp = dcp + dai * wic + daf * wfc
        db[4 * d:] += xp.concatenate([(dai * cp).sum(0), (daf * cp).sum(0), (dao * cn).sum(0)])
    return xp.concatenate([dac, dai, daf, dao], axis=1), dcp


def _lstm_forward(ctx: KernelContext, steps: _Steps, keep: bool) -> tuple[Any, Any, list]:
    xp, x, w = ctx.xp, ctx.x("Input"), ctx.x("Weight")
    d, peep = w.shape[0], bool(ctx.attrs["use_peepholes"])
    bg, *peeps = _lstm_bias(ctx.x("Bias"), d, peep)
    acts = tuple(_act(ctx.attrs, n)[0] for n in _LSTM_ACTS)
    h = steps.sorted_init(xp, ctx.x("H0"), d, x.dtype)
    c = steps.sorted_init(xp, ctx.x("C0"), d, x.dtype)
    hidden, cell = xp.zeros((x.shape[0], d), x.dtype), xp.zeros((x.shape[0], d), x.dtype)
    caches = []
    for rows in steps.rows:
        n = rows.shape[0]
        hp, cp = h[:n], c[:n]
        i, f, cc, o, cn, tc, _ = _lstm_cell(xp, x[rows] + hp @ w + bg, cp, d, peeps, acts)
        hn = o * tc
        hidden[rows], cell[rows] = hn, cn
        if keep:
            caches.append((hp, cp, i, f, cc, o, cn, tc))
        h, c = xp.concatenate([hn, h[n:]]), xp.concatenate([cn, c[n:]])  # new arrays: caches keep the old
    return hidden, cell, caches


@register_op("lstm", _rnn_infer(4, ("Hidden", "Cell")), grad_outputs=("Hidden", "Cell"),
             attrs={"use_peepholes": True, "is_reverse": False, "gate_activation": "sigmoid",
                    "cell_activation": "tanh", "candidate_activation": "tanh"})
def lstm(ctx: KernelContext) -> None:
    """LSTM over each sequence of Input (already projected to the 4 gates)."""
    hidden, cell, _ = _lstm_forward(ctx, _steps(ctx, "lstm"), keep=False)
    lod = ctx.lod("Input")
    ctx.out("Hidden", hidden, lod)
    ctx.out("Cell", cell, lod)


def _grad_or_zeros(ctx: KernelContext, slot: str, like: Any) -> Any:
    g = ctx.x(slot)
    return ctx.xp.zeros(like.shape, like.dtype) if g is None else g


@register_grad("lstm")
def lstm_grad(ctx: KernelContext) -> None:
    xp, x, w = ctx.xp, ctx.x("Input"), ctx.x("Weight")
    d, peep = w.shape[0], bool(ctx.attrs["use_peepholes"])
    _, *peeps = _lstm_bias(ctx.x("Bias"), d, peep)
    dacts = tuple(_act(ctx.attrs, n)[1] for n in _LSTM_ACTS)
    steps = _steps(ctx, "lstm")
    _, _, caches = _lstm_forward(ctx, steps, keep=True)
    gh = _grad_or_zeros(ctx, "Hidden@GRAD", x[:, :d])
    gc = ctx.x("Cell@GRAD")
    dh, dc = xp.zeros((steps.num, d), x.dtype), xp.zeros((steps.num, d), x.dtype)
    dx, dw = xp.zeros_like(x), xp.zeros_like(w)
    db = xp.zeros(ctx.x("Bias").size, x.dtype)
    for rows, (hp, cp, i, f, cc, o, cn, tc) in zip(reversed(steps.rows), reversed(caches)):
        n = rows.shape[0]
        dhn = gh[rows] + dh[:n]
        da, dcp = _lstm_cell_grad(xp, dhn, dc[:n], None if gc is None else gc[rows],
                                  (cp, i, f, cc, o, cn, tc, None), peeps, dacts, db)
        dx[rows] = da
        dw += hp.T @ da
        db[:4 * d] += da.sum(0)
        dh, dc = xp.concatenate([da @ w.T, dh[n:]]), xp.concatenate([dcp, dc[n:]])
    _lstm_grad_out(ctx, steps, dx, dw, db, dh, dc)


def _lstm_grad_out(ctx: KernelContext, steps: _Steps, dx: Any, dw: Any, db: Any, dh: Any, dc: Any) -> None:
    xp = ctx.xp
    if ctx.wants("Input@GRAD"):
        ctx.out("Input@GRAD", dx, ctx.lod("Input"))
    if ctx.wants("Weight@GRAD"):
        ctx.out("Weight@GRAD", dw)
    if ctx.wants("Bias@GRAD"):
        ctx.out("Bias@GRAD", db.reshape(ctx.x("Bias").shape))
    if ctx.wants("H0@GRAD"):
        ctx.out("H0@GRAD", steps.unsort(xp, dh))
    if dc is not None and ctx.wants("C0@GRAD"):
        ctx.out("C0@GRAD", steps.unsort(xp, dc))


# --------------------------------------------------------------------- gru
def _gru_weights(w: Any) -> tuple[Any, Any]:
    """fluid's memory layout: [D, 2D] update/reset weights, then the [D, D] candidate weights."""
    d = w.shape[0]
    flat = w.reshape(-1)
    return flat[:2 * d * d].reshape(d, 2 * d), flat[2 * d * d:].reshape(d, d)


def _gru_forward(ctx: KernelContext, steps: _Steps, keep: bool) -> tuple[Any, list]:
    xp, x, w = ctx.xp, ctx.x("Input"), ctx.x("Weight")
    d = w.shape[0]
    w_ur, w_c = _gru_weights(w)
    b = ctx.x("Bias")
    b = xp.zeros(3 * d, x.dtype) if b is None else b.reshape(-1)
    gate, cand = _act(ctx.attrs, "gate_activation")[0], _act(ctx.attrs, "activation")[0]
    origin = bool(ctx.attrs["origin_mode"])
    h = steps.sorted_init(xp, ctx.x("H0"), d, x.dtype)
    hidden = xp.zeros((x.shape[0], d), x.dtype)
    caches = []
    for rows in steps.rows:
        n = rows.shape[0]
        hp, xr = h[:n], x[rows]
        ur = gate(xp, xr[:, :2 * d] + hp @ w_ur + b[:2 * d])
        u, r = ur[:, :d], ur[:, d:]
        rh = r * hp
        c = cand(xp, xr[:, 2 * d:] + rh @ w_c + b[2 * d:])
        hn = u * hp + (1 - u) * c if origin else (1 - u) * hp + u * c
        hidden[rows] = hn
        if keep:
            caches.append((hp, u, r, rh, c))
        h = xp.concatenate([hn, h[n:]])
    return hidden, caches


@register_op("gru", _rnn_infer(3, ("Hidden",)), grad_outputs=("Hidden",),
             attrs={"activation": "tanh", "gate_activation": "sigmoid", "is_reverse": False,
                    "origin_mode": False})
def gru(ctx: KernelContext) -> None:
    """GRU over each sequence of Input (already projected to the 3 parts)."""
    hidden, _ = _gru_forward(ctx, _steps(ctx, "gru"), keep=False)
    ctx.out("Hidden", hidden, ctx.lod("Input"))


@register_grad("gru")
def gru_grad(ctx: KernelContext) -> None:
    xp, x, w = ctx.xp, ctx.x("Input"), ctx.x("Weight")
    d = w.shape[0]
    w_ur, w_c = _gru_weights(w)
    dgate, dcand = _act(ctx.attrs, "gate_activation")[1], _act(ctx.attrs, "activation")[1]
    origin = bool(ctx.attrs["origin_mode"])
    steps = _steps(ctx, "gru")
    _, caches = _gru_forward(ctx, steps, keep=True)
    gh = _grad_or_zeros(ctx, "Hidden@GRAD", x[:, :d])
    dh = xp.zeros((steps.num, d), x.dtype)
    dx, dw_ur, dw_c = xp.zeros_like(x), xp.zeros_like(w_ur), xp.zeros_like(w_c)
    db = xp.zeros(3 * d, x.dtype)
    for rows, (hp, u, r, rh, c) in zip(reversed(steps.rows), reversed(caches)):
        n = rows.shape[0]
        dhn = gh[rows] + dh[:n]
        if origin:
            du, dcand_out, dhp = dhn * (hp - c), dhn * (1 - u), dhn * u
        else:
            du, dcand_out, dhp = dhn * (c - hp), dhn * u, dhn * (1 - u)
        dac = dcand_out * dcand(xp, c)
        drh = dac @ w_c.T
        dhp = dhp + drh * r
        dur = xp.concatenate([du * dgate(xp, u), drh * hp * dgate(xp, r)], axis=1)
        dhp = dhp + dur @ w_ur.T
        dx[rows] = xp.concatenate([dur, dac], axis=1)
        dw_ur += hp.T @ dur
        dw_c += rh.T @ dac
        db += xp.concatenate([dur.sum(0), dac.sum(0)])
        dh = xp.concatenate([dhp, dh[n:]])
    dw = xp.concatenate([dw_ur.reshape(-1), dw_c.reshape(-1)]).reshape(w.shape)
    if ctx.has("Bias"):
        _lstm_grad_out(ctx, steps, dx, dw, db, dh, None)
    else:
        if ctx.wants("Input@GRAD"):
            ctx.out("Input@GRAD", dx, ctx.lod("Input"))
        if ctx.wants("Weight@GRAD"):
            ctx.out("Weight@GRAD", dw)
        if ctx.wants("H0@GRAD"):
            ctx.out("H0@GRAD", steps.unsort(xp, dh))


# --------------------------------------------------------------- equal_lod
def _equal_lod_infer(ctx: ShapeContext) -> None:
    if int(ctx.attr("seq_len")) < 1:
        raise ctx.fail(f"seq_len must be >= 1, got {ctx.attr('seq_len')}")
    ctx.set("Out", ctx.shape("X"), ctx.dtype("X"), 1)


@register_op("equal_length_lod", _equal_lod_infer, attrs={"seq_len": 1})
def equal_length_lod(ctx: KernelContext) -> None:
    """X's rows cut into sequences of ``seq_len`` rows each (how ``layers.lstm`` feeds a padded
    [batch * seq_len, D] batch to the LoD recurrence)."""
    x, t = ctx.x("X"), int(ctx.attrs["seq_len"])
    if x.shape[0] % t:
        raise InvalidArgumentError(f"op 'equal_length_lod': {x.shape[0]} rows of '{ctx.ins['X'][0]}' are not a "
                                   f"whole number of sequences of {t}")
    ctx.out("Out", x, [list(range(0, x.shape[0] + 1, t))])


@register_grad("equal_length_lod")
def equal_length_lod_grad(ctx: KernelContext) -> None:
    ctx.out("X@GRAD", ctx.x("Out@GRAD"), ctx.lod("X"))
