"""Per-process communication groups and the plain Python collective API.

Programs name their group by ``ring_id`` (an op attribute, as in fluid's ``c_*``
ops); this module maps a ring id to a ``Backend`` of this process.  A group is
either set explicitly (``set_group``), created from the environment
(``init_parallel_env``), or created on first use from a factory that fleet
registers (so ``exe.run(startup)`` works without an explicit setup call).

    import fleetkit.collective as col
    col.init_parallel_env()                  # tcp, from PADDLE_TRAINER_ENDPOINTS / _ID
    total = col.all_reduce(np.ones(3))       # every rank gets the sum
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError, InvalidArgumentError
from .api import Backend, get_backend

__all__ = ["all_gather", "all_reduce", "barrier", "broadcast", "destroy_group", "get_group", "get_rank",
           "get_world_size", "init_parallel_env", "is_initialized", "reduce_scatter", "set_group",
           "set_group_factory"]

_GROUPS: dict[int, Backend] = {}
_FACTORIES: dict[int, Callable[[], Backend]] = {}
# Creating a group is a rendezvous (seconds); the lock keeps two threads from doing it twice.
_LOCK = threading.RLock()


def set_group(backend: Backend, ring_id: int = 0) -> Backend:
    """Make ``backend`` the group of ``ring_id`` in this process (replacing none)."""
    if not isinstance(backend, Backend):
        raise InvalidArgumentError(f"set_group: expected a collective Backend, got {type(backend).__name__}")
    with _LOCK:
        old = _GROUPS.get(ring_id)
        if old is not None and old is not backend:
            raise InvalidArgumentError(
                f"ring {ring_id} already has a group ({old!r}); call destroy_group({ring_id}) first")
        _GROUPS[ring_id] = backend
    return backend


def set_group_factory(factory: Callable[[], Backend] | None, ring_id: int = 0) -> None:
    """Create ring ``ring_id``'s group with ``factory()`` when it is first needed
    (None removes the factory).  An existing group is kept."""
    with _LOCK:
        if factory is None:
            _FACTORIES.pop(ring_id, None)
        else:
            _FACTORIES[ring_id] = factory


def is_initialized(ring_id: int = 0) -> bool:
    """Whether ring ``ring_id`` has a group already (a factory alone does not count)."""
    return ring_id in _GROUPS


def get_group(ring_id: int = 0) -> Backend:
    """The backend of ring ``ring_id``, created from its factory on first use.

    Raises:
        ConfigError: no group and no factory for that ring.
    """
    group = _GROUPS.get(ring_id)
    if group is not None:
        return group
    with _LOCK:
        group = _GROUPS.get(ring_id)
        if group is None:
            factory = _FACTORIES.get(ring_id)
            if factory is None:
                raise ConfigError(
                    f"no collective group for ring_id {ring_id} in this process: call "
                    f"fleetkit.collective.init_parallel_env() (or fleet.init(...) with a collective role "
                    f"maker) before running collective ops")
            group = _GROUPS[ring_id] = factory()
        return group


def destroy_group(ring_id: int | None = None) -> None:
    """Close and forget ring ``ring_id``'s group (all rings when None); factories stay."""
    with _LOCK:
        rings = list(_GROUPS) if ring_id is None else [ring_id]
        groups = [_GROUPS.pop(r) for r in rings if r in _GROUPS]
    for group in groups:
        group.close()


def init_parallel_env(backend: str = "tcp", ring_id: int = 0, timeout: float | None = None,
                      **kwargs: Any) -> Backend:
    """Create this process's group for ``ring_id`` and return it.

    ``tcp`` reads ``PADDLE_TRAINER_ENDPOINTS`` and ``PADDLE_TRAINER_ID`` (rank r
    listens on endpoint r); ``mpi`` uses ``MPI.COMM_WORLD`` (run under
    ``mpiexec``); other keyword arguments go to the backend's constructor.
    Returns the existing group when the ring already has one.
    """
    with _LOCK:
        if ring_id in _GROUPS:
            return _GROUPS[ring_id]
        group = _GROUPS[ring_id] = get_backend(backend, timeout=timeout, **kwargs)
        return group


def get_rank(ring_id: int = 0) -> int:
    """This process's rank in ring ``ring_id``."""
    return get_group(ring_id).rank


def get_world_size(ring_id: int = 0) -> int:
    """Number of processes in ring ``ring_id``."""
    return get_group(ring_id).world_size


def all_reduce(array: Any, op: str = "sum", ring_id: int = 0, timeout: float | None = None) -> Any:
    """Reduce ``array`` element-wise over the ring (``op``: sum, max, min, prod); in place when possible."""
    return get_group(ring_id).all_reduce(array, op=op, timeout=timeout)


def all_gather(array: Any, ring_id: int = 0, timeout: float | None = None) -> list[Any]:
    """Every rank's ``array`` in rank order (first dims may differ)."""
    return get_group(ring_id).all_gather(array, timeout=timeout)


def broadcast(array: Any, root: int = 0, ring_id: int = 0, timeout: float | None = None) -> Any:
    """``root``'s array on every rank (in place when possible)."""
    return get_group(ring_id).broadcast(array, root=root, timeout=timeout)


def reduce_scatter(array: Any, op: str = "sum", ring_id: int = 0, timeout: float | None = None) -> Any:
    """Reduce over the ring and return this rank's block of rows (``numpy.array_split`` blocks)."""
    return get_group(ring_id).reduce_scatter(array, op=op, timeout=timeout)


def barrier(ring_id: int = 0, timeout: float | None = None) -> None:
    """Return once every rank of the ring entered the barrier."""
    get_group(ring_id).barrier(timeout=timeout)
