"""Value replies of the bulk server that start under the pserver's handler lock (``bulk.py``)."""
from __future__ import annotations

import socket
from typing import Any, Callable

import numpy as np

from ..netio import set_blocking
from . import codec

__all__ = ["Reply", "Scratch", "UNCHUNKED", "advance"]

#: max_bytes of a value encoded for the bulk channel, which sends every value whole
UNCHUNKED = 1 << 62


class Scratch:
    """A per-connection reply buffer (snapshots of served values), reused between calls."""

    KEEP = 256 << 20

    def __init__(self) -> None:
        self.buf: np.ndarray | None = None

    def __call__(self, n: int) -> np.ndarray:
        if self.buf is None or self.buf.nbytes < n:
            self.buf = np.empty(n, np.uint8)
        return self.buf[:n]

    def trim(self) -> None:
        if self.buf is not None and self.buf.nbytes > self.KEEP:
            self.buf = None


def advance(views: list[memoryview], n: int) -> list[memoryview]:
    """``views`` without their first ``n`` bytes."""
    out = list(views)
    while n and out:
        if n >= out[0].nbytes:
            n -= out.pop(0).nbytes
        else:
            out[0], n = out[0][n:], 0
    return out


class Reply:
    """A value reply, started while the pserver's handler lock is held (no update is
    half-done then).  The socket takes what it can without waiting, so the kernel's copy
    is the snapshot and no copy of ours is needed; what it cannot take yet is copied
    into the connection's scratch buffer and sent after the lock is released (a slow
    client never holds the lock).  A small value is copied whole instead, and sent after
    the lock.  One per connection, ``reset`` before each frame."""

    def __init__(self, conn: socket.socket, scratch: Scratch, stats: dict[str, int],
                 fixed: Callable[[int, int, int], bytes]) -> None:
        # fixed(header len, rows len, data len): the reply frame's fixed part
        self.conn, self.scratch, self.stats, self.fixed = conn, scratch, stats, fixed
        self.rest: list[memoryview] | None = None   # None: not started

    #: values of at most this many bytes are copied and sent after the lock, not under it
    COPY_BELOW = 16 << 10

    def reset(self) -> None:
        """A new frame: nothing of its reply is started."""
        self.rest = None

    def __call__(self, name: str, value: Any) -> Reply:
        parts = codec.dense_parts(name, value)   # a plain array: its header is cached
        if parts is not None:
            head, rows, data = parts[0], memoryview(b""), parts[1]
        else:   # one envelope, whatever the size: the bulk channel does not chunk
            env = codec.encode(name, value, max_bytes=UNCHUNKED)[0]
            head = env.header.SerializeToString()
            rows, data = memoryview(env.rows).cast("B"), memoryview(env.data).cast("B")
        fixed = self.fixed(len(head), rows.nbytes, data.nbytes)
        if rows.nbytes + data.nbytes <= self.COPY_BELOW:
            # a small value: one copy is cheaper than a system call under the lock (which
            # other connections' calls would queue behind); sent once the lock is released
            self.rest = [memoryview(b"".join((fixed, head, rows, data)))]
            self.stats["copied"] += self.rest[0].nbytes
            return self
        views = [v for v in (memoryview(fixed), memoryview(head), rows, data) if v.nbytes]
        # a write that cannot wait, on a socket the server keeps in blocking mode (no timeout):
        # a socket with a timeout would poll and wait for room instead (netio.set_blocking)
        set_blocking(self.conn)
        try:
            sent = self.conn.sendmsg(views[:512], (), socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        rest = advance(views, sent)
        n = sum(v.nbytes for v in rest)
        self.rest = []
        if n:
            buf, pos = self.scratch(n), 0
            for v in rest:
                buf[pos:pos + v.nbytes] = np.frombuffer(v, np.uint8)
                pos += v.nbytes
            self.rest = [memoryview(buf)]
        self.stats["kernel"] += sent
        self.stats["copied"] += n
        return self
