"""The request logic of a ``ParameterServer``, free of transport: what SendVariable,
GetVariable, GetVariableNoBarrier and PrefetchVariable do, for the gRPC adapter
(``server.py``) and the bulk channel (``bulk.py``, through ``ParameterServer.bulk_call``)
alike.  Requests arrive as decoded ``codec.Envelope`` objects whose trainer id and
token the adapter has already checked."""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import numpy as np

from ..errors import InvalidArgumentError
from . import codec, rpc
from .state import check_finite

__all__ = ["ServiceMixin"]
log = logging.getLogger("fleetkit.pserver.server")


class _Precondition(Exception):
    """A well-formed request at the wrong time (FAILED_PRECONDITION): a gradient after
    COMPLETE, a chunk of a transfer that is not pending."""


class ServiceMixin:
    """The transport-free methods of ``ParameterServer`` (which provides the attributes)."""

    endpoint: str
    options: Any
    handler: Any
    incarnation: Any
    num_trainers: int
    rounds: Any
    bulk_port: int
    bulk_unix_path: str
    alive: Any
    _hlock: threading.RLock
    _asm_lock: threading.Lock
    _asm: Any
    _big: dict[int, list[bytes]]
    _next_transfer: int
    _live: set[int]
    _applied_sends: Any
    _refuse_nonfinite: bool

    def sparse_memory(self, table: str = "") -> tuple[int, int]:
        """(touched rows, bytes) of the handler's sparse tables."""
        with self._hlock:
            return self.handler.sparse_memory(table)

    def _apply(self, grads: dict[str, Any], trainer_id: int | None = None) -> None:
        """Sync rounds apply averaged gradients; async mode applies one trainer's."""
        with self._hlock:
            if trainer_id is None:
                self.handler.apply(grads)
            else:
                self.handler.apply_from(trainer_id, grads)
            self.incarnation.updates += 1

    def _methods(self) -> dict[str, Callable]:
        return {
            "SendVariable": self._send, "GetVariable": self._get,
            "GetVariableNoBarrier": self._get_no_barrier, "PrefetchVariable": self._prefetch,
            "CheckpointNotify": self._notify,
        }

    def _check_trainer(self, env: codec.Envelope) -> None:
        t = env.header.trainer_id
        if not 0 <= t < self.num_trainers:
            raise InvalidArgumentError(f"trainer_id {t} outside [0, {self.num_trainers})")

    # ------------------------------------------------------------------ methods
    # ------------------------------------------------------------------ methods
    def _send(self, env: codec.Envelope) -> None:
        h = env.header
        t, name = h.trainer_id, h.varname
        if name == rpc.BATCH_BARRIER:
            if self.rounds is not None:
                self.rounds.batch_barrier(t, h.round)
            return None
        if name == rpc.COMPLETE:
            self.alive.complete(t)
            with self._asm_lock:
                self._asm.discard(t)
            if self.rounds is not None:
                self.rounds.complete(t)
            else:
                self._live.discard(t)
            return None
        if h.chunk_count > 1:
            with self._asm_lock:
                whole = self._asm.add(env, "send")
            if whole is None:
                return None
            env = whole
        if name.startswith(rpc.RESEED):
            done = name == rpc.RESEED + rpc.RESEED_DONE
            return self._reseed(t, name[len(rpc.RESEED):], None if done else codec.decode(env))
        value = codec.decode(env)
        with self._hlock:
            self.handler.check_grad(name, value)
        if self._refuse_nonfinite:
            check_finite(name, t, value)
        if self.rounds is not None:
            self.rounds.add_grad(t, name, value, h.round)
        else:
            if t not in self._live:
                raise _Precondition(f"trainer {t} sent a gradient after COMPLETE")
            if h.seq and not self._applied_sends.claim(t, h.seq):
                log.info("pserver %s: gradient '%s' #%d of trainer %d was applied already (a retry); "
                         "dropped", self.endpoint, name, h.seq, t)
                return None
            try:
                self._apply({name: value}, t)
            except BaseException:
                if h.seq:
                    self._applied_sends.release(t, h.seq)  # not applied: a retry must be
                raise
        return None

    def _respond(self, request: codec.Envelope, fetch: Callable[[], tuple[str, Any]],
                 reply: Callable[[str, Any], Any] | None = None) -> Any:
        """Serialize a value response (``fetch`` returns its name and value).  A chunked one
        is cached under a fresh transfer id (carried by every chunk) and served chunk by
        chunk to requests echoing that id.  On the bulk channel ``reply`` takes the name and
        value while the handler lock is held (so it sees no update half-done) and returns
        what the bulk server sends."""
        h = request.header
        if h.chunk_index > 0:
            with self._asm_lock:
                parts = self._big.get(h.transfer_id)
                if parts is None or h.chunk_index >= len(parts):
                    raise _Precondition(f"chunk {h.chunk_index} of transfer {h.transfer_id} requested "
                                        f"but no such chunked value is pending")
                blob = parts[h.chunk_index]
                if h.chunk_index == len(parts) - 1:
                    del self._big[h.transfer_id]
                return blob
        with self._hlock:   # serialize under the lock: no torn reads of a param being updated
            name, value = fetch()
            if reply is not None:
                return reply(name, value)
            envs = self._encode(name, value)
            if len(envs) > 1:
                with self._asm_lock:
                    self._next_transfer += 1
                    tid = self._next_transfer
                for e in envs:
                    e.header.transfer_id = tid
            blobs = [codec.to_bytes(e) for e in envs]
        if len(blobs) > 1:
            with self._asm_lock:
                self._big[tid] = blobs
                while len(self._big) > 4 * self.num_trainers + 64:   # abandoned transfers
                    del self._big[next(iter(self._big))]
        return blobs[0]

    # ``reply``: the bulk channel's reply (see _respond); None on gRPC
    def _get(self, env: codec.Envelope, reply: Callable | None = None) -> Any:
        h = env.header
        if self.rounds is not None and h.chunk_index == 0:
            self.rounds.wait_applied(h.trainer_id)
        if h.varname == rpc.FETCH_BARRIER:
            return codec.to_bytes(codec.control(rpc.FETCH_BARRIER, h.trainer_id))
        return self._respond(env, lambda: (h.varname, self._handler_get(h.trainer_id, h.varname)), reply)

    def _get_no_barrier(self, env: codec.Envelope, reply: Callable | None = None) -> Any:
        h = env.header
        name = h.varname.removesuffix(rpc.WITHOUT_BARRIER_SUFFIX)
        if name == rpc.SPARSE_MEMORY:
            rows, nbytes = self.sparse_memory(h.table_name)   # under the handler lock
            return codec.to_bytes(codec.encode(name, np.array([rows, nbytes], dtype=np.int64))[0])
        if name == rpc.BULK_PORT:
            return codec.to_bytes(codec.encode(name, np.array([self.bulk_port], dtype=np.int64))[0])
        if name == rpc.BULK_UNIX:
            path = np.frombuffer(self.bulk_unix_path.encode(), dtype=np.uint8)
            return codec.to_bytes(codec.encode(name, path)[0])
        if name == rpc.INCARNATION:
            info = np.array(self.incarnation.info(), dtype=np.int64)
            return codec.to_bytes(codec.encode(name, info)[0])
        return self._respond(env, lambda: (name, self._handler_get(h.trainer_id, name)), reply)

    def _handler_get(self, trainer_id: int, name: str) -> Any:
        if self.rounds is None:  # async: the handler may track who pulled what (DC-ASGD)
            return self.handler.get_for(trainer_id, name)
        return self.handler.get(name)

    def _prefetch(self, env: codec.Envelope, reply: Callable | None = None) -> Any:
        h = env.header
        table = h.table_name or h.varname
        if h.chunk_index > 0:
            return self._respond(env, lambda: ("", None))   # a later chunk: served from the cache
        ids = codec.decode(env)
        if not isinstance(ids, np.ndarray) or ids.dtype.kind not in "iu":
            raise InvalidArgumentError(f"prefetch of table '{table}' needs an integer id tensor")
        out = h.out_varname or table
        return self._respond(env, lambda: (out, self.handler.prefetch(table, ids)), reply)

    def _encode(self, name: str, value: Any) -> list[codec.Envelope]:
        return codec.encode(name, value, max_bytes=self.options.max_message_bytes)
