"""The trainer side of the bulk channel (``bulk.py``): where a pserver's channel is, its
single calls, and grouped calls.

Where: the pserver's TCP port, asked over gRPC once per (re)start, and, for a pserver on
this host, its AF_UNIX socket (``BulkServer.unix_path``, in a 0700 directory), which
this process uses if it can reach it: a local frame then skips TCP.

Groups.  A step of a CTR model pushes about six gradient blocks to each pserver and pulls
as many parameter blocks: one call each costs a thread of the client's pool, a request
and a reply, and a wake-up of the pserver per frame.  Here the values bound for one
pserver go out back to back on one connection (``bulk.BulkPool.call_many``) and their
replies are read after, on one thread; the pserver serves every frame that arrived in
one wake-up.  Grouped are the calls that keep the connection safe from both sides
blocking: pushes (their replies are tiny) and pulls (their requests are).  Whatever a
group cannot settle goes through the single calls, with their retries and error texts: a
value when the connection fails (a push keeps its send number, so a pserver that applied
it already drops the repeat), a value whose reply is an error, and one from a pserver
that restarted without its state.
"""
from __future__ import annotations

import logging
import os
import stat
from typing import Any, Callable

import grpc
import numpy as np

from ..core.scope import LoDTensor, SelectedRows
from . import bulk, codec, rpc
from .restarts import REFETCH

__all__ = ["UNLIMITED", "BulkCalls", "by_endpoint", "owned", "payload_bytes"]
log = logging.getLogger("fleetkit.pserver.client")

UNLIMITED = 1 << 62   #: max_bytes of a value sent whole on the bulk channel


def payload_bytes(env: codec.Envelope) -> int:
    """Bytes of an envelope's payload (SelectedRows rows and tensor data)."""
    return memoryview(env.rows).nbytes + memoryview(env.data).nbytes


def by_endpoint(items: list[tuple]) -> dict[str, list[int]]:
    """Positions of ``items`` ((endpoint, ...) tuples) per endpoint, in first-seen order."""
    out: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        out.setdefault(it[0], []).append(i)
    return out


class BulkCalls:
    """``RPCClient``'s bulk channel (a mixin: it uses the client's gRPC stubs, counters and
    retrying single calls)."""

    trainer_id: int
    options: Any
    restarts: Any
    bulk_on: bool
    _bulk: bulk.BulkPool
    _token: str
    _metadata: tuple
    _rounds: dict[str, int]
    _seqs: Any   # the client's send numbers (an itertools.count)
    _reply_bytes: dict[tuple[str, str, str], int]
    _bulk_ports: dict[str, int]
    _bulk_paths: dict[str, str]
    _stub: Callable[[str, str], Callable]
    _counted: Callable[[str, str], None]

    # ------------------------------------------------------- single calls
    def _wants_bulk(self, endpoint: str, method: str, varname: str, nbytes: int) -> bool:
        """Whether a call goes on the bulk channel: its payload, or its variable's last
        reply, is at least the threshold."""
        if not self.bulk_on:
            return False
        thr = self.options.bulk_threshold_bytes
        return nbytes >= thr or self._reply_bytes.get((endpoint, method, varname), -1) >= thr

    def _bulk_port(self, endpoint: str) -> int:
        """The pserver's advertised bulk port (0: none), asked once per (re)start.  Raises
        grpc.RpcError only for UNAVAILABLE (the caller's retry loop waits for the pserver);
        any other answer (an older pserver: NOT_FOUND) means no bulk channel."""
        port = self._bulk_ports.get(endpoint)
        if port is not None:
            return port
        try:
            port = int(self._ask(endpoint, rpc.BULK_PORT).reshape(-1)[0])
        except grpc.RpcError as e:
            if rpc.is_retryable(e):
                raise
            port = 0
        except Exception:  # noqa: BLE001 - an odd answer: stay on gRPC
            port = 0
        self._bulk_paths[endpoint] = self._local_socket(endpoint) if port else ""
        self._bulk_ports[endpoint] = port
        return port

    def _local_socket(self, endpoint: str) -> str:
        """The path of the pserver's AF_UNIX bulk socket if this process can reach it (the
        pserver runs on this host, as this user), else ""."""
        try:
            path = self._ask(endpoint, rpc.BULK_UNIX).astype(np.uint8).tobytes().decode()
            return path if path and stat.S_ISSOCK(os.stat(path).st_mode) and os.access(path, os.W_OK) else ""
        except Exception:  # noqa: BLE001 - an older pserver (NOT_FOUND), another host: TCP
            return ""

    def _ask(self, endpoint: str, name: str) -> np.ndarray:
        """A control value of the pserver (``rpc.BULK_PORT``...), asked over gRPC."""
        env = codec.control(name + rpc.WITHOUT_BARRIER_SUFFIX, self.trainer_id)
        out = self._stub(endpoint, "GetVariableNoBarrier")(env, timeout=self.options.deadline_s,
                                                           metadata=self._metadata)
        return np.asarray(codec.decode(out))

    def _bulk_addr(self, endpoint: str) -> tuple[str, int] | None:
        """Where the bulk channel of ``endpoint`` is: (host, port), or (AF_UNIX path, 0) for
        a pserver on this host; None if it has none (use gRPC)."""
        port = self._bulk_port(endpoint)
        if not port:
            return None
        path = self._bulk_paths.get(endpoint)
        return (path, 0) if path else (bulk.split_host(endpoint), port)

    def _forget_bulk(self, endpoint: str) -> None:
        port, path = self._bulk_ports.pop(endpoint, None), self._bulk_paths.pop(endpoint, None)
        if port:
            self._bulk.forget(bulk.split_host(endpoint), port)
        if path:
            self._bulk.forget(path, 0)

    def _bulk_once(self, endpoint: str, method: str, env: codec.Envelope, on_info: Callable) -> Any:
        fresh = endpoint not in self._bulk_ports
        addr = self._bulk_addr(endpoint)
        if addr is None:
            return bulk.NO_BULK
        try:
            out = self._bulk.call(*addr, method, env, self._token, self.options.deadline_s, on_info)
        except bulk.BulkStatus as e:
            if e.connect_failed and not addr[1]:   # the AF_UNIX socket went away: TCP from now on
                self._bulk_paths[endpoint] = ""
                return self._bulk_once(endpoint, method, env, on_info)
            port = addr[1]
            if fresh and e.connect_failed:
                # the pserver just answered on gRPC but its bulk port cannot be reached
                # (a firewall?): stay on gRPC for this endpoint rather than retry forever
                log.warning("pserver %s: bulk port %d unreachable (%s); using gRPC", endpoint, port, e.details)
                self._bulk_ports[endpoint] = 0
                return bulk.NO_BULK
            raise
        self._counted("bulk", method)
        return out

    # ------------------------------------------------------------- groups
    def _group_addr(self, endpoint: str, method: str, sized: list[tuple[str, int]]) -> tuple[str, int] | None:
        """The bulk address to group calls of (name, payload bytes) on (None: call them one by one)."""
        if len(sized) < 2 or not all(self._wants_bulk(endpoint, method, n, b) for n, b in sized):
            return None
        try:
            return self._bulk_addr(endpoint)
        except Exception:  # noqa: BLE001 - the single calls wait for, or report, the pserver
            return None

    def _call_group(self, endpoint: str, addr: tuple[str, int], method: str, envs: list[codec.Envelope]) -> list:
        """Each call's (reply, info) or None where it must go through a single call."""
        try:
            got = self._bulk.call_many(*addr, [(method, e) for e in envs], self._token, self.options.deadline_s)
        except bulk.BulkStatus:
            return [None] * len(envs)
        out: list = []
        for r in got:
            if isinstance(r, bulk.BulkStatus):
                out.append(None)
                continue
            self._counted("bulk", method)
            refetch = self.restarts.observe(endpoint, r[1]) == REFETCH and method not in rpc.VOID_METHODS
            out.append(None if refetch else r)
        return out

    def send_group(self, endpoint: str, named: list[tuple[str, Any]],
                   send_one: Callable[[str, str, Any, int], None]) -> None:
        """Push (name, value) pairs to ``endpoint``; ``send_one(endpoint, name, value, seq)``
        is the single call for what the group leaves."""
        seqs = [next(self._seqs) for _ in named]
        r = self._rounds.get(endpoint, 0)
        envs = [codec.encode(n, v, self.trainer_id, UNLIMITED, round=r, seq=s)[0]
                for (n, v), s in zip(named, seqs)]
        sized = [(n, payload_bytes(e)) for (n, _), e in zip(named, envs)]
        addr = self._group_addr(endpoint, "SendVariable", sized)
        done = self._call_group(endpoint, addr, "SendVariable", envs) if addr else [None] * len(named)
        for (name, value), seq, ok in zip(named, seqs, done):
            if ok is None:
                send_one(endpoint, name, value, seq)

    def get_group(self, endpoint: str, names: list[str], barrier: bool,
                  get_one: Callable[[str, str], Any]) -> list[Any]:
        """Pull ``names`` from ``endpoint``; ``get_one(endpoint, name)`` is the single call."""
        method = "GetVariable" if barrier else "GetVariableNoBarrier"
        addr = self._group_addr(endpoint, method, [(n, 0) for n in names])
        got: list = [None] * len(names)
        if addr:
            suffix = "" if barrier else rpc.WITHOUT_BARRIER_SUFFIX
            envs = [codec.control(n + suffix, self.trainer_id) for n in names]
            got = self._call_group(endpoint, addr, method, envs)
        values = []
        for name, r in zip(names, got):
            reply = r[0] if r is not None else None
            if reply is None or reply.header.chunk_count > 1:   # (bulk replies come whole)
                values.append(get_one(endpoint, name))
                continue
            self._reply_bytes[endpoint, method, name] = sum(codec.payload_nbytes(reply.header))
            values.append(owned(codec.decode(reply)))
        return values


def owned(value: Any) -> Any:
    """Writable copies of values decoded from (read-only) message bytes."""
    if isinstance(value, np.ndarray):
        return value if value.flags.writeable else value.copy()
    if isinstance(value, LoDTensor):
        return LoDTensor(owned(value.values), value.lod())
    if isinstance(value, SelectedRows):
        return SelectedRows(value.rows.copy(), owned(value.values), value.height)
    return value
