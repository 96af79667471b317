"""The parameter-server plan: where every parameter block lives and how it is updated.

``make_plan`` reads what ``Optimizer.minimize`` left in a program (optimize ops carry
``op_role='optimize'`` and ``op_role_var=[param, grad]``) and returns one ``PSPlan``:
per dense parameter its row blocks, their pservers and its optimize ops; per
``is_distributed`` table its update op; the LR-schedule ops, sync mode and trainers.
The transpiler builds it once and derives every program from it.

What one pserver needs at run time is a ``ServerPlan`` (its endpoint, which gradient
runs which optimize block, the hosted blocks, its sparse-table shards).  It travels in
the attributes of the ``listen_and_serv`` op, so a saved pserver program carries it:
``ServerPlan.to_attrs`` / ``ServerPlan.from_attrs`` are the one codec.  The attribute
format is fluid-like and unchanged since the first saved programs ("grad:block"
strings, a JSON object per sparse table), so those programs still load.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

from ..core.framework import ROLE_LRSCHED, ROLE_OPTIMIZE, Operator, Program
from ..errors import InvalidArgumentError
from .sharding import MIN_BLOCK_SIZE, PSDispatcher, RoundRobin, VarBlock, slice_variable

__all__ = ["DENSE_OPTIMIZERS", "PSPlan", "ParamPlan", "ServerPlan", "TableConfig", "TablePlan", "make_plan"]

# update ops the pserver can run per block (accumulators are reshaped to the block)
DENSE_OPTIMIZERS = ("sgd", "momentum", "adam", "adagrad", "adamax", "decayed_adagrad", "rmsprop",
                    "adadelta", "ftrl", "lars_momentum")


# ------------------------------------------------------------------ the job-wide plan
@dataclass(frozen=True)
class ParamPlan:
    """One dense (pserver-hosted, sliced) parameter: its optimize ops, grad, blocks and
    the endpoint of each block (a grad block always goes where its param block is)."""

    param: Any  # core.framework.Parameter
    grad: str
    ops: list[Operator]
    blocks: list[VarBlock]
    endpoints: list[str]
    #: remote prefetch: the trainer looks rows up on the pservers instead of pulling the table
    prefetch: bool = False


@dataclass(frozen=True)
class TablePlan:
    """One ``is_distributed`` table: sharded by id % n over every pserver."""

    param: Any  # core.framework.Parameter
    grad: str
    update_op: Operator


@dataclass(frozen=True)
class PSPlan:
    """Everything the transpiler decided; programs for trainers and pservers follow from it."""

    endpoints: list[str]
    trainer_id: int
    trainers: int
    sync_mode: bool
    dc_asgd: bool
    params: list[ParamPlan]
    tables: dict[str, TablePlan]  # by table name, sorted
    lr_ops: list[Operator] = field(default_factory=list)

    @property
    def prefetch_tables(self) -> list[str]:
        """Sliced is_sparse tables the trainer prefetches rows of (never pulls whole)."""
        return [p.param.name for p in self.params if p.prefetch]

    def hosted(self, endpoint: str) -> list[tuple[ParamPlan, VarBlock]]:
        """The parameter blocks the pserver at ``endpoint`` holds, in plan order."""
        return [(p, b) for p in self.params for b, ep in zip(p.blocks, p.endpoints) if ep == endpoint]


def make_plan(program: Program, endpoints: Sequence[str], trainer_id: int, trainers: int, sync_mode: bool, *,
              dispatcher: type[PSDispatcher] | None = None, slice_var_up: bool = True,
              min_block_size: int = MIN_BLOCK_SIZE, remote_prefetch: bool = True,
              dc_asgd: bool = False) -> PSPlan:
    """Place every trainable parameter of ``program`` (see the module doc)."""
    block = program.global_block()
    by_param, lr_ops = _optimize_ops_by_param(program)
    if not by_param:
        raise InvalidArgumentError("transpile: the program has no optimize ops; call optimizer.minimize(loss) "
                                   "before transpiling")
    table_names = _distributed_tables(program)
    slice_count = len(endpoints) if slice_var_up else 1
    dense: list[tuple[Any, str, list[Operator], list[VarBlock], bool]] = []
    tables: dict[str, TablePlan] = {}
    for pname in sorted(by_param):
        ops = by_param[pname]
        param = block.var(pname)
        grad = ops[0].attr("op_role_var")[1]  # the first op reads the raw gradient
        if pname in table_names:
            tables[pname] = _table_plan(param, grad, ops)
            continue
        if not getattr(param, "trainable", True):
            continue
        upd = _update_op(pname, ops)
        if upd.type not in DENSE_OPTIMIZERS:
            raise InvalidArgumentError(f"transpile: optimizer op '{upd.type}' of parameter '{pname}' cannot "
                                       f"run on a pserver (supported: {', '.join(DENSE_OPTIMIZERS)})")
        blocks = slice_variable(param, slice_count, min_block_size)
        # fluid 1.4's remote prefetch: a sliced is_sparse table is looked up on the
        # pservers (a whole-table pull per step costs the table's size in bytes)
        prefetch = len(blocks) > 1 and bool(remote_prefetch) and _remote_prefetchable(program, pname)
        dense.append((param, grad, ops, blocks, prefetch))
    # Param blocks are dispatched in one pass (RoundRobin spreads them over the pservers).
    eps = (dispatcher or RoundRobin)(list(endpoints)).dispatch([b for d in dense for b in d[3]])
    params, i = [], 0
    for param, grad, ops, blocks, prefetch in dense:
        params.append(ParamPlan(param, grad, ops, blocks, eps[i:i + len(blocks)], prefetch))
        i += len(blocks)
    return PSPlan(list(endpoints), trainer_id, trainers, bool(sync_mode), bool(dc_asgd) and not sync_mode,
                  params, tables, lr_ops)


def _optimize_ops_by_param(program: Program) -> tuple[dict[str, list[Operator]], list[Operator]]:
    """{param: its optimize ops (program order)} and the global LR-schedule ops."""
    by_param: dict[str, list[Operator]] = {}
    lr_ops: list[Operator] = []
    for op in program.global_block().ops:
        if op.role not in (ROLE_OPTIMIZE, ROLE_LRSCHED):
            continue
        rv = op.attr("op_role_var") or []
        if not rv:
            if op.role == ROLE_LRSCHED:
                lr_ops.append(op)
                continue
            raise InvalidArgumentError(f"transpile: optimize op '{op.type}' has no op_role_var, so it cannot be "
                                       f"placed on a pserver: {op}")
        if len(rv) > 2:
            raise InvalidArgumentError(
                f"transpile: op '{op.type}' updates several parameters at once ({rv[0::2]}); ops spanning "
                f"parameters (e.g. GradientClipByGlobalNorm) cannot run on sliced pserver blocks")
        by_param.setdefault(rv[0], []).append(op)
    return by_param, lr_ops


def _update_op(param: str, ops: list[Operator]) -> Operator:
    for op in ops:
        if op.input("Param") == [param] and op.output("ParamOut") == [param]:
            return op
    raise InvalidArgumentError(f"transpile: no update op (sgd, adam, ...) found for parameter '{param}'")


def _table_plan(param: Any, grad: str, ops: list[Operator]) -> TablePlan:
    upd = _update_op(param.name, ops)
    extra = [op for op in ops if op is not upd]
    if extra:
        raise InvalidArgumentError(
            f"transpile: distributed table '{param.name}' has optimize ops {[op.type for op in extra]} besides "
            f"its update op '{upd.type}'; regularization, clipping and per-parameter learning rates are not "
            f"supported for is_distributed tables")
    return TablePlan(param, grad, upd)


def _remote_prefetchable(program: Program, name: str) -> bool:
    """Every op of the program that reads ``name`` (optimize ops aside) is a sparse,
    non-distributed lookup of the global block, so the trainer needs only looked-up rows."""
    seen = False
    for block in program.blocks:
        for op in block.ops:
            if op.role in (ROLE_OPTIMIZE, ROLE_LRSCHED) or name not in op.input_arg_names:
                continue
            if (block.idx != 0 or op.type not in ("lookup_table", "lookup_table_grad")
                    or op.input("W") != [name] or not op.attr("is_sparse") or op.attr("is_distributed")):
                return False
            seen = True
    return seen


def _distributed_tables(program: Program) -> set[str]:
    return {op.input("W")[0] for op in program.global_block().ops
            if op.type == "lookup_table" and op.attr("is_distributed")}


# ------------------------------------------------------------------ one pserver's plan
@dataclass(frozen=True)
class TableConfig:
    """What a pserver needs to serve its shard of a distributed table."""

    name: str
    grad: str
    height: int
    dim: int
    dtype: str
    shard_index: int
    shard_num: int
    optimizer: str
    optimizer_attrs: dict[str, Any]
    lr_var: str
    init: dict[str, Any]  # the startup init op: {"type": ..., "min"/"max"/"mean"/"std"/"seed"/"value"}

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> "TableConfig":
        try:
            d = json.loads(raw)
            known = {f.name for f in fields(cls)}
            return cls(**{"dtype": "float32", **{k: v for k, v in d.items() if k in known}})
        except (ValueError, TypeError) as e:
            raise InvalidArgumentError(f"listen_and_serv: sparse_tables entry {raw[:200]!r} is not a table "
                                       f"config: {e}") from None


@dataclass(frozen=True)
class ServerPlan:
    """The ``listen_and_serv`` op's plan: what the pserver at ``endpoint`` hosts."""

    endpoint: str = ""
    fanin: int = 1  # trainers
    sync_mode: bool = True
    dc_asgd: bool = False
    optimize_blocks: tuple[int, ...] = ()
    lr_block_id: int = -1  # block of the LR-schedule ops, -1 when none
    grad_to_block: tuple[tuple[str, int], ...] = ()  # gradient (block) name -> its optimize block
    param_blocks: tuple[str, ...] = ()
    persistables: tuple[str, ...] = ()
    sparse_tables: tuple[TableConfig, ...] = ()
    pserver_index: int = 0
    pserver_num: int = 1

    def to_attrs(self) -> dict[str, Any]:
        """The op attributes (the saved format: "grad:block" strings, JSON table configs)."""
        return {
            "endpoint": self.endpoint, "Fanin": self.fanin, "sync_mode": self.sync_mode, "dc_asgd": self.dc_asgd,
            "optimize_blocks": list(self.optimize_blocks), "lr_block_id": self.lr_block_id,
            "grad_to_block_id": [f"{g}:{b}" for g, b in self.grad_to_block],
            "param_blocks": list(self.param_blocks), "persistables": list(self.persistables),
            "sparse_tables": [c.to_json() for c in self.sparse_tables],
            "pserver_index": self.pserver_index, "pserver_num": self.pserver_num,
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> "ServerPlan":
        """The plan in a listen_and_serv op's attributes (missing ones take the defaults)."""
        pairs = []
        for entry in attrs.get("grad_to_block_id", []):
            grad, sep, block = str(entry).rpartition(":")
            if not sep or not grad or not block.lstrip("-").isdigit():
                raise InvalidArgumentError(f"listen_and_serv: grad_to_block_id entry {entry!r} is not "
                                           f"'<gradient>:<block index>'")
            pairs.append((grad, int(block)))
        return cls(endpoint=str(attrs.get("endpoint", "")), fanin=int(attrs.get("Fanin", 1)),
                   sync_mode=bool(attrs.get("sync_mode", True)), dc_asgd=bool(attrs.get("dc_asgd", False)),
                   optimize_blocks=tuple(int(b) for b in attrs.get("optimize_blocks", [])),
                   lr_block_id=int(attrs.get("lr_block_id", -1)), grad_to_block=tuple(pairs),
                   param_blocks=tuple(attrs.get("param_blocks", [])),
                   persistables=tuple(attrs.get("persistables", [])),
                   sparse_tables=tuple(TableConfig.from_json(s) for s in attrs.get("sparse_tables", [])),
                   pserver_index=int(attrs.get("pserver_index", 0)), pserver_num=int(attrs.get("pserver_num", 1)))
