"""The pserver under hostile traffic and failures (issue 11), real processes on 127.0.0.1.

- RPC and bulk fuzz: unauthenticated or malformed traffic never grows the pserver's RSS
  by more than RSS_BOUND (docs/security.md), and the pserver keeps serving;
- CheckpointNotify takes paths only from the pserver's configuration;
- FLAGS_check_nan_inf: a non-finite gradient is refused;
- liveness: a dead sync trainer surfaces in under 10 s naming it, on the pserver and on the
  surviving trainer; a pserver whose trainers are all dead exits non-zero;
- incarnation: a pserver restarted without a checkpoint makes the trainer fail saying the
  parameters were lost, or is re-seeded from trainer 0's copy when enabled; a restart
  from a checkpoint logs the rollback.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import grpc
import numpy as np
import pytest
from test_pserver_rpc import LR, Server, _client

from fleetkit.errors import BarrierTimeoutError, PServerRestartedError, RPCRequestError
from fleetkit.proto.sendrecv_pb2 import VariableMessage
from fleetkit.pserver import bulk, codec, rpc
from fleetkit.testing import run_workers

pytestmark = pytest.mark.timeout(120)
RSS_BOUND = 64 << 20   # documented in docs/security.md


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _raw_grpc(endpoint: str, method: str, raw: bytes, token: str | None = None) -> grpc.StatusCode:
    ch = grpc.insecure_channel(endpoint, options=[("grpc.enable_http_proxy", 0)])
    try:
        stub = ch.unary_unary(rpc.path(method), request_serializer=bytes, response_deserializer=bytes)
        md = ((rpc.AUTH_METADATA_KEY, token),) if token else ()
        try:
            stub(raw, timeout=10, metadata=md)
        except grpc.RpcError as e:
            return e.code()
        return grpc.StatusCode.OK
    finally:
        ch.close()


# ------------------------------------------------------------------ fuzz + RSS
def _declared_huge_chunk(name: str, k: int) -> bytes:
    """A 1 GiB value announced in 2^26 chunks, of which this is chunk k (16 real bytes)."""
    h = VariableMessage(varname=name, data_type=VariableMessage.FP32, dims=[1 << 28],
                        chunk_index=k, chunk_count=1 << 26)
    return codec.to_bytes(codec.Envelope(h, b"", b"\0" * 16))


def test_rpc_fuzz_malformed_and_amplifying_requests_keep_rss_bounded(servers):
    s = servers(num_trainers=2)
    base = _rss(s.proc.pid)
    rng = np.random.default_rng(0)
    codes = set()
    for i in range(300):   # each message declares 1 GiB (the old code zero-filled it)
        codes.add(_raw_grpc(s.endpoint, "SendVariable", _declared_huge_chunk(f"w{i}@GRAD", i % 2)))
    for _ in range(200):   # random bytes and random mutations of a good message
        good = bytearray(codec.to_bytes(codec.encode("w@GRAD", np.ones((4, 3), np.float32))[0]))
        raw = bytes(rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8)) if rng.random() < 0.5 else \
            bytes(b ^ (int(rng.integers(0, 256)) if rng.random() < 0.1 else 0) for b in good)
        codes.add(_raw_grpc(s.endpoint, str(rng.choice(rpc.METHODS)), raw))
    grown = _rss(s.proc.pid) - base
    print(f"RSS growth after 500 malformed/amplifying RPCs: {grown / 2**20:.1f} MiB")
    assert grown < RSS_BOUND
    assert grpc.StatusCode.INTERNAL not in codes and grpc.StatusCode.UNKNOWN not in codes, codes
    c = _client(0)   # still serving (mutated payloads may have been valid gradients)
    before = c.get_vars([(s.endpoint, "w")])[0]
    c.send_vars([(s.endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    np.testing.assert_allclose(c.get_vars([(s.endpoint, "w")])[0], before - LR, rtol=1e-6)
    c.close()


def test_bulk_fuzz_unauthenticated_connections_allocate_nothing_and_are_bounded(servers):
    s = servers(env={"FLEETKIT_AUTH_TOKEN": "s3cret"}, bulk_auth_timeout_s=1.0, bulk_max_unauthenticated=8)
    probe = _client(0, auth_token="s3cret", heartbeat_s=0)
    port = probe._bulk_port(s.endpoint)
    probe.close()
    base = _rss(s.proc.pid)
    # 32-byte frames announcing a 64 MiB header and an 8 GiB payload, without / with a wrong token
    for token in (b"", b"wrong") * 20:
        fixed = bulk._FRAME.pack(bulk.REQ_MAGIC, 1, 0, len(token), bulk.MAX_HEADER, 0, 8 << 30)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(fixed + token)
            reply = sock.recv(bulk._REPLY.size, socket.MSG_WAITALL)
            assert bulk.STATUS_NAME[bulk._REPLY.unpack(reply)[1]] == "UNAUTHENTICATED"
    # an oversized token field is refused before anything is read
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(bulk._FRAME.pack(bulk.REQ_MAGIC, 1, 0, 60000, 0, 0, 0))
        assert bulk.STATUS_NAME[bulk._REPLY.unpack(sock.recv(bulk._REPLY.size, socket.MSG_WAITALL))[1]] == \
            "INVALID_ARGUMENT"
    # silent connections: at most 8 wait for their token, each at most ~1 s
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
    t0 = time.monotonic()
    for sock in idle:
        assert sock.recv(1) == b""          # closed by the server: refused or timed out
        sock.close()
    assert time.monotonic() - t0 < 5
    grown = _rss(s.proc.pid) - base
    print(f"RSS growth after 61 unauthenticated bulk connections: {grown / 2**20:.1f} MiB")
    assert grown < RSS_BOUND
    ok = _client(0, auth_token="s3cret")
    ok.send_vars([(s.endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    assert ok.transport["bulk", "SendVariable"] == 1
    ok.close()


# ------------------------------------------------------------------ CheckpointNotify
def test_checkpoint_notify_takes_paths_only_from_the_configuration(servers, tmp_path):
    ckpt, other = tmp_path / "ckpt", tmp_path / "elsewhere"
    s = servers(checkpoint_dir=str(ckpt), notify_dirs=(str(tmp_path / "saves"),))
    c = _client(0)
    for dirname, why in ((str(other), "outside this pserver's checkpoint directories"),
                         (str(ckpt / ".." / "elsewhere"), "outside"), ("/etc", "outside")):
        with pytest.raises(RPCRequestError, match=f"INVALID_ARGUMENT.*{why}"):
            c.checkpoint_notify([s.endpoint], dirname)
    with pytest.raises(RPCRequestError, match="INVALID_ARGUMENT.*LOAD of a named directory is disabled"):
        c.checkpoint_notify([s.endpoint], str(ckpt), load=True)
    assert not other.exists()
    c.checkpoint_notify([s.endpoint], str(tmp_path / "saves" / "model"))   # inside notify_dirs
    assert os.listdir(tmp_path / "saves" / "model") == ["pserver_127_0_0_1_%d.fkckpt" % s.port]
    c.send_vars([(s.endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    c.checkpoint_notify([s.endpoint], "")                     # the action only: checkpoint_dir
    c.send_vars([(s.endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    c.checkpoint_notify([s.endpoint], "", load=True)          # back to the saved state
    np.testing.assert_allclose(c.get_vars([(s.endpoint, "w")], barrier=False)[0], -LR)
    c.close()


def test_non_finite_gradient_is_refused_with_the_flag(servers):
    s = servers(env={"FLAGS_check_nan_inf": "1"})
    c = _client(0)
    g = np.ones((4, 3), np.float32)
    g[1, 2] = np.nan
    with pytest.raises(RPCRequestError, match=r"gradient 'w@GRAD' of trainer 0 holds 1 non-finite value"):
        c.send_vars([(s.endpoint, "w@GRAD", g)])
    assert np.array_equal(c.get_vars([(s.endpoint, "w")])[0], np.zeros((4, 3), np.float32))
    c.close()


# ------------------------------------------------------------------ liveness
def _sync_pair_one_dies(rank: int, world: int, endpoint: str) -> tuple[str, float]:
    c = _client(rank)
    c.get_vars([(endpoint, "w")])
    c.fetch_barrier([endpoint])
    if rank == 1:
        time.sleep(0.5)
        os._exit(17)                   # dies before its barrier, no COMPLETE
    c.send_vars([(endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    c.batch_barrier([endpoint])
    t0 = time.monotonic()
    with pytest.raises(BarrierTimeoutError) as e:
        c.get_vars([(endpoint, "w")])   # barrier_timeout is 300 s: liveness, not the timeout, ends it
    assert e.value.missing_trainers == (1,)
    return str(e.value), time.monotonic() - t0


def test_dead_sync_trainer_surfaces_in_seconds_naming_it_and_the_pserver_exits(servers):
    s = servers(num_trainers=2, sync=True, barrier_timeout=300)
    (msg, waited), _ = run_workers(_sync_pair_one_dies, 2, (s.endpoint,), timeout=60, expect_exit={1: 17})
    print(f"trainer 0 learned of trainer 1's death after {waited:.2f} s: {msg}")
    assert waited < 10 and "trainer(s) 1 lost without COMPLETE" in msg and s.endpoint in msg
    s.proc.join(15)                    # both trainers gone (trainer 0's process ended too)
    assert s.proc.exitcode not in (None, 0)


def _async_trainer_dies(rank: int, world: int, endpoint: str) -> None:
    c = _client(rank)
    c.send_vars([(endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    time.sleep(0.3)
    os._exit(9)


def test_async_pserver_whose_trainers_all_died_exits_non_zero(servers):
    s = servers(num_trainers=2, sync=False, rejoin_grace_s=1.0)   # (default 30 s for a restart)
    t0 = time.monotonic()
    run_workers(_async_trainer_dies, 2, (s.endpoint,), timeout=60, expect_exit={0: 9, 1: 9})
    s.proc.join(15)
    assert s.proc.exitcode not in (None, 0) and time.monotonic() - t0 < 30


def test_a_trainer_that_leaves_without_complete_is_lost_and_one_that_completes_is_not(servers):
    s = servers(num_trainers=2, sync=False, rejoin_grace_s=1.0)
    done, gone = _client(0, heartbeat_s=0.2), _client(1, heartbeat_s=0.2)
    for c in (done, gone):
        c.send_vars([(s.endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    done.send_complete()
    time.sleep(1.0)
    assert s.proc.is_alive()                # trainer 1 still beats
    gone.close()                            # no COMPLETE: lost...
    back = _client(1, heartbeat_s=0.2)      # ...but back within rejoin_grace_s (a restart)
    back.send_vars([(s.endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    time.sleep(1.5)
    assert s.proc.is_alive()
    back.close()                            # gone for good: every trainer is done now
    s.proc.join(10)
    assert s.proc.exitcode not in (None, 0)
    done.close()


# ------------------------------------------------------------------ incarnation
def _restart(s: Server) -> None:
    s.kill()
    s.start()          # same port; no checkpoint unless configured


def test_restart_without_checkpoint_fails_the_trainer_saying_parameters_were_lost(servers):
    s = servers()
    c = _client(0, retry_window_s=20)
    c.send_vars([(s.endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    c.get_vars([(s.endpoint, "w")])
    _restart(s)
    with pytest.raises(PServerRestartedError, match=f"pserver {s.endpoint} restarted without a checkpoint.*"
                                                    f"parameters it held were lost"):
        c.get_vars([(s.endpoint, "w")])
    with pytest.raises(PServerRestartedError):    # and every later call says so too
        c.send_vars([(s.endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    c.close()


def test_restart_without_checkpoint_is_reseeded_from_trainer_0_when_enabled(servers):
    s = servers(num_trainers=2, env={"FLEETKIT_PS_RESEED_ON_RESTART": "1"})
    c0, c1 = _client(0, reseed=True, retry_window_s=20), _client(1, reseed=True, retry_window_s=20)
    c0.send_vars([(s.endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    (w,) = c0.get_vars([(s.endpoint, "w")])                 # trainer 0's copy: -LR
    c1.get_vars([(s.endpoint, "w")])
    _restart(s)
    got = {}
    t1 = threading.Thread(target=lambda: got.update(c1=c1.get_vars([(s.endpoint, "w")])[0]))
    t1.start()                                              # trainer 1 waits for the re-seed
    time.sleep(0.5)
    got["c0"] = c0.get_vars([(s.endpoint, "w")])[0]        # trainer 0 notices and re-seeds
    t1.join(30)
    np.testing.assert_allclose(got["c0"], w)
    np.testing.assert_allclose(got["c1"], w)
    assert [e["resumed"] for e in c0.restarts.events] == [-1]
    c0.close()
    c1.close()


def test_restart_from_checkpoint_logs_the_rollback(servers, tmp_path, caplog):
    s = servers(checkpoint_dir=str(tmp_path / "ckpt"))
    c = _client(0, retry_window_s=20)
    c.send_vars([(s.endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    c.checkpoint_notify([s.endpoint], "")                  # checkpoint at update 1
    for _ in range(2):
        c.send_vars([(s.endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    c.get_vars([(s.endpoint, "w")])                        # this trainer saw update 3
    _restart(s)
    with caplog.at_level(logging.WARNING, logger="fleetkit.pserver.restarts"):
        (w,) = c.get_vars([(s.endpoint, "w")])
    np.testing.assert_allclose(w, -LR)
    assert "resumed from its checkpoint at update 1; this trainer had seen update 3: 2 update(s) rolled back" \
        in caplog.text
    c.close()



def test_the_token_from_the_environment_is_used_by_every_channel(servers, monkeypatch):
    """FLEETKIT_AUTH_TOKEN (what `fleetkit launch` sets) is all a job needs: gRPC calls, bulk
    frames and the heartbeat stream all carry it (an accepted stream is what makes the
    pserver notice the client leaving without COMPLETE)."""
    s = servers(num_trainers=1, env={"FLEETKIT_AUTH_TOKEN": "job-token"}, rejoin_grace_s=1.0)
    monkeypatch.setenv("FLEETKIT_AUTH_TOKEN", "job-token")
    c = _client(0)
    c.send_vars([(s.endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    np.testing.assert_allclose(c.get_vars([(s.endpoint, "w")], barrier=False)[0], -LR)
    c.send_vars([(s.endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    c.send_vars([(s.endpoint, "b@GRAD", np.ones(3))])
    assert c.transport["bulk", "SendVariable"] >= 2   # bulk frames carried it too
    time.sleep(1.5)                                   # heartbeats accepted: not lost meanwhile
    assert s.proc.is_alive()
    c.close()                                         # no COMPLETE: the watched trainer is lost
    s.proc.join(10)
    assert s.proc.exitcode not in (None, 0)


# ------------------------------------------------------------------ a whole job
def _tiny_transpiled(eps: list[str], trainer_id: int):
    """A fluid 1.4 style sync job: one fc layer, SGD, DistributeTranspiler over ``eps``."""
    import fleetkit as fk
    from fleetkit import layers
    x = layers.data("x", shape=[8])
    y = layers.data("y", shape=[1])
    loss = layers.mean(layers.square_error_cost(layers.fc(x, 1), y))
    fk.optimizer.SGD(0.05).minimize(loss)
    t = fk.DistributeTranspiler()
    t.transpile(trainer_id, pservers=",".join(eps), trainers=2)
    return t, loss


_PSERVER = ("import sys; sys.path.insert(0, sys.argv[2]); import fleetkit as fk;"
            "from test_pserver_hardening import _tiny_transpiled as b; eps = sys.argv[1].split(',');"
            "t, _ = b(eps, 0); exe = fk.Executor(fk.CPUPlace()); prog = t.get_pserver_program(eps[0]);"
            "exe.run(t.get_startup_program(eps[0], prog)); exe.run(prog)")


def _restart_job(rank: int, world: int, eps: list[str], flag: str) -> Any:
    """Rank 0 supervises the pserver (kill -9 after the trainers' 5th step, restart without a
    checkpoint); ranks 1-2 train until the restarted pserver's parameters reach them."""
    import subprocess
    import sys
    if rank == 0:
        here = os.path.dirname(os.path.abspath(__file__))
        start = lambda: subprocess.Popen([sys.executable, "-c", _PSERVER, ",".join(eps), here])  # noqa: E731
        proc = start()
        while not os.path.exists(flag):
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        proc = start()               # same port, no state: freshly initialized parameters
        return proc.wait(timeout=60)  # its trainers fail, so it exits (non-zero: they were lost)
    import fleetkit as fk
    t, loss = _tiny_transpiled(eps, rank - 1)
    exe = fk.Executor(fk.CPUPlace())
    exe.run(fk.default_startup_program())
    prog = t.get_trainer_program()
    rng = np.random.default_rng(rank)
    try:
        for step in range(400):
            xb = rng.normal(size=(16, 8)).astype("float32")
            exe.run(prog, feed={"x": xb, "y": xb[:, :1]}, fetch_list=[loss])
            if step == 5 and rank == 1:
                open(flag, "w").close()
            time.sleep(0.02)
    except PServerRestartedError as e:
        return str(e)
    return "trained to the end"


def test_a_job_whose_pserver_restarts_without_checkpoint_fails_saying_parameters_were_lost(tmp_path):
    from fleetkit.testing import free_ports
    eps = [f"127.0.0.1:{p}" for p in free_ports(1)]
    rc, *msgs = run_workers(_restart_job, 3, (eps, str(tmp_path / "killed")), timeout=90)
    for msg in msgs:
        assert f"pserver {eps[0]} restarted without a checkpoint" in msg and "parameters it held were lost" in msg
    assert rc not in (None, 0)
