"""Convolution-family kernels: conv2d, pool2d, batch_norm, dropout (NCHW).

Sliding windows are never gathered pixel by pixel: a strided *view* of the
padded input exposes every (kh, kw) window without copying (im2col is then a
single reshape), and gradients scatter back by accumulating one window offset
at a time, so Python loops run kh*kw times, never per pixel.  conv2d's matmul is
batched over the batch dim: the output comes out already in [N, M, H, W] order
and, on small images, it beats one big GEMM plus a transpose.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ...errors import InvalidArgumentError
from ..registry import KernelContext, ShapeContext, register_grad, register_op


# ----------------------------------------------------------------- geometry
def _pair(v: Any) -> tuple[int, int]:
    """(h, w) from an int or a 1/2-element list attribute."""
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    v = [int(a) for a in v]
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _out_size(size: int, k: int, pad: int, stride: int, dilation: int = 1, ceil: bool = False,
              truncate: bool = False) -> int:
    """Output length along one axis; -1 stays unknown, 0 means the window does not fit.

    ``truncate`` (pooling): fluid computes the length with C integer division, which rounds
    a window larger than its (padded) input toward zero, giving one output over the cells
    that exist; GoogLeNet's 7x7 average pool over a 6x6 map at 224x224 relies on it."""
    if size < 0:
        return -1
    num = size + 2 * pad - (dilation * (k - 1) + 1) + (stride - 1 if ceil else 0)
    if truncate and num < 0:
        return max(int(num / stride) + 1, 0)
    return max(num // stride + 1, 0)


class _Geo(NamedTuple):
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    oh: int
    ow: int


def _pad(xp: Any, x: Any, ph: int, pw: int, hp: int, wp: int, value: float = 0.0) -> Any:
    """x [N, C, H, W] placed at (ph, pw) inside an [N, C, hp, wp] array filled with ``value``."""
    n, c, h, w = x.shape
    if (hp, wp) == (h, w):
        return x
    out = xp.full((n, c, hp, wp), value, dtype=x.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def _padded_hw(x_shape: tuple, g: _Geo) -> tuple[int, int]:
    """Padded extent: 2*pad, plus the extra rows/cols ceil_mode windows reach past it."""
    h, w = x_shape[2], x_shape[3]
    hp = max(h + 2 * g.ph, (g.oh - 1) * g.sh + g.dh * (g.kh - 1) + 1)
    wp = max(w + 2 * g.pw, (g.ow - 1) * g.sw + g.dw * (g.kw - 1) + 1)
    return hp, wp


def _windows(xp: Any, xpad: Any, g: _Geo) -> Any:
    """View [N, C, kh, kw, oh, ow]: element (i, j, y, x) is xpad[..., y*sh + i*dh, x*sw + j*dw]."""
    n, c = xpad.shape[:2]
    sn, sc, sy, sx = xpad.strides
    return xp.lib.stride_tricks.as_strided(
        xpad, shape=(n, c, g.kh, g.kw, g.oh, g.ow),
        strides=(sn, sc, sy * g.dh, sx * g.dw, sy * g.sh, sx * g.sw))


def _offset_slices(g: _Geo, i: int, j: int) -> tuple:
    """Where window offset (i, j) of every output position lands in the padded input."""
    y0, x0 = i * g.dh, j * g.dw
    return (slice(None), slice(None), slice(y0, y0 + g.sh * (g.oh - 1) + 1, g.sh),
            slice(x0, x0 + g.sw * (g.ow - 1) + 1, g.sw))


def _crop(xp: Any, dxpad: Any, x_shape: tuple, g: _Geo) -> Any:
    h, w = x_shape[2], x_shape[3]
    if dxpad.shape[2:] == (h, w):
        return dxpad
    return xp.ascontiguousarray(dxpad[:, :, g.ph:g.ph + h, g.pw:g.pw + w])


# ------------------------------------------------------------------- conv2d
def _conv_geo(x_shape: tuple, w_shape: tuple, attrs: dict) -> _Geo:
    sh, sw = _pair(attrs["strides"])
    ph, pw = _pair(attrs["paddings"])
    dh, dw = _pair(attrs["dilations"])
    kh, kw = int(w_shape[2]), int(w_shape[3])
    return _Geo(kh, kw, sh, sw, ph, pw, dh, dw,
                _out_size(x_shape[2], kh, ph, sh, dh), _out_size(x_shape[3], kw, pw, sw, dw))


def _check_window_attrs(ctx: ShapeContext, names: tuple[str, ...]) -> None:
    for name in names:
        v = _pair(ctx.attr(name))
        low = 0 if name == "paddings" else 1
        if min(v) < low:
            raise ctx.fail(f"attr {name}={list(v)} must be >= {low}")


def _conv2d_infer(ctx: ShapeContext) -> None:
    xs, fs = ctx.shape("Input"), ctx.shape("Filter")
    if len(xs) != 4:
        raise ctx.fail(f"Input must be 4-D [N, C, H, W], got {len(xs)}-D shape {list(xs)}")
    if len(fs) != 4:
        raise ctx.fail(f"Filter must be 4-D [num_filters, C/groups, kh, kw], got shape {list(fs)}")
    groups = int(ctx.attr("groups") or 1)
    if groups < 1 or fs[0] % groups:
        raise ctx.fail(f"num_filters={fs[0]} must be a positive multiple of groups={groups}")
    if xs[1] > 0 and xs[1] != fs[1] * groups:
        raise ctx.fail(f"Input {list(xs)} has {xs[1]} channels but Filter {list(fs)} with groups={groups} "
                       f"expects {fs[1] * groups} (= Filter dim 1 x groups)")
    _check_window_attrs(ctx, ("strides", "paddings", "dilations"))
    g = _conv_geo(xs, fs, ctx.op.attrs)
    if g.oh == 0 or g.ow == 0:
        raise ctx.fail(f"filter {fs[2]}x{fs[3]} (dilations {list(_pair(ctx.attr('dilations')))}, paddings "
                       f"{list(_pair(ctx.attr('paddings')))}) does not fit Input {list(xs)}")
    ctx.set("Output", (xs[0], fs[0], g.oh, g.ow), ctx.dtype("Input"))


def _im2col(xp: Any, x: Any, g: _Geo, groups: int) -> Any:
    """Columns [N, groups, C/groups*kh*kw, oh*ow] (one copy out of a strided view)."""
    n, c, h, w = x.shape
    xpad = _pad(xp, x, g.ph, g.pw, h + 2 * g.ph, w + 2 * g.pw)
    return _windows(xp, xpad, g).reshape(n, groups, (c // groups) * g.kh * g.kw, g.oh * g.ow)


_CONV_ATTRS = {"strides": [1, 1], "paddings": [0, 0], "dilations": [1, 1], "groups": 1,
               "use_cudnn": True, "use_mkldnn": False, "data_format": "AnyLayout"}


@register_op("conv2d", _conv2d_infer, attrs=_CONV_ATTRS)
def conv2d(ctx: KernelContext) -> None:
    """Output[n, m] = sum over the group's channels of Filter[m] cross-correlated with Input[n]."""
    x, w = ctx.x("Input"), ctx.x("Filter")
    groups = int(ctx.attrs["groups"] or 1)
    g = _conv_geo(x.shape, w.shape, ctx.attrs)
    cols = _im2col(ctx.xp, x, g, groups)
    m = w.shape[0]
    out = w.reshape(groups, m // groups, -1) @ cols  # [N, groups, M/groups, oh*ow]
    ctx.out("Output", out.reshape(x.shape[0], m, g.oh, g.ow))


@register_grad("conv2d")
def conv2d_grad(ctx: KernelContext) -> None:
    xp = ctx.xp
    x, w, gy = ctx.x("Input"), ctx.x("Filter"), ctx.x("Output@GRAD")
    groups = int(ctx.attrs["groups"] or 1)
    g = _conv_geo(x.shape, w.shape, ctx.attrs)
    n, c = x.shape[:2]
    m = w.shape[0]
    gy4 = gy.reshape(n, groups, m // groups, g.oh * g.ow)
    if ctx.wants("Filter@GRAD"):
        cols = _im2col(xp, x, g, groups)
        # per-sample products summed over the batch: faster than one GEMM over transposed copies
        dw = (gy4 @ cols.swapaxes(-1, -2)).sum(axis=0)
        ctx.out("Filter@GRAD", dw.reshape(w.shape))
    if ctx.wants("Input@GRAD"):
        dcols = w.reshape(groups, m // groups, -1).swapaxes(-1, -2) @ gy4  # [N, groups, K, oh*ow]
        dcols = dcols.reshape(n, c, g.kh, g.kw, g.oh, g.ow)
        dxpad = xp.zeros((n, c, x.shape[2] + 2 * g.ph, x.shape[3] + 2 * g.pw), dtype=x.dtype)
        for i in range(g.kh):
            for j in range(g.kw):
                dxpad[_offset_slices(g, i, j)] += dcols[:, :, i, j]
        ctx.out("Input@GRAD", _crop(xp, dxpad, x.shape, g))


# fluid emits depthwise_conv2d for groups == channels without cuDNN: same slots, same math
register_op("depthwise_conv2d", _conv2d_infer, attrs=_CONV_ATTRS)(conv2d)
register_grad("depthwise_conv2d")(conv2d_grad)


# ------------------------------------------------------------------- pool2d
def _pool_geo(x_shape: tuple, attrs: dict) -> _Geo:
    h, w = x_shape[2], x_shape[3]
    if attrs["global_pooling"]:
        return _Geo(h, w, 1, 1, 0, 0, 1, 1, 1, 1)
    kh, kw = _pair(attrs["ksize"])
    sh, sw = _pair(attrs["strides"])
    ph, pw = _pair(attrs["paddings"])
    ceil = bool(attrs["ceil_mode"])
    return _Geo(kh, kw, sh, sw, ph, pw, 1, 1,
                _out_size(h, kh, ph, sh, 1, ceil, truncate=True), _out_size(w, kw, pw, sw, 1, ceil, truncate=True))


def _pool2d_infer(ctx: ShapeContext) -> None:
    xs = ctx.shape("X")
    if len(xs) != 4:
        raise ctx.fail(f"X must be 4-D [N, C, H, W], got {len(xs)}-D shape {list(xs)}")
    if ctx.attr("pooling_type") not in ("max", "avg"):
        raise ctx.fail(f"pooling_type must be 'max' or 'avg', got {ctx.attr('pooling_type')!r}")
    if ctx.attr("adaptive"):
        raise ctx.fail("adaptive pooling is not supported")
    if not ctx.attr("global_pooling"):
        _check_window_attrs(ctx, ("ksize", "strides", "paddings"))
    g = _pool_geo(xs, ctx.op.attrs)
    if g.oh == 0 or g.ow == 0:
        raise ctx.fail(f"pool window {g.kh}x{g.kw} (paddings {[g.ph, g.pw]}) does not fit X {list(xs)}")
    ctx.set("Out", (xs[0], xs[1], g.oh, g.ow), ctx.dtype("X"))


def _valid_counts(xp: Any, size: int, k: int, s: int, p: int, o: int) -> Any:
    """Per output position, how many window cells fall inside the unpadded input."""
    start = xp.arange(o) * s - p
    return xp.maximum(xp.minimum(start + k, size) - xp.maximum(start, 0), 0)


def _avg_divisor(xp: Any, x: Any, g: _Geo, exclusive: bool) -> Any:
    """fluid divides by the window size, or (exclusive) by its cells inside the input."""
    if not exclusive:
        return g.kh * g.kw
    rows = _valid_counts(xp, x.shape[2], g.kh, g.sh, g.ph, g.oh)
    cols = _valid_counts(xp, x.shape[3], g.kw, g.sw, g.pw, g.ow)
    return xp.maximum(rows[:, None] * cols[None, :], 1).astype(x.dtype)


def _max_pad(x: Any) -> float:
    """Padding for max pooling: fluid starts each max at the lowest finite value, so a
    ceil_mode window lying wholly in the padding yields that, and padding beats -inf."""
    return float(np.finfo(x.dtype).min)


_POOL_ATTRS = {"pooling_type": "max", "ksize": [1, 1], "strides": [1, 1], "paddings": [0, 0],
               "global_pooling": False, "exclusive": True, "ceil_mode": False, "adaptive": False,
               "use_cudnn": True, "use_mkldnn": False, "data_format": "AnyLayout"}


@register_op("pool2d", _pool2d_infer, attrs=_POOL_ATTRS)
def pool2d(ctx: KernelContext) -> None:
    """Max or average over (kh, kw) windows; padding never wins a max and (exclusive) is not averaged."""
    xp, x = ctx.xp, ctx.x("X")
    is_max = ctx.attrs["pooling_type"] == "max"
    g = _pool_geo(x.shape, ctx.attrs)
    if ctx.attrs["global_pooling"]:
        out = x.max(axis=(2, 3), keepdims=True) if is_max else x.mean(axis=(2, 3), keepdims=True)
        ctx.out("Out", out)
        return
    xpad = _pad(xp, x, g.ph, g.pw, *_padded_hw(x.shape, g), value=_max_pad(x) if is_max else 0.0)
    win = _windows(xp, xpad, g)
    if is_max:
        out = win.max(axis=(2, 3))
    else:
        out = win.sum(axis=(2, 3)) / _avg_divisor(xp, x, g, ctx.attrs["exclusive"])
    ctx.out("Out", out.astype(x.dtype, copy=False))


@register_grad("pool2d")
def pool2d_grad(ctx: KernelContext) -> None:
    xp, x, gy = ctx.xp, ctx.x("X"), ctx.x("Out@GRAD")
    is_max = ctx.attrs["pooling_type"] == "max"
    g = _pool_geo(x.shape, ctx.attrs)
    n, c, h, w = x.shape
    if ctx.attrs["global_pooling"]:
        if is_max:  # one-hot of the first maximum of each map
            arg = x.reshape(n, c, h * w).argmax(axis=2)
            hot = xp.arange(h * w) == arg[:, :, None]
            dx = (hot * gy.reshape(n, c, 1)).astype(x.dtype, copy=False).reshape(x.shape)
        else:
            dx = xp.empty_like(x)
            dx[...] = gy / (h * w)
        ctx.out("X@GRAD", dx)
        return
    hp, wp = _padded_hw(x.shape, g)
    if is_max:
        win = _windows(xp, _pad(xp, x, g.ph, g.pw, hp, wp, value=_max_pad(x)), g)
        # first maximum in row-major window order gets the gradient (ties: one winner)
        arg = win.reshape(n, c, g.kh * g.kw, g.oh, g.ow).argmax(axis=2)
        zero = xp.zeros((), dtype=x.dtype)
        parts = ((i, j, xp.where(arg == i * g.kw + j, gy, zero)) for i in range(g.kh) for j in range(g.kw))
    else:
        share = (gy / _avg_divisor(xp, x, g, ctx.attrs["exclusive"])).astype(x.dtype, copy=False)
        parts = ((i, j, share) for i in range(g.kh) for j in range(g.kw))
    dxpad = xp.zeros((n, c, hp, wp), dtype=x.dtype)
    for i, j, part in parts:
        dxpad[_offset_slices(g, i, j)] += part
    ctx.out("X@GRAD", _crop(xp, dxpad, x.shape, g))


# --------------------------------------------------------------- batch_norm
def _bn_channel_axis(ndim: int, layout: str) -> int:
    return ndim - 1 if layout == "NHWC" and ndim > 2 else 1


def _batch_norm_infer(ctx: ShapeContext) -> None:
    xs = ctx.shape("X")
    layout = ctx.attr("data_layout")
    if layout not in ("NCHW", "NHWC"):
        raise ctx.fail(f"data_layout must be 'NCHW' or 'NHWC', got {layout!r}")
    if not 2 <= len(xs) <= 5:
        raise ctx.fail(f"X must have 2 to 5 dims, got shape {list(xs)}")
    ch = xs[_bn_channel_axis(len(xs), layout)]
    for slot in ("Scale", "Bias", "Mean", "Variance"):
        s = ctx.shape(slot)
        if ch > 0 and tuple(s) != (ch,):
            raise ctx.fail(f"{slot} must have shape [{ch}] (the channels of X {list(xs)} in {layout}), "
                           f"got {list(s)}")
    dt = ctx.dtype("X")
    ctx.set("Y", xs, dt, ctx.var("X").lod_level)
    for slot in ("MeanOut", "VarianceOut", "SavedMean", "SavedVariance"):
        ctx.set(slot, (ch,), ctx.dtype("Mean") if slot.endswith("Out") else dt)


def _bn_layout(x: Any, layout: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(axes reduced over, shape that broadcasts a per-channel vector against x)."""
    ch = _bn_channel_axis(x.ndim, layout)
    bshape = [1] * x.ndim
    bshape[ch] = x.shape[ch]
    return tuple(i for i in range(x.ndim) if i != ch), tuple(bshape)


def _global_stats(attrs: dict) -> bool:
    return bool(attrs["is_test"] or attrs["use_global_stats"])


def _update_running(ctx: KernelContext, in_slot: str, out_slot: str, batch: Any) -> None:
    """out = momentum * running + (1 - momentum) * batch, in place when out is the same var."""
    running, mom = ctx.x(in_slot), float(ctx.attrs["momentum"])
    batch = batch.astype(running.dtype, copy=False)
    writable = bool(getattr(getattr(running, "flags", None), "writeable", True))
    if ctx.outs.get(out_slot) == ctx.ins.get(in_slot) and writable:
        running *= mom
        running += (1.0 - mom) * batch
        ctx.out(out_slot, running)
    else:
        ctx.out(out_slot, running * mom + (1.0 - mom) * batch)


_BN_ATTRS = {"momentum": 0.9, "epsilon": 1e-5, "is_test": False, "data_layout": "NCHW",
             "use_global_stats": False, "fuse_with_relu": False, "use_mkldnn": False}


@register_op("batch_norm", _batch_norm_infer, no_grad_inputs=("Mean", "Variance"), grad_outputs=("Y",),
             attrs=_BN_ATTRS)
def batch_norm(ctx: KernelContext) -> None:
    """Y = Scale * (X - mean) / sqrt(var + eps) + Bias per channel.

    Training uses the batch's (biased) statistics and folds them into the
    running Mean/Variance; test mode (or use_global_stats) uses the running
    ones.  SavedVariance holds 1/sqrt(var + eps), as fluid's does.
    """
    xp, x = ctx.xp, ctx.x("X")
    axes, bshape = _bn_layout(x, ctx.attrs["data_layout"])
    if _global_stats(ctx.attrs):
        mean, var = ctx.x("Mean").astype(x.dtype, copy=False), ctx.x("Variance").astype(x.dtype, copy=False)
        centered = x - mean.reshape(bshape)
        for src, dst in (("Mean", "MeanOut"), ("Variance", "VarianceOut")):
            if ctx.outs.get(dst) != ctx.ins.get(src):  # unchanged, but the output must hold a value
                ctx.out(dst, ctx.x(src).copy())
    else:
        mean = x.mean(axis=axes)
        centered = x - mean.reshape(bshape)
        var = (centered * centered).mean(axis=axes)
        _update_running(ctx, "Mean", "MeanOut", mean)
        _update_running(ctx, "Variance", "VarianceOut", var)
    inv_std = (1.0 / xp.sqrt(var + ctx.attrs["epsilon"])).astype(x.dtype, copy=False)
    y = centered * (ctx.x("Scale") * inv_std).reshape(bshape) + ctx.x("Bias").reshape(bshape)
    if ctx.attrs["fuse_with_relu"]:
        y = xp.maximum(y, 0)
    ctx.out("Y", y.astype(x.dtype, copy=False), ctx.lod("X"))
    ctx.out("SavedMean", mean)
    ctx.out("SavedVariance", inv_std)


@register_grad("batch_norm")
def batch_norm_grad(ctx: KernelContext) -> None:
    xp, x, scale, dy = ctx.xp, ctx.x("X"), ctx.x("Scale"), ctx.x("Y@GRAD")
    axes, bshape = _bn_layout(x, ctx.attrs["data_layout"])
    if ctx.attrs["fuse_with_relu"]:
        dy = dy * (ctx.x("Y") > 0)
    use_global = _global_stats(ctx.attrs)
    if use_global:
        mean = ctx.x("Mean").astype(x.dtype, copy=False)
        inv_std = (1.0 / xp.sqrt(ctx.x("Variance") + ctx.attrs["epsilon"])).astype(x.dtype, copy=False)
    else:
        mean, inv_std = ctx.x("SavedMean"), ctx.x("SavedVariance")
    x_hat = (x - mean.reshape(bshape)) * inv_std.reshape(bshape)
    d_bias = dy.sum(axis=axes)
    d_scale = (dy * x_hat).sum(axis=axes)
    if ctx.wants("Bias@GRAD"):
        ctx.out("Bias@GRAD", d_bias.astype(scale.dtype, copy=False))
    if ctx.wants("Scale@GRAD"):
        ctx.out("Scale@GRAD", d_scale.astype(scale.dtype, copy=False))
    if ctx.wants("X@GRAD"):
        k = (scale * inv_std).reshape(bshape)
        if use_global:  # statistics are constants: the op is affine in X
            dx = dy * k
        else:  # batch statistics depend on X too
            m = x.size // d_bias.size  # elements per channel
            dx = (k / m) * (m * dy - d_bias.reshape(bshape) - x_hat * d_scale.reshape(bshape))
        ctx.out("X@GRAD", dx.astype(x.dtype, copy=False), ctx.lod("X"))


# ------------------------------------------------------------------ dropout
_DROPOUT_IMPLS = ("downgrade_in_infer", "upscale_in_train")


def _dropout_infer(ctx: ShapeContext) -> None:
    p, impl = ctx.attr("dropout_prob"), ctx.attr("dropout_implementation")
    if not 0.0 <= float(p) <= 1.0:
        raise InvalidArgumentError(f"op 'dropout': dropout_prob must be in [0, 1], got {p}")
    if impl not in _DROPOUT_IMPLS:
        raise InvalidArgumentError(f"op 'dropout': dropout_implementation must be one of {list(_DROPOUT_IMPLS)}, "
                                   f"got {impl!r}")
    ctx.share("X", "Out")
    ctx.set("Mask", ctx.shape("X"), ctx.dtype("X"))


def _train_scale(attrs: dict) -> float:
    """Factor applied to kept units while training."""
    p = float(attrs["dropout_prob"])
    if attrs["dropout_implementation"] != "upscale_in_train":
        return 1.0
    return 0.0 if p >= 1.0 else 1.0 / (1.0 - p)


def _test_scale(attrs: dict) -> float:
    """Factor applied to every unit at inference."""
    if attrs["dropout_implementation"] == "upscale_in_train":
        return 1.0
    return 1.0 - float(attrs["dropout_prob"])


_DROPOUT_ATTRS = {"dropout_prob": 0.5, "is_test": False, "seed": 0, "fix_seed": False,
                  "dropout_implementation": "downgrade_in_infer"}


@register_op("dropout", _dropout_infer, grad_outputs=("Out",), attrs=_DROPOUT_ATTRS, random=True)
def dropout(ctx: KernelContext) -> None:
    """Zero each unit with probability dropout_prob; Mask (X's dtype) records the kept ones.

    With fix_seed every run draws the same mask (from ``seed``); otherwise the
    op's generator advances from run to run.
    """
    x = ctx.x("X")
    if ctx.attrs["is_test"]:
        s = _test_scale(ctx.attrs)
        ctx.out("Out", x if s == 1.0 else (x * s).astype(x.dtype, copy=False), ctx.lod("X"))
        return
    rng = np.random.default_rng(int(ctx.attrs["seed"])) if ctx.attrs["fix_seed"] else ctx.rng
    keep = rng.random(x.shape, dtype=np.float32) >= float(ctx.attrs["dropout_prob"])
    mask = ctx.xp.asarray(keep).astype(x.dtype)
    s = _train_scale(ctx.attrs)
    out = x * mask if s == 1.0 else x * (mask * s)
    ctx.out("Mask", mask)
    ctx.out("Out", out.astype(x.dtype, copy=False), ctx.lod("X"))


@register_grad("dropout")
def dropout_grad(ctx: KernelContext) -> None:
    dy = ctx.x("Out@GRAD")
    if ctx.attrs["is_test"]:
        s = _test_scale(ctx.attrs)
        dx = dy if s == 1.0 else dy * s
    else:
        s = _train_scale(ctx.attrs)
        mask = ctx.x("Mask")
        dx = dy * mask if s == 1.0 else dy * (mask * s)
    ctx.out("X@GRAD", dx.astype(dy.dtype, copy=False), ctx.lod("X"))
