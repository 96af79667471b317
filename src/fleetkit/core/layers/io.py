"""Input layers."""
from __future__ import annotations

from typing import Any, Sequence

from ..framework import Variable, default_main_program

__all__ = ["data"]


def data(name: str, shape: Sequence[int], append_batch_size: bool = True, dtype: Any = "float32",
         lod_level: int = 0, type: str = "lod_tensor", stop_gradient: bool = True) -> Variable:
    """Declare a fed input.  A -1 (batch) dim is prepended unless ``shape`` already has one."""
    shape = [-1 if d is None else int(d) for d in shape]
    if any(d < 0 for d in shape):
        append_batch_size = False
    if append_batch_size:
        shape = [-1] + shape
    return default_main_program().global_block().create_var(
        name=name, shape=shape, dtype=dtype, lod_level=lod_level, type=type,
        stop_gradient=stop_gradient, is_data=True)
