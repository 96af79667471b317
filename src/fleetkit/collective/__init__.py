"""Collective communication: one ``Backend`` interface, several transports.

    from fleetkit import collective
    backend = collective.get_backend("tcp")          # rendezvous from PADDLE_TRAINER_* env
    grad = backend.all_reduce(grad, op="sum")
    handle = backend.all_gather_async(x); parts = handle.wait(timeout=30)

Backends: ``local`` (threads in one process; the reference oracle), ``tcp``
(CPU, sockets, ring algorithms), ``mpi`` (mpi4py under mpiexec), ``nccl``
(cupy NCCL on GPUs).  Rendezvous stores are in ``fleetkit.collective.store``.
"""
from ..errors import CollectiveError, CollectiveMismatchError, CollectiveTimeoutError, PeerFailedError
from .api import Backend, Deadline, Work, available_backends, get_backend, register_backend
from .backends.local import LocalBackend, LocalGroup
from .constants import DEFAULT_TIMEOUT_S, REDUCE_OPS, default_timeout
from .store import FileStore, PrefixStore, Store, TCPStore, TCPStoreServer

__all__ = [
    "Backend", "CollectiveError", "CollectiveMismatchError", "CollectiveTimeoutError",
    "DEFAULT_TIMEOUT_S", "Deadline", "FileStore", "LocalBackend", "LocalGroup", "PeerFailedError",
    "PrefixStore", "REDUCE_OPS", "Store", "TCPStore", "TCPStoreServer", "Work", "available_backends",
    "default_timeout", "get_backend", "register_backend",
]
