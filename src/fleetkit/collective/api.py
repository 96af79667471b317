"""The collective ``Backend`` interface, its ``Work`` handle and the backend registry.

Every backend (``local``, ``tcp``, ``mpi``, ``nccl``) implements five
collectives.  Each exists twice: ``all_reduce(x)`` blocks and returns the
result; ``all_reduce_async(x)`` returns a ``Work`` handle at once and
``handle.wait(timeout)`` returns the same result.  All calls of one backend run
in issue order on one background "op thread", which is what keeps every rank's
sequence of collectives in the same order even when async calls are mixed
with blocking ones.

Failures are ``fleetkit.errors`` classes: ``CollectiveTimeoutError`` and
``PeerFailedError`` (retryable: the group is broken, build a new one) and
``CollectiveMismatchError`` (permanent: ranks called different things; the
group stays usable because no data was exchanged).
"""
from __future__ import annotations

import abc
import importlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..core.backend import get_array_module, to_numpy
from ..errors import (CollectiveError, CollectiveMismatchError, CollectiveTimeoutError,
                      InvalidArgumentError, NotFoundError, seconds_text)
from .constants import REDUCE_OPS, WAIT_GRACE_S, default_timeout
from .header import check_array

__all__ = ["Backend", "Deadline", "Work", "available_backends", "get_backend", "register_backend"]


class Deadline:
    """A point in time that several blocking steps of one operation share."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.end = time.monotonic() + self.seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.end


class Work:
    """Handle of an asynchronous collective; ``wait()`` gives its result."""

    def __init__(self, description: str):
        self.description = description
        self._done = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    def is_completed(self) -> bool:
        """True once the operation finished (successfully or not)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the operation ends and return its result.

        Args:
            timeout: seconds to wait; None waits for the operation itself, which
                is bounded by the timeout it was started with.

        Raises:
            CollectiveTimeoutError: ``timeout`` passed first (the op keeps running).
            CollectiveError: the operation failed (re-raised here).
        """
        if not self._done.wait(timeout):
            raise CollectiveTimeoutError(
                f"{self.description} still running after waiting {seconds_text(timeout)} s")
        if self._error is not None:
            raise self._error
        return self._result

    def _finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        self._done.set()


class Backend(abc.ABC):
    """A process group that runs collectives; one object per rank.

    Subclasses implement the ``_all_reduce``... hooks, which run on the op
    thread and receive a ``Deadline``; they raise ``CollectiveTimeoutError``
    when it passes and ``PeerFailedError`` naming the rank (and endpoint) that
    died.  Arrays are numpy arrays (cupy for ``nccl``).  Results are written
    into the caller's array when it is writeable and C-contiguous.
    """

    #: Registry name of the backend class.
    name: str = ""
    #: Whether the backend moves GPU (cupy) arrays itself.  A host backend given a GPU
    #: array copies it down for the transfer and the result back up (``_on_host``), so
    #: tcp, mpi and local groups also serve trainers on CUDAPlace.
    device_arrays: bool = False

    def __init__(self, rank: int, world_size: int, timeout: float | None = None):
        if world_size < 1 or not 0 <= rank < world_size:
            raise InvalidArgumentError(f"bad rank {rank} for world_size {world_size}")
        self._rank, self._world_size = int(rank), int(world_size)
        self._timeout = default_timeout() if timeout is None else float(timeout)
        if not self._timeout > 0:
            raise InvalidArgumentError(f"timeout must be > 0 seconds, got {timeout}")
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._broken: BaseException | None = None
        self._seq = 0

    @property
    def rank(self) -> int:
        """This process's rank, 0..world_size-1."""
        return self._rank

    @property
    def world_size(self) -> int:
        """Number of ranks in the group."""
        return self._world_size

    @property
    def timeout(self) -> float:
        """Default timeout (seconds) of each collective."""
        return self._timeout

    @classmethod
    def is_available(cls) -> bool:
        """Whether this backend's dependencies (mpi4py, cupy, a GPU) are present."""
        return True

    # ---- public API: blocking -------------------------------------------------------------

    def all_reduce(self, array: Any, op: str = "sum", timeout: float | None = None) -> Any:
        """Element-wise reduce ``array`` over all ranks; every rank gets the result.

        Args:
            array: same shape and dtype on every rank.
            op: "sum", "max", "min" or "prod".
            timeout: seconds (None: the backend's default).
        Returns:
            The reduced array (``array`` itself when it could be written in place).
        """
        return self.wait_for(self.all_reduce_async(array, op, timeout), timeout)

    def all_gather(self, array: Any, timeout: float | None = None) -> list[Any]:
        """Every rank's ``array``, in rank order.  First dims may differ between ranks."""
        return self.wait_for(self.all_gather_async(array, timeout), timeout)

    def broadcast(self, array: Any, root: int = 0, timeout: float | None = None) -> Any:
        """Copy ``root``'s array to every rank (in place where possible) and return it."""
        return self.wait_for(self.broadcast_async(array, root, timeout), timeout)

    def reduce_scatter(self, array: Any, op: str = "sum", timeout: float | None = None) -> Any:
        """Reduce like ``all_reduce`` and return only this rank's block of rows.

        The result is split along the first dimension as ``numpy.array_split``
        does: rank ``r`` gets rows ``[start_r, end_r)``, the first
        ``len % world_size`` ranks one row more.  0-d arrays count as one row.
        """
        return self.wait_for(self.reduce_scatter_async(array, op, timeout), timeout)

    def barrier(self, timeout: float | None = None) -> None:
        """Return once every rank has entered the barrier."""
        self.wait_for(self.barrier_async(timeout), timeout)

    # ---- public API: asynchronous ---------------------------------------------------------

    def all_reduce_async(self, array: Any, op: str = "sum", timeout: float | None = None) -> Work:
        """Start ``all_reduce``; ``wait()`` on the handle returns its result."""
        op = _check_op(op)
        self._validate(array, "all_reduce", op)
        return self._submit("all_reduce", self._on_host(array, lambda a, d: self._all_reduce(a, op, d)), timeout)

    def all_gather_async(self, array: Any, timeout: float | None = None) -> Work:
        """Start ``all_gather``; ``wait()`` returns the list of arrays."""
        self._validate(array, "all_gather")
        return self._submit("all_gather", self._on_host(array, self._all_gather), timeout)

    def broadcast_async(self, array: Any, root: int = 0, timeout: float | None = None) -> Work:
        """Start ``broadcast``; ``wait()`` returns the broadcast array."""
        self._validate(array, "broadcast")
        if not 0 <= root < self._world_size:
            raise InvalidArgumentError(f"broadcast root {root} outside 0..{self._world_size - 1}")
        return self._submit("broadcast", self._on_host(array, lambda a, d: self._broadcast(a, int(root), d)),
                            timeout)

    def reduce_scatter_async(self, array: Any, op: str = "sum", timeout: float | None = None) -> Work:
        """Start ``reduce_scatter``; ``wait()`` returns this rank's block."""
        op = _check_op(op)
        self._validate(array, "reduce_scatter", op)
        return self._submit("reduce_scatter", self._on_host(array, lambda a, d: self._reduce_scatter(a, op, d)),
                            timeout)

    def barrier_async(self, timeout: float | None = None) -> Work:
        """Start ``barrier``; ``wait()`` returns None once all ranks arrived."""
        return self._submit("barrier", self._barrier, timeout)

    def close(self) -> None:
        """Finish queued operations, then release sockets, threads and communicators."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(self._timeout + WAIT_GRACE_S)
        self._close()

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} rank {self._rank}/{self._world_size}>"

    # ---- hooks for subclasses -------------------------------------------------------------

    @abc.abstractmethod
    def _all_reduce(self, array: Any, op: str, deadline: Deadline) -> Any:
        """Run on the op thread.  See ``all_reduce``."""

    @abc.abstractmethod
    def _all_gather(self, array: Any, deadline: Deadline) -> list[Any]:
        """Run on the op thread.  See ``all_gather``."""

    @abc.abstractmethod
    def _broadcast(self, array: Any, root: int, deadline: Deadline) -> Any:
        """Run on the op thread.  See ``broadcast``."""

    @abc.abstractmethod
    def _reduce_scatter(self, array: Any, op: str, deadline: Deadline) -> Any:
        """Run on the op thread.  See ``reduce_scatter``."""

    @abc.abstractmethod
    def _barrier(self, deadline: Deadline) -> None:
        """Run on the op thread.  See ``barrier``."""

    def _on_host(self, array: Any, run: Callable[[Any, Deadline], Any]) -> Callable[[Deadline], Any]:
        """``run(array, deadline)`` for the op thread.  A GPU array given to a host backend
        is copied down, and the result copied back to the GPU: into ``array`` itself when
        shape and dtype allow (the in-place contract), a list element-wise (all_gather)."""
        xp = get_array_module(array)
        if xp is np or self.device_arrays:
            return lambda d: run(array, d)

        def staged(deadline: Deadline) -> Any:
            result = run(to_numpy(array), deadline)
            with array.device:  # the op thread's current device may be another one
                if isinstance(result, list):
                    return [xp.asarray(r) for r in result]
                if result.shape == array.shape and result.dtype == array.dtype:
                    array[...] = xp.asarray(result)
                    return array
                return xp.asarray(result)
        return staged

    def _validate(self, array: Any, coll: str, op: str = "") -> None:
        """Reject, at call time, arrays this backend cannot move (extend in subclasses)."""
        check_array(array, coll)

    def _close(self) -> None:
        """Release resources; called once, after the op thread stopped."""

    def _on_broken(self, error: BaseException) -> None:
        """Called once when an op failed in a way that leaves the group unusable
        (e.g. tell the peers and close sockets so that they fail fast too)."""

    def _next_seq(self) -> int:
        """Sequence number of the next collective (op thread only)."""
        self._seq += 1
        return self._seq

    # ---- machinery --------------------------------------------------------------------------

    def _submit(self, what: str, fn: Callable[[Deadline], Any], timeout: float | None) -> Work:
        seconds = self._timeout if timeout is None else float(timeout)
        if not seconds > 0:
            raise InvalidArgumentError(f"{what}: timeout must be > 0 seconds, got {timeout}")
        work = Work(f"{what} on rank {self._rank}")
        with self._lock:
            if self._closed:
                raise CollectiveError(f"{what}: backend of rank {self._rank} is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._op_loop, daemon=True,
                                                name=f"fleetkit-{self.name}-ops-{self._rank}")
                self._thread.start()
            self._queue.put((work, fn, seconds))
        return work

    def wait_for(self, work: Work, timeout: float | None) -> Any:
        """The result of a started collective (``timeout`` None: the backend's default).

        A wait that outlives the op's deadline marks the backend broken."""
        # The op enforces its own deadline; the grace only matters for backends
        # that cannot interrupt a running call (MPI), which then count as broken.
        limit = (self._timeout if timeout is None else float(timeout)) + WAIT_GRACE_S
        try:
            return work.wait(limit)
        except CollectiveTimeoutError as exc:
            if not work.is_completed():
                self._mark_broken(exc)
            raise

    def _op_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            work, fn, seconds = item
            if self._broken is not None:
                work._finish(error=_broken_error(self._broken))
                continue
            try:
                work._finish(fn(Deadline(seconds)))
            except CollectiveMismatchError as exc:
                work._finish(error=exc)  # nothing moved: the group is still usable
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                self._mark_broken(exc)
                work._finish(error=exc)

    def _mark_broken(self, error: BaseException) -> None:
        with self._lock:
            if self._broken is not None:
                return
            self._broken = error
        self._on_broken(error)


def _broken_error(cause: BaseException) -> BaseException:
    """A fresh error of the same family for calls made after the group broke."""
    message = f"the group is unusable after an earlier failure: {cause}"
    kind = type(cause) if isinstance(cause, CollectiveError) else CollectiveError
    try:
        error = kind(message)
    except TypeError:
        error = CollectiveError(message)
    for attr in ("rank", "endpoint"):
        if hasattr(cause, attr):
            setattr(error, attr, getattr(cause, attr))
    return error


def _check_op(op: str) -> str:
    if op not in REDUCE_OPS:
        raise InvalidArgumentError(f"unknown reduce op {op!r}; expected one of {', '.join(REDUCE_OPS)}")
    return op


#: numpy ufunc of each reduce op (used by the CPU backends).
UFUNCS: dict[str, np.ufunc] = {"sum": np.add, "max": np.maximum, "min": np.minimum,
                               "prod": np.multiply}

# ---- registry ---------------------------------------------------------------------------------

# Built-ins are imported on first use, so mpi4py and cupy load only when asked for.
_BUILTIN = {
    "local": "fleetkit.collective.backends.local:LocalBackend",
    "tcp": "fleetkit.collective.backends.tcp:TcpBackend",
    "mpi": "fleetkit.collective.backends.mpi:MpiBackend",
    "nccl": "fleetkit.collective.backends.nccl:NcclBackend",
}
_REGISTRY: dict[str, Callable[..., Backend]] = {}
_REGISTRY_LOCK = threading.Lock()


def register_backend(name: str, factory: Callable[..., Backend]) -> None:
    """Make ``get_backend(name, **kwargs)`` call ``factory(**kwargs)``.

    Raises:
        InvalidArgumentError: ``name`` is already registered (built-ins included).
    """
    with _REGISTRY_LOCK:
        if name in _REGISTRY or name in _BUILTIN:
            raise InvalidArgumentError(f"collective backend {name!r} is already registered")
        _REGISTRY[name] = factory


def get_backend(name: str, **kwargs: Any) -> Backend:
    """Create the backend registered as ``name`` ("tcp", "mpi", "nccl", "local", ...).

    Keyword arguments go to the backend's constructor (see each backend).
    """
    with _REGISTRY_LOCK:
        factory = _REGISTRY.get(name)
    if factory is None:
        if name not in _BUILTIN:
            raise NotFoundError(f"unknown collective backend {name!r}; known: {', '.join(available_backends())}")
        module, attr = _BUILTIN[name].split(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(**kwargs)


def available_backends() -> list[str]:
    """Names accepted by ``get_backend`` (whether or not their dependencies are installed)."""
    with _REGISTRY_LOCK:
        return sorted(set(_BUILTIN) | set(_REGISTRY))
