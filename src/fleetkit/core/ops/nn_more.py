"""``range``, ``linspace``, ``diag``, ``pad_constant_like``, ``crop``,
``add_position_encoding``, ``bilinear_tensor_product``, ``affine_channel``,
``group_norm``, and the single-step recurrent units ``gru_unit`` and ``lstm_unit``."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from ..backend import to_numpy
from ..registry import KernelContext, ShapeContext, register_grad, register_op
from .rnn import ACTS, _gru_weights


def _scalar(ctx: KernelContext, slot: str) -> float:
    return float(np.asarray(to_numpy(ctx.x(slot))).reshape(-1)[0])


# ------------------------------------------------------------ range / linspace
@register_op("range", lambda ctx: ctx.set("Out", (-1,), ctx.dtype("Start"), 0), no_grad_inputs=("Start", "End", "Step"))
def range_op(ctx: KernelContext) -> None:
    """[Start, End) in steps of Step."""
    start, end, step = (_scalar(ctx, s) for s in ("Start", "End", "Step"))
    if step == 0 or (end - start) / step > 1e8:
        raise InvalidArgumentError(f"op 'range': step {step} from {start} to {end} is zero or makes too many values")
    ctx.out("Out", ctx.xp.arange(start, end, step).astype(ctx.x("Start").dtype))


@register_op("linspace", lambda ctx: ctx.set("Out", (-1,), ctx.dtype("Start"), 0),
             no_grad_inputs=("Start", "Stop", "Num"))
def linspace(ctx: KernelContext) -> None:
    """Num evenly spaced values from Start to Stop (both included)."""
    num = int(_scalar(ctx, "Num"))
    if not 0 < num <= 10 ** 8:
        raise InvalidArgumentError(f"op 'linspace': Num must be in [1, 1e8], got {num}")
    ctx.out("Out", ctx.xp.linspace(_scalar(ctx, "Start"), _scalar(ctx, "Stop"), num).astype(ctx.x("Start").dtype))


# ---------------------------------------------------------------------- diag
@register_op("diag", lambda ctx: ctx.set("Out", (ctx.shape("Diagonal")[0],) * 2, ctx.dtype("Diagonal"), 0))
def diag(ctx: KernelContext) -> None:
    """A square matrix with Diagonal on its diagonal."""
    ctx.out("Out", ctx.xp.diag(ctx.x("Diagonal").reshape(-1)))


@register_grad("diag")
def diag_grad(ctx: KernelContext) -> None:
    ctx.out("Diagonal@GRAD", ctx.xp.diagonal(ctx.x("Out@GRAD")).reshape(ctx.x("Diagonal").shape).copy())


# -------------------------------------------------------- pad_constant_like
def _pad_like_infer(ctx: ShapeContext) -> None:
    xs, ys = ctx.shape("X"), ctx.shape("Y")
    if len(xs) != len(ys) or any(a > 0 and b > a for a, b in zip(xs, ys)):
        raise ctx.fail("Y must have X's rank and no dim larger than X's")
    ctx.set("Out", xs, ctx.dtype("Y"), 0)


@register_op("pad_constant_like", _pad_like_infer, no_grad_inputs=("X",), attrs={"pad_value": 0.0})
def pad_constant_like(ctx: KernelContext) -> None:
    """Y padded at the end of every dim to X's shape with pad_value."""
    x, y = ctx.x("X"), ctx.x("Y")
    out = ctx.xp.full(x.shape, ctx.attrs["pad_value"], dtype=y.dtype)
    out[tuple(slice(0, d) for d in y.shape)] = y
    ctx.out("Out", out)


@register_grad("pad_constant_like")
def pad_constant_like_grad(ctx: KernelContext) -> None:
    y = ctx.x("Y")
    ctx.out("Y@GRAD", ctx.x("Out@GRAD")[tuple(slice(0, d) for d in y.shape)].copy())


# ---------------------------------------------------------------------- crop
def _crop_infer(ctx: ShapeContext) -> None:
    xs = ctx.shape("X")
    shape = list(ctx.shape("Y")) if ctx.has("Y") else [int(v) for v in ctx.attr("shape")]
    offs = [int(v) for v in ctx.attr("offsets")] or [0] * len(xs)
    if len(shape) != len(xs) or len(offs) != len(xs):
        raise ctx.fail(f"shape {shape} and offsets {offs} must have X's rank {len(xs)}")
    ctx.set("Out", shape, ctx.dtype("X"), 0)


def _crop_box(ctx: KernelContext, x: Any) -> tuple:
    shape = list(ctx.x("Y").shape) if ctx.has("Y") else [int(v) for v in ctx.attrs["shape"]]
    shape = [x.shape[i] if d == -1 else d for i, d in enumerate(shape)]
    offs = [int(v) for v in ctx.attrs["offsets"]] or [0] * x.ndim
    if any(o < 0 or o + d > n for o, d, n in zip(offs, shape, x.shape)):
        raise InvalidArgumentError(f"op 'crop': a {shape} box at {offs} does not fit X '{ctx.ins['X'][0]}' "
                                   f"{list(x.shape)}")
    return tuple(slice(o, o + d) for o, d in zip(offs, shape))


@register_op("crop", _crop_infer, no_grad_inputs=("Y",), attrs={"shape": [], "offsets": []})
def crop(ctx: KernelContext) -> None:
    """The box of X at ``offsets`` sized like Y (or ``shape``)."""
    x = ctx.x("X")
    ctx.out("Out", x[_crop_box(ctx, x)].copy())


@register_grad("crop")
def crop_grad(ctx: KernelContext) -> None:
    x = ctx.x("X")
    dx = ctx.xp.zeros_like(x)
    dx[_crop_box(ctx, x)] = ctx.x("Out@GRAD")
    ctx.out("X@GRAD", dx)


# ----------------------------------------------------- add_position_encoding
def _pe_infer(ctx: ShapeContext) -> None:
    s = ctx.shape("X")
    if len(s) not in (2, 3) or (s[-1] > 0 and s[-1] % 2):
        raise ctx.fail(f"X must be [N, L, D] (or a [T, D] LoD tensor) with an even D, got {list(s)}")
    ctx.share("X", "Out")


def _positions(ctx: KernelContext, x: Any) -> np.ndarray:
    if x.ndim == 3:
        return np.tile(np.arange(x.shape[1]), x.shape[0])
    off = np.asarray(ctx.lod("X")[-1]) if ctx.lod("X") else np.array([0, x.shape[0]])
    return np.arange(x.shape[0]) - np.repeat(off[:-1], np.diff(off))


@register_op("add_position_encoding", _pe_infer, attrs={"alpha": 1.0, "beta": 1.0})
def add_position_encoding(ctx: KernelContext) -> None:
    """alpha * X + beta * [sin | cos](pos / 10000^(k / (D/2 - 1))), the sinusoid encoding."""
    x = ctx.x("X")
    half = x.shape[-1] // 2
    pos = _positions(ctx, x).astype(np.float64)[:, None]
    k = np.arange(half, dtype=np.float64)[None, :]
    val = pos / (10000.0 ** (k / (half - 1)) if half > 1 else 10000.0)
    pe = np.concatenate([np.sin(val), np.cos(val)], axis=1).reshape(x.shape)
    a = ctx.attrs
    ctx.out("Out", (a["alpha"] * x + a["beta"] * ctx.xp.asarray(pe)).astype(x.dtype, copy=False), ctx.lod("X"))


@register_grad("add_position_encoding")
def add_position_encoding_grad(ctx: KernelContext) -> None:
    g = ctx.x("Out@GRAD")
    ctx.out("X@GRAD", (g * ctx.attrs["alpha"]).astype(g.dtype, copy=False), ctx.lod("X"))


# -------------------------------------------------- bilinear_tensor_product
def _btp_infer(ctx: ShapeContext) -> None:
    x, y, w = ctx.shape("X"), ctx.shape("Y"), ctx.shape("Weight")
    if len(w) != 3 or (x[1] > 0 and w[1] != x[1]) or (y[1] > 0 and w[2] != y[1]):
        raise ctx.fail("Weight must be [size, dim(X), dim(Y)]")
    ctx.set("Out", (x[0], w[0]), ctx.dtype("X"), 0)


@register_op("bilinear_tensor_product", _btp_infer)
def bilinear_tensor_product(ctx: KernelContext) -> None:
    """Out[n, k] = X[n] . Weight[k] . Y[n] + Bias[k]."""
    out = ctx.xp.einsum("ni,kij,nj->nk", ctx.x("X"), ctx.x("Weight"), ctx.x("Y"))
    if ctx.has("Bias"):
        out = out + ctx.x("Bias").reshape(1, -1)
    ctx.out("Out", out)


@register_grad("bilinear_tensor_product")
def bilinear_tensor_product_grad(ctx: KernelContext) -> None:
    xp, x, y, w, g = ctx.xp, ctx.x("X"), ctx.x("Y"), ctx.x("Weight"), ctx.x("Out@GRAD")
    if ctx.wants("X@GRAD"):
        ctx.out("X@GRAD", xp.einsum("nk,kij,nj->ni", g, w, y))
    if ctx.wants("Y@GRAD"):
        ctx.out("Y@GRAD", xp.einsum("nk,kij,ni->nj", g, w, x))
    if ctx.wants("Weight@GRAD"):
        ctx.out("Weight@GRAD", xp.einsum("nk,ni,nj->kij", g, x, y))
    if ctx.wants("Bias@GRAD"):
        ctx.out("Bias@GRAD", g.sum(0).reshape(ctx.x("Bias").shape))


# ------------------------------------------------------------ affine_channel
def _channel_view(x: Any, layout: str) -> tuple[int, ...]:
    """The shape that broadcasts a per-channel [C] vector against x."""
    axis = 1 if layout == "NCHW" else x.ndim - 1
    return tuple(-1 if i == axis else 1 for i in range(x.ndim))


@register_op("affine_channel", lambda ctx: ctx.share("X", "Out"), attrs={"data_layout": "NCHW"})
def affine_channel(ctx: KernelContext) -> None:
    """X * Scale[c] + Bias[c] per channel."""
    x = ctx.x("X")
    v = _channel_view(x, ctx.attrs["data_layout"])
    ctx.out("Out", x * ctx.x("Scale").reshape(v) + ctx.x("Bias").reshape(v))


@register_grad("affine_channel")
def affine_channel_grad(ctx: KernelContext) -> None:
    x, g = ctx.x("X"), ctx.x("Out@GRAD")
    v = _channel_view(x, ctx.attrs["data_layout"])
    axes = tuple(i for i, d in enumerate(v) if d == 1)
    if ctx.wants("X@GRAD"):
        ctx.out("X@GRAD", g * ctx.x("Scale").reshape(v))
    if ctx.wants("Scale@GRAD"):
        ctx.out("Scale@GRAD", (g * x).sum(axis=axes).reshape(ctx.x("Scale").shape))
    if ctx.wants("Bias@GRAD"):
        ctx.out("Bias@GRAD", g.sum(axis=axes).reshape(ctx.x("Bias").shape))


# ---------------------------------------------------------------- group_norm
def _group_norm_infer(ctx: ShapeContext) -> None:
    s, k = ctx.shape("X"), int(ctx.attr("groups"))
    if len(s) < 2 or k < 1 or (s[1] > 0 and s[1] % k):
        raise ctx.fail(f"X must be [N, C, ...] with C divisible by groups={k}")
    ctx.share("X", "Y")
    ctx.set("Mean", (s[0], k), ctx.dtype("X"), 0)
    ctx.set("Variance", (s[0], k), ctx.dtype("X"), 0)


def _gn(ctx: KernelContext) -> tuple[Any, Any, Any, Any]:
    x, k = ctx.x("X"), int(ctx.attrs["groups"])
    rows = x.reshape(x.shape[0] * k, -1)
    mean = rows.mean(1, keepdims=True)
    var = ((rows - mean) ** 2).mean(1, keepdims=True)
    inv = 1.0 / ctx.xp.sqrt(var + ctx.attrs["epsilon"])
    return ((rows - mean) * inv).reshape(x.shape), mean, var, inv


@register_op("group_norm", _group_norm_infer, grad_outputs=("Y",), attrs={"groups": 1, "epsilon": 1e-5})
def group_norm(ctx: KernelContext) -> None:
    """Normalize each group of C/groups channels per sample, then a per-channel scale and bias."""
    x = ctx.x("X")
    xhat, mean, var, _ = _gn(ctx)
    v = _channel_view(x, "NCHW")
    y = xhat * ctx.x("Scale").reshape(v) if ctx.has("Scale") else xhat
    y = y + ctx.x("Bias").reshape(v) if ctx.has("Bias") else y
    ctx.out("Y", y)
    ctx.out("Mean", mean.reshape(x.shape[0], -1))
    ctx.out("Variance", var.reshape(x.shape[0], -1))


@register_grad("group_norm")
def group_norm_grad(ctx: KernelContext) -> None:
    x, g = ctx.x("X"), ctx.x("Y@GRAD")
    xhat, _, _, inv = _gn(ctx)
    v = _channel_view(x, "NCHW")
    axes = tuple(i for i, d in enumerate(v) if d == 1)
    if ctx.wants("Scale@GRAD"):
        ctx.out("Scale@GRAD", (g * xhat).sum(axis=axes).reshape(ctx.x("Scale").shape))
    if ctx.wants("Bias@GRAD"):
        ctx.out("Bias@GRAD", g.sum(axis=axes).reshape(ctx.x("Bias").shape))
    if ctx.wants("X@GRAD"):
        dxhat = g * ctx.x("Scale").reshape(v) if ctx.has("Scale") else g
        rows, xr = dxhat.reshape(inv.shape[0], -1), xhat.reshape(inv.shape[0], -1)
        dx = inv * (rows - rows.mean(1, keepdims=True) - xr * (rows * xr).mean(1, keepdims=True))
        ctx.out("X@GRAD", dx.reshape(x.shape))


# ------------------------------------------------------------------ gru_unit
_GRU_ACTS = {0: "identity", 1: "sigmoid", 2: "tanh", 3: "relu"}


def _act_of(v: Any) -> str:
    return _GRU_ACTS[v] if isinstance(v, (int, np.integer)) else str(v)


def _gru_unit_infer(ctx: ShapeContext) -> None:
    x, h, w = ctx.shape("Input"), ctx.shape("HiddenPrev"), ctx.shape("Weight")
    d = w[0]
    if len(w) != 2 or w[1] != 3 * d or (x[1] > 0 and x[1] != 3 * d) or (h[1] > 0 and h[1] != d):
        raise ctx.fail(f"need Input [N, 3D], HiddenPrev [N, D] and Weight [D, 3D], got Weight {list(w)}")
    ctx.set("Gate", (x[0], 3 * d), ctx.dtype("Input"), 0)
    ctx.set("ResetHiddenPrev", (x[0], d), ctx.dtype("Input"), 0)
    ctx.set("Hidden", (x[0], d), ctx.dtype("Input"), 0)


def _gru_unit_parts(ctx: KernelContext) -> tuple[Any, ...]:
    xp, x, hp, w = ctx.xp, ctx.x("Input"), ctx.x("HiddenPrev"), ctx.x("Weight")
    d = w.shape[0]
    w_ur, w_c = _gru_weights(w)
    b = ctx.x("Bias").reshape(-1) if ctx.has("Bias") else xp.zeros(3 * d, x.dtype)
    gate = ACTS[_act_of(ctx.attrs["gate_activation"])][0]
    cand = ACTS[_act_of(ctx.attrs["activation"])][0]
    ur = gate(xp, x[:, :2 * d] + hp @ w_ur + b[:2 * d])
    u, r = ur[:, :d], ur[:, d:]
    rh = r * hp
    c = cand(xp, x[:, 2 * d:] + rh @ w_c + b[2 * d:])
    return hp, w_ur, w_c, u, r, rh, c


@register_op("gru_unit", _gru_unit_infer, grad_outputs=("Hidden",),
             attrs={"activation": "tanh", "gate_activation": "sigmoid", "origin_mode": False})
def gru_unit(ctx: KernelContext) -> None:
    """One GRU step from HiddenPrev (dynamic_gru's recurrence and weight layout)."""
    hp, _, _, u, r, rh, c = _gru_unit_parts(ctx)
    origin = bool(ctx.attrs["origin_mode"])
    ctx.out("Hidden", u * hp + (1 - u) * c if origin else (1 - u) * hp + u * c)
    ctx.out("Gate", ctx.xp.concatenate([u, r, c], axis=1))
    ctx.out("ResetHiddenPrev", rh)


@register_grad("gru_unit")
def gru_unit_grad(ctx: KernelContext) -> None:
    xp = ctx.xp
    hp, w_ur, w_c, u, r, rh, c = _gru_unit_parts(ctx)
    dgate = ACTS[_act_of(ctx.attrs["gate_activation"])][1]
    dcand = ACTS[_act_of(ctx.attrs["activation"])][1]
    g = ctx.x("Hidden@GRAD")
    if ctx.attrs["origin_mode"]:
        du, dc, dhp = g * (hp - c), g * (1 - u), g * u
    else:
        du, dc, dhp = g * (c - hp), g * u, g * (1 - u)
    dac = dc * dcand(xp, c)
    drh = dac @ w_c.T
    dur = xp.concatenate([du * dgate(xp, u), drh * hp * dgate(xp, r)], axis=1)
    if ctx.wants("HiddenPrev@GRAD"):
        ctx.out("HiddenPrev@GRAD", dhp + drh * r + dur @ w_ur.T)
    if ctx.wants("Input@GRAD"):
        ctx.out("Input@GRAD", xp.concatenate([dur, dac], axis=1))
    if ctx.wants("Weight@GRAD"):
        dw = xp.concatenate([(hp.T @ dur).reshape(-1), (rh.T @ dac).reshape(-1)])
        ctx.out("Weight@GRAD", dw.reshape(ctx.x("Weight").shape))
    if ctx.wants("Bias@GRAD"):
        ctx.out("Bias@GRAD", xp.concatenate([dur.sum(0), dac.sum(0)]).reshape(ctx.x("Bias").shape))


# ----------------------------------------------------------------- lstm_unit
def _lstm_unit_infer(ctx: ShapeContext) -> None:
    x, c = ctx.shape("X"), ctx.shape("C_prev")
    if len(x) != 2 or len(c) != 2 or (x[1] > 0 and c[1] > 0 and x[1] != 4 * c[1]):
        raise ctx.fail("X must be [N, 4D] (input, forget, output, candidate) and C_prev [N, D]")
    ctx.set("C", c, ctx.dtype("X"), 0)
    ctx.set("H", c, ctx.dtype("X"), 0)


def _lstm_unit_parts(ctx: KernelContext) -> tuple[Any, ...]:
    xp, x, cp = ctx.xp, ctx.x("X"), ctx.x("C_prev")
    d = cp.shape[1]
    sig = ACTS["sigmoid"][0]
    i, f, o = sig(xp, x[:, :d]), sig(xp, x[:, d:2 * d] + ctx.attrs["forget_bias"]), sig(xp, x[:, 2 * d:3 * d])
    g = xp.tanh(x[:, 3 * d:])
    c = f * cp + i * g
    return cp, i, f, o, g, c, xp.tanh(c)


@register_op("lstm_unit", _lstm_unit_infer, grad_outputs=("C", "H"), attrs={"forget_bias": 0.0})
def lstm_unit(ctx: KernelContext) -> None:
    """One LSTM step: C = f * C_prev + i * g, H = o * tanh(C), gates from X in the order i, f, o, g."""
    _, _, _, o, _, c, tc = _lstm_unit_parts(ctx)
    ctx.out("C", c)
    ctx.out("H", o * tc)


@register_grad("lstm_unit")
def lstm_unit_grad(ctx: KernelContext) -> None:
    xp = ctx.xp
    cp, i, f, o, g, c, tc = _lstm_unit_parts(ctx)
    dh = ctx.x("H@GRAD") if ctx.x("H@GRAD") is not None else xp.zeros_like(c)
    dc = dh * o * (1 - tc * tc) + (ctx.x("C@GRAD") if ctx.x("C@GRAD") is not None else 0)
    dx = xp.concatenate([dc * g * i * (1 - i), dc * cp * f * (1 - f), dh * tc * o * (1 - o), dc * i * (1 - g * g)],
                        axis=1)
    if ctx.wants("X@GRAD"):
        ctx.out("X@GRAD", dx)
    if ctx.wants("C_prev@GRAD"):
        ctx.out("C_prev@GRAD", dc * f)


# ------------------------------------------------------------- spectral_norm
def _spectral_infer(ctx: ShapeContext) -> None:
    w = ctx.shape("Weight")
    dim = int(ctx.attr("dim"))
    if not 0 <= dim < len(w) or len(w) < 2 or int(ctx.attr("power_iters")) < 0:
        raise ctx.fail(f"dim {dim} must name a dim of the (at least 2-D) Weight and power_iters be >= 0")
    ctx.share("Weight", "Out", lod=False)


def _spectral_parts(ctx: KernelContext) -> tuple[Any, Any, Any, Any, tuple]:
    """Weight as an [h, w] matrix (dim first), the power-iterated u, v and sigma = u.W.v."""
    xp, w, a = ctx.xp, ctx.x("Weight"), ctx.attrs
    dim, eps = int(a["dim"]), float(a["epsilon"])
    perm = (dim,) + tuple(i for i in range(w.ndim) if i != dim)
    mat = w.transpose(perm).reshape(w.shape[dim], -1)
    # fluid iterates on copies of U and V: the stored vectors stay as initialized
    u, v = ctx.x("U").reshape(-1).copy(), ctx.x("V").reshape(-1).copy()
    for _ in range(int(a["power_iters"])):
        v = mat.T @ u
        v = v / (xp.sqrt((v * v).sum()) + eps)
        u = mat @ v
        u = u / (xp.sqrt((u * u).sum()) + eps)
    return mat, u, v, u @ mat @ v, perm


@register_op("spectral_norm", _spectral_infer, no_grad_inputs=("U", "V"),
             attrs={"dim": 0, "power_iters": 1, "epsilon": 1e-12})
def spectral_norm(ctx: KernelContext) -> None:
    """Weight / sigma, sigma its largest singular value estimated by power iteration."""
    w = ctx.x("Weight")
    _, _, _, sigma, _ = _spectral_parts(ctx)
    ctx.out("Out", w / sigma)


@register_grad("spectral_norm")
def spectral_norm_grad(ctx: KernelContext) -> None:
    """With u and v held fixed (as fluid): dW = dOut / sigma - <dOut, W> / sigma^2 * u v^T."""
    w, g = ctx.x("Weight"), ctx.x("Out@GRAD")
    mat, u, v, sigma, perm = _spectral_parts(ctx)
    gm = g.transpose(perm).reshape(mat.shape)
    dm = gm / sigma - (gm * mat).sum() / (sigma * sigma) * (u[:, None] * v[None, :])
    ctx.out("Weight@GRAD", dm.reshape(tuple(w.shape[i] for i in perm)).transpose(tuple(int(i) for i in np.argsort(perm))))
