"""Socket helpers shared by the transports (collective store and ring; pserver/bulk.py is
to adopt it, issue 14): one loop for "read exactly n bytes", with a deadline."""
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
