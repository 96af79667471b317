"""recv_exactly: fills the buffer across short reads, names a peer that closed early, and
gives up at its deadline; BufferedReader: one read per frame that arrived whole, the rest
waited for within the deadline (a socketpair: no network)."""
import socket
import time

import pytest

from fleetkit.collective import Deadline
from fleetkit.netio import BufferedReader, recv_exactly


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


class _CountingSocket:
    """A socket whose reads are counted (the reader's point is one read per small frame)."""

    def __init__(self, sock):
        self.sock, self.reads = sock, 0

    def recv_into(self, view, *args):
        self.reads += 1
        return self.sock.recv_into(view, *args)

    def gettimeout(self):
        return self.sock.gettimeout()

    def settimeout(self, t):
        self.sock.settimeout(t)


def test_buffered_reader_takes_a_whole_frame_with_one_read():
    a, b = socket.socketpair()
    with a, b:
        counted = _CountingSocket(b)
        reader = BufferedReader(counted, size=64)
        a.sendall(b"HEAD" + b"token" + b"payload")
        assert reader.wait() and counted.reads == 1
        assert bytes(reader.take(4)) == b"HEAD" and bytes(reader.take(5)) == b"token"
        copy = reader.take_copy(7)
        assert bytes(copy) == b"payload" and counted.reads == 1 and reader.buffered == 0
        a.sendall(b"next")           # the copy is the caller's: later reads do not touch it
        assert reader.wait() and bytes(reader.take(4)) == b"next" and bytes(copy) == b"payload"
        assert b.gettimeout() is None   # waiting between frames: blocking mode, no timeout


def test_buffered_reader_waits_for_the_rest_and_reads_big_parts_straight():
    a, b = socket.socketpair()
    with a, b:
        reader = BufferedReader(b, size=16)
        a.sendall(b"0123456789")
        assert reader.wait() and bytes(reader.take(8)) == b"01234567"
        a.sendall(b"abcdefghij")
        # 2 bytes left at the buffer's end: moved to the front, the rest read behind them
        assert bytes(reader.take(12, Deadline(5.0))) == b"89abcdefghij"
        big = bytearray(40)
        a.sendall(b"k" + bytes(range(40)))
        assert bytes(reader.take(1, Deadline(5.0))) == b"k"
        reader.read_into(memoryview(big), Deadline(5.0))   # what is buffered, then straight from the socket
        assert bytes(big) == bytes(range(40)) and reader.buffered == 0
        with pytest.raises(ValueError, match="exceeds the reader's 16-byte buffer"):
            reader.take(17)
        with pytest.raises(ValueError, match="take_copy"):
            reader.take_copy(1)


def test_buffered_reader_deadline_and_end_of_stream():
    a, b = socket.socketpair()
    with b:
        reader = BufferedReader(b)
        with a:
            a.sendall(b"ab")
            assert reader.wait()
            start = time.monotonic()
            with pytest.raises(socket.timeout):
                reader.take(3, Deadline(0.2))
            assert time.monotonic() - start < 2.0
        assert bytes(reader.take(2)) == b"ab"
        assert reader.wait() is False   # a clean end between frames


def test_buffered_reader_fill_nowait_never_waits_and_keeps_what_is_buffered():
    a, b = socket.socketpair()
    with a, b:
        reader = BufferedReader(b, size=8)
        assert reader.fill_nowait() is None                  # nothing there: no wait
        a.sendall(b"abcdef")
        assert reader.fill_nowait() == 6 and bytes(reader.peek(2)) == b"ab" and reader.buffered == 6
        assert bytes(reader.take(5)) == b"abcde"
        a.sendall(b"ghijklmn")
        assert reader.fill_nowait() == 7                     # "f" moved to the front, 7 bytes of room
        assert bytes(reader.take(8)) == b"fghijklm"
        assert reader.fill_nowait() == 1 and bytes(reader.take(1)) == b"n"
        a.sendall(b"12345678")
        assert reader.fill_nowait() == 8 and reader.fill_nowait() is None   # full: not read into
        a.shutdown(socket.SHUT_WR)
        assert bytes(reader.take(8)) == b"12345678"
        assert reader.fill_nowait() == 0                     # end of stream
