"""DistributeTranspiler: rewrite a single-process program for parameter-server training.

``transpile`` asks ``pserver.plan.make_plan`` for the placement (every parameter
sliced into row blocks and assigned to pservers by the rules of ``pserver.sharding``)
once; the ``get_*`` calls derive the programs from that ``PSPlan``:

- the trainer program: forward + backward, then one ``send`` (each gradient
  split into its blocks at run time, every block sent concurrently), and in
  sync mode ``send_barrier`` / ``recv`` / ``fetch_barrier`` (``recv`` pulls the
  blocks and concatenates them into the parameter); ``lookup_table`` ops of an
  ``is_distributed`` table become ``distributed_lookup_table`` (prefetch), and
  so do those of an ``is_sparse`` table sliced over several pservers (remote
  prefetch: ids bucketed by the blocks' row ranges, rows fetched by local row
  offset; the table is then never pulled whole by ``recv``);
- the trainer startup: the local init ops minus what the pservers own (the
  distributed tables, optimizer accumulators), then a ``recv`` of every
  parameter so all trainers start from the pservers' values;
- per pserver a main program (``listen_and_serv`` + one optimize block per
  hosted parameter block, built by ``pserver.program_builder``) and a startup
  program that initializes only the hosted slices.

Names and rules follow Paddle 1.4 (``<var>.block<i>``, ``min_block_size``,
RoundRobin / HashName).  Two deliberate differences: HashName uses a stable hash
(crc32) so every process computes the same placement, and a gradient block is
always placed with its parameter block (Paddle hashed the two names separately).
"""
from __future__ import annotations

from typing import Any, Sequence

from ..core.framework import (ROLE_LRSCHED, ROLE_OPTIMIZE, ROLE_RPC, Operator, Program, default_main_program,
                              default_startup_program)
from ..core.io_distributed import register_trainer_program
from ..errors import InvalidArgumentError, NotFoundError
from ..pserver import ops as _ps_ops  # noqa: F401  (registers send/recv/listen_and_serv kernels)
from ..pserver.api import (MIN_BLOCK_SIZE, HashName, ParamPlan, PSDispatcher, PSPlan, RoundRobin, TablePlan,
                           VarBlock, build_pserver_program, build_pserver_startup, make_plan, slice_variable,
                           stable_hash)
from . import checkpoint_notify as _notify_op  # noqa: F401  (registers checkpoint_notify: trainer-side save)
from .transpiler_nccl2 import NCCL2_MODES, parse_endpoints, transpile_nccl2

__all__ = ["DistributeTranspiler", "DistributeTranspilerConfig", "HashName", "PSDispatcher", "ParamPlan",
           "RoundRobin", "TablePlan", "VarBlock", "slice_variable", "stable_hash"]


# ------------------------------------------------------------------ config
class DistributeTranspilerConfig:
    """Settings of the transpiler (class attributes are the defaults, as in fluid 1.4)."""

    slice_var_up: bool = True
    split_method: type[PSDispatcher] | None = None  # None -> RoundRobin
    min_block_size: int = MIN_BLOCK_SIZE
    # async only: delay-compensated gradients, g + g*g*(param - param at this trainer's last pull)
    enable_dc_asgd: bool = False
    mode: str = "pserver"
    print_log: bool = False
    wait_port: bool = True
    # fluid's default; either way send/recv split and concat the blocks at run time here
    runtime_split_send_recv: bool = False
    nccl_comm_num: int = 1  # nccl2 mode only (not the parameter-server transpiler): kept for ported configs
    sync_mode: bool | None = None  # None: use transpile(sync_mode=...)
    # fleetkit: look up rows of an is_sparse table sliced over several pservers remotely
    # (fluid 1.4's remote prefetch); False pulls such tables whole every step
    remote_prefetch: bool = True

    def __init__(self, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            if not hasattr(type(self), key):
                raise InvalidArgumentError(f"DistributeTranspilerConfig: unknown setting '{key}'")
            setattr(self, key, value)

    def _validate(self) -> None:
        if int(self.min_block_size) < MIN_BLOCK_SIZE:
            raise InvalidArgumentError(f"DistributeTranspilerConfig: min_block_size must be >= {MIN_BLOCK_SIZE}, "
                                       f"got {self.min_block_size}")
        sm = self.split_method or RoundRobin
        if not (isinstance(sm, type) and issubclass(sm, PSDispatcher)):
            raise InvalidArgumentError(f"DistributeTranspilerConfig: split_method must be RoundRobin or HashName, "
                                       f"got {self.split_method!r}")
        if self.mode != "pserver" and self.mode not in NCCL2_MODES:
            raise InvalidArgumentError(f"DistributeTranspilerConfig: mode {self.mode!r} is not one of fluid 1.4's "
                                       f"'pserver', 'nccl2' (fleet's collective mode is the other collective way)")


# ------------------------------------------------------------------ transpiler
def _parse_endpoints(pservers: str | Sequence[str]) -> list[str]:
    return parse_endpoints(pservers, "pserver", f"pservers must list 'ip:port' endpoints, got {pservers!r}")


class DistributeTranspiler:
    """``DistributeTranspiler(config).transpile(trainer_id, program, pservers, trainers, sync_mode)``."""

    def __init__(self, config: DistributeTranspilerConfig | None = None) -> None:
        self.config = config or DistributeTranspilerConfig()
        self._done = False

    # -------------------------------------------------------------- transpile
    def transpile(self, trainer_id: int, program: Program | None = None,
                  pservers: str | Sequence[str] = "127.0.0.1:6174", trainers: int = 1, sync_mode: bool = True,
                  startup_program: Program | None = None, current_endpoint: str = "127.0.0.1:6174") -> None:
        """Plan the placement of every parameter; programs are built by the get_* calls.

        In nccl2 mode ``trainers`` is the trainers' endpoints and ``program`` / ``startup_program``
        are rewritten in place for all-reduce training (``transpiler_nccl2``); ``pservers`` is unused.
        """
        self.config._validate()
        if self.config.mode in NCCL2_MODES:
            self.origin_program = default_main_program() if program is None else program
            startup = default_startup_program() if startup_program is None else startup_program
            self.trainer_id = trainer_id
            self.trainer_endpoints = transpile_nccl2(trainer_id, trainers, current_endpoint,
                                                     self.origin_program, startup)
            self.trainer_num = len(self.trainer_endpoints)
            return
        if isinstance(trainers, bool) or not isinstance(trainers, int) or trainers < 1:
            raise InvalidArgumentError(f"transpile: trainers must be an int >= 1 in pserver mode, got {trainers!r}")
        if not isinstance(trainer_id, int) or not 0 <= trainer_id < trainers:
            raise InvalidArgumentError(f"transpile: trainer_id must be in [0, {trainers}), got {trainer_id!r}")
        self.origin_program = default_main_program() if program is None else program
        startup = default_startup_program() if startup_program is None else startup_program
        # pserver programs are built from this snapshot; the caller's startup program is
        # rewritten in place into the trainer's (as fluid 1.4 does), so a ported script's
        # exe.run(default_startup_program()) pulls the parameters instead of initializing
        # them locally (and never materializes a distributed table)
        self.origin_startup = startup.clone()
        self.trainer_id, self.trainer_num = trainer_id, trainers
        self.sync_mode = bool(sync_mode if self.config.sync_mode is None else self.config.sync_mode)
        if self.config.enable_dc_asgd and self.sync_mode:
            raise InvalidArgumentError("DistributeTranspilerConfig: enable_dc_asgd compensates the delay of "
                                       "async training: transpile with sync_mode=False")
        self.plan: PSPlan = make_plan(
            self.origin_program, _parse_endpoints(pservers), trainer_id, trainers, self.sync_mode,
            dispatcher=self.config.split_method, slice_var_up=bool(self.config.slice_var_up),
            min_block_size=int(self.config.min_block_size), remote_prefetch=bool(self.config.remote_prefetch),
            dc_asgd=bool(self.config.enable_dc_asgd))
        self._done = True
        self._rewrite_trainer_startup(startup)

    # the plan's parts, under the names fluid-era callers (fleet, the demo, tests) use
    @property
    def pserver_endpoints(self) -> list[str]:
        return self.plan.endpoints

    @property
    def params(self) -> list[ParamPlan]:
        return self.plan.params

    @property
    def tables(self) -> dict[str, TablePlan]:
        return self.plan.tables

    @property
    def lr_ops(self) -> list[Operator]:
        return self.plan.lr_ops

    def _check(self) -> None:
        if self.config.mode in NCCL2_MODES:
            raise InvalidArgumentError("DistributeTranspiler: in nccl2 mode transpile() rewrites the main and "
                                       "startup programs in place; run those (there are no get_* programs)")
        if not self._done:
            raise InvalidArgumentError("DistributeTranspiler: call transpile() first")

    # -------------------------------------------------------------- trainer side
    def get_trainer_program(self, wait_port: bool = True) -> Program:
        """The trainer's main program (optimize ops replaced by send/recv)."""
        self._check()
        prog = self.origin_program.clone()
        block = prog.global_block()
        block.ops = [op for op in block.ops if op.role not in (ROLE_OPTIMIZE, ROLE_LRSCHED)]
        self._rewrite_lookups(block)
        eps = self.pserver_endpoints
        names, epmap, sections, grads = [], [], [], []
        for p in self.params:
            grads.append(p.grad)
            names.append([_grad_block_name(p.grad, b) for b in p.blocks])
            epmap.append(list(p.endpoints))
            sections.append([b.rows for b in p.blocks])
        tables = sorted(self.tables.values(), key=lambda t: t.param.name)
        for t in tables:
            grads.append(t.grad)
            names.append([t.grad] * len(eps))
            epmap.append(list(eps))
            sections.append([])  # [] marks "shard rows by id % len(epmap)"
        common = {"trainer_id": self.trainer_id, "sync_mode": self.sync_mode, "op_role": ROLE_RPC}
        if grads:
            block.append_op("send", {"X": grads}, {}, {
                **common, "epmap": epmap, "send_varnames": names, "sections": sections,
                "op_role_var": [n for p in self.params for n in (p.param.name, p.grad)] +
                               [n for t in tables for n in (t.param.name, t.grad)]}, infer=False)
        if self.sync_mode:
            block.append_op("send_barrier", {}, {}, {**common, "endpoints": list(eps)}, infer=False)
        self._append_recv(block, self.params, with_barrier=True, background=not self.sync_mode)
        if self.sync_mode:
            block.append_op("fetch_barrier", {}, {}, {**common, "endpoints": list(eps)}, infer=False)
        prog.meta = self.origin_program.meta.copy()
        # fluid 1.4 scripts save default_main_program() (transpiled in place there): save this instead
        register_trainer_program(self.origin_program, prog)
        return prog

    @property
    def prefetch_tables(self) -> list[str]:
        """Sliced is_sparse tables the trainer prefetches rows of (never pulls whole)."""
        return self.plan.prefetch_tables

    def _append_recv(self, block: Any, params: list[ParamPlan], with_barrier: bool,
                     background: bool = False) -> None:
        params = [p for p in params if not p.prefetch]
        if not params:
            return
        block.append_op("recv", {}, {"Out": [p.param.name for p in params]}, {
            "trainer_id": self.trainer_id, "sync_mode": self.sync_mode, "op_role": ROLE_RPC,
            "with_barrier": with_barrier, "background": background,
            "epmap": [list(p.endpoints) for p in params],
            "recv_varnames": [[b.block_name for b in p.blocks] for p in params],
            "sections": [[b.rows for b in p.blocks] for p in params]}, infer=False)

    def _rewrite_lookups(self, block: Any) -> None:
        """lookup_table (and its grad) of a distributed table, or of a remotely prefetched
        sliced table, -> prefetch from the pservers."""
        remote = {p.param.name: p for p in self.params if p.prefetch}
        for op in block.ops:
            if op.type not in ("lookup_table", "lookup_table_grad"):
                continue
            name = op.input("W")[0]
            if name in self.tables:
                w = self.tables[name].param
                extra: dict[str, Any] = {"epmap": list(self.pserver_endpoints), "height_sections": [],
                                         "table_names": []}
            elif name in remote:
                p = remote[name]
                w = p.param
                # fluid 1.4 attrs: ids are bucketed by these row ranges and sent as local offsets
                extra = {"epmap": list(p.endpoints), "height_sections": [b.rows for b in p.blocks],
                         "table_names": [b.block_name for b in p.blocks]}
            else:
                continue
            op.type = "distributed_lookup_table" + ("_grad" if op.type.endswith("_grad") else "")
            op.attrs.update({**extra, "table_name": w.name, "table_height": int(w.shape[0]),
                             "table_dim": int(w.shape[1]), "trainer_id": self.trainer_id})
        _fuse_lookups(block)
        block.program._bump()

    def get_trainer_test_program(self, test_program: Program) -> Program:
        """A forward-only program (e.g. ``main.clone(for_test=True)`` taken before minimize)
        that runs on a trainer: it first pulls the dense parameters from the pservers
        (no barrier) and prefetches the rows of distributed tables."""
        self._check()
        prog = test_program.clone(for_test=True)
        block = prog.global_block()
        self._rewrite_lookups(block)
        keep = [p for p in self.params if block._find_var_recursive(p.param.name) is not None
                and not p.prefetch]
        if keep:
            self._append_recv(block, keep, with_barrier=False)
            block.ops.insert(0, block.ops.pop())  # pull first, then run the forward pass
        prog._bump()
        return prog

    def get_trainer_startup_program(self) -> Program:
        """The trainer's startup: local init ops (minus what pservers own), then a pull of
        every parameter from the pservers so all trainers start identical."""
        self._check()
        return self._rewrite_trainer_startup(self.origin_startup.clone())

    def _rewrite_trainer_startup(self, prog: Program) -> Program:
        block = prog.global_block()
        dropped = self._server_only_vars()
        block.ops = [op for op in block.ops if not (op.output_arg_names and
                                                    set(op.output_arg_names) <= dropped)]
        # Without a barrier: a trainer that starts late still gets the values the
        # pservers started from (a sync round cannot finish until it has sent).
        self._append_recv(block, self.params, with_barrier=False)
        prog._bump()
        return prog

    def _server_only_vars(self) -> set[str]:
        """Vars only the pservers need: distributed tables and every optimize op's state."""
        kept_ops = [op for op in self.origin_program.global_block().ops
                    if op.role not in (ROLE_OPTIMIZE, ROLE_LRSCHED)]
        used = {n for op in kept_ops for n in op.input_arg_names + op.output_arg_names}
        whole = set(self.tables) | set(self.prefetch_tables)  # tables never live on a trainer
        out = set(whole)
        for p in self.params:
            for op in p.ops:
                out.update(n for n in op.input_arg_names + op.output_arg_names if n != p.param.name)
        for t in self.tables.values():
            out.update(t.update_op.input_arg_names + t.update_op.output_arg_names)
        return {n for n in out if n not in used or n in whole}

    # -------------------------------------------------------------- pserver side
    def get_pserver_program(self, endpoint: str) -> Program:
        """The main program of the pserver at ``endpoint`` (blocks in listen_and_serv)."""
        return self.get_pserver_programs(endpoint)[0]

    def get_pserver_programs(self, endpoint: str) -> tuple[Program, Program]:
        """(main, startup) of the pserver at ``endpoint``."""
        self._check()
        if endpoint not in self.pserver_endpoints:
            raise NotFoundError(f"get_pserver_programs: endpoint {endpoint!r} is not one of the pservers "
                                f"{self.pserver_endpoints}")
        main = build_pserver_program(self.plan, self.origin_program, self.origin_startup, endpoint)
        return main, build_pserver_startup(self.origin_startup, main)

    def get_startup_program(self, endpoint: str, pserver_program: Program | None = None,
                            startup_program: Program | None = None) -> Program:
        """The startup program of the pserver at ``endpoint`` (initializes its slices only)."""
        self._check()
        if pserver_program is None:
            pserver_program = self.get_pserver_program(endpoint)
        return build_pserver_startup(self.origin_startup, pserver_program)


def _fuse_lookups(block: Any) -> None:
    """Merge the prefetch ops of one table into the first of them, so each step asks
    each pserver once per table (one round trip instead of one per slot).

    Only lookups whose ids no op of the block produces (fed data) are merged: they can
    all run where the first one stands.
    """
    produced = {n for op in block.ops for n in op.output_arg_names}
    groups: dict[tuple, list[Operator]] = {}
    for op in block.ops:
        if op.type == "distributed_lookup_table" and not set(op.input("Ids")) & produced:
            key = (op.attr("table_name"), op.attr("padding_idx"))
            groups.setdefault(key, []).append(op)
    for ops in groups.values():
        if len(ops) < 2:
            continue
        first = ops[0]
        first.inputs["Ids"] = [n for op in ops for n in op.input("Ids")]
        first.outputs["Out"] = [n for op in ops for n in op.output("Out")]
        drop = {id(op) for op in ops[1:]}
        block.ops = [op for op in block.ops if id(op) not in drop]


def _grad_block_name(grad: str, b: VarBlock) -> str:
    return grad if b.block_name == b.varname else f"{grad}.block{b.block_id}"
