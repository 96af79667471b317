"""Parameter-server fleet: ``fleet.init(role_maker)`` picks this for non-collective roles.

    fleet.init(role_maker.PaddleCloudRoleMaker())
    opt = fleet.distributed_optimizer(fk.optimizer.Adam(1e-3), DistributeTranspilerConfig())
    opt.minimize(loss)                      # runs the optimizer, then transpiles
    if fleet.is_server():
        fleet.init_server(); fleet.run_server()
    else:
        fleet.init_worker(); exe.run(fleet.startup_program)
        ... exe.run(fleet.main_program, feed=...) ...
        fleet.stop_worker()

The strategy is a ``DistributeTranspilerConfig``; ``sync_mode`` None means sync.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import numpy as np

from .. import core
from ..core import io
from ..core.executor import Executor
from ..core.framework import Program, Variable, default_startup_program
from ..core.scope import Scope, global_scope
from ..errors import InvalidArgumentError, NotFoundError
from .base import FleetBase
from .transpiler import DistributeTranspiler, DistributeTranspilerConfig

log = logging.getLogger(__name__)

__all__ = ["PSFleet", "TranspilerOptimizer", "DEFAULT_SERVER_WAIT_S"]

# how long init_worker waits for every pserver to accept connections
DEFAULT_SERVER_WAIT_S = 60.0


class TranspilerOptimizer:
    """Wraps an optimizer: ``minimize`` appends backward + update ops, then transpiles."""

    def __init__(self, fleet: "PSFleet", optimizer: Any, strategy: DistributeTranspilerConfig | None) -> None:
        if not isinstance(optimizer, core.optimizer.Optimizer):
            raise InvalidArgumentError(f"distributed_optimizer: optimizer must be a fleetkit Optimizer, got "
                                       f"{type(optimizer).__name__}")
        if strategy is not None and not isinstance(strategy, DistributeTranspilerConfig):
            raise InvalidArgumentError(f"distributed_optimizer: in parameter-server mode the strategy must be a "
                                       f"DistributeTranspilerConfig, got {type(strategy).__name__}")
        self._fleet, self._optimizer = fleet, optimizer
        self._strategy = strategy or DistributeTranspilerConfig()

    def backward(self, loss: Variable, startup_program: Program | None = None,
                 parameter_list: Sequence[Any] | None = None, no_grad_set: Any = None, callbacks: Any = None) -> Any:
        return self._optimizer.backward(loss, startup_program, parameter_list, no_grad_set, callbacks)

    def apply_gradients(self, params_grads: Any) -> Any:
        return self._optimizer.apply_gradients(params_grads)

    def minimize(self, loss: Variable, scope: Any = None, startup_program: Program | None = None,
                 parameter_list: Sequence[Any] | None = None, no_grad_set: Any = None) -> tuple[list, list]:
        """Optimizer.minimize, then rewrite the programs for this process's role.

        fluid 1.4's signature: ``scope`` is accepted and unused (programs are rewritten,
        no values are touched).  A Program passed second is taken as ``startup_program``,
        the order of ``DistributedOptimizer.minimize``.
        """
        if isinstance(loss, (list, tuple)):
            raise InvalidArgumentError("minimize: parameter-server mode takes one loss Variable, not a list")
        if isinstance(scope, Program):
            if startup_program is not None:
                raise InvalidArgumentError("minimize: got two startup programs (the second argument is `scope`)")
            scope, startup_program = None, scope
        startup = default_startup_program() if startup_program is None else startup_program
        result = self._optimizer.minimize(loss, startup, parameter_list, no_grad_set)
        self._fleet._transpile(self._strategy, loss.block.program, startup)
        return result


class PSFleet(FleetBase):
    """The fluid 1.4 transpiler fleet (``fleet.*`` in parameter-server mode)."""

    def __init__(self) -> None:
        super().__init__()
        self._transpiler: DistributeTranspiler | None = None
        self._main: Program | None = None
        self._startup: Program | None = None
        self._origin_program: Program | None = None
        self._executor = Executor()

    # ------------------------------------------------------------------ setup
    def distributed_optimizer(self, optimizer: Any, strategy: DistributeTranspilerConfig | None = None
                              ) -> TranspilerOptimizer:
        """Wrap ``optimizer``; its ``minimize`` transpiles for this process's role."""
        self._rm()
        return TranspilerOptimizer(self, optimizer, strategy)

    def _transpile(self, config: DistributeTranspilerConfig, program: Program, startup: Program) -> None:
        t = DistributeTranspiler(config)
        sync = True if config.sync_mode is None else bool(config.sync_mode)
        t.transpile(self.worker_index() if self.is_worker() else 0, program=program,
                    pservers=self.server_endpoints(to_string=True), trainers=self.worker_num(),
                    sync_mode=sync, startup_program=startup)
        self._transpiler, self._origin_program = t, program
        if self.is_worker():
            self._main, self._startup = t.get_trainer_program(), t.get_trainer_startup_program()
        else:
            self._main, self._startup = t.get_pserver_programs(self._server_endpoint())

    def _server_endpoint(self) -> str:
        eps = self.server_endpoints()
        i = self.server_index()
        if not 0 <= i < len(eps):
            raise InvalidArgumentError(f"fleet: server index {i} is outside the pserver list {eps}")
        return eps[i]

    def _t(self) -> DistributeTranspiler:
        if self._transpiler is None:
            raise InvalidArgumentError("fleet: call fleet.distributed_optimizer(opt).minimize(loss) first")
        return self._transpiler

    @property
    def main_program(self) -> Program:
        """Trainer: the program to train with; pserver: the listen_and_serv program."""
        self._t()
        return self._main

    @property
    def startup_program(self) -> Program:
        """Trainer: init + pull of the parameters; pserver: init of the hosted slices."""
        self._t()
        return self._startup

    # ------------------------------------------------------------------ server
    def init_server(self, model_dir: str | None = None, *, checkpoint_dir: str | None = None,
                    checkpoint_interval_s: float = 0.0, barrier_timeout_s: float | None = None,
                    save_dirs: Sequence[str] = ()) -> None:
        """Initialize the hosted slices (and load them from ``model_dir`` if given).

        ``checkpoint_dir``: where this pserver writes its periodic checkpoints
        (every ``checkpoint_interval_s`` seconds, 0 = only on notify) and from which
        a restarted pserver resumes.  ``barrier_timeout_s``: how long a sync round
        waits for a missing trainer before failing it.  ``save_dirs``: directories the
        chief's ``save_persistables(dirname)`` may name (this pserver writes its table shard
        under ``dirname``); any other path a request names is refused (docs/security.md).
        """
        if not self.is_server():
            raise InvalidArgumentError("fleet.init_server() called on a worker")
        self._t()
        self._executor.run(self._startup)
        if model_dir is not None:
            if not os.path.isdir(model_dir):
                raise NotFoundError(f"init_server: model_dir '{model_dir}' is not a directory")
            self._load_hosted(model_dir)
        ls = self._main.global_block().ops[-1]
        ls.attrs.update({"checkpoint_dir": checkpoint_dir or "", "load_dir": model_dir or "",
                         "checkpoint_interval_s": float(checkpoint_interval_s),
                         "notify_dirs": [str(d) for d in save_dirs]})
        if barrier_timeout_s is not None:
            ls.attrs["barrier_timeout_s"] = float(barrier_timeout_s)
        self._main._bump()

    def _load_hosted(self, model_dir: str) -> None:
        """Read the full vars saved by ``save_persistables`` and keep this pserver's rows."""
        origin_of = self._main.meta.origin_of or {}
        tmp_prog, tmp_scope = Program(), Scope()
        ob = self._origin_program.global_block()
        wanted = []
        for new, (orig, _, _, _) in origin_of.items():
            if os.path.isfile(os.path.join(model_dir, io.var_filename(orig))) and orig not in wanted:
                v = ob.var(orig)
                tmp_prog.global_block().create_var(name=orig, shape=v.shape, dtype=v.dtype, persistable=True)
                wanted.append(orig)
        io.load_vars(self._executor, model_dir, tmp_prog, vars=wanted, scope=tmp_scope)
        scope = global_scope()
        for new, (orig, off, rows, _) in origin_of.items():
            if orig in wanted:
                full = tmp_scope.numpy(orig)
                scope.set(new, np.ascontiguousarray(full[off:off + rows] if rows >= 0 else full))

    def run_server(self) -> None:
        """Serve until every trainer has called stop_worker (blocks)."""
        if not self.is_server():
            raise InvalidArgumentError("fleet.run_server() called on a worker")
        ls = self._main.global_block().ops[-1].attrs
        log.info("pserver %d: serving %d trainers, checkpoint_dir %s", self.server_index(), self.worker_num(),
                 ls.get("checkpoint_dir") or "none")
        self._executor.run(self.main_program)
        log.info("pserver: every trainer has finished; exiting")

    # ------------------------------------------------------------------ worker
    def init_worker(self, timeout: float | None = None) -> None:
        """Wait until every pserver accepts connections (error names the ones that never did)."""
        if not self.is_worker():
            raise InvalidArgumentError("fleet.init_worker() called on a server")
        from ..pserver.api import wait_server_ready  # noqa: PLC0415
        wait_server_ready(self.server_endpoints(), DEFAULT_SERVER_WAIT_S if timeout is None else timeout)
        log.info("trainer %d: all %d pservers ready", self.worker_index(), len(self.server_endpoints()))

    def run_worker(self, main_programs: Any = None, scopes: Any = None) -> None:
        """Nothing to do: trainers run ``fleet.main_program`` themselves."""

    def stop_worker(self) -> None:
        """Tell every pserver this trainer is done (COMPLETE): sync rounds stop waiting for it."""
        if not self.is_worker():
            return
        from ..pserver.api import get_client  # noqa: PLC0415
        from ..pserver.api import drain_background  # noqa: PLC0415
        drain_background()  # the last async push must land before COMPLETE
        get_client(self.worker_index()).send_complete(self.server_endpoints())

    def stop(self) -> None:
        self.stop_worker()

    # ------------------------------------------------------------------ saving
    def _pull_params(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Current value of every dense pserver-hosted parameter (or of ``names``), no
        barrier.  Remotely prefetched tables (never pulled by training) are gathered too."""
        from ..pserver.api import get_client  # noqa: PLC0415
        t = self._t()
        plans = [p for p in t.params if names is None or p.param.name in names]
        reqs = [(ep, b.block_name) for p in plans for ep, b in zip(p.endpoints, p.blocks)]
        values = get_client(self.worker_index()).get_vars(reqs, barrier=False) if reqs else []
        out, i = {}, 0
        for p in plans:
            parts = [np.asarray(getattr(v, "values", v)) for v in values[i:i + len(p.blocks)]]
            i += len(p.blocks)
            out[p.param.name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        return out

    def save_persistables(self, executor: Any, dirname: str, main_program: Program | None = None) -> None:
        """Chief only: gather every dense parameter into ``dirname`` (one file per var, the
        single-process layout) and have each pserver save its sparse-table shard under
        ``dirname/__lookup_table__``.  Other workers do nothing."""
        if not self.is_first_worker():
            return
        t = self._t()
        params = self._pull_params()
        scope = Scope()
        local = global_scope()
        prog = Program()
        ob = self._origin_program.global_block()
        names = list(params)
        for name, value in params.items():
            scope.set(name, value)
        # local persistables the pservers do not own (e.g. batch-norm running stats)
        server_only = t._server_only_vars() | set(params)
        for v in self._origin_program.list_vars():
            if v.persistable and v.name not in server_only and v.name in local and not v.is_data:
                if local.find_var(v.name).value() is not None:
                    scope.set(v.name, local.get(v.name))
                    names.append(v.name)
        for n in names:
            v = ob.var(n)
            prog.global_block().create_var(name=n, shape=v.shape, dtype=v.dtype, persistable=True, type=v.type)
        io.save_vars(executor, dirname, prog, vars=names, scope=scope)
        if t.tables:
            from ..pserver.api import get_client  # noqa: PLC0415
            get_client(self.worker_index()).checkpoint_notify(self.server_endpoints(),
                                                              os.path.join(dirname, "__lookup_table__"))

    def save_inference_model(self, executor: Any, dirname: str, feeded_var_names: Sequence[str] | str,
                             target_vars: Any, main_program: Program | None = None,
                             export_for_deployment: bool = True) -> list[str]:
        """Chief only: pull the parameters and save the single-process inference model."""
        if not self.is_first_worker():
            return []
        t = self._t()
        if t.tables:
            raise InvalidArgumentError(
                f"save_inference_model: the distributed table(s) {sorted(t.tables)} live on the pservers and are "
                f"not exported; save them with fleet.save_persistables")
        scope = Scope()
        for name, value in self._pull_params().items():
            scope.set(name, value)
        local = global_scope()
        for v in self._origin_program.list_vars():
            if v.persistable and v.name not in scope and v.name in local:
                scope.set(v.name, local.get(v.name))
        program = self._origin_program if main_program is None else main_program
        return io.save_inference_model(dirname, feeded_var_names, target_vars, executor, program,
                                       export_for_deployment=export_for_deployment, scope=scope)
