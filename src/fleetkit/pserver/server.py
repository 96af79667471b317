"""The parameter server: a gRPC adapter (and the bulk channel's target) around the
transport-free request logic of ``service.py``, which calls the ServerHandler.

``ParameterServer(endpoint, handler, num_trainers, sync_mode, options)`` serves
SendRecvService.  Sync mode runs rounds (``rounds.SyncRounds``); async mode applies
each gradient on arrival.  Large tensors may instead arrive on the bulk channel
(``bulk.py``: raw TCP on a second port, advertised over gRPC, off under TLS), whose
frames go to the same methods (``service.py``), so both transports behave identically.
Every bad request (unknown var, wrong dtype/shape, truncated payload, bad trainer id,
missing or wrong auth token) gets a gRPC error with a clear message and the server
keeps serving.  Checkpoints (``handler.state()``)
are written atomically on CheckpointNotify and every ``checkpoint_every_s`` seconds;
a (re)started server loads the newest one from ``checkpoint_dir``.
"""
from __future__ import annotations

import hmac
import logging
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import grpc

from ..env import FLAGS_CHECK_NAN_INF, FLEETKIT_PS_RESEED_ON_RESTART, flag
from ..errors import (BarrierTimeoutError, InvalidArgumentError, NotFoundError,
                      PServerError, RPCError)
from . import bulk, bulk_server, checkpoint, codec, rpc
from .handler import ServerHandler
from .liveness import Incarnation, LivenessMixin, TrainerLiveness
from .rounds import AppliedSends, SyncRounds
from .service import ServiceMixin, _Precondition
from .state import StateMixin

__all__ = ["ParameterServer", "ServerHandler", "ServerOptions"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerOptions:
    """Pserver settings."""

    max_message_bytes: int = codec.DEFAULT_MAX_MESSAGE_BYTES
    barrier_timeout: float = 300.0       #: sync: seconds a round waits for missing trainers
    checkpoint_dir: str | None = None    #: periodic checkpoints go here; loaded at start
    checkpoint_every_s: float | None = None
    checkpoint_keep: int = 2
    load_checkpoint: bool = True         #: load the newest checkpoint of checkpoint_dir at start
    server_index: int | None = None      #: names this pserver's file on CheckpointNotify
    auth_token: str | None = None        #: None: FLEETKIT_AUTH_TOKEN from the environment
    tls_cert_path: str | None = None     #: PEM certificate + key: serve TLS
    tls_key_path: str | None = None
    #: gRPC threads; None: 16 per trainer + 32.  Sync gets block in these threads, and a
    #: barrier queued behind a full pool of blocked gets would never run: each trainer's
    #: client has at most 16 calls in flight (ClientOptions.max_concurrency), so 16 per
    #: trainer plus headroom always leaves a thread for the barrier that frees them.
    max_workers: int | None = None
    exit_when_complete: bool = True      #: wait() returns once every trainer sent COMPLETE
    #: serve the bulk channel (raw TCP for large tensors) on a second port; None:
    #: FLEETKIT_PS_BULK from the environment (default on).  Never under TLS.
    bulk: bool | None = None
    bulk_io_timeout: float = 120.0       #: seconds a started bulk frame may take to arrive / leave
    bulk_max_bytes: int = 8 << 30        #: largest payload one bulk frame may announce
    bulk_port: int = 0                   #: the bulk channel's port (0: any free one)
    #: also serve it on an AF_UNIX socket in a 0700 directory, which trainers on this host use
    bulk_unix: bool = True
    bulk_auth_timeout_s: float = 5.0     #: a new bulk connection must show its token within this
    bulk_max_unauthenticated: int = 64   #: bulk connections that may wait to show their token
    #: bytes of unfinished chunked values (gRPC) held per trainer / in all; stale after the timeout
    reassembly_max_bytes_per_trainer: int = 4 << 30
    reassembly_max_bytes: int = 16 << 30
    reassembly_timeout_s: float = 60.0
    #: a trainer whose heartbeat stream is silent this long is lost (a dropped stream: at once)
    heartbeat_timeout_s: float = 10.0
    #: a trainer never heard from this long after the start is lost (None: wait for it forever)
    first_contact_timeout_s: float | None = 600.0
    #: async: how long a lost trainer may take to come back (a supervisor restarting it)
    #: before a pserver whose other trainers are done gives up on it
    rejoin_grace_s: float = 30.0
    #: directories CheckpointNotify may name (besides checkpoint_dir and FLEETKIT_PS_NOTIFY_DIRS)
    notify_dirs: tuple[str, ...] = ()
    notify_load: bool = False            #: allow CheckpointNotify LOAD of a file a request names
    refuse_nonfinite: bool | None = None  #: refuse NaN/inf gradients; None: FLAGS_check_nan_inf
    reseed: bool | None = None           #: accept trainer 0's re-seed; None: FLEETKIT_PS_RESEED_ON_RESTART


class _AuthFailure(Exception):
    pass


class _ShuttingDown(Exception):
    """Answered as UNAVAILABLE: a client retries, and reaches a restarted pserver."""


class ParameterServer(ServiceMixin, StateMixin, LivenessMixin):
    """Serves one pserver endpoint for ``num_trainers`` trainers."""

    def __init__(self, endpoint: str, handler: ServerHandler, num_trainers: int,
                 sync_mode: bool = True, options: ServerOptions | None = None) -> None:
        if num_trainers < 1:
            raise InvalidArgumentError(f"ParameterServer {endpoint}: num_trainers must be >= 1, got {num_trainers}")
        self.endpoint, self.handler = endpoint, handler
        self.num_trainers, self.sync_mode = int(num_trainers), bool(sync_mode)
        self.options = options or ServerOptions()
        self.port: int | None = None
        self._token = rpc.auth_token(self.options.auth_token).encode()
        self._hlock = handler.lock               # handler calls are serialized, under the handler's lock
        o = self.options
        self._asm = codec.Reassembler(o.reassembly_max_bytes_per_trainer, o.reassembly_max_bytes,
                                      o.reassembly_timeout_s)
        self.incarnation = Incarnation()
        self.alive = TrainerLiveness(o.heartbeat_timeout_s, self._trainer_lost, self.num_trainers,
                                     o.first_contact_timeout_s)
        self._streams = 0                        # heartbeat streams open
        self._refuse_nonfinite = flag(FLAGS_CHECK_NAN_INF) if o.refuse_nonfinite is None else o.refuse_nonfinite
        self._reseed_on = flag(FLEETKIT_PS_RESEED_ON_RESTART) if o.reseed is None else o.reseed
        self._asm_lock = threading.Lock()
        self._big: dict[int, list[bytes]] = {}  # transfer id -> chunked response being fetched
        self._next_transfer = 0
        self._live = set(range(self.num_trainers))  # async-mode COMPLETE tracking
        self._applied_sends = AppliedSends()      # async mode: a retried send applies once
        self._done = threading.Event()
        self._stop_flag = threading.Event()
        self._server: grpc.Server | None = None
        self._bulk: bulk_server.BulkServer | None = None
        self.bulk_port = 0                       # 0: no bulk channel
        self.bulk_unix_path = ""                 # "": none
        self._ckpt_thread: threading.Thread | None = None
        self.rounds = SyncRounds(self.num_trainers, self.options.barrier_timeout,
                                 self._apply, endpoint) if self.sync_mode else None
        self._method_table = self._methods()     # once: both transports dispatch through it
        # bulk pulls' header bytes -> (trainer, name) (bulk_call); bounded, never evicted
        self._bulk_pulls: dict[bytes, tuple[int, str]] = {}
        self._bulk_pulls_max = 64 * self.num_trainers + 1024
        self._bulk_inline_methods = frozenset(
            ("GetVariableNoBarrier", "PrefetchVariable") if self.sync_mode else
            ("SendVariable", "GetVariable", "GetVariableNoBarrier", "PrefetchVariable"))
        self._trailer: tuple[Any, tuple] = (None, ())   # (incarnation info, its gRPC trailing metadata)

    # --------------------------------------------------------------- lifecycle
    def start(self) -> int:
        """Load the newest checkpoint (if configured), bind, serve; returns the real port."""
        o = self.options
        if o.checkpoint_dir and o.load_checkpoint:
            state = checkpoint.load_latest(o.checkpoint_dir)
            if state is not None:
                self._load_state(state, resumed=True)
                log.warning("pserver %s: resumed from checkpoint in %s at update %d", self.endpoint,
                            o.checkpoint_dir, self.incarnation.updates)
        workers = o.max_workers or 18 * self.num_trainers + 40   # + heartbeat streams (see _heartbeat)
        server = grpc.server(ThreadPoolExecutor(workers, thread_name_prefix="fk-pserver"),
                             options=rpc.server_options(o.max_message_bytes))
        server.add_generic_rpc_handlers((self._generic_handler(),))
        try:
            if o.tls_cert_path and o.tls_key_path:
                with open(o.tls_key_path, "rb") as k, open(o.tls_cert_path, "rb") as c:
                    creds = grpc.ssl_server_credentials([(k.read(), c.read())])
                port = server.add_secure_port(self.endpoint, creds)
            else:
                port = server.add_insecure_port(self.endpoint)
        except RuntimeError as e:
            port, why = 0, str(e)
        else:
            why = "bind failed"
        if not port:
            raise RPCError(f"pserver cannot listen on {self.endpoint}: {why} (port in use?)",
                           endpoint=self.endpoint)
        host = self.endpoint.rpartition(":")[0]
        self.port, self.endpoint = port, f"{host}:{port}"
        if self.rounds is not None:
            self.rounds._endpoint = self.endpoint
        self._start_bulk()   # before gRPC serves: a port query must never see it missing
        server.start()
        self._server = server
        if o.checkpoint_dir and o.checkpoint_every_s:
            self._ckpt_thread = threading.Thread(target=self._checkpoint_loop, daemon=True,
                                                 name="fk-pserver-ckpt")
            self._ckpt_thread.start()
        self.alive.start()
        threading.Thread(target=self._watch_trainers, daemon=True, name="fk-pserver-liveness").start()
        return port

    def _start_bulk(self) -> None:
        o = self.options
        if not rpc.bulk_enabled(o.bulk) or (o.tls_cert_path and o.tls_key_path):
            return   # raw TCP has no TLS: under TLS every tensor stays on the gRPC channel
        srv = bulk_server.BulkServer(bulk.split_host(self.endpoint), self, o.bulk_max_bytes, o.bulk_io_timeout,
                              name=self.endpoint, auth_timeout=o.bulk_auth_timeout_s,
                              max_unauthenticated=o.bulk_max_unauthenticated, unix=o.bulk_unix)
        try:
            self.bulk_port = srv.start(o.bulk_port)
        except OSError as e:   # serve anyway: clients fall back to gRPC
            log.warning("pserver %s: no bulk channel (%s); tensors go over gRPC", self.endpoint, e)
            return
        self.bulk_unix_path = srv.unix_path
        self._bulk = srv

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving (waiting trainers get an error); idempotent.  With periodic
        checkpoints configured, a last one is written first."""
        first = not self._stop_flag.is_set()
        self._stop_flag.set()
        if first and self._ckpt_thread is not None:
            try:
                self.save_checkpoint()
            except Exception:  # noqa: BLE001 - stopping anyway; the previous checkpoint stays
                log.exception("pserver %s: final checkpoint failed", self.endpoint)
        if self.rounds is not None:
            self.rounds.stop()
        if self._bulk is not None:
            self._bulk.stop()
        if self._server is not None:
            self._server.stop(grace).wait(grace + 5)

    # ----------------------------------------------------------------- plumbing
    def _generic_handler(self) -> grpc.GenericRpcHandler:
        handlers = {}
        for name, fn in self._method_table.items():
            void = name in rpc.VOID_METHODS
            handlers[name] = grpc.unary_unary_rpc_method_handler(
                self._wrap(name, fn), request_deserializer=_lenient_deserialize,
                response_serializer=(lambda _: b"") if void else (lambda b: b))
        handlers[rpc.HEARTBEAT_METHOD] = grpc.stream_unary_rpc_method_handler(
            self._heartbeat, request_deserializer=lambda b: b, response_serializer=lambda b: b)
        return grpc.method_handlers_generic_handler(rpc.SERVICE, handlers)

    def _heartbeat(self, requests: Any, context: grpc.ServicerContext) -> bytes:
        try:
            self._check_auth(context)
        except _AuthFailure as e:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"pserver {self.endpoint} Heartbeat: {e}")
        with self._asm_lock:   # a stream holds a server thread: at most a few per trainer
            if self._streams >= 2 * self.num_trainers + 8:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"pserver {self.endpoint}: too many heartbeat streams ({self._streams})")
            self._streams += 1
        try:
            return self.alive.serve_stream(requests, context, self._stop_flag.is_set)
        finally:
            with self._asm_lock:
                self._streams -= 1

    def _wrap(self, method: str, fn: Callable[[codec.Envelope], Any]) -> Callable:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                self._check_auth(context)
                if isinstance(request, Exception):
                    raise request
                self._check_trainer(request)
                self.alive.beat(request.header.trainer_id)
                out = fn(request)
                context.set_trailing_metadata(self._incarnation_metadata())
                return out
            except Exception as e:  # noqa: BLE001 - every failure becomes a status
                code, details, md = self._status_for(e, method, request)
            # errors carry the incarnation too: a restarted pserver's refusal (e.g. of a
            # trainer lost to it) must not hide that it restarted
            context.set_trailing_metadata(tuple(md) + self._incarnation_metadata())
            context.abort(code, details)
        return handle

    def _incarnation_metadata(self) -> tuple:
        """The reply trailer naming this pserver's incarnation, formatted again only when
        (incarnation, updates, resumed) changed since the last reply."""
        info = self.incarnation.info()
        cached_info, md = self._trailer
        if info != cached_info:
            md = self.incarnation.metadata()
            self._trailer = (info, md)   # one tuple: threads see the old pair or the new one
        return md

    def _status_for(self, e: Exception, method: str, request: Any) -> tuple[grpc.StatusCode, str, tuple]:
        name = request.name if isinstance(request, codec.Envelope) else "?"
        where = f"pserver {self.endpoint} {method} '{name}': "
        if isinstance(e, _ShuttingDown) or self._stop_flag.is_set():
            return grpc.StatusCode.UNAVAILABLE, where + f"pserver is shutting down ({e})", ()
        if isinstance(e, _AuthFailure):
            return grpc.StatusCode.UNAUTHENTICATED, where + str(e), ()
        if isinstance(e, BarrierTimeoutError):
            ids = ",".join(map(str, e.missing_trainers))
            return grpc.StatusCode.ABORTED, str(e), ((rpc.MISSING_TRAINERS_KEY, ids),)
        if isinstance(e, NotFoundError):
            return grpc.StatusCode.NOT_FOUND, where + str(e), ()
        if isinstance(e, InvalidArgumentError):
            return grpc.StatusCode.INVALID_ARGUMENT, where + str(e), ()
        if isinstance(e, (_Precondition, PServerError)):
            return grpc.StatusCode.FAILED_PRECONDITION, where + str(e), ()
        log.error("pserver %s: %s failed:\n%s", self.endpoint, method, traceback.format_exc())
        return grpc.StatusCode.INTERNAL, where + f"{type(e).__name__}: {e}", ()

    def _check_auth(self, context: grpc.ServicerContext) -> None:
        if self._token:
            md = context.invocation_metadata() or ()
            sent = next((v for k, v in md if k == rpc.AUTH_METADATA_KEY), None)
            self._check_token(None if sent is None else str(sent).encode())

    def _check_token(self, sent: bytes | None) -> None:
        if not self._token:
            return
        if sent is None:
            raise _AuthFailure("missing auth token: this pserver requires FLEETKIT_AUTH_TOKEN")
        if not hmac.compare_digest(sent, self._token):
            raise _AuthFailure("wrong auth token (FLEETKIT_AUTH_TOKEN differs from the pserver's)")

    # ------------------------------------------------ bulk channel (bulk.BulkTarget)
    def _bulk_status(self, e: Exception, method: str, request: Any) -> tuple[int, str, str]:
        code, details, md = self._status_for(e, method, request)
        missing = next((str(v) for k, v in md if k == rpc.MISSING_TRAINERS_KEY), "")
        return code.value[0], details, missing

    def bulk_auth(self, method: str, token: bytes | None) -> tuple[int, str, str] | None:
        """None if a bulk frame's token is accepted, else its error status."""
        try:
            self._check_token(token)
        except Exception as e:  # noqa: BLE001 - becomes the reply's status
            return self._bulk_status(e, method, None)
        return None

    def bulk_inline(self, method: str) -> bool:
        """Whether a bulk call of ``method`` never waits, so the bulk server's event loop may
        serve it: async mode's pushes and pulls (no rounds), and in sync mode the pulls that
        take no barrier (they wait for nothing but the handler lock).  Not sync pushes (a
        batch barrier or COMPLETE applies the round in the caller's thread) nor sync gets
        (``rounds.wait_applied``), nor CheckpointNotify (writes a file)."""
        return method in self._bulk_inline_methods

    def incarnation_info(self) -> tuple[int, int, int]:
        """(incarnation, updates, resumed) for bulk replies."""
        return self.incarnation.info()

    def bulk_call(self, method: str, header: bytes, rows: Any, data: Any,
                  reply: Callable[[str, Any], Any]) -> tuple[int, str, str, Any]:
        """Serve one bulk frame with the gRPC path's methods: (status, details, missing
        trainers, reply: an envelope, what ``reply`` returned, or None for void)."""
        if method == "GetVariableNoBarrier" and not data and not rows:
            pull = self._bulk_pulls.get(header)
            if pull is not None:
                served = self._bulk_pull(*pull, reply)
                if served is not None:
                    return served
        request: Any = None
        try:
            try:
                request = codec.Envelope(codec.header_from_bytes(header), rows, data)
            except codec.PayloadError as e:
                raise InvalidArgumentError(f"malformed request: {e}") from None
            self._check_trainer(request)
            self.alive.beat(request.header.trainer_id)
            fn = self._method_table[method]
            if method in rpc.VOID_METHODS:
                fn(request)
                return 0, "", "", None
            out = fn(request, reply=reply)
            if out is reply and method == "GetVariableNoBarrier" and len(self._bulk_pulls) < self._bulk_pulls_max:
                # a value pull (not a chunk, not a control name): it depends on the trainer
                # and the name alone, so the same header bytes are served without parsing
                h = request.header
                self._bulk_pulls[header] = (h.trainer_id, h.varname.removesuffix(rpc.WITHOUT_BARRIER_SUFFIX))
            return 0, "", "", codec.from_bytes(out) if isinstance(out, bytes) else out
        except Exception as e:  # noqa: BLE001 - every failure becomes a status
            return (*self._bulk_status(e, method, request), None)

    def _bulk_pull(self, trainer: int, name: str, reply: Callable[[str, Any], Any]) -> tuple | None:
        """A pull whose header was seen before (``_bulk_pulls``): what ``_get_no_barrier``
        does for it, without parsing, a request object or a closure.  None if the value
        cannot be fetched: the general path then gives the error its usual text."""
        self.alive.beat(trainer)
        with self._hlock:   # as _respond: the reply starts with no update half-done
            try:
                value = self._handler_get(trainer, name)
            except Exception:  # noqa: BLE001 - reported by the general path
                return None
            try:
                return 0, "", "", reply(name, value)
            except Exception as e:  # noqa: BLE001 - every failure becomes a status
                return (*self._bulk_status(e, "GetVariableNoBarrier", None), None)


def _lenient_deserialize(raw: bytes) -> Any:
    """Parse a request; a malformed one becomes the error object the handler reports
    (gRPC would otherwise answer a bare INTERNAL)."""
    try:
        return codec.from_bytes(raw)
    except Exception as e:  # noqa: BLE001
        return InvalidArgumentError(f"malformed request: {e}")
