"""Small fluid 1.4 top-level helpers: place lists, ``name_scope``, ``LoDTensorArray``,
``create_random_int_lodtensor``, ``in_dygraph_mode``.

fleetkit runs one place per process and has no imperative mode, so several of these
have little to do; each says what it does here.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import numpy as np

from ..env import cpu_num
from ..errors import InvalidArgumentError
from .backend import CPUPlace, CUDAPlace, gpu_count
from .scope import LoDTensor, create_lod_tensor

__all__ = ["CUDAPinnedPlace", "LoDTensorArray", "cpu_places", "create_random_int_lodtensor", "cuda_pinned_places",
           "cuda_places", "in_dygraph_mode", "name_scope"]


class CUDAPinnedPlace(CPUPlace):
    """fluid's page-locked host memory: plain host memory here (a ``CPUPlace``)."""

    def __repr__(self) -> str:
        return "CUDAPinnedPlace"


def cpu_places(device_count: int | None = None) -> list[CPUPlace]:
    """``device_count`` CPU places (default ``CPU_NUM``, else 1); a program runs on one of them."""
    n = cpu_num() if device_count is None else int(device_count)
    if n < 1:
        raise InvalidArgumentError(f"cpu_places: device_count must be >= 1, got {n}")
    return [CPUPlace() for _ in range(n)]


def cuda_places(device_ids: Sequence[int] | None = None) -> list[CUDAPlace]:
    """The CUDA places of ``device_ids`` (default: every visible GPU)."""
    ids = list(range(gpu_count())) if device_ids is None else [int(i) for i in device_ids]
    return [CUDAPlace(i) for i in ids]


def cuda_pinned_places(device_count: int | None = None) -> list[CUDAPinnedPlace]:
    """``device_count`` pinned places (default ``CPU_NUM``, else 1)."""
    return [CUDAPinnedPlace() for _ in cpu_places(device_count)]


def in_dygraph_mode() -> bool:
    """Always False: fleetkit builds static programs only."""
    return False


@contextlib.contextmanager
def name_scope(prefix: str | None = None) -> Iterator[None]:
    """Accepted (fluid uses it to group ops in graph views); variable names are unchanged."""
    yield


class LoDTensorArray(list):
    """A list of LoDTensors (``fluid.LoDTensorArray``)."""

    def append(self, tensor: Any) -> None:  # noqa: D102  (list.append, type-checked)
        if not isinstance(tensor, (LoDTensor, np.ndarray)):
            raise InvalidArgumentError(f"LoDTensorArray.append: expected a LoDTensor, got {type(tensor).__name__}")
        super().append(tensor)


def create_random_int_lodtensor(recursive_seq_lens: Sequence[Sequence[int]], base_shape: Sequence[int],
                                place: Any, low: int, high: int) -> LoDTensor:
    """A LoDTensor of int64 values drawn uniformly from [low, high], rows given by the last level."""
    rows = int(sum(recursive_seq_lens[-1]))
    data = np.random.randint(int(low), int(high) + 1, size=[rows] + list(base_shape)).astype(np.int64)
    return create_lod_tensor(data, recursive_seq_lens, place)
