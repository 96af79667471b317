"""Spatial transformer pieces and feature statistics: ``affine_grid``, ``grid_sampler``
(bilinear, zero outside the image, corners aligned as in fluid 1.4), ``fsp_matrix``,
``space_to_depth``, ``temporal_shift`` and ``similarity_focus``."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import scatter_add, to_numpy
from ..registry import KernelContext, ShapeContext, register_grad, register_op


# -------------------------------------------------------------- affine_grid
def _affine_grid_infer(ctx: ShapeContext) -> None:
    t, shape = ctx.shape("Theta"), [int(v) for v in ctx.attr("output_shape")]
    if len(t) != 3 or tuple(t[1:]) != (2, 3) or len(shape) != 4:
        raise ctx.fail("Theta must be [N, 2, 3] and output_shape [N, C, H, W]")
    ctx.set("Output", (t[0], shape[2], shape[3], 2), ctx.dtype("Theta"), 0)


def _base_grid(xp: Any, h: int, w: int, dtype: Any) -> Any:
    """[H*W, 3] rows (x, y, 1) over [-1, 1] x [-1, 1], corners included."""
    ys, xs = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    return xp.asarray(np.stack([xs.ravel(), ys.ravel(), np.ones(h * w)], axis=1).astype(dtype))


@register_op("affine_grid", _affine_grid_infer, attrs={"output_shape": []})
def affine_grid(ctx: KernelContext) -> None:
    """Output[n, h, w] = Theta[n] . (x_w, y_h, 1): where each output pixel samples from."""
    theta = ctx.x("Theta")
    _, _, h, w = (int(v) for v in ctx.attrs["output_shape"])
    base = _base_grid(ctx.xp, h, w, theta.dtype)
    ctx.out("Output", (base[None] @ theta.swapaxes(1, 2)).reshape(theta.shape[0], h, w, 2))


@register_grad("affine_grid")
def affine_grid_grad(ctx: KernelContext) -> None:
    theta, g = ctx.x("Theta"), ctx.x("Output@GRAD")
    _, _, h, w = (int(v) for v in ctx.attrs["output_shape"])
    base = _base_grid(ctx.xp, h, w, theta.dtype)
    ctx.out("Theta@GRAD", g.reshape(theta.shape[0], h * w, 2).swapaxes(1, 2) @ base)


# ------------------------------------------------------------- grid_sampler
def _grid_sampler_infer(ctx: ShapeContext) -> None:
    x, grid = ctx.shape("X"), ctx.shape("Grid")
    if len(x) != 4 or len(grid) != 4 or grid[3] != 2:
        raise ctx.fail("X must be [N, C, H, W] and Grid [N, H_out, W_out, 2]")
    ctx.set("Output", (x[0], x[1], grid[1], grid[2]), ctx.dtype("X"), 0)


class _Corners:
    """The four neighbours of every sample point: integer coordinates, weights, validity."""

    def __init__(self, xp: Any, grid: Any, h: int, w: int) -> None:
        self.fx = (grid[..., 0] + 1) * (w - 1) / 2  # corners aligned: -1 and 1 hit the edge pixels
        self.fy = (grid[..., 1] + 1) * (h - 1) / 2
        self.x0, self.y0 = xp.floor(self.fx).astype(np.int64), xp.floor(self.fy).astype(np.int64)
        self.h, self.w = h, w

    def each(self, xp: Any):
        """(dx, dy, x index, y index, valid mask, weight) for the four corners."""
        for dx in (0, 1):
            for dy in (0, 1):
                xi, yi = self.x0 + dx, self.y0 + dy
                valid = (xi >= 0) & (xi < self.w) & (yi >= 0) & (yi < self.h)
                wx = self.fx - self.x0 if dx else 1 - (self.fx - self.x0)
                wy = self.fy - self.y0 if dy else 1 - (self.fy - self.y0)
                yield dx, dy, xp.clip(xi, 0, self.w - 1), xp.clip(yi, 0, self.h - 1), valid, wx, wy


@register_op("grid_sampler", _grid_sampler_infer)
def grid_sampler(ctx: KernelContext) -> None:
    """Output[n, c, i, j] = X[n, c] bilinearly sampled at Grid[n, i, j] (zero outside X)."""
    xp, x, grid = ctx.xp, ctx.x("X"), ctx.x("Grid")
    n, _, h, w = x.shape
    xl = x.transpose(0, 2, 3, 1)  # [N, H, W, C]: corner gathers pick whole channel vectors
    nidx = xp.arange(n)[:, None, None]
    out = 0
    for _, _, xi, yi, valid, wx, wy in _Corners(xp, grid, h, w).each(xp):
        out = out + xl[nidx, yi, xi] * (wx * wy * valid)[..., None]
    ctx.out("Output", xp.ascontiguousarray(out.transpose(0, 3, 1, 2)).astype(x.dtype, copy=False))


@register_grad("grid_sampler")
def grid_sampler_grad(ctx: KernelContext) -> None:
    xp, x, grid = ctx.xp, ctx.x("X"), ctx.x("Grid")
    n, c, h, w = x.shape
    g = ctx.x("Output@GRAD").transpose(0, 2, 3, 1)  # [N, Ho, Wo, C]
    xl = x.transpose(0, 2, 3, 1)
    nidx = xp.arange(n)[:, None, None]
    dx = xp.zeros((n * h * w, c), dtype=x.dtype)
    dgx = xp.zeros(grid.shape[:3], dtype=grid.dtype)
    dgy = xp.zeros(grid.shape[:3], dtype=grid.dtype)
    for cx, cy, xi, yi, valid, wx, wy in _Corners(xp, grid, h, w).each(xp):
        m = valid.astype(x.dtype)
        if ctx.wants("X@GRAD"):
            flat = ((nidx * h + yi) * w + xi).reshape(-1)
            scatter_add(dx, flat, (g * (wx * wy * m)[..., None]).reshape(-1, c))
        v = (xl[nidx, yi, xi] * g).sum(-1) * m  # corner value times upstream, summed over channels
        dgx = dgx + v * wy * (1 if cx else -1)
        dgy = dgy + v * wx * (1 if cy else -1)
    if ctx.wants("X@GRAD"):
        ctx.out("X@GRAD", dx.reshape(n, h, w, c).transpose(0, 3, 1, 2).copy())
    if ctx.wants("Grid@GRAD"):
        ctx.out("Grid@GRAD", xp.stack([dgx * (w - 1) / 2, dgy * (h - 1) / 2], axis=-1))


# --------------------------------------------------------------- fsp_matrix
def _fsp_infer(ctx: ShapeContext) -> None:
    x, y = ctx.shape("X"), ctx.shape("Y")
    if len(x) != 4 or len(y) != 4 or tuple(x[2:]) != tuple(y[2:]):
        raise ctx.fail("X and Y must be [N, C, H, W] with the same H and W")
    ctx.set("Out", (x[0], x[1], y[1]), ctx.dtype("X"), 0)


def _flat(a: Any) -> Any:
    return a.reshape(a.shape[0], a.shape[1], -1)


@register_op("fsp_matrix", _fsp_infer)
def fsp_matrix(ctx: KernelContext) -> None:
    """Out[n] = X[n] . Y[n]^T / (H * W) over the flattened spatial positions."""
    x, y = ctx.x("X"), ctx.x("Y")
    ctx.out("Out", _flat(x) @ _flat(y).swapaxes(1, 2) / (x.shape[2] * x.shape[3]))


@register_grad("fsp_matrix")
def fsp_matrix_grad(ctx: KernelContext) -> None:
    x, y, g = ctx.x("X"), ctx.x("Y"), ctx.x("Out@GRAD")
    hw = x.shape[2] * x.shape[3]
    if ctx.wants("X@GRAD"):
        ctx.out("X@GRAD", (g @ _flat(y) / hw).reshape(x.shape))
    if ctx.wants("Y@GRAD"):
        ctx.out("Y@GRAD", (g.swapaxes(1, 2) @ _flat(x) / hw).reshape(y.shape))


# ----------------------------------------------------------- space_to_depth
def _s2d_infer(ctx: ShapeContext) -> None:
    s, b = ctx.shape("X"), int(ctx.attr("blocksize"))
    if len(s) != 4 or b < 1 or any(d > 0 and d % m for d, m in ((s[1], b * b), (s[2], b), (s[3], b))):
        raise ctx.fail(f"X must be [N, C, H, W] with C divisible by blocksize^2 and H, W by blocksize={b}")
    ctx.set("Out", (s[0], s[1] * b * b if s[1] > 0 else -1, s[2] // b if s[2] > 0 else -1,
                    s[3] // b if s[3] > 0 else -1), ctx.dtype("X"), 0)


def _s2d_perm(shape: tuple, b: int) -> np.ndarray:
    """fluid's (darknet "reorg") layout: where each input element lands in the output buffer."""
    n, c, h, w = shape
    oc = c // (b * b)
    bb, k, j, i = np.meshgrid(np.arange(n), np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    off = k // oc
    w2, h2 = i * b + off % b, j * b + off // b
    return (w2 + w * b * (h2 + h * b * (k % oc + oc * bb))).reshape(-1)


@register_op("space_to_depth", _s2d_infer, attrs={"blocksize": 1})
def space_to_depth(ctx: KernelContext) -> None:
    """Rearrange blocksize x blocksize spatial blocks into channels (fluid's element order)."""
    x, b = ctx.x("X"), int(ctx.attrs["blocksize"])
    out = ctx.xp.empty(x.size, dtype=x.dtype)
    out[ctx.xp.asarray(_s2d_perm(x.shape, b))] = x.reshape(-1)
    n, c, h, w = x.shape
    ctx.out("Out", out.reshape(n, c * b * b, h // b, w // b))


@register_grad("space_to_depth")
def space_to_depth_grad(ctx: KernelContext) -> None:
    x, b = ctx.x("X"), int(ctx.attrs["blocksize"])
    g = ctx.x("Out@GRAD").reshape(-1)
    ctx.out("X@GRAD", g[ctx.xp.asarray(_s2d_perm(x.shape, b))].reshape(x.shape))


# ------------------------------------------------------------ temporal_shift
def _tshift_infer(ctx: ShapeContext) -> None:
    s, t = ctx.shape("X"), int(ctx.attr("seg_num"))
    if len(s) != 4 or t < 1 or (s[0] > 0 and s[0] % t) or not 0 < float(ctx.attr("shift_ratio")) <= 0.5:
        raise ctx.fail(f"X must be [N * seg_num, C, H, W] (seg_num={t}) and shift_ratio in (0, 0.5]")
    ctx.share("X", "Out")


def _tshift(xp: Any, x: Any, t: int, ratio: float, back: bool) -> Any:
    """Channels [0, c1) read the previous frame, [c1, c2) the next one (zeros past the ends);
    ``back`` applies the transpose (the gradient)."""
    nt, c, h, w = x.shape
    c1, c2 = int(c * ratio), int(c * 2 * ratio)
    v = x.reshape(nt // t, t, c, h, w)
    out = xp.zeros_like(v)
    prev, nxt = (slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))
    a, b = (nxt, prev) if not back else (prev, nxt)
    out[:, a[1], :c1], out[:, b[1], c1:c2] = v[:, a[0], :c1], v[:, b[0], c1:c2]
    out[:, :, c2:] = v[:, :, c2:]
    return out.reshape(x.shape)


@register_op("temporal_shift", _tshift_infer, attrs={"seg_num": 1, "shift_ratio": 0.25})
def temporal_shift(ctx: KernelContext) -> None:
    """Shift part of the channels one frame back and part one frame forward (TSM)."""
    a = ctx.attrs
    ctx.out("Out", _tshift(ctx.xp, ctx.x("X"), int(a["seg_num"]), float(a["shift_ratio"]), False))


@register_grad("temporal_shift")
def temporal_shift_grad(ctx: KernelContext) -> None:
    a = ctx.attrs
    ctx.out("X@GRAD", _tshift(ctx.xp, ctx.x("Out@GRAD"), int(a["seg_num"]), float(a["shift_ratio"]), True))


# ----------------------------------------------------------- similarity_focus
def _focus_infer(ctx: ShapeContext) -> None:
    s, axis, idx = ctx.shape("X"), int(ctx.attr("axis")), [int(i) for i in ctx.attr("indexes")]
    if len(s) != 4 or axis not in (1, 2, 3) or not idx or (s[axis] > 0 and max(idx) >= s[axis]) or min(idx) < 0:
        raise ctx.fail(f"X must be 4-D, axis 1, 2 or 3 and indexes non-empty within dim {axis}, got {idx}")
    ctx.share("X", "Out", lod=False)


def _greedy_diagonal(m: np.ndarray) -> list[tuple[int, int]]:
    """Largest entries first, each taking a row and a column no earlier pick took."""
    rows, cols = np.unravel_index(np.argsort(-m, axis=None, kind="stable"), m.shape)
    used_r, used_c, picks = set(), set(), []
    for r, c in zip(rows.tolist(), cols.tolist()):  # a greedy matching: each pick depends on the previous
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        picks.append((r, c))
        if len(picks) == min(m.shape):
            break
    return picks


@register_op("similarity_focus", _focus_infer, no_grad_inputs=("X",), attrs={"axis": 1, "indexes": [0]})
def similarity_focus(ctx: KernelContext) -> None:
    """A 0/1 mask: for each chosen channel (``indexes`` along ``axis``) of each example, the
    greedy row/column-exclusive maxima of that 2-D slice, marked across the whole axis."""
    x = to_numpy(ctx.x("X"))
    axis = int(ctx.attrs["axis"])
    xm = np.moveaxis(x, axis, 1)  # [N, axis, A, B]
    out = np.zeros_like(xm)
    for i in range(xm.shape[0]):
        for index in ctx.attrs["indexes"]:
            for r, c in _greedy_diagonal(xm[i, int(index)]):
                out[i, :, r, c] = 1
    ctx.out("Out", ctx.xp.asarray(np.ascontiguousarray(np.moveaxis(out, 1, axis))))
