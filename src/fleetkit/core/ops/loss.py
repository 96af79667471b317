"""Softmax and the loss ops: cross entropy (hard / soft labels), softmax with
cross entropy, sigmoid cross entropy with logits, log loss.

All kernels flatten the leading dims so ``X [..., D]`` works like ``[N, D]``;
a label's class dim is the last one.  Logs are taken of values clipped to the
dtype's smallest normal number, so a zero probability gives a large finite loss
instead of ``inf`` (and no floating-point warning).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError, ShapeError
from ..registry import KernelContext, ShapeContext, register_grad, register_op


# --------------------------------------------------------------- helpers
def softmax_value(xp: Any, x: Any, axis: int = -1) -> Any:
    """exp(x - max) / sum: the max shift keeps exp from overflowing."""
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


_TINY: dict[Any, Any] = {}


def _tiny(dtype: Any) -> Any:
    """The dtype's smallest normal number (np.finfo costs ~0.5 us per call; cached)."""
    t = _TINY.get(dtype)
    if t is None:
        t = _TINY[dtype] = np.finfo(dtype).tiny
    return t


def _safe_log(xp: Any, x: Any) -> Any:
    return xp.log(xp.maximum(x, _tiny(x.dtype)))


def _label_name(ctx: KernelContext, slot: str) -> str:
    return ctx.ins[slot][0]


def _valid_rows(lab: Any, classes: int, ignore: int) -> Any:
    """None when every row counts (each label a class in [0, classes), none equal to
    ``ignore``), else the boolean mask of the rows whose label is not ``ignore`` (then
    a label may also be out of range: the caller checks).

    ``lab`` is a flat int64 vector.  Viewed as unsigned, a negative label becomes huge,
    so one reduction rules out both bounds in the common case.
    """
    if lab.size == 0:
        return None
    in_range = int(lab.view(np.uint64).max()) < classes
    if in_range and not 0 <= ignore < classes:
        return None
    valid = lab != ignore
    return None if in_range and bool(valid.all()) else valid


def _flat_index(xp: Any, lab: Any, rows: int, classes: int) -> Any:
    """Flat positions of ``[i, lab[i]]`` in a C-ordered ``[rows, classes]`` array.

    ``take`` / ``put`` with these cost about a third of 2-D fancy indexing.  Only for
    labels already known to be in ``[0, classes)``: a flat index does not bounds-check
    per row.
    """
    return lab + (xp.arange(0, rows * classes, classes) if classes else xp.zeros(rows, dtype=lab.dtype))


def _hard_labels(ctx: KernelContext, label: Any, rows: int, classes: int, ignore: int,
                 x_slot: str) -> tuple[Any, Any]:
    """Labels as a flat int vector plus the mask of rows that count (label != ignore_index),
    or None for the mask when every row counts.

    Checks the row count and the class range so a bad label is reported with its
    value instead of failing inside fancy indexing.
    """
    xp = ctx.xp
    if label.dtype.kind == "f" and bool((label == xp.floor(label)).all()):
        # a label variable declared float32 and fed class ids (fluid 1.4 scripts do this; the
        # feed casts to the declared dtype): whole numbers are class ids
        label = label.astype(np.int64)
    if label.dtype.kind not in "iu":
        raise InvalidArgumentError(
            f"op '{ctx.op.type}': hard label '{_label_name(ctx, 'Label')}' must hold class ids (integers), got "
            f"{label.dtype} values that are not whole numbers (pass soft_label=True for probability labels)")
    if label.size != rows:
        raise ShapeError(
            f"op '{ctx.op.type}': label '{_label_name(ctx, 'Label')}' of shape {list(label.shape)} does not "
            f"match input '{ctx.ins[x_slot][0]}' ({rows} rows of {classes} classes): expected shape [..., 1] "
            f"with {rows} rows")
    lab = label.reshape(-1).astype(np.int64, copy=False)
    valid = _valid_rows(lab, classes, ignore)
    if valid is None:
        return lab, None
    out_of_range = (lab < 0) | (lab >= classes)
    if bool(out_of_range.any()):
        bad = valid & out_of_range
        if bool(bad.any()):
            first = int(lab[xp.argmax(bad)])
            raise InvalidArgumentError(
                f"op '{ctx.op.type}': label '{_label_name(ctx, 'Label')}' holds class {first}, outside "
                f"[0, {classes}) (ignore_index={ignore})")
        return xp.where(valid, lab, 0), valid
    return lab, valid  # every label is in range: the ignored rows are masked by the caller


def _check_soft(ctx: KernelContext, label: Any, x: Any, x_slot: str) -> None:
    if label.shape != x.shape:
        raise ShapeError(
            f"op '{ctx.op.type}': soft label '{_label_name(ctx, 'Label')}' of shape {list(label.shape)} must "
            f"have the shape of input '{ctx.ins[x_slot][0]}' {list(x.shape)}")


def _ce_label_infer(ctx: ShapeContext, x_slot: str, out_slots: tuple[str, ...]) -> None:
    """Shared shape rule: X [..., D]; Label [..., 1] (hard) or [..., D] (soft); loss [..., 1]."""
    xs, ls = ctx.shape(x_slot), ctx.shape("Label")
    soft = bool(ctx.attr("soft_label"))
    if len(xs) < 1:
        raise ctx.fail(f"{x_slot} must have at least one dimension")
    if len(ls) != len(xs):
        raise ctx.fail(f"Label rank {len(ls)} (shape {list(ls)}) differs from {x_slot} rank {len(xs)} "
                       f"(shape {list(xs)}); Label must be {x_slot} shape with the last dim "
                       f"{'D' if soft else '1'}")
    for i, (a, b) in enumerate(zip(xs[:-1], ls[:-1])):
        if a > 0 and b > 0 and a != b:
            raise ctx.fail(f"Label shape {list(ls)} does not match {x_slot} shape {list(xs)} at dim {i}")
    want_last = xs[-1] if soft else 1
    if ls[-1] > 0 and want_last > 0 and ls[-1] != want_last:
        raise ctx.fail(f"Label shape {list(ls)}: last dim must be {want_last} for soft_label={soft} "
                       f"({x_slot} shape {list(xs)})")
    # a hard label declared float is not refused here: fluid 1.4 checks the fed value, and its
    # scripts declare one as float32 and feed int64 (models' lstm language model); the kernel
    # refuses a non-integer label, naming it
    x = ctx.var(x_slot)
    for slot in out_slots:
        ctx.set(slot, tuple(xs[:-1]) + (1,), x.dtype, x.lod_level)


# --------------------------------------------------------------- softmax
def _softmax_infer(ctx: ShapeContext) -> None:
    xs = ctx.shape("X")
    axis = ctx.attr("axis", -1)
    if not -len(xs) <= axis < max(len(xs), 1):
        raise ctx.fail(f"axis {axis} is out of range for a rank-{len(xs)} input")
    ctx.share("X", "Out")


@register_op("softmax", _softmax_infer, attrs={"axis": -1, "use_cudnn": False, "is_test": False})
def softmax(ctx: KernelContext) -> None:
    ctx.out("Out", softmax_value(ctx.xp, ctx.x("X"), ctx.attrs["axis"]), ctx.lod("X"))


@register_grad("softmax")
def softmax_grad(ctx: KernelContext) -> None:
    out, g = ctx.x("Out"), ctx.x("Out@GRAD")
    ctx.out("X@GRAD", softmax_grad_value(out, g, ctx.attrs["axis"]), ctx.lod("X"))


def softmax_grad_value(out: Any, g: Any, axis: int) -> Any:
    """softmax's input gradient from its output ``out`` and output gradient ``g``."""
    return out * (g - (g * out).sum(axis=axis, keepdims=True))


# --------------------------------------------------------------- cross_entropy
def _cross_entropy_infer(ctx: ShapeContext) -> None:
    _ce_label_infer(ctx, "X", ("Y",))


@register_op("cross_entropy", _cross_entropy_infer, no_grad_inputs=("Label",),
             attrs={"soft_label": False, "ignore_index": -100})
def cross_entropy(ctx: KernelContext) -> None:
    """Y = -log(X[label]) (hard) or -sum(label * log(X)) (soft); X holds probabilities."""
    x = ctx.x("X")
    ctx.out("Y", cross_entropy_value(ctx, x, ctx.x("Label")), ctx.lod("X"))


def cross_entropy_value(ctx: KernelContext, x: Any, label: Any) -> Any:
    """cross_entropy's Y for arrays ``x`` and ``label`` (the kernel, and core/fusion.py's softmax +
    cross_entropy step, call this)."""
    xp = ctx.xp
    d = x.shape[-1]
    x2 = x.reshape(-1, d)
    if ctx.attrs["soft_label"]:
        _check_soft(ctx, label, x, "X")
        y = -(label.reshape(-1, d) * _safe_log(xp, x2)).sum(axis=1, keepdims=True)
    else:
        lab, valid = _hard_labels(ctx, label, x2.shape[0], d, ctx.attrs["ignore_index"], "X")
        y = -_safe_log(xp, x2.take(_flat_index(xp, lab, x2.shape[0], d)))[:, None]
        if valid is not None:
            y = xp.where(valid[:, None], y, 0)
    return y.astype(x.dtype, copy=False).reshape(x.shape[:-1] + (1,))


@register_grad("cross_entropy")
def cross_entropy_grad(ctx: KernelContext) -> None:
    if not ctx.wants("X@GRAD"):
        return
    x = ctx.x("X")
    ctx.out("X@GRAD", cross_entropy_grad_value(ctx, x, ctx.x("Label"), ctx.x("Y@GRAD")), ctx.lod("X"))


def cross_entropy_grad_value(ctx: KernelContext, x: Any, label: Any, dy: Any) -> Any:
    """cross_entropy_grad's X@GRAD for arrays ``x``, ``label`` and ``dy`` (the kernel, and
    core/fusion.py's cross_entropy_grad + softmax_grad step, call this)."""
    xp = ctx.xp
    d = x.shape[-1]
    tiny = _tiny(x.dtype)
    g = dy.reshape(-1, 1)
    if ctx.attrs["soft_label"]:
        dx = -g * label.reshape(-1, d) / xp.maximum(x.reshape(-1, d), tiny)
    else:
        # the forward op already validated these labels; only the picked entries matter
        x2 = x.reshape(-1, d)
        lab = label.reshape(-1).astype(np.int64, copy=False)
        valid = _valid_rows(lab, d, ctx.attrs["ignore_index"])
        dx = xp.zeros(x2.shape, x2.dtype)  # zeros_like's Python wrapper costs more than the fill
        if valid is None:  # every label in range: flat indexing is safe
            flat = _flat_index(xp, lab, x2.shape[0], d)
            dx.put(flat, -g[:, 0] / xp.maximum(x2.take(flat), tiny))
        else:  # 2-D fancy indexing still bounds-checks a label the forward op never saw
            rows = xp.arange(x2.shape[0])
            lab = xp.where(valid, lab, 0)
            dx[rows, lab] = xp.where(valid, -g[:, 0] / xp.maximum(x2[rows, lab], tiny), 0)
    return dx.astype(x.dtype, copy=False).reshape(x.shape)


# ------------------------------------------------- softmax_with_cross_entropy
def _swce_infer(ctx: ShapeContext) -> None:
    _ce_label_infer(ctx, "Logits", ("Loss",))
    x = ctx.var("Logits")
    ctx.set("Softmax", x.shape, x.dtype, x.lod_level)


@register_op("softmax_with_cross_entropy", _swce_infer, no_grad_inputs=("Label",), grad_outputs=("Loss",),
             attrs={"soft_label": False, "ignore_index": -100, "numeric_stable_mode": True})
def softmax_with_cross_entropy(ctx: KernelContext) -> None:
    """Loss from the log-softmax, log(sum(exp(s))) - s[label] with s = x - max(x),
    so a probability that rounds to zero never reaches a log."""
    xp, logits, label = ctx.xp, ctx.x("Logits"), ctx.x("Label")
    d = logits.shape[-1]
    x2 = logits.reshape(-1, d)
    shifted = x2 - x2.max(axis=1, keepdims=True)
    sm = xp.exp(shifted)
    total = sm.sum(axis=1, keepdims=True)
    log_total = xp.log(total)
    sm /= total
    if ctx.attrs["soft_label"]:
        _check_soft(ctx, label, logits, "Logits")
        lab = label.reshape(-1, d)
        loss = log_total * lab.sum(axis=1, keepdims=True) - (lab * shifted).sum(axis=1, keepdims=True)
    else:
        lab, valid = _hard_labels(ctx, label, x2.shape[0], d, ctx.attrs["ignore_index"], "Logits")
        loss = log_total - shifted.take(_flat_index(xp, lab, x2.shape[0], d))[:, None]
        if valid is not None:
            loss = xp.where(valid[:, None], loss, 0)
    lod = ctx.lod("Logits")
    ctx.out("Softmax", sm.reshape(logits.shape), lod)
    ctx.out("Loss", loss.astype(logits.dtype, copy=False).reshape(logits.shape[:-1] + (1,)), lod)


@register_grad("softmax_with_cross_entropy")
def softmax_with_cross_entropy_grad(ctx: KernelContext) -> None:
    """dLogits = g * (softmax * sum(label) - label); one-hot label for hard labels."""
    if not ctx.wants("Logits@GRAD"):
        return
    xp, sm, label = ctx.xp, ctx.x("Softmax"), ctx.x("Label")
    d = sm.shape[-1]
    sm2 = sm.reshape(-1, d)
    g = ctx.x("Loss@GRAD").reshape(-1, 1)
    if ctx.attrs["soft_label"]:
        lab = label.reshape(-1, d)
        dx = g * (sm2 * lab.sum(axis=1, keepdims=True) - lab)
    else:
        lab, valid = _hard_labels(ctx, label, sm2.shape[0], d, ctx.attrs["ignore_index"], "Softmax")
        dx = sm2.copy()
        dx[xp.arange(sm2.shape[0]), lab] -= 1
        dx *= g if valid is None else xp.where(valid[:, None], g, 0)
    ctx.out("Logits@GRAD", dx.astype(sm.dtype, copy=False).reshape(sm.shape), ctx.lod("Logits"))


# ----------------------------------------- sigmoid_cross_entropy_with_logits
def _same_shape_label_infer(x_slot: str, label_slot: str, out_slot: str):
    def infer(ctx: ShapeContext) -> None:
        xs, ls = ctx.shape(x_slot), ctx.shape(label_slot)
        ok = len(xs) == len(ls) and all(a <= 0 or b <= 0 or a == b for a, b in zip(xs, ls))
        if not ok:
            raise ctx.fail(f"{label_slot} shape {list(ls)} must equal {x_slot} shape {list(xs)}")
        ctx.share(x_slot, out_slot)
    return infer


def _check_same(ctx: KernelContext, x: Any, label: Any, x_slot: str, label_slot: str) -> None:
    if x.shape != label.shape:
        raise ShapeError(f"op '{ctx.op.type}': {label_slot} '{ctx.ins[label_slot][0]}' of shape "
                         f"{list(label.shape)} must have the shape of {x_slot} '{ctx.ins[x_slot][0]}' "
                         f"{list(x.shape)}")


def _sigmoid_ce_terms(ctx: KernelContext) -> tuple[Any, Any, Any, Any]:
    """x, label, valid mask and the normalizer (count of valid labels, or 1)."""
    xp, x, label = ctx.xp, ctx.x("X"), ctx.x("Label")
    _check_same(ctx, x, label, "X", "Label")
    valid = label != ctx.attrs["ignore_index"]
    norm = xp.maximum(valid.sum(), 1).astype(x.dtype) if ctx.attrs["normalize"] else None
    return x, label.astype(x.dtype, copy=False), valid, norm


@register_op("sigmoid_cross_entropy_with_logits", _same_shape_label_infer("X", "Label", "Out"),
             no_grad_inputs=("Label",), attrs={"ignore_index": -100, "normalize": False})
def sigmoid_cross_entropy_with_logits(ctx: KernelContext) -> None:
    """max(x, 0) - x * z + log(1 + exp(-|x|)): the exp never overflows."""
    xp = ctx.xp
    x, z, valid, norm = _sigmoid_ce_terms(ctx)
    out = xp.maximum(x, 0) - x * z + xp.log1p(xp.exp(-xp.abs(x)))
    out = xp.where(valid, out, 0)
    if norm is not None:
        out = out / norm
    ctx.out("Out", out.astype(x.dtype, copy=False), ctx.lod("X"))


@register_grad("sigmoid_cross_entropy_with_logits")
def sigmoid_cross_entropy_with_logits_grad(ctx: KernelContext) -> None:
    if not ctx.wants("X@GRAD"):
        return
    xp = ctx.xp
    x, z, valid, norm = _sigmoid_ce_terms(ctx)
    e = xp.exp(-xp.abs(x))
    sig = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
    dx = xp.where(valid, (sig - z) * ctx.x("Out@GRAD"), 0)
    if norm is not None:
        dx = dx / norm
    ctx.out("X@GRAD", dx.astype(x.dtype, copy=False), ctx.lod("X"))


# --------------------------------------------------------------- log_loss
@register_op("log_loss", _same_shape_label_infer("Predicted", "Labels", "Loss"),
             no_grad_inputs=("Labels",), attrs={"epsilon": 1e-4})
def log_loss(ctx: KernelContext) -> None:
    """-z log(p + eps) - (1 - z) log(1 - p + eps)."""
    xp, p, z = ctx.xp, ctx.x("Predicted"), ctx.x("Labels")
    _check_same(ctx, p, z, "Predicted", "Labels")
    eps = ctx.attrs["epsilon"]
    loss = -z * _safe_log(xp, p + eps) - (1 - z) * _safe_log(xp, 1 - p + eps)
    ctx.out("Loss", loss.astype(p.dtype, copy=False), ctx.lod("Predicted"))


@register_grad("log_loss")
def log_loss_grad(ctx: KernelContext) -> None:
    if not ctx.wants("Predicted@GRAD"):
        return
    p, z, g = ctx.x("Predicted"), ctx.x("Labels"), ctx.x("Loss@GRAD")
    eps = ctx.attrs["epsilon"]
    dp = g * (-z / (p + eps) + (1 - z) / (1 - p + eps))
    ctx.out("Predicted@GRAD", dp.astype(p.dtype, copy=False), ctx.lod("Predicted"))
