"""``adaptive_pool2d``, ``cvm`` (``layers.continuous_value_model``), ``ctc_align``
(``layers.ctc_greedy_decoder``), ``mean_iou``, ``sequence_scatter``, ``random_crop``,
``merge_selected_rows`` and ``get_tensor_from_selected_rows``."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from ..backend import scatter_add, to_numpy
from ..registry import KernelContext, ShapeContext, register_grad, register_op
from ..scope import SelectedRows
from .lod_util import last_offsets, seg_ids


# ---------------------------------------------------------- adaptive_pool2d
def _adaptive_infer(ctx: ShapeContext) -> None:
    s = ctx.shape("X")
    oh, ow = (int(v) for v in ctx.attr("ksize"))
    if len(s) != 4 or oh < 1 or ow < 1 or ctx.attr("pooling_type") not in ("max", "avg"):
        raise ctx.fail("X must be [N, C, H, W], pool_size positive and pool_type 'max' or 'avg'")
    ctx.set("Out", (s[0], s[1], oh, ow), ctx.dtype("X"), 0)


def _bins(n_in: int, n_out: int) -> list[tuple[int, int]]:
    """Output bin i covers input [floor(i * n_in / n_out), ceil((i + 1) * n_in / n_out))."""
    return [(i * n_in // n_out, -(-(i + 1) * n_in // n_out)) for i in np.arange(n_out).tolist()]


@register_op("adaptive_pool2d", _adaptive_infer, attrs={"ksize": [1, 1], "pooling_type": "max"})
def adaptive_pool2d(ctx: KernelContext) -> None:
    """Max or average over an oh x ow grid of bins that tile the input (bins may overlap)."""
    xp, x = ctx.xp, ctx.x("X")
    oh, ow = (int(v) for v in ctx.attrs["ksize"])
    out = xp.empty(x.shape[:2] + (oh, ow), dtype=x.dtype)
    reduce = "max" if ctx.attrs["pooling_type"] == "max" else "mean"
    for i, (h0, h1) in enumerate(_bins(x.shape[2], oh)):  # one vectorized reduction per bin
        for j, (w0, w1) in enumerate(_bins(x.shape[3], ow)):
            out[:, :, i, j] = getattr(x[:, :, h0:h1, w0:w1], reduce)(axis=(2, 3))
    ctx.out("Out", out)


@register_grad("adaptive_pool2d")
def adaptive_pool2d_grad(ctx: KernelContext) -> None:
    xp, x, g = ctx.xp, ctx.x("X"), ctx.x("Out@GRAD")
    oh, ow = (int(v) for v in ctx.attrs["ksize"])
    dx = xp.zeros_like(x)
    for i, (h0, h1) in enumerate(_bins(x.shape[2], oh)):
        for j, (w0, w1) in enumerate(_bins(x.shape[3], ow)):
            win = x[:, :, h0:h1, w0:w1]
            gij = g[:, :, i, j][:, :, None, None]
            if ctx.attrs["pooling_type"] == "avg":
                dx[:, :, h0:h1, w0:w1] += gij / (win.shape[2] * win.shape[3])
                continue
            flat = win.reshape(win.shape[0], win.shape[1], -1)
            first = flat.argmax(axis=2)[:, :, None] == xp.arange(flat.shape[2])[None, None, :]
            dx[:, :, h0:h1, w0:w1] += (first * gij.reshape(gij.shape[:2] + (1,))).reshape(win.shape)
    ctx.out("X@GRAD", dx)


# ---------------------------------------------------------------------- cvm
def _cvm_infer(ctx: ShapeContext) -> None:
    s = ctx.shape("X")
    if len(s) != 2 or (s[1] > 0 and s[1] < 2):
        raise ctx.fail("X must be [N, D] with D >= 2 (its first two columns are show and click)")
    d = s[1] if ctx.attr("use_cvm") else (s[1] - 2 if s[1] > 0 else -1)
    ctx.set("Y", (s[0], d), ctx.dtype("X"), ctx.var("X").lod_level)


@register_op("cvm", _cvm_infer, no_grad_inputs=("CVM",), attrs={"use_cvm": True})
def cvm(ctx: KernelContext) -> None:
    """With use_cvm: columns 0, 1 become log(show + 1) and log(click + 1) - log(show + 1);
    without: the two columns are dropped."""
    xp, x = ctx.xp, ctx.x("X")
    if not ctx.attrs["use_cvm"]:
        ctx.out("Y", x[:, 2:].copy(), ctx.lod("X"))
        return
    y = x.copy()
    y[:, 0] = xp.log(x[:, 0] + 1)
    y[:, 1] = xp.log(x[:, 1] + 1) - y[:, 0]
    ctx.out("Y", y, ctx.lod("X"))


@register_grad("cvm")
def cvm_grad(ctx: KernelContext) -> None:
    """As fluid: the embedding columns get the output gradient; the show/click columns get the
    CVM input itself (so a sparse table accumulates show and click counts)."""
    x, g, c = ctx.x("X"), ctx.x("Y@GRAD"), ctx.x("CVM")
    dx = ctx.xp.empty_like(x)
    dx[:, 2:] = g[:, 2:] if ctx.attrs["use_cvm"] else g
    dx[:, :2] = c.reshape(-1, 2)
    ctx.out("X@GRAD", dx, ctx.lod("X"))


# ---------------------------------------------------------------- ctc_align
def _ctc_infer(ctx: ShapeContext) -> None:
    ctx.set("Output", (-1, 1), "int64", 1)


@register_op("ctc_align", _ctc_infer, no_grad_inputs=("Input",), attrs={"blank": 0, "merge_repeated": True})
def ctc_align(ctx: KernelContext) -> None:
    """Per sequence of token ids: merge repeated tokens, then drop the blank."""
    ids = to_numpy(ctx.x("Input")).reshape(-1).astype(np.int64)
    off = last_offsets(ctx, "Input", ids.size, "ctc_align")
    start = np.zeros(ids.size, bool)
    start[off[:-1][np.diff(off) > 0]] = True  # the first token of a sequence is never a repeat
    keep = ids != int(ctx.attrs["blank"])
    if ctx.attrs["merge_repeated"] and ids.size:
        keep &= start | np.concatenate([[True], ids[1:] != ids[:-1]])
    kept = np.concatenate([[0], np.cumsum(keep)])
    ctx.out("Output", ctx.xp.asarray(ids[keep].reshape(-1, 1)), [kept[off].astype(np.int64).tolist()])


# ------------------------------------------------------------------ mean_iou
def _iou_infer(ctx: ShapeContext) -> None:
    k = int(ctx.attr("num_classes"))
    ctx.set("OutMeanIou", (1,), "float32", 0)
    ctx.set("OutWrong", (k,), "int32", 0)
    ctx.set("OutCorrect", (k,), "int32", 0)


@register_op("mean_iou", _iou_infer, no_grad_inputs=("Predictions", "Labels"), attrs={"num_classes": 2})
def mean_iou(ctx: KernelContext) -> None:
    """Mean over the classes present of correct / (correct + wrong), where a mistake counts
    as wrong for both the true and the predicted class."""
    k = int(ctx.attrs["num_classes"])
    p = to_numpy(ctx.x("Predictions")).reshape(-1).astype(np.int64)
    lab = to_numpy(ctx.x("Labels")).reshape(-1).astype(np.int64)
    if p.size != lab.size or (p.size and (min(p.min(), lab.min()) < 0 or max(p.max(), lab.max()) >= k)):
        raise InvalidArgumentError(f"op 'mean_iou': predictions and labels must be equally many classes in [0, {k})")
    hit = p == lab
    correct = np.bincount(lab[hit], minlength=k)
    wrong = np.bincount(lab[~hit], minlength=k) + np.bincount(p[~hit], minlength=k)
    denom = correct + wrong
    iou = np.where(denom > 0, correct / np.maximum(denom, 1), 0.0)
    mean = iou.sum() / max(int((denom > 0).sum()), 1)
    xp = ctx.xp
    ctx.out("OutMeanIou", xp.asarray(np.array([mean], dtype=np.float32)))
    ctx.out("OutWrong", xp.asarray(wrong.astype(np.int32)))
    ctx.out("OutCorrect", xp.asarray(correct.astype(np.int32)))


# ---------------------------------------------------------- sequence_scatter
def _seq_scatter_infer(ctx: ShapeContext) -> None:
    ctx.share("X", "Out", lod=False)


def _scatter_targets(ctx: KernelContext, x: Any) -> tuple[Any, Any]:
    ids = to_numpy(ctx.x("Ids")).reshape(-1).astype(np.int64)
    off = last_offsets(ctx, "Ids", ids.size, "sequence_scatter")
    if off.size - 1 != x.shape[0] or (ids.size and (ids.min() < 0 or ids.max() >= x.shape[1])):
        raise InvalidArgumentError(f"op 'sequence_scatter': Ids need one sequence per row of X ({x.shape[0]}) "
                                   f"and columns in [0, {x.shape[1]})")
    return ctx.xp.asarray(seg_ids(off)), ctx.xp.asarray(ids)


@register_op("sequence_scatter", _seq_scatter_infer, no_grad_inputs=("Ids",))
def sequence_scatter(ctx: KernelContext) -> None:
    """Out = X with Updates added at (i, Ids[t]) for every t of sequence i."""
    x = ctx.x("X")
    rows, cols = _scatter_targets(ctx, x)
    out = x.copy()
    flat = out.reshape(-1)  # a view: (row, col) pairs as flat indices, repeats accumulated
    scatter_add(flat, rows * x.shape[1] + cols, ctx.x("Updates").reshape(-1).astype(x.dtype, copy=False))
    ctx.out("Out", out)


@register_grad("sequence_scatter")
def sequence_scatter_grad(ctx: KernelContext) -> None:
    x, g = ctx.x("X"), ctx.x("Out@GRAD")
    rows, cols = _scatter_targets(ctx, x)
    if ctx.wants("X@GRAD"):
        ctx.out("X@GRAD", g)
    if ctx.wants("Updates@GRAD"):
        ctx.out("Updates@GRAD", g[rows, cols].reshape(ctx.x("Updates").shape), ctx.lod("Updates"))


# --------------------------------------------------------------- random_crop
def _random_crop_infer(ctx: ShapeContext) -> None:
    s, shape = list(ctx.shape("X")), [int(v) for v in ctx.attr("shape")]
    if not shape or len(shape) > len(s) or any(a > 0 and b > a for a, b in zip(s[len(s) - len(shape):], shape)):
        raise ctx.fail(f"shape {shape} must fit the trailing dims of X {s}")
    ctx.set("Out", s[:len(s) - len(shape)] + shape, ctx.dtype("X"), 0)


@register_op("random_crop", _random_crop_infer, no_grad_inputs=("X",), attrs={"shape": [], "startup_seed": 0},
             random=True)
def random_crop(ctx: KernelContext) -> None:
    """A random ``shape`` window of the trailing dims, drawn per instance."""
    x, shape = ctx.x("X"), [int(v) for v in ctx.attrs["shape"]]
    lead = x.shape[:x.ndim - len(shape)]
    seed = int(ctx.attrs["startup_seed"])
    rng = np.random.default_rng(seed) if seed else ctx.rng
    flat = x.reshape((-1,) + x.shape[len(lead):])
    out = ctx.xp.empty((flat.shape[0],) + tuple(shape), dtype=x.dtype)
    for i in np.arange(flat.shape[0]).tolist():  # one slice copy per instance
        starts = [int(rng.integers(0, d - s + 1)) for d, s in zip(flat.shape[1:], shape)]
        out[i] = flat[(i,) + tuple(slice(a, a + s) for a, s in zip(starts, shape))]
    ctx.out("Out", out.reshape(lead + tuple(shape)))


# ------------------------------------------------------------- SelectedRows
@register_op("merge_selected_rows", lambda ctx: ctx.share("X", "Out"), no_grad_inputs=("X",))
def merge_selected_rows(ctx: KernelContext) -> None:
    """A SelectedRows with each repeated row summed into one."""
    x = ctx.raw("X")
    if not isinstance(x, SelectedRows):
        raise InvalidArgumentError(f"op 'merge_selected_rows': X '{ctx.ins['X'][0]}' is not a SelectedRows")
    ctx.out("Out", x.merged())


@register_op("get_tensor_from_selected_rows", lambda ctx: ctx.share("X", "Out"), no_grad_inputs=("X",))
def get_tensor_from_selected_rows(ctx: KernelContext) -> None:
    """The value tensor [rows, ...] of a SelectedRows."""
    x = ctx.raw("X")
    if not isinstance(x, SelectedRows):
        raise InvalidArgumentError(f"op 'get_tensor_from_selected_rows': X '{ctx.ins['X'][0]}' is not a "
                                   f"SelectedRows")
    ctx.out("Out", x.values)
