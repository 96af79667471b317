"""More tensor ops of fluid 1.4: ``cumsum``, ``reverse``, ``pad``, ``unstack``,
``label_smooth``, ``sequence_mask``, the comparisons (``less_than``...) and the
logical ops (``logical_and``...)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from ..backend import to_numpy
from ..framework import convert_dtype
from ..registry import KernelContext, ShapeContext, register_grad, register_op
from .math import _aligned_y


def _axis(axis: int, rank: int, ctx: ShapeContext) -> int:
    if not -rank <= axis < rank:
        raise ctx.fail(f"axis {axis} is outside [-{rank}, {rank})")
    return axis % rank


# ------------------------------------------------------------------- cumsum
def _cumsum_infer(ctx: ShapeContext) -> None:
    _axis(int(ctx.attr("axis")), len(ctx.shape("X")), ctx)
    ctx.share("X", "Out")


def _cumsum(xp: Any, x: Any, axis: int, exclusive: bool, reverse: bool) -> Any:
    if reverse:
        x = xp.flip(x, axis)
    out = xp.cumsum(x, axis=axis, dtype=x.dtype)
    if exclusive:  # shift by one: element i sums elements before i
        out = out - x
    return xp.flip(out, axis) if reverse else out


@register_op("cumsum", _cumsum_infer, attrs={"axis": -1, "exclusive": False, "reverse": False})
def cumsum(ctx: KernelContext) -> None:
    """Running sums along ``axis`` (``exclusive``: without the element itself; ``reverse``: from the end)."""
    a, x = ctx.attrs, ctx.x("X")
    ctx.out("Out", _cumsum(ctx.xp, x, int(a["axis"]) % x.ndim, a["exclusive"], a["reverse"]), ctx.lod("X"))


@register_grad("cumsum")
def cumsum_grad(ctx: KernelContext) -> None:
    a, g = ctx.attrs, ctx.x("Out@GRAD")
    ctx.out("X@GRAD", _cumsum(ctx.xp, g, int(a["axis"]) % g.ndim, a["exclusive"], not a["reverse"]), ctx.lod("X"))


# ------------------------------------------------------------------ reverse
def _reverse_infer(ctx: ShapeContext) -> None:
    rank = len(ctx.shape("X"))
    if not ctx.attr("axis"):
        raise ctx.fail("axis must name at least one dimension")
    for a in ctx.attr("axis"):
        _axis(int(a), rank, ctx)
    ctx.share("X", "Out")


def _flip(ctx: KernelContext, x: Any) -> Any:
    return ctx.xp.flip(x, tuple(int(a) % x.ndim for a in ctx.attrs["axis"])).copy()


@register_op("reverse", _reverse_infer, attrs={"axis": []})
def reverse(ctx: KernelContext) -> None:
    """X with the order of the given axes reversed."""
    ctx.out("Out", _flip(ctx, ctx.x("X")))


@register_grad("reverse")
def reverse_grad(ctx: KernelContext) -> None:
    ctx.out("X@GRAD", _flip(ctx, ctx.x("Out@GRAD")))


# ---------------------------------------------------------------------- pad
def _pad_infer(ctx: ShapeContext) -> None:
    shape, pads = ctx.shape("X"), [int(p) for p in ctx.attr("paddings")]
    if len(pads) != 2 * len(shape) or min(pads, default=0) < 0:
        raise ctx.fail(f"paddings must be 2 * rank = {2 * len(shape)} non-negative ints, got {pads}")
    out = [d + pads[2 * i] + pads[2 * i + 1] if d > 0 else -1 for i, d in enumerate(shape)]
    ctx.set("Out", out, ctx.dtype("X"), 0)


@register_op("pad", _pad_infer, attrs={"paddings": [], "pad_value": 0.0})
def pad(ctx: KernelContext) -> None:
    """X inside a border: paddings[2i] before and paddings[2i+1] after dim i, filled with pad_value."""
    x, p = ctx.x("X"), [int(v) for v in ctx.attrs["paddings"]]
    out = ctx.xp.full(tuple(d + p[2 * i] + p[2 * i + 1] for i, d in enumerate(x.shape)),
                      ctx.attrs["pad_value"], dtype=x.dtype)
    out[tuple(slice(p[2 * i], p[2 * i] + d) for i, d in enumerate(x.shape))] = x
    ctx.out("Out", out)


@register_grad("pad")
def pad_grad(ctx: KernelContext) -> None:
    x, p = ctx.x("X"), [int(v) for v in ctx.attrs["paddings"]]
    g = ctx.x("Out@GRAD")
    ctx.out("X@GRAD", g[tuple(slice(p[2 * i], p[2 * i] + d) for i, d in enumerate(x.shape))].copy())


# ------------------------------------------------------------------ unstack
def _unstack_infer(ctx: ShapeContext) -> None:
    shape = list(ctx.shape("X"))
    axis = _axis(int(ctx.attr("axis")), len(shape), ctx)
    num = int(ctx.attr("num"))
    if shape[axis] > 0 and num != shape[axis]:
        raise ctx.fail(f"num {num} differs from dim {axis} ({shape[axis]})")
    for i in range(len(ctx.op.outputs.get("Y", []))):
        ctx.set("Y", shape[:axis] + shape[axis + 1:], ctx.dtype("X"), 0, i=i)


@register_op("unstack", _unstack_infer, attrs={"axis": 0, "num": 1})
def unstack(ctx: KernelContext) -> None:
    """The slices of X along ``axis``, that dim removed."""
    x = ctx.x("X")
    axis = int(ctx.attrs["axis"]) % x.ndim
    ctx.outs_list("Y", [ctx.xp.take(x, i, axis=axis) for i in range(x.shape[axis])])


@register_grad("unstack")
def unstack_grad(ctx: KernelContext) -> None:
    x = ctx.x("X")
    axis = int(ctx.attrs["axis"]) % x.ndim
    names = ctx.ins.get("Y@GRAD", [])
    zeros = ctx.xp.zeros(x.shape[:axis] + x.shape[axis + 1:], x.dtype)
    # slices whose output got no gradient (unused, or not fetched) contribute zeros
    parts = [ctx.env.get(names[i], zeros) if i < len(names) else zeros for i in range(x.shape[axis])]
    ctx.out("X@GRAD", ctx.xp.stack(parts, axis=axis))


# ------------------------------------------------------------- label_smooth
def _label_smooth_infer(ctx: ShapeContext) -> None:
    eps = float(ctx.attr("epsilon"))
    if not 0.0 <= eps <= 1.0:
        raise ctx.fail(f"epsilon must be in [0, 1], got {eps}")
    ctx.share("X", "Out")


@register_op("label_smooth", _label_smooth_infer, no_grad_inputs=("PriorDist",), attrs={"epsilon": 0.0})
def label_smooth(ctx: KernelContext) -> None:
    """(1 - epsilon) * X + epsilon * prior (uniform 1 / num_classes without PriorDist)."""
    x, eps = ctx.x("X"), float(ctx.attrs["epsilon"])
    prior = ctx.x("PriorDist").reshape(-1) if ctx.has("PriorDist") else 1.0 / x.shape[-1]
    ctx.out("Out", ((1 - eps) * x + eps * prior).astype(x.dtype, copy=False), ctx.lod("X"))


@register_grad("label_smooth")
def label_smooth_grad(ctx: KernelContext) -> None:
    g = ctx.x("Out@GRAD")
    ctx.out("X@GRAD", (g * (1 - float(ctx.attrs["epsilon"]))).astype(g.dtype, copy=False), ctx.lod("X"))


# ------------------------------------------------------------ sequence_mask
MAX_MASK_ELEMENTS = 1 << 30
def _sequence_mask_infer(ctx: ShapeContext) -> None:
    x = ctx.var("X")
    if np.dtype(x.dtype).kind not in "iu":
        raise ctx.fail(f"X holds lengths and must be an integer tensor, got {x.dtype}")
    ctx.set("Y", tuple(x.shape) + (int(ctx.attr("maxlen")),), convert_dtype(ctx.attr("out_dtype")), 0)


@register_op("sequence_mask", _sequence_mask_infer, no_grad_inputs=("X",), attrs={"maxlen": -1, "out_dtype": "int64"})
def sequence_mask(ctx: KernelContext) -> None:
    """Y[..., j] = j < X[...]: a mask of ``maxlen`` (default: the longest) columns per length."""
    xp, x = ctx.xp, ctx.x("X")
    if x.size and int(x.min()) < 0:
        raise InvalidArgumentError(f"op 'sequence_mask': X '{ctx.ins['X'][0]}' holds a negative length {int(x.min())}")
    maxlen = int(ctx.attrs["maxlen"])
    if maxlen < 0:
        maxlen = int(to_numpy(x).max()) if x.size else 0
        if maxlen * max(x.size, 1) > MAX_MASK_ELEMENTS:  # the data decides the size: bound it
            raise InvalidArgumentError(
                f"op 'sequence_mask': X '{ctx.ins['X'][0]}' holds a length of {maxlen}; a mask of {x.size} x "
                f"{maxlen} is more than {MAX_MASK_ELEMENTS} elements (pass maxlen to allow it)")
    ctx.out("Y", (xp.arange(maxlen) < x[..., None]).astype(convert_dtype(ctx.attrs["out_dtype"])))


# --------------------------------------------------- comparisons and logic
def _bool_infer(ctx: ShapeContext) -> None:
    ctx.set("Out", ctx.shape("X"), "bool", ctx.var("X").lod_level)


def _register_compare(name: str, ufunc: str) -> None:
    def kernel(ctx: KernelContext) -> None:
        x = ctx.x("X")
        ctx.out("Out", getattr(ctx.xp, ufunc)(x, _aligned_y(ctx, x, ctx.x("Y"))), ctx.lod("X"))
    kernel.__doc__ = f"``{name}``: elementwise {ufunc}, Y broadcast against X as fluid's ``axis`` says."
    register_op(name, _bool_infer, no_grad_inputs=("X", "Y"), attrs={"axis": -1, "force_cpu": False})(kernel)


COMPARE = {"less_than": "less", "less_equal": "less_equal", "greater_than": "greater",
           "greater_equal": "greater_equal", "equal": "equal", "not_equal": "not_equal",
           "logical_and": "logical_and", "logical_or": "logical_or", "logical_xor": "logical_xor"}
for _name, _ufunc in COMPARE.items():
    _register_compare(_name, _ufunc)


@register_op("logical_not", _bool_infer, no_grad_inputs=("X",))
def logical_not(ctx: KernelContext) -> None:
    """Elementwise not."""
    ctx.out("Out", ctx.xp.logical_not(ctx.x("X")), ctx.lod("X"))
