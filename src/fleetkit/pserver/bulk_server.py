"""The bulk channel's server (wire format: ``bulk.py``).

Who serves a connection: small frames that arrived whole, of methods the pserver says
cannot wait (``BulkTarget.bulk_inline``: async-mode pushes and pulls, pulls without a
barrier), are served inline by one event-loop thread for every connection
(``bulk_loop.py``), so N trainers' frames cost no GIL hand-offs between N threads and
one wake-up serves every frame that is ready.  Everything else runs on the connection's
own worker thread, in blocking mode as a thread-per-connection server would: a new
connection's first frame (the token check, under ``auth_timeout``), frames that arrive
in pieces or are large, replies the socket cannot take at once, calls that may wait
(sync-mode barriers and gets that wait for their round), refusals and closing.  The
worker gives the connection back to the loop after a frame of an inline method, and
keeps it (no hand-off per frame) while its frames are of methods that may wait.  Only
the thread that holds a connection reads, writes or closes it.

Per-message cost: a connection is read through a fixed buffer (``netio.BufferedReader``),
so a small frame that arrived whole costs one ``recv`` and one copy into memory of its
own, and it is answered with one write that cannot wait; sockets stay in blocking mode
between frames (no timeout: ``stop`` shuts them down), since CPython polls before every
call on a socket with a timeout.  Deadlines apply only to a frame that arrives in
pieces (on the worker).  Large payloads are received with ``recv_into`` straight into a
fresh ``np.empty`` buffer and sent with ``sendmsg`` of memoryviews.
"""
from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from typing import Any, Callable, Protocol, Sequence

import grpc
import numpy as np

from ..netio import BufferedReader, set_blocking
from .bulk import (_FRAME, _REPLY, FLAG_CLOSING, MAX_HEADER, MAX_TOKEN, METHOD_NAME, REPLY_MAGIC, REQ_MAGIC,
                   _payload_parts, _send_parts, _tune, _Until)
from .bulk_loop import BulkLoop
from .bulk_reply import Reply, Scratch, advance

__all__ = ["BulkServer", "BulkTarget"]
log = logging.getLogger("fleetkit.pserver.bulk")

_HEADER_STEP = 1 << 20   # a header is read in steps of this: its buffer grows as bytes arrive
_INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


class BulkTarget(Protocol):
    """What the bulk server calls (implemented by ``ParameterServer``)."""

    def bulk_auth(self, method: str, token: bytes | None) -> tuple[int, str, str] | None:
        """None if the token is accepted, else the error status (code, details, missing)."""

    def bulk_inline(self, method: str) -> bool:
        """Whether a call of ``method`` never waits (for other trainers, a round, a file):
        only such calls may run on the event loop, which serves every connection."""

    def bulk_call(self, method: str, header: bytes, rows: Any, data: Any,
                  reply: Callable[[str, Any], Any]) -> tuple[int, str, str, Any]:
        """(status, details, missing, reply: an envelope, ``reply``'s result, or None)."""

    def incarnation_info(self) -> tuple[int, int, int]:
        """(incarnation id, updates applied, update count resumed from or -1 / -2)."""


class Conn:
    """One bulk connection and which thread holds it (the loop or its worker)."""

    __slots__ = ("sock", "fd", "reader", "scratch", "reply", "authenticated", "in_loop", "unsent",
                 "closing", "wake")

    def __init__(self, sock: socket.socket, server: BulkServer) -> None:
        self.sock, self.fd = sock, sock.fileno()
        # made once per connection: the read buffer, the reply and its scratch buffer
        self.reader = BufferedReader(sock)
        self.scratch = Scratch()
        self.reply = Reply(sock, self.scratch, server.reply_bytes, server._reply_fixed)
        self.authenticated = False
        self.in_loop = False            # held by the event loop (else by its worker)
        self.unsent: list[memoryview] | None = None   # reply bytes the loop could not send at once
        self.closing = False            # the loop decided to hang up: the worker closes
        self.wake = threading.Event()   # the loop handed the connection back to the worker


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


class BulkServer:
    """Accepts bulk connections on ``host`` (port chosen by the OS); serves small frames on
    one event loop (``loop``; False: every frame on its connection's thread)."""

    def __init__(self, host: str, target: BulkTarget, max_payload: int, io_timeout: float,
                 name: str = "", max_connections: int = 4096, auth_timeout: float = 5.0,
                 max_unauthenticated: int = 64, loop: bool = True, unix: bool = True) -> None:
        self.host, self.target, self.name = host, target, name
        self.max_payload, self.io_timeout = int(max_payload), float(io_timeout)
        self.max_connections = max_connections
        self.auth_timeout, self.max_unauthenticated = float(auth_timeout), int(max_unauthenticated)
        self._unauthenticated = 0   # connections whose first frame's token is not checked yet
        self.port = 0
        #: the same channel on an AF_UNIX socket, for trainers on this host ("": none)
        self.unix_path = ""
        self._unix = unix
        self.frames = 0                      #: frames served (tests, stats)
        self.inline_frames = 0               #: of which on the event loop
        #: reply bytes the kernel took under the handler lock / copied aside first
        self.reply_bytes = {"kernel": 0, "copied": 0}
        self._sock: socket.socket | None = None
        self._unix_sock: socket.socket | None = None
        self._conns: set[Conn] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.loop: BulkLoop | None = BulkLoop(self) if loop else None

    def start(self, port: int = 0) -> int:
        """Bind (``port`` 0: any free one) and start accepting; returns the port."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        host = "" if self.host in ("0.0.0.0", "::", "") else self.host
        sock = socket.create_server((host, port), family=family, backlog=128)
        sock.settimeout(0.5)   # the accept loop notices stop() within this
        self._sock, self.port = sock, sock.getsockname()[1]
        if self._unix:
            self._unix_sock = self._listen_unix()
        if self.loop is not None:
            self.loop.start()
        self._threads = [threading.Thread(target=self._accept_loop, args=(ls,), daemon=True, name="fk-bulk-accept")
                         for ls in (sock, self._unix_sock) if ls is not None]
        for t in self._threads:
            t.start()
        return self.port

    def _listen_unix(self) -> socket.socket | None:
        """An AF_UNIX listener in a fresh 0700 directory (only this user reaches it, and no
        other process can take its name first, as it could an abstract socket's): a local
        trainer's frames then skip TCP (a small one costs the pserver 10-15% less CPU)."""
        if not hasattr(socket, "AF_UNIX"):
            return None
        _sweep_stale_unix_dirs()
        try:
            directory = tempfile.mkdtemp(prefix=f"{_UNIX_PREFIX}{os.getpid()}-")   # mode 0700
            path = os.path.join(directory, "bulk.sock")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
            sock.listen(128)
            sock.settimeout(0.5)
        except OSError as e:   # a TMPDIR too long for a socket name, a read-only /tmp...
            log.info("bulk %s: no AF_UNIX listener (%s); local trainers use TCP", self.name, e)
            return None
        self.unix_path = path
        return sock

    def stop(self) -> None:
        """Stop accepting and close every connection (blocked reads return, parked workers
        wake up and close theirs)."""
        self._stop.set()
        for ls in (self._sock, self._unix_sock):
            if ls is not None:
                ls.close()
        if self.unix_path:
            try:
                _remove_dir(os.path.dirname(self.unix_path))
            except OSError:
                pass
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self.loop is not None:
            self.loop.stop()
        for c in conns:
            c.wake.set()
        for t in self._threads:
            t.join(5)

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return   # closed by stop()
            with self._lock:
                full = len(self._conns) >= self.max_connections
                if full or self._unauthenticated >= self.max_unauthenticated:
                    log.warning("bulk %s: %d connections (%d not authenticated yet), refusing another",
                                self.name, len(self._conns), self._unauthenticated)
                    sock.close()
                    continue
                conn = Conn(sock, self)
                self._conns.add(conn)
                self._unauthenticated += 1
            _tune(sock)
            threading.Thread(target=self._work, args=(conn,), daemon=True, name="fk-bulk-conn").start()

    # ------------------------------------------------------------ the worker
    def _work(self, c: Conn) -> None:
        """A connection's own thread: serves its first frame and every frame the loop hands
        over; closes it at the end (the only thread that does)."""
        try:
            while not self._stop.is_set() and not c.closing:
                if c.unsent:   # what the loop could not send without waiting
                    _send_parts(c.sock, c.unsent, self._send_deadline())
                    c.unsent = None
                    if c.reader.buffered == 0 and self._give_back(c):
                        continue
                keep, inline = self._serve_one(c)
                if not keep:
                    break
                c.scratch.trim()
                # a frame of a method that may wait keeps the connection here (its next
                # frame likely may wait too); bytes already read stay with this thread
                if inline and c.reader.buffered == 0:
                    self._give_back(c)
        except (OSError, ConnectionError) as e:
            # peer went away (mid-frame too), or a read stalled past io_timeout: drop it
            log.debug("bulk %s: connection dropped: %s", self.name, e)
        except Exception:  # noqa: BLE001 - a bug here must not take the pserver down
            log.exception("bulk %s: connection failed", self.name)
        finally:
            with self._lock:
                self._conns.discard(c)
                if not c.authenticated:
                    self._unauthenticated -= 1
            _linger_close(c.sock)

    def _give_back(self, c: Conn) -> bool:
        """Hand ``c`` to the event loop and park until the loop hands it back; False if
        there is no loop or it has ended (the worker keeps serving)."""
        if self.loop is None or self._stop.is_set():
            return False
        set_blocking(c.sock)   # the loop's reads and writes must not poll first
        c.wake.clear()
        if not self.loop.adopt(c):
            return False
        c.wake.wait()
        return True

    def hand_off(self, c: Conn) -> None:
        """The loop gives ``c`` to its worker (called by the loop, which dropped it)."""
        c.in_loop = False
        c.wake.set()

    # ------------------------------------------------------------ one frame
    def _reply_fixed(self, hlen: int, rlen: int, dlen: int) -> bytes:
        """The fixed part of a value reply (status 0), with the pserver's incarnation."""
        return _REPLY.pack(REPLY_MAGIC, 0, 0, 0, hlen, rlen, dlen, *self.target.incarnation_info())

    def _authenticated(self, c: Conn) -> None:
        if not c.authenticated:
            c.authenticated = True
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

    def _serve_one(self, c: Conn) -> tuple[bool, bool]:
        """Read one frame and answer it: (keep the connection, the method may run inline).
        A small frame that arrived whole is taken from the reader's buffer after one read;
        on the loop (``c.in_loop``) the whole frame is buffered already, so nothing waits."""
        reader = c.reader
        first = not c.authenticated
        auth_until = _Until(time.monotonic() + self.auth_timeout) if first else None
        if not self._wait_frame(reader, auth_until):
            return False, False
        deadline = _Until(time.monotonic() + self.io_timeout)     # the rest of the frame
        token_due = _Until(min(deadline.at, auth_until.at)) if auth_until is not None else deadline
        magic, mcode, _flags, tlen, hlen, rlen, dlen = _FRAME.unpack(reader.take(_FRAME.size, token_due))
        return self.serve_frame(c, magic, mcode, tlen, hlen, rlen, dlen, token_due, deadline)

    def serve_frame(self, c: Conn, magic: bytes, mcode: int, tlen: int, hlen: int, rlen: int, dlen: int,
                    token_due: _Until | None = None, deadline: _Until | None = None) -> tuple[bool, bool]:
        """Serve the frame whose fixed part was read (its fields given): as ``_serve_one``.
        The loop calls it for a frame that is whole in the buffer (no deadlines needed)."""
        reader = c.reader
        method = METHOD_NAME.get(mcode)
        if magic != REQ_MAGIC or method is None or hlen > MAX_HEADER or tlen > MAX_TOKEN:
            why = (f"malformed bulk frame (magic {bytes(magic)!r}, method {mcode}, header {hlen} bytes)")
            self._reply_error(c, _INVALID, why, "", closing=True)
            return False, False
        if rlen + dlen > self.max_payload:
            why = (f"{method}: bulk frame announces {rlen + dlen} payload bytes, more than this "
                   f"pserver's limit of {self.max_payload}")
            self._reply_error(c, _EXHAUSTED, why, "", closing=True)
            return False, False
        token = bytes(reader.take(tlen, token_due)) if tlen else None
        refused = self.target.bulk_auth(method, token)
        if refused is not None:   # nothing more is read from a peer without the token
            self._reply_error(c, *refused, closing=True)
            return False, False
        if not c.authenticated:
            self._authenticated(c)
        if reader.buffered >= hlen + rlen + dlen:   # arrived whole: no wait
            header = bytes(reader.take(hlen))
            # its own memory, aligned (a fresh allocation); none for a payload-free request
            payload: Any = memoryview(reader.take_copy(rlen + dlen)) if rlen + dlen else b""
        else:
            header = _read_growing(reader, hlen, deadline)
            buf = np.empty(rlen + dlen, np.uint8)   # the value's own memory: handlers may keep it
            reader.read_into(memoryview(buf), deadline)
            payload = memoryview(buf)
        if not c.in_loop:   # (the loop's sockets are in blocking mode: _give_back)
            set_blocking(c.sock)   # the reply's first write must not wait (it may run under the handler lock)
        reply = c.reply
        reply.rest = None   # (Reply.reset) nothing of this frame's reply is started
        rows = payload[:rlen] if rlen else b""
        data = (payload[rlen:] if rlen else payload) if dlen else b""
        code, details, missing, out = self.target.bulk_call(method, header, rows, data, reply)
        self.frames += 1
        if out is reply:
            if reply.rest:
                self._send(c, reply.rest)
        elif reply.rest is not None:
            return False, False   # a started reply was not sent: the stream is out of step, hang up
        elif code:
            self._reply_error(c, code, details, missing)
        elif out is None:
            self._send(c, [_REPLY.pack(REPLY_MAGIC, 0, 0, 0, 0, 0, 0, *self.target.incarnation_info())])
        else:
            head, r, d = _payload_parts(out)
            fixed_out = self._reply_fixed(len(head), memoryview(r).nbytes, memoryview(d).nbytes)
            self._send(c, [fixed_out, head, r, d])
        return True, self.target.bulk_inline(method)

    def _send(self, c: Conn, parts: Sequence[Any]) -> None:
        """Send ``parts``: on the worker, all of it (with the I/O deadline); on the loop,
        what the socket takes without waiting, the rest left in ``c.unsent`` for the
        worker (the loop never waits for one peer)."""
        if not c.in_loop:
            _send_parts(c.sock, parts, self._send_deadline())
            return
        if len(parts) == 1:   # a small reply, copied whole (bulk_reply.Reply): no list of views
            try:
                sent = c.sock.send(parts[0], socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            if sent < len(parts[0]):
                c.unsent = [memoryview(parts[0]).cast("B")[sent:]]
            return
        views = [v for v in (memoryview(p).cast("B") for p in parts) if v.nbytes]
        try:
            sent = c.sock.sendmsg(views[:512], (), socket.MSG_DONTWAIT) if views else 0
        except BlockingIOError:
            sent = 0
        rest = advance(views, sent)
        if rest:
            c.unsent = rest

    def _send_deadline(self) -> float:
        return time.monotonic() + self.io_timeout

    def _reply_error(self, c: Conn, code: int, details: str, missing: str, closing: bool = False) -> None:
        text, miss = details.encode("utf-8", "replace"), missing.encode()
        fixed = _REPLY.pack(REPLY_MAGIC, code, FLAG_CLOSING if closing else 0, 0, len(text), len(miss), 0,
                            *self.target.incarnation_info())
        self._send(c, [fixed, text, miss])


_UNIX_PREFIX = "fleetkit-bulk-"


def _sweep_stale_unix_dirs() -> None:
    """Remove the socket directories of this user's pservers that died without stopping
    (killed): their process is gone and their socket refuses connections."""
    root = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(root) if n.startswith(_UNIX_PREFIX)]
    except OSError:
        return
    for name in names:
        directory = os.path.join(root, name)
        pid = name[len(_UNIX_PREFIX):].partition("-")[0]
        try:
            if os.stat(directory).st_uid != os.getuid() or not pid.isdigit() or _alive(int(pid)):
                continue
            path = os.path.join(directory, "bulk.sock")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                continue   # still served (a pserver in another PID namespace)
            except (ConnectionRefusedError, FileNotFoundError):
                pass
            finally:
                probe.close()
            _remove_dir(directory)
        except OSError:
            continue


def _remove_dir(directory: str) -> None:
    """Remove a socket directory and what it holds (the socket)."""
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    os.rmdir(directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
