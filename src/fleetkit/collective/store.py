"""Rendezvous key-value stores: how ranks find each other's addresses (and NCCL ids).

Two implementations of one small ``Store`` interface:

* ``TCPStore``: a tiny key-value server (``TCPStoreServer``), hosted by rank 0
  or by a test's parent process on port 0 (the real port is then read from
  ``server.port``, never guessed), and a client per rank.
* ``FileStore``: one file per key in a shared directory; needs no ports.

``get`` blocks until the key exists (or the timeout passes).  Values are raw
bytes; the wire format is ``struct`` framing, and nothing received is ever
unpickled.
"""
from __future__ import annotations

import abc
import fcntl
import logging
import os
import socket
import struct
import tempfile
import threading
import time

from ..errors import CollectiveError, CollectiveTimeoutError, InvalidArgumentError, seconds_text
from ..netio import recv_exactly
from ..waits import WaitNote
from .constants import default_timeout

log = logging.getLogger(__name__)

__all__ = ["FileStore", "PrefixStore", "Store", "TCPStore", "TCPStoreServer"]

_REQUEST = struct.Struct("<BdIQ")   # command, timeout (s), key length, value length / amount
_REPLY = struct.Struct("<BQ")       # status, payload length
_SET, _GET, _ADD = 1, 2, 3
_OK, _TIMEOUT, _FAILED = 0, 1, 2
_MAX_KEY = 1 << 16
_MAX_VALUE = 1 << 30


class Store(abc.ABC):
    """A key-value store shared by the ranks of one job."""

    @abc.abstractmethod
    def set(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` (overwrites)."""

    @abc.abstractmethod
    def get(self, key: str, timeout: float | None = None) -> bytes:
        """The value of ``key``, waiting until some rank sets it.

        Raises:
            CollectiveTimeoutError: the key did not appear within ``timeout``.
        """

    @abc.abstractmethod
    def add(self, key: str, amount: int = 1) -> int:
        """Atomically add ``amount`` to the integer under ``key`` (0 if unset); return the sum."""

    def close(self) -> None:
        """Release connections (and a hosted server)."""

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PrefixStore(Store):
    """Every key of ``store`` prefixed, so several groups can share one store."""

    def __init__(self, prefix: str, store: Store):
        self.prefix, self.store = prefix, store

    def set(self, key: str, value: bytes) -> None:
        """See base class."""
        self.store.set(self.prefix + key, value)

    def get(self, key: str, timeout: float | None = None) -> bytes:
        """See base class."""
        return self.store.get(self.prefix + key, timeout)

    def add(self, key: str, amount: int = 1) -> int:
        """See base class."""
        return self.store.add(self.prefix + key, amount)


# ---- TCP ---------------------------------------------------------------------------------------


class TCPStoreServer:
    """Serves one in-memory key-value map to ``TCPStore`` clients, from daemon threads.

    Args:
        host: address to bind ("127.0.0.1" for tests, "" for all interfaces).
        port: 0 picks a free port; read it from ``self.port``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._data: dict[str, bytes] = {}
        self._cond = threading.Condition()
        self._sock = socket.create_server((host, port), reuse_port=False, backlog=128)
        self.host, self.port = host, self._sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True, name="fleetkit-store-accept").start()

    @property
    def address(self) -> str:
        """``host:port`` that clients connect to."""
        return f"{self.host or '127.0.0.1'}:{self.port}"

    def close(self) -> None:
        """Stop accepting; connected clients get EOF on their next request."""
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), daemon=True, name="fleetkit-store-conn").start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    head = _recv_exact(conn, _REQUEST.size)
                    cmd, wait_s, klen, vlen = _REQUEST.unpack(head)
                    if klen > _MAX_KEY or (cmd == _SET and vlen > _MAX_VALUE):
                        return  # a foreign or broken client: drop it
                    key = _recv_exact(conn, klen).decode("utf-8")
                    value = _recv_exact(conn, vlen) if cmd == _SET else b""
                except (OSError, EOFError, UnicodeDecodeError):
                    return
                status, payload = self._handle(cmd, key, value, wait_s, vlen)
                try:
                    conn.sendall(_REPLY.pack(status, len(payload)) + payload)
                except OSError:
                    return

    def _handle(self, cmd: int, key: str, value: bytes, wait_s: float, amount: int) -> tuple[int, bytes]:
        with self._cond:
            if cmd == _SET:
                self._data[key] = value
                self._cond.notify_all()
                return _OK, b""
            if cmd == _GET:
                if self._cond.wait_for(lambda: key in self._data, timeout=max(0.0, wait_s)):
                    return _OK, self._data[key]
                return _TIMEOUT, b""
            if cmd == _ADD:
                signed = struct.unpack("<q", struct.pack("<Q", amount))[0]
                total = int(self._data.get(key, b"0")) + signed
                self._data[key] = str(total).encode()
                self._cond.notify_all()
                return _OK, self._data[key]
        return _FAILED, f"unknown store command {cmd}".encode()


class TCPStore(Store):
    """Client of a ``TCPStoreServer``; with ``is_server=True`` it also hosts one.

    Args:
        host, port: the server's address; with ``is_server`` and port 0 the
            hosted server picks a port (``self.port`` tells which).
        is_server: start the server in this process (rank 0, or a test parent).
        timeout: default for ``get`` and for connecting (s).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, is_server: bool = False,
                 timeout: float | None = None):
        self.timeout = default_timeout() if timeout is None else float(timeout)
        self.server = TCPStoreServer(host, port) if is_server else None
        self.host, self.port = host, (self.server.port if self.server else port)
        self._lock = threading.Lock()
        self._sock = _connect_with_retry(self.host, self.port, self.timeout, "store")

    @classmethod
    def from_address(cls, address: str, timeout: float | None = None) -> "TCPStore":
        """Connect to ``host:port``."""
        host, _, port = address.rpartition(":")
        return cls(host, int(port), timeout=timeout)

    def set(self, key: str, value: bytes) -> None:
        """See base class."""
        self._call(_SET, key, bytes(value), 0.0)

    def get(self, key: str, timeout: float | None = None) -> bytes:
        """See base class."""
        wait_s = self.timeout if timeout is None else float(timeout)
        return self._call(_GET, key, b"", wait_s)

    def add(self, key: str, amount: int = 1) -> int:
        """See base class."""
        return int(self._call(_ADD, key, b"", 0.0, amount & 0xFFFFFFFFFFFFFFFF))

    def close(self) -> None:
        """See base class."""
        self._sock.close()
        if self.server is not None:
            self.server.close()

    def _call(self, cmd: int, key: str, value: bytes, wait_s: float, number: int | None = None) -> bytes:
        raw_key = key.encode("utf-8")
        head = _REQUEST.pack(cmd, wait_s, len(raw_key), len(value) if number is None else number)
        with self._lock:
            try:
                # The server answers a GET after at most wait_s; allow for transit.
                self._sock.settimeout(wait_s + 30.0)
                self._sock.sendall(head + raw_key + value)
                status, length = _REPLY.unpack(_recv_exact(self._sock, _REPLY.size))
                payload = _recv_exact(self._sock, length)
            except (OSError, EOFError) as exc:
                raise CollectiveError(f"store at {self.host}:{self.port} failed during "
                                      f"{'set get add'.split()[cmd - 1]} {key!r}: {exc}") from exc
        if status == _TIMEOUT:
            raise CollectiveTimeoutError(f"store key {key!r} not set within {seconds_text(wait_s)} s "
                                         f"(store {self.host}:{self.port})")
        if status != _OK:
            raise CollectiveError(payload.decode("utf-8", "replace"))
        return payload


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    recv_exactly(sock, memoryview(buf))  # the socket's own timeout bounds each read
    return bytes(buf)


def _connect_with_retry(host: str, port: int, timeout: float, what: str) -> socket.socket:
    """Connect, retrying while the other side is not listening yet."""
    end = time.monotonic() + timeout
    delay = 0.01
    note = WaitNote(log)
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=max(0.1, end - time.monotonic()))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            if time.monotonic() + delay >= end:
                raise CollectiveTimeoutError(f"could not connect to {what} at {host}:{port} "
                                             f"within {seconds_text(timeout)} s: {exc}") from exc
            note.say("waiting for %s at %s:%d to listen (%s); %.0f s left", what, host, port, exc,
                     end - time.monotonic())
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


# ---- files -------------------------------------------------------------------------------------


class FileStore(Store):
    """Keys are files in ``path`` (a directory every rank can see, e.g. a test's tmp_path)."""

    def __init__(self, path: str | os.PathLike, timeout: float | None = None):
        self.path = os.fspath(path)
        self.timeout = default_timeout() if timeout is None else float(timeout)
        os.makedirs(self.path, exist_ok=True)

    def _file(self, key: str) -> str:
        if not key or len(key) > 200:
            raise InvalidArgumentError(f"FileStore key must have 1..200 characters, got {key!r}")
        # Keys may contain "/" and other characters that are not file names.
        return os.path.join(self.path, key.encode("utf-8").hex())

    def set(self, key: str, value: bytes) -> None:
        """See base class."""
        # Write then rename: a reader never sees a half-written value.
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(value)
        os.replace(tmp, self._file(key))

    def get(self, key: str, timeout: float | None = None) -> bytes:
        """See base class."""
        wait_s = self.timeout if timeout is None else float(timeout)
        end, delay, path = time.monotonic() + wait_s, 0.001, self._file(key)
        while True:
            try:
                with open(path, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                if time.monotonic() >= end:
                    raise CollectiveTimeoutError(f"store key {key!r} not set within {seconds_text(wait_s)} s "
                                                 f"(file store {self.path})") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def add(self, key: str, amount: int = 1) -> int:
        """See base class."""
        with open(os.path.join(self.path, ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                path = self._file(key)
                try:
                    with open(path, "rb") as f:
                        total = int(f.read() or b"0") + amount
                except FileNotFoundError:
                    total = amount
                self.set(key, str(total).encode())
                return total
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
