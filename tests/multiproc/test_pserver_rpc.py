"""The pserver runtime over real gRPC between real processes on 127.0.0.1.

Servers run in spawned processes with a small dict-backed ServerHandler (below); clients
run in this process or in run_workers ranks.  Covers: every value type round-trips
(incl. values larger than the max message size), sync barriers with 2 trainers, async,
bad requests (server keeps serving), auth, a dead http(s)_proxy in the environment, a
pserver that is down at start, kill -9 + restart on the same port (client retries,
state from checkpoint), a sync trainer that dies, and a 10^9-id sparse table.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from typing import Any

import grpc
import numpy as np
import pytest

from fleetkit.core.scope import LoDTensor, SelectedRows
from fleetkit.errors import (BarrierTimeoutError, DTypeError, NotFoundError, PServerUnavailableError,
                             RPCAuthError, RPCRequestError, ServerNotReadyError, ShapeError)
from fleetkit.pserver import codec, rpc
from fleetkit.pserver.client import ClientOptions, RPCClient, wait_server_ready
from fleetkit.pserver.server import ParameterServer, ServerHandler, ServerOptions
from fleetkit.pserver.tables import Initializer, SparseTable
from fleetkit.testing import run_workers

pytestmark = pytest.mark.timeout(120)
LR = 0.5


class DictHandler(ServerHandler):
    """Params in a dict; ``<p>@GRAD`` updates ``p`` by SGD; ``echo/*`` values are stored
    as sent (round-trip checks); one sparse table ``emb`` (dim 4)."""

    def __init__(self) -> None:
        self.params = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float64)}
        self.echo: dict[str, Any] = {}
        self.table = SparseTable("emb", 4, Initializer(seed=3))
        self.applies = 0

    def check_grad(self, name: str, value: Any) -> None:
        if name.startswith("echo/"):
            return
        p = self.params.get(name.removesuffix("@GRAD")) if name.endswith("@GRAD") else None
        if p is None:
            raise NotFoundError(f"gradient '{name}' is not for a variable hosted here ({sorted(self.params)})")
        v = value.values if isinstance(value, SelectedRows) else value
        if v.dtype != p.dtype:
            raise DTypeError(f"gradient '{name}' has dtype {v.dtype}, variable has {p.dtype}")
        shape = tuple(v.shape[1:]) if isinstance(value, SelectedRows) else tuple(v.shape)
        want = tuple(p.shape[1:]) if isinstance(value, SelectedRows) else tuple(p.shape)
        if shape != want:
            raise ShapeError(f"gradient '{name}' has shape {tuple(v.shape)}, variable {tuple(p.shape)}")

    def apply(self, grads: dict[str, Any]) -> None:
        self.applies += 1
        for name, g in grads.items():
            if name.startswith("echo/"):
                self.echo[name] = _copy(g)
            elif isinstance(g, SelectedRows):
                np.subtract.at(self.params[name[:-5]], g.rows, LR * g.values)
            else:
                self.params[name[:-5]] -= LR * g

    def get(self, name: str) -> Any:
        if name == "applies":
            return np.array([self.applies])
        if name in self.params:
            return self.params[name]
        if name in self.echo:
            return self.echo[name]
        raise NotFoundError(f"no variable '{name}' on this pserver")

    def prefetch(self, table: str, ids: np.ndarray) -> np.ndarray:
        if table != "emb":
            raise NotFoundError(f"no sparse table '{table}'")
        return self.table.lookup(ids)

    def state(self) -> dict[str, Any]:
        return {**self.params, **self.table.state()}

    def load_state(self, state: dict[str, Any]) -> None:   # a re-seed sends some params only
        self.params = {k: np.array(state[k]) if k in state else v for k, v in self.params.items()}
        if "emb@ids" in state:
            self.table.load_state(state)

    def sparse_memory(self, table: str = "") -> tuple[int, int]:
        return len(self.table), self.table.memory_bytes()


def _copy(v: Any) -> Any:
    if isinstance(v, SelectedRows):
        return SelectedRows(v.rows.copy(), np.array(v.values), v.height)
    if isinstance(v, LoDTensor):
        return LoDTensor(np.array(v.values), v.lod())
    return np.array(v)


# ------------------------------------------------------------ server process
def _serve(conn, endpoint: str, num_trainers: int, sync: bool, opts: dict, env: dict) -> None:
    os.environ.update(env)
    server = ParameterServer(endpoint, DictHandler(), num_trainers, sync, ServerOptions(**opts))
    conn.send(server.start())
    conn.close()
    server.wait()


class Server:
    """A pserver in a spawned process."""

    def __init__(self, num_trainers: int = 1, sync: bool = False, port: int = 0,
                 env: dict | None = None, **opts: Any) -> None:
        self.args = (num_trainers, sync, opts, env or {})
        self.port = port
        self.start()

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        reader, writer = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_serve, args=(writer, f"127.0.0.1:{self.port}", *self.args), daemon=True)
        self.proc.start()
        writer.close()
        if not reader.poll(30):
            raise RuntimeError("pserver process did not report its port")
        self.port = reader.recv()
        self.endpoint = f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(10)


@pytest.fixture(params=["grpc", "bulk"], autouse=True)
def transport(request, monkeypatch):
    """Every test here runs twice: all calls on gRPC (FLEETKIT_PS_BULK=0 for the clients,
    the pservers and the processes they spawn), and with the bulk channel (the default)."""
    monkeypatch.setenv(rpc.BULK_ENV, "0" if request.param == "grpc" else "1")
    return request.param


def _client(trainer_id: int = 0, **kw: Any) -> RPCClient:
    kw.setdefault("retry_window_s", 5.0)
    kw.setdefault("deadline_s", 30.0)
    return RPCClient(trainer_id, ClientOptions(**kw))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------- tests
def test_every_value_type_round_trips_including_chunked(servers, transport):
    small = 4096   # tiny max message size: the larger values below travel in chunks
    s = servers(max_message_bytes=small)
    c = _client(max_message_bytes=small)
    values = {
        "echo/f32": np.random.RandomState(0).rand(64, 33).astype(np.float32),     # 8448 B: 3 chunks
        "echo/f64": np.arange(10, dtype=np.float64),
        "echo/i64": np.arange(-5, 5, dtype=np.int64).reshape(2, 5),
        "echo/scalar": np.array(2.5, np.float32),
        "echo/empty": np.zeros((0, 4), np.float32),
        "echo/lod": LoDTensor(np.arange(3000, dtype=np.int64).reshape(1500, 2), [[0, 1000, 1500]]),
        "echo/rows": SelectedRows(np.arange(600) * 7, np.ones((600, 2), np.float32), 5000),
    }
    c.send_vars([(s.endpoint, k, v) for k, v in values.items()])
    if transport == "grpc":  # the larger values went in several messages
        assert c.transport["grpc", "SendVariable"] > len(values)
    else:  # the bulk channel sends every value whole
        assert c.transport["bulk", "SendVariable"] == len(values)
    got = dict(zip(values, c.get_vars([(s.endpoint, k) for k in values])))
    for k, v in values.items():
        g = got[k]
        assert type(g) is type(v), k
        if isinstance(v, SelectedRows):
            assert g.rows.tolist() == v.rows.tolist() and g.height == v.height
            v, g = v.values, g.values
        elif isinstance(v, LoDTensor):
            assert g.lod() == v.lod()
            v, g = v.values, g.values
        assert g.dtype == v.dtype and g.shape == v.shape and np.array_equal(g, v), k
        assert g.flags.writeable, k
    # prefetch whose request and response both exceed one message
    ids = np.arange(2000, dtype=np.int64) * 499_999
    rows = c.prefetch([(s.endpoint, "emb", ids)])[0]
    assert rows.shape == (2000, 4)
    np.testing.assert_array_equal(rows, SparseTable("emb", 4, Initializer(seed=3)).initial_rows(ids))
    c.close()


def _sync_trainer(rank: int, world: int, endpoint: str, steps: int) -> list:
    c = _client(rank)
    seen = []
    for step in range(steps):
        # trainers are deliberately out of step: rank 1 starts each step later
        time.sleep(0.05 * rank)
        g = np.full((4, 3), rank + 1.0 + step, np.float32)
        sr = SelectedRows([rank, 3], np.ones((2, 3), np.float32), 4)
        c.send_vars([(endpoint, "w@GRAD", g), (endpoint, "b@GRAD", np.ones(3) * (rank + 1))])
        if rank == 0:
            c.send_vars([(endpoint, "echo/x", sr)])
        c.batch_barrier([endpoint])
        w, b = c.get_vars([(endpoint, "w"), (endpoint, "b")])
        c.fetch_barrier([endpoint])
        seen.append((w.copy(), b.copy()))
    c.send_complete()
    return seen


def test_sync_two_trainers_average_once_per_round(servers):
    s = servers(num_trainers=2, sync=True, barrier_timeout=20)
    steps = 3
    results = run_workers(_sync_trainer, 2, (s.endpoint, steps), timeout=60)
    w, b = np.zeros((4, 3), np.float32), np.zeros(3)
    for step in range(steps):
        w -= LR * np.float32((1 + step + 2 + step) / 2)      # mean of both trainers' grads
        b -= LR * 1.5
        for rank in range(2):                                 # both see the same, updated params
            np.testing.assert_allclose(results[rank][step][0], w, rtol=1e-6)
            np.testing.assert_allclose(results[rank][step][1], b, rtol=1e-12)
    s.proc.join(10)   # both trainers sent COMPLETE: the pserver exits by itself
    assert s.proc.exitcode == 0


def test_async_applies_each_gradient_on_arrival(servers):
    s = servers(num_trainers=2, sync=False)
    c0, c1 = _client(0), _client(1)
    c0.send_vars([(s.endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    (w,) = c1.get_vars([(s.endpoint, "w")])          # no barrier needed: applied already
    np.testing.assert_allclose(w, -LR)
    c1.send_vars([(s.endpoint, "w@GRAD", SelectedRows([1, 1], np.ones((2, 3), np.float32), 4))])
    (w, n) = c0.get_vars([(s.endpoint, "w"), (s.endpoint, "applies")], barrier=False)
    np.testing.assert_allclose(w[1], -3 * LR)
    assert n[0] == 2
    c0.batch_barrier([s.endpoint])                    # harmless in async mode
    c0.close()
    c1.close()


def test_async_retried_gradient_is_applied_once(servers, transport):
    """A send repeated with its number (what a retry after a lost reply does) is applied
    once; sends of another number, and sends without one (older clients), each apply."""
    bulk_on = transport == "bulk"
    s = servers(num_trainers=1, sync=False)
    c = _client(0)
    g = np.ones((4, 3), np.float32)
    c.send_vars([(s.endpoint, "w@GRAD", g)])
    (n,) = c.get_vars([(s.endpoint, "applies")], barrier=False)
    assert n[0] == 1
    original = codec.encode("w@GRAD", g, 0, seq=12345)[0]
    for _ in range(3):  # the original send and two retries of it
        c._call(s.endpoint, "SendVariable", original, "w@GRAD", use_bulk=bulk_on)
    c._call(s.endpoint, "SendVariable", codec.encode("w@GRAD", g, 0, seq=12346)[0], "w@GRAD", use_bulk=bulk_on)
    for _ in range(2):  # no number: nothing to recognise, applied each time
        c._call(s.endpoint, "SendVariable", codec.encode("w@GRAD", g, 0)[0], "w@GRAD", use_bulk=bulk_on)
    (w, n) = c.get_vars([(s.endpoint, "w"), (s.endpoint, "applies")], barrier=False)
    assert n[0] == 5
    np.testing.assert_allclose(w, -5 * LR, rtol=1e-6)
    assert c.transport[("bulk" if bulk_on else "grpc", "SendVariable")] >= 6
    c.close()


def _raw_call(endpoint: str, method: str, raw: bytes, token: str | None = None) -> grpc.RpcError:
    ch = grpc.insecure_channel(endpoint, options=[("grpc.enable_http_proxy", 0)])
    try:
        stub = ch.unary_unary(rpc.path(method), request_serializer=lambda b: b,
                              response_deserializer=lambda b: b)
        md = ((rpc.AUTH_METADATA_KEY, token),) if token else ()
        with pytest.raises(grpc.RpcError) as e:
            stub(raw, timeout=10, metadata=md)
        return e.value
    finally:
        ch.close()


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(servers):
    s = servers(num_trainers=2, sync=False)
    c = _client(0)
    ep = s.endpoint
    with pytest.raises(RPCRequestError, match=r"NOT_FOUND.*no variable 'nope'") as e:
        c.get_vars([(ep, "nope")])
    assert e.value.endpoint == ep and e.value.varname == "nope"
    with pytest.raises(RPCRequestError, match=r"INVALID_ARGUMENT.*dtype float64, variable has float32"):
        c.send_vars([(ep, "w@GRAD", np.ones((4, 3)))])
    with pytest.raises(RPCRequestError, match=r"INVALID_ARGUMENT.*shape \(3, 4\), variable \(4, 3\)"):
        c.send_vars([(ep, "w@GRAD", np.ones((3, 4), np.float32))])
    with pytest.raises(RPCRequestError, match=r"NOT_FOUND.*'zz@GRAD' is not for a variable hosted here"):
        c.send_vars([(ep, "zz@GRAD", np.ones(2, np.float32))])
    with pytest.raises(RPCRequestError, match=r"trainer_id 7 outside \[0, 2\)"):
        RPCClient(7, ClientOptions(retry_window_s=1)).get_vars([(ep, "w")])
    # a payload shorter than its header says, and bytes that are not a message at all
    env = codec.encode("w@GRAD", np.ones((4, 3), np.float32))[0]
    env.data = memoryview(env.data)[:20]
    err = _raw_call(ep, "SendVariable", codec.to_bytes(env))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "truncated payload for variable 'w@GRAD'" in err.details()
    err = _raw_call(ep, "GetVariable", b"\x0a\xff\xff\xff\x0f")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed request" in err.details()
    with pytest.raises(RPCRequestError, match="no sparse table 'other'"):
        c.prefetch([(ep, "other", [1])])
    # still serving, state untouched by the rejected grads
    (w,) = c.get_vars([(ep, "w")])
    assert np.array_equal(w, np.zeros((4, 3), np.float32))
    c.close()


def test_auth_token_required_when_set(servers):
    s = servers(env={"FLEETKIT_AUTH_TOKEN": "s3cret"})
    for token, why in ((None, "missing auth token"), ("wrong", "wrong auth token")):
        c = RPCClient(0, ClientOptions(auth_token=token or "", retry_window_s=1))
        with pytest.raises(RPCAuthError, match=f"UNAUTHENTICATED.*{why}"):
            c.get_vars([(s.endpoint, "w")])
        c.close()
    err = _raw_call(s.endpoint, "SendVariable", b"")
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    ok = RPCClient(0, ClientOptions(auth_token="s3cret"))
    assert ok.get_vars([(s.endpoint, "w")])[0].shape == (4, 3)
    ok.close()


def _through_dead_proxy(rank: int, world: int, endpoint: str) -> float:
    assert os.environ["http_proxy"].startswith("http://127.0.0.1:")
    c = _client(0, retry_window_s=2.0, deadline_s=10.0)
    c.send_vars([(endpoint, "echo/p", np.arange(5.0))])
    return float(c.get_vars([(endpoint, "echo/p")])[0].sum())


def test_dead_http_proxy_in_the_environment_is_not_used(servers):
    s = servers()
    dead = f"http://127.0.0.1:{_free_port()}"
    env = {"http_proxy": dead, "https_proxy": dead, "HTTP_PROXY": dead, "HTTPS_PROXY": dead,
           "grpc_proxy": dead, "all_proxy": dead, "no_proxy": None, "NO_PROXY": None}
    assert run_workers(_through_dead_proxy, 1, (s.endpoint,), timeout=60, env=env) == [10.0]


def test_waiting_for_pservers_says_where_it_is(servers, monkeypatch, caplog):
    from fleetkit import waits
    monkeypatch.setattr(waits, "NOTE_AFTER_S", 0.3)
    monkeypatch.setattr(waits, "NOTE_EVERY_S", 0.5)
    down = f"127.0.0.1:{_free_port()}"
    up = servers().endpoint
    with caplog.at_level("WARNING", "fleetkit.pserver.channels"), pytest.raises(ServerNotReadyError):
        wait_server_ready([up, down], timeout=1.2)
    notes = [r.getMessage() for r in caplog.records if "waiting for pservers" in r.getMessage()]
    assert len(notes) >= 2 and all(f"1 of 2 ready (waiting for {down};" in n for n in notes), notes


def test_pserver_down_at_start_gives_a_clear_error_naming_it():
    ep = f"127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ServerNotReadyError, match=f"pserver\\(s\\) {ep} not reachable after 1.0 s"):
        wait_server_ready([ep], timeout=1.0)
    c = _client(0, retry_window_s=1.0)
    with pytest.raises(PServerUnavailableError, match=f"'w@GRAD' to pserver {ep} failed: UNAVAILABLE") as e:
        c.send_vars([(ep, "w@GRAD", np.ones(3, np.float32))])
    assert e.value.endpoint == ep and "retry window" in str(e.value)
    assert time.monotonic() - t0 < 8
    c.close()


def test_kill_9_and_restart_on_the_same_port_client_retries_state_from_checkpoint(servers, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    s = servers(checkpoint_dir=ckpt, checkpoint_every_s=0.2)
    c = _client(0, retry_window_s=30.0)
    c.send_vars([(s.endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    (emb_before,) = c.prefetch([(s.endpoint, "emb", [11, 10**9 - 7])])
    c.send_vars([(s.endpoint, "b@GRAD", np.full(3, 2.0))])
    time.sleep(0.8)   # a few checkpoint periods after the last update
    s.kill()
    restarter = threading.Timer(1.0, s.start)   # same port, same checkpoint dir
    restarter.start()
    t0 = time.monotonic()
    w, b = c.get_vars([(s.endpoint, "w"), (s.endpoint, "b")])   # retried until the restart
    restarter.join()
    assert time.monotonic() - t0 >= 0.5 and s.proc.is_alive()
    np.testing.assert_allclose(w, -LR)
    np.testing.assert_allclose(b, -2 * LR)
    assert c.sparse_memory(s.endpoint)[0] == 2                 # table rows came back too
    np.testing.assert_array_equal(c.prefetch([(s.endpoint, "emb", [11, 10**9 - 7])])[0], emb_before)
    c.close()


def _sync_with_a_dying_trainer(rank: int, world: int, endpoint: str) -> str:
    # no heartbeats (an older client): the barrier timeout is what notices the dead trainer
    # (with them, liveness does, in under a second: test_pserver_hardening)
    c = _client(rank, heartbeat_s=0)
    c.get_vars([(endpoint, "w")])          # startup pull
    c.fetch_barrier([endpoint])
    if rank == 1:
        os._exit(17)                       # dies before its first barrier
    c.send_vars([(endpoint, "w@GRAD", np.ones((4, 3), np.float32))])
    c.batch_barrier([endpoint])
    t0 = time.monotonic()
    with pytest.raises(BarrierTimeoutError) as e:
        c.get_vars([(endpoint, "w")])
    assert e.value.missing_trainers == (1,) and time.monotonic() - t0 < 5
    return str(e.value)


def test_sync_trainer_that_dies_makes_the_others_fail_naming_it(servers):
    s = servers(num_trainers=2, sync=True, barrier_timeout=1.5)
    msgs = run_workers(_sync_with_a_dying_trainer, 2, (s.endpoint,), timeout=60, expect_exit={1: 17})
    assert "trainer(s) 1 did not send BATCH_BARRIER within 1.5 s" in msgs[0]
    assert s.endpoint in msgs[0]
    c = _client(0, heartbeat_s=0)
    (w,) = c.get_vars([(s.endpoint, "w")], barrier=False)     # the pserver still serves
    assert np.array_equal(w, np.zeros((4, 3), np.float32))   # the failed round was not applied
    c.close()


def test_billion_id_sparse_table_holds_only_touched_rows(servers):
    s = servers()
    c = _client(0)
    assert c.sparse_memory(s.endpoint) == (0, c.sparse_memory(s.endpoint)[1])
    empty_bytes = c.sparse_memory(s.endpoint)[1]
    ids = np.random.RandomState(0).randint(0, 10**9, size=5000)
    ids[:10] = 10**9 - 1
    c.prefetch([(s.endpoint, "emb", ids)])
    rows, nbytes = c.sparse_memory(s.endpoint)
    assert rows == len(np.unique(ids))
    assert nbytes - empty_bytes < 50 * rows * 4 * 4     # proportional to touched rows (10^9 rows: 16 GB)
    c.close()


def test_wait_server_ready_and_port_zero(servers):
    s = servers()
    assert s.port > 0
    wait_server_ready([s.endpoint], timeout=5)
    with pytest.raises(Exception, match="cannot listen"):
        ParameterServer(s.endpoint, DictHandler(), 1).start()   # the port is taken


def test_tls_with_a_self_signed_certificate(servers, self_signed_cert):
    key, cert = self_signed_cert
    s = servers(tls_cert_path=cert, tls_key_path=key)
    c = _client(0, tls_ca_path=cert)
    c.send_vars([(s.endpoint, "echo/t", np.arange(3.0))])
    assert c.get_vars([(s.endpoint, "echo/t")])[0].tolist() == [0.0, 1.0, 2.0]
    c.close()
    plain = _client(0, retry_window_s=0.5)
    with pytest.raises(PServerUnavailableError):
        plain.get_vars([(s.endpoint, "echo/t")])
    plain.close()
