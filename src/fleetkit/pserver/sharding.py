"""Stable hashing, id sharding and row-block slicing (pure numpy, no transport).

Everything here must give the same answer in every process of a job, so nothing
uses Python's ``hash`` (salted per process for strings).
"""
from __future__ import annotations

import math
import zlib
from typing import Sequence

import numpy as np

from ..errors import InvalidArgumentError

__all__ = ["stable_hash", "hash_name", "shard_of", "split_ids", "merge_rows",
           "slice_sizes", "block_row_sections", "split_rows"]


def stable_hash(name: str) -> int:
    """A process-independent 32-bit hash of a name (CRC-32 of its UTF-8 bytes)."""
    return zlib.crc32(name.encode("utf-8"))


def hash_name(name: str, n: int) -> int:
    """The shard (0..n-1) that ``name`` maps to; the HashName dispatcher's rule."""
    if n < 1:
        raise InvalidArgumentError(f"hash_name: need at least one shard, got n={n}")
    return stable_hash(name) % n


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


def slice_sizes(shape: Sequence[int], slice_count: int, min_block_size: int = 8192) -> list[int]:
    """Element counts of the blocks a variable of ``shape`` is cut into.

    At most ``slice_count`` blocks, each at least ``min_block_size`` elements (except
    when the variable is smaller), block boundaries on whole rows (multiples of
    ``prod(shape[1:])``); the last block takes the remainder.
    """
    numel = math.prod(shape)
    if numel <= 0:
        return [max(numel, 0)]
    count = min(max(slice_count, 1), max(1, numel // max(min_block_size, 1)))
    block = math.ceil(numel / count)
    row = math.prod(shape[1:]) if len(shape) >= 2 else 1
    block = math.ceil(block / row) * row
    count = math.ceil(numel / block)
    return [min(block, numel - i * block) for i in range(count)]


def block_row_sections(shape: Sequence[int], slice_count: int, min_block_size: int = 8192) -> list[int]:
    """Row counts of the blocks of ``slice_sizes`` (what ``split``/``concat`` on axis 0 use)."""
    row = math.prod(shape[1:]) if len(shape) >= 2 else 1
    return [n // row for n in slice_sizes(shape, slice_count, min_block_size)]


def split_rows(array: np.ndarray, sections: Sequence[int]) -> list[np.ndarray]:
    """Views of ``array`` cut on axis 0 into blocks of ``sections`` rows."""
    if sum(sections) != array.shape[0]:
        raise InvalidArgumentError(f"split_rows: sections {list(sections)} do not add up to "
                                   f"{array.shape[0]} rows")
    return np.split(array, np.cumsum(sections)[:-1], axis=0)
