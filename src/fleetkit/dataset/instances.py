"""Parsed instances kept in columns, and their assembly into feed batches.

An ``InstanceStore`` holds, for each used slot, one flat array of values and
the offsets of every instance's values in it.  Shuffling, slicing and sending
instances are then a few vectorized gathers per slot instead of Python objects
per instance.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from .multislot import ParseResult, Slot

__all__ = ["InstanceStore"]


def _offsets(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=out[1:])
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
    def empty(cls, slots: Sequence[Slot]) -> "InstanceStore":
        return cls(slots, [np.zeros(0, s.dtype) for s in slots], [np.zeros(1, np.int64) for _ in slots])

    @classmethod
    def from_parsed(cls, slots: Sequence[Slot], parsed: ParseResult) -> "InstanceStore":
        return cls(slots, parsed.values, [_offsets(n) for n in parsed.lengths])

    @classmethod
    def concat(cls, slots: Sequence[Slot], parts: Sequence["InstanceStore"]) -> "InstanceStore":
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty(slots)
        if len(parts) == 1:
            return parts[0]
        values, offsets = [], []
        for k in range(len(slots)):
            values.append(np.concatenate([p.values[k] for p in parts]))
            offsets.append(_offsets(np.concatenate([np.diff(p.offsets[k]) for p in parts])))
        return cls(slots, values, offsets)

    def __len__(self) -> int:
        return len(self.offsets[0]) - 1 if self.offsets else 0

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.values) + sum(o.nbytes for o in self.offsets)

    def lengths(self, k: int) -> np.ndarray:
        return np.diff(self.offsets[k])

    def take(self, index: np.ndarray) -> "InstanceStore":
        """The instances at ``index`` (any order, repeats allowed), as a new store."""
        index = np.asarray(index, np.int64)
        values, offsets = [], []
        for vals, off in zip(self.values, self.offsets):
            starts = off[index]
            lens = off[index + 1] - starts
            new_off = _offsets(lens)
            total = int(new_off[-1])
            src = np.arange(total, dtype=np.int64) + np.repeat(starts - new_off[:-1], lens)
            values.append(vals[src])
            offsets.append(new_off)
        return InstanceStore(self.slots, values, offsets)

    def slice(self, start: int, stop: int) -> "InstanceStore":
        """Instances ``start..stop-1`` (views where possible)."""
        values, offsets = [], []
        for vals, off in zip(self.values, self.offsets):
            o = off[start:stop + 1]
            values.append(vals[o[0]:o[-1]])
            offsets.append(o - o[0])
        return InstanceStore(self.slots, values, offsets)

    def feed(self) -> dict[str, Any]:
        """This store as one feed dict: LoD tensors for sparse slots, dense arrays otherwise."""
        from ..core.scope import LoDTensor  # the core is below the dataset layer: fine to import
        n = len(self)
        out: dict[str, Any] = {}
        for slot, vals, off in zip(self.slots, self.values, self.offsets):
            if slot.is_dense:
                out[slot.name] = vals.reshape(_dense_shape(slot, n, vals.size))
            else:
                out[slot.name] = _lod_tensor(LoDTensor, vals.reshape(-1, 1), off)
        return out

    def batches(self, batch_size: int) -> Iterator[dict[str, Any]]:
        """Feed dicts of ``batch_size`` instances (the last one may be smaller)."""
        n = len(self)
        for start in range(0, n, batch_size):
            yield self.slice(start, min(start + batch_size, n)).feed()


def _lod_tensor(cls: Any, values: np.ndarray, offsets: np.ndarray) -> Any:
    """A LoDTensor without its constructor's per-offset ``int()`` loop: ``tolist()``
    already gives Python ints (measured: the constructor was 10% of parse time)."""
    t = cls.__new__(cls)
    t.values = values
    t._lod = [offsets.tolist()]
    return t


def _dense_shape(slot: Slot, n: int, size: int) -> tuple[int, ...]:
    """[batch] + the variable's non-batch dims (values were checked per line)."""
    dims = tuple(int(d) for d in slot.shape)
    if dims and dims[0] < 0:
        rest = dims[1:]
    else:
        rest = dims[1:] if dims and dims[0] == n and len(dims) > 1 else dims
    if int(np.prod(rest, dtype=np.int64)) * n != size or any(d < 0 for d in rest):
        return (n, size // max(n, 1))
    return (n,) + rest
