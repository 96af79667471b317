"""Ops behind ``optimizer.ModelAverage``: ``average_accumulates`` keeps running sums of a
parameter over a sliding window of updates (in place), ``model_average_apply`` swaps
the parameter for its window average (keeping a backup) and ``model_average_restore``
puts the backup back.

The sums follow fluid 1.4: every step adds the parameter to ``sum_1``; every
``MAX_ACCUMULATES`` updates ``sum_1`` moves into ``sum_2`` (so a float sum never
grows over too many terms); once the window holds ``num_accumulates`` >=
max(min_average_window, min(max_average_window, num_updates * average_window))
parameters, ``sum_3`` takes the window's total and a new window starts.  The
average is (sum_1 + sum_2 + sum_3) / (num_accumulates + old_num_accumulates).
"""
from __future__ import annotations

from typing import Any

from ..backend import to_numpy
from ..registry import KernelContext, ShapeContext, register_op
from .optimizer import _inplace

MAX_ACCUMULATES = 16384
_SUMS = ("sum_1", "sum_2", "sum_3")
_COUNTS = ("num_accumulates", "old_num_accumulates", "num_updates")


def _accumulates_infer(ctx: ShapeContext) -> None:
    p = ctx.var("param")
    for slot in _SUMS:
        if tuple(ctx.shape(f"in_{slot}")) != tuple(p.shape):
            raise ctx.fail(f"in_{slot} must be shaped like param {list(p.shape)}")
        ctx.set(f"out_{slot}", p.shape, p.dtype)
    for slot in _COUNTS:
        ctx.set(f"out_{slot}", (1,), "int64")


@register_op("average_accumulates", _accumulates_infer,
             attrs={"average_window": 0.0, "min_average_window": 10000, "max_average_window": 10000})
def average_accumulates(ctx: KernelContext) -> None:
    """One step of the window sums (the counters are host int64 [1] arrays)."""
    a = ctx.attrs
    s1, s2, s3 = (_inplace(ctx, f"in_{s}", f"out_{s}") for s in _SUMS)
    n_acc, old_acc, n_upd = (_inplace(ctx, f"in_{s}", f"out_{s}") for s in _COUNTS)
    n_upd += 1
    n_acc += 1
    s1 += ctx.x("param")
    updates, accs = int(n_upd[0]), int(n_acc[0])
    if updates % MAX_ACCUMULATES == 0:
        s2 += s1
        s1[...] = 0
    window = min(int(a["max_average_window"]), int(updates * float(a["average_window"])))
    if accs >= int(a["min_average_window"]) and accs >= window:
        s3[...] = s1 + s2
        s1[...] = 0
        s2[...] = 0
        old_acc[...] = n_acc
        n_acc[...] = 0


def _apply_infer(ctx: ShapeContext) -> None:
    p = ctx.var("Param")
    ctx.set("ParamOut", p.shape, p.dtype)
    ctx.set("Backup", p.shape, p.dtype)


@register_op("model_average_apply", _apply_infer)
def model_average_apply(ctx: KernelContext) -> None:
    """Backup = Param; Param = the window average (unchanged while nothing was accumulated)."""
    xp, p = ctx.xp, ctx.x("Param")
    count = int(to_numpy(ctx.x("NumAccumulates")).sum() + to_numpy(ctx.x("OldNumAccumulates")).sum())
    ctx.out("Backup", p.copy())
    if count == 0:
        return
    total: Any = ctx.x("Sum1") + ctx.x("Sum2") + ctx.x("Sum3")
    ctx.out("ParamOut", xp.asarray(total / count).astype(p.dtype, copy=False))


@register_op("model_average_restore", lambda ctx: ctx.set("ParamOut", ctx.shape("Backup"), ctx.dtype("Backup")))
def model_average_restore(ctx: KernelContext) -> None:
    """Param = Backup."""
    ctx.out("ParamOut", ctx.x("Backup").copy())
