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
carries one call at a time; clients keep a few idle ones per endpoint.

Per-message cost: the server reads each connection through a fixed buffer
(``netio.BufferedReader``), so a small frame that arrived whole costs one ``recv`` and one
copy into memory of its own, and it answers with one write that cannot wait; its sockets
stay in blocking mode between frames (no timeout: ``stop`` shuts them down), since
CPython polls before every call on a socket with a timeout.  Deadlines apply only to a
frame that arrives in pieces.  Large payloads are received with ``recv_into`` straight
into a fresh ``np.empty`` buffer and sent with ``sendmsg`` of memoryviews (header and
payload never concatenated).
"""
from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from typing import Any, Callable, Protocol, Sequence

import grpc
import numpy as np

from ..netio import BufferedReader, recv_exactly, set_blocking
from . import codec, rpc
from .bulk_reply import Reply, Scratch, advance

__all__ = ["BulkPool", "BulkServer", "BulkStatus", "NO_BULK", "split_host"]
log = logging.getLogger(__name__)

REQ_MAGIC, REPLY_MAGIC = b"FKB1", b"FKR2"
_FRAME = struct.Struct("<4sBBHIQQ")
_REPLY = struct.Struct("<4sBBHIQQQQq")
#: the longest token a frame may carry (tokens from ``fleetkit launch`` are 43 characters)
MAX_TOKEN = 1024
_HEADER_STEP = 1 << 20   # a header is read in steps of this: its buffer grows as bytes arrive
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
    # no Nagle delay for the small reply/header segments; the kernel autotunes the
    # buffers up to tcp_[rw]mem (setting SO_*BUF would pin them, often lower)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


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


def _read_growing(reader: BufferedReader, n: int, deadline: _Until) -> bytes:
    """``n`` bytes from ``reader``, read in steps so that memory follows what arrives."""
    if n <= reader.size:
        return bytes(reader.take(n, deadline))
    parts = []
    while n > 0:
        part = bytearray(min(n, _HEADER_STEP))
        reader.read_into(memoryview(part), deadline)
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


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


# ------------------------------------------------------------------ server
class BulkTarget(Protocol):
    """What the bulk server calls (implemented by ``ParameterServer``)."""

    def bulk_auth(self, method: str, token: bytes | None) -> tuple[int, str, str] | None:
        """None if the token is accepted, else the error status (code, details, missing)."""

    def bulk_call(self, method: str, header: bytes, rows: Any, data: Any,
                  reply: Callable[[str, Any], Any]) -> tuple[int, str, str, Any]:
        """(status, details, missing, reply: an envelope, ``reply``'s result, or None)."""

    def incarnation_info(self) -> tuple[int, int, int]:
        """(incarnation id, updates applied, update count resumed from or -1 / -2)."""


class BulkServer:
    """Accepts bulk connections on ``host`` (port chosen by the OS), a thread each."""

    def __init__(self, host: str, target: BulkTarget, max_payload: int, io_timeout: float,
                 name: str = "", max_connections: int = 4096, auth_timeout: float = 5.0,
                 max_unauthenticated: int = 64) -> None:
        self.host, self.target, self.name = host, target, name
        self.max_payload, self.io_timeout = int(max_payload), float(io_timeout)
        self.max_connections = max_connections
        self.auth_timeout, self.max_unauthenticated = float(auth_timeout), int(max_unauthenticated)
        self._unauthenticated = 0   # connections whose first frame's token is not checked yet
        self.port = 0
        self.frames = 0                      #: frames served (tests, stats)
        #: reply bytes the kernel took under the handler lock / copied aside first
        self.reply_bytes = {"kernel": 0, "copied": 0}
        self._sock: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, port: int = 0) -> int:
        """Bind (``port`` 0: any free one) and start accepting; returns the port."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        host = "" if self.host in ("0.0.0.0", "::", "") else self.host
        sock = socket.create_server((host, port), family=family, backlog=128)
        sock.settimeout(0.5)   # the accept loop notices stop() within this
        self._sock, self.port = sock, sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="fk-bulk-accept")
        self._thread.start()
        return self.port

    def stop(self) -> None:
        """Stop accepting and close every connection (blocked reads return)."""
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return   # closed by stop()
            with self._lock:
                full = len(self._conns) >= self.max_connections
                if full or self._unauthenticated >= self.max_unauthenticated:
                    log.warning("bulk %s: %d connections (%d not authenticated yet), refusing another",
                                self.name, len(self._conns), self._unauthenticated)
                    conn.close()
                    continue
                self._conns.add(conn)
                self._unauthenticated += 1
            _tune(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True, name="fk-bulk-conn").start()

    def _serve(self, conn: socket.socket) -> None:
        # per connection, made once: the read buffer, the reply and its scratch buffer
        scratch = Scratch()
        reader = BufferedReader(conn)
        reply = Reply(conn, scratch, self.reply_bytes, self._reply_fixed)
        state = {"authenticated": False}
        try:
            while not self._stop.is_set() and self._serve_one(reader, reply, state):
                scratch.trim()
        except (OSError, ConnectionError) as e:
            # peer went away (mid-frame too), or a read stalled past io_timeout: drop it
            log.debug("bulk %s: connection dropped: %s", self.name, e)
        except Exception:  # noqa: BLE001 - a bug here must not take the pserver down
            log.exception("bulk %s: connection failed", self.name)
        finally:
            with self._lock:
                self._conns.discard(conn)
                if not state["authenticated"]:
                    self._unauthenticated -= 1
            _linger_close(conn)

    def _reply_fixed(self, hlen: int, rlen: int, dlen: int) -> bytes:
        """The fixed part of a value reply (status 0), with the pserver's incarnation."""
        return _REPLY.pack(REPLY_MAGIC, 0, 0, 0, hlen, rlen, dlen, *self.target.incarnation_info())

    def _authenticated(self, state: dict) -> None:
        if not state["authenticated"]:
            state["authenticated"] = True
            with self._lock:
                self._unauthenticated -= 1

    @staticmethod
    def _wait_frame(reader: BufferedReader, until: _Until | None) -> bool:
        """Wait for the next frame's first bytes: between frames in blocking mode, without
        a timeout (``stop`` shuts the connection down, which ends the wait), a new
        connection's first frame until ``until``.  False at EOF or past ``until``."""
        try:
            return reader.wait(until)
        except socket.timeout:
            return False

    def _serve_one(self, reader: BufferedReader, reply: Reply, state: dict) -> bool:
        """Read one frame and answer it; False when the connection is to be closed.  A small
        frame that arrived whole is taken from the reader's buffer after one read."""
        conn = reader.sock
        first = not state["authenticated"]
        auth_until = _Until(time.monotonic() + self.auth_timeout) if first else None
        if not self._wait_frame(reader, auth_until):
            return False
        deadline = _Until(time.monotonic() + self.io_timeout)     # the rest of the frame
        token_due = _Until(min(deadline.at, auth_until.at)) if auth_until is not None else deadline
        magic, mcode, _flags, tlen, hlen, rlen, dlen = _FRAME.unpack(reader.take(_FRAME.size, token_due))
        method = METHOD_NAME.get(mcode)
        if magic != REQ_MAGIC or method is None or hlen > MAX_HEADER or tlen > MAX_TOKEN:
            why = (f"malformed bulk frame (magic {bytes(magic)!r}, method {mcode}, header {hlen} bytes)")
            self._reply_error(conn, grpc.StatusCode.INVALID_ARGUMENT.value[0], why, "", closing=True)
            return False
        if rlen + dlen > self.max_payload:
            why = (f"{method}: bulk frame announces {rlen + dlen} payload bytes, more than this "
                   f"pserver's limit of {self.max_payload}")
            self._reply_error(conn, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], why, "", closing=True)
            return False
        token = bytes(reader.take(tlen, token_due)) if tlen else None
        refused = self.target.bulk_auth(method, token)
        if refused is not None:   # nothing more is read from a peer without the token
            self._reply_error(conn, *refused, closing=True)
            return False
        self._authenticated(state)
        if reader.buffered >= hlen + rlen + dlen:   # arrived whole: no wait
            header = bytes(reader.take(hlen))
            payload = memoryview(reader.take_copy(rlen + dlen))   # its own memory, aligned (a fresh allocation)
        else:
            header = _read_growing(reader, hlen, deadline)
            buf = np.empty(rlen + dlen, np.uint8)   # the value's own memory: handlers may keep it
            reader.read_into(memoryview(buf), deadline)
            payload = memoryview(buf)
        set_blocking(conn)   # the reply's first write must not wait (it may run under the handler lock)
        reply.reset()
        code, details, missing, out = self.target.bulk_call(
            method, header, payload[:rlen] if rlen else b"", payload[rlen:] if dlen else b"", reply)
        self.frames += 1
        if out is reply:
            if reply.rest:
                _send_parts(conn, reply.rest, self._send_deadline())
        elif reply.rest is not None:
            return False   # a started reply was not sent: the stream is out of step, hang up
        elif code:
            self._reply_error(conn, code, details, missing)
        elif out is None:
            _send_parts(conn, [_REPLY.pack(REPLY_MAGIC, 0, 0, 0, 0, 0, 0, *self.target.incarnation_info())],
                        self._send_deadline())
        else:
            head, r, d = _payload_parts(out)
            fixed_out = self._reply_fixed(len(head), memoryview(r).nbytes, memoryview(d).nbytes)
            _send_parts(conn, [fixed_out, head, r, d], self._send_deadline())
        return True

    def _send_deadline(self) -> float:
        return time.monotonic() + self.io_timeout

    def _reply_error(self, conn: socket.socket, code: int, details: str, missing: str,
                     closing: bool = False) -> None:
        text, miss = details.encode("utf-8", "replace"), missing.encode()
        fixed = _REPLY.pack(REPLY_MAGIC, code, FLAG_CLOSING if closing else 0, 0, len(text), len(miss), 0,
                            *self.target.incarnation_info())
        _send_parts(conn, [fixed, text, miss], self._send_deadline())


# ------------------------------------------------------------------ client
class BulkPool:
    """Client side: idle connections per (host, port); each call has one to itself."""

    def __init__(self, max_idle: int = 8) -> None:
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int], list[socket.socket]] = {}
        self._lock = threading.Lock()

    def _take(self, host: str, port: int, timeout: float) -> socket.socket:
        with self._lock:
            idle = self._idle.get((host, port))
            if idle:
                return idle.pop()
        sock = socket.create_connection((host, port), timeout=min(timeout, 30.0))
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
        where = f"bulk channel {host}:{port}"
        try:
            sock = self._take(host, port, timeout)
        except OSError as e:
            raise BulkStatus("UNAVAILABLE", f"{where}: cannot connect: {e}", connect_failed=True) from None
        keep = False
        try:
            deadline = time.monotonic() + timeout
            header, rows, data = _payload_parts(env)
            tok = token.encode()
            fixed = _FRAME.pack(REQ_MAGIC, METHOD_CODE[method], 0, len(tok), len(header),
                                memoryview(rows).nbytes, memoryview(data).nbytes)
            _send_parts(sock, [fixed, tok, header, rows, data], deadline)
            reply, keep, info = self._read_reply(sock, deadline, where)
            if on_info is not None:
                on_info(info)
            return reply
        except BulkStatus as e:
            keep = e.keep
            raise
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


#: a closing connection's unread input is discarded for at most this long and this many bytes
LINGER_S, LINGER_BYTES = 2.0, 8 << 20


def _linger_close(conn: socket.socket) -> None:
    """Close after a refusal without losing the reply: closing a socket that still has unread
    input sends a reset, and the peer's kernel then drops our reply before the peer reads it.
    So send FIN first, discard what the peer is still sending (one small fixed buffer, bounded
    in bytes and time: nothing is kept), then close."""
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(0.2)
        sink, left, give_up = bytearray(64 << 10), LINGER_BYTES, time.monotonic() + LINGER_S
        while left > 0 and time.monotonic() < give_up:
            try:
                k = conn.recv_into(sink)
            except socket.timeout:
                continue
            if not k:
                break
            left -= k
    except OSError:
        pass
    finally:
        conn.close()

