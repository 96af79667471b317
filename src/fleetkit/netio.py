"""Socket helpers shared by the transports (collective store and ring, pserver/bulk.py):
one loop for "read exactly n bytes" with a deadline, and a buffered reader that takes a
small frame with one system call."""
from __future__ import annotations

import socket
from typing import Any


def recv_exactly(sock: socket.socket, view: memoryview, deadline: Any = None) -> None:
    """Fill ``view`` from ``sock``, allocating nothing.

    ``deadline`` is anything with ``remaining()`` seconds (``collective.Deadline``); the
    socket's timeout is set to what is left before each read, and ``socket.timeout`` is
    raised once it has passed.  With ``None`` the socket's own timeout applies per read.
    A peer that closes early raises ``ConnectionResetError``.
    """
    got, size = 0, len(view)
    while got < size:
        if deadline is not None:
            remaining = deadline.remaining()
            if remaining <= 0:
                raise socket.timeout("deadline passed")
            sock.settimeout(remaining)
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionResetError("end of stream")
        got += k


def set_blocking(sock: socket.socket) -> None:
    """Put ``sock`` in blocking mode (no timeout) unless it is already: CPython polls before
    every read or write of a socket that has a timeout, and each ``settimeout`` is a system
    call, so a hot loop keeps its socket in one mode."""
    if sock.gettimeout() is not None:
        sock.settimeout(None)


class BufferedReader:
    """Reads ``sock`` through one reusable buffer of ``size`` bytes.

    A frame that arrived whole (the common case for small ones: a peer writes a frame with
    one gathered send) is taken from the buffer after a single ``recv_into``, whatever
    number of fields it has; only what is missing is waited for, with the deadline.
    Nothing is allocated per read: the buffer is fixed, and parts larger than it are read
    straight into the caller's memory (``read_into``).
    """

    def __init__(self, sock: socket.socket, size: int = 64 << 10) -> None:
        self.sock = sock
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._pos = self._end = 0   # buffered, not yet taken: _buf[_pos:_end]

    @property
    def size(self) -> int:
        return len(self._buf)

    @property
    def buffered(self) -> int:
        """Bytes received and not taken yet."""
        return self._end - self._pos

    def wait(self, deadline: Any = None) -> bool:
        """Block until at least one byte is buffered (``deadline``: as ``recv_exactly``;
        None: wait in blocking mode, for as long as it takes).  False at end of stream."""
        if self._end > self._pos:
            return True
        self._pos = self._end = 0
        if deadline is None:
            set_blocking(self.sock)
        return self._fill(deadline, at_eof_ok=True)

    def take(self, n: int, deadline: Any = None) -> memoryview:
        """The next ``n`` bytes (``n`` <= ``size``), received first if need be.  The view is
        valid until the next call on this reader."""
        if self._end - self._pos < n:
            if n > len(self._buf):
                raise ValueError(f"take({n}) exceeds the reader's {len(self._buf)}-byte buffer")
            if len(self._buf) - self._pos < n:   # move the buffered bytes to the front
                left = self._end - self._pos
                self._view[:left] = self._view[self._pos:self._end]
                self._pos, self._end = 0, left
            while self._end - self._pos < n:
                self._fill(deadline)
        start = self._pos
        self._pos += n
        return self._view[start:start + n]

    def take_copy(self, n: int) -> bytearray:
        """A fresh copy of the next ``n`` bytes, which must be buffered already (see
        ``buffered``): memory of its own, that a caller may keep."""
        if self._end - self._pos < n:
            raise ValueError(f"take_copy({n}) with {self._end - self._pos} bytes buffered")
        start = self._pos
        self._pos += n
        return self._buf[start:start + n]

    def peek(self, n: int) -> memoryview:
        """The next ``n`` buffered bytes (``n`` <= ``buffered``), left in place."""
        return self._view[self._pos:self._pos + n]

    def fill_nowait(self) -> int | None:
        """One read that cannot wait (an event loop's, after the socket polled readable)
        into the buffer's free space: the bytes read, 0 at end of stream, None if none
        were there.  A buffer left full is not read into (0 would read as end of stream)."""
        if self._pos == self._end:
            self._pos = self._end = 0
        elif self._pos:   # move the buffered bytes to the front: the whole room for the read
            left = self._end - self._pos
            self._view[:left] = self._view[self._pos:self._end]
            self._pos, self._end = 0, left
        if self._end == len(self._buf):
            return None
        try:
            k = self.sock.recv_into(self._view[self._end:], 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        self._end += k
        return k

    def read_into(self, view: memoryview, deadline: Any = None) -> None:
        """Fill ``view`` (any size): buffered bytes first, the rest straight from the socket."""
        have = min(self._end - self._pos, view.nbytes)
        if have:
            view[:have] = self._view[self._pos:self._pos + have]
            self._pos += have
        if have < view.nbytes:
            recv_exactly(self.sock, view[have:], deadline)

    def _fill(self, deadline: Any, at_eof_ok: bool = False) -> bool:
        if deadline is not None:
            remaining = deadline.remaining()
            if remaining <= 0:
                raise socket.timeout("deadline passed")
            self.sock.settimeout(remaining)
        k = self.sock.recv_into(self._view[self._end:])
        if k == 0:
            if at_eof_ok:
                return False
            raise ConnectionResetError("end of stream")
        self._end += k
        return True
