"""Where a parameter's rows and a table's ids live: the one place for the placement rules.

- ``stable_hash`` / ``hash_name``: a name's shard, the same in every process (Python's
  ``hash`` is salted per process for strings, so nothing here uses it);
- ``slice_variable`` (and ``block_row_sections`` / ``slice_sizes``): Paddle 1.4's rule for
  cutting a dense parameter into row blocks, one per pserver at most;
- ``RoundRobin`` / ``HashName``: which pserver each block goes to;
- ``split_rows``: a dense gradient (or a SelectedRows one) cut into those blocks;
- ``shard_of`` / ``split_ids`` / ``shard_by_id``: a distributed table's rows by ``id % n``.

Pure numpy, no transport: the transpiler, the trainer's send/prefetch kernels and the
tests all ask this module.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..core.scope import SelectedRows
from ..errors import InvalidArgumentError

__all__ = ["MIN_BLOCK_SIZE", "HashName", "PSDispatcher", "RoundRobin", "VarBlock", "block_row_sections",
           "hash_name", "merge_rows", "shard_by_id", "shard_of", "slice_sizes", "slice_variable", "split_ids",
           "split_rows", "stable_hash"]

#: fluid 1.4's smallest block (elements) worth placing on a pserver of its own
MIN_BLOCK_SIZE = 8192


# ------------------------------------------------------------------ hashing
def stable_hash(name: str) -> int:
    """A process-independent 32-bit hash of a name (CRC-32 of its UTF-8 bytes)."""
    return zlib.crc32(name.encode("utf-8"))


def hash_name(name: str, n: int) -> int:
    """The shard (0..n-1) that ``name`` maps to; the HashName dispatcher's rule."""
    if n < 1:
        raise InvalidArgumentError(f"hash_name: need at least one shard, got n={n}")
    return stable_hash(name) % n


# ------------------------------------------------------------------ row blocks
@dataclass(frozen=True)
class VarBlock:
    """Rows [row_offset, row_offset + rows) of variable ``varname``; ``block_name`` is what
    the pserver calls it (the variable's own name when it is not split)."""

    varname: str
    block_id: int
    row_offset: int
    rows: int
    block_name: str
    shape: tuple[int, ...]

    def __str__(self) -> str:  # Paddle's "varname:block_id:size" encoding
        return f"{self.varname}:{self.block_id}:{self.rows * _row_numel(self.shape)}"


def _row_numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape[1:])) if len(shape) > 1 else 1


def block_row_sections(shape: Sequence[int], slice_count: int, min_block_size: int = MIN_BLOCK_SIZE) -> list[int]:
    """Row counts of the blocks a variable of ``shape`` is cut into (Paddle 1.4's rule).

    split_count = min(slice_count, max(1, numel // min_block_size)); block size =
    ceil(numel / split_count) rounded up to whole rows; the last block takes the rest.
    """
    shape = tuple(int(d) for d in shape)
    if not shape or any(d <= 0 for d in shape):
        raise InvalidArgumentError(f"block_row_sections: needs a known positive shape, got {list(shape)}")
    numel = int(math.prod(shape))
    split_count = min(max(int(slice_count), 1), max(1, numel // max(int(min_block_size), 1)))
    block_rows = math.ceil(math.ceil(numel / split_count) / _row_numel(shape))
    return [min(block_rows, shape[0] - i * block_rows) for i in range(math.ceil(shape[0] / block_rows))]


def slice_sizes(shape: Sequence[int], slice_count: int, min_block_size: int = MIN_BLOCK_SIZE) -> list[int]:
    """Element counts of the blocks of ``block_row_sections``."""
    return [rows * _row_numel(shape) for rows in block_row_sections(shape, slice_count, min_block_size)]


def slice_variable(var: Any, slice_count: int, min_block_size: int = MIN_BLOCK_SIZE) -> list[VarBlock]:
    """Split ``var`` (a Variable: name, shape) into at most ``slice_count`` row blocks of
    >= ``min_block_size`` elements; a var in one block keeps its own name."""
    shape = tuple(int(d) for d in var.shape)
    if not shape or any(d <= 0 for d in shape):
        raise InvalidArgumentError(f"slice_variable: variable '{var.name}' needs a known positive shape, "
                                   f"got {list(shape)}")
    sections = block_row_sections(shape, slice_count, min_block_size)
    blocks, offset = [], 0
    for i, rows in enumerate(sections):
        name = var.name if len(sections) == 1 else f"{var.name}.block{i}"
        blocks.append(VarBlock(var.name, i, offset, rows, name, (rows,) + shape[1:]))
        offset += rows
    return blocks


# ------------------------------------------------------------------ dispatchers
class PSDispatcher:
    """Assigns variable blocks to pserver endpoints."""

    def __init__(self, pserver_endpoints: Sequence[str]) -> None:
        if not pserver_endpoints:
            raise InvalidArgumentError(f"{type(self).__name__}: no pserver endpoints given")
        self._eps = list(pserver_endpoints)
        self._step = 0

    @property
    def eps(self) -> list[str]:
        return list(self._eps)

    def reset(self) -> None:
        self._step = 0

    def dispatch(self, varlist: Sequence[Any]) -> list[str]:
        raise NotImplementedError


class RoundRobin(PSDispatcher):
    """Block k goes to endpoint k mod n (in the order given)."""

    def dispatch(self, varlist: Sequence[Any]) -> list[str]:
        out = []
        for _ in varlist:
            out.append(self._eps[self._step % len(self._eps)])
            self._step += 1
        return out


class HashName(PSDispatcher):
    """Block goes to endpoint stable_hash(block name) mod n."""

    def dispatch(self, varlist: Sequence[Any]) -> list[str]:
        return [self._eps[hash_name(_block_name_of(v), len(self._eps))] for v in varlist]


def _block_name_of(v: Any) -> str:
    return v.block_name if isinstance(v, VarBlock) else getattr(v, "name", str(v))


# ------------------------------------------------------------------ cutting values
def split_rows(value: Any, sections: Sequence[int], what: str = "value") -> list[Any]:
    """Cut a dense array or a SelectedRows on axis 0 into blocks of ``sections`` rows.

    Dense blocks are views; SelectedRows rows are rebased to each block's first row (the
    pserver block only knows its own rows).  One section: the value itself, unchecked
    (the pserver checks the shape of what it receives).
    """
    if len(sections) <= 1:
        return [value]
    bounds = np.cumsum([0] + [int(s) for s in sections])
    if isinstance(value, SelectedRows):
        out = []
        rows = np.asarray(value.rows, dtype=np.int64)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            mask = (rows >= lo) & (rows < hi)
            out.append(SelectedRows(rows[mask] - lo, value.values[mask], int(hi - lo)))
        return out
    if value.shape[0] != bounds[-1]:
        raise InvalidArgumentError(f"split_rows: '{what}' has {value.shape[0]} rows but its blocks "
                                   f"{list(sections)} cover {int(bounds[-1])}")
    return [value[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]


def shard_of(ids: np.ndarray, n: int) -> np.ndarray:
    """Shard of each id: ``id % n`` (the distributed lookup table's rule)."""
    if n < 1:
        raise InvalidArgumentError(f"shard_of: need at least one shard, got n={n}")
    return np.mod(np.asarray(ids, dtype=np.int64), n)


def split_ids(ids: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split ids by shard: for shard s, (positions in ``ids``, the ids themselves).

    Stable (positions ascending within a shard), vectorized.  ``merge_rows`` undoes it.
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    shards = shard_of(ids, n)
    order = np.argsort(shards, kind="stable")
    bounds = np.searchsorted(shards[order], np.arange(n + 1))
    return [(order[bounds[s]:bounds[s + 1]], ids[order[bounds[s]:bounds[s + 1]]]) for s in range(n)]


def merge_rows(parts: Sequence[tuple[np.ndarray, np.ndarray]], total: int) -> np.ndarray:
    """Put per-shard row arrays back in the original order.

    ``parts`` holds (positions, rows) per shard, as from ``split_ids`` plus the rows
    each shard returned; the result has ``total`` rows.
    """
    parts = [(np.asarray(p), np.asarray(r)) for p, r in parts]
    sample = next((r for _, r in parts if r.size), parts[0][1] if parts else np.empty((0, 0)))
    out = np.empty((total,) + tuple(sample.shape[1:]), dtype=sample.dtype)
    for pos, rows in parts:
        if len(pos) != len(rows):
            raise InvalidArgumentError(f"merge_rows: {len(pos)} positions but {len(rows)} rows")
        out[pos] = rows
    return out


def shard_by_id(value: Any, n: int, what: str = "value") -> list[SelectedRows]:
    """A distributed table's SelectedRows gradient, split by ``row % n`` (global row ids
    kept).  Every shard is returned, empty ones too, so each pserver hears from every
    trainer every round."""
    if not isinstance(value, SelectedRows):
        raise InvalidArgumentError(f"send: the gradient '{what}' of a distributed table must be SelectedRows, "
                                   f"got {type(value).__name__}")
    merged = value.merged()
    rows = np.asarray(merged.rows, dtype=np.int64)
    shard = shard_of(rows, n)
    return [SelectedRows(rows[shard == p], merged.values[shard == p], merged.height) for p in range(n)]
