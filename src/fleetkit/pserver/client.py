"""Trainer-side RPC client for parameter servers.

One :class:`RPCClient` per process (``get_client``), thread-safe, one channel per
endpoint.  Calls that touch several pservers run concurrently; every call has a
deadline; UNAVAILABLE is retried with jittered exponential backoff until a total
retry window passes, so a pserver restart is ridden out.  Failures become fleetkit
errors (``rpc.map_status``) naming the endpoint and the variable.

Values of at least ``ClientOptions.bulk_threshold_bytes`` (default 0: all; sends: the
value's size; gets and prefetches: the size of that variable's previous reply) travel on the
pserver's bulk channel (``bulk.py``: raw TCP, the port asked over gRPC, or the pserver's
AF_UNIX socket when it runs on this host; ``client_bulk.py``) when TLS is off, the
pserver offers one, and ``bulk`` / ``FLEETKIT_PS_BULK`` do not turn it off; everything
else, and everything under TLS, uses gRPC.  Both transports share the deadline, the
retry with backoff and the error mapping; a trainer's several values to or from one
pserver go as one group on one bulk connection.

Values returned by ``get_vars``/``prefetch`` are writable numpy arrays (or LoDTensor /
SelectedRows) owned by the caller.

Liveness: the client keeps a heartbeat stream to every pserver it talks to (a beat every
``heartbeat_s``, ended after COMPLETE; ``liveness.py``), and checks the pserver's
incarnation on every reply, so a restarted pserver is noticed (``restarts.py``).
"""
from __future__ import annotations

import itertools
import logging
import random
import secrets
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import grpc
import numpy as np

from ..env import FLEETKIT_PS_RESEED_ON_RESTART, flag
from ..errors import InvalidArgumentError, RPCRequestError
from . import bulk, codec, exit_complete, rpc
from .channels import make_channel, wait_server_ready
from .client_bulk import UNLIMITED, BulkCalls, by_endpoint, owned, payload_bytes
from .liveness import Heartbeats, call_incarnation
from .restarts import REFETCH, RestartWatch

__all__ = ["ClientOptions", "RPCClient", "get_client", "reset_clients", "wait_server_ready"]
log = logging.getLogger(__name__)

# retry jitter draws from its own generator: retries happen a timing-dependent number of times, and
# drawing from the global `random` would change a user's seeded stream (e.g. reader.shuffle's order)
_JITTER = random.Random()


@dataclass(frozen=True)
class ClientOptions:
    """Client settings (defaults are generous: a sync get waits for the slowest trainer)."""

    deadline_s: float = 600.0          #: per call, includes the server's barrier wait
    retry_window_s: float = 120.0      #: total time UNAVAILABLE is retried for
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    max_message_bytes: int = codec.DEFAULT_MAX_MESSAGE_BYTES
    auth_token: str | None = None      #: None: FLEETKIT_AUTH_TOKEN from the environment
    tls_ca_path: str | None = None     #: PEM root certificate: use TLS channels
    tls_server_name: str | None = None  #: override the name checked in the server's certificate
    max_concurrency: int = 16
    #: send / fetch values of at least this many payload bytes on the bulk channel.
    #: 0 (default): every data call, small ones too: a bulk call costs a fraction of a
    #: Python gRPC call's CPU (async CTR 2x2 on 2 cores: 0.31x -> 0.54x of one process)
    bulk_threshold_bytes: int = 0
    bulk: bool | None = None           #: None: FLEETKIT_PS_BULK from the environment (default on)
    heartbeat_s: float = 1.0           #: beat interval of the heartbeat streams (0: none)
    #: re-seed a pserver restarted without state (trainer 0's copy); None: FLEETKIT_PS_RESEED_ON_RESTART
    reseed: bool | None = None


class RPCClient(BulkCalls):
    """Concurrent, retrying calls to pservers on behalf of one trainer."""

    def __init__(self, trainer_id: int = 0, options: ClientOptions | None = None) -> None:
        self.trainer_id = int(trainer_id)
        self.options = options or ClientOptions()
        token = rpc.auth_token(self.options.auth_token)
        self._token = token
        self._metadata = ((rpc.AUTH_METADATA_KEY, token),) if token else ()
        # raw TCP carries no TLS: with TLS channels every tensor stays on gRPC
        self.bulk_on = rpc.bulk_enabled(self.options.bulk) and not self.options.tls_ca_path
        self._bulk = bulk.BulkPool(max_idle=self.options.max_concurrency)
        self._bulk_ports: dict[str, int] = {}            # endpoint -> advertised port (0: none)
        self._bulk_paths: dict[str, str] = {}            # endpoint -> its reachable AF_UNIX path ("": none)
        self._reply_bytes: dict[tuple[str, str, str], int] = {}   # last reply size per call kind
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[tuple[str, str], Callable] = {}
        self._rounds: dict[str, int] = {}   # endpoint -> batch barriers sent (sync round)
        # Gradient send numbers (header ``seq``): a retry repeats its number, so an async
        # pserver applies it once.  A random start keeps a restarted trainer's numbers
        # apart from its previous life's.
        self._seqs = itertools.count(secrets.randbits(62) | 1)
        self._contacted: list[str] = []
        self.completed = False              # COMPLETE sent: Executor.close() must not send it again
        #: ("get" | "prefetch", var / block / table name) -> calls, and the bytes their
        #: replies carried: what a trainer pulls (tests, benchmarks)
        self.fetched: Counter[tuple[str, str]] = Counter()
        self.fetched_bytes: Counter[tuple[str, str]] = Counter()
        #: ("bulk" | "grpc", method) -> calls that succeeded on that transport
        self.transport: Counter[tuple[str, str]] = Counter()
        self._pool = ThreadPoolExecutor(self.options.max_concurrency, thread_name_prefix="fk-rpc")
        self._heartbeats = Heartbeats(self.trainer_id, self.options.heartbeat_s, self._metadata, self._beat_stub)
        reseed = flag(FLEETKIT_PS_RESEED_ON_RESTART) if self.options.reseed is None else self.options.reseed
        self.restarts = RestartWatch(self.trainer_id, reseed, self._send_seed, self._incarnation_of,
                                     self.options.retry_window_s)

    @property
    def contacted(self) -> list[str]:
        """The endpoints this client has opened a channel to, each once, in first-contact order."""
        with self._lock:
            return list(dict.fromkeys(self._contacted))

    # ---------------------------------------------------------------- plumbing
    def channel(self, endpoint: str) -> grpc.Channel:
        with self._lock:
            ch = self._channels.get(endpoint)
            if ch is not None:
                return ch
            ch = make_channel(endpoint, self.options)
            self._channels[endpoint] = ch
            self._contacted.append(endpoint)
        self._heartbeats.start(endpoint)
        return ch

    def _beat_stub(self, endpoint: str) -> Callable:
        return self.channel(endpoint).stream_unary(rpc.path(rpc.HEARTBEAT_METHOD), request_serializer=bytes,
                                                   response_deserializer=bytes)

    def _stub(self, endpoint: str, method: str) -> Callable:
        key = (endpoint, method)
        stub = self._stubs.get(key)
        if stub is None:
            des = rpc.void_deserialize if method in rpc.VOID_METHODS else rpc.deserialize
            stub = self.channel(endpoint).unary_unary(rpc.path(method), request_serializer=rpc.serialize,
                                                      response_deserializer=des)
            self._stubs[key] = stub
        return stub

    def _call(self, endpoint: str, method: str, env: codec.Envelope, varname: str | None,
              use_bulk: bool = False, watch: bool = True) -> Any:
        """One call with deadline and retry on UNAVAILABLE within the retry window, on gRPC
        or (``use_bulk``) the bulk channel.  A bulk call returns ``bulk.NO_BULK`` when the
        pserver serves no bulk port (the caller then uses gRPC).  ``watch``: check the
        reply's incarnation (a value from an unseeded restarted pserver is fetched again)."""
        o = self.options
        give_up = time.monotonic() + o.retry_window_s
        delay, attempts = o.backoff_initial_s, 0
        while True:
            attempts += 1
            info: list = []
            try:
                if use_bulk:
                    out = self._bulk_once(endpoint, method, env, info.append)
                else:
                    out, call = self._stub(endpoint, method).with_call(env, timeout=o.deadline_s,
                                                                       metadata=self._metadata)
                    info.append(call_incarnation(call))
                    self._counted("grpc", method)
                if (watch and info and self.restarts.observe(endpoint, info[0]) == REFETCH
                        and method not in rpc.VOID_METHODS and attempts < 4):
                    continue
                return out
            except grpc.RpcError as e:
                code, details, missing = rpc.grpc_status(e)
                info.append(call_incarnation(e))
            except bulk.BulkStatus as e:
                code, details, missing = e.code, e.details, e.missing
                info.append(e.info)
            # a failure from a restarted pserver: say that first (or re-seed and try again)
            if watch and info and info[-1] and self.restarts.observe(endpoint, info[-1]) == REFETCH \
                    and attempts < 4:
                continue
            if code == "UNAVAILABLE":   # a restarted pserver has a new bulk port: ask again
                self._forget_bulk(endpoint)
            if code == "UNAVAILABLE" and time.monotonic() + delay < give_up:
                time.sleep(delay * (0.5 + _JITTER.random()))
                delay = min(delay * 2, o.backoff_max_s)
                continue
            note = (f" (gave up after {attempts} attempts over {o.retry_window_s:.0f} s retry window)"
                    if code == "UNAVAILABLE" else "")
            raise rpc.map_status(code, details, missing, endpoint, varname, method, note) from None

    def _counted(self, transport: str, method: str) -> None:
        with self._lock:
            self.transport[transport, method] += 1

    def _call_auto(self, endpoint: str, method: str, env: codec.Envelope, varname: str,
                   nbytes: int = 0) -> Any:
        """A call whose request fits one gRPC message: on the bulk channel if wanted and
        offered, else gRPC."""
        if self._wants_bulk(endpoint, method, varname, nbytes):
            out = self._call(endpoint, method, env, varname, use_bulk=True)
            if out is not bulk.NO_BULK:
                return out
        return self._call(endpoint, method, env, varname)

    def _call_value(self, endpoint: str, method: str, env: codec.Envelope, varname: str,
                    nbytes: int = 0) -> Any:
        """A call whose response is a value, fetching the remaining chunks of a big one
        (from the start again, once, if the pserver lost the transfer, e.g. restarted).
        Bulk replies come whole, in a buffer of their own."""
        key = (endpoint, method, varname)
        for attempt in (1, 2):
            first = self._call_auto(endpoint, method, env, varname, nbytes)
            self._reply_bytes[key] = sum(codec.payload_nbytes(first.header))
            count = first.header.chunk_count
            if count <= 1:
                return owned(codec.decode(first))
            asm = codec.Reassembler()
            whole = asm.add(first)
            try:
                for k in range(1, count):
                    req = codec.Envelope(type(env.header)())
                    req.header.CopyFrom(env.header)
                    req.header.chunk_index, req.header.transfer_id = k, first.header.transfer_id
                    whole = asm.add(self._call(endpoint, method, req, varname)) or whole
            except RPCRequestError as e:
                if attempt == 2 or e.code != "FAILED_PRECONDITION":
                    raise
                continue
            if whole is None:
                raise InvalidArgumentError(f"{method} '{varname}' from {endpoint}: chunks missing")
            return codec.decode(whole)   # reassembled buffers are already writable and ours
        raise AssertionError("unreachable")

    def _run_all(self, jobs: Sequence[Callable[[], Any]]) -> list[Any]:
        """Run jobs concurrently; return results in order; raise the first failure
        (after every job finished, so no call is left running behind the caller)."""
        if len(jobs) == 1:
            return [jobs[0]()]
        futures = [self._pool.submit(j) for j in jobs]
        errors = [f.exception() for f in futures]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        return [f.result() for f in futures]

    # ---------------------------------------------------------------- the API
    def send_vars(self, items: Iterable[tuple[str, str, Any]]) -> None:
        """Send (endpoint, name, value) triples concurrently (grads; large ones chunked)."""
        items = list(items)
        self._run_all([
            (lambda ep=ep, at=at: self.send_group(ep, [items[i][1:] for i in at], self._send_one))
            if len(at) > 1 else (lambda i=at[0]: self._send_one(*items[i]))
            for ep, at in by_endpoint(items).items()])

    def _send_one(self, ep: str, name: str, value: Any, seq: int | None = None) -> None:
        """One gradient push (``seq``: its send number, when a group already drew it)."""
        r, seq = self._rounds.get(ep, 0), next(self._seqs) if seq is None else seq
        envs = codec.encode(name, value, self.trainer_id, self.options.max_message_bytes, round=r, seq=seq)
        nbytes = sum(payload_bytes(e) for e in envs)
        if self._wants_bulk(ep, "SendVariable", name, nbytes):
            whole = envs[0] if len(envs) == 1 else codec.encode(
                name, value, self.trainer_id, UNLIMITED, round=r, seq=seq)[0]
            if self._call(ep, "SendVariable", whole, name, use_bulk=True) is not bulk.NO_BULK:
                return
        for env in envs:
            self._call(ep, "SendVariable", env, name)

    def get_vars(self, items: Iterable[tuple[str, str]], barrier: bool = True) -> list[Any]:
        """Fetch (endpoint, name) pairs concurrently.  ``barrier=True`` (sync training)
        waits on the pserver until this trainer's round has been applied."""
        method = "GetVariable" if barrier else "GetVariableNoBarrier"

        def get_one(ep: str, name: str) -> Any:
            wire = name if barrier else name + rpc.WITHOUT_BARRIER_SUFFIX
            return self._call_value(ep, method, codec.control(wire, self.trainer_id), name)
        items = list(items)
        groups = by_endpoint(items)
        got = self._run_all([
            (lambda ep=ep, at=at: self.get_group(ep, [items[i][1] for i in at], barrier, get_one))
            if len(at) > 1 else (lambda ep=ep, i=at[0]: [get_one(ep, items[i][1])])
            for ep, at in groups.items()])
        values: list[Any] = [None] * len(items)
        for at, vals in zip(groups.values(), got):
            for i, v in zip(at, vals):
                values[i] = v
        self._count("get", [name for _, name in items], values)
        if self.restarts.keeps_copies:
            for (ep, name), v in zip(items, values):
                self.restarts.pulled(ep, name, v)
        return values

    def prefetch(self, items: Iterable[tuple[str, str, Any]]) -> list[np.ndarray]:
        """Rows of (endpoint, table_name, ids) lookups, each [len(ids), dim], concurrently.

        Id lists larger than one message are looked up in several calls (ids are
        independent), so no request is ever rejected for its size."""
        per_call = max(1, self.options.max_message_bytes // 8)
        items = list(items)
        jobs, owner = [], []
        for i, (ep, table, ids) in enumerate(items):
            ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
            if len(ids) > per_call and self._wants_bulk(ep, "PrefetchVariable", table, ids.nbytes):
                jobs.append(lambda ep=ep, table=table, ids=ids: self._prefetch_whole(ep, table, ids, per_call))
                owner.append(i)
                continue
            for lo in range(0, max(len(ids), 1), per_call):
                jobs.append(lambda ep=ep, table=table, piece=ids[lo:lo + per_call]:
                            self._prefetch_piece(ep, table, piece))
                owner.append(i)
        parts = self._run_all(jobs)
        out: list[list[np.ndarray]] = [[] for _ in range(owner[-1] + 1 if owner else 0)]
        for i, rows in zip(owner, parts):
            out[i].append(rows)
        values = [p[0] if len(p) == 1 else np.concatenate(p, axis=0) for p in out]
        self._count("prefetch", [table for _, table, _ in items], values)
        return values

    def _prefetch_whole(self, ep: str, table: str, ids: np.ndarray, per_call: int) -> np.ndarray:
        """One bulk lookup of more ids than one gRPC message holds (pieces on gRPC if the
        pserver offers no bulk channel)."""
        env = codec.encode(table, ids, self.trainer_id, UNLIMITED, table_name=table, out_varname=table)[0]
        out = self._call(ep, "PrefetchVariable", env, table, use_bulk=True)
        if out is not bulk.NO_BULK:
            self._reply_bytes[ep, "PrefetchVariable", table] = sum(codec.payload_nbytes(out.header))
            return owned(codec.decode(out))
        parts = [self._prefetch_piece(ep, table, ids[lo:lo + per_call]) for lo in range(0, len(ids), per_call)]
        return np.concatenate(parts, axis=0)

    def _prefetch_piece(self, ep: str, table: str, ids: np.ndarray) -> Any:
        """Rows of ids that fit one message."""
        env = codec.encode(table, ids, self.trainer_id, self.options.max_message_bytes,
                           table_name=table, out_varname=table)[0]
        return self._call_value(ep, "PrefetchVariable", env, table, 8 * len(ids))

    def _count(self, kind: str, names: list[str], values: list[Any]) -> None:
        with self._lock:
            for name, v in zip(names, values):
                self.fetched[kind, name] += 1
                self.fetched_bytes[kind, name] += int(getattr(getattr(v, "values", v), "nbytes", 0))

    def batch_barrier(self, endpoints: Sequence[str]) -> None:
        """Tell each pserver this trainer sent all grads of its current round."""
        def job(ep: str) -> Callable[[], None]:
            def run() -> None:
                r = self._rounds.get(ep, 0)
                self._call_auto(ep, "SendVariable", codec.control(rpc.BATCH_BARRIER, self.trainer_id, round=r),
                                rpc.BATCH_BARRIER)
                self._rounds[ep] = r + 1
            return run
        self._run_all([job(ep) for ep in _unique(endpoints)])

    def fetch_barrier(self, endpoints: Sequence[str]) -> None:
        """Tell each pserver this trainer fetched its params (waits for the round's update)."""
        self._run_all([
            (lambda ep=ep: self._call_auto(ep, "GetVariable", codec.control(rpc.FETCH_BARRIER, self.trainer_id),
                                           rpc.FETCH_BARRIER))
            for ep in _unique(endpoints)])

    def send_complete(self, endpoints: Sequence[str] | None = None) -> None:
        """Tell pservers (default: every one contacted) that this trainer has finished."""
        eps = _unique(self._contacted if endpoints is None else endpoints)
        self.completed = True
        self._run_all([
            (lambda ep=ep: self._call(ep, "SendVariable", codec.control(rpc.COMPLETE, self.trainer_id),
                                      rpc.COMPLETE))
            for ep in eps]) if eps else None
        self._heartbeats.stop(eps)

    def _send_seed(self, endpoint: str, values: dict[str, Any]) -> None:
        """Re-seed a pserver that restarted without state (``restarts.py``)."""
        for name, value in values.items():
            for env in codec.encode(rpc.RESEED + name, value, self.trainer_id, self.options.max_message_bytes):
                self._call(endpoint, "SendVariable", env, name, watch=False)
        self._call(endpoint, "SendVariable", codec.control(rpc.RESEED + rpc.RESEED_DONE, self.trainer_id),
                   rpc.RESEED_DONE, watch=False)

    def _incarnation_of(self, endpoint: str) -> tuple[int, int, int]:
        env = codec.control(rpc.INCARNATION + rpc.WITHOUT_BARRIER_SUFFIX, self.trainer_id)
        out = self._call(endpoint, "GetVariableNoBarrier", env, rpc.INCARNATION, watch=False)
        a = np.asarray(codec.decode(out)).reshape(-1)
        return int(a[0]), int(a[1]), int(a[2])

    def checkpoint_notify(self, endpoints: Sequence[str], dirname: str, table_name: str = "",
                          load: bool = False) -> None:
        """Ask each pserver to save (or ``load``) its state under ``dirname`` (its own file)."""
        name = rpc.LOAD_CHECKPOINT if load else rpc.SAVE_CHECKPOINT
        self._run_all([
            (lambda ep=ep: self._call(ep, "CheckpointNotify",
                                      codec.control(name, self.trainer_id, out_varname=dirname,
                                                    table_name=table_name), name))
            for ep in _unique(endpoints)])

    def sparse_memory(self, endpoint: str, table_name: str = "") -> tuple[int, int]:
        """(touched rows, bytes) of a pserver's sparse tables (one table, or all)."""
        env = codec.control(rpc.SPARSE_MEMORY + rpc.WITHOUT_BARRIER_SUFFIX, self.trainer_id,
                            table_name=table_name)
        out = self._call_value(endpoint, "GetVariableNoBarrier", env, rpc.SPARSE_MEMORY)
        return int(out[0]), int(out[1])

    def close(self) -> None:
        """Close channels and threads (does not send COMPLETE)."""
        self._heartbeats.stop()
        with self._lock:
            for ch in self._channels.values():
                ch.close()
            self._channels.clear()
            self._stubs.clear()
        self._bulk.close()
        self._pool.shutdown(wait=False)


def _unique(endpoints: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(endpoints))


_CLIENTS: dict[int, RPCClient] = {}
_CLIENTS_LOCK = threading.Lock()


def get_client(trainer_id: int = 0, options: ClientOptions | None = None) -> RPCClient:
    """The process-wide client of ``trainer_id`` (created on first use with ``options``)."""
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(trainer_id)
        if client is None:
            client = _CLIENTS[trainer_id] = RPCClient(trainer_id, options)
            exit_complete.install()   # COMPLETE at a clean exit, for scripts without exe.close()
        return client


def live_clients() -> list[RPCClient]:
    """The process-wide clients created so far."""
    with _CLIENTS_LOCK:
        return list(_CLIENTS.values())


def reset_clients() -> None:
    """Close and forget the process-wide clients (tests; after fork)."""
    with _CLIENTS_LOCK:
        for c in _CLIENTS.values():
            c.close()
        _CLIENTS.clear()
