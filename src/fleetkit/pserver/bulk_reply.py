"""Value replies of the bulk server that start under the pserver's handler lock (``bulk.py``)."""
from __future__ import annotations

import socket
from typing import Callable

import numpy as np

from . import codec

__all__ = ["Reply", "Scratch"]


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


def _advance(views: list[memoryview], n: int) -> list[memoryview]:
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
    client never holds the lock)."""

    def __init__(self, conn: socket.socket, scratch: Scratch, stats: dict[str, int],
                 fixed: Callable[[int, int, int], bytes]) -> None:
        # fixed(header len, rows len, data len): the reply frame's fixed part
        self.conn, self.scratch, self.stats, self.fixed = conn, scratch, stats, fixed
        self.rest: list[memoryview] | None = None   # None: not started

    def __call__(self, envs: list[codec.Envelope]) -> Reply:
        # chunks are consecutive slices of the (rows bytes, tensor bytes) stream: join them
        rows = [v for v in (memoryview(e.rows).cast("B") for e in envs) if v.nbytes]
        data = [v for v in (memoryview(e.data).cast("B") for e in envs) if v.nbytes]
        header = type(envs[0].header)()
        header.CopyFrom(envs[0].header)
        for f in ("chunk_index", "chunk_count", "transfer_id"):
            header.ClearField(f)
        head = header.SerializeToString()
        fixed = self.fixed(len(head), sum(v.nbytes for v in rows), sum(v.nbytes for v in data))
        views = [memoryview(fixed), memoryview(head), *rows, *data]
        self.conn.setblocking(False)
        try:
            sent = self.conn.sendmsg(views[:512])
        except BlockingIOError:
            sent = 0
        rest = _advance(views, sent)
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
