"""``mpi``: collectives through mpi4py, for jobs started with ``mpiexec``.

    mpiexec -n 4 python train.py     # get_backend("mpi") in each process

MPICH from PyPI works as root without flags: ``pip install mpi4py mpich``
(the ``mpi`` extra).  mpi4py is imported only here, when this backend is used.

Limits that come from MPI itself: a running MPI call cannot be interrupted, so
a blocking collective that passes its timeout raises ``CollectiveTimeoutError``
from the waiting caller while the call stays stuck (the group then counts as
broken); and when a process dies, ``mpiexec`` ends the whole job.
"""
from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from ...errors import ConfigError, DTypeError
from .._arrays import as_rows, row_bounds, work_buffer
from ..api import Backend, Deadline
from ..header import HEADER_BYTES, Header, check_headers, make_header

__all__ = ["MpiBackend"]


def _mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ConfigError("the mpi backend needs mpi4py and an MPI library: "
                          "pip install 'fleetkit[mpi]' (mpi4py + MPICH)") from exc
    return MPI


class MpiBackend(Backend):
    """Collectives on an MPI communicator (default: a duplicate of COMM_WORLD).

    Args:
        comm: an mpi4py communicator; it is duplicated so that these calls can
            never match the application's own MPI messages.
        timeout: default seconds per collective (see the module notes).
    """

    name = "mpi"

    def __init__(self, comm: Any = None, timeout: float | None = None):
        MPI = _mpi()
        comm = MPI.COMM_WORLD if comm is None else comm
        super().__init__(comm.Get_rank(), comm.Get_size(), timeout)
        if MPI.Query_thread() < MPI.THREAD_SERIALIZED:
            # Calls run on the backend's op thread, not on the thread that initialised MPI.
            raise ConfigError("the mpi backend needs MPI initialised with at least "
                              "MPI_THREAD_SERIALIZED (mpi4py's default is MULTIPLE)")
        self._MPI = MPI
        self._comm = comm.Dup()
        self._ops = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN, "prod": MPI.PROD}

    @classmethod
    def is_available(cls) -> bool:
        """True when mpi4py is installed."""
        return importlib.util.find_spec("mpi4py") is not None

    def _all_reduce(self, array: np.ndarray, op: str, deadline: Deadline) -> np.ndarray:
        """See base class."""
        self._exchange_headers(make_header(self._next_seq(), "all_reduce", array, op=op))
        work = work_buffer(array)
        if work.size:
            self._comm.Allreduce(self._MPI.IN_PLACE, [work, self._type(work)], op=self._op(op, work))
        return work

    def _all_gather(self, array: np.ndarray, deadline: Deadline) -> list[np.ndarray]:
        """See base class."""
        headers = self._exchange_headers(make_header(self._next_seq(), "all_gather", array))
        counts = [int(np.prod(h.shape, dtype=np.int64)) for h in headers]
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
        src = np.ascontiguousarray(array).reshape(-1)
        out = np.empty(sum(counts), dtype=src.dtype)
        if out.size:
            mpi_type = self._type(src)
            self._comm.Allgatherv([src, mpi_type], [out, counts, displs, mpi_type])
        return [out[d:d + c].reshape(h.shape) for d, c, h in zip(displs, counts, headers)]

    def _broadcast(self, array: np.ndarray, root: int, deadline: Deadline) -> np.ndarray:
        """See base class."""
        self._exchange_headers(make_header(self._next_seq(), "broadcast", array, root=root))
        work = np.ascontiguousarray(array) if self._rank == root else work_buffer(array)
        if work.size:
            self._comm.Bcast([work, self._type(work)], root=root)
        return array if self._rank == root else work

    def _reduce_scatter(self, array: np.ndarray, op: str, deadline: Deadline) -> np.ndarray:
        """See base class."""
        self._exchange_headers(make_header(self._next_seq(), "reduce_scatter", array, op=op))
        rows = as_rows(np.ascontiguousarray(array))
        row_size = int(np.prod(rows.shape[1:], dtype=np.int64))
        bounds = row_bounds(rows.shape[0], self._world_size)
        counts = [(b - a) * row_size for a, b in bounds]
        start, end = bounds[self._rank]
        out = np.empty((end - start,) + rows.shape[1:], dtype=rows.dtype)
        if rows.size:
            mpi_type = self._type(rows)
            self._comm.Reduce_scatter([rows, mpi_type], [out, mpi_type], recvcounts=counts,
                                     op=self._op(op, rows))
        return out

    def _barrier(self, deadline: Deadline) -> None:
        """See base class."""
        # The header all-gather already needs every rank: it is the barrier.
        self._exchange_headers(make_header(self._next_seq(), "barrier"))

    def _close(self) -> None:
        self._comm.Free()

    def _exchange_headers(self, header: Header) -> list[Header]:
        mine = np.frombuffer(header.pack(), dtype=np.uint8)
        everyone = np.empty((self._world_size, HEADER_BYTES), dtype=np.uint8)
        self._comm.Allgather([mine, self._MPI.BYTE], [everyone, self._MPI.BYTE])
        headers = [Header.unpack(row.tobytes(), source=f"rank {r}") for r, row in enumerate(everyone)]
        check_headers(headers)
        return headers

    def _validate(self, array: Any, coll: str, op: str = "") -> None:
        super()._validate(array, coll, op)
        self._type(array)
        if op in ("max", "min") and np.dtype(array.dtype).kind == "c":
            raise DTypeError(f"mpi backend: {coll}({op}) is not defined for {array.dtype}")

    def _op(self, op: str, array: np.ndarray) -> Any:
        if array.dtype == np.bool_:
            # MPI reduces C_BOOL only with logical ops; these match numpy's bool ufuncs.
            return self._MPI.LOR if op in ("sum", "max") else self._MPI.LAND
        return self._ops[op]

    def _type(self, array: np.ndarray) -> Any:
        # Predefined MPI types only: reductions are not defined on derived types.
        try:
            return self._MPI.Datatype.fromcode(np.dtype(array.dtype).char)
        except (ValueError, KeyError) as exc:
            raise DTypeError(f"mpi backend: MPI has no datatype for {array.dtype}") from exc
