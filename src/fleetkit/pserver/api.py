"""The parameter server's interface: what other packages import from ``fleetkit.pserver``.

- placement and plan: ``make_plan`` / ``PSPlan`` (+ ``ParamPlan``, ``TablePlan``), the
  per-pserver ``ServerPlan`` codec, the sharding rules and the dispatchers;
- the pserver programs: ``build_pserver_program`` / ``build_pserver_startup``;
- the server: ``ParameterServer``, ``ServerOptions``, ``ServerHandler`` (the logic seam),
  ``serve`` (the ``listen_and_serv`` kernel's body);
- the trainer's client: ``RPCClient``, ``ClientOptions``, ``get_client``, ``live_clients``,
  ``wait_server_ready``; the trainer ops' ``drain_background`` / ``flush_sends``;
- checkpoints: ``checkpoint_save`` / ``checkpoint_load``;
- errors: the RPC family of ``fleetkit.errors``.

The plan, sharding and program builder are plain logic and load eagerly; the names
that need gRPC (server, client, trainer ops) are imported on first use, so building
and inspecting programs never loads gRPC.
"""
from __future__ import annotations

import importlib
from typing import Any

from ..errors import (BarrierTimeoutError, CheckpointError, PServerError, PServerRestartedError,
                      PServerUnavailableError, RPCAuthError, RPCDeadlineError, RPCError, RPCRequestError,
                      ServerNotReadyError)
from .checkpoint import load as checkpoint_load
from .checkpoint import save as checkpoint_save
from .handler import ServerHandler
from .plan import DENSE_OPTIMIZERS, ParamPlan, PSPlan, ServerPlan, TableConfig, TablePlan, make_plan
from .program_builder import build_pserver_program, build_pserver_startup
from .sharding import (MIN_BLOCK_SIZE, HashName, PSDispatcher, RoundRobin, VarBlock, shard_by_id, slice_variable,
                       split_rows, stable_hash)

# name -> module (relative to this package) of what loads on first use
_LAZY = {
    "ParameterServer": "server", "ServerOptions": "server", "serve": "exec_handler",
    "ExecutorHandler": "exec_handler", "RPCClient": "client", "ClientOptions": "client",
    "get_client": "client", "live_clients": "client", "wait_server_ready": "client",
    "drain_background": "ops", "flush_sends": "ops",
}

__all__ = ["DENSE_OPTIMIZERS", "MIN_BLOCK_SIZE", "BarrierTimeoutError", "CheckpointError", "HashName",
           "PSDispatcher", "PSPlan", "PServerError", "PServerRestartedError", "PServerUnavailableError",
           "ParamPlan", "RPCAuthError", "RPCDeadlineError", "RPCError", "RPCRequestError", "RoundRobin",
           "ServerHandler", "ServerNotReadyError", "ServerPlan", "TableConfig", "TablePlan", "VarBlock",
           "build_pserver_program", "build_pserver_startup", "checkpoint_load", "checkpoint_save", "make_plan",
           "shard_by_id", "slice_variable", "split_rows", "stable_hash", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fleetkit.pserver.api' has no attribute '{name}'")
    # not cached here: a name patched in its own module (tests) is what callers get
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)
