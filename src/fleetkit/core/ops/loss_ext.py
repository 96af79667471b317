"""``norm`` (``layers.l2_normalize``), ``cos_sim``, ``smooth_l1_loss`` and ``huber_loss``."""
from __future__ import annotations

from typing import Any

from ..registry import KernelContext, ShapeContext, register_grad, register_op
from .common import unbroadcast


# --------------------------------------------------------------------- norm
def _norm_infer(ctx: ShapeContext) -> None:
    shape = list(ctx.shape("X"))
    axis = int(ctx.attr("axis"))
    if not -len(shape) <= axis < len(shape):
        raise ctx.fail(f"axis {axis} is outside the rank {len(shape)} of X")
    ctx.share("X", "Out")
    shape[axis % len(shape)] = 1
    ctx.set("Norm", shape, ctx.dtype("X"), 0)


def _l2(ctx: KernelContext) -> tuple[Any, Any, int]:
    x = ctx.x("X")
    axis = int(ctx.attrs["axis"]) % x.ndim
    return x, ctx.xp.sqrt((x * x).sum(axis=axis, keepdims=True) + ctx.attrs["epsilon"]), axis


@register_op("norm", _norm_infer, grad_outputs=("Out",), attrs={"axis": 1, "epsilon": 1e-10})
def norm(ctx: KernelContext) -> None:
    """Out = X / sqrt(sum(X^2 along axis) + epsilon); Norm keeps the divisor."""
    x, n, _ = _l2(ctx)
    ctx.out("Out", (x / n).astype(x.dtype, copy=False), ctx.lod("X"))
    ctx.out("Norm", n)


@register_grad("norm")
def norm_grad(ctx: KernelContext) -> None:
    x, n, axis = _l2(ctx)
    g, out = ctx.x("Out@GRAD"), x / n
    dx = (g - out * (g * out).sum(axis=axis, keepdims=True)) / n
    ctx.out("X@GRAD", dx.astype(x.dtype, copy=False), ctx.lod("X"))


# ------------------------------------------------------------------ cos_sim
def _cos_sim_infer(ctx: ShapeContext) -> None:
    xs, ys = ctx.shape("X"), ctx.shape("Y")
    if len(xs) != len(ys) or (ys[0] != 1 and xs[0] > 0 and ys[0] > 0 and xs[0] != ys[0]) or \
            tuple(xs[1:]) != tuple(ys[1:]):
        raise ctx.fail("Y must be shaped like X, or have one row (compared with every row of X)")
    ctx.set("Out", (xs[0], 1), ctx.dtype("X"), ctx.var("X").lod_level)
    ctx.set("XNorm", (xs[0], 1), ctx.dtype("X"), 0)
    ctx.set("YNorm", (ys[0], 1), ctx.dtype("X"), 0)


def _cos_parts(ctx: KernelContext) -> tuple[Any, ...]:
    xp = ctx.xp
    x, y = ctx.x("X"), ctx.x("Y")
    x2, y2 = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
    xn = xp.sqrt((x2 * x2).sum(1, keepdims=True))
    yn = xp.sqrt((y2 * y2).sum(1, keepdims=True))
    return x2, y2, xn, yn, (x2 * y2).sum(1, keepdims=True) / (xn * yn)


@register_op("cos_sim", _cos_sim_infer, grad_outputs=("Out",))
def cos_sim(ctx: KernelContext) -> None:
    """Cosine similarity of each row of X with the matching row of Y (or Y's one row)."""
    _, _, xn, yn, out = _cos_parts(ctx)
    ctx.out("Out", out, ctx.lod("X"))
    ctx.out("XNorm", xn)
    ctx.out("YNorm", yn)


@register_grad("cos_sim")
def cos_sim_grad(ctx: KernelContext) -> None:
    x2, y2, xn, yn, out = _cos_parts(ctx)
    g = ctx.x("Out@GRAD").reshape(-1, 1)
    if ctx.wants("X@GRAD"):
        dx = g * (y2 / (xn * yn) - out * x2 / (xn * xn))
        ctx.out("X@GRAD", dx.reshape(ctx.x("X").shape), ctx.lod("X"))
    if ctx.wants("Y@GRAD"):
        dy = g * (x2 / (xn * yn) - out * y2 / (yn * yn))
        ctx.out("Y@GRAD", unbroadcast(ctx.xp, dy, y2.shape).reshape(ctx.x("Y").shape))


# ------------------------------------------------------------ smooth_l1_loss
def _pair_loss_infer(ctx: ShapeContext) -> None:
    xs, ys = ctx.shape("X"), ctx.shape("Y")
    if len(xs) != len(ys) or any(a > 0 and b > 0 and a != b for a, b in zip(xs, ys)):
        raise ctx.fail("X and Y must have the same shape")
    ctx.set("Out", (xs[0], 1), ctx.dtype("X"), 0)
    for slot in ("Diff", "Residual"):
        ctx.set(slot, xs, ctx.dtype("X"), 0)


def _weighted_diff(ctx: KernelContext) -> Any:
    d = ctx.x("X") - ctx.x("Y")
    return d * ctx.x("InsideWeight") if ctx.has("InsideWeight") else d


def _row_sum(v: Any) -> Any:
    return v.reshape(v.shape[0], -1).sum(1, keepdims=True)


@register_op("smooth_l1_loss", _pair_loss_infer, no_grad_inputs=("InsideWeight", "OutsideWeight"),
             grad_outputs=("Out",), attrs={"sigma": 1.0})
def smooth_l1_loss(ctx: KernelContext) -> None:
    """Per row: sum of 0.5 (sigma d)^2 where |d| < 1 / sigma^2, else |d| - 0.5 / sigma^2, with
    d = InsideWeight * (X - Y) and each term times OutsideWeight."""
    xp, s2 = ctx.xp, float(ctx.attrs["sigma"]) ** 2
    d = _weighted_diff(ctx)
    ad = xp.abs(d)
    v = xp.where(ad < 1.0 / s2, 0.5 * s2 * d * d, ad - 0.5 / s2)
    if ctx.has("OutsideWeight"):
        v = v * ctx.x("OutsideWeight")
    ctx.out("Diff", d)
    ctx.out("Out", _row_sum(v).astype(d.dtype, copy=False))


@register_grad("smooth_l1_loss")
def smooth_l1_loss_grad(ctx: KernelContext) -> None:
    xp, s2 = ctx.xp, float(ctx.attrs["sigma"]) ** 2
    d = _weighted_diff(ctx)
    dd = xp.where(xp.abs(d) < 1.0 / s2, s2 * d, xp.sign(d))
    for slot in ("InsideWeight", "OutsideWeight"):
        if ctx.has(slot):
            dd = dd * ctx.x(slot)
    g = ctx.x("Out@GRAD").reshape((-1,) + (1,) * (d.ndim - 1)) * dd
    if ctx.wants("X@GRAD"):
        ctx.out("X@GRAD", g)
    if ctx.wants("Y@GRAD"):
        ctx.out("Y@GRAD", -g)


# --------------------------------------------------------------- huber_loss
@register_op("huber_loss", _pair_loss_infer, grad_outputs=("Out",), attrs={"delta": 1.0})
def huber_loss(ctx: KernelContext) -> None:
    """r = Y - X; 0.5 r^2 where |r| <= delta, else delta (|r| - 0.5 delta).  X and Y are [N, 1]."""
    xp, delta = ctx.xp, float(ctx.attrs["delta"])
    r = ctx.x("Y") - ctx.x("X")
    ar = xp.abs(r)
    ctx.out("Residual", r)
    ctx.out("Out", xp.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)).reshape(r.shape[0], -1))


@register_grad("huber_loss")
def huber_loss_grad(ctx: KernelContext) -> None:
    xp, delta = ctx.xp, float(ctx.attrs["delta"])
    r = ctx.x("Y") - ctx.x("X")
    dr = ctx.x("Out@GRAD").reshape(r.shape) * xp.where(xp.abs(r) <= delta, r, delta * xp.sign(r))
    if ctx.wants("X@GRAD"):
        ctx.out("X@GRAD", -dr)
    if ctx.wants("Y@GRAD"):
        ctx.out("Y@GRAD", dr)
