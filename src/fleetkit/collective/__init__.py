"""Collective communication: one ``Backend`` interface, several transports.

    from fleetkit import collective
    backend = collective.get_backend("tcp")          # rendezvous from PADDLE_TRAINER_* env
    grad = backend.all_reduce(grad, op="sum")
    handle = backend.all_gather_async(x); parts = handle.wait(timeout=30)

Backends: ``local`` (threads in one process; the reference oracle), ``tcp``
(CPU, sockets, ring algorithms), ``mpi`` (mpi4py under mpiexec), ``nccl``
(cupy NCCL on GPUs).  Rendezvous stores are in ``fleetkit.collective.store``.

Plain API on this process's group (``groups.py``)::

    collective.init_parallel_env()           # tcp from PADDLE_TRAINER_ENDPOINTS / PADDLE_TRAINER_ID
    collective.all_reduce(array, op="sum")   # also all_gather, broadcast, reduce_scatter, barrier

Importing this package also registers the ``c_*`` program ops (``ops.py``).
"""
from ..errors import CollectiveError, CollectiveMismatchError, CollectiveTimeoutError, PeerFailedError
from .api import Backend, Deadline, Work, available_backends, get_backend, register_backend
from .backends.local import LocalBackend, LocalGroup
from .constants import DEFAULT_TIMEOUT_S, REDUCE_OPS, default_timeout
from .groups import (all_gather, all_reduce, barrier, broadcast, destroy_group, get_group, get_rank,
                     get_world_size, init_parallel_env, is_initialized, reduce_scatter, set_group,
                     set_group_factory)
from . import ops  # noqa: F401,E402  (registers the c_* ops)
from .dgc import DGCMomentumOptimizer  # noqa: E402  (registers the dgc ops)
from .store import FileStore, PrefixStore, Store, TCPStore, TCPStoreServer

__all__ = [
    "Backend", "CollectiveError", "CollectiveMismatchError", "CollectiveTimeoutError",
    "DEFAULT_TIMEOUT_S", "Deadline", "FileStore", "LocalBackend", "LocalGroup", "PeerFailedError",
    "PrefixStore", "REDUCE_OPS", "Store", "TCPStore", "TCPStoreServer", "Work", "available_backends",
    "default_timeout", "get_backend", "register_backend",
    "all_gather", "all_reduce", "barrier", "broadcast", "destroy_group", "get_group", "get_rank",
    "get_world_size", "init_parallel_env", "is_initialized", "reduce_scatter", "set_group",
    "set_group_factory", "DGCMomentumOptimizer",
]
