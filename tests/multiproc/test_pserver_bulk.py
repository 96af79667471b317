"""The pserver's bulk channel (raw TCP for large tensors) between real processes.

Which transport carried a call is read from ``RPCClient.transport`` (never from
timings).  Covers: large values of every type travel on it and round-trip; sync
rounds, barrier failures and deadlines over it; bad requests get the same errors as
on gRPC and the server keeps serving; bad and missing tokens; a client that vanishes
mid-frame or stalls; fallback to gRPC (client off, env off, server off, an older
pserver without the channel); TLS keeps everything on gRPC; kill -9 and restart (a
new bulk port) is ridden out.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
from test_pserver_rpc import LR, _client

from fleetkit.core.scope import LoDTensor, SelectedRows
from fleetkit.errors import BarrierTimeoutError, RPCAuthError, RPCDeadlineError, RPCError
from fleetkit.pserver import bulk, codec, rpc
from fleetkit.pserver.client import RPCClient
from fleetkit.testing import run_workers

pytestmark = pytest.mark.timeout(120)
KIB = 1 << 10


def _bulk_client(trainer_id: int = 0, **kw: Any) -> RPCClient:
    """Every call that can go on the bulk channel does (threshold 0)."""
    kw.setdefault("bulk_threshold_bytes", 0)
    return _client(trainer_id, **kw)


def _n(c: RPCClient, transport: str) -> int:
    return sum(n for (t, _), n in c.transport.items() if t == transport)


def _errors_of(call: Any) -> tuple[type, str]:
    with pytest.raises(RPCError) as e:
        call()
    return type(e.value), str(e.value)


# ------------------------------------------------------------------ the path
def test_large_values_of_every_type_travel_on_the_bulk_channel(servers):
    s = servers(max_message_bytes=64 * KIB)   # gRPC would chunk everything below
    c = _client(0, max_message_bytes=64 * KIB, bulk_threshold_bytes=128 * KIB)
    rng = np.random.RandomState(0)
    big = {
        "echo/f32": rng.rand(512, 300).astype(np.float32),                      # 600 KiB
        "echo/lod": LoDTensor(np.arange(40000, dtype=np.int64).reshape(20000, 2), [[0, 7, 20000]]),
        "echo/rows": SelectedRows(np.arange(5000) * 3, rng.rand(5000, 8), 20000),
    }
    small = {"echo/small": np.arange(6.0)}
    c.send_vars([(s.endpoint, k, v) for k, v in {**big, **small}.items()])
    assert c.transport["bulk", "SendVariable"] == 3 and c.transport["grpc", "SendVariable"] == 1
    names = [*big, *small]
    grpc_gets = []
    for _ in range(2):   # the first get learns the sizes (gRPC, chunked), the second uses bulk
        got = dict(zip(names, c.get_vars([(s.endpoint, k) for k in names])))
        for k, v in {**big, **small}.items():
            g = got[k]
            assert type(g) is type(v), k
            if isinstance(v, SelectedRows):
                assert g.rows.tolist() == v.rows.tolist() and g.height == v.height
                v, g = v.values, g.values
            elif isinstance(v, LoDTensor):
                assert g.lod() == v.lod()
                v, g = v.values, g.values
            assert g.dtype == v.dtype and np.array_equal(g, v) and g.flags.writeable, k
        grpc_gets.append(c.transport["grpc", "GetVariable"])
    assert c.transport["bulk", "GetVariable"] == 3 and grpc_gets[1] == grpc_gets[0] + 1   # + the small one
    # a prefetch whose id list is large goes on the bulk channel too
    ids = np.arange(40000, dtype=np.int64) * 24_999
    rows = c.prefetch([(s.endpoint, "emb", ids)])[0]
    assert rows.shape == (40000, 4) and c.transport["bulk", "PrefetchVariable"] == 1
    c.close()


def _sync_bulk(rank: int, world: int, endpoint: str, steps: int) -> list:
    c = _bulk_client(rank)
    seen = []
    for step in range(steps):
        time.sleep(0.05 * rank)   # out of step on purpose
        c.send_vars([(endpoint, "w@GRAD", np.full((4, 3), rank + 1.0 + step, np.float32))])
        c.batch_barrier([endpoint])
        (w,) = c.get_vars([(endpoint, "w")])
        c.fetch_barrier([endpoint])
        seen.append(w.copy())
    assert _n(c, "grpc") == 0 and c.transport["bulk", "GetVariable"] == 2 * steps, c.transport
    c.send_complete()
    return seen


def test_sync_rounds_over_the_bulk_channel(servers):
    s = servers(num_trainers=2, sync=True, barrier_timeout=20)
    results = run_workers(_sync_bulk, 2, (s.endpoint, 3), timeout=60)
    w = np.zeros((4, 3), np.float32)
    for step in range(3):
        w -= LR * np.float32((1 + step + 2 + step) / 2)
        for rank in range(2):
            np.testing.assert_allclose(results[rank][step], w, rtol=1e-6)
    s.proc.join(10)
    assert s.proc.exitcode == 0


def _dying_bulk(rank: int, world: int, endpoint: str) -> str:
    c = _bulk_client(rank, heartbeat_s=0)   # the barrier timeout's path (liveness: test_pserver_hardening)
    c.get_vars([(endpoint, "w")])
    c.fetch_barrier([endpoint])
    if rank == 1:
        os._exit(17)
    c.send_vars([(endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    c.batch_barrier([endpoint])
    with pytest.raises(BarrierTimeoutError) as e:
        c.get_vars([(endpoint, "w")])
    assert e.value.missing_trainers == (1,) and c.transport["grpc", "GetVariable"] == 0
    return str(e.value)


def test_barrier_failure_and_deadline_over_the_bulk_channel(servers):
    s = servers(num_trainers=2, sync=True, barrier_timeout=1.5)
    msgs = run_workers(_dying_bulk, 2, (s.endpoint,), timeout=60, expect_exit={1: 17})
    assert "trainer(s) 1 did not send BATCH_BARRIER within 1.5 s" in msgs[0] and s.endpoint in msgs[0]
    # a get that waits past the client's deadline (trainer 1 never sends its barrier)
    s2 = servers(num_trainers=2, sync=True, barrier_timeout=30)
    c = _bulk_client(0, deadline_s=1.0)
    c.send_vars([(s2.endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    c.batch_barrier([s2.endpoint])
    t0 = time.monotonic()
    with pytest.raises(RPCDeadlineError, match="DEADLINE_EXCEEDED"):
        c.get_vars([(s2.endpoint, "w")])
    assert time.monotonic() - t0 < 5
    c.close()


# ------------------------------------------------------------- bad requests
def _raw_bulk(endpoint: str, port: int, method: str, env: codec.Envelope, token: str = "") -> Any:
    pool = bulk.BulkPool()
    try:
        return pool.call("127.0.0.1", port, method, env, token, 10.0)
    finally:
        pool.close()


def test_bad_requests_get_the_same_errors_as_on_grpc_and_the_server_keeps_serving(servers):
    s = servers(num_trainers=2, sync=False)
    ep = s.endpoint
    on_grpc, on_bulk = _client(0, bulk=False), _bulk_client(0)
    cases = [
        lambda c: c.get_vars([(ep, "nope")]),
        lambda c: c.send_vars([(ep, "w@GRAD", np.ones((4, 3)))]),
        lambda c: c.send_vars([(ep, "w@GRAD", np.ones((3, 4), np.float32))]),
        lambda c: c.send_vars([(ep, "zz@GRAD", np.ones(2, np.float32))]),
        lambda c: c.prefetch([(ep, "other", [1])]),
    ]
    for case in cases:
        assert _errors_of(lambda: case(on_bulk)) == _errors_of(lambda: case(on_grpc))
    for tid in (7,):
        stranger_g = RPCClient(tid, on_grpc.options)
        stranger_b = RPCClient(tid, on_bulk.options)
        assert _errors_of(lambda: stranger_b.get_vars([(ep, "w")])) == \
            _errors_of(lambda: stranger_g.get_vars([(ep, "w")]))
        stranger_b.close()
        stranger_g.close()
    assert _n(on_grpc, "bulk") == 0 and _n(on_grpc, "grpc") == 0   # only failures so far
    port = on_bulk._bulk_port(ep)
    assert port > 0
    # a payload shorter than its header says; a header that is not a message
    env = codec.encode("w@GRAD", np.ones((4, 3), np.float32))[0]
    env.data = memoryview(env.data)[:20]
    with pytest.raises(bulk.BulkStatus) as e:
        _raw_bulk(ep, port, "SendVariable", env)
    assert e.value.code == "INVALID_ARGUMENT" and "truncated payload for variable 'w@GRAD'" in e.value.details
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = b"\x0a\xff\xff\xff\x0f"
    raw.sendall(bulk._FRAME.pack(bulk.REQ_MAGIC, bulk.METHOD_CODE["GetVariable"], 0, 0, len(head), 0, 0) + head)
    reply = _read_reply(raw)
    assert reply[0] == grpc.StatusCode.INVALID_ARGUMENT.value[0] and b"malformed request" in reply[1]
    # ...and the connection still serves a good frame afterwards
    raw.sendall(_frame("GetVariable", codec.control("w", 0)))
    assert _read_reply(raw)[0] == 0
    raw.close()
    # garbage, and a frame announcing more than the limit: an error, then the server hangs up
    for junk, code in ((b"GET / HTTP/1.1\r\n\r\n" + bytes(20), "INVALID_ARGUMENT"),
                       (bulk._FRAME.pack(bulk.REQ_MAGIC, 1, 0, 0, 0, 0, 1 << 40), "RESOURCE_EXHAUSTED")):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        raw.sendall(junk[:bulk._FRAME.size])
        status, details = _read_reply(raw)
        assert bulk.STATUS_NAME[status] == code, details
        assert raw.recv(1) == b""
        raw.close()
    # still serving, on both transports, and the rejected grads changed nothing
    for c in (on_grpc, on_bulk):
        (w,) = c.get_vars([(ep, "w")])
        assert np.array_equal(w, np.zeros((4, 3), np.float32))
    assert on_bulk.transport["bulk", "GetVariable"] == 1 and _n(on_grpc, "bulk") == 0
    on_grpc.close()
    on_bulk.close()


def _frame(method: str, env: codec.Envelope, token: bytes = b"") -> bytes:
    header = env.header.SerializeToString()
    rows, data = bytes(env.rows), bytes(env.data)
    return bulk._FRAME.pack(bulk.REQ_MAGIC, bulk.METHOD_CODE[method], 0, len(token), len(header),
                            len(rows), len(data)) + token + header + rows + data


def _read_reply(sock: socket.socket) -> tuple[int, bytes]:
    """(status, details or header bytes) of one reply frame, its payload discarded."""
    fixed = bytearray(bulk._REPLY.size)
    bulk._recv_into(sock, memoryview(fixed), time.monotonic() + 10)
    magic, status, _, _, hlen, rlen, dlen, *_ = bulk._REPLY.unpack(fixed)
    assert magic == bulk.REPLY_MAGIC
    rest = bytearray(hlen + rlen + dlen)
    bulk._recv_into(sock, memoryview(rest), time.monotonic() + 10)
    return status, bytes(rest[:hlen])


def test_auth_token_is_checked_on_the_bulk_channel(servers):
    s = servers(env={"FLEETKIT_AUTH_TOKEN": "s3cret"})
    ok = _bulk_client(0, auth_token="s3cret")
    port = ok._bulk_port(s.endpoint)
    assert port > 0
    big = codec.encode("echo/x", np.ones(1 << 18, np.float32))[0]   # 1 MiB the server must skip
    pool = bulk.BulkPool()
    for token, why in (("", "missing auth token"), ("wrong", "wrong auth token")):
        with pytest.raises(bulk.BulkStatus) as e:
            pool.call("127.0.0.1", port, "SendVariable", big, token, 10.0)
        # nothing more is read from a peer without the token: the server hangs up
        assert e.value.code == "UNAUTHENTICATED" and why in e.value.details and not e.value.keep
    assert pool.call("127.0.0.1", port, "GetVariable", codec.control("w", 0), "s3cret", 10.0) is not None
    pool.close()
    # a client with a wrong token gets the usual error (bulk port refused, then gRPC refuses)
    bad = _bulk_client(0, auth_token="wrong", retry_window_s=1)
    with pytest.raises(RPCAuthError, match="UNAUTHENTICATED.*wrong auth token"):
        bad.send_vars([(s.endpoint, "echo/x", np.ones(1 << 18, np.float32))])
    bad.close()
    ok.send_vars([(s.endpoint, "echo/x", np.ones(1 << 18, np.float32))])
    assert ok.get_vars([(s.endpoint, "echo/x")])[0].sum() == 1 << 18
    assert ok.transport["bulk", "SendVariable"] == 1
    ok.close()


def test_a_refused_client_gets_the_reply_although_it_is_still_sending(servers):
    """The server refuses after the token, while the payload is still arriving: closing with
    unread input would reset the connection and the peer's kernel would drop the reply."""
    s = servers(env={"FLEETKIT_AUTH_TOKEN": "s3cret"})
    port = _bulk_client(0, auth_token="s3cret")._bulk_port(s.endpoint)
    env = codec.encode("echo/x", np.ones(1 << 20, np.float32))[0]     # 4 MiB after the token
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(_frame("SendVariable", env, b"wrong"))
        time.sleep(0.3)              # the server has replied and closed by now
        status, details = _read_reply(sock)
        assert status == grpc.StatusCode.UNAUTHENTICATED.value[0] and b"wrong auth token" in details
        sock.close()


def test_a_client_that_vanishes_or_stalls_mid_frame_does_not_wedge_the_server(servers):
    s = servers(bulk_io_timeout=1.0)
    c = _bulk_client(0)
    port = c._bulk_port(s.endpoint)
    env = codec.encode("echo/v", np.ones(1 << 18, np.float32))[0]
    frame = _frame("SendVariable", env)
    gone = socket.create_connection(("127.0.0.1", port), timeout=10)
    gone.sendall(frame[:100_000])        # a third of the payload, then the client dies
    gone.close()
    stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
    stalled.sendall(frame[:10])          # half a frame header, then nothing
    # meanwhile everyone else is served, concurrently
    x = np.random.RandomState(1).rand(1 << 18).astype(np.float32)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda i: c.send_vars([(s.endpoint, f"echo/{i}", x)]), range(3)))
    assert all(np.array_equal(v, x) for v in c.get_vars([(s.endpoint, f"echo/{i}") for i in range(3)]))
    assert c.transport["bulk", "SendVariable"] == 3
    # the stalled frame is dropped after bulk_io_timeout
    t0 = time.monotonic()
    assert stalled.recv(1) == b""
    assert time.monotonic() - t0 < 5
    stalled.close()
    c.close()


# ----------------------------------------------------------------- fallback
def test_fallback_to_grpc_when_the_channel_is_off(servers, monkeypatch):
    x = np.ones(1 << 18, np.float32)
    s = servers()
    for c in (_client(0, bulk=False), _bulk_client(0, bulk=False)):
        c.send_vars([(s.endpoint, "echo/x", x)])
        assert c.get_vars([(s.endpoint, "echo/x")])[0].sum() == x.sum()
        assert _n(c, "bulk") == 0 and _n(c, "grpc") == 2
        c.close()
    monkeypatch.setenv(rpc.BULK_ENV, "0")
    c = _bulk_client(0)
    assert not c.bulk_on
    c.close()
    monkeypatch.delenv(rpc.BULK_ENV)
    # a pserver with the channel off advertises port 0: silently gRPC
    off = servers(bulk=False)
    c = _bulk_client(0)
    c.send_vars([(off.endpoint, "echo/x", x)])
    assert c.get_vars([(off.endpoint, "echo/x")])[0].sum() == x.sum()
    assert c._bulk_port(off.endpoint) == 0 and _n(c, "bulk") == 0 and _n(c, "grpc") == 2
    c.close()
    c = _bulk_client(0, max_message_bytes=64 * KIB)   # ids for 3 messages: pieces on gRPC
    ids = np.arange(20000, dtype=np.int64)
    assert c.prefetch([(off.endpoint, "emb", ids)])[0].shape == (20000, 4)
    assert _n(c, "bulk") == 0 and c.transport["grpc", "PrefetchVariable"] == 3
    c.close()


@pytest.mark.parametrize("answer", ["not_found", "unreachable_port"])
def test_a_pserver_without_a_usable_channel_is_served_over_grpc(answer):
    """An older pserver (NOT_FOUND for the port query), or one whose bulk port cannot be
    reached (a firewall): the client stays on gRPC instead of retrying."""
    got: list[bytes] = []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]   # nobody listens there afterwards

    def send(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        got.append(req)
        return b""

    def get_no_barrier(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        if answer == "unreachable_port":
            return codec.to_bytes(codec.encode(rpc.BULK_PORT, np.array([dead_port], np.int64))[0])
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no variable '@BULK_PORT@' on this pserver")

    ident = dict(request_deserializer=lambda b: b, response_serializer=lambda b: b)
    handlers = {"SendVariable": grpc.unary_unary_rpc_method_handler(send, **ident),
                "GetVariableNoBarrier": grpc.unary_unary_rpc_method_handler(get_no_barrier, **ident)}
    server = grpc.server(ThreadPoolExecutor(4), options=rpc.server_options(64 << 20))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(rpc.SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        c = _bulk_client(0, max_message_bytes=256 * KIB)
        c.send_vars([(f"127.0.0.1:{port}", "w@GRAD", np.ones(1 << 18, np.float32))])   # 1 MiB: 4 chunks
        assert _n(c, "bulk") == 0 and c.transport["grpc", "SendVariable"] == 4 and len(got) == 4
        c.close()
    finally:
        server.stop(0)


def test_tls_keeps_every_tensor_on_grpc(servers, self_signed_cert):
    key, cert = self_signed_cert
    s = servers(tls_cert_path=cert, tls_key_path=key)
    c = _bulk_client(0, tls_ca_path=cert)
    assert not c.bulk_on
    c.send_vars([(s.endpoint, "echo/t", np.ones(1 << 18, np.float32))])
    assert c.get_vars([(s.endpoint, "echo/t")])[0].shape == (1 << 18,)
    assert _n(c, "bulk") == 0 and c._bulk_port(s.endpoint) == 0   # and the server offers none
    c.close()


# ------------------------------------------------------------------ restart
def test_kill_9_and_restart_reconnects_to_the_new_bulk_port(servers, tmp_path):
    s = servers(checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every_s=0.2)
    c = _bulk_client(0, retry_window_s=30.0)
    c.send_vars([(s.endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    assert c.get_vars([(s.endpoint, "w")])[0][0, 0] == -LR
    time.sleep(0.8)   # a few checkpoint periods
    s.kill()
    restarter = threading.Timer(1.0, s.start)
    restarter.start()
    (w,) = c.get_vars([(s.endpoint, "w")])   # retried over bulk until the restart
    restarter.join()
    np.testing.assert_allclose(w, -LR)
    assert c.transport["bulk", "GetVariable"] == 2 and _n(c, "grpc") == 0
    c.close()
