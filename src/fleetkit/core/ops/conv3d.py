"""Volumetric ops on NCDHW tensors: ``conv3d``, ``conv3d_transpose``, ``pool3d`` and
``adaptive_pool3d``.

Windows are strided views over the padded input ([N, C, kd, kh, kw, od, oh, ow]),
so a convolution is one copy into columns and one GEMM; gradients add back one
strided slice per filter offset (col2im), never per voxel.
"""
from __future__ import annotations

import math
from itertools import product
from typing import Any, NamedTuple

import numpy as np

from ..registry import KernelContext, ShapeContext, register_grad, register_op


def _triple(v: Any) -> tuple[int, int, int]:
    if isinstance(v, (int, np.integer)):
        return (int(v),) * 3
    v = [int(a) for a in v]
    return (v[0],) * 3 if len(v) == 1 else (v[0], v[1], v[2])


class _Geo3(NamedTuple):
    k: tuple
    s: tuple
    p: tuple
    d: tuple
    out: tuple

    def padded(self, shape: tuple) -> tuple:
        """Padded extent per axis: 2 * pad, plus what ceil_mode windows reach past it."""
        return tuple(max(n + 2 * p, (o - 1) * s + d * (k - 1) + 1)
                     for n, k, s, p, d, o in zip(shape[2:], self.k, self.s, self.p, self.d, self.out))


def _out(n: int, k: int, s: int, p: int, d: int, ceil: bool = False) -> int:
    if n < 0:
        return -1
    num = n + 2 * p - (d * (k - 1) + 1)
    return max((num + (s - 1 if ceil else 0)) // s + 1, 0)


def _geo(shape: tuple, k: tuple, attrs: dict, ceil: bool = False) -> _Geo3:
    s, p = _triple(attrs["strides"]), _triple(attrs["paddings"])
    d = _triple(attrs.get("dilations", 1))
    return _Geo3(k, s, p, d, tuple(_out(n, *a, ceil) for n, a in zip(shape[2:], zip(k, s, p, d))))


def _pad(xp: Any, x: Any, g: _Geo3, value: float = 0.0) -> Any:
    ext = g.padded(x.shape)
    if ext == tuple(x.shape[2:]):
        return xp.ascontiguousarray(x)
    out = xp.full(x.shape[:2] + ext, value, dtype=x.dtype)
    out[(slice(None), slice(None)) + tuple(slice(p, p + n) for p, n in zip(g.p, x.shape[2:]))] = x
    return out


def _windows(xp: Any, xpad: Any, g: _Geo3) -> Any:
    sn, sc, *sp = xpad.strides
    return xp.lib.stride_tricks.as_strided(
        xpad, shape=xpad.shape[:2] + g.k + g.out,
        strides=(sn, sc) + tuple(a * d for a, d in zip(sp, g.d)) + tuple(a * s for a, s in zip(sp, g.s)))


def _offsets(g: _Geo3):
    """(filter offset, where its window cells land in the padded input) for every offset."""
    for off in product(*(range(k) for k in g.k)):
        yield off, (slice(None), slice(None)) + tuple(
            slice(o * d, o * d + s * (n - 1) + 1, s) for o, d, s, n in zip(off, g.d, g.s, g.out))


def _crop(xp: Any, a: Any, shape: tuple, g: _Geo3) -> Any:
    return xp.ascontiguousarray(a[(slice(None), slice(None)) + tuple(slice(p, p + n) for p, n in zip(g.p, shape[2:]))])


def _col2im(xp: Any, cols: Any, shape: tuple, g: _Geo3) -> Any:
    """Sum window columns [N, C, *k, *out] back into an input of ``shape``."""
    acc = xp.zeros(shape[:2] + g.padded(shape), dtype=cols.dtype)
    for off, where in _offsets(g):
        acc[where] += cols[(slice(None), slice(None)) + off]
    return _crop(xp, acc, shape, g)


# ------------------------------------------------------------------- conv3d
_CONV_ATTRS = {"strides": [1, 1, 1], "paddings": [0, 0, 0], "dilations": [1, 1, 1], "groups": 1, "use_cudnn": True,
               "data_format": "AnyLayout"}


def _conv3d_infer(ctx: ShapeContext) -> None:
    xs, fs = ctx.shape("Input"), ctx.shape("Filter")
    groups = int(ctx.attr("groups") or 1)
    if len(xs) != 5 or len(fs) != 5 or fs[0] % groups or (xs[1] > 0 and xs[1] != fs[1] * groups):
        raise ctx.fail("Input must be [N, C, D, H, W] and Filter [M, C / groups, kd, kh, kw]")
    g = _geo(xs, tuple(fs[2:]), ctx.op.attrs)
    if 0 in g.out:
        raise ctx.fail("the filter does not fit the padded input")
    ctx.set("Output", (xs[0], fs[0]) + g.out, ctx.dtype("Input"))


def _cols(xp: Any, x: Any, g: _Geo3, groups: int) -> Any:
    n, c = x.shape[:2]
    return _windows(xp, _pad(xp, x, g), g).reshape(n, groups, c // groups * math.prod(g.k), math.prod(g.out))


@register_op("conv3d", _conv3d_infer, attrs=_CONV_ATTRS)
def conv3d(ctx: KernelContext) -> None:
    """3-D cross-correlation of an NCDHW input with [M, C/groups, kd, kh, kw] filters."""
    xp, x, w = ctx.xp, ctx.x("Input"), ctx.x("Filter")
    groups = int(ctx.attrs["groups"] or 1)
    g = _geo(x.shape, tuple(w.shape[2:]), ctx.attrs)
    out = w.reshape(groups, w.shape[0] // groups, -1) @ _cols(xp, x, g, groups)
    ctx.out("Output", out.reshape((x.shape[0], w.shape[0]) + g.out))


@register_grad("conv3d")
def conv3d_grad(ctx: KernelContext) -> None:
    xp, x, w, gy = ctx.xp, ctx.x("Input"), ctx.x("Filter"), ctx.x("Output@GRAD")
    groups = int(ctx.attrs["groups"] or 1)
    g = _geo(x.shape, tuple(w.shape[2:]), ctx.attrs)
    n, m = x.shape[0], w.shape[0]
    gy4 = gy.reshape(n, groups, m // groups, -1)
    if ctx.wants("Filter@GRAD"):
        ctx.out("Filter@GRAD", (gy4 @ _cols(xp, x, g, groups).swapaxes(-1, -2)).sum(0).reshape(w.shape))
    if ctx.wants("Input@GRAD"):
        dcols = w.reshape(groups, m // groups, -1).swapaxes(-1, -2) @ gy4
        ctx.out("Input@GRAD", _col2im(xp, dcols.reshape(x.shape[:2] + g.k + g.out), x.shape, g))


# --------------------------------------------------------- conv3d_transpose
def _transposed(x_shape: tuple, w_shape: tuple, attrs: dict) -> tuple[_Geo3, tuple]:
    """The geometry of the conv3d this is the input-gradient of, and the output shape."""
    k = tuple(w_shape[2:])
    s, p, d = _triple(attrs["strides"]), _triple(attrs["paddings"]), _triple(attrs["dilations"])
    size = tuple((n - 1) * si - 2 * pi + di * (ki - 1) + 1 if n > 0 else -1
                 for n, ki, si, pi, di in zip(x_shape[2:], k, s, p, d))
    return _Geo3(k, s, p, d, tuple(x_shape[2:])), size


def _conv3d_t_infer(ctx: ShapeContext) -> None:
    xs, fs = ctx.shape("Input"), ctx.shape("Filter")
    groups = int(ctx.attr("groups") or 1)
    if len(xs) != 5 or len(fs) != 5 or (xs[1] > 0 and xs[1] != fs[0]):
        raise ctx.fail("Input must be [N, C, D, H, W] and Filter [C, M / groups, kd, kh, kw]")
    _, size = _transposed(xs, fs, ctx.op.attrs)
    ctx.set("Output", (xs[0], fs[1] * groups) + size, ctx.dtype("Input"))


@register_op("conv3d_transpose", _conv3d_t_infer, attrs=dict(_CONV_ATTRS, output_size=[]))
def conv3d_transpose(ctx: KernelContext) -> None:
    """The transpose (gradient) of conv3d run forwards."""
    xp, x, w = ctx.xp, ctx.x("Input"), ctx.x("Filter")
    groups = int(ctx.attrs["groups"] or 1)
    g, size = _transposed(x.shape, w.shape, ctx.attrs)
    n, c = x.shape[:2]
    m = w.shape[1] * groups
    cols = w.reshape(groups, c // groups, -1).swapaxes(-1, -2) @ x.reshape(n, groups, c // groups, -1)
    ctx.out("Output", _col2im(xp, cols.reshape((n, m) + g.k + g.out), (n, m) + size, g))


@register_grad("conv3d_transpose")
def conv3d_transpose_grad(ctx: KernelContext) -> None:
    xp, x, w, gy = ctx.xp, ctx.x("Input"), ctx.x("Filter"), ctx.x("Output@GRAD")
    groups = int(ctx.attrs["groups"] or 1)
    g, _ = _transposed(x.shape, w.shape, ctx.attrs)
    n, c = x.shape[:2]
    cols = _cols(xp, gy, g, groups)
    if ctx.wants("Input@GRAD"):
        ctx.out("Input@GRAD", (w.reshape(groups, c // groups, -1) @ cols).reshape(x.shape))
    if ctx.wants("Filter@GRAD"):
        x4 = x.reshape(n, groups, c // groups, -1)
        ctx.out("Filter@GRAD", (x4 @ cols.swapaxes(-1, -2)).sum(0).reshape(w.shape))


# ------------------------------------------------------------------- pool3d
_POOL_ATTRS = {"pooling_type": "max", "ksize": [1, 1, 1], "strides": [1, 1, 1], "paddings": [0, 0, 0],
               "global_pooling": False, "exclusive": True, "ceil_mode": False, "adaptive": False,
               "use_cudnn": True, "data_format": "AnyLayout"}


def _pool_geo(shape: tuple, attrs: dict) -> _Geo3:
    if attrs["global_pooling"]:
        return _Geo3(tuple(shape[2:]), (1, 1, 1), (0, 0, 0), (1, 1, 1), (1, 1, 1))
    return _geo(shape, _triple(attrs["ksize"]), dict(attrs, dilations=[1, 1, 1]), bool(attrs["ceil_mode"]))


def _pool3d_infer(ctx: ShapeContext) -> None:
    xs = ctx.shape("X")
    if len(xs) != 5 or ctx.attr("pooling_type") not in ("max", "avg") or ctx.attr("adaptive"):
        raise ctx.fail("X must be [N, C, D, H, W] and pooling_type 'max' or 'avg'")
    g = _pool_geo(xs, ctx.op.attrs)
    if 0 in g.out:
        raise ctx.fail("the pool window does not fit the padded input")
    ctx.set("Out", (xs[0], xs[1]) + g.out, ctx.dtype("X"))


def _divisor(xp: Any, x: Any, g: _Geo3, exclusive: bool) -> Any:
    if not exclusive:
        return math.prod(g.k)
    counts = [np.maximum(np.minimum(np.arange(o) * s - p + k, n) - np.maximum(np.arange(o) * s - p, 0), 0)
              for n, k, s, p, o in zip(x.shape[2:], g.k, g.s, g.p, g.out)]
    cells = counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :]
    return xp.asarray(np.maximum(cells, 1).astype(x.dtype))


def _pool_windows(ctx: KernelContext, x: Any, g: _Geo3, is_max: bool) -> Any:
    value = float(np.finfo(x.dtype).min) if is_max else 0.0  # padding never wins a max
    return _windows(ctx.xp, _pad(ctx.xp, x, g, value), g)


@register_op("pool3d", _pool3d_infer, attrs=_POOL_ATTRS)
def pool3d(ctx: KernelContext) -> None:
    """Max or average over (kd, kh, kw) windows (exclusive: padding is not averaged)."""
    x = ctx.x("X")
    is_max = ctx.attrs["pooling_type"] == "max"
    g = _pool_geo(x.shape, ctx.attrs)
    win = _pool_windows(ctx, x, g, is_max)
    out = win.max(axis=(2, 3, 4)) if is_max else win.sum(axis=(2, 3, 4)) / _divisor(ctx.xp, x, g,
                                                                                    ctx.attrs["exclusive"])
    ctx.out("Out", out.astype(x.dtype, copy=False))


@register_grad("pool3d")
def pool3d_grad(ctx: KernelContext) -> None:
    xp, x, gy = ctx.xp, ctx.x("X"), ctx.x("Out@GRAD")
    is_max = ctx.attrs["pooling_type"] == "max"
    g = _pool_geo(x.shape, ctx.attrs)
    win = _pool_windows(ctx, x, g, is_max)
    if is_max:  # the first maximum of each window gets the gradient
        flat = win.reshape(win.shape[:2] + (-1,) + g.out)
        first = flat.argmax(axis=2)
        hit = xp.arange(flat.shape[2]).reshape((1, 1, -1, 1, 1, 1)) == first[:, :, None]
        cols = (hit * gy[:, :, None]).reshape(win.shape)
    else:
        share = gy / _divisor(xp, x, g, ctx.attrs["exclusive"])
        cols = xp.broadcast_to(share[:, :, None, None, None], win.shape)
    ctx.out("X@GRAD", _col2im(xp, cols, x.shape, g).astype(x.dtype, copy=False))


# ---------------------------------------------------------- adaptive_pool3d
def _adaptive3_infer(ctx: ShapeContext) -> None:
    s, k = ctx.shape("X"), _triple(ctx.attr("ksize"))
    if len(s) != 5 or min(k) < 1 or ctx.attr("pooling_type") not in ("max", "avg"):
        raise ctx.fail("X must be [N, C, D, H, W], pool_size positive and pool_type 'max' or 'avg'")
    ctx.set("Out", (s[0], s[1]) + k, ctx.dtype("X"), 0)


def _adaptive_cells(shape: tuple, k: tuple):
    """(output index, input box) of every output cell: bin i covers [i*n//k, ceil((i+1)*n/k))."""
    bins = [[(i * n // o, -(-(i + 1) * n // o)) for i in range(o)] for n, o in zip(shape[2:], k)]
    for idx in product(*(range(o) for o in k)):
        yield idx, tuple(slice(*bins[a][i]) for a, i in enumerate(idx))


@register_op("adaptive_pool3d", _adaptive3_infer, attrs={"ksize": [1, 1, 1], "pooling_type": "max"})
def adaptive_pool3d(ctx: KernelContext) -> None:
    """Max or average over a fixed grid of bins tiling D, H and W."""
    x = ctx.x("X")
    k = _triple(ctx.attrs["ksize"])
    out = ctx.xp.empty(x.shape[:2] + k, dtype=x.dtype)
    reduce = "max" if ctx.attrs["pooling_type"] == "max" else "mean"
    for idx, box in _adaptive_cells(x.shape, k):  # one vectorized reduction per output cell
        out[(slice(None), slice(None)) + idx] = getattr(x[(slice(None), slice(None)) + box], reduce)(axis=(2, 3, 4))
    ctx.out("Out", out)


@register_grad("adaptive_pool3d")
def adaptive_pool3d_grad(ctx: KernelContext) -> None:
    xp, x, g = ctx.xp, ctx.x("X"), ctx.x("Out@GRAD")
    k = _triple(ctx.attrs["ksize"])
    dx = xp.zeros_like(x)
    for idx, box in _adaptive_cells(x.shape, k):
        sel = (slice(None), slice(None)) + box
        gi = g[(slice(None), slice(None)) + idx][:, :, None, None, None]
        win = x[sel]
        if ctx.attrs["pooling_type"] == "avg":
            dx[sel] += gi / math.prod(win.shape[2:])
            continue
        flat = win.reshape(win.shape[:2] + (-1,))
        first = flat.argmax(axis=2)[:, :, None] == xp.arange(flat.shape[2])[None, None, :]
        dx[sel] += first.reshape(win.shape) * gi
    ctx.out("X@GRAD", dx)
