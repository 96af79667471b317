"""``local``: the reference backend.  Ranks are threads of one process.

It is the oracle the other backends are tested against, so it is written to be
obviously right rather than fast: every rank deposits a copy of its input,
waits for all the others, and computes the result from the full list in rank
order (sum = ((x0 + x1) + x2) ...).

    group = LocalGroup(3)
    results = group.run(lambda b: b.all_reduce(np.ones(4) * b.rank))
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ...errors import CollectiveTimeoutError, InvalidArgumentError, PeerFailedError, seconds_text
from .._arrays import as_rows, row_bounds, work_buffer
from ..api import UFUNCS, Backend, Deadline
from ..header import Header, check_headers, make_header

__all__ = ["LocalBackend", "LocalGroup"]


class LocalGroup:
    """``world_size`` thread-ranks sharing memory; ``group[r]`` is rank r's backend."""

    def __init__(self, world_size: int, timeout: float | None = None):
        if world_size < 1:
            raise InvalidArgumentError(f"world_size must be >= 1, got {world_size}")
        self.world_size = world_size
        self._barrier = threading.Barrier(world_size)
        self._slots: list[tuple[Header, Any] | None] = [None] * world_size
        self._closed_by: int | None = None
        self.backends = [LocalBackend(rank, world_size, group=self, timeout=timeout)
                         for rank in range(world_size)]

    def __getitem__(self, rank: int) -> "LocalBackend":
        return self.backends[rank]

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float = 60.0) -> list[Any]:
        """Call ``fn(backend, *args)`` on one thread per rank; return the results by rank.

        The first exception raised by any rank is re-raised here.
        """
        results: list[Any] = [None] * self.world_size
        errors: list[BaseException | None] = [None] * self.world_size

        def body(rank: int) -> None:
            try:
                results[rank] = fn(self.backends[rank], *args)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors[rank] = exc

        threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(self.world_size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout)
            if t.is_alive():
                raise CollectiveTimeoutError(f"LocalGroup.run: a rank still runs after {seconds_text(timeout)} s")
        for exc in errors:
            if exc is not None:
                raise exc
        return results

    def close(self) -> None:
        """Close every rank's backend."""
        for backend in self.backends:
            backend.close()

    def _exchange(self, rank: int, header: Header, payload: Any, deadline: Deadline) -> list[tuple[Header, Any]]:
        """Deposit (header, payload), wait for all ranks, return everyone's deposit."""
        self._slots[rank] = (header, payload)
        self._wait(rank, header, deadline)
        snapshot = list(self._slots)
        # Second barrier: nobody may overwrite its slot for the next call until
        # every rank has taken its snapshot of this one.
        self._wait(rank, header, deadline)
        check_headers([h for h, _ in snapshot])  # type: ignore[misc]
        return snapshot  # type: ignore[return-value]

    def _wait(self, rank: int, header: Header, deadline: Deadline) -> None:
        try:
            self._barrier.wait(deadline.remaining())
        except threading.BrokenBarrierError:
            if self._closed_by is not None:
                raise PeerFailedError(f"rank {self._closed_by} closed its backend during "
                                      f"collective #{header.seq}", rank=self._closed_by) from None
            missing = [r for r, slot in enumerate(self._slots)
                       if slot is None or slot[0].seq < header.seq]
            raise CollectiveTimeoutError(
                f"rank {rank}: ranks {missing} did not enter {header.coll} #{header.seq} "
                f"within {seconds_text(deadline.seconds)} s") from None

    def _closing(self, rank: int) -> None:
        if self._closed_by is None:
            self._closed_by = rank
        self._barrier.abort()


class LocalBackend(Backend):
    """One thread-rank of a ``LocalGroup`` (create it through the group)."""

    name = "local"

    def __init__(self, rank: int = 0, world_size: int = 1, group: LocalGroup | None = None,
                 timeout: float | None = None):
        super().__init__(rank, world_size, timeout)
        if group is None:
            if world_size != 1:
                raise InvalidArgumentError("LocalBackend with world_size > 1 needs a LocalGroup")
            group = _single_group(self)
        self._group = group

    def _all_reduce(self, array: np.ndarray, op: str, deadline: Deadline) -> np.ndarray:
        header = make_header(self._next_seq(), "all_reduce", array, op=op)
        inputs = [p for _, p in self._group._exchange(self._rank, header, np.array(array), deadline)]
        acc = inputs[0].copy()
        for x in inputs[1:]:
            UFUNCS[op](acc, x, out=acc)
        return _deliver(array, acc)

    def _all_gather(self, array: np.ndarray, deadline: Deadline) -> list[np.ndarray]:
        header = make_header(self._next_seq(), "all_gather", array)
        deposits = self._group._exchange(self._rank, header, np.array(array), deadline)
        return [p.copy() for _, p in deposits]

    def _broadcast(self, array: np.ndarray, root: int, deadline: Deadline) -> np.ndarray:
        header = make_header(self._next_seq(), "broadcast", array, root=root)
        deposits = self._group._exchange(self._rank, header, np.array(array), deadline)
        return _deliver(array, deposits[root][1].copy())

    def _reduce_scatter(self, array: np.ndarray, op: str, deadline: Deadline) -> np.ndarray:
        header = make_header(self._next_seq(), "reduce_scatter", array, op=op)
        inputs = [as_rows(p) for _, p in self._group._exchange(self._rank, header, np.array(array), deadline)]
        acc = inputs[0].copy()
        for x in inputs[1:]:
            UFUNCS[op](acc, x, out=acc)
        start, end = row_bounds(acc.shape[0], self._world_size)[self._rank]
        return acc[start:end].copy()

    def _barrier(self, deadline: Deadline) -> None:
        self._group._exchange(self._rank, make_header(self._next_seq(), "barrier"), None, deadline)

    def _close(self) -> None:
        self._group._closing(self._rank)


def _deliver(array: np.ndarray, result: np.ndarray) -> np.ndarray:
    """Write into the caller's array when allowed, else hand back the new one."""
    out = work_buffer(array)
    if out is array:
        out[...] = result
        return out
    return result


def _single_group(backend: LocalBackend) -> LocalGroup:
    group = LocalGroup.__new__(LocalGroup)
    group.world_size = 1
    group._barrier = threading.Barrier(1)
    group._slots = [None]
    group._closed_by = None
    group.backends = [backend]
    return group
