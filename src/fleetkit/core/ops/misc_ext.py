"""Ranking and distribution losses (``rank_loss``, ``margin_rank_loss``, ``bpr_loss``,
``kldiv_loss``), ``maxout``, ``multiplex``, ``scatter``, ``reduce_all``/``reduce_any``,
``where``, ``sampling_id`` and ``gaussian_random_batch_size_like``."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from ..backend import scatter_add, to_numpy
from ..framework import convert_dtype
from ..registry import KernelContext, ShapeContext, register_grad, register_op
from .activation import _sigmoid
from .tensor import _batch_like_infer, _batch_like_out_shape


def _col_infer(ctx: ShapeContext) -> None:
    ctx.set("Out", (ctx.shape("Left")[0], 1), ctx.dtype("Left"), 0)
    ctx.set("Activated", (ctx.shape("Left")[0], 1), ctx.dtype("Left"), 0)


# ---------------------------------------------------------------- rank_loss
@register_op("rank_loss", _col_infer, no_grad_inputs=("Label",))
def rank_loss(ctx: KernelContext) -> None:
    """RankNet: log(1 + exp(left - right)) - label * (left - right)."""
    o = ctx.x("Left") - ctx.x("Right")
    ctx.out("Out", ctx.xp.logaddexp(0, o) - ctx.x("Label") * o)


@register_grad("rank_loss")
def rank_loss_grad(ctx: KernelContext) -> None:
    o = ctx.x("Left") - ctx.x("Right")
    d = (_sigmoid(ctx.xp, o, None) - ctx.x("Label")) * ctx.x("Out@GRAD")
    if ctx.wants("Left@GRAD"):
        ctx.out("Left@GRAD", d)
    if ctx.wants("Right@GRAD"):
        ctx.out("Right@GRAD", -d)


# --------------------------------------------------------- margin_rank_loss
@register_op("margin_rank_loss", _col_infer, no_grad_inputs=("Label",), grad_outputs=("Out",),
             attrs={"margin": 0.0})
def margin_rank_loss(ctx: KernelContext) -> None:
    """max(0, -label * (left - right) + margin); Activated marks the rows above zero."""
    v = -ctx.x("Label") * (ctx.x("Left") - ctx.x("Right")) + ctx.attrs["margin"]
    ctx.out("Out", ctx.xp.maximum(v, 0))
    ctx.out("Activated", (v > 0).astype(v.dtype))


@register_grad("margin_rank_loss")
def margin_rank_loss_grad(ctx: KernelContext) -> None:
    v = -ctx.x("Label") * (ctx.x("Left") - ctx.x("Right")) + ctx.attrs["margin"]
    d = -ctx.x("Label") * (v > 0) * ctx.x("Out@GRAD")
    if ctx.wants("Left@GRAD"):
        ctx.out("Left@GRAD", d)
    if ctx.wants("Right@GRAD"):
        ctx.out("Right@GRAD", -d)


# ----------------------------------------------------------------- bpr_loss
def _bpr_infer(ctx: ShapeContext) -> None:
    ctx.set("Y", (ctx.shape("X")[0], 1), ctx.dtype("X"), 0)


def _bpr_parts(ctx: KernelContext) -> tuple[Any, Any, Any]:
    x = ctx.x("X")
    lab = to_numpy(ctx.x("Label")).reshape(-1).astype(np.int64)
    if lab.size and (lab.min() < 0 or lab.max() >= x.shape[1]):
        raise InvalidArgumentError(f"op 'bpr_loss': Label '{ctx.ins['Label'][0]}' holds a class outside "
                                   f"[0, {x.shape[1]})")
    rows = ctx.xp.arange(x.shape[0])
    pos = x[rows, ctx.xp.asarray(lab)][:, None]
    other = ctx.xp.ones_like(x)
    other[rows, ctx.xp.asarray(lab)] = 0
    return pos - x, other, lab


@register_op("bpr_loss", _bpr_infer, no_grad_inputs=("Label",))
def bpr_loss(ctx: KernelContext) -> None:
    """-mean over the other classes j of log(sigmoid(x[label] - x[j])) per row."""
    xp = ctx.xp
    diff, other, _ = _bpr_parts(ctx)
    y = (xp.logaddexp(0, -diff) * other).sum(1, keepdims=True) / (diff.shape[1] - 1)
    ctx.out("Y", y)


@register_grad("bpr_loss")
def bpr_loss_grad(ctx: KernelContext) -> None:
    xp = ctx.xp
    diff, other, lab = _bpr_parts(ctx)
    w = (1 - _sigmoid(xp, diff, None)) * other / (diff.shape[1] - 1) * ctx.x("Y@GRAD").reshape(-1, 1)
    dx = w.copy()
    dx[xp.arange(diff.shape[0]), xp.asarray(lab)] = -w.sum(1)
    ctx.out("X@GRAD", dx)


# --------------------------------------------------------------- kldiv_loss
REDUCTIONS = ("none", "batchmean", "mean", "sum")


def _kldiv_infer(ctx: ShapeContext) -> None:
    r = ctx.attr("reduction")
    if r not in REDUCTIONS:
        raise ctx.fail(f"reduction {r!r} is not one of {list(REDUCTIONS)}")
    ctx.set("Loss", ctx.shape("X") if r == "none" else (1,), ctx.dtype("X"), 0)


def _kl_scale(x: Any, r: str) -> float:
    return {"none": 1.0, "sum": 1.0, "mean": 1.0 / max(x.size, 1), "batchmean": 1.0 / max(x.shape[0], 1)}[r]


@register_op("kldiv_loss", _kldiv_infer, no_grad_inputs=("Target",), attrs={"reduction": "mean"})
def kldiv_loss(ctx: KernelContext) -> None:
    """target * (log(target) - x) where target > 0 (x holds log-probabilities), reduced."""
    xp, x, t = ctx.xp, ctx.x("X"), ctx.x("Target")
    pos = t > 0
    loss = xp.where(pos, t * (xp.log(xp.where(pos, t, 1)) - x), 0)
    r = ctx.attrs["reduction"]
    ctx.out("Loss", loss if r == "none" else (loss.sum() * _kl_scale(x, r)).reshape(1).astype(x.dtype))


@register_grad("kldiv_loss")
def kldiv_loss_grad(ctx: KernelContext) -> None:
    x, t, r = ctx.x("X"), ctx.x("Target"), ctx.attrs["reduction"]
    g = ctx.x("Loss@GRAD")
    g = g if r == "none" else g.reshape(()) * _kl_scale(x, r)
    ctx.out("X@GRAD", (-t * (t > 0) * g).astype(x.dtype, copy=False))


# ------------------------------------------------------------------- maxout
def _maxout_infer(ctx: ShapeContext) -> None:
    s, k = ctx.shape("X"), int(ctx.attr("groups"))
    if len(s) != 4 or k < 1 or (s[1] > 0 and s[1] % k):
        raise ctx.fail(f"X must be [N, C, H, W] with C divisible by groups={k}")
    ctx.set("Out", (s[0], s[1] // k if s[1] > 0 else -1, s[2], s[3]), ctx.dtype("X"), 0)


def _groups(ctx: KernelContext) -> Any:
    x, k = ctx.x("X"), int(ctx.attrs["groups"])
    n, c, h, w = x.shape
    return x.reshape(n, c // k, k, h, w)


@register_op("maxout", _maxout_infer, attrs={"groups": 1})
def maxout(ctx: KernelContext) -> None:
    """Out channel i = max over input channels i*groups ... i*groups + groups - 1."""
    ctx.out("Out", _groups(ctx).max(axis=2))


@register_grad("maxout")
def maxout_grad(ctx: KernelContext) -> None:
    xp, grouped = ctx.xp, _groups(ctx)
    first = grouped.argmax(axis=2)[:, :, None]  # the first maximum gets the gradient
    hit = xp.arange(grouped.shape[2])[None, None, :, None, None] == first
    ctx.out("X@GRAD", (hit * ctx.x("Out@GRAD")[:, :, None]).reshape(ctx.x("X").shape).astype(grouped.dtype))


# ---------------------------------------------------------------- multiplex
def _multiplex_infer(ctx: ShapeContext) -> None:
    xs = ctx.vars("X")
    if len({tuple(v.shape) for v in xs}) != 1:
        raise ctx.fail("every candidate in X must have the same shape")
    ctx.set("Out", xs[0].shape, xs[0].dtype, 0)


def _picks(ctx: KernelContext, n_inputs: int, rows: int) -> Any:
    ids = to_numpy(ctx.x("Ids")).reshape(-1).astype(np.int64)
    if ids.size != rows or (ids.size and (ids.min() < 0 or ids.max() >= n_inputs)):
        raise InvalidArgumentError(f"op 'multiplex': Ids '{ctx.ins['Ids'][0]}' must hold {rows} indices in "
                                   f"[0, {n_inputs})")
    return ids


@register_op("multiplex", _multiplex_infer, no_grad_inputs=("Ids",))
def multiplex(ctx: KernelContext) -> None:
    """Row i of Out is row i of X[Ids[i]]."""
    xs = ctx.xs("X")
    ids = _picks(ctx, len(xs), xs[0].shape[0])
    stacked = ctx.xp.stack(xs)
    ctx.out("Out", stacked[ctx.xp.asarray(ids), ctx.xp.arange(xs[0].shape[0])])


@register_grad("multiplex")
def multiplex_grad(ctx: KernelContext) -> None:
    xs, g = ctx.xs("X"), ctx.x("Out@GRAD")
    ids = _picks(ctx, len(xs), xs[0].shape[0])
    grads = []
    for i, x in enumerate(xs):
        mask = ctx.xp.asarray((ids == i).reshape((-1,) + (1,) * (x.ndim - 1)))
        grads.append(g * mask)
    ctx.outs_list("X@GRAD", grads)


# ------------------------------------------------------------------ scatter
def _scatter_infer(ctx: ShapeContext) -> None:
    ctx.share("X", "Out")


def _scatter_rows(ctx: KernelContext, n: int) -> Any:
    ids = to_numpy(ctx.x("Ids")).reshape(-1).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        raise InvalidArgumentError(f"op 'scatter': Ids '{ctx.ins['Ids'][0]}' holds a row outside [0, {n})")
    return ctx.xp.asarray(ids)


@register_op("scatter", _scatter_infer, no_grad_inputs=("Ids",), attrs={"overwrite": True})
def scatter(ctx: KernelContext) -> None:
    """A copy of X with rows Ids replaced by Updates (summed into them without ``overwrite``)."""
    x = ctx.x("X")
    ids = _scatter_rows(ctx, x.shape[0])
    out = x.copy()
    if ctx.attrs["overwrite"]:
        out[ids] = ctx.x("Updates")
    else:
        out[ids] = 0
        scatter_add(out, ids, ctx.x("Updates"))
    ctx.out("Out", out)


@register_grad("scatter")
def scatter_grad(ctx: KernelContext) -> None:
    g = ctx.x("Out@GRAD")
    ids = _scatter_rows(ctx, g.shape[0])
    if ctx.wants("X@GRAD"):
        dx = g.copy()
        dx[ids] = 0
        ctx.out("X@GRAD", dx)
    if ctx.wants("Updates@GRAD"):
        ctx.out("Updates@GRAD", g[ids])


# ------------------------------------------------------- reduce_all / any
def _bool_reduce_infer(ctx: ShapeContext) -> None:
    shape = list(ctx.shape("X"))
    dims = [int(d) % len(shape) for d in ctx.attr("dim")] if not ctx.attr("reduce_all") else list(range(len(shape)))
    if ctx.attr("keep_dim"):
        out = [1 if i in dims else d for i, d in enumerate(shape)]
    else:
        out = [d for i, d in enumerate(shape) if i not in dims] or [1]
    ctx.set("Out", out, "bool", 0)


def _register_bool_reduce(name: str, fn: str) -> None:
    def kernel(ctx: KernelContext) -> None:
        x, a = ctx.x("X"), ctx.attrs
        axes = None if a["reduce_all"] else tuple(int(d) % x.ndim for d in a["dim"])
        out = getattr(ctx.xp, fn)(x, axis=axes, keepdims=bool(a["keep_dim"]))
        ctx.out("Out", out.reshape(1) if out.ndim == 0 else out)
    kernel.__doc__ = f"``{name}``: logical {fn} over ``dim`` (every dim with reduce_all)."
    register_op(name, _bool_reduce_infer, no_grad_inputs=("X",),
                attrs={"dim": [0], "keep_dim": False, "reduce_all": False})(kernel)


_register_bool_reduce("reduce_all", "all")
_register_bool_reduce("reduce_any", "any")


# -------------------------------------------------------------------- where
@register_op("where", lambda ctx: ctx.set("Out", (-1, len(ctx.shape("Condition"))), "int64", 0),
             no_grad_inputs=("Condition",))
def where(ctx: KernelContext) -> None:
    """The coordinates [K, rank] of the true elements of Condition."""
    ctx.out("Out", ctx.xp.stack(ctx.xp.nonzero(ctx.x("Condition")), axis=1).astype(np.int64))


# -------------------------------------------------------------- sampling_id
@register_op("sampling_id", lambda ctx: ctx.set("Out", (ctx.shape("X")[0],), "int64", 0), no_grad_inputs=("X",),
             attrs={"min": 0.0, "max": 1.0, "seed": 0}, random=True)
def sampling_id(ctx: KernelContext) -> None:
    """One column index per row of X, drawn with probability proportional to the row."""
    p = np.asarray(to_numpy(ctx.x("X")), dtype=np.float64)
    if (p < 0).any():
        raise InvalidArgumentError(f"op 'sampling_id': X '{ctx.ins['X'][0]}' holds a negative probability")
    seed = int(ctx.attrs["seed"])
    rng = np.random.default_rng(seed) if seed else ctx.rng
    cdf = np.cumsum(p, axis=1)
    u = rng.random(p.shape[0]) * cdf[:, -1]
    ids = np.minimum((cdf <= u[:, None]).sum(1), p.shape[1] - 1)
    ctx.out("Out", ctx.xp.asarray(ids.astype(np.int64)))


@register_op("gaussian_random_batch_size_like", _batch_like_infer, no_grad_inputs=("Input",),
             attrs={"shape": [], "dtype": "float32", "input_dim_idx": 0, "output_dim_idx": 0, "mean": 0.0,
                    "std": 1.0, "seed": 0}, random=True)
def gaussian_random_batch_size_like(ctx: KernelContext) -> None:
    """Normal(mean, std) samples of ``shape`` with the batch dim taken from Input."""
    shape = _batch_like_out_shape(ctx, use_lod=False)
    seed = int(ctx.attrs["seed"])
    rng = np.random.default_rng(seed) if seed else ctx.rng
    a = rng.normal(ctx.attrs["mean"], ctx.attrs["std"], size=shape)
    ctx.out("Out", ctx.xp.asarray(a.astype(convert_dtype(ctx.attrs["dtype"]), copy=False)))


# --------------------------------------------------- teacher_student_sigmoid_loss
def _tss_infer(ctx: ShapeContext) -> None:
    ctx.set("Y", (ctx.shape("X")[0], 1), ctx.dtype("X"), 0)


@register_op("teacher_student_sigmoid_loss", _tss_infer, no_grad_inputs=("Label",),
             attrs={"soft_max_up_bound": 15.0, "soft_max_lower_bound": -15.0})
def teacher_student_sigmoid_loss(ctx: KernelContext) -> None:
    """Click cross entropy plus, when a teacher score q is given, cross entropy against q.

    Label codes: -2 no click and no q; -1 click, no q; q (in [0, 1)) no click; 1 + q click.
    """
    xp, x, lab = ctx.xp, ctx.x("X"), ctx.x("Label")
    base = xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))  # softplus(x), stable
    y = xp.where(lab < -1, base, xp.where(lab < 0, base - x, xp.where(
        lab < 1, 2 * base - x * lab, 2 * base - x - x * (lab - 1))))
    ctx.out("Y", y.reshape(-1, 1).astype(x.dtype, copy=False))


@register_grad("teacher_student_sigmoid_loss")
def teacher_student_sigmoid_loss_grad(ctx: KernelContext) -> None:
    """d loss / dx from the sigmoid of x clipped to the bounds, zero where x is clipped (fluid)."""
    xp, x, lab, a = ctx.xp, ctx.x("X"), ctx.x("Label"), ctx.attrs
    lo, hi = a["soft_max_lower_bound"], a["soft_max_up_bound"]
    s = xp.clip(x, lo, hi)
    pred = _sigmoid(xp, s, None)
    d = xp.where(lab < -1, pred, xp.where(lab < 0, pred - 1, 2 * pred - lab))
    d = xp.where((s >= hi) | (s <= lo), 0, d)
    ctx.out("X@GRAD", (d * ctx.x("Y@GRAD").reshape(x.shape)).astype(x.dtype, copy=False))
