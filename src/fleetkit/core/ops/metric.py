"""Metric ops: top_k, arg_max / arg_min, accuracy and streaming (bucketed) AUC.

Only ``top_k`` is differentiable; the others read predictions and write counts.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError, ShapeError
from ..registry import KernelContext, ShapeContext, register_grad, register_op


# ------------------------------------------------------------------ top_k
def _top_k_infer(ctx: ShapeContext) -> None:
    xs, k = ctx.shape("X"), int(ctx.attr("k"))
    if not xs:
        raise ctx.fail("X must have at least one dimension")
    if k < 1:
        raise ctx.fail(f"k must be >= 1, got {k}")
    if xs[-1] > 0 and k > xs[-1]:
        raise ctx.fail(f"k={k} exceeds the last dimension {xs[-1]} of X {list(xs)}")
    x = ctx.var("X")
    shape = tuple(xs[:-1]) + (k,)
    ctx.set("Out", shape, x.dtype, x.lod_level)
    ctx.set("Indices", shape, "int64", x.lod_level)


def top_k_indices(xp: Any, x: Any, k: int) -> Any:
    """Indices of the k largest entries along the last axis, largest first.

    For small k a partition picks the candidates first, so the sort is over k
    entries per row instead of all of them.
    """
    d = x.shape[-1]
    if 4 * k < d:
        part = xp.argpartition(-x, k - 1, axis=-1)[..., :k]
        vals = xp.take_along_axis(x, part, axis=-1)
        order = xp.argsort(-vals, axis=-1)
        return xp.take_along_axis(part, order, axis=-1)
    return xp.argsort(-x, axis=-1)[..., :k]


@register_op("top_k", _top_k_infer, attrs={"k": 1})
def top_k(ctx: KernelContext) -> None:
    xp, x, k = ctx.xp, ctx.x("X"), int(ctx.attrs["k"])
    if k > x.shape[-1]:
        raise ShapeError(f"op 'top_k': k={k} exceeds the last dimension of '{ctx.ins['X'][0]}' "
                         f"(shape {list(x.shape)})")
    idx = top_k_indices(xp, x, k)
    lod = ctx.lod("X")
    ctx.out("Out", xp.take_along_axis(x, idx, axis=-1), lod)
    ctx.out("Indices", idx.astype(np.int64, copy=False), lod)


@register_grad("top_k")
def top_k_grad(ctx: KernelContext) -> None:
    """The upstream gradient goes back to the positions the values came from."""
    if not ctx.wants("X@GRAD"):
        return
    xp, x, idx, g = ctx.xp, ctx.x("X"), ctx.x("Indices"), ctx.x("Out@GRAD")
    d, k = x.shape[-1], idx.shape[-1]
    dx = xp.zeros((x.size // max(d, 1), d), dtype=x.dtype)
    rows = xp.arange(dx.shape[0])[:, None]
    dx[rows, idx.reshape(-1, k)] = g.reshape(-1, k)
    ctx.out("X@GRAD", dx.reshape(x.shape), ctx.lod("X"))


# ------------------------------------------------------- arg_max / arg_min
def _arg_infer(ctx: ShapeContext) -> None:
    xs = list(ctx.shape("X"))
    axis = int(ctx.attr("axis"))
    if not -len(xs) <= axis < len(xs):
        raise ctx.fail(f"axis {axis} is out of range for a rank-{len(xs)} input")
    axis %= len(xs)
    if ctx.attr("keepdims"):
        xs[axis] = 1
    else:
        del xs[axis]
    ctx.set("Out", xs, "int64", 0)


def _register_arg(name: str, fn: str) -> None:
    def kernel(ctx: KernelContext) -> None:
        x, axis = ctx.x("X"), int(ctx.attrs["axis"])
        out = getattr(ctx.xp, fn)(x, axis=axis)
        if ctx.attrs.get("keepdims"):
            out = ctx.xp.expand_dims(out, axis)
        ctx.out("Out", out.astype(np.int64, copy=False))

    kernel.__name__ = name
    register_op(name, _arg_infer, attrs={"axis": -1, "keepdims": False})(kernel)


_register_arg("arg_max", "argmax")
_register_arg("arg_min", "argmin")


# --------------------------------------------------------------- accuracy
def _accuracy_infer(ctx: ShapeContext) -> None:
    ins, ls = ctx.shape("Indices"), ctx.shape("Label")
    if len(ins) != 2:
        raise ctx.fail(f"Indices must be [N, k], got {list(ins)}")
    if len(ls) != 2 or ls[1] not in (1, -1):
        raise ctx.fail(f"Label must be [N, 1], got {list(ls)}")
    if ins[0] > 0 and ls[0] > 0 and ins[0] != ls[0]:
        raise ctx.fail(f"Indices {list(ins)} and Label {list(ls)} have different batch sizes")
    ctx.set("Accuracy", (1,), "float32", 0)
    for slot in ("Correct", "Total"):
        names = ctx.op.outputs.get(slot)
        if names:  # a user-given counter keeps its integer type; fresh ones are int64
            dt = ctx.block.var(names[0]).dtype
            ctx.set(slot, (1,), dt if dt in ("int32", "int64") else "int64", 0)


def _declared_dtype(ctx: KernelContext, slot: str) -> str:
    names = ctx.outs.get(slot)
    v = ctx.op.block._find_var_recursive(names[0]) if names else None
    return v.dtype if v is not None and v.dtype in ("int32", "int64") else "int64"


@register_op("accuracy", _accuracy_infer)
def accuracy(ctx: KernelContext) -> None:
    """A row is correct when its label is among its top-k indices."""
    xp, idx, label = ctx.xp, ctx.x("Indices"), ctx.x("Label")
    n = idx.shape[0]
    if label.size != n:
        raise ShapeError(f"op 'accuracy': Label '{ctx.ins['Label'][0]}' of shape {list(label.shape)} does not "
                         f"match Indices '{ctx.ins['Indices'][0]}' of shape {list(idx.shape)}")
    correct = (idx.reshape(n, -1) == label.reshape(n, 1)).any(axis=1).sum()
    acc = correct / n if n else correct * 0.0
    ctx.out("Accuracy", xp.asarray(acc, dtype=np.float32).reshape(1))
    ctx.out("Correct", xp.asarray(correct).astype(_declared_dtype(ctx, "Correct")).reshape(1))
    ctx.out("Total", xp.full((1,), n, dtype=_declared_dtype(ctx, "Total")))


# --------------------------------------------------------------------- auc
def _auc_infer(ctx: ShapeContext) -> None:
    ps, ls = ctx.shape("Predict"), ctx.shape("Label")
    if len(ps) != 2:
        raise ctx.fail(f"Predict must be [N, C] (probability of the positive class in the last column), "
                       f"got {list(ps)}")
    if ps[0] > 0 and ls and ls[0] > 0 and ps[0] != ls[0]:
        raise ctx.fail(f"Predict {list(ps)} and Label {list(ls)} have different batch sizes")
    if ctx.attr("curve") != "ROC":
        raise ctx.fail(f"curve {ctx.attr('curve')!r} is not supported (only 'ROC')")
    if int(ctx.attr("num_thresholds")) < 1:
        raise ctx.fail(f"num_thresholds must be >= 1, got {ctx.attr('num_thresholds')}")
    ctx.set("AUC", (1,), "float64", 0)


def roc_auc_from_stats(xp: Any, pos: Any, neg: Any) -> Any:
    """Area under the ROC curve from per-bucket positive/negative counts.

    Walking the buckets from the highest score down, each bucket moves the
    curve by (neg, pos); the trapezoid under that step is summed.  Ties inside
    one bucket count half, as in the usual rank-based AUC.
    """
    pos = pos[::-1].astype(np.float64)
    neg = neg[::-1].astype(np.float64)
    tp, fp = xp.cumsum(pos), xp.cumsum(neg)
    area = (neg * (2 * tp - pos)).sum() / 2  # (fp - fp_prev) * (tp + tp_prev) / 2
    denom = tp[-1] * fp[-1]
    return xp.where(denom > 0, area / xp.maximum(denom, 1), 0.0)


def _stat_rows(ctx: KernelContext, slot: str, buckets: int, rows: int) -> Any:
    s = ctx.x(slot)
    if s.size != buckets * rows:
        raise InvalidArgumentError(
            f"op 'auc': {slot} '{ctx.ins[slot][0]}' has shape {list(s.shape)}, expected {rows} x {buckets} "
            f"counts (num_thresholds + 1 = {buckets}, slide_steps = {ctx.attrs['slide_steps']})")
    return s.reshape(rows, buckets)


@register_op("auc", _auc_infer, attrs={"curve": "ROC", "num_thresholds": 2 ** 12 - 1, "slide_steps": 1})
def auc(ctx: KernelContext) -> None:
    """Bucket this batch's scores, fold them into the stats, output the AUC of the stats.

    ``slide_steps == 0`` accumulates forever; otherwise the stats hold the last
    ``slide_steps`` batches' histograms, one per row, oldest first.
    """
    xp, pred, label = ctx.xp, ctx.x("Predict"), ctx.x("Label")
    nt, steps = int(ctx.attrs["num_thresholds"]), int(ctx.attrs["slide_steps"])
    n = pred.shape[0]
    if label.size != n:
        raise ShapeError(f"op 'auc': Label '{ctx.ins['Label'][0]}' of shape {list(label.shape)} does not match "
                         f"Predict '{ctx.ins['Predict'][0]}' of shape {list(pred.shape)}")
    score = pred.reshape(n, -1)[:, -1]
    bucket = xp.clip((score * nt).astype(np.int64), 0, nt)  # truncation, as the reference binning
    is_pos = label.reshape(-1) > 0
    if n:
        batch_all = xp.bincount(bucket, minlength=nt + 1)
        batch_pos = xp.bincount(bucket, weights=is_pos.astype(np.float64), minlength=nt + 1).astype(np.int64)
        batch_neg = batch_all - batch_pos
    else:
        batch_pos = batch_neg = xp.zeros(nt + 1, dtype=np.int64)
    rows = max(steps, 1)
    old_pos = _stat_rows(ctx, "StatPos", nt + 1, rows)
    old_neg = _stat_rows(ctx, "StatNeg", nt + 1, rows)
    if steps == 0:
        new_pos, new_neg = old_pos + batch_pos, old_neg + batch_neg
    else:  # drop the oldest batch, append this one
        new_pos = xp.concatenate([old_pos[1:], batch_pos[None].astype(old_pos.dtype)])
        new_neg = xp.concatenate([old_neg[1:], batch_neg[None].astype(old_neg.dtype)])
    sp_shape, sn_shape = ctx.x("StatPos").shape, ctx.x("StatNeg").shape
    ctx.out("StatPosOut", new_pos.astype(old_pos.dtype, copy=False).reshape(sp_shape))
    ctx.out("StatNegOut", new_neg.astype(old_neg.dtype, copy=False).reshape(sn_shape))
    value = roc_auc_from_stats(xp, new_pos.sum(axis=0), new_neg.sum(axis=0))
    ctx.out("AUC", xp.asarray(value, dtype=np.float64).reshape(1))
