"""recv_exactly: fills the buffer across short reads, names a peer that closed early, and
gives up at its deadline (a socketpair: no network)."""
import socket
import time

import pytest

from fleetkit.collective import Deadline
from fleetkit.netio import recv_exactly


def test_fills_across_short_reads_then_reports_eof():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"abc")
        a.sendall(b"defg")
        buf = bytearray(7)
        recv_exactly(b, memoryview(buf), Deadline(5.0))
        assert bytes(buf) == b"abcdefg"
        a.sendall(b"xy")
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionResetError, match="end of stream"):
            recv_exactly(b, memoryview(bytearray(3)), Deadline(5.0))


def test_deadline_bounds_the_wait():
    a, b = socket.socketpair()
    with a, b:
        start = time.monotonic()
        with pytest.raises(socket.timeout):
            recv_exactly(b, memoryview(bytearray(4)), Deadline(0.2))
        assert time.monotonic() - start < 2.0
