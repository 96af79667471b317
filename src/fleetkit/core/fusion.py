"""Prepare-time fusion: common runs of ops become one executor step.

On a small model most of a step's time beyond the numpy calls themselves is the
Python work of calling one kernel per op (context lookups, shape checks, LoD
propagation).  The runs fused here are the ones every ``layers.fc`` training
program has:

- ``mul -> elementwise_add [-> unary activation]`` (the fc forward),
- ``[unary activation grad ->] elementwise_add_grad -> mul_grad`` (its backward),
- ``softmax -> cross_entropy`` (a classifier's output and loss) and, in the backward,
  ``cross_entropy_grad -> softmax_grad``,
- ``mean -> fill_any_like -> mean_grad`` (a mean loss and the start of its backward),
- consecutive ``sgd`` updates.

A fused step computes exactly what the separate kernels compute, with the same
numpy expressions in the same order, and writes *every* output variable of every
member op (any later op or fetch may read them).  Its fast path runs only for
host (numpy) arrays without LoD whose shapes are the plain fc case, checked on
each call; anything else (a LoDTensor, a device array, another rank, a missing
variable) runs the member kernels one by one, so behaviour and error messages
are those of the unfused program.  An error raised by a member carries that
member's context so the executor names the right op.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .ops.activation import UNARY
from .ops.common import full
from .ops.loss import cross_entropy_grad_value, cross_entropy_value, softmax_grad_value, softmax_value
from .registry import KernelContext, get_op_def

Step = tuple[Callable[[KernelContext], None], KernelContext]

#: set False to run every op as its own step (debugging, A/B timing)
ENABLED = True

#: the kernels registered when this module loads: a step whose kernel was replaced since
#: (a test patching ``OpDef.forward``, a debugging wrapper) is never fused, so it still runs
_STOCK = {t: get_op_def(t).forward
          for t in ("mul", "mul_grad", "elementwise_add", "elementwise_add_grad", "mean", "fill_any_like",
                    "mean_grad", "sgd", "softmax", "cross_entropy", "softmax_grad", "cross_entropy_grad",
                    *UNARY, *(u + "_grad" for u in UNARY))}


def fuse_steps(steps: list[Step]) -> list[Step]:
    """``steps`` with the runs described in the module docstring merged into single steps."""
    if not ENABLED:
        return steps
    out: list[Step] = []
    i, n = 0, len(steps)
    while i < n:
        got = (_match_fc(steps, i, UNARY) or _match_fc_grad(steps, i, UNARY) or _match_mean_head(steps, i)
               or _match_sgd_run(steps, i) or _match_softmax_ce(steps, i) or _match_ce_softmax_grad(steps, i))
        if got is not None and not all(k is _STOCK.get(c.op.type) for k, c in steps[i:i + got[1]]):
            got = None
        if got is None:
            out.append(steps[i])
            i += 1
        else:
            kernel, count = got
            out.append((kernel, steps[i][1]))
            i += count
    return out


def failed_context(exc: BaseException) -> KernelContext | None:
    """The member context a fused step's failure came from (None when not from a fused step)."""
    return getattr(exc, "_fleetkit_ctx", None)


def _tag(exc: BaseException, ctx: KernelContext) -> None:
    """Mark ``exc`` as raised by ``ctx``'s op (read back by ``failed_context``)."""
    if getattr(exc, "_fleetkit_ctx", None) is None:
        try:
            exc._fleetkit_ctx = ctx  # type: ignore[attr-defined]
        except AttributeError:  # exceptions with __slots__: the executor names the first member
            pass


def _run_members(members: list[Step]) -> None:
    """The unfused path: each member kernel in order; a failure is tagged with its op's context."""
    for kernel, ctx in members:
        try:
            kernel(ctx)
        except Exception as e:
            _tag(e, ctx)
            raise


def _disjoint(members: list[KernelContext], links: set[str], early: tuple = ()) -> bool:
    """No member writes a variable that a member reads, except the chain ``links``, and
    none of the names the fast path reads ``early`` (before the members write) is a link.

    With that, reading each input right before its member runs (as the fast paths do)
    sees the same values as running the members one by one.
    """
    ins = {n for c in members for n in c._in0.values()} - links
    outs = [n for c in members for n in c._out0.values()]
    return not ins.intersection(outs) and len(outs) == len(set(outs)) and not links.intersection(early)


def _is_fc_mul(ctx: KernelContext) -> bool:
    a = ctx.attrs
    return ctx.op.type in ("mul", "mul_grad") and a.get("x_num_col_dims", 1) == 1 and a.get("y_num_col_dims", 1) == 1


# ------------------------------------------------------------------ fc forward
def _match_fc(steps: list[Step], i: int, unary: dict) -> tuple[Callable, int] | None:
    cm = steps[i][1]
    if cm.op.type != "mul" or i + 1 >= len(steps) or not _is_fc_mul(cm):
        return None
    ca = steps[i + 1][1]
    n_x, n_w, n_t0 = cm._in0.get("X"), cm._in0.get("Y"), cm._out0.get("Out")
    if ca.op.type != "elementwise_add" or None in (n_x, n_w, n_t0) or ca._in0.get("X") != n_t0:
        return None
    n_b, n_t1 = ca._in0.get("Y"), ca._out0.get("Out")
    if n_b is None or n_t1 is None:
        return None
    members = [steps[i], steps[i + 1]]
    act = None
    if i + 2 < len(steps):
        cu = steps[i + 2][1]
        if cu.op.type in unary and cu._in0.get("X") == n_t1 and "Out" in cu._out0:
            act = (unary[cu.op.type][0], cu.attrs, cu._out0["Out"])
            members.append(steps[i + 2])
    if not _disjoint([c for _, c in members], {n_t0, n_t1}, (n_x, n_w, n_b)):
        return None

    def fc(_ctx: KernelContext) -> None:
        env = cm.env
        x, w, b = env.get(n_x), env.get(n_w), env.get(n_b)
        if (x.__class__ is np.ndarray and w.__class__ is np.ndarray and b.__class__ is np.ndarray
                and x.ndim == 2 and w.ndim == 2 and b.ndim == 1
                and x.shape[1] == w.shape[0] and b.shape[0] == w.shape[1]):
            k = 0  # the member computing (names the op if numpy raises, e.g. on an object dtype)
            try:
                t = x @ w                  # mul, the fc case
                env[n_t0] = t
                k = 1
                t = t + b                  # elementwise_add, bias broadcast over rows
                env[n_t1] = t
                if act is not None:
                    k = 2
                    env[act[2]] = act[0](np, t, act[1])
            except Exception as e:
                _tag(e, members[k][1])
                raise
            return
        _run_members(members)
    fc.members = members  # type: ignore[attr-defined]
    return fc, len(members)


# ----------------------------------------------------------------- fc backward
def _match_fc_grad(steps: list[Step], i: int, unary: dict) -> tuple[Callable, int] | None:
    j = i
    act = None
    c0 = steps[i][1]
    if c0.op.type.endswith("_grad") and c0.op.type[:-5] in unary:
        n_ax, n_ao, n_ag, n_adx = (c0._in0.get("X"), c0._in0.get("Out"), c0._in0.get("Out@GRAD"),
                                   c0._out0.get("X@GRAD"))
        if None in (n_ax, n_ao, n_ag, n_adx):
            return None
        act = (unary[c0.op.type[:-5]][1], c0.attrs, n_ax, n_ao, n_ag, n_adx)
        j += 1
    if j + 1 >= len(steps):
        return None
    ce, cm = steps[j][1], steps[j + 1][1]
    if ce.op.type != "elementwise_add_grad" or cm.op.type != "mul_grad" or not _is_fc_mul(cm):
        return None
    n_g = ce._in0.get("Out@GRAD")
    n_ex, n_eb = ce._in0.get("X"), ce._in0.get("Y")
    n_edx, n_edy = ce._out0.get("X@GRAD"), ce._out0.get("Y@GRAD")
    n_mx, n_my = cm._in0.get("X"), cm._in0.get("Y")
    n_mdx, n_mdy = cm._out0.get("X@GRAD"), cm._out0.get("Y@GRAD")
    if (None in (n_g, n_ex, n_eb, n_edx, n_mx, n_my) or cm._in0.get("Out@GRAD") != n_edx
            or (act is not None and act[5] != n_g)):
        return None
    members = steps[i:j + 2]
    early = (n_ex, n_eb, n_mx, n_my) + (act[2:5] if act is not None else (n_g,))
    if not _disjoint([c for _, c in members], {n_g, n_edx} if act is not None else {n_edx}, early):
        return None
    first = members[0][1]

    def fc_grad(_ctx: KernelContext) -> None:
        env = first.env
        if act is not None:
            ax, ao, g = env.get(act[2]), env.get(act[3]), env.get(act[4])
            ok = (ax.__class__ is np.ndarray and ao.__class__ is np.ndarray and g.__class__ is np.ndarray
                  and ax.shape == g.shape and ao.shape == g.shape)
        else:
            g = env.get(n_g)
            ok = g.__class__ is np.ndarray
        if ok:
            ex, eb, mx, mw = env.get(n_ex), env.get(n_eb), env.get(n_mx), env.get(n_my)
            ok = (ex.__class__ is np.ndarray and eb.__class__ is np.ndarray and mx.__class__ is np.ndarray
                  and mw.__class__ is np.ndarray and g.ndim == 2 and ex.shape == g.shape and eb.ndim == 1
                  and eb.shape[0] == g.shape[1] and mx.ndim == 2 and mw.ndim == 2
                  and mx.shape[0] == g.shape[0] and mw.shape[1] == g.shape[1])
        if not ok:
            _run_members(members)
            return
        k = 0  # the member computing (names the op if numpy raises)
        try:
            if act is not None:            # activation grad
                g = act[0](np, ax, ao, g, act[1])
                env[act[5]] = g
                k = 1
            env[n_edx] = g                 # elementwise_add_grad: dX is the incoming grad
            if n_edy is not None:
                env[n_edy] = g.sum(axis=0)  # bias gradient: one column sum
            k += 1
            if n_mdx is not None:          # mul_grad, the fc case
                env[n_mdx] = g @ mw.T
            if n_mdy is not None:
                env[n_mdy] = mx.T @ g
        except Exception as e:
            _tag(e, members[k][1])
            raise
    fc_grad.members = members  # type: ignore[attr-defined]
    return fc_grad, len(members)


# ------------------------------------------------------- softmax + cross entropy
def _match_softmax_ce(steps: list[Step], i: int) -> tuple[Callable, int] | None:
    if i + 1 >= len(steps):
        return None
    cs, cc = steps[i][1], steps[i + 1][1]
    if cs.op.type != "softmax" or cc.op.type != "cross_entropy":
        return None
    n_x, n_p, n_lab, n_y = cs._in0.get("X"), cs._out0.get("Out"), cc._in0.get("Label"), cc._out0.get("Y")
    if None in (n_x, n_p, n_lab, n_y) or cc._in0.get("X") != n_p:
        return None
    members = steps[i:i + 2]
    if not _disjoint([cs, cc], {n_p}, (n_x, n_lab)):
        return None
    step = _host_pair(members, (n_x, n_lab), (n_p, n_y),
                      lambda x, label: softmax_value(np, x, cs.attrs["axis"]),
                      lambda p, x, label: cross_entropy_value(cc, p, label))
    return step, 2


def _match_ce_softmax_grad(steps: list[Step], i: int) -> tuple[Callable, int] | None:
    if i + 1 >= len(steps):
        return None
    cc, cs = steps[i][1], steps[i + 1][1]
    if cc.op.type != "cross_entropy_grad" or cs.op.type != "softmax_grad":
        return None
    n_p, n_lab, n_dy, n_dp = cc._in0.get("X"), cc._in0.get("Label"), cc._in0.get("Y@GRAD"), cc._out0.get("X@GRAD")
    n_out, n_dz = cs._in0.get("Out"), cs._out0.get("X@GRAD")
    if None in (n_p, n_lab, n_dy, n_dp, n_out, n_dz) or cs._in0.get("Out@GRAD") != n_dp:
        return None
    members = steps[i:i + 2]
    if not _disjoint([cc, cs], {n_dp}, (n_p, n_lab, n_dy, n_out)):
        return None
    step = _host_pair(members, (n_p, n_lab, n_dy, n_out), (n_dp, n_dz),
                      lambda p, label, dy, out: cross_entropy_grad_value(cc, p, label, dy),
                      lambda dp, p, label, dy, out: softmax_grad_value(out, dp, cs.attrs["axis"]))
    return step, 2


def _host_pair(members: list[Step], ins: tuple[str, ...], outs: tuple[str, str],
               first: Callable, second: Callable) -> Callable:
    """A fused step of two members on host arrays: ``outs[0] = first(*ins)`` (member 0),
    then ``outs[1] = second(outs[0]'s value, *ins)`` (member 1), with the same value
    functions as the members' kernels; any input not a host array (LoD, device, missing)
    runs the members themselves.  An error names the member that raised it."""
    env_of = members[0][1]

    def step(_ctx: KernelContext) -> None:
        env = env_of.env
        values = [env.get(n) for n in ins]
        for v in values:
            if v.__class__ is not np.ndarray:
                _run_members(members)
                return
        k = 0
        try:
            a = first(*values)
            env[outs[0]] = a
            k = 1
            env[outs[1]] = second(a, *values)
        except Exception as e:
            _tag(e, members[k][1])
            raise
    step.members = members  # type: ignore[attr-defined]
    return step


# ------------------------------------------------------------------ mean loss
def _match_mean_head(steps: list[Step], i: int) -> tuple[Callable, int] | None:
    if i + 2 >= len(steps):
        return None
    ca, cb, cc = steps[i][1], steps[i + 1][1], steps[i + 2][1]
    if (ca.op.type, cb.op.type, cc.op.type) != ("mean", "fill_any_like", "mean_grad"):
        return None
    n_x, n_out, n_g, n_dx = ca._in0.get("X"), ca._out0.get("Out"), cb._out0.get("Out"), cc._out0.get("X@GRAD")
    if (None in (n_x, n_out, n_g, n_dx) or cb._in0.get("X") != n_out or cc._in0.get("X") != n_x
            or cc._in0.get("Out@GRAD") != n_g or cc._in0.get("Out", n_out) != n_out):
        return None
    members = steps[i:i + 3]
    if not _disjoint([ca, cb, cc], {n_out, n_g}, (n_x,)):
        return None

    def mean_head(_ctx: KernelContext) -> None:
        env = ca.env
        x = env.get(n_x)
        if x.__class__ is not np.ndarray:
            _run_members(members)
            return
        k = 0
        try:                               # mean: sum * (1/n), as the mean kernel
            out = (x.sum(dtype=x.dtype) * x.dtype.type(1.0 / max(x.size, 1))).reshape(1)
            env[n_out] = out
            k = 1                          # fill_any_like: the loss gradient seed
            g = full(np, out.shape, cb.attrs.get("value"), out.dtype)
            env[n_g] = g
            k = 2                          # mean_grad
            env[n_dx] = full(np, x.shape, g.reshape(()) / max(x.size, 1), x.dtype)
        except Exception as e:
            _tag(e, members[k][1])
            raise
    mean_head.members = members  # type: ignore[attr-defined]
    return mean_head, len(members)


# -------------------------------------------------------------------- sgd runs
def _match_sgd_run(steps: list[Step], i: int) -> tuple[Callable, int] | None:
    j = i
    while j < len(steps) and _plain_sgd(steps[j][1]):
        j += 1
    if j - i < 2:
        return None
    members = steps[i:j]
    names = [(c._in0["LearningRate"], c._in0["Param"], c._in0["Grad"]) for _, c in members]
    first = members[0][1]

    def sgd_run(_ctx: KernelContext) -> None:
        env = first.env
        lr_seen, lr0 = None, None
        for (n_lr, n_p, n_g), member in zip(names, members):
            lr, p, g = env.get(n_lr), env.get(n_p), env.get(n_g)
            if (lr.__class__ is np.ndarray and p.__class__ is np.ndarray and g.__class__ is np.ndarray
                    and g.shape == p.shape):  # anything unusual: the op's own checks
                if lr is not lr_seen:  # a run of updates usually shares one learning rate
                    lr_seen, lr0 = lr, lr.reshape(())
                try:
                    p -= lr0 * g  # the sgd rule, in place (ParamOut is Param)
                except ValueError as e:
                    if p.flags.writeable:
                        _tag(e, member[1])
                        raise
                    _run_members([member])  # a read-only parameter: the op's own kernel decides
                except Exception as e:
                    _tag(e, member[1])
                    raise
            else:
                _run_members([member])
    sgd_run.members = members  # type: ignore[attr-defined]
    return sgd_run, len(members)


def _plain_sgd(ctx: KernelContext) -> bool:
    """A dense-capable sgd op updating its Param in place."""
    return (ctx.op.type == "sgd" and "LearningRate" in ctx._in0 and "Grad" in ctx._in0
            and ctx.same_var("Param", "ParamOut") and set(ctx._out0) == {"ParamOut"})


def describe(steps: list[Step]) -> list[str]:
    """Op types of each step, fused ones joined by '+' (for debugging and tests)."""
    out = []
    for kernel, ctx in steps:
        members: Any = getattr(kernel, "members", None)
        out.append("+".join(c.op.type for _, c in members) if members else ctx.op.type)
    return out
