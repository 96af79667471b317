"""The pserver's logic for transpiled programs: an Executor-backed ``ServerHandler``.

``listen_and_serv`` (see ``ops.py``) builds an ``ExecutorHandler`` over the pserver
program and its scope and serves it with ``ParameterServer``.  Applying a gradient
writes it into the scope and runs the optimize block the transpiler built for it
with ``Executor.run_block``: the same optimizer kernels as single-process
training, which is what makes sync PS training equal local training.  Rows of
``is_distributed`` tables live in ``SparseTable``s (rows created on first touch,
per-row optimizer state).  Rows of a hosted dense block are served by ``prefetch``
too (remote prefetch of a sliced ``is_sparse`` table, by local row offset).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..core.backend import to_numpy
from ..core.executor import Executor
from ..core.framework import Program
from ..core.registry import KernelContext
from ..core.scope import LoDTensor, Scope, SelectedRows
from ..errors import DTypeError, InvalidArgumentError, NotFoundError, ShapeError
from . import checkpoint
from .plan import ServerPlan, TableConfig
from .server import ParameterServer, ServerHandler, ServerOptions
from .tables import Initializer, RowOptimizer, SparseTable

# startup init op -> SparseTable initializer kind
_INIT_KINDS = {"uniform_random": "uniform", "gaussian_random": "normal", "truncated_gaussian_random": "normal",
               "fill_constant": "constant"}


def table_from_config(cfg: TableConfig) -> SparseTable:
    """The SparseTable a ``sparse_tables`` entry of listen_and_serv describes."""
    init = cfg.init
    kind = _INIT_KINDS.get(init["type"])
    if kind is None:
        raise InvalidArgumentError(f"distributed table '{cfg.name}': initializer op '{init['type']}' is not "
                                   f"supported (use Uniform, Normal or Constant)")
    initializer = Initializer(kind=kind, low=float(init.get("min", -0.05)), high=float(init.get("max", 0.05)),
                              mean=float(init.get("mean", 0.0)), std=float(init.get("std", 0.01)),
                              value=float(init.get("value", 0.0)), seed=int(init.get("seed", 0)))
    opt_kind, a = cfg.optimizer, cfg.optimizer_attrs
    if opt_kind not in ("sgd", "adagrad", "adam"):
        raise InvalidArgumentError(f"distributed table '{cfg.name}': optimizer '{opt_kind}' is not supported "
                                   f"for is_distributed tables (use SGD, Adagrad or Adam)")
    kw: dict[str, Any] = {}
    if opt_kind == "adam":
        kw = {"beta1": float(a.get("beta1", 0.9)), "beta2": float(a.get("beta2", 0.999)),
              "epsilon": float(a.get("epsilon", 1e-8))}
    elif opt_kind == "adagrad":
        kw = {"epsilon": float(a.get("epsilon", 1e-6))}
    return SparseTable(cfg.name, int(cfg.dim), initializer, RowOptimizer(kind=opt_kind, **kw), dtype=cfg.dtype)


class ExecutorHandler(ServerHandler):
    """Hosted dense blocks live in ``scope`` and are updated by the program's blocks."""

    def __init__(self, program: Program, scope: Scope, place: Any, attrs: dict | ServerPlan) -> None:
        """``attrs``: the listen_and_serv op's plan, or the attributes that encode it."""
        plan = attrs if isinstance(attrs, ServerPlan) else ServerPlan.from_attrs(attrs)
        self._program, self._scope = program, scope
        self._exe = Executor(place)
        self._grad_block = dict(plan.grad_to_block)
        self._lr_block = plan.lr_block_id
        self._params = list(plan.param_blocks)
        self._persistables = list(plan.persistables)
        self._tables: dict[str, SparseTable] = {c.name: table_from_config(c) for c in plan.sparse_tables}
        self._table_cfg: dict[str, TableConfig] = {c.name: c for c in plan.sparse_tables}
        self._table_of_grad: dict[str, str] = {c.grad: c.name for c in plan.sparse_tables}
        # The LR schedule advances once per round (sync) or, in async mode, when the
        # gradient of the first hosted block arrives: about once per trainer step, not
        # once per gradient message.
        self._sync = plan.sync_mode
        firsts = sorted(self._grad_block, key=self._grad_block.get) + sorted(self._table_of_grad)
        self._lr_trigger = firsts[0] if firsts else None
        # self.lock (ServerHandler's, which the server also takes): async pushes from several
        # trainers arrive on several threads and the optimizer kernels update arrays in place.
        # DC-ASGD (async only): each trainer's copy of a parameter block as it last pulled
        # it; a dense gradient g of that trainer becomes g + g*g*(param - backup), the
        # first-order correction for the updates applied since its pull.
        self._dc_asgd = plan.dc_asgd and not self._sync
        self._backups: dict[tuple[int, str], np.ndarray] = {}
        self._param_of_grad = ({g: self._param_of_block(b) for g, b in self._grad_block.items()}
                               if self._dc_asgd else {})

    # ------------------------------------------------------------ ServerHandler
    def apply(self, grads: dict[str, Any]) -> None:
        with self.lock:
            if self._lr_block >= 0 and (self._sync or self._lr_trigger in grads):
                self._exe.run_block(self._program, self._lr_block, self._scope)
            for name, value in grads.items():
                table = self._table_of_grad.get(name)
                if table is not None:
                    self._apply_table(table, value)
                    continue
                block = self._grad_block.get(name)
                if block is None:
                    raise NotFoundError(f"pserver: gradient '{name}' is not hosted here (hosted: "
                                        f"{sorted(self._grad_block) + sorted(self._table_of_grad)})")
                self._scope.set(name, value)
                self._exe.run_block(self._program, block, self._scope)

    def apply_from(self, trainer_id: int, grads: dict[str, Any]) -> None:
        with self.lock:
            if self._dc_asgd:
                grads = {n: self._compensated(trainer_id, n, g) for n, g in grads.items()}
            self.apply(grads)

    def get_for(self, trainer_id: int, name: str) -> Any:
        with self.lock:
            value = self.get(name)
            if self._dc_asgd and name in self._params:
                self._backups[trainer_id, name] = np.array(to_numpy(value), copy=True)
            return value

    def _compensated(self, trainer_id: int, grad: str, g: Any) -> Any:
        """DC-ASGD's gradient for a dense parameter block (others, and a trainer that has
        not pulled the block since this pserver started, are applied as sent)."""
        param = self._param_of_grad.get(grad)
        backup = self._backups.get((trainer_id, param)) if param else None
        if backup is None or not isinstance(g, np.ndarray) or g.shape != backup.shape:
            return g
        drift = self._scope.numpy(param) - backup
        return (g + g * g * drift).astype(g.dtype, copy=False)

    def _param_of_block(self, block_idx: int) -> str | None:
        """The parameter the optimize block updates (its optimizer op's Param input)."""
        for op in self._program.block(block_idx).ops:
            if "Param" in op.inputs and op.inputs["Param"]:
                return op.inputs["Param"][0]
        return None

    def _apply_table(self, table: str, value: Any) -> None:
        if not isinstance(value, SelectedRows):
            raise InvalidArgumentError(f"pserver: the gradient of distributed table '{table}' must be "
                                       f"SelectedRows, got {type(value).__name__}")
        lr_var = self._table_cfg[table].lr_var
        lr = float(np.asarray(self._scope.get(lr_var)).reshape(-1)[0]) if lr_var else None
        self._tables[table].apply_gradient(value, learning_rate=lr)

    def get(self, name: str) -> Any:
        with self.lock:
            try:
                v = self._scope.get(name)
            except NotFoundError:
                raise NotFoundError(f"pserver: variable '{name}' is not hosted here (hosted parameters: "
                                    f"{self._params})") from None
            # No copy: ParameterServer serializes the reply under the same lock that
            # serializes apply (the optimizer updates this array in place).
            return v.values if isinstance(v, LoDTensor) else v

    def prefetch(self, table: str, ids: np.ndarray) -> np.ndarray:
        """Rows of a distributed table shard (by global id), or of a hosted dense
        parameter block (remote prefetch of a sliced table: by local row offset)."""
        t = self._tables.get(table)
        if t is None:
            if table in self._params:
                return self._block_rows(table, ids)
            raise NotFoundError(f"pserver: table '{table}' is not hosted here (tables: {sorted(self._tables)}, "
                                f"parameter blocks: {self._params})")
        with self.lock:
            return t.lookup(ids)

    def _block_rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        with self.lock:
            v = self._scope.get(name)
            block = np.asarray(to_numpy(v.values if isinstance(v, LoDTensor) else v))
            ids = np.asarray(ids, dtype=np.int64).reshape(-1)
            if ids.size and (ids.min() < 0 or ids.max() >= block.shape[0]):
                bad = int(ids.max() if ids.max() >= block.shape[0] else ids.min())
                raise InvalidArgumentError(f"pserver: prefetch of '{name}' asks for row {bad}, outside the "
                                           f"block's {block.shape[0]} rows (ids are local row offsets)")
            return np.take(block, ids, axis=0)  # a copy: the optimizer updates the block in place

    def state(self) -> dict[str, Any]:
        with self.lock:
            out = {n: np.array(self._scope.numpy(n), copy=True) for n in self._persistables
                   if n in self._scope}
            for t in self._tables.values():
                out.update(t.state())
            return out

    def load_state(self, d: dict[str, Any]) -> None:
        with self.lock:
            for n in self._persistables:
                if n in d:
                    self._scope.set(n, np.array(d[n], copy=True))
            for name, t in self._tables.items():
                if f"{name}@ids" in d:
                    t.load_state(d)

    def check_grad(self, name: str, value: Any) -> None:
        """Reject unknown gradients and ones whose dtype or shape differs from the block's."""
        table = self._table_of_grad.get(name)
        if table is not None:
            cfg = self._table_cfg[table]
            if not isinstance(value, SelectedRows):
                raise InvalidArgumentError(f"gradient '{name}' of distributed table '{table}' must be "
                                           f"SelectedRows, got {type(value).__name__}")
            self._check_dtype_shape(name, value.values, cfg.dtype, (-1, cfg.dim))
            return
        if name not in self._grad_block:
            raise NotFoundError(f"pserver: gradient '{name}' is not hosted here (hosted: "
                                f"{sorted(self._grad_block) + sorted(self._table_of_grad)})")
        var = self._program.global_block().vars.get(name)
        if var is None or not var.shape:
            return
        if isinstance(value, SelectedRows):
            if value.height != var.shape[0]:
                raise ShapeError(f"gradient '{name}': SelectedRows height {value.height} != block rows "
                                 f"{var.shape[0]}")
            self._check_dtype_shape(name, value.values, var.dtype, (-1,) + tuple(var.shape[1:]))
        else:
            arr = value.values if isinstance(value, LoDTensor) else value
            self._check_dtype_shape(name, arr, var.dtype, tuple(var.shape))

    @staticmethod
    def _check_dtype_shape(name: str, arr: Any, dtype: str, shape: tuple) -> None:
        if np.dtype(arr.dtype) != np.dtype(dtype):
            raise DTypeError(f"gradient '{name}': dtype {np.dtype(arr.dtype).name}, the pserver holds {dtype}")
        got = tuple(arr.shape)
        if len(got) != len(shape) or any(w >= 0 and w != g for w, g in zip(shape, got)):
            raise ShapeError(f"gradient '{name}': shape {list(got)}, the pserver expects {list(shape)} "
                             f"(-1 = any)")

    def sparse_memory(self, table: str = "") -> tuple[int, int]:
        """(touched rows, bytes) of one distributed table shard, or of all of them."""
        if table and table not in self._tables:
            raise NotFoundError(f"pserver: table '{table}' is not hosted here (tables: {sorted(self._tables)})")
        ts = [self._tables[table]] if table else list(self._tables.values())
        return sum(len(t) for t in ts), sum(t.memory_bytes() for t in ts)


def serve(ctx: KernelContext) -> None:
    """The listen_and_serv kernel: serve until every trainer sent COMPLETE."""
    a = ctx.attrs
    scope = Scope.over(ctx.env)  # the run's scope dict: the startup program filled it
    plan = ServerPlan.from_attrs(a)
    handler = ExecutorHandler(ctx.op.block.program, scope, ctx.place, plan)
    server = ParameterServer(plan.endpoint, handler, plan.fanin, plan.sync_mode, _server_options(a))
    _load_saved_shard(server, handler, a.get("load_dir", ""))
    server.start()
    try:
        server.wait()
    finally:
        server.stop()


def _server_options(a: dict) -> ServerOptions:
    kw: dict[str, Any] = {"server_index": int(a.get("pserver_index", 0))}
    if a.get("checkpoint_dir"):
        kw["checkpoint_dir"] = a["checkpoint_dir"]
        kw["checkpoint_every_s"] = float(a.get("checkpoint_interval_s") or 0.0) or None
    if a.get("barrier_timeout_s"):
        kw["barrier_timeout"] = float(a["barrier_timeout_s"])
    # init_server(model_dir) names a directory of this pserver's own configuration too
    kw["notify_dirs"] = tuple(a.get("notify_dirs") or ()) + ((a["load_dir"],) if a.get("load_dir") else ())
    return ServerOptions(**kw)


def _load_saved_shard(server: ParameterServer, handler: ExecutorHandler, load_dir: str) -> None:
    """``init_server(model_dir)``: resume from the state this pserver wrote on
    ``save_persistables`` (CheckpointNotify) when there is one (sparse shards, optimizer state)."""
    if not load_dir:
        return
    shard = server.shard_file(os.path.join(load_dir, "__lookup_table__"))
    if os.path.isfile(shard):
        handler.load_state(checkpoint.load(shard))
