"""What the pserver client and server share: method paths, special names, gRPC
options, auth metadata, and the ONE mapping from gRPC failures to fleetkit errors.

Stubs and handlers are built from the method paths with our own (de)serializers
(``codec.to_bytes``/``codec.from_bytes``) instead of the generated ``*_pb2_grpc``
module: payloads then skip protobuf's copy, and the runtime does not depend on the
grpcio version the stubs were generated with.
"""
from __future__ import annotations

from typing import Any

import grpc

from .. import env as envmod
from ..errors import (BarrierTimeoutError, PServerError, PServerUnavailableError, RPCAuthError,
                      RPCDeadlineError, RPCError, RPCRequestError)
from . import codec

SERVICE = "fleetkit.proto.SendRecvService"
METHODS = ("SendVariable", "GetVariable", "GetVariableNoBarrier", "PrefetchVariable", "CheckpointNotify")
#: methods whose response carries no value (VoidMessage)
VOID_METHODS = frozenset({"SendVariable", "CheckpointNotify"})

BATCH_BARRIER = "BATCH_BARRIER@RECV"
FETCH_BARRIER = "FETCH_BARRIER@RECV"
COMPLETE = "COMPLETE@RECV"
WITHOUT_BARRIER_SUFFIX = "@WITHOUT_BARRIER@RECV"
SAVE_CHECKPOINT = "SAVE@CHECKPOINTNOTIFY"
LOAD_CHECKPOINT = "LOAD@CHECKPOINTNOTIFY"
#: GetVariableNoBarrier of this name returns int64 [touched rows, bytes] of the sparse tables
SPARSE_MEMORY = "@SPARSE_MEMORY@"
#: GetVariableNoBarrier of this name returns int64 [port] of the pserver's bulk channel
#: (``bulk.py``; 0: none, e.g. under TLS).  Older pservers answer NOT_FOUND: no bulk.
BULK_PORT = "@BULK_PORT@"
#: the bulk channel's AF_UNIX socket path, for trainers on the pserver's host (uint8 utf-8; empty: none)
BULK_UNIX = "@BULK_UNIX@"
#: set to 0 / false / off to keep every tensor on gRPC (client and server); named in env.py
BULK_ENV = envmod.FLEETKIT_PS_BULK
#: the client-streaming liveness method (``liveness.py``): one stream per trainer and pserver
HEARTBEAT_METHOD = "Heartbeat"
HEARTBEAT = "HEARTBEAT@RECV"
#: SendVariable of RESEED + name (trainer 0 only) sets a parameter of a pserver restarted
#: without state; RESEED_DONE ends the re-seed (``restarts.py``)
RESEED = "@RESEED@"
RESEED_DONE = "@RESEED_DONE@"
#: GetVariableNoBarrier of this name returns int64 [incarnation, updates, resumed]
INCARNATION = "@INCARNATION@"
#: reply metadata: "<incarnation hex>,<updates>,<resumed>" (``liveness.Incarnation``)
INCARNATION_KEY = "x-fleetkit-incarnation"

AUTH_METADATA_KEY = "x-fleetkit-auth-token"
#: trailing metadata of an ABORTED barrier failure: comma-separated missing trainer ids
MISSING_TRAINERS_KEY = "x-fleetkit-missing-trainers"
#: extra bytes allowed on top of the max payload for headers (dims, lod, names)
HEADER_SLACK = 4 << 20


def path(method: str) -> str:
    return f"/{SERVICE}/{method}"


def serialize(env: codec.Envelope) -> bytes:
    return codec.to_bytes(env)


def deserialize(raw: bytes) -> codec.Envelope:
    return codec.from_bytes(raw)


def void_deserialize(raw: bytes) -> bytes:
    return raw   # gRPC takes a None result as a failed deserialization


def bulk_enabled(explicit: bool | None = None) -> bool:
    """Whether the bulk channel may be used: ``explicit`` if given, else ``FLEETKIT_PS_BULK``
    (default on)."""
    if explicit is not None:
        return bool(explicit)
    return envmod.ps_bulk_enabled()


def auth_token(explicit: str | None = None) -> str:
    """The shared secret: ``explicit`` if given, else ``FLEETKIT_AUTH_TOKEN`` ('' = no auth)."""
    return envmod.auth_token() if explicit is None else explicit


def common_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    limit = min(max_message_bytes + HEADER_SLACK, 2**31 - 1)
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Options of every client channel."""
    return common_options(max_message_bytes) + [
        # never send cluster traffic through http_proxy/https_proxy from the environment
        ("grpc.enable_http_proxy", 0),
        # reconnect quickly after a pserver restart (the default backoff grows to 120 s)
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        # notice a silently vanished peer (host crash) during long barrier waits
        ("grpc.keepalive_time_ms", 30000),
        ("grpc.keepalive_timeout_ms", 20000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Options of the pserver's gRPC server."""
    return common_options(max_message_bytes) + [
        # a second server on the same port must fail to bind, not share it silently
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10000),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def grpc_status(err: grpc.RpcError) -> tuple[str, str, tuple[int, ...] | None]:
    """(status code name, details, missing trainer ids of a barrier failure or None)."""
    code = err.code() if hasattr(err, "code") else None
    name = code.name if code is not None else "UNKNOWN"
    details = err.details() if hasattr(err, "details") else str(err)
    return name, details or "", _missing_trainers(err)


def _missing_trainers(err: grpc.RpcError) -> tuple[int, ...] | None:
    try:
        md = err.trailing_metadata() or ()
    except Exception:  # noqa: BLE001 - not every RpcError carries metadata
        return None
    for key, value in md:
        if key == MISSING_TRAINERS_KEY:
            return parse_missing(value)
    return None


def parse_missing(value: Any) -> tuple[int, ...]:
    """Trainer ids from the comma-separated MISSING_TRAINERS_KEY value."""
    return tuple(int(x) for x in str(value).split(",") if x)


def map_rpc_error(err: grpc.RpcError, endpoint: str, varname: str | None, method: str,
                  note: str = "") -> RPCError:
    """The fleetkit error for a failed gRPC call (see ``map_status``)."""
    return map_status(*grpc_status(err), endpoint, varname, method, note)


def map_status(code: str, details: str, missing: tuple[int, ...] | None, endpoint: str,
               varname: str | None, method: str, note: str = "") -> RPCError:
    """The fleetkit error for a failed call, gRPC or bulk channel (retryable: unavailable,
    deadline; permanent: bad request, auth, server-side failure, barrier timeout), naming
    endpoint and var."""
    about = f" for '{varname}'" if varname else ""
    msg = f"{method}{about} to pserver {endpoint} failed: {code}: {details}{note}"
    kw = dict(endpoint=endpoint, varname=varname, code=code)
    if code == "UNAVAILABLE":
        return PServerUnavailableError(msg, **kw)
    if code == "DEADLINE_EXCEEDED":
        return RPCDeadlineError(msg, **kw)
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return RPCAuthError(msg, **kw)
    if code == "ABORTED" and missing is not None:
        return BarrierTimeoutError(msg, missing_trainers=missing, **kw)
    if code in ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "OUT_OF_RANGE",
                "RESOURCE_EXHAUSTED", "ALREADY_EXISTS", "UNIMPLEMENTED"):
        return RPCRequestError(msg, **kw)
    return PServerError(msg, **kw)


def is_retryable(err: grpc.RpcError) -> bool:
    """Whether a failed call is worth repeating (the pserver may be restarting)."""
    return grpc_status(err)[0] == "UNAVAILABLE"
