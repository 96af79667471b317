"""The bulk server's event loop (pserver/bulk_loop.py) next to its worker threads.

In-process pservers, raw frames on the bulk port, so which thread served a frame is
read from ``BulkServer.inline_frames`` (frames served on the loop) against ``frames``
(all).  Covers: small frames of inline-safe methods run on the loop, a connection's
first frame, large frames and frames that arrive in pieces run on its worker and the
connection comes back to the loop after; a sync-mode get waiting for its round does
not stall another trainer's calls; a peer dying mid-frame or between frames is dropped
and the others keep being served; stop() ends the loop and every connection promptly;
connections outlive a failed loop (their workers keep serving them).
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Any

import numpy as np
import pytest
from test_pserver_bulk import _frame, _read_reply

from fleetkit.pserver import bulk, codec, rpc
from fleetkit.pserver.server import ParameterServer, ServerHandler, ServerOptions

pytestmark = pytest.mark.timeout(60)


class _Handler(ServerHandler):
    """SGD with lr 1 on float32 parameters 'w' (4x3) and 'big' (256 KiB)."""

    def __init__(self) -> None:
        self.p = {"w": np.zeros((4, 3), np.float32), "big": np.zeros(1 << 16, np.float32)}

    def apply(self, grads: dict[str, Any]) -> None:
        for name, g in grads.items():
            self.p[name.removesuffix("@GRAD")] -= g

    def get(self, name: str) -> Any:
        return self.p[name]

    def state(self) -> dict[str, Any]:
        return dict(self.p)

    def load_state(self, state: dict[str, Any]) -> None:
        self.p.update(state)


@pytest.fixture
def pserver():
    started: list[ParameterServer] = []

    def make(num_trainers: int = 1, sync_mode: bool = False) -> ParameterServer:
        s = ParameterServer("127.0.0.1:0", _Handler(), num_trainers, sync_mode,
                            ServerOptions(bulk=True, exit_when_complete=False, heartbeat_timeout_s=60))
        s.start()
        started.append(s)
        return s
    yield make
    for s in started:
        s.stop(0)


def _connect(s: ParameterServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", s.bulk_port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _push(name: str, value: np.ndarray, trainer: int = 0, seq: int = 0) -> bytes:
    return _frame("SendVariable", codec.encode(name, value, trainer, seq=seq)[0])


def _pull(name: str, trainer: int = 0, method: str = "GetVariableNoBarrier") -> bytes:
    return _frame(method, codec.control(name, trainer))


def _call(sock: socket.socket, frame: bytes) -> int:
    sock.sendall(frame)
    return _read_reply(sock)[0]


def _pulled(sock: socket.socket, name: str) -> np.ndarray:
    """The value of a pull, read whole (``_read_reply`` drops the payload)."""
    sock.sendall(_pull(name))
    return bulk.BulkPool()._read_reply(sock, time.monotonic() + 10, "test")[0].data


def _until(cond: Any, what: str, timeout: float = 10.0) -> None:
    give_up = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < give_up, what
        time.sleep(0.01)


def test_small_frames_run_on_the_loop_large_and_partial_ones_on_the_worker(pserver):
    s = pserver()
    srv = s._bulk
    sock = _connect(s)
    assert _call(sock, _pull("w")) == 0            # the first frame (the token check): worker
    assert (srv.frames, srv.inline_frames) == (1, 0)
    for k in range(5):
        assert _call(sock, _push("w@GRAD", np.ones((4, 3), np.float32), seq=k + 1)) == 0
        assert _call(sock, _pull("w")) == 0
    assert (srv.frames, srv.inline_frames) == (11, 10)
    # a large push does not fit the loop's buffer: the worker reads it, then gives the connection back
    assert _call(sock, _push("big@GRAD", np.ones(1 << 16, np.float32), seq=99)) == 0
    assert (srv.frames, srv.inline_frames) == (12, 10)
    # a frame that arrives in two pieces: the loop hands it over, the worker waits for the rest
    frame = _push("w@GRAD", np.ones((4, 3), np.float32), seq=100)
    sock.sendall(frame[:30])
    time.sleep(0.2)
    sock.sendall(frame[30:])
    assert _read_reply(sock)[0] == 0
    assert (srv.frames, srv.inline_frames) == (13, 10)
    # back on the loop, and every push was applied once; the repeated pull header was
    # served from ParameterServer._bulk_pulls (no parsing) and still reads the current value
    assert list(s._bulk_pulls.values()) == [(0, "w")]
    w = np.frombuffer(_pulled(sock, "w"), np.float32)
    assert np.array_equal(w, -6 * np.ones(12, np.float32))
    assert (srv.frames, srv.inline_frames) == (14, 11)
    big = np.frombuffer(_pulled(sock, "big"), np.float32)   # a large reply, sent from the loop
    assert big.shape == (1 << 16,) and (big == -1).all()
    sock.close()


def test_a_sync_get_waiting_for_its_round_does_not_stall_another_trainer(pserver):
    s = pserver(num_trainers=2, sync_mode=True)
    srv = s._bulk
    a, b = _connect(s), _connect(s)
    assert _call(a, _push("w@GRAD", np.ones((4, 3), np.float32), trainer=0)) == 0
    assert _call(a, _frame("SendVariable", codec.control(rpc.BATCH_BARRIER, 0))) == 0
    got: list[int] = []
    waiting = threading.Thread(target=lambda: got.append(_call(a, _pull("w", 0, "GetVariable"))))
    waiting.start()   # waits for trainer 1's barrier, on its connection's worker
    time.sleep(0.2)
    assert waiting.is_alive()
    inline_before = srv.inline_frames
    started = time.monotonic()
    for _ in range(5):   # trainer 1's pulls without barrier are answered meanwhile, on the loop
        assert _call(b, _pull("w", 1)) == 0
    assert time.monotonic() - started < 5 and waiting.is_alive()
    assert srv.inline_frames - inline_before >= 4
    assert _call(b, _push("w@GRAD", np.ones((4, 3), np.float32), trainer=1)) == 0
    assert _call(b, _frame("SendVariable", codec.control(rpc.BATCH_BARRIER, 1))) == 0
    waiting.join(10)
    assert got == [0]
    a.close()
    b.close()


def test_a_peer_dying_mid_frame_or_between_frames_is_dropped(pserver):
    s = pserver()
    srv = s._bulk
    ok = _connect(s)
    assert _call(ok, _pull("w")) == 0
    n_conns = len(srv._conns)
    for cut in (30, None):   # half a frame, then (None) an idle connection on the loop
        dying = _connect(s)
        assert _call(dying, _pull("w")) == 0 and _call(dying, _pull("w")) == 0   # now held by the loop
        if cut is not None:
            dying.sendall(_push("w@GRAD", np.ones((4, 3), np.float32), seq=7)[:cut])
            time.sleep(0.1)
        dying.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        dying.close()   # a reset, as when the peer's process dies
        _until(lambda: len(srv._conns) == n_conns, f"connection cut at {cut} dropped")
        assert _call(ok, _pull("w")) == 0
    assert np.array_equal(np.frombuffer(_pulled(ok, "w"), np.float32), np.zeros(12, np.float32))
    ok.close()


def test_stop_ends_the_loop_and_every_connection_promptly(pserver):
    s = pserver()
    srv = s._bulk
    on_loop, mid_frame, new = _connect(s), _connect(s), _connect(s)
    for sock in (on_loop, mid_frame):
        assert _call(sock, _pull("w")) == 0 and _call(sock, _pull("w")) == 0
    mid_frame.sendall(_push("w@GRAD", np.ones((4, 3), np.float32))[:30])   # its worker waits for the rest
    _until(lambda: len(srv._conns) == 3, "three connections accepted")
    loop_thread = srv.loop._thread
    started = time.monotonic()
    s.stop(0)
    assert time.monotonic() - started < 5
    assert not loop_thread.is_alive()
    for sock in (on_loop, mid_frame, new):   # every peer sees the connection end
        sock.settimeout(5)
        try:
            assert sock.recv(1 << 16) == b""
        except ConnectionResetError:
            pass
        sock.close()
    _until(lambda: not srv._conns, "every connection closed")


def test_connections_outlive_a_failed_loop_on_their_workers(pserver):
    s = pserver()
    srv = s._bulk
    sock = _connect(s)
    assert _call(sock, _pull("w")) == 0 and _call(sock, _pull("w")) == 0   # now held by the loop
    real_wake = srv.loop._wake_r

    class Broken:
        def recv(self, n: int) -> bytes:
            raise RuntimeError("a bug in the event loop")

        def close(self) -> None:
            real_wake.close()
    srv.loop._wake_r = Broken()
    srv.loop._wake_w.send(b"x")   # the loop fails outside any one connection's frame
    _until(lambda: not srv.loop._thread.is_alive(), "the loop ended")
    frames, inline = srv.frames, srv.inline_frames
    for _ in range(3):   # the connection went back to its worker, which keeps serving it
        assert _call(sock, _pull("w")) == 0
    assert (srv.frames, srv.inline_frames) == (frames + 3, inline)
    fresh = _connect(s)   # and so does a new connection's
    assert _call(fresh, _pull("w")) == 0 and _call(fresh, _pull("w")) == 0
    sock.close()
    fresh.close()
