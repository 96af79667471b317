"""A trainer's several values to or from one pserver, as one group on one bulk connection.

A step of a CTR model pushes about six gradient blocks to each pserver and pulls as
many parameter blocks: one call each costs a thread of the client's pool, a request
and a reply, and a wake-up of the pserver per frame.  Here the values bound for one
pserver go out back to back on one connection (``bulk.BulkPool.call_many``) and their
replies are read after, on one thread; the pserver serves every frame that arrived in
one wake-up.  Grouped are the calls that keep the connection safe from both sides
blocking: pushes (their replies are tiny) and pulls (their requests are).

Whatever a group cannot settle goes through ``RPCClient``'s single calls, with their
retries and error texts: a value when the connection fails (a push keeps its send
number, so a pserver that applied it already drops the repeat), a value whose reply is
an error, and one from a pserver that restarted without its state.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..core.scope import LoDTensor, SelectedRows
from . import bulk, codec, rpc
from .restarts import REFETCH

__all__ = ["UNLIMITED", "GroupedCalls", "by_endpoint", "owned"]

UNLIMITED = 1 << 62   #: max_bytes of a value sent whole on the bulk channel


def by_endpoint(items: list[tuple]) -> dict[str, list[int]]:
    """Positions of ``items`` ((endpoint, ...) tuples) per endpoint, in first-seen order."""
    out: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        out.setdefault(it[0], []).append(i)
    return out


class GroupedCalls:
    """``RPCClient``'s grouped pushes and pulls (a mixin: it uses the client's channels,
    counters and single calls)."""

    trainer_id: int
    options: Any
    restarts: Any
    _bulk: bulk.BulkPool
    _token: str
    _rounds: dict[str, int]
    _seqs: Any   # the client's send numbers (an itertools.count)
    _reply_bytes: dict[tuple[str, str, str], int]
    _bulk_port: Callable[[str], int]
    _counted: Callable[[str, str], None]
    _wants_bulk: Callable[[str, str, str, int], bool]

    def _group_port(self, endpoint: str, method: str, sized: list[tuple[str, int]]) -> int:
        """The bulk port to group calls of (name, payload bytes) on (0: call them one by one)."""
        if len(sized) < 2 or not all(self._wants_bulk(endpoint, method, n, b) for n, b in sized):
            return 0
        try:
            return self._bulk_port(endpoint)
        except Exception:  # noqa: BLE001 - the single calls wait for, or report, the pserver
            return 0

    def _call_group(self, endpoint: str, port: int, method: str, envs: list[codec.Envelope]) -> list:
        """Each call's (reply, info) or None where it must go through a single call."""
        try:
            got = self._bulk.call_many(bulk.split_host(endpoint), port, [(method, e) for e in envs],
                                       self._token, self.options.deadline_s)
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
        sized = [(n, memoryview(e.rows).nbytes + memoryview(e.data).nbytes) for (n, _), e in zip(named, envs)]
        port = self._group_port(endpoint, "SendVariable", sized)
        done = self._call_group(endpoint, port, "SendVariable", envs) if port else [None] * len(named)
        for (name, value), seq, ok in zip(named, seqs, done):
            if ok is None:
                send_one(endpoint, name, value, seq)

    def get_group(self, endpoint: str, names: list[str], barrier: bool,
                  get_one: Callable[[str, str], Any]) -> list[Any]:
        """Pull ``names`` from ``endpoint``; ``get_one(endpoint, name)`` is the single call."""
        method = "GetVariable" if barrier else "GetVariableNoBarrier"
        port = self._group_port(endpoint, method, [(n, 0) for n in names])
        got: list = [None] * len(names)
        if port:
            suffix = "" if barrier else rpc.WITHOUT_BARRIER_SUFFIX
            envs = [codec.control(n + suffix, self.trainer_id) for n in names]
            got = self._call_group(endpoint, port, method, envs)
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
