"""Optimizer kernels: parameter update rules, gradient decay and clipping and step counters
(the learning-rate schedules are in ``lr_schedule``).

Update ops (``sgd``, ``momentum``, ``adam``...) change their parameter and
accumulators in place: ``ParamOut`` names the same variable as ``Param``,
``Moment1Out`` as ``Moment1`` and so on, and the kernel writes into the arrays
the scope already holds (so an embedding table is never copied to update a few
rows).  When an output names a different variable, or the stored array is
read-only, the kernel works on a copy and stores it under the output's name.

A ``SelectedRows`` gradient is merged first (repeated rows summed).  Each rule
then either updates only the touched rows ("rows": sgd, adagrad, ftrl, adam
with ``lazy_mode``) or scatters the rows into a zero dense gradient and runs the
dense rule, so untouched rows see a zero gradient ("dense": momentum, adam,
rmsprop...).  For sgd and adagrad both give the same result.  Adam on a large host
table needs no dense gradient and runs block by block (``adam_host``).

Adam and Adamax also advance their ``Beta1Pow``/``Beta2Pow`` accumulators
(``*= beta``) inside the op, after the update, when ``Beta1PowOut`` /
``Beta2PowOut`` are given: the whole update of one parameter is one op, which
keeps transpilers simple (fluid 1.4 used separate ``scale`` ops instead).

Hogwild: ``train_from_dataset(thread=N)``'s workers run these kernels on the same
arrays at once, without locks.  So every update is a read-modify-write of the
shared arrays (in-place ufuncs; rows through ``a[idx] += delta``), never a copy
written back, which would undo what another worker wrote meanwhile.  And a rule
whose step divides by an accumulator (Adam's m1 / sqrt(m2), Adamax's m / inf)
writes the divisor before the numerator and reads the numerator before the
divisor: a worker that sees another's numerator contribution also sees its
divisor contribution.  The other way round it can read a half-applied update
(m1 advanced, m2 not yet) and, where m2 is still about 0 (a row seen for the
first time), step by m1 / eps: 1e5 times too far (issue 15's AUC drop under load).
That ordering holds between statements (a worker descheduled mid-update); two cores
running ``m2 *= b2`` and ``m2 += ...`` on one element at the same instant can still
lose one of the writes, so Adam also clips m1 / sqrt(m2) to the bound that every
state a serial Adam reaches from zero moments satisfies (``adam_host.ratio_bound``):
never reached in serial training, it caps what such a race can do at one normal step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..framework import EMPTY_VAR
from ..registry import KernelContext, ShapeContext, register_op
from ..scope import LoDTensor, SelectedRows
from . import adam_host, shared_scalars


# ------------------------------------------------------------------ helpers
def _writable(a: Any) -> bool:
    return bool(getattr(getattr(a, "flags", None), "writeable", True))


def _inplace(ctx: KernelContext, in_slot: str, out_slot: str) -> Any:
    """The array to update for ``in_slot``; afterwards it is ``out_slot``'s value."""
    a = ctx.x(in_slot)
    outs = ctx.outs.get(out_slot)
    if not outs or outs[0] == EMPTY_VAR:
        return a.copy()  # nobody keeps the result: never touch the input
    if outs[0] != ctx.ins[in_slot][0] or not _writable(a):
        a = a.copy()
        ctx.out(out_slot, a)
    return a


def _raw_grad(ctx: KernelContext, slot: str = "Grad") -> Any:
    g = ctx.raw(slot)
    return g.values if g.__class__ is LoDTensor else g


def _rows_index(xp: Any, rows: np.ndarray) -> Any:
    return rows if xp is np else xp.asarray(rows)


def densify(xp: Any, sr: SelectedRows, like: Any) -> Any:
    """A merged SelectedRows as a dense array shaped like ``like``."""
    out = xp.zeros(like.shape, dtype=sr.values.dtype)
    out[_rows_index(xp, sr.rows)] = sr.values
    return out


def _lr(ctx: KernelContext) -> Any:
    """The learning rate as a 0-d array (stays on the device)."""
    lr = ctx.x("LearningRate")
    return None if lr is None else lr.reshape(())


# -------------------------------------------------------------- update rules
# Each rule mutates ``p`` and the arrays in ``acc`` in place; ``sc`` holds the
# [1]-shaped inputs (beta powers) as 0-d arrays, read only.
def _sgd(xp: Any, a: dict, lr: Any, p: Any, g: Any, acc: dict, sc: dict) -> None:
    p -= lr * g


def _momentum(xp: Any, a: dict, lr: Any, p: Any, g: Any, acc: dict, sc: dict) -> None:
    v, mu = acc["Velocity"], a["mu"]
    v *= mu
    v += g
    p -= lr * (g + mu * v) if a["use_nesterov"] else lr * v


def _adam(xp: Any, a: dict, lr: Any, p: Any, g: Any, acc: dict, sc: dict) -> None:
    m1, m2, b1, b2 = acc["Moment1"], acc["Moment2"], a["beta1"], a["beta2"]
    lr_t = lr * xp.sqrt(1 - sc["Beta2Pow"]) / (1 - sc["Beta1Pow"])
    if adam_host.blockable(xp, p, g, m1, m2):
        adam_host.blocks(a, [lr_t], p.reshape(-1), g.reshape(-1), m1.reshape(-1), m2.reshape(-1))
        return
    m2 *= b2  # the divisor first, the numerator read first (Hogwild: module docstring)
    m2 += (1 - b2) * (g * g)
    m1 *= b1
    m1 += (1 - b1) * g
    n1 = m1.copy()
    p -= lr_t * adam_host.clip_ratio(xp, a, n1 / (xp.sqrt(m2) + a["epsilon"]))


def _lars_momentum(xp: Any, a: dict, lr: Any, p: Any, g: Any, acc: dict, sc: dict) -> None:
    # layer-wise adaptive rate: lr * coeff * |p| / (|g| + wd * |p|), plain lr when either norm is 0
    v, mu, coeff, wd = acc["Velocity"], a["mu"], a["lars_coeff"], a["lars_weight_decay"]
    pn, gn = xp.sqrt((p * p).sum()), xp.sqrt((g * g).sum())
    local = xp.where((pn > 0) & (gn > 0), lr * coeff * pn / (gn + wd * pn + (gn == 0)), lr)
    v *= mu
    v += local * (g + wd * p)
    p -= v


def _adagrad(xp: Any, a: dict, lr: Any, p: Any, g: Any, acc: dict, sc: dict) -> None:
    m = acc["Moment"]
    m += g * g
    p -= lr * g / (xp.sqrt(m) + a["epsilon"])


def _decayed_adagrad(xp: Any, a: dict, lr: Any, p: Any, g: Any, acc: dict, sc: dict) -> None:
    m, d = acc["Moment"], a["decay"]
    m *= d
    m += (1 - d) * (g * g)
    p -= lr * g / (xp.sqrt(m) + a["epsilon"])


def _rmsprop(xp: Any, a: dict, lr: Any, p: Any, g: Any, acc: dict, sc: dict) -> None:
    ms, mom, rho, eps = acc["MeanSquare"], acc["Moment"], a["decay"], a["epsilon"]
    ms *= rho
    ms += (1 - rho) * (g * g)
    if a["centered"]:
        mg = acc["MeanGrad"]
        mg *= rho
        mg += (1 - rho) * g
        # never below 0 in serial training; under Hogwild mg may hold another worker's step
        # and ms not yet (module docstring): a negative variance would make p NaN
        denom = xp.sqrt(xp.maximum(ms - mg * mg, 0) + eps)
    else:
        denom = xp.sqrt(ms + eps)
    mom *= a["momentum"]
    mom += lr * g / denom
    p -= mom


def _adamax(xp: Any, a: dict, lr: Any, p: Any, g: Any, acc: dict, sc: dict) -> None:
    m, inf, b1 = acc["Moment"], acc["InfNorm"], a["beta1"]
    inf *= a["beta2"]  # the divisor first, in place; m is read before inf (Hogwild: module docstring)
    inf += a["epsilon"]
    xp.maximum(inf, xp.abs(g), out=inf)
    m *= b1
    m += (1 - b1) * g
    p -= (lr / (1 - sc["Beta1Pow"])) * m / inf


def _adadelta(xp: Any, a: dict, lr: Any, p: Any, g: Any, acc: dict, sc: dict) -> None:
    g2, u2, rho, eps = acc["AvgSquaredGrad"], acc["AvgSquaredUpdate"], a["rho"], a["epsilon"]
    g2 *= rho
    g2 += (1 - rho) * (g * g)
    upd = -xp.sqrt((u2 + eps) / (g2 + eps)) * g
    u2 *= rho
    u2 += (1 - rho) * (upd * upd)
    p += upd


def _ftrl(xp: Any, a: dict, lr: Any, p: Any, g: Any, acc: dict, sc: dict) -> None:
    sq, lin, l1, l2, pw = acc["SquaredAccumulator"], acc["LinearAccumulator"], a["l1"], a["l2"], a["lr_power"]
    new = sq + g * g
    if pw == -0.5:
        lin += g - (xp.sqrt(new) - xp.sqrt(sq)) / lr * p
        y = xp.sqrt(new) / lr + 2 * l2
    else:
        lin += g - (new ** -pw - sq ** -pw) / lr * p
        y = new ** -pw / lr + 2 * l2
    shrunk = (l1 * xp.sign(lin) - lin) / y
    p[...] = xp.where(xp.abs(lin) > l1, shrunk, 0)
    sq[...] = new


@dataclass(frozen=True)
class _Rule:
    fn: Callable[..., None]
    accs: tuple[str, ...] = ()           # param-shaped accumulators: <slot> -> <slot>Out
    pows: tuple[tuple[str, str], ...] = ()  # [1]-shaped (slot, beta attr): <slot>Out = <slot> * beta
    sparse: Callable[[dict], str] = lambda a: "dense"  # "rows" or "dense" for SelectedRows grads
    has_lr: bool = True
    optional: tuple[str, ...] = ()          # accumulator slots that may be absent
    check: Callable[[ShapeContext], None] | None = None  # op-specific build-time check


def _update_infer(rule: _Rule) -> Callable[[ShapeContext], None]:
    def infer(ctx: ShapeContext) -> None:
        p, g = ctx.var("Param"), ctx.var("Grad")
        if g.shape and p.shape and len(g.shape) == len(p.shape) and any(
                a > 0 and b > 0 and a != b for a, b in zip(g.shape, p.shape)):
            raise ctx.fail(f"Grad '{g.name}' shape {list(g.shape)} differs from Param '{p.name}' "
                           f"shape {list(p.shape)}")
        if rule.has_lr:
            lr = ctx.var("LearningRate")
            if lr.shape and int(np.prod(lr.shape)) != 1:
                raise ctx.fail(f"LearningRate '{lr.name}' must hold one value, got shape {list(lr.shape)}")
        for slot in ("Param",) + rule.accs + tuple(s for s, _ in rule.pows):
            if not ctx.has(slot):
                if slot in rule.optional:
                    continue
                raise ctx.fail(f"input slot '{slot}' is missing")
            v = ctx.var(slot)
            ctx.set(slot + "Out", v.shape, v.dtype)
        if rule.check is not None:
            rule.check(ctx)
    return infer


_NONE: dict = {}  # shared, never written: rules without accumulators skip building dicts


def _update_kernel(rule: _Rule) -> Callable[[KernelContext], None]:
    # sgd-like rules (no accumulators, no beta powers): the common call, a dense grad and a
    # writable host Param updated in place, skips the general bookkeeping (a few us per
    # parameter per step, which adds up on small models)
    plain = not rule.accs and not rule.pows and rule.has_lr

    def kernel(ctx: KernelContext) -> None:
        if plain:
            lr, p, g = ctx.x("LearningRate"), ctx.x("Param"), ctx.x("Grad")
            if (lr is not None and p.__class__ is np.ndarray and g.__class__ is np.ndarray
                    and p.flags.writeable and ctx.same_var("Param", "ParamOut")):
                rule.fn(np, ctx.attrs, lr.reshape(()), p, g, _NONE, _NONE)
                return
        xp, attrs = ctx.xp, ctx.attrs
        lr = _lr(ctx) if rule.has_lr else None
        p = _inplace(ctx, "Param", "ParamOut")
        acc = {s: _inplace(ctx, s, s + "Out") for s in rule.accs if ctx.has(s)} if rule.accs else _NONE
        sc = {s: ctx.x(s).reshape(()) for s, _ in rule.pows} if rule.pows else _NONE
        g = _raw_grad(ctx)
        if g.__class__ is SelectedRows:
            g = g.merged()
            if rule.sparse(attrs) == "rows":
                _update_rows(xp, rule, attrs, lr, p, g, acc, sc)
                g = None
            elif (rule.fn is _adam and adam_host.prescalable(attrs)
                  and adam_host.blockable(xp, p, acc["Moment1"], acc["Moment2"])):
                adam_host.sparse_dense(attrs, lr, p, g, acc, sc)
                g = None
            else:
                g = densify(xp, g, p)
        if g is not None:
            rule.fn(xp, attrs, lr, p, g, acc, sc)
        for s, beta in rule.pows:  # after the update: the rule read the old powers
            pw = _inplace(ctx, s, s + "Out")
            with shared_scalars.held():
                pw *= attrs[beta]
    return kernel


def _update_rows(xp: Any, rule: _Rule, attrs: dict, lr: Any, p: Any, g: SelectedRows, acc: dict,
                 sc: dict) -> None:
    """The rule on copies of the merged (so unique) rows of ``g``; each array then takes
    its rows' change as ``a[idx] += delta``, accumulators in reverse slot order (the
    divisors come last in ``accs``) and the parameter last: Hogwild, module docstring."""
    idx = _rows_index(xp, g.rows)
    rows = {s: v[idx] for s, v in acc.items()}
    rows["Param"] = p[idx]
    before = {s: r.copy() for s, r in rows.items()}
    rule.fn(xp, attrs, lr, rows["Param"], g.values, {s: rows[s] for s in acc}, sc)
    for s in [*reversed(list(acc)), "Param"]:
        (p if s == "Param" else acc[s])[idx] += rows[s] - before[s]


def _register_update(type: str, rule: _Rule, attrs: dict) -> None:
    register_op(type, _update_infer(rule), attrs=attrs)(_update_kernel(rule))


_rows = lambda a: "rows"  # noqa: E731
_register_update("sgd", _Rule(_sgd, sparse=_rows), {})
_register_update("momentum", _Rule(_momentum, ("Velocity",)), {"mu": 0.9, "use_nesterov": False})
_register_update("adam", _Rule(_adam, ("Moment1", "Moment2"), (("Beta1Pow", "beta1"), ("Beta2Pow", "beta2")),
                               sparse=lambda a: "rows" if a["lazy_mode"] else "dense"),
                 {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, "lazy_mode": False})
_register_update("lars_momentum", _Rule(_lars_momentum, ("Velocity",)),
                 {"mu": 0.9, "lars_coeff": 0.001, "lars_weight_decay": 0.0005})
_register_update("adagrad", _Rule(_adagrad, ("Moment",), sparse=_rows), {"epsilon": 1e-6})
_register_update("decayed_adagrad", _Rule(_decayed_adagrad, ("Moment",)), {"decay": 0.95, "epsilon": 1e-6})
def _rmsprop_check(ctx: ShapeContext) -> None:
    if ctx.attr("centered") and not ctx.has("MeanGrad"):
        raise ctx.fail("centered rmsprop needs the MeanGrad accumulator")


_register_update("rmsprop", _Rule(_rmsprop, ("MeanSquare", "Moment", "MeanGrad"), optional=("MeanGrad",),
                                  check=_rmsprop_check),
                 {"decay": 0.9, "epsilon": 1e-10, "momentum": 0.0, "centered": False})
_register_update("adamax", _Rule(_adamax, ("Moment", "InfNorm"), (("Beta1Pow", "beta1"),)),
                 {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8})
_register_update("adadelta", _Rule(_adadelta, ("AvgSquaredGrad", "AvgSquaredUpdate"), has_lr=False),
                 {"rho": 0.95, "epsilon": 1e-6})
_register_update("ftrl", _Rule(_ftrl, ("SquaredAccumulator", "LinearAccumulator"), sparse=_rows),
                 {"l1": 0.0, "l2": 0.0, "lr_power": -0.5})


# ---------------------------------------------------------------- increment
def _increment_infer(ctx: ShapeContext) -> None:
    v = ctx.var("X")
    if v.shape and all(d > 0 for d in v.shape) and int(np.prod(v.shape)) != 1:
        raise ctx.fail(f"X '{v.name}' must hold one value (a counter), got shape {list(v.shape)}")
    ctx.set("Out", v.shape, v.dtype)


@register_op("increment", _increment_infer, attrs={"step": 1.0})
def increment(ctx: KernelContext) -> None:
    """Out = X + step (a step counter; X and Out are usually the same variable).

    A persistable counter (a learning-rate schedule's step) advances in place, like the
    update ops' accumulators: Hogwild workers share it and each counts its own steps (a
    new array published after the step would drop the increments made meanwhile).  A
    temporary (a while loop's index) gets a new array: the loop's saved steps may hold
    the old one."""
    x, step = ctx.x("X"), ctx.attrs["step"]
    if ctx.same_var("X", "Out") and _writable(x) and (x.dtype.kind == "f" or float(step).is_integer()):
        var = ctx.op.block._find_var_recursive(ctx._in0["X"]) if getattr(ctx.op, "block", None) else None
        if var is not None and var.persistable:
            with shared_scalars.held():
                x += x.dtype.type(step)
            return
    ctx.out("Out", (x + step).astype(x.dtype, copy=False))


# ---------------------------------------------------- regularization, clipping
def _grad_like_infer(slot: str) -> Callable[[ShapeContext], None]:
    def infer(ctx: ShapeContext) -> None:
        v = ctx.var(slot)
        ctx.set("Out", v.shape, v.dtype)
    return infer


def _map_grad(ctx: KernelContext, fn: Callable[[Any, Any], Any], slot: str = "Grad",
              out: str = "Out", i: int = 0) -> None:
    """Out = fn(values, row_index) for a dense grad or for a merged SelectedRows' values."""
    g = ctx.raw(slot, i)
    names = ctx.outs[out]
    if g.__class__ is SelectedRows:
        g = g.merged()
        ctx.env[names[i]] = SelectedRows(g.rows, fn(g.values, _rows_index(ctx.xp, g.rows)), g.height)
    else:
        g = g.values if g.__class__ is LoDTensor else g
        ctx.env[names[i]] = fn(g, None)


@register_op("weight_decay", _grad_like_infer("Grad"), attrs={"coeff": 0.0, "mode": "l2"})
def weight_decay(ctx: KernelContext) -> None:
    """Out = Grad + coeff * Param (mode l2) or + coeff * sign(Param) (mode l1).

    For a SelectedRows grad only the touched rows are decayed, each once.
    """
    xp, p, c = ctx.xp, ctx.x("Param"), ctx.attrs["coeff"]
    l1 = ctx.attrs["mode"] == "l1"

    def decay(g: Any, idx: Any) -> Any:
        pr = p if idx is None else p[idx]
        return (g + c * (xp.sign(pr) if l1 else pr)).astype(g.dtype, copy=False)
    _map_grad(ctx, decay)


@register_op("gradient_clip_by_value", _grad_like_infer("X"), attrs={"min": -1.0, "max": 1.0})
def gradient_clip_by_value(ctx: KernelContext) -> None:
    lo, hi = ctx.attrs["min"], ctx.attrs["max"]
    _map_grad(ctx, lambda g, idx: ctx.xp.clip(g, lo, hi).astype(g.dtype, copy=False), "X")


def _scaled(xp: Any, g: Any, clip_norm: float, norm: Any) -> Any:
    """g * clip_norm / max(norm, clip_norm), computed on the device."""
    return (g * (clip_norm / xp.maximum(norm, clip_norm))).astype(g.dtype, copy=False)


@register_op("gradient_clip_by_norm", _grad_like_infer("X"), attrs={"max_norm": 1.0})
def gradient_clip_by_norm(ctx: KernelContext) -> None:
    """Out = Grad scaled down so that its L2 norm is at most ``max_norm``."""
    xp, c = ctx.xp, ctx.attrs["max_norm"]
    _map_grad(ctx, lambda g, idx: _scaled(xp, g, c, xp.sqrt(xp.sum(g.astype(np.float64) ** 2))), "X")


def _global_norm_infer(ctx: ShapeContext) -> None:
    for i, v in enumerate(ctx.vars("X")):
        ctx.set("Out", v.shape, v.dtype, i=i)


@register_op("gradient_clip_by_global_norm", _global_norm_infer, attrs={"clip_norm": 1.0})
def gradient_clip_by_global_norm(ctx: KernelContext) -> None:
    """Out[i] = X[i] * clip_norm / max(global_norm, clip_norm), global_norm over all X."""
    xp, c = ctx.xp, ctx.attrs["clip_norm"]
    vals = []
    for i in range(len(ctx.ins["X"])):
        g = ctx.raw("X", i)
        vals.append(g.merged() if g.__class__ is SelectedRows else (
            g.values if g.__class__ is LoDTensor else g))
    sq = [xp.sum((v.values if v.__class__ is SelectedRows else v).astype(np.float64) ** 2) for v in vals]
    norm = xp.sqrt(sum(sq[1:], sq[0]))
    for i, name in enumerate(ctx.outs["Out"]):
        v = vals[i]
        if v.__class__ is SelectedRows:
            ctx.env[name] = SelectedRows(v.rows, _scaled(xp, v.values, c, norm), v.height)
        else:
            ctx.env[name] = _scaled(xp, v, c, norm)


# the learning-rate schedule op lives in lr_schedule (imported last: it only needs the registry)
from . import lr_schedule  # noqa: E402,F401
