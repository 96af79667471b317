"""Array backends: numpy on CPU, cupy on GPU.

This is the only module that imports cupy.  The import is attempted lazily and
its failure is kept, so asking for a GPU gives the real reason instead of a bare
ImportError deep inside a kernel.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ..errors import GPUUnavailableError

_cupy: ModuleType | None = None
_cupy_error: BaseException | None = None
_cupy_tried = False


def _load_cupy() -> ModuleType | None:
    global _cupy, _cupy_error, _cupy_tried
    if not _cupy_tried:
        _cupy_tried = True
        try:
            import cupy  # noqa: PLC0415  (optional dependency)

            cupy.cuda.runtime.getDeviceCount()
            _cupy = cupy
        except Exception as e:  # ImportError, CUDARuntimeError (no driver/device)
            _cupy_error = e
    return _cupy


def gpu_count() -> int:
    """Number of visible CUDA devices (0 when cupy or a driver is missing)."""
    cp = _load_cupy()
    return 0 if cp is None else int(cp.cuda.runtime.getDeviceCount())


def require_cupy() -> ModuleType:
    cp = _load_cupy()
    if cp is None:
        raise GPUUnavailableError(
            f"CUDAPlace needs cupy and a CUDA device (pip install 'fleetkit[gpu]'): {_cupy_error!r}")
    return cp


def get_array_module(*arrays: Any) -> ModuleType:
    """numpy or cupy, whichever owns the arrays (chainer's idiom)."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def scatter_add(out: Any, index: Any, values: Any) -> None:
    """``out[index] += values`` with repeated indices accumulated (numpy ``add.at`` / cupyx)."""
    if isinstance(out, np.ndarray):
        np.add.at(out, np.asarray(index), values)
    else:
        cp = require_cupy()
        if hasattr(cp.add, "at"):  # cupy >= 13; cupyx.scatter_add is deprecated there
            cp.add.at(out, cp.asarray(index), values)
        else:
            import cupyx  # noqa: PLC0415  (only reached with cupy arrays)
            cupyx.scatter_add(out, cp.asarray(index), values)


def to_numpy(a: Any) -> np.ndarray:
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy.asnumpy(a)
    return np.asarray(a)


class Place:
    """Where tensors live and kernels run."""

    xp: ModuleType = np

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(vars(self).items()))))


class CPUPlace(Place):
    def to_device(self, a: Any) -> Any:
        return to_numpy(a)

    def __repr__(self) -> str:
        return "CPUPlace"


class CUDAPlace(Place):
    def __init__(self, device_id: int = 0) -> None:
        self.device_id = int(device_id)

    @property  # type: ignore[override]
    def xp(self) -> ModuleType:
        return require_cupy()

    def to_device(self, a: Any) -> Any:
        cp = require_cupy()
        with cp.cuda.Device(self.device_id):
            return cp.asarray(a)

    def __repr__(self) -> str:
        return f"CUDAPlace({self.device_id})"


def is_compiled_with_cuda() -> bool:
    return gpu_count() > 0
