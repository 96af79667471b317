"""``layer_norm``, ``im2sequence`` and the debugging op ``print`` (``layers.Print``)."""
from __future__ import annotations

import math
import sys
import weakref
from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from ..backend import to_numpy
from ..registry import KernelContext, ShapeContext, register_grad, register_op
from ..scope import LoDTensor
from .nn import _Geo, _offset_slices, _pad, _windows


# --------------------------------------------------------------- layer_norm
def _layer_norm_infer(ctx: ShapeContext) -> None:
    x = ctx.var("X")
    axis = int(ctx.attr("begin_norm_axis"))
    if not 0 < axis < len(x.shape):
        raise ctx.fail(f"begin_norm_axis {axis} must be in [1, {len(x.shape) - 1}] for rank {len(x.shape)}")
    tail = x.shape[axis:]
    d = math.prod(tail) if all(v > 0 for v in tail) else -1
    for slot in ("Scale", "Bias"):
        if ctx.has(slot) and d > 0 and math.prod(ctx.shape(slot)) != d:
            raise ctx.fail(f"{slot} must hold {d} values (the normalized dims {list(tail)}), "
                           f"got shape {list(ctx.shape(slot))}")
    ctx.share("X", "Y")
    lead = math.prod(x.shape[:axis]) if all(v > 0 for v in x.shape[:axis]) else -1
    ctx.set("Mean", (lead,), x.dtype, 0)
    ctx.set("Variance", (lead,), x.dtype, 0)


def _ln_stats(ctx: KernelContext) -> tuple[Any, Any, Any, Any]:
    """x as [N, D], its normalized rows, the row means and 1 / sqrt(var + eps)."""
    x = ctx.x("X")
    axis = int(ctx.attrs["begin_norm_axis"])
    x2 = x.reshape(math.prod(x.shape[:axis]), -1)
    mean = x2.mean(axis=1, keepdims=True)
    centered = x2 - mean
    var = (centered * centered).mean(axis=1, keepdims=True)
    inv = 1.0 / ctx.xp.sqrt(var + ctx.attrs["epsilon"])
    return x2, centered * inv, mean, var


@register_op("layer_norm", _layer_norm_infer, grad_outputs=("Y",), attrs={"epsilon": 1e-5, "begin_norm_axis": 1})
def layer_norm(ctx: KernelContext) -> None:
    """Normalize each row (dims from begin_norm_axis on) to zero mean, unit variance; then
    scale and shift per element."""
    x = ctx.x("X")
    _, xhat, mean, var = _ln_stats(ctx)
    y = xhat
    if ctx.has("Scale"):
        y = y * ctx.x("Scale").reshape(1, -1)
    if ctx.has("Bias"):
        y = y + ctx.x("Bias").reshape(1, -1)
    ctx.out("Y", y.reshape(x.shape).astype(x.dtype, copy=False), ctx.lod("X"))
    ctx.out("Mean", mean.reshape(-1))
    ctx.out("Variance", var.reshape(-1))


@register_grad("layer_norm")
def layer_norm_grad(ctx: KernelContext) -> None:
    x = ctx.x("X")
    x2, xhat, _, var = _ln_stats(ctx)
    g = ctx.x("Y@GRAD").reshape(x2.shape)
    if ctx.wants("Scale@GRAD"):
        ctx.out("Scale@GRAD", (g * xhat).sum(axis=0).reshape(ctx.x("Scale").shape))
    if ctx.wants("Bias@GRAD"):
        ctx.out("Bias@GRAD", g.sum(axis=0).reshape(ctx.x("Bias").shape))
    if ctx.wants("X@GRAD"):
        dxhat = g * ctx.x("Scale").reshape(1, -1) if ctx.has("Scale") else g
        inv = 1.0 / ctx.xp.sqrt(var + ctx.attrs["epsilon"])
        dx = inv * (dxhat - dxhat.mean(axis=1, keepdims=True)
                    - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))
        ctx.out("X@GRAD", dx.reshape(x.shape).astype(x.dtype, copy=False), ctx.lod("X"))


# -------------------------------------------------------------- im2sequence
def _im2seq_geo(x_shape: tuple, attrs: dict) -> tuple[_Geo, tuple[int, int, int, int]]:
    kh, kw = (int(v) for v in attrs["kernels"])
    sh, sw = (int(v) for v in attrs["strides"])
    up, left, down, right = (int(v) for v in attrs["paddings"])
    h, w = x_shape[2], x_shape[3]
    oh = (h + up + down - kh) // sh + 1 if h > 0 else -1
    ow = (w + left + right - kw) // sw + 1 if w > 0 else -1
    return _Geo(kh, kw, sh, sw, up, left, 1, 1, oh, ow), (up, left, down, right)


def _im2seq_infer(ctx: ShapeContext) -> None:
    x = ctx.var("X")
    if len(x.shape) != 4:
        raise ctx.fail(f"X must be an [N, C, H, W] image batch, got {list(x.shape)}")
    if ctx.has("Y"):
        raise ctx.fail("input_image_size (per-image real sizes) is not supported")
    for name, n in (("kernels", 2), ("strides", 2), ("paddings", 4)):
        v = ctx.attr(name)
        if len(v) != n or any(int(a) < (0 if name == "paddings" else 1) for a in v):
            raise ctx.fail(f"{name} must be {n} {'non-negative' if name == 'paddings' else 'positive'} ints, got {v}")
    g, _ = _im2seq_geo(x.shape, ctx.op.attrs)
    if g.oh == 0 or g.ow == 0 or min(g.oh, g.ow) < -1:
        raise ctx.fail(f"the {g.kh}x{g.kw} filter does not fit the padded {x.shape[2]}x{x.shape[3]} image")
    c = x.shape[1]
    ctx.set("Out", (-1, c * g.kh * g.kw if c > 0 else -1), x.dtype, 1)


@register_op("im2sequence", _im2seq_infer, attrs={"kernels": [1, 1], "strides": [1, 1], "paddings": [0, 0, 0, 0],
                                                  "out_stride": [1, 1]})
def im2sequence(ctx: KernelContext) -> None:
    """Each image becomes a sequence of oh*ow rows, one per filter position: the C*kh*kw
    pixels under the filter (zero padding outside the image)."""
    xp, x = ctx.xp, ctx.x("X")
    g, (up, left, down, right) = _im2seq_geo(x.shape, ctx.attrs)
    n, c = x.shape[:2]
    hp, wp = max(x.shape[2] + up + down, (g.oh - 1) * g.sh + g.kh), max(x.shape[3] + left + right,
                                                                     (g.ow - 1) * g.sw + g.kw)
    win = _windows(xp, xp.ascontiguousarray(_pad(xp, x, up, left, hp, wp)), g)  # [N, C, kh, kw, oh, ow]
    out = win.transpose(0, 4, 5, 1, 2, 3).reshape(n * g.oh * g.ow, c * g.kh * g.kw)
    steps = g.oh * g.ow
    ctx.out("Out", xp.ascontiguousarray(out), [list(range(0, n * steps + 1, steps))])


@register_grad("im2sequence")
def im2sequence_grad(ctx: KernelContext) -> None:
    xp, x = ctx.xp, ctx.x("X")
    g, (up, left, down, right) = _im2seq_geo(x.shape, ctx.attrs)
    n, c, h, w = x.shape
    hp, wp = max(h + up + down, (g.oh - 1) * g.sh + g.kh), max(w + left + right, (g.ow - 1) * g.sw + g.kw)
    dcol = ctx.x("Out@GRAD").reshape(n, g.oh, g.ow, c, g.kh, g.kw).transpose(0, 3, 4, 5, 1, 2)
    dpad = xp.zeros((n, c, hp, wp), dtype=x.dtype)
    for i in range(g.kh):  # one strided add per filter offset, not per pixel
        for j in range(g.kw):
            dpad[_offset_slices(g, i, j)] += dcol[:, :, i, j]
    ctx.out("X@GRAD", xp.ascontiguousarray(dpad[:, :, up:up + h, left:left + w]))


# -------------------------------------------------------------------- print
_PRINTED: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()
PHASES = ("forward", "backward", "both")


def _print_infer(ctx: ShapeContext) -> None:
    if str(ctx.attr("print_phase")).lower() not in PHASES:
        raise ctx.fail(f"print_phase must be one of {list(PHASES)}, got {ctx.attr('print_phase')!r}")
    ctx.share("In", "Out")


def _describe(ctx: KernelContext, slot: str, name: str, phase: str) -> str | None:
    """The text fluid's print op shows for one tensor, or None past ``first_n`` prints."""
    a = ctx.attrs
    n = _PRINTED.get(ctx.op, 0)
    if 0 <= int(a["first_n"]) <= n:
        return None
    _PRINTED[ctx.op] = n + 1
    raw = ctx.raw(slot)
    values = np.asarray(to_numpy(raw.values if isinstance(raw, LoDTensor) else raw))
    lines = [f"{a['message'] or ''}\tTensor[{name}] ({phase})" if a["print_tensor_name"] else
             f"{a['message'] or ''} ({phase})"]
    if a["print_tensor_type"]:
        lines.append(f"\tdtype: {values.dtype}")
    if a["print_tensor_shape"]:
        lines.append(f"\tshape: {list(values.shape)}")
    if a["print_tensor_lod"] and isinstance(raw, LoDTensor) and raw.lod():
        lines.append(f"\tlod: {raw.lod()}")
    k = int(a["summarize"])
    flat = values.reshape(-1)
    shown = flat if k < 0 else flat[:k]
    lines.append("\tdata: " + ",".join(f"{v:g}" if values.dtype.kind == "f" else str(v) for v in shown)
                 + ("..." if shown.size < flat.size else ""))
    return "\n".join(lines)


def _emit(text: str | None) -> None:
    if text is not None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


@register_op("print", _print_infer,
             attrs={"first_n": -1, "message": "", "summarize": -1, "print_tensor_name": True,
                    "print_tensor_type": True, "print_tensor_shape": True, "print_tensor_lod": True,
                    "print_phase": "both"})
def print_op(ctx: KernelContext) -> None:
    """Out = In; prints In (name, dtype, shape, LoD, the first ``summarize`` values) to stdout."""
    if str(ctx.attrs["print_phase"]).lower() in ("forward", "both"):
        _emit(_describe(ctx, "In", ctx.ins["In"][0], "forward"))
    ctx.out("Out", ctx.raw("In").values if isinstance(ctx.raw("In"), LoDTensor) else ctx.raw("In"), ctx.lod("In"))


@register_grad("print")
def print_grad(ctx: KernelContext) -> None:
    """The gradient passes through; printed when print_phase is backward or both."""
    if str(ctx.attrs["print_phase"]).lower() in ("backward", "both"):
        _emit(_describe(ctx, "Out@GRAD", ctx.ins["Out@GRAD"][0], "backward"))
    if not ctx.has("Out@GRAD"):
        raise InvalidArgumentError("op 'print_grad': no gradient for Out")
    ctx.out("In@GRAD", ctx.x("Out@GRAD"), ctx.lod("In"))
