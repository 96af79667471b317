"""The bulk channel: large tensors over a plain TCP connection beside the gRPC port.

Python gRPC moves a 4 MiB message at well under half of what a loopback socket
moves (its own copies and per-message work), so values above a threshold travel
on a raw TCP connection instead.  The pserver listens on a second port (same host,
chosen by the OS) and tells clients which over gRPC (``rpc.BULK_PORT``); it serves
no bulk port under TLS.  The framing carries the same ``VariableMessage`` header
as gRPC (``codec``), and the server dispatches a frame to the same handler methods
as the gRPC service, so validation, auth, barriers and error texts are identical.

Wire format (little-endian).  Request::

    "FKB1" | method u8 | flags u8 | token len u16 | header len u32 | rows len u64 | data len u64
    token | VariableMessage header (no payload fields) | rows bytes | tensor bytes

Reply::

    "FKR2" | status u8 | flags u8 | 0 u16 | header len u32 | rows len u64 | data len u64
           | incarnation u64 | updates u64 | resumed i64
    status 0: VariableMessage header | rows bytes | tensor bytes (all empty for void methods)
    else:     details (utf-8)        | missing trainer ids ("1,3", barrier failures) | -

``status`` is the gRPC status code number; reply flag 1 says the server closes the
connection after this reply (a frame it could not read to its end, or a refused token).
incarnation / updates / resumed: the pserver's identity (``liveness.Incarnation``), so
a client notices a restarted pserver on every reply, as on gRPC.

Nothing is allocated for what an unauthenticated peer declares: the token is checked
before the frame's header is read, a refused one closes the connection, and new
connections have ``auth_timeout`` seconds (at most ``max_unauthenticated`` at a time)
to show it (bounds: docs/security.md).  A connection
carries one call at a time, or one group of calls written back to back
(``BulkPool.call_many``); clients keep a few idle ones per endpoint.

The server (accepting, the event loop that serves small frames, the worker threads
for the rest) is in ``bulk_server.py`` / ``bulk_loop.py``; this module holds the wire
format, the raw I/O both sides share, and the client's ``BulkPool``.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any, Callable, Sequence

import grpc
import numpy as np

from ..netio import recv_exactly
from . import codec, rpc
from .bulk_reply import advance

__all__ = ["BulkPool", "BulkStatus", "NO_BULK", "split_host"]

REQ_MAGIC, REPLY_MAGIC = b"FKB1", b"FKR2"
_FRAME = struct.Struct("<4sBBHIQQ")
_REPLY = struct.Struct("<4sBBHIQQQQq")
#: the longest token a frame may carry (tokens from ``fleetkit launch`` are 43 characters)
MAX_TOKEN = 1024
METHOD_CODE = {m: i + 1 for i, m in enumerate(rpc.METHODS)}
METHOD_NAME = {i: m for m, i in METHOD_CODE.items()}
STATUS_NAME = {c.value[0]: c.name for c in grpc.StatusCode}
FLAG_CLOSING = 1
MAX_HEADER = rpc.HEADER_SLACK + (60 << 20)   # dims + LoD of a huge LoDTensor still fit
#: returned by a client call when the pserver serves no bulk port (use gRPC)
NO_BULK = object()


class BulkStatus(Exception):
    """A bulk call failed with a gRPC status (a reply, or UNAVAILABLE / DEADLINE_EXCEEDED
    from the connection); ``rpc.map_status`` turns it into the fleetkit error."""

    def __init__(self, code: str, details: str, missing: tuple[int, ...] | None = None,
                 keep: bool = False, connect_failed: bool = False,
                 info: tuple[int, int, int] | None = None) -> None:
        super().__init__(f"{code}: {details}")
        self.code, self.details, self.missing = code, details, missing
        self.info = info   #: the replying pserver's (incarnation, updates, resumed)
        self.keep = keep   #: the connection is still in sync (an error reply the server sent)
        self.connect_failed = connect_failed   #: no connection could be opened


def split_host(endpoint: str) -> str:
    """The host of ``host:port`` ('[::1]:6174' -> '::1')."""
    host = endpoint.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _tune(sock: socket.socket) -> None:
    # TCP: no Nagle delay for the small reply/header segments; the kernel autotunes the
    # buffers up to tcp_[rw]mem (setting SO_*BUF would pin them, often lower).  AF_UNIX
    # has no autotuning: with its 208 KiB default, large frames ping-pong in small pieces
    # (the async CTR job was 9% slower than on TCP; with 4 MiB, as fast)
    if sock.family != getattr(socket, "AF_UNIX", None):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)


# ------------------------------------------------------------------ raw I/O
class _Until:
    """A ``time.monotonic()`` deadline in the shape ``netio.recv_exactly`` takes."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at

    def remaining(self) -> float:
        return self.at - time.monotonic()


def _recv_into(sock: socket.socket, view: memoryview, deadline: float | None) -> None:
    """Fill ``view`` from ``sock``; ConnectionError on EOF, socket.timeout past ``deadline``
    (a ``time.monotonic()`` value)."""
    recv_exactly(sock, view.cast("B"), None if deadline is None else _Until(deadline))


def _send_parts(sock: socket.socket, parts: Sequence[Any], deadline: float | None) -> None:
    """Send bytes-like ``parts`` in order with gathered writes (no concatenation).  A socket
    in blocking mode (the server's) first gets one write that cannot wait: a small reply
    then costs one system call, without a poll or a change of the socket's timeout."""
    blocking = sock.gettimeout() is None
    if blocking and len(parts) == 1:   # one buffer (a small reply): no list of views
        try:
            sent = sock.send(parts[0], socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        view = memoryview(parts[0]).cast("B")
        if sent >= view.nbytes:
            return
        parts, blocking = [view[sent:]], False
    views = [v for v in (memoryview(p).cast("B") for p in parts) if v.nbytes]
    if views and blocking:
        try:
            sent = sock.sendmsg(views[:512], (), socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        views = advance(views, sent)
    while views:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("timed out")
            sock.settimeout(left)
        sent = sock.sendmsg(views[:512])
        while sent:
            if sent >= views[0].nbytes:
                sent -= views[0].nbytes
                views.pop(0)
            else:
                views[0], sent = views[0][sent:], 0


def _payload_parts(env: codec.Envelope) -> tuple[bytes, Any, Any]:
    return env.header.SerializeToString(), env.rows, env.data


# ------------------------------------------------------------------ client
class BulkPool:
    """Client side: idle connections per (host, port); each call has one to itself."""

    def __init__(self, max_idle: int = 8) -> None:
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int], list[socket.socket]] = {}
        self._lock = threading.Lock()

    def _take(self, host: str, port: int, timeout: float) -> socket.socket:
        """An idle connection to (host, port), or a new one; port 0: ``host`` is the path of
        the pserver's AF_UNIX socket (``BulkServer.unix_path``)."""
        with self._lock:
            idle = self._idle.get((host, port))
            if idle:
                return idle.pop()
        if port:
            sock = socket.create_connection((host, port), timeout=min(timeout, 30.0))
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(min(timeout, 30.0))
                sock.connect(host)
            except OSError:
                sock.close()
                raise
        _tune(sock)
        return sock

    def _give(self, key: tuple[str, int], sock: socket.socket) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.max_idle:
                idle.append(sock)
                return
        sock.close()

    def forget(self, host: str, port: int | None = None) -> None:
        """Close idle connections to ``host`` (one port, or all): the pserver went away."""
        with self._lock:
            keys = [k for k in self._idle if k[0] == host and (port is None or k[1] == port)]
            socks = [s for k in keys for s in self._idle.pop(k)]
        for s in socks:
            s.close()

    def close(self) -> None:
        with self._lock:
            socks = [s for idle in self._idle.values() for s in idle]
            self._idle.clear()
        for s in socks:
            s.close()

    def call(self, host: str, port: int, method: str, env: codec.Envelope, token: str,
             timeout: float, on_info: Callable[[tuple[int, int, int]], Any] | None = None) -> codec.Envelope | None:
        """One call; the reply envelope (payload in a fresh writable buffer), or None for a
        void method.  ``on_info`` gets the reply's (incarnation, updates, resumed).  Raises
        BulkStatus (a server status, UNAVAILABLE, DEADLINE_EXCEEDED)."""
        (got,) = self.call_many(host, port, [(method, env)], token, timeout)
        if isinstance(got, BulkStatus):
            raise got
        reply, info = got
        if on_info is not None:
            on_info(info)
        return reply

    def call_many(self, host: str, port: int, calls: Sequence[tuple[str, codec.Envelope]], token: str,
                  timeout: float) -> list[tuple[codec.Envelope | None, tuple[int, int, int]] | BulkStatus]:
        """Several calls on one connection: every request is written, then every reply is
        read (a pserver answers a connection's frames in order), so N calls cost one
        connection, one thread and the pserver's wake-ups for N frames at once.  Only for
        calls whose replies are small (void methods) or whose requests are (gets): with
        large requests and large replies both sides could block writing.  Per call: (reply
        or None, the pserver's incarnation info), or the BulkStatus of its error reply.
        Raises BulkStatus when the connection fails (no call's outcome is then known)."""
        where = f"bulk channel {host}:{port}" if port else f"bulk channel unix:{host}"
        try:
            sock = self._take(host, port, timeout)
        except OSError as e:
            raise BulkStatus("UNAVAILABLE", f"{where}: cannot connect: {e}", connect_failed=True) from None
        keep = False
        try:
            deadline = time.monotonic() + timeout
            tok = token.encode()
            for method, env in calls:
                header, rows, data = _payload_parts(env)
                fixed = _FRAME.pack(REQ_MAGIC, METHOD_CODE[method], 0, len(tok), len(header),
                                    memoryview(rows).nbytes, memoryview(data).nbytes)
                _send_parts(sock, [fixed, tok, header, rows, data], deadline)
            out: list = []
            for _ in calls:
                try:
                    reply, _, info = self._read_reply(sock, deadline, where)
                except BulkStatus as e:
                    if not e.keep:
                        raise
                    out.append(e)   # the server answered with an error: its next replies follow
                else:
                    out.append((reply, info))
            keep = True
            return out
        except codec.PayloadError as e:
            raise BulkStatus("INTERNAL", f"{where}: malformed reply: {e}") from None
        except socket.timeout:
            raise BulkStatus("DEADLINE_EXCEEDED", f"{where}: no reply within {timeout:.1f} s") from None
        except (OSError, ConnectionError) as e:
            raise BulkStatus("UNAVAILABLE", f"{where}: {type(e).__name__}: {e}") from None
        finally:
            if keep:
                self._give((host, port), sock)
            else:
                sock.close()

    def _read_reply(self, sock: socket.socket, deadline: float,
                    where: str) -> tuple[codec.Envelope | None, bool, tuple[int, int, int]]:
        fixed = bytearray(_REPLY.size)
        _recv_into(sock, memoryview(fixed), deadline)
        magic, status, flags, _, hlen, rlen, dlen, *info = _REPLY.unpack(fixed)
        if magic != REPLY_MAGIC or hlen > MAX_HEADER:
            raise BulkStatus("INTERNAL", f"{where}: malformed reply (magic {bytes(magic)!r})")
        head = bytearray(hlen)
        _recv_into(sock, memoryview(head), deadline)
        if status:
            miss = bytearray(rlen)
            _recv_into(sock, memoryview(miss), deadline)
            if dlen:
                raise BulkStatus("INTERNAL", f"{where}: malformed error reply")
            missing = rpc.parse_missing(miss.decode()) if rlen else None
            raise BulkStatus(STATUS_NAME.get(status, "UNKNOWN"), head.decode("utf-8", "replace"), missing,
                             keep=not flags & FLAG_CLOSING, info=tuple(info))
        if not hlen:
            return None, True, tuple(info)
        buf = np.empty(rlen + dlen, np.uint8)
        _recv_into(sock, memoryview(buf), deadline)
        env = codec.from_bytes(head)
        if env.rows or env.data:
            raise BulkStatus("INTERNAL", f"{where}: payload inside the reply header")
        env.rows = memoryview(buf[:rlen]) if rlen else b""
        env.data = memoryview(buf[rlen:]) if dlen else b""
        return env, True, tuple(info)
