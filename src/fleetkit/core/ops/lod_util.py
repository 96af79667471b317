"""Host-side helpers shared by the LoD sequence kernels.

Offsets are small host arrays; index arrays derived from them are built with
numpy and moved to the kernel's array module once per call, so no kernel loops
over sequences or rows in Python.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from ..backend import scatter_add
from ..registry import KernelContext


def last_offsets(ctx: KernelContext, slot: str, nrows: int, op: str) -> np.ndarray:
    """The last LoD level of input ``slot`` as int64 offsets, checked against its ``nrows`` rows."""
    lod = ctx.lod(slot)
    name = ctx.ins[slot][0]
    if not lod:
        raise InvalidArgumentError(
            f"op '{op}': input '{name}' has no LoD; feed it as a LoDTensor with lod_level >= 1 "
            f"(fleetkit.create_lod_tensor or a (values, sequence_lengths) tuple)")
    return checked_offsets(lod[-1], nrows, op, name)


def checked_offsets(offsets: Any, nrows: int, op: str, name: str) -> np.ndarray:
    """``offsets`` as int64, or a clear error when they do not cover ``nrows`` rows."""
    off = np.asarray(offsets, dtype=np.int64).reshape(-1)
    if off.size == 0 or off[0] != 0 or off[-1] != nrows or (np.diff(off) < 0).any():
        shown = off.tolist() if off.size <= 12 else off[:6].tolist() + ["..."] + off[-5:].tolist()
        raise InvalidArgumentError(
            f"op '{op}': the LoD offsets {shown} of '{name}' do not fit its {nrows} rows "
            f"(they must start at 0, never decrease and end at {nrows})")
    return off


def seg_ids(off: np.ndarray) -> np.ndarray:
    """The sequence each row belongs to."""
    return np.repeat(np.arange(off.size - 1), np.diff(off))


def segment_sum(xp: Any, x2: Any, off: np.ndarray) -> Any:
    """Per-sequence sum of the rows of ``x2`` [T, D] -> [num_seqs, D] (empty sequences give 0)."""
    out = xp.zeros((off.size - 1,) + x2.shape[1:], dtype=x2.dtype)
    if not x2.shape[0]:
        return out
    if xp is np:  # reduceat over the non-empty sequences: much faster than add.at
        ne = np.diff(off) > 0
        out[ne] = np.add.reduceat(x2, off[:-1][ne], axis=0)
    else:
        scatter_add(out, xp.asarray(seg_ids(off)), x2)
    return out


def segment_max(xp: Any, x2: Any, off: np.ndarray) -> Any:
    """Per-sequence max of the rows of ``x2`` [T, D] -> [num_seqs, D] (empty sequences give -inf)."""
    lens = np.diff(off)
    out = xp.full((off.size - 1,) + x2.shape[1:], -np.inf, dtype=x2.dtype)
    ne = lens > 0
    if not ne.any():
        return out
    if xp is np:
        out[ne] = np.maximum.reduceat(x2, off[:-1][ne], axis=0)
        return out
    longest = int(lens.max())
    pos = np.arange(x2.shape[0]) - np.repeat(off[:-1], lens)
    padded = xp.full((off.size - 1, longest) + x2.shape[1:], -np.inf, dtype=x2.dtype)
    padded[xp.asarray(seg_ids(off)), xp.asarray(pos)] = x2
    return padded.max(axis=1)
