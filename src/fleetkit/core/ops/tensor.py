"""Shape manipulation ops: concat/split/stack, reshape/transpose/squeeze/
unsqueeze/flatten, expand, shape and the batch-size-like fills.  The value ops
of the family (cast, clip, reductions, argsort...) are in ``tensor_math``,
registered by the import below; the indexing ops (slice, gather, one_hot) in
``tensor_index``.

Shape inference keeps -1 (the unknown batch dim) wherever it propagates.  LoD
passes through where rows are unchanged (the first dim is not touched).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...errors import InvalidArgumentError, ShapeError
from ..framework import convert_dtype
from ..registry import KernelContext, ShapeContext, register_grad, register_op
from ..scope import lod_lists
from . import tensor_math  # noqa: F401  (registers cast, clip, reduce_* and friends)


def _prod(dims: Sequence[int]) -> int:
    """Product of dims, -1 if any is unknown."""
    return -1 if any(d < 0 for d in dims) else int(np.prod(dims, dtype=np.int64))


def _norm_axis(axis: int, rank: int, ctx: ShapeContext | None = None, what: str = "axis") -> int:
    if not -rank <= axis < rank:
        msg = f"{what} {axis} is out of range for a rank-{rank} input"
        raise ctx.fail(msg) if ctx is not None else InvalidArgumentError(msg)
    return axis % rank


def _first_dim_lod(ctx: KernelContext, slot: str, out_shape: tuple, in_shape: tuple) -> Any:
    """The input's LoD when the op keeps its rows, else None."""
    return ctx.lod(slot) if out_shape[:1] == in_shape[:1] else None


# ------------------------------------------------------------------ concat
def _concat_infer(ctx: ShapeContext) -> None:
    xs = ctx.vars("X")
    shapes = [list(v.shape) for v in xs]
    rank = len(shapes[0])
    if any(len(s) != rank for s in shapes):
        raise ctx.fail(f"inputs have different ranks: shapes {shapes}")
    axis = _norm_axis(int(ctx.attr("axis")), rank, ctx)
    out = []
    for d in range(rank):
        col = [s[d] for s in shapes]
        if d == axis:
            out.append(-1 if any(c < 0 for c in col) else sum(col))
            continue
        known = {c for c in col if c >= 0}
        if len(known) > 1:
            raise ctx.fail(f"inputs differ in dim {d} (only the concat axis {axis} may differ): shapes {shapes}")
        out.append(known.pop() if known else -1)
    ctx.set("Out", out, xs[0].dtype, xs[0].lod_level)


def _concat_lod(ctx: KernelContext, n: int) -> Any:
    """Row-concatenated sequences: each input's offsets shifted past the previous inputs."""
    lods = [ctx.lod("X", i) for i in range(n)]
    if not lods[0] or any(lv is None or len(lv) != len(lods[0]) for lv in lods):
        return None
    merged = lod_lists(lods[0])
    for lod in lods[1:]:
        for k, level in enumerate(lod_lists(lod)):
            base = merged[k][-1]
            merged[k].extend(base + o for o in level[1:])
    return merged


@register_op("concat", _concat_infer, attrs={"axis": 0})
def concat(ctx: KernelContext) -> None:
    xs = ctx.xs("X")
    axis = int(ctx.attrs["axis"]) % xs[0].ndim
    lod = _concat_lod(ctx, len(xs)) if axis == 0 else ctx.lod("X")
    ctx.out("Out", ctx.xp.concatenate(xs, axis=axis), lod)


@register_grad("concat")
def concat_grad(ctx: KernelContext) -> None:
    xs, g = ctx.xs("X"), ctx.x("Out@GRAD")
    axis = int(ctx.attrs["axis"]) % g.ndim
    cuts = np.cumsum([x.shape[axis] for x in xs])[:-1].tolist()
    ctx.outs_list("X@GRAD", ctx.xp.split(g, cuts, axis=axis))


# ------------------------------------------------------------------- split
def _split_sizes(dim: int, num: int, sections: Sequence[int], fail: Any) -> list[int]:
    """Sizes of the parts along the axis (-1 where the axis itself is unknown)."""
    if num > 0:
        if dim >= 0 and dim % num:
            raise fail(f"axis dim {dim} is not divisible into num={num} equal parts")
        return [dim // num if dim >= 0 else -1] * num
    sections = [int(s) for s in sections]
    if not sections:
        raise fail("give num > 0 or a non-empty sections list")
    if sections.count(-1) > 1 or any(s < -1 for s in sections):
        raise fail(f"sections {sections} may hold at most one -1 and no other negative size")
    if dim < 0:
        return sections
    known = sum(s for s in sections if s >= 0)
    if -1 in sections:
        if known > dim:
            raise fail(f"sections {sections} sum past the axis dim {dim}")
        return [dim - known if s == -1 else s for s in sections]
    if known != dim:
        raise fail(f"sections {sections} sum to {known}, but the axis dim is {dim}")
    return sections


def _split_infer(ctx: ShapeContext) -> None:
    x = ctx.var("X")
    xs = list(x.shape)
    axis = _norm_axis(int(ctx.attr("axis")), len(xs), ctx)
    sizes = _split_sizes(xs[axis], int(ctx.attr("num")), ctx.attr("sections"), ctx.fail)
    n_out = len(ctx.op.output("Out"))
    if n_out != len(sizes):
        raise ctx.fail(f"the op has {n_out} outputs but the split makes {len(sizes)} parts")
    for i, s in enumerate(sizes):
        xs[axis] = s
        ctx.set("Out", xs, x.dtype, x.lod_level if axis != 0 else 0, i=i)


@register_op("split", _split_infer, attrs={"axis": 0, "num": 0, "sections": []})
def split(ctx: KernelContext) -> None:
    x = ctx.x("X")
    axis = int(ctx.attrs["axis"]) % x.ndim

    def fail(why: str) -> ShapeError:
        return ShapeError(f"op 'split' on '{ctx.ins['X'][0]}' of shape {list(x.shape)}: {why}")

    sizes = _split_sizes(x.shape[axis], int(ctx.attrs["num"]), ctx.attrs["sections"], fail)
    parts = ctx.xp.split(x, np.cumsum(sizes)[:-1].tolist(), axis=axis)
    lod = ctx.lod("X") if axis != 0 else None
    ctx.outs_list("Out", parts, [lod] * len(parts) if lod else None)


@register_grad("split")
def split_grad(ctx: KernelContext) -> None:
    gs = ctx.xs("Out@GRAD")
    axis = int(ctx.attrs["axis"]) % gs[0].ndim
    ctx.out("X@GRAD", ctx.xp.concatenate(gs, axis=axis), ctx.lod("X"))


# ------------------------------------------------------------------- stack
def _stack_infer(ctx: ShapeContext) -> None:
    xs = ctx.vars("X")
    shapes = [list(v.shape) for v in xs]
    base = shapes[0]
    for s in shapes[1:]:
        if len(s) != len(base) or any(a >= 0 and b >= 0 and a != b for a, b in zip(s, base)):
            raise ctx.fail(f"all inputs must have the same shape, got {shapes}")
    axis = _norm_axis(int(ctx.attr("axis")), len(base) + 1, ctx)
    ctx.set("Y", base[:axis] + [len(xs)] + base[axis:], xs[0].dtype, 0)


@register_op("stack", _stack_infer, attrs={"axis": 0})
def stack(ctx: KernelContext) -> None:
    xs = ctx.xs("X")
    ctx.out("Y", ctx.xp.stack(xs, axis=int(ctx.attrs["axis"]) % (xs[0].ndim + 1)))


@register_grad("stack")
def stack_grad(ctx: KernelContext) -> None:
    g = ctx.x("Y@GRAD")
    axis = int(ctx.attrs["axis"]) % g.ndim
    ctx.outs_list("X@GRAD", list(ctx.xp.moveaxis(g, axis, 0)))


# ----------------------------------------------------------------- reshape
def reshape_target(in_shape: Sequence[int], shape: Sequence[int], fail: Any) -> list[int]:
    """Fluid reshape: 0 copies the input dim at that index, one -1 is inferred.

    Unknown (-1) input dims copied by a 0 cancel out, so ``[0, -1]`` on
    ``[-1, 3, 4]`` gives ``[-1, 12]``.
    """
    out, neg, copied = [], None, set()
    for i, d in enumerate(int(d) for d in shape):
        if d == 0:
            if i >= len(in_shape):
                raise fail(f"shape {list(shape)} has a 0 (copy) at index {i}, past the input rank {len(in_shape)}")
            out.append(int(in_shape[i]))
            copied.add(i)
        elif d == -1:
            if neg is not None:
                raise fail(f"shape {list(shape)} has more than one -1")
            neg = i
            out.append(-1)
        elif d < 0:
            raise fail(f"shape {list(shape)} has an invalid dim {d}")
        else:
            out.append(d)
    unknown_in = {i for i, d in enumerate(in_shape) if d < 0}
    if not unknown_in <= copied:  # the element count is unknown: nothing to infer or check
        return out
    total = _prod([d for i, d in enumerate(in_shape) if i not in unknown_in])
    rest = _prod([d for i, d in enumerate(out) if i != neg and i not in unknown_in])
    counted = " besides the copied unknown dims" if unknown_in else ""
    if neg is not None:
        if rest == 0 or total % rest:
            raise fail(f"cannot reshape {list(in_shape)} to {list(shape)}: {total} elements{counted} do not "
                       f"divide into parts of {rest} for the -1")
        out[neg] = total // rest
    elif total != rest:
        raise fail(f"cannot reshape {list(in_shape)} to {list(shape)}: {total} elements vs {rest}{counted}")
    return out


def _reshape_infer(ctx: ShapeContext) -> None:
    x = ctx.var("X")
    out = reshape_target(x.shape, ctx.attr("shape"), ctx.fail)
    ctx.set("Out", out, x.dtype, x.lod_level if out[:1] == list(x.shape[:1]) else 0)


@register_op("reshape", _reshape_infer, no_grad_inputs=("Shape",), attrs={"shape": []})
def reshape(ctx: KernelContext) -> None:
    x = ctx.x("X")
    actual = ctx.x("Shape")
    shape = [int(d) for d in actual.tolist()] if actual is not None else ctx.attrs["shape"]

    def fail(why: str) -> ShapeError:
        return ShapeError(f"op 'reshape' on '{ctx.ins['X'][0]}': {why}")

    out = x.reshape(reshape_target(x.shape, shape, fail))
    ctx.out("Out", out, _first_dim_lod(ctx, "X", out.shape, x.shape))


@register_grad("reshape")
def reshape_grad(ctx: KernelContext) -> None:
    x = ctx.x("X")
    ctx.out("X@GRAD", ctx.x("Out@GRAD").reshape(x.shape), ctx.lod("X"))


# --------------------------------------------------------------- transpose
def _transpose_infer(ctx: ShapeContext) -> None:
    x = ctx.var("X")
    perm = [int(a) for a in ctx.attr("axis")]
    if sorted(perm) != list(range(len(x.shape))):
        raise ctx.fail(f"axis {perm} is not a permutation of the {len(x.shape)} dims of shape {list(x.shape)}")
    ctx.set("Out", [x.shape[a] for a in perm], x.dtype, 0)


@register_op("transpose", _transpose_infer, attrs={"axis": []})
def transpose(ctx: KernelContext) -> None:
    ctx.out("Out", ctx.x("X").transpose(ctx.attrs["axis"]))


@register_grad("transpose")
def transpose_grad(ctx: KernelContext) -> None:
    inv = np.argsort(ctx.attrs["axis"]).tolist()
    ctx.out("X@GRAD", ctx.x("Out@GRAD").transpose(inv), ctx.lod("X"))


# ------------------------------------------------------ squeeze / unsqueeze
def squeeze_shape(shape: Sequence[int], axes: Sequence[int], fail: Any) -> list[int]:
    """Drop the listed size-1 dims (all size-1 dims when ``axes`` is empty)."""
    rank = len(shape)
    if not axes:
        return [d for d in shape if d != 1]
    drop = set()
    for a in axes:
        if not -rank <= a < rank:
            raise fail(f"axes {list(axes)}: {a} is out of range for shape {list(shape)}")
        a %= rank
        if shape[a] > 1 or shape[a] == 0:
            raise fail(f"axes {list(axes)}: dim {a} of shape {list(shape)} is {shape[a]}, not 1")
        drop.add(a)
    return [d for i, d in enumerate(shape) if i not in drop]


def unsqueeze_shape(shape: Sequence[int], axes: Sequence[int], fail: Any) -> list[int]:
    """Insert size-1 dims one axis at a time; each axis indexes the shape built so far."""
    out = list(shape)
    for a in axes:
        cur = a + len(out) + 1 if a < 0 else a
        if not 0 <= cur <= len(out):
            raise fail(f"axes {list(axes)}: {a} is out of range for a rank-{len(out)} shape")
        out.insert(cur, 1)
    return out


def _register_reshaper(name: str, shape_fn: Any, attr: str, default: Any) -> None:
    """Ops that only change the shape: Out = X.reshape(shape_fn(X.shape, attr))."""

    def infer(ctx: ShapeContext) -> None:
        x = ctx.var("X")
        out = shape_fn(x.shape, ctx.attr(attr), ctx.fail)
        ctx.set("Out", out, x.dtype, x.lod_level if out[:1] == list(x.shape[:1]) else 0)

    def kernel(ctx: KernelContext) -> None:
        x = ctx.x("X")

        def fail(why: str) -> ShapeError:
            return ShapeError(f"op '{name}' on '{ctx.ins['X'][0]}': {why}")

        out = x.reshape(shape_fn(x.shape, ctx.attrs[attr], fail))
        ctx.out("Out", out, _first_dim_lod(ctx, "X", out.shape, x.shape))

    def grad(ctx: KernelContext) -> None:
        ctx.out("X@GRAD", ctx.x("Out@GRAD").reshape(ctx.x("X").shape), ctx.lod("X"))

    kernel.__name__ = name
    register_op(name, infer, attrs={attr: default})(kernel)
    register_grad(name)(grad)


def flatten_shape(shape: Sequence[int], axis: int, fail: Any) -> list[int]:
    """[prod(shape[:axis]), prod(shape[axis:])] (-1 where a part is unknown)."""
    if not 0 <= axis <= len(shape):
        raise fail(f"axis {axis} must be in [0, {len(shape)}] for shape {list(shape)}")
    return [_prod(shape[:axis]), _prod(shape[axis:])]


_register_reshaper("squeeze", squeeze_shape, "axes", [])
_register_reshaper("unsqueeze", unsqueeze_shape, "axes", [])
_register_reshaper("flatten", flatten_shape, "axis", 1)


# ------------------------------------------------------------------ expand
def _expand_infer(ctx: ShapeContext) -> None:
    x = ctx.var("X")
    times = [int(t) for t in ctx.attr("expand_times")]
    if len(times) != len(x.shape) or any(t < 1 for t in times):
        raise ctx.fail(f"expand_times {times} must hold one positive count per dim of shape {list(x.shape)}")
    out = [d * t if d >= 0 else -1 for d, t in zip(x.shape, times)]
    ctx.set("Out", out, x.dtype, x.lod_level if times[0] == 1 else 0)


@register_op("expand", _expand_infer, attrs={"expand_times": []})
def expand(ctx: KernelContext) -> None:
    times = tuple(ctx.attrs["expand_times"])
    ctx.out("Out", ctx.xp.tile(ctx.x("X"), times), ctx.lod("X") if times[0] == 1 else None)


@register_grad("expand")
def expand_grad(ctx: KernelContext) -> None:
    # Out viewed as [t0, d0, t1, d1, ...]: the tile copies are the t axes
    x, g = ctx.x("X"), ctx.x("Out@GRAD")
    times = ctx.attrs["expand_times"]
    inter = [v for t, d in zip(times, x.shape) for v in (t, d)]
    dx = g.reshape(inter).sum(axis=tuple(range(0, 2 * x.ndim, 2)))
    ctx.out("X@GRAD", dx.astype(x.dtype, copy=False), ctx.lod("X"))



# ------------------------------------------------------------------- shape
def _shape_infer(ctx: ShapeContext) -> None:
    ctx.set("Out", [len(ctx.shape("Input"))], "int32", 0)


@register_op("shape", _shape_infer, no_grad_inputs=("Input",))
def shape(ctx: KernelContext) -> None:
    ctx.out("Out", ctx.xp.asarray(ctx.x("Input").shape, dtype=np.int32))


# ------------------------------------------------------ batch-size-like fills
def _batch_like_shape(in_shape: Sequence[int], shape: Sequence[int], in_idx: int, out_idx: int,
                      fail: Any) -> list[int]:
    out = [int(d) for d in shape]
    if not 0 <= out_idx < len(out):
        raise fail(f"output_dim_idx {out_idx} is out of range for shape {out}")
    if not 0 <= in_idx < len(in_shape):
        raise fail(f"input_dim_idx {in_idx} is out of range for the input shape {list(in_shape)}")
    out[out_idx] = int(in_shape[in_idx])
    return out


def _batch_like_infer(ctx: ShapeContext) -> None:
    out = _batch_like_shape(ctx.shape("Input"), ctx.attr("shape"), int(ctx.attr("input_dim_idx")),
                            int(ctx.attr("output_dim_idx")), ctx.fail)
    ctx.set("Out", out, convert_dtype(ctx.attr("dtype")), 0)


def _batch_like_out_shape(ctx: KernelContext, use_lod: bool) -> tuple[int, ...]:
    x = ctx.x("Input")
    in_idx, out_idx = int(ctx.attrs["input_dim_idx"]), int(ctx.attrs["output_dim_idx"])
    out = list(ctx.attrs["shape"])
    lod = ctx.lod("Input") if use_lod else None
    # a sequence batch counts sequences, not rows
    out[out_idx] = len(lod[-1]) - 1 if lod and in_idx == 0 else x.shape[in_idx]
    return tuple(out)


_BATCH_LIKE = {"shape": [], "dtype": "float32", "input_dim_idx": 0, "output_dim_idx": 0}


@register_op("fill_constant_batch_size_like", _batch_like_infer, no_grad_inputs=("Input",),
             attrs={**_BATCH_LIKE, "value": 0.0})
def fill_constant_batch_size_like(ctx: KernelContext) -> None:
    shape = _batch_like_out_shape(ctx, use_lod=True)
    ctx.out("Out", ctx.xp.full(shape, ctx.attrs["value"], dtype=convert_dtype(ctx.attrs["dtype"])))


@register_op("uniform_random_batch_size_like", _batch_like_infer, no_grad_inputs=("Input",),
             attrs={**_BATCH_LIKE, "min": -1.0, "max": 1.0, "seed": 0}, random=True)
def uniform_random_batch_size_like(ctx: KernelContext) -> None:
    shape = _batch_like_out_shape(ctx, use_lod=False)
    a = ctx.rng.uniform(ctx.attrs["min"], ctx.attrs["max"], size=shape)
    ctx.out("Out", ctx.xp.asarray(a.astype(convert_dtype(ctx.attrs["dtype"]), copy=False)))
