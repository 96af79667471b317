"""Image ops beyond conv2d/pool2d: ``conv2d_transpose``, ``lrn``, ``pad2d``,
``pixel_shuffle``, ``shuffle_channel`` and the resize ops (``bilinear_interp``,
``nearest_interp``).

conv2d_transpose is the input-gradient of conv2d run forwards: a GEMM into columns,
then one strided add per filter offset (col2im).  Resizing multiplies by two small
interpolation matrices, one per spatial axis, so forward and gradient are matmuls.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import scatter_add
from ..registry import KernelContext, ShapeContext, register_grad, register_op
from .nn import _Geo, _check_window_attrs, _crop, _im2col, _offset_slices, _pair


# --------------------------------------------------------- conv2d_transpose
def _transpose_geo(x_shape: tuple, w_shape: tuple, attrs: dict) -> tuple[_Geo, int, int]:
    """The geometry of the conv2d whose input-gradient this is, and the output H, W."""
    sh, sw = _pair(attrs["strides"])
    ph, pw = _pair(attrs["paddings"])
    dh, dw = _pair(attrs["dilations"])
    kh, kw = int(w_shape[2]), int(w_shape[3])
    h, w = x_shape[2], x_shape[3]
    oh = (h - 1) * sh - 2 * ph + dh * (kh - 1) + 1 if h > 0 else -1
    ow = (w - 1) * sw - 2 * pw + dw * (kw - 1) + 1 if w > 0 else -1
    if attrs.get("output_size"):
        # a stride s leaves s output sizes that the same input gives; output_size picks one
        # (the extra rows and columns are real outputs: the padding cropped at the end shrinks)
        want = _pair(attrs["output_size"])
        for size, req, stride, axis in ((oh, want[0], sh, "H"), (ow, want[1], sw, "W")):
            if size >= 0 and not size <= req < size + stride:
                raise ValueError(f"output_size {list(want)}: {axis} {req} must be in [{size}, {size + stride}) "
                                 f"(the computed size plus less than one stride)")
        oh, ow = (want[0] if oh >= 0 else -1), (want[1] if ow >= 0 else -1)
    return _Geo(kh, kw, sh, sw, ph, pw, dh, dw, h, w), oh, ow


def _conv_t_infer(ctx: ShapeContext) -> None:
    xs, fs = ctx.shape("Input"), ctx.shape("Filter")
    if len(xs) != 4 or len(fs) != 4:
        raise ctx.fail("Input must be [N, C, H, W] and Filter [C, num_filters / groups, kh, kw]")
    groups = int(ctx.attr("groups") or 1)
    if xs[1] > 0 and (xs[1] != fs[0] or xs[1] % groups):
        raise ctx.fail(f"Filter dim 0 ({fs[0]}) must equal the input channels ({xs[1]}), a multiple of groups")
    _check_window_attrs(ctx, ("strides", "paddings", "dilations"))
    try:
        _, oh, ow = _transpose_geo(xs, fs, ctx.op.attrs)
    except ValueError as e:
        raise ctx.fail(str(e)) from None
    if 0 <= min(oh, ow) < 1 and min(oh, ow) != -1:
        raise ctx.fail("the output would be empty")
    ctx.set("Output", (xs[0], fs[1] * groups, oh, ow), ctx.dtype("Input"))


@register_op("conv2d_transpose", _conv_t_infer,
             attrs={"strides": [1, 1], "paddings": [0, 0], "dilations": [1, 1], "groups": 1, "use_cudnn": True,
                    "output_size": [], "data_format": "AnyLayout"})
def conv2d_transpose(ctx: KernelContext) -> None:
    """The transpose (gradient) of conv2d: each input pixel scatters Filter-weighted copies."""
    xp, x, w = ctx.xp, ctx.x("Input"), ctx.x("Filter")
    groups = int(ctx.attrs["groups"] or 1)
    g, oh, ow = _transpose_geo(x.shape, w.shape, ctx.attrs)
    n, c = x.shape[:2]
    m = w.shape[1] * groups
    x4 = x.reshape(n, groups, c // groups, g.oh * g.ow)
    cols = w.reshape(groups, c // groups, -1).swapaxes(-1, -2) @ x4  # [N, groups, M/groups*kh*kw, H*W]
    cols = cols.reshape(n, m, g.kh, g.kw, g.oh, g.ow)
    full_h, full_w = (g.oh - 1) * g.sh + g.dh * (g.kh - 1) + 1, (g.ow - 1) * g.sw + g.dw * (g.kw - 1) + 1
    out = xp.zeros((n, m, max(oh + 2 * g.ph, full_h), max(ow + 2 * g.pw, full_w)), dtype=x.dtype)
    for i in range(g.kh):
        for j in range(g.kw):
            out[_offset_slices(g, i, j)] += cols[:, :, i, j]
    ctx.out("Output", _crop(xp, out, (n, m, oh, ow), g))


@register_grad("conv2d_transpose")
def conv2d_transpose_grad(ctx: KernelContext) -> None:
    xp, x, w, gy = ctx.xp, ctx.x("Input"), ctx.x("Filter"), ctx.x("Output@GRAD")
    groups = int(ctx.attrs["groups"] or 1)
    g, _, _ = _transpose_geo(x.shape, w.shape, ctx.attrs)
    n, c = x.shape[:2]
    cols = _im2col(xp, xp.ascontiguousarray(gy), g, groups)  # [N, groups, M/groups*kh*kw, H*W]
    if ctx.wants("Input@GRAD"):
        dx = w.reshape(groups, c // groups, -1) @ cols
        ctx.out("Input@GRAD", dx.reshape(x.shape))
    if ctx.wants("Filter@GRAD"):
        x4 = x.reshape(n, groups, c // groups, g.oh * g.ow)
        ctx.out("Filter@GRAD", (x4 @ cols.swapaxes(-1, -2)).sum(axis=0).reshape(w.shape))


# ---------------------------------------------------------------------- lrn
def _lrn_infer(ctx: ShapeContext) -> None:
    if len(ctx.shape("X")) != 4 or int(ctx.attr("n")) < 1:
        raise ctx.fail("X must be [N, C, H, W] and n >= 1")
    ctx.share("X", "Out")
    ctx.set("MidOut", ctx.shape("X"), ctx.dtype("X"), 0)


def _window_sum(xp: Any, v: Any, before: int, after: int) -> Any:
    """Sum over channels c - before ... c + after (clipped to the valid channels)."""
    c = v.shape[1]
    csum = xp.concatenate([xp.zeros_like(v[:, :1]), xp.cumsum(v, axis=1)], axis=1)
    lo = np.clip(np.arange(c) - before, 0, c)
    hi = np.clip(np.arange(c) + after + 1, 0, c)
    return csum[:, xp.asarray(hi)] - csum[:, xp.asarray(lo)]


def _lrn_mid(ctx: KernelContext) -> Any:
    x, a = ctx.x("X"), ctx.attrs
    n = int(a["n"])
    return a["k"] + a["alpha"] * _window_sum(ctx.xp, x * x, (n - 1) // 2, n // 2)


@register_op("lrn", _lrn_infer, grad_outputs=("Out",), attrs={"n": 5, "k": 1.0, "alpha": 1e-4, "beta": 0.75})
def lrn(ctx: KernelContext) -> None:
    """Out = X / (k + alpha * sum of X^2 over n neighbouring channels) ** beta."""
    x, mid = ctx.x("X"), _lrn_mid(ctx)
    ctx.out("Out", (x * mid ** -ctx.attrs["beta"]).astype(x.dtype, copy=False))
    ctx.out("MidOut", mid)


@register_grad("lrn")
def lrn_grad(ctx: KernelContext) -> None:
    x, g, a = ctx.x("X"), ctx.x("Out@GRAD"), ctx.attrs
    mid, beta, n = _lrn_mid(ctx), a["beta"], int(a["n"])
    # channel c's window is c - (n-1)//2 ... c + n//2, so c feeds the windows of the
    # channels c - n//2 ... c + (n-1)//2 (the mirrored window)
    spread = _window_sum(ctx.xp, g * x * mid ** (-beta - 1), n // 2, (n - 1) // 2)
    ctx.out("X@GRAD", (g * mid ** -beta - 2 * a["alpha"] * beta * x * spread).astype(x.dtype, copy=False))


# -------------------------------------------------------------------- pad2d
PAD_MODES = ("constant", "reflect", "edge")


def _pad2d_infer(ctx: ShapeContext) -> None:
    s, p = ctx.shape("X"), [int(v) for v in ctx.attr("paddings")]
    if len(s) != 4 or len(p) != 4 or min(p) < 0 or ctx.attr("mode") not in PAD_MODES:
        raise ctx.fail(f"X must be [N, C, H, W], paddings 4 ints >= 0 (top, bottom, left, right) and mode one "
                       f"of {list(PAD_MODES)}")
    if ctx.attr("data_format") != "NCHW":
        raise ctx.fail("only data_format='NCHW' is supported")
    ctx.set("Out", (s[0], s[1], s[2] + p[0] + p[1] if s[2] > 0 else -1, s[3] + p[2] + p[3] if s[3] > 0 else -1),
            ctx.dtype("X"), 0)


def _pad2d_index(ctx: KernelContext, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None]:
    """For each output pixel the flat input pixel it copies, and (constant mode) which are inside."""
    t, b, left, r = (int(v) for v in ctx.attrs["paddings"])
    mode = ctx.attrs["mode"]
    idx = np.arange(h * w).reshape(h, w)
    if mode == "constant":
        inside = np.pad(np.ones((h, w), bool), ((t, b), (left, r)))
        return np.pad(idx, ((t, b), (left, r))), inside
    return np.pad(idx, ((t, b), (left, r)), mode="reflect" if mode == "reflect" else "edge"), None


@register_op("pad2d", _pad2d_infer, attrs={"paddings": [0, 0, 0, 0], "mode": "constant", "pad_value": 0.0,
                                          "data_format": "NCHW"})
def pad2d(ctx: KernelContext) -> None:
    """Pad H and W: a constant, the mirror image (reflect) or the border pixel (edge)."""
    xp, x = ctx.xp, ctx.x("X")
    n, c, h, w = x.shape
    idx, inside = _pad2d_index(ctx, h, w)
    out = x.reshape(n, c, h * w)[:, :, xp.asarray(idx)]
    if inside is not None:
        out = xp.where(xp.asarray(inside), out, ctx.attrs["pad_value"]).astype(x.dtype, copy=False)
    ctx.out("Out", out)


@register_grad("pad2d")
def pad2d_grad(ctx: KernelContext) -> None:
    xp, x, g = ctx.xp, ctx.x("X"), ctx.x("Out@GRAD")
    n, c, h, w = x.shape
    idx, inside = _pad2d_index(ctx, h, w)
    if inside is not None:
        g = g * xp.asarray(inside)
    dx = xp.zeros((h * w, n, c), dtype=x.dtype)
    scatter_add(dx, xp.asarray(idx.reshape(-1)), g.reshape(n, c, -1).transpose(2, 0, 1))
    ctx.out("X@GRAD", dx.transpose(1, 2, 0).reshape(x.shape))


# ------------------------------------------------- pixel / channel shuffles
def _shuffle_infer(ctx: ShapeContext) -> None:
    s = list(ctx.shape("X"))
    if len(s) != 4:
        raise ctx.fail(f"X must be [N, C, H, W], got {s}")
    if ctx.op.type == "pixel_shuffle":
        r = int(ctx.attr("upscale_factor"))
        if r < 1 or (s[1] > 0 and s[1] % (r * r)):
            raise ctx.fail(f"the channels ({s[1]}) must be a multiple of upscale_factor^2 = {r * r}")
        out = [s[0], s[1] // (r * r) if s[1] > 0 else -1, s[2] * r if s[2] > 0 else -1, s[3] * r if s[3] > 0 else -1]
    else:
        k = int(ctx.attr("group"))
        if k < 1 or (s[1] > 0 and s[1] % k):
            raise ctx.fail(f"the channels ({s[1]}) must be a multiple of group={k}")
        out = s
    ctx.set("Out", out, ctx.dtype("X"), 0)


def _pixel_shuffle(x: Any, r: int, inverse: bool) -> Any:
    if inverse:  # [N, C, H*r, W*r] -> [N, C*r*r, H, W]
        n, c, h, w = x.shape
        return x.reshape(n, c, h // r, r, w // r, r).transpose(0, 1, 3, 5, 2, 4).reshape(n, c * r * r, h // r, w // r)
    n, c, h, w = x.shape
    return x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, c // (r * r), h * r, w * r)


@register_op("pixel_shuffle", _shuffle_infer, attrs={"upscale_factor": 1})
def pixel_shuffle(ctx: KernelContext) -> None:
    """[N, C*r*r, H, W] -> [N, C, H*r, W*r]: each group of r*r channels tiles an r x r block."""
    ctx.out("Out", _pixel_shuffle(ctx.x("X"), int(ctx.attrs["upscale_factor"]), False))


@register_grad("pixel_shuffle")
def pixel_shuffle_grad(ctx: KernelContext) -> None:
    ctx.out("X@GRAD", _pixel_shuffle(ctx.x("Out@GRAD"), int(ctx.attrs["upscale_factor"]), True))


def _channel_shuffle(x: Any, k: int) -> Any:
    n, c, h, w = x.shape
    return x.reshape(n, k, c // k, h, w).swapaxes(1, 2).reshape(x.shape)


@register_op("shuffle_channel", _shuffle_infer, attrs={"group": 1})
def shuffle_channel(ctx: KernelContext) -> None:
    """Interleave the channels of ``group`` groups (ShuffleNet)."""
    ctx.out("Out", _channel_shuffle(ctx.x("X"), int(ctx.attrs["group"])))


@register_grad("shuffle_channel")
def shuffle_channel_grad(ctx: KernelContext) -> None:
    g = ctx.x("Out@GRAD")
    ctx.out("X@GRAD", _channel_shuffle(g, g.shape[1] // int(ctx.attrs["group"])))


# -------------------------------------------------------------------- resize
def _resize_infer(ctx: ShapeContext) -> None:
    s = ctx.shape("X")
    if len(s) != 4:
        raise ctx.fail(f"X must be [N, C, H, W], got {list(s)}")
    oh, ow = int(ctx.attr("out_h")), int(ctx.attr("out_w"))
    if oh < 1 or ow < 1:
        raise ctx.fail(f"out_h and out_w must be >= 1, got {oh} and {ow}")
    ctx.set("Out", (s[0], s[1], oh, ow), ctx.dtype("X"), 0)


def interp_matrix(n_in: int, n_out: int, nearest: bool, align_corners: bool, align_mode: int) -> np.ndarray:
    """[n_out, n_in] weights: output position i reads input positions with these weights."""
    if align_corners:
        ratio = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    else:
        ratio = n_in / n_out
    dst = np.arange(n_out, dtype=np.float64)
    m = np.zeros((n_out, n_in))
    if nearest:
        src = np.floor(dst * ratio + 0.5) if align_corners else np.floor(dst * ratio)
        m[np.arange(n_out), np.minimum(src.astype(np.int64), n_in - 1)] = 1.0
        return m
    src = (dst + 0.5) * ratio - 0.5 if (not align_corners and align_mode == 0) else dst * ratio
    src = np.clip(src, 0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    np.add.at(m, (np.arange(n_out), lo), 1 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m


def _mats(ctx: KernelContext, x_shape: tuple, dtype: Any) -> tuple[Any, Any]:
    a = ctx.attrs
    nearest = ctx.op.type.startswith("nearest")
    mh = interp_matrix(x_shape[2], int(a["out_h"]), nearest, bool(a["align_corners"]), int(a["align_mode"]))
    mw = interp_matrix(x_shape[3], int(a["out_w"]), nearest, bool(a["align_corners"]), int(a["align_mode"]))
    return ctx.xp.asarray(mh.astype(dtype)), ctx.xp.asarray(mw.astype(dtype))


def _resize(ctx: KernelContext) -> None:
    x = ctx.x("X")
    mh, mw = _mats(ctx, x.shape, x.dtype)
    ctx.out("Out", mh @ x @ mw.T)


def _resize_grad(ctx: KernelContext) -> None:
    x = ctx.x("X")
    mh, mw = _mats(ctx, x.shape, x.dtype)
    ctx.out("X@GRAD", mh.T @ ctx.x("Out@GRAD") @ mw)


_RESIZE_ATTRS = {"out_h": 1, "out_w": 1, "interp_method": "bilinear", "align_corners": True, "align_mode": 1}
for _op in ("bilinear_interp", "nearest_interp"):
    register_op(_op, _resize_infer, attrs=dict(_RESIZE_ATTRS, interp_method=_op.split("_")[0]))(_resize)
    register_grad(_op)(_resize_grad)
