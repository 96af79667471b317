"""fluid's LoD rank-table ops: the machinery under ``DynamicRNN``.

A rank table lists the sequences of one LoD level as (index, length), longest first
(a stable sort, as fluid's, so equal lengths keep their order).  Time step ``t`` of a
batch then holds the first ``batch_size_at(table, t)`` sequences of the table, those
longer than ``t``: ``lod_tensor_to_array`` cuts a LoD tensor into those steps,
``array_to_lod_tensor`` puts them back in the original order, ``shrink_rnn_memory``
keeps a state's first rows for the step, ``reorder_lod_tensor_by_rank`` sorts a
per-sequence tensor into table order.  The index arithmetic lives in the helpers
below, which ``dynamic_rnn`` (core/ops/dynamic_rnn.py) uses too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from ..registry import KernelContext, ShapeContext, register_grad, register_op
from ..scope import LoDTensor
from .control_flow import _scalar
from .lod_util import checked_offsets


@dataclass(frozen=True)
class LoDRankTable:
    """The runtime value of a ``lod_rank_table`` variable.

    ``items``: (sequence index, length) longest first; ``coarse_lod``: the LoD levels
    above the ranked one, which ``array_to_lod_tensor`` gives back to its output."""

    items: tuple[tuple[int, int], ...]
    coarse_lod: tuple[tuple[int, ...], ...] = ()

    def lengths(self) -> list[int]:
        """The ranked level's sequence lengths in the original order."""
        out = [0] * len(self.items)
        for index, length in self.items:
            out[index] = length
        return out

    def offsets(self) -> list[int]:
        off = [0]
        for n in self.lengths():
            off.append(off[-1] + n)
        return off

    def max_len(self) -> int:
        return self.items[0][1] if self.items else 0


def make_rank_table(lod: list[list[int]], level: int, where: str) -> LoDRankTable:
    if not 0 <= level < len(lod):
        raise InvalidArgumentError(f"{where}: level {level} is outside the {len(lod)} LoD level(s) of the input "
                                   f"(feed it as a LoDTensor with at least {level + 1} level(s))")
    off = lod[level]
    items = sorted(((i, off[i + 1] - off[i]) for i in range(len(off) - 1)), key=lambda it: -it[1])
    return LoDRankTable(tuple(items), tuple(tuple(lv) for lv in lod[:level]))


def batch_size_at(table: LoDRankTable, t: int) -> int:
    """How many sequences are longer than ``t`` (the batch of time step ``t``)."""
    n = 0
    for _, length in table.items:
        if length <= t:
            break
        n += 1
    return n


def step_rows(table: LoDRankTable, t: int) -> np.ndarray:
    """The rows of a tensor laid out like the table's level that time step ``t`` takes, in table order."""
    off = table.offsets()
    return np.asarray([off[i] + t for i, _ in table.items[:batch_size_at(table, t)]], dtype=np.int64)


def check_rows_match(table: LoDRankTable, value: Any, lod: list[list[int]] | None, op: str, name: str) -> None:
    """``value`` must be laid out as the table's ranked level: its LoD ends with that level."""
    want = table.offsets()
    if not lod or [list(lv) for lv in table.coarse_lod] + [want] != [list(lv) for lv in lod]:
        raise InvalidArgumentError(
            f"op '{op}': '{name}' has LoD {lod}, the rank table was made from LoD "
            f"{[list(lv) for lv in table.coarse_lod] + [want]}; a tensor is cut into time steps over its "
            f"last LoD level only, and needs the same LoD as the rank table's input")
    checked_offsets(want, value.shape[0], op, name)


def shrink_rows(value: Any, lod: list[list[int]] | None, n: int) -> tuple[Any, list[list[int]] | None]:
    """The first ``n`` sequences of ``value`` (its top LoD level), or its first ``n`` rows without LoD."""
    if not lod:
        return value[:n], None
    if len(lod) > 1:
        raise InvalidArgumentError(f"shrink_rnn_memory: a memory with {len(lod)} LoD levels is not supported "
                                   f"(one level, or none)")
    top = list(lod[0][:n + 1])
    return value[:top[-1]], [top]


def reorder_index(table: LoDRankTable, value: Any, lod: list[list[int]] | None, op: str,
                  name: str) -> tuple[np.ndarray, list[list[int]] | None]:
    """Row order (and the new LoD) that puts the sequences of ``value`` in table order."""
    order = [i for i, _ in table.items]
    if not lod:
        if value.shape[0] != len(order):
            raise InvalidArgumentError(f"op '{op}': '{name}' has {value.shape[0]} rows and no LoD; the rank "
                                       f"table has {len(order)} sequences (one row each is expected)")
        return np.asarray(order, dtype=np.int64), None
    if len(lod) > 1:
        raise InvalidArgumentError(f"op '{op}': '{name}' has {len(lod)} LoD levels; one is supported")
    off = checked_offsets(lod[0], value.shape[0], op, name)
    if off.size - 1 != len(order):
        raise InvalidArgumentError(f"op '{op}': '{name}' holds {off.size - 1} sequences, the rank table "
                                   f"{len(order)}")
    rows = [np.arange(off[i], off[i + 1]) for i in order]
    lengths = [int(off[i + 1] - off[i]) for i in order]
    index = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
    return index, [list(np.cumsum([0] + lengths).tolist())]


def _table(ctx: KernelContext) -> LoDRankTable:
    table = ctx.raw("RankTable")
    if not isinstance(table, LoDRankTable):
        raise InvalidArgumentError(f"op '{ctx.op.type}': RankTable '{ctx.ins['RankTable'][0]}' holds "
                                   f"{type(table).__name__}, not a rank table (make it with lod_rank_table)")
    return table


def _lod_of(v: Any) -> list[list[int]] | None:
    return v.lod() if isinstance(v, LoDTensor) and v.lod() else None


def _values(v: Any) -> Any:
    return v.values if isinstance(v, LoDTensor) else v


# ------------------------------------------------------------------ the table itself
# X only lends its LoD: no gradient flows to it (and backward makes no zero gradient for the table)
@register_op("lod_rank_table", no_grad_inputs=("X",), attrs={"level": 0})
def lod_rank_table(ctx: KernelContext) -> None:
    lod = ctx.lod("X")
    if not lod:
        raise InvalidArgumentError(f"lod_rank_table: input '{ctx.ins['X'][0]}' has no LoD; feed a LoDTensor")
    ctx.env[ctx.outs["Out"][0]] = make_rank_table(lod, int(ctx.attr("level")), "lod_rank_table")


def _int64_scalar_infer(ctx: ShapeContext) -> None:
    ctx.set("Out", (1,), "int64", 0)


@register_op("max_sequence_len", _int64_scalar_infer, no_grad_inputs=("RankTable",))
def max_sequence_len(ctx: KernelContext) -> None:
    ctx.out("Out", ctx.xp.asarray([_table(ctx).max_len()], dtype="int64"))


# ------------------------------------------------------------ tensor <-> time steps
def _to_array_infer(ctx: ShapeContext) -> None:
    x = ctx.var("X")
    ctx.set("Out", x.shape, x.dtype, 0)


@register_op("lod_tensor_to_array", _to_array_infer, no_grad_inputs=("RankTable",))
def lod_tensor_to_array(ctx: KernelContext) -> None:
    """Out[t]: the rows of time step ``t`` (one per sequence longer than ``t``, in table order)."""
    table, x = _table(ctx), ctx.x("X")
    check_rows_match(table, x, ctx.lod("X"), "lod_tensor_to_array", ctx.ins["X"][0])
    xp = ctx.xp
    ctx.env[ctx.outs["Out"][0]] = [x[xp.asarray(step_rows(table, t))] for t in range(table.max_len())]


@register_grad("lod_tensor_to_array")
def lod_tensor_to_array_grad(ctx: KernelContext) -> None:
    if not ctx.wants("X@GRAD"):
        return
    table, x = _table(ctx), ctx.x("X")
    grads = ctx.raw("Out@GRAD")
    dx = ctx.xp.zeros_like(x)
    for t, g in enumerate(grads if isinstance(grads, list) else []):
        if g is not None and t < table.max_len():
            dx[ctx.xp.asarray(step_rows(table, t))] = _values(g)
    ctx.out("X@GRAD", dx, ctx.lod("X"))


def _to_tensor_infer(ctx: ShapeContext) -> None:
    x = ctx.var("X")
    ctx.set("Out", x.shape, x.dtype, 1)


def _steps(ctx: KernelContext, table: LoDRankTable, slot: str) -> list:
    arr = ctx.raw(slot)
    name = ctx.ins[slot][0]
    if not isinstance(arr, list):
        raise InvalidArgumentError(f"op '{ctx.op.type}': '{name}' ({slot}) holds {type(arr).__name__}, not a "
                                   f"tensor array")
    if len(arr) < table.max_len():
        raise InvalidArgumentError(f"op '{ctx.op.type}': '{name}' has {len(arr)} time steps, the rank table's "
                                   f"longest sequence {table.max_len()}")
    steps = []
    for t in range(table.max_len()):
        v, want = _values(arr[t]), batch_size_at(table, t)
        if v is None or v.shape[0] != want:
            raise InvalidArgumentError(f"op '{ctx.op.type}': step {t} of '{name}' has "
                                       f"{'no value' if v is None else f'{v.shape[0]} rows'}; the rank table "
                                       f"has {want} sequences that long")
        steps.append(v)
    return steps


@register_op("array_to_lod_tensor", _to_tensor_infer, no_grad_inputs=("RankTable",))
def array_to_lod_tensor(ctx: KernelContext) -> None:
    """Undo ``lod_tensor_to_array``: the time steps back into one LoD tensor in the original order."""
    table = _table(ctx)
    steps = _steps(ctx, table, "X")
    off = table.offsets()
    if not steps:
        ctx.out("Out", ctx.xp.zeros((0,), dtype="float32"), [list(lv) for lv in table.coarse_lod] + [off])
        return
    out = ctx.xp.zeros((off[-1],) + tuple(steps[0].shape[1:]), dtype=steps[0].dtype)
    for t, v in enumerate(steps):
        out[ctx.xp.asarray(step_rows(table, t))] = v
    ctx.out("Out", out, [list(lv) for lv in table.coarse_lod] + [off])


@register_grad("array_to_lod_tensor")
def array_to_lod_tensor_grad(ctx: KernelContext) -> None:
    if not ctx.wants("X@GRAD"):
        return
    table, g = _table(ctx), ctx.x("Out@GRAD")
    ctx.env[ctx.outs["X@GRAD"][0]] = [g[ctx.xp.asarray(step_rows(table, t))] for t in range(table.max_len())]


# ------------------------------------------------------------- memories and statics
def _share_x(ctx: ShapeContext) -> None:
    ctx.share("X", "Out")


@register_op("shrink_rnn_memory", _share_x, no_grad_inputs=("I", "RankTable"))
def shrink_rnn_memory(ctx: KernelContext) -> None:
    """Out: the first sequences (rows, without LoD) of X, as many as are longer than step I."""
    n = batch_size_at(_table(ctx), int(_scalar(ctx, "I")))
    value, lod = shrink_rows(ctx.x("X"), ctx.lod("X"), n)
    ctx.out("Out", value, lod)


def pad_rows(xp: Any, like: Any, head: Any) -> Any:
    """A zero tensor shaped like ``like`` whose first rows are ``head`` (the gradient of a shrink)."""
    out = xp.zeros_like(like)
    if head is not None:
        out[:head.shape[0]] = head
    return out


@register_grad("shrink_rnn_memory")
def shrink_rnn_memory_grad(ctx: KernelContext) -> None:
    if ctx.wants("X@GRAD"):
        ctx.out("X@GRAD", pad_rows(ctx.xp, ctx.x("X"), ctx.x("Out@GRAD")), ctx.lod("X"))


@register_op("reorder_lod_tensor_by_rank", _share_x, no_grad_inputs=("RankTable",))
def reorder_lod_tensor_by_rank(ctx: KernelContext) -> None:
    """Out: the sequences of X (its rows, without LoD) in rank-table order."""
    x = ctx.x("X")
    index, lod = reorder_index(_table(ctx), x, ctx.lod("X"), ctx.op.type, ctx.ins["X"][0])
    ctx.out("Out", x[ctx.xp.asarray(index)], lod)


@register_grad("reorder_lod_tensor_by_rank")
def reorder_lod_tensor_by_rank_grad(ctx: KernelContext) -> None:
    if not ctx.wants("X@GRAD"):
        return
    x = ctx.x("X")
    index, _ = reorder_index(_table(ctx), x, ctx.lod("X"), ctx.op.type, ctx.ins["X"][0])
    dx = ctx.xp.zeros_like(x)
    dx[ctx.xp.asarray(index)] = ctx.x("Out@GRAD")
    ctx.out("X@GRAD", dx, ctx.lod("X"))
