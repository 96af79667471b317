"""Parsed instances kept in columns, and their assembly into feed batches.

An ``InstanceStore`` holds, for each used slot, one flat array of values and
the offsets of every instance's values in it.  Shuffling, slicing and sending
instances are then a few vectorized gathers per slot instead of Python objects
per instance.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .multislot import ParseResult, Slot

__all__ = ["InstanceStore"]

#: instances from which take() gathers the slots on several threads
_PARALLEL_TAKE = 1 << 16
#: batches whose sparse offsets ``batches()`` stacks at once (a few MB: stays in cache)
_CHUNK_BATCHES = 32


def _offsets(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def _joined_offsets(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The offsets of the parts' values laid end to end: each part's offsets after its
    leading 0, shifted by the values before it (one pass per part, no diff and cumsum)."""
    out = np.empty(1 + sum(len(o) - 1 for o in parts), np.int64)
    out[0] = pos = shift = 0
    for o in parts:
        n = len(o) - 1
        np.add(o[1:], shift - o[0], out=out[pos + 1:pos + 1 + n])
        pos, shift = pos + n, shift + int(o[-1] - o[0])
    return out


class InstanceStore:
    """Instances of the used slots, column by column.

    Attributes:
        slots: the used slots, in feed order.
        values: per slot, all instances' values concatenated.
        offsets: per slot, ``num + 1`` offsets into ``values``.
    """

    def __init__(self, slots: Sequence[Slot], values: list[np.ndarray], offsets: list[np.ndarray]):
        self.slots = list(slots)
        self.values = values
        self.offsets = offsets

    @classmethod
    def empty(cls, slots: Sequence[Slot]) -> InstanceStore:
        return cls(slots, [np.zeros(0, s.dtype) for s in slots], [np.zeros(1, np.int64) for _ in slots])

    @classmethod
    def from_parsed(cls, slots: Sequence[Slot], parsed: ParseResult) -> InstanceStore:
        return cls(slots, parsed.values, [_offsets(n) for n in parsed.lengths])

    @classmethod
    def concat(cls, slots: Sequence[Slot], parts: Sequence[InstanceStore]) -> InstanceStore:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty(slots)
        if len(parts) == 1:
            return parts[0]
        values, offsets = [], []
        for k in range(len(slots)):
            values.append(np.concatenate([p.values[k] for p in parts]))
            offsets.append(_joined_offsets([p.offsets[k] for p in parts]))
        return cls(slots, values, offsets)

    def __len__(self) -> int:
        return len(self.offsets[0]) - 1 if self.offsets else 0

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.values) + sum(o.nbytes for o in self.offsets)

    def lengths(self, k: int) -> np.ndarray:
        return np.diff(self.offsets[k])

    def take(self, index: np.ndarray) -> InstanceStore:
        """The instances at ``index`` (any order, repeats allowed), as a new store.

        Large takes gather the slots on a few threads (numpy's gathers release the GIL)."""
        index = np.asarray(index, np.int64)
        cols = list(zip(self.values, self.offsets))
        threads = min(len(cols), os.cpu_count() or 1)
        if len(index) >= _PARALLEL_TAKE and threads > 1:
            with ThreadPoolExecutor(threads, thread_name_prefix="take") as pool:
                taken = list(pool.map(lambda c: _take_column(c[0], c[1], index), cols))
        else:
            taken = [_take_column(v, o, index) for v, o in cols]
        return InstanceStore(self.slots, [v for v, _ in taken], [o for _, o in taken])

    def slice(self, start: int, stop: int) -> InstanceStore:
        """Instances ``start..stop-1`` (views where possible)."""
        values, offsets = [], []
        for vals, off in zip(self.values, self.offsets):
            o = off[start:stop + 1]
            values.append(vals[o[0]:o[-1]])
            offsets.append(o - o[0])
        return InstanceStore(self.slots, values, offsets)

    def feed(self) -> dict[str, Any]:
        """This store as one feed dict: LoD tensors for sparse slots, dense arrays otherwise."""
        return next(self.batches(max(len(self), 1)), None) or {}

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
        """Feed dicts of ``batch_size`` instances of ``start..stop-1`` (the last one may be
        smaller): sparse slots as LoDTensors ([values, 1] and level-1 offsets as int64 array
        views, never Python lists), dense ones as [batch, dims...]."""
        from ..core.scope import (
            LoDTensor,  # the core is below the dataset layer: fine to import
        )
        stop = len(self) if stop is None else min(stop, len(self))
        dense = [(s.name, rest, int(np.prod(rest)), v) for s, v in zip(self.slots, self.values) if s.is_dense
                 for rest in [_dense_rest(s)]]
        sparse = [(s.name, v) for s, v in zip(self.slots, self.values) if not s.is_dense]
        sparse_offsets = [o for s, o in zip(self.slots, self.offsets) if not s.is_dense]
        chunk = batch_size * _CHUNK_BATCHES
        for chunk_start in range(start, stop, chunk):
            chunk_stop = min(chunk_start + chunk, stop)
            # the chunk's sparse offsets in one matrix: one subtraction per batch gives every level
            offs = np.stack([o[chunk_start:chunk_stop + 1] for o in sparse_offsets]) if sparse else None
            for lo in range(chunk_start, chunk_stop, batch_size):
                hi = min(lo + batch_size, chunk_stop)
                out: dict[str, Any] = {}
                for name, rest, width, vals in dense:  # every instance has width values (checked when parsed)
                    out[name] = vals[lo * width:hi * width].reshape((hi - lo, *rest))
                if sparse:
                    window = offs[:, lo - chunk_start:hi - chunk_start + 1]
                    levels = window - window[:, :1]  # each row is one slot's offsets from 0
                    firsts, lasts = window[:, 0].tolist(), window[:, -1].tolist()
                    for (name, vals), level, a, b in zip(sparse, levels, firsts, lasts):
                        # the level is the array row itself (the constructor would make a list
                        # of it: with check_lod, half of a CTR batch's feed time)
                        out[name] = LoDTensor._of(vals[a:b].reshape(-1, 1), [level])
                yield {s.name: out[s.name] for s in self.slots}


def _take_column(vals: np.ndarray, off: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One slot's values and offsets for the instances at ``index``."""
    lens = np.diff(off)
    if lens.size and lens[0] > 0 and (lens == lens[0]).all():  # fixed width (dense slots): rows
        width = int(lens[0])
        rows = np.take(vals[off[0]:off[-1]].reshape(-1, width), index, axis=0)
        return rows.reshape(-1), np.arange(len(index) + 1, dtype=np.int64) * width
    starts = off[index]
    lens = off[index + 1] - starts
    new_off = _offsets(lens)
    src = np.arange(int(new_off[-1]), dtype=np.int64) + np.repeat(starts - new_off[:-1], lens)
    return vals[src], new_off


def _dense_rest(slot: Slot) -> tuple[int, ...] | None:
    """Non-batch dims of a dense slot's feed (None for a sparse slot): the variable's
    shape without its -1 batch dim, or [width] when that shape does not say."""
    if not slot.is_dense:
        return None
    dims = tuple(int(d) for d in slot.shape)
    rest = dims[1:] if dims and dims[0] < 0 else dims
    width = 1
    for d in rest:
        width *= d
    return rest if rest and all(d > 0 for d in rest) and width == slot.dense_width else (slot.dense_width,)
