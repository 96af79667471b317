"""``tcp``: a CPU backend over plain sockets, with pipelined ring algorithms.

Rendezvous, in order of precedence:

* ``endpoints=["host:port", ...]`` and ``rank``: rank r listens on endpoint r;
* ``store=...`` (``TCPStore``/``FileStore``), ``rank`` and ``world_size``: each
  rank listens on an OS-chosen port of ``host`` and publishes it in the store;
* nothing: this process's collective role, parsed once by ``fleetkit.env.load_role``
  from Paddle's launcher variables (``PADDLE_TRAINER_ENDPOINTS``, ``PADDLE_TRAINER_ID``,
  default 0; ``PADDLE_TRAINERS_NUM`` is checked when set).

Data moves without copies or pickles: numpy buffers are sent as memoryviews
and received with ``recv_into`` straight into their destination (or into one
chunk-sized scratch buffer when the chunk must be reduced).  Before each
collective the ranks exchange a small header (see ``header.py``), which also
gives ``all_gather`` every rank's size.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import weakref
from typing import Any

import numpy as np

from ...env import load_role, this_host
from ...errors import CollectiveTimeoutError, ConfigError, InvalidArgumentError, seconds_text
from ...waits import NOTE_EVERY_S, WaitNote
from .._arrays import as_rows, row_bounds, work_buffer
from .._ring import (RecvItem, SendItem, all_gather_steps, all_reduce_steps, broadcast_schedule,
                     reduce_scatter_steps, schedule)
from .._transport import RingLinks
from ..api import UFUNCS, Backend, Deadline
from ..constants import DEFAULT_CHUNK_BYTES
from ..header import HEADER_BYTES, Header, check_headers, make_header
from ..store import Store

__all__ = ["TcpBackend"]
log = logging.getLogger(__name__)


class TcpBackend(Backend):
    """Ring collectives over TCP between ``world_size`` processes.

    Args:
        rank, world_size: this process's place in the group (from the
            collective role, ``env.load_role``, when no endpoints and no store are given).
        store: rendezvous store (each rank then listens on a free port of ``host``).
        endpoints: every rank's ``host:port`` to listen on / connect to.
        host: address to listen on in store mode (default ``env.this_host()``: ``POD_IP``,
            else the host of ``PADDLE_CURRENT_ENDPOINT``, else 127.0.0.1).
        timeout: default seconds per collective and for the rendezvous.
        chunk_bytes: pipelining granularity of the ring algorithms.
        prefix: store key prefix; use a distinct one per group on a shared store.
        listener: an already bound socket for this rank's
            endpoint, e.g. handed over by a launcher; default: bind it here.
    """

    name = "tcp"

    def __init__(self, rank: int | None = None, world_size: int | None = None, *,
                 store: Store | None = None, endpoints: list[str] | None = None,
                 host: str | None = None, timeout: float | None = None,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, prefix: str = "fleetkit/tcp/",
                 listener: socket.socket | None = None):
        if endpoints is None and store is None:
            endpoints, rank = endpoints_from_role()
        if endpoints is not None:
            if world_size is not None and world_size != len(endpoints):
                raise InvalidArgumentError(f"world_size {world_size} != {len(endpoints)} endpoints")
            world_size = len(endpoints)
        if rank is None or world_size is None:
            raise InvalidArgumentError("TcpBackend with a store needs rank and world_size")
        super().__init__(rank, world_size, timeout)
        if chunk_bytes < 1:
            raise InvalidArgumentError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
        self._chunk_bytes = int(chunk_bytes)
        self._scratch: dict[np.dtype, np.ndarray] = {}
        deadline = Deadline(self._timeout)
        if endpoints is not None:
            if listener is None:
                listener = _listen(endpoints[self._rank], self._world_size)
            else:
                listener.listen(max(128, self._world_size))
            token = hashlib.sha256(",".join(endpoints).encode()).digest()[:16]
        else:
            listener, endpoints, token = _store_rendezvous(store, prefix, self._rank, self._world_size,
                                                           host or this_host(), deadline)
        with listener:
            self._links = RingLinks(self._rank, self._world_size, listener, endpoints, token, deadline)
        self.endpoints = list(endpoints)
        self._finalizer = weakref.finalize(self, self._links.close)

    # ---- collectives (op thread) -----------------------------------------------------------

    def _all_reduce(self, array: np.ndarray, op: str, deadline: Deadline) -> np.ndarray:
        """See base class."""
        self._exchange_headers(make_header(self._next_seq(), "all_reduce", array, op=op), deadline)
        work = work_buffer(array)
        if self._world_size > 1 and work.size:
            flat = work.reshape(-1)
            bounds = row_bounds(flat.size, self._world_size)
            steps = all_reduce_steps(self._rank, self._world_size)
            self._run(flat, flat, *schedule(steps, bounds, self._chunk(flat)), UFUNCS[op], deadline)
        return work

    def _all_gather(self, array: np.ndarray, deadline: Deadline) -> list[np.ndarray]:
        """See base class."""
        headers = self._exchange_headers(make_header(self._next_seq(), "all_gather", array), deadline)
        sizes = [int(np.prod(h.shape, dtype=np.int64)) for h in headers]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
        out = np.empty(offsets[-1], dtype=array.dtype)
        bounds = [(offsets[i], offsets[i + 1]) for i in range(self._world_size)]
        start, end = bounds[self._rank]
        out[start:end] = np.asarray(array).reshape(-1)
        if self._world_size > 1:
            steps = all_gather_steps(self._rank, self._world_size)
            self._run(out, out, *schedule(steps, bounds, self._chunk(out)), None, deadline)
        return [out[a:b].reshape(h.shape) for (a, b), h in zip(bounds, headers)]

    def _broadcast(self, array: np.ndarray, root: int, deadline: Deadline) -> np.ndarray:
        """See base class."""
        self._exchange_headers(make_header(self._next_seq(), "broadcast", array, root=root), deadline)
        work = np.ascontiguousarray(array) if self._rank == root else work_buffer(array)
        if self._world_size > 1 and work.size:
            flat = work.reshape(-1)
            plan = broadcast_schedule(self._rank, root, self._world_size, flat.size, self._chunk(flat))
            self._run(flat, flat, *plan, None, deadline)
        return array if self._rank == root else work

    def _reduce_scatter(self, array: np.ndarray, op: str, deadline: Deadline) -> np.ndarray:
        """See base class."""
        self._exchange_headers(make_header(self._next_seq(), "reduce_scatter", array, op=op), deadline)
        rows = as_rows(np.ascontiguousarray(array))
        row_size = int(np.prod(rows.shape[1:], dtype=np.int64))
        bounds = [(a * row_size, b * row_size) for a, b in row_bounds(rows.shape[0], self._world_size)]
        start, end = bounds[self._rank]
        shape = ((end - start) // row_size if row_size else 0,) + rows.shape[1:]
        if self._world_size == 1:
            return rows.copy()
        src = rows.reshape(-1)
        dst = np.empty_like(src)
        steps = reduce_scatter_steps(self._rank, self._world_size)
        self._run(src, dst, *schedule(steps, bounds, self._chunk(src)), UFUNCS[op], deadline)
        return dst[start:end].reshape(shape)

    def _barrier(self, deadline: Deadline) -> None:
        """See base class."""
        # Every rank has heard from every other rank once the headers went round.
        self._exchange_headers(make_header(self._next_seq(), "barrier"), deadline)

    def _on_broken(self, error: BaseException) -> None:
        self._links.fail(error)

    def _close(self) -> None:
        self._finalizer()

    # ---- machinery -------------------------------------------------------------------------

    def _chunk(self, flat: np.ndarray) -> int:
        return max(1, self._chunk_bytes // flat.itemsize)

    def _exchange_headers(self, header: Header, deadline: Deadline) -> list[Header]:
        """All-gather the headers around the ring, then check that they agree."""
        failure = self._links.failure_error()
        if failure is not None:
            raise failure
        n, r = self._world_size, self._rank
        headers: list[Header] = [header] * n
        buf = bytearray(HEADER_BYTES)
        outgoing = header.pack()
        for step in range(n - 1):
            # Tiny sends do not block, so they can go inline, before the receive.
            self._links.send(memoryview(outgoing), deadline)
            source = (r - step - 1) % n
            doing = f"waiting for {header.coll} #{header.seq} to be entered by"
            self._links.wait_for_left(deadline, doing, source)
            self._links.recv_into(memoryview(buf), deadline, blame=source, doing=doing)
            outgoing = bytes(buf)
            headers[source] = Header.unpack(outgoing, source=self._links.describe(self._links.left))
        check_headers(headers)
        return headers

    def _run(self, src: np.ndarray, dst: np.ndarray, sends: list[SendItem], recvs: list[RecvItem],
             ufunc: Any, deadline: Deadline) -> None:
        """Run one schedule: gated sends on the sender thread, receives here.

        A send reads ``dst`` once its data was received (gate > 0), else ``src``;
        a reducing receive computes ``dst[a:b] = ufunc(src[a:b], incoming)``.
        """
        links, size = self._links, src.itemsize
        src_mv, dst_mv = memoryview(src.view(np.uint8)), memoryview(dst.view(np.uint8))
        items = [((dst_mv if s.gate else src_mv)[s.start * size:s.end * size], s.gate) for s in sends]
        with links.progress_cv:
            links.progress = 0
        job = links.post_sends(items, deadline) if items else None
        scratch = self._scratch_for(src)
        scratch_mv = memoryview(scratch.view(np.uint8))
        for item in recvs:
            a, b = item.start, item.end
            if item.reduce:
                links.recv_into(scratch_mv[:(b - a) * size], deadline)
                ufunc(src[a:b], scratch[:b - a], out=dst[a:b])
            else:
                links.recv_into(dst_mv[a * size:b * size], deadline)
            links.bump_progress()
        if job is not None:
            if not job.done.wait(deadline.remaining()):
                raise links.io_failure(links.right, socket.timeout(), "sending to", deadline)
            if job.error is not None:
                raise job.error

    def _scratch_for(self, flat: np.ndarray) -> np.ndarray:
        # One reused buffer per dtype: fresh multi-MiB allocations are slow here
        # (glibc returns them to the kernel and every page faults again).
        buf = self._scratch.get(flat.dtype)
        if buf is None:
            buf = self._scratch[flat.dtype] = np.empty(self._chunk(flat), dtype=flat.dtype)
        return buf


def endpoints_from_role() -> tuple[list[str], int]:
    """Every rank's endpoint and this rank, from the collective role (one parser of Paddle's
    env contract: ``env.load_role``; a bad one raises ConfigError naming every problem)."""
    role = load_role(is_collective=True)
    return list(role.trainer_endpoints), role.trainer_id


def _listen(endpoint: str, world_size: int) -> socket.socket:
    host, _, port = endpoint.rpartition(":")
    try:
        return socket.create_server((host, int(port)), backlog=max(128, world_size))
    except OSError as exc:
        raise ConfigError(f"tcp backend: cannot listen on {endpoint}: {exc}") from exc


def _store_rendezvous(store: Store, prefix: str, rank: int, world_size: int, host: str,
                      deadline: Deadline) -> tuple[socket.socket, list[str], bytes]:
    listener = _listen(f"{host}:0", world_size)
    try:
        store.set(f"{prefix}addr/{rank}", f"{host}:{listener.getsockname()[1]}".encode())
        if rank == 0:
            store.set(f"{prefix}token", os.urandom(16))
        token = _store_get(store, f"{prefix}token", deadline, f"rank {rank}: waiting for rank 0 to join")
        endpoints = [_store_get(store, f"{prefix}addr/{r}", deadline, f"rank {rank}: waiting for rank {r} to join")
                     .decode() for r in range(world_size)]
    except BaseException:
        listener.close()
        raise
    return listener, endpoints, token


def _store_get(store: Store, key: str, deadline: Deadline, waiting: str) -> bytes:
    """``store.get`` in slices, so that a long wait says what it waits for."""
    note = WaitNote(log)
    while True:
        try:
            return store.get(key, max(0.001, min(deadline.remaining(), note.until_due() or NOTE_EVERY_S)))
        except CollectiveTimeoutError:
            if deadline.expired():
                raise CollectiveTimeoutError(f"{waiting}: store key {key!r} not set within "
                                             f"{seconds_text(deadline.seconds)} s") from None
            note.say("%s (store key %r); %.0f s left", waiting, key, deadline.remaining())
