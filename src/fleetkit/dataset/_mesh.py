"""The all-to-all of global_shuffle: one TCP connection per pair of trainers.

Rendezvous over the trainers' collective backend: every rank listens on a free
port of its endpoint's host, the ports are all-gathered and rank 0's random
16-byte token is broadcast; a rank connects to every lower rank and accepts
every higher one, and a connection counts only after it presented the token
and a rank not yet seen (anything else is closed and ignored).

On a connection each side streams frames: a 16-byte header (instances,
payload bytes) and the payload, per used slot [lengths int64][values]; an end
frame (instances = -1) carries the count of instances sent, which the receiver
checks.  A header is checked before its payload is allocated (at most
``MAX_FRAME_BYTES``, at least the lengths it must hold), and a payload must
decode exactly (non-negative lengths whose values fill it to the last byte).
Sends and receives of every peer run at once, each socket under the
shuffle's deadline; the first failure closes every connection and is raised
naming the peer.
"""
from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataFormatError, FleetkitError
from ..waits import WaitNote
from .instances import InstanceStore, _offsets

__all__ = ["MAX_FRAME_BYTES", "Mesh", "ShuffleStats"]

#: the largest frame payload a peer may announce (send_batch_size instances must fit)
MAX_FRAME_BYTES = 1 << 30
_HELLO = struct.Struct("<16sq")  # token, sender rank
_FRAME = struct.Struct("<qq")    # instances (-1: end), payload bytes (end: instances sent)
log = logging.getLogger(__name__)


@dataclass
class ShuffleStats:
    """What one trainer's global_shuffle moved over the network (frames and headers included)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    instances_sent: int = 0
    instances_received: int = 0
    #: instances this trainer kept for itself (never sent)
    instances_kept: int = 0


class MeshError(FleetkitError, ConnectionError):
    """A peer of the shuffle mesh failed, timed out or sent something malformed."""


class Mesh:
    """Connections from this rank to every other rank of ``backend`` (a context manager)."""

    def __init__(self, backend: Any, timeout: float):
        self.rank, self.world = backend.rank, backend.world_size
        self.deadline = time.monotonic() + float(timeout)
        endpoints = list(getattr(backend, "endpoints", []) or ["127.0.0.1:0"] * self.world)
        self.hosts = [_host(ep) for ep in endpoints]
        self.socks: dict[int, socket.socket] = {}
        self._lock = threading.Lock()
        listener = socket.create_server((self.hosts[self.rank], 0), backlog=max(8, self.world))
        try:
            port = listener.getsockname()[1]
            ports = [int(p) for p in np.asarray(backend.all_gather(np.array([port], np.int64))).reshape(-1)]
            token = bytes(np.asarray(backend.broadcast(np.frombuffer(os.urandom(16), np.uint8).copy(), root=0)))
            for peer in range(self.rank):
                self.socks[peer] = self._connect(peer, ports[peer], token)
            self._accept(listener, token)
        except BaseException:
            self.close()
            raise
        finally:
            listener.close()

    def __enter__(self) -> "Mesh":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for s in self.socks.values():
            s.close()

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise MeshError(f"global_shuffle: rank {self.rank} timed out")
        return left

    def _connect(self, peer: int, port: int, token: bytes) -> socket.socket:
        where = f"{self.hosts[peer]}:{port}"
        try:
            s = socket.create_connection((self.hosts[peer], port), timeout=self._remaining())
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(_HELLO.pack(token, self.rank))
        except OSError as e:
            raise MeshError(f"global_shuffle: rank {self.rank} cannot connect to rank {peer} at {where}: {e}") from e
        return s

    def _accept(self, listener: socket.socket, token: bytes) -> None:
        want = set(range(self.rank + 1, self.world))
        note = WaitNote(log)
        while want:
            listener.settimeout(min(self._remaining(), max(0.05, note.until_due())))
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                if self.deadline - time.monotonic() <= 0:
                    raise MeshError(f"global_shuffle: rank {self.rank} timed out waiting for ranks "
                                    f"{sorted(want)} to connect") from None
                note.say("global_shuffle: rank %d waits for ranks %s to connect; %.0f s left", self.rank,
                         sorted(want), self.deadline - time.monotonic())
                continue
            conn.settimeout(min(5.0, self._remaining()))
            try:
                got, peer = _HELLO.unpack(_recv_exact(conn, _HELLO.size))
            except (OSError, EOFError):
                conn.close()
                continue
            if got != token or peer not in want:
                conn.close()  # not one of this shuffle's trainers, or a rank already connected
                continue
            want.discard(peer)
            self.socks[peer] = conn

    # ---- the exchange ------------------------------------------------------------------
    def exchange(self, parts: list[InstanceStore], slots: list, batch: int,
                 stats: ShuffleStats | None = None) -> list[list[InstanceStore]]:
        """Send ``parts[peer]`` to every peer and receive theirs; per source rank, what came."""
        stats = stats if stats is not None else ShuffleStats()
        stats.instances_kept = len(parts[self.rank])
        received: list[list[InstanceStore]] = [[] for _ in range(self.world)]
        if not self.socks:
            return received
        for s in self.socks.values():
            s.settimeout(self._remaining())
        with ThreadPoolExecutor(2 * len(self.socks), thread_name_prefix="shuffle") as pool:
            jobs = [pool.submit(self._send, p, parts[p], batch, stats) for p in self.socks]
            jobs += [pool.submit(self._recv, p, slots, received[p], stats) for p in self.socks]
            done = self._wait_jobs(jobs)
            failed = [j for j in done if j.exception() is not None]
            if failed or len(done) < len(jobs):
                self.close()  # unblocks every other send and receive
                if failed:
                    raise failed[0].exception()
                raise MeshError(f"global_shuffle: rank {self.rank} timed out exchanging instances")
        return received

    def _wait_jobs(self, jobs: list) -> set:
        """Wait for the sends and receives (until the first failure or the deadline);
        a long exchange says how far it got."""
        note, end = WaitNote(log), self.deadline + 1
        while True:
            done, pending = wait(jobs, timeout=max(0.0, min(end - time.monotonic(), max(0.05, note.until_due()))),
                                 return_when=FIRST_EXCEPTION)
            if not pending or any(j.exception() is not None for j in done) or time.monotonic() >= end:
                return done
            note.say("global_shuffle: rank %d exchanging instances with %d peer(s): %d of %d sends and receives "
                     "done; %.0f s left", self.rank, len(self.socks), len(done), len(jobs),
                     self.deadline - time.monotonic())

    def _send(self, peer: int, part: InstanceStore, batch: int, stats: ShuffleStats) -> None:
        sock, sent = self.socks[peer], 0
        try:
            for lo in range(0, len(part), batch):
                pieces = _encode(part.slice(lo, min(lo + batch, len(part))))
                nbytes = sum(p.nbytes for p in pieces)
                sock.sendall(_FRAME.pack(min(batch, len(part) - lo), nbytes))
                for p in pieces:
                    sock.sendall(memoryview(p).cast("B"))
                sent += _FRAME.size + nbytes
            sock.sendall(_FRAME.pack(-1, len(part)))
        except OSError as e:
            raise MeshError(f"global_shuffle: rank {self.rank} failed sending to rank {peer}: {e}") from e
        with self._lock:
            stats.bytes_sent += sent + _FRAME.size
            stats.instances_sent += len(part)

    def _recv(self, peer: int, slots: list, out: list, stats: ShuffleStats) -> None:
        sock, got, nbytes_in = self.socks[peer], 0, 0
        who = f"rank {peer} ({self.hosts[peer]})"
        try:
            while True:
                n, nbytes = _FRAME.unpack(_recv_exact(sock, _FRAME.size))
                nbytes_in += _FRAME.size
                if n == -1:
                    if nbytes != got:
                        raise DataFormatError(f"global_shuffle: {who} announced {nbytes} instances but sent {got}")
                    break
                if n < 0 or not 8 * n * len(slots) <= nbytes <= MAX_FRAME_BYTES:
                    raise DataFormatError(f"global_shuffle: {who} sent a bad frame header ({n} instances, "
                                          f"{nbytes} bytes; at most {MAX_FRAME_BYTES} bytes)")
                buf = np.empty(nbytes, np.uint8)
                _recv_into(sock, memoryview(buf))
                nbytes_in += nbytes
                out.append(_decode(buf, n, slots, who))
                got += n
        except (OSError, EOFError) as e:
            raise MeshError(f"global_shuffle: rank {self.rank} failed receiving from {who}: {e}") from e
        with self._lock:
            stats.bytes_received += nbytes_in
            stats.instances_received += got


def _encode(part: InstanceStore) -> list[np.ndarray]:
    """Per slot: the instances' lengths (int64), then their values (views, no copy)."""
    pieces = []
    for vals, off in zip(part.values, part.offsets):
        pieces.append(np.diff(off).astype(np.int64, copy=False))
        pieces.append(np.ascontiguousarray(vals))
    return pieces


def _decode(buf: np.ndarray, n: int, slots: list, who: str) -> InstanceStore:
    """A frame's payload as a store; raises DataFormatError unless it decodes exactly."""
    pos, values, offsets = 0, [], []
    for slot in slots:
        lens = buf[pos:pos + 8 * n].view(np.int64) if pos + 8 * n <= len(buf) else None
        pos += 8 * n
        if lens is None or (n and (lens.min() < 0 or lens.max() > len(buf))) or (
                slot.is_dense and n and (lens != slot.dense_width).any()):
            raise DataFormatError(f"global_shuffle: {who} sent bad lengths for slot '{slot.name}'")
        off = _offsets(lens)
        size = int(off[-1]) * slot.dtype.itemsize
        if pos + size > len(buf):
            raise DataFormatError(f"global_shuffle: {who} sent fewer values for slot '{slot.name}' than its "
                                  f"lengths say")
        values.append(buf[pos:pos + size].view(slot.dtype).copy())
        offsets.append(off)
        pos += size
    if pos != len(buf):
        raise DataFormatError(f"global_shuffle: {who} sent {len(buf) - pos} bytes more than the frame holds")
    return InstanceStore(slots, values, offsets)


def _host(endpoint: str) -> str:
    host = endpoint.rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") else host


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    _recv_into(sock, memoryview(buf))
    return bytes(buf)


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    while len(view):
        got = sock.recv_into(view)
        if got == 0:
            raise EOFError("connection closed by the peer")
        view = view[got:]
