"""Collective ops for programs: ``c_allreduce_{sum,max,min,prod}``, ``c_broadcast``,
``c_allgather``, ``c_reducescatter``, ``c_barrier``, plus ``c_fused_allreduce_sum``
(one collective for a bucket of gradients) and ``c_sync_comm_stream``.

Importing ``fleetkit.collective`` registers them.  Every op names its group by
``ring_id`` (see ``groups.py``).  With ``use_calc_stream=False`` an all-reduce
only *starts* (the backend's op thread moves the bytes while the executor runs
the next ops); ``c_sync_comm_stream`` of the same ring waits for every started
op and writes the results into the scope.  The data-parallel rewrite uses this
to overlap gradient communication with the rest of the backward pass.

Results never overwrite the input array in place: kernels of other ops may
return views (e.g. an add's gradient passing its input gradient through), so
an in-place reduction could change a value another op still reads.  One copy
per collective is cheap next to moving the bytes.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Callable

import numpy as np

from ..core.framework import Program
from ..core.registry import KernelContext, ShapeContext, register_op
from ..core.trainer import register_lockstep
from .constants import REDUCE_OPS
from .groups import get_group

__all__ = ["pending_count", "wait_pending"]

# ring_id -> [(work, env, finish)]; ``finish(env, result)`` stores the result.
_PENDING: dict[int, list[tuple[Any, dict, Callable[[dict, Any], None]]]] = {}
# op -> reusable flat buffer of a fused all-reduce (multi-MiB allocations are slow here);
# weak keys, so a dropped program frees its buffers
_BUFFERS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()

_RING = {"ring_id": 0, "use_calc_stream": True}


def pending_count(ring_id: int = 0) -> int:
    """Number of started, not yet synchronized async collectives of ``ring_id``."""
    return len(_PENDING.get(ring_id, ()))


def wait_pending(ring_id: int = 0) -> None:
    """Wait for every async collective of ``ring_id`` and store its result."""
    items = _PENDING.pop(ring_id, [])
    if not items:
        return
    group = get_group(ring_id)
    for work, env, finish in items:
        # wait_for: a wait that outlives the op's own deadline marks the group broken
        finish(env, group.wait_for(work, None))


def _start(ctx: KernelContext, start: Callable[[Any], Any], finish: Callable[[dict, Any], None]) -> None:
    """Run ``start(group)`` now (sync) or register its handle (async)."""
    ring = int(ctx.attrs.get("ring_id", 0))
    group = get_group(ring)
    if ctx.attrs.get("use_calc_stream", True):
        wait_pending(ring)  # keep results in program order
        work = start(group)
        finish(ctx.env, group.wait_for(work, None))
    else:
        _PENDING.setdefault(ring, []).append((start(group), ctx.env, finish))


def _setter(name: str) -> Callable[[dict, Any], None]:
    def finish(env: dict, result: Any) -> None:
        env[name] = result
    return finish


def _same_infer(ctx: ShapeContext) -> None:
    for i, v in enumerate(ctx.vars("X")):
        ctx.set("Out", v.shape, v.dtype, v.lod_level, i=i)


# ------------------------------------------------------------------ all-reduce
def _allreduce_kernel(op: str) -> Callable[[KernelContext], None]:
    def kernel(ctx: KernelContext) -> None:
        buf = ctx.xp.array(ctx.x("X"), copy=True)
        _start(ctx, lambda g: g.all_reduce_async(buf, op=op), _setter(ctx.outs["Out"][0]))
    kernel.__doc__ = f"Out = {op} of X over the ring's ranks."
    return kernel


for _op in REDUCE_OPS:
    register_op(f"c_allreduce_{_op}", _same_infer, attrs=dict(_RING))(_allreduce_kernel(_op))


@register_op("c_fused_allreduce_sum", _same_infer, attrs=dict(_RING))
def c_fused_allreduce_sum(ctx: KernelContext) -> None:
    """Out[i] = sum of X[i] over the ranks, for a bucket of same-dtype tensors in one collective.

    The tensors are packed into one flat buffer (kept between steps), reduced
    once, and handed back as views of that buffer.
    """
    xs = ctx.xs("X")
    xp = ctx.xp
    sizes = [int(x.size) for x in xs]
    total = sum(sizes)
    buf = _BUFFERS.get(ctx.op)
    if buf is None or buf.size != total or buf.dtype != xs[0].dtype:
        buf = _BUFFERS[ctx.op] = xp.empty(total, dtype=xs[0].dtype)
    offset = 0
    for x, n in zip(xs, sizes):
        buf[offset:offset + n] = x.reshape(-1)
        offset += n
    names, shapes = list(ctx.outs["Out"]), [x.shape for x in xs]

    def finish(env: dict, result: Any) -> None:
        at = 0
        for name, shape, n in zip(names, shapes, sizes):
            env[name] = result[at:at + n].reshape(shape)
            at += n

    _start(ctx, lambda g: g.all_reduce_async(buf, op="sum"), finish)


@register_op("c_sync_comm_stream", _same_infer, attrs={"ring_id": 0})
def c_sync_comm_stream(ctx: KernelContext) -> None:
    """Wait for the ring's started collectives; X/Out only order this op after them."""
    wait_pending(int(ctx.attrs.get("ring_id", 0)))


# ------------------------------------------------------------------ the others
@register_op("c_broadcast", _same_infer, attrs={**_RING, "root": 0})
def c_broadcast(ctx: KernelContext) -> None:
    """Out = X of rank ``root`` (Out is usually X: parameters broadcast at startup)."""
    buf = ctx.xp.array(ctx.x("X"), copy=True)
    root = int(ctx.attrs.get("root", 0))
    _start(ctx, lambda g: g.broadcast_async(buf, root=root), _setter(ctx.outs["Out"][0]))


def _scaled_infer(gather: bool) -> Callable[[ShapeContext], None]:
    def infer(ctx: ShapeContext) -> None:
        v = ctx.var("X")
        n = int(ctx.attr("nranks", 0) or 0)
        shape = list(v.shape) or [1]
        if n > 0 and shape[0] > 0:
            if gather:
                shape[0] *= n
            elif shape[0] % n:
                raise ctx.fail(f"c_reducescatter: first dim {shape[0]} is not divisible by nranks {n}")
            else:
                shape[0] //= n
        elif n <= 0:
            shape[0] = -1
        ctx.set("Out", shape, v.dtype)
    return infer


@register_op("c_allgather", _scaled_infer(True), attrs={**_RING, "nranks": 0})
def c_allgather(ctx: KernelContext) -> None:
    """Out = every rank's X concatenated along the first dim, in rank order."""
    x, xp = ctx.x("X"), ctx.xp
    x = x.reshape(1) if x.ndim == 0 else x

    def finish(env: dict, parts: list) -> None:
        env[ctx.outs["Out"][0]] = xp.concatenate(parts, axis=0)

    _start(ctx, lambda g: g.all_gather_async(x), finish)


@register_op("c_reducescatter", _scaled_infer(False), attrs={**_RING, "nranks": 0})
def c_reducescatter(ctx: KernelContext) -> None:
    """Out = this rank's block of rows of the sum of X over the ranks."""
    buf = ctx.xp.array(ctx.x("X"), copy=True)
    _start(ctx, lambda g: g.reduce_scatter_async(buf, op="sum"), _setter(ctx.outs["Out"][0]))


def _barrier_infer(ctx: ShapeContext) -> None:
    if ctx.has("X"):
        _same_infer(ctx)


@register_op("c_barrier", _barrier_infer, attrs={"ring_id": 0})
def c_barrier(ctx: KernelContext) -> None:
    """Wait until every rank of the ring reaches this op (X, if given, passes through)."""
    ring = int(ctx.attrs.get("ring_id", 0))
    wait_pending(ring)
    get_group(ring).barrier()
    for src, dst in zip(ctx.ins.get("X", ()), ctx.outs.get("Out", ())):
        if src != dst:
            ctx.env[dst] = ctx.env[src]


def fused_bucket_bytes(sizes_bytes: list[int], bucket_mb: float) -> list[list[int]]:
    """Group consecutive tensors (by index) into buckets of at least ``bucket_mb`` MiB
    (the last may be smaller).  ``bucket_mb <= 0`` puts everything in one bucket."""
    limit = math.inf if bucket_mb <= 0 else bucket_mb * (1 << 20)
    buckets: list[list[int]] = [[]]
    filled = 0
    for i, nbytes in enumerate(sizes_bytes):
        buckets[-1].append(i)
        filled += nbytes
        if filled >= limit:
            buckets.append([])
            filled = 0
    return [b for b in buckets if b]


def _dataset_lockstep(program: Program) -> Callable[[bool], bool] | None:
    """train_from_dataset on a program with collectives: before each step the ranks of its
    group agree (one tiny min all-reduce) that every one of them still has a batch."""
    rings = sorted({int(op.attrs.get("ring_id", 0)) for op in program.global_block().ops
                    if op.type.startswith("c_")})
    if not rings:
        return None
    group = get_group(rings[0])

    def agree(has_batch: bool) -> bool:
        return bool(group.all_reduce(np.array([1 if has_batch else 0], dtype=np.int64), op="min")[0])
    return agree


register_lockstep(_dataset_lockstep)
