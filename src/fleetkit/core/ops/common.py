"""Helpers shared by kernels."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def full(xp: Any, shape: Sequence[int], value: Any, dtype: Any) -> Any:
    """``xp.full(shape, value, dtype)``; on the host an empty array filled in place, which
    skips numpy's Python-level ``full`` wrapper (about half its cost on small arrays)."""
    if xp is np:
        out = np.empty(shape, dtype)
        out.fill(value)
        return out
    return xp.full(shape, value, dtype=dtype)


def unbroadcast(xp: Any, g: Any, shape: Sequence[int]) -> Any:
    """Sum ``g`` over the axes that broadcasting added/expanded to reach ``shape``."""
    shape = tuple(shape)
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def bcast_shape_y(x_shape: Sequence[int], y_shape: Sequence[int], axis: int) -> tuple[int, ...] | None:
    """Fluid broadcasting: Y matches a contiguous run of X's dims starting at ``axis``.

    Returns Y's shape padded with 1s to X's rank, or None when numpy
    broadcasting should be used as is (axis == -1 and ranks already aligned).
    """
    x_shape, y_shape = tuple(x_shape), tuple(y_shape)
    if len(y_shape) > len(x_shape) or x_shape == y_shape:
        return None
    # trailing 1s of Y are ignored by fluid (a [N,1] bias against [N] etc.)
    while len(y_shape) > 1 and y_shape[-1] == 1 and axis != -1 and axis + len(y_shape) > len(x_shape):
        y_shape = y_shape[:-1]
    if axis == -1:
        axis = len(x_shape) - len(y_shape)
    return (1,) * axis + y_shape + (1,) * (len(x_shape) - axis - len(y_shape))


def same_kind(dtype: Any) -> Any:
    return dtype
