"""Array helpers shared by the CPU backends (in-place rules, row splits)."""
from __future__ import annotations

import numpy as np


def in_place_ok(array: np.ndarray) -> bool:
    """Whether results can be written straight into the caller's array."""
    return isinstance(array, np.ndarray) and array.flags.c_contiguous and array.flags.writeable


def work_buffer(array: np.ndarray) -> np.ndarray:
    """The caller's array when writable in place, else a C-contiguous copy."""
    return array if in_place_ok(array) else np.array(array, order="C", copy=True)


def row_bounds(nrows: int, parts: int) -> list[tuple[int, int]]:
    """Row ranges of ``numpy.array_split(x, parts)``: the first ``nrows % parts`` get one more."""
    q, rem = divmod(nrows, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + q + (1 if i < rem else 0)
        bounds.append((start, end))
        start = end
    return bounds


def as_rows(array: np.ndarray) -> np.ndarray:
    """View a 0-d array as one row, so reduce_scatter splits every array by rows."""
    return array.reshape(1) if array.ndim == 0 else array
