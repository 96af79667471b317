"""Build a pserver's main and startup programs from a ``PSPlan`` (``plan.py``).

Main program (one per endpoint):
- global block: declarations of every hosted var with its block shape (param
  blocks, grad blocks, optimizer accumulators, learning-rate vars) and one
  ``listen_and_serv`` op;
- block 1 (only when the program has LR schedules): the global LR-schedule ops,
  run once per round (sync) / per applied gradient message (async);
- one block per hosted parameter block: that parameter's optimize ops
  (clipping, regularization, per-parameter LR scaling, the update) rewired to
  the block's names.  These are the same kernels single-process training runs.

A var of a parameter split into several blocks is renamed ``<name>.block<i>``
(accumulators too, so each block keeps its own Adam beta powers); learning-rate
vars shared by every parameter keep their names.
"""
from __future__ import annotations

from typing import Any

from ..core.framework import ROLE_LRSCHED, Operator, Program
from .plan import ParamPlan, PSPlan, ServerPlan, TableConfig, TablePlan
from .sharding import VarBlock

__all__ = ["build_pserver_program", "build_pserver_startup"]

# ops whose "shape" attribute fixes the shape of what they initialize
_SHAPED_INIT_OPS = ("fill_constant", "uniform_random", "gaussian_random", "truncated_gaussian_random",
                    "assign_value")
_SCALAR_TYPES = (bool, int, float, str)


def _shared_vars(t: PSPlan) -> set[str]:
    """Vars every parameter shares: global LR-schedule vars and the global learning rates."""
    shared = {n for op in t.lr_ops for n in op.input_arg_names + op.output_arg_names}
    per_param_outputs = {n for p in t.params for op in p.ops for n in op.output_arg_names}
    for p in t.params:
        for op in p.ops:
            shared.update(n for n in op.input("LearningRate") if n not in per_param_outputs)
    for tp in t.tables.values():
        shared.update(tp.update_op.input("LearningRate"))
    return shared


def _declare(program: Program, origin: Program, name: str, new_name: str, shape: Any = None) -> None:
    gb = program.global_block()
    if new_name in gb.vars:
        return
    ov = origin.global_block()._find_var_recursive(name)
    if ov is None:  # a var only named by an op: declare it plain
        gb.create_var(name=new_name)
        return
    gb.create_var(name=new_name, shape=ov.shape if shape is None else shape, dtype=ov.dtype,
                  lod_level=ov.lod_level, persistable=ov.persistable, type=ov.type,
                  stop_gradient=True)


def _copy_op(block: Any, op: Operator, rename: dict[str, str]) -> Operator:
    ins = {s: [rename.get(n, n) for n in ns] for s, ns in op.inputs.items()}
    outs = {s: [rename.get(n, n) for n in ns] for s, ns in op.outputs.items()}
    return block.append_op(op.type, ins, outs, dict(op.attrs), infer=False)


def _block_renames(p: ParamPlan, blk: VarBlock, shared: set[str]) -> dict[str, str]:
    if len(p.blocks) == 1:
        return {}
    names = {n for op in p.ops for n in op.input_arg_names + op.output_arg_names}
    return {n: f"{n}.block{blk.block_id}" for n in names if n not in shared}


def build_pserver_program(t: PSPlan, origin: Program, origin_startup: Program, endpoint: str) -> Program:
    """The main program of the pserver at ``endpoint``: hosted vars, optimize blocks and a
    ``listen_and_serv`` op carrying its ``ServerPlan``."""
    prog = Program()
    prog.random_seed = origin.random_seed
    shared = _shared_vars(t)
    # new name -> [origin name, row offset, rows (-1 when not sliced), block id]: the
    # startup program initializes exactly these
    origin_of: dict[str, list] = {}

    def declare(name: str, new: str, p: ParamPlan | None = None, blk: VarBlock | None = None) -> None:
        shape = None
        ov = origin.global_block()._find_var_recursive(name)
        sliced = (p is not None and blk is not None and len(p.blocks) > 1 and ov is not None
                  and tuple(ov.shape) == tuple(p.param.shape))
        if sliced:
            shape = blk.shape
        _declare(prog, origin, name, new, shape)
        if ov is not None and ov.persistable:
            origin_of[new] = [name, blk.row_offset if sliced else 0, blk.rows if sliced else -1,
                              blk.block_id if sliced else 0]

    lr_block_id = -1
    if t.lr_ops:
        b = prog._create_block(0)
        for op in t.lr_ops:
            for n in op.input_arg_names + op.output_arg_names:
                declare(n, n)
            _copy_op(b, op, {})
        lr_block_id = b.idx
    grad_to_block, params = [], []
    for p, blk in t.hosted(endpoint):
        rename = _block_renames(p, blk, shared)
        b = prog._create_block(0)
        for op in p.ops:
            for n in op.input_arg_names + op.output_arg_names:
                declare(n, rename.get(n, n), p, blk)
            new_op = _copy_op(b, op, rename)
            new_op.attrs["op_role"] = op.role if op.role == ROLE_LRSCHED else new_op.attrs["op_role"]
        grad_to_block.append((rename.get(p.grad, p.grad), b.idx))
        params.append(rename.get(p.param.name, p.param.name))
    tables = [_table_config(t, tp, origin_startup, endpoint, declare) for tp in sorted(
        t.tables.values(), key=lambda x: x.param.name)]
    persistables = sorted(n for n, v in prog.global_block().vars.items() if v.persistable)
    plan = ServerPlan(endpoint=endpoint, fanin=t.trainers, sync_mode=t.sync_mode, dc_asgd=t.dc_asgd,
                      optimize_blocks=tuple(range(1, prog.num_blocks)), lr_block_id=lr_block_id,
                      grad_to_block=tuple(grad_to_block), param_blocks=tuple(params),
                      persistables=tuple(persistables), sparse_tables=tuple(tables),
                      pserver_index=t.endpoints.index(endpoint), pserver_num=len(t.endpoints))
    prog.global_block().append_op("listen_and_serv", {"X": [g for g, _ in grad_to_block]}, {}, plan.to_attrs(),
                                  infer=False)
    prog.meta.origin_of = origin_of
    return prog


def _table_config(t: PSPlan, tp: TablePlan, origin_startup: Program, endpoint: str,
                  declare: Any) -> TableConfig:
    """What the pserver needs to serve its shard of a distributed table."""
    for n in tp.update_op.input("LearningRate"):
        declare(n, n)
    init = _init_op_of(origin_startup, tp.param.name)
    init_cfg = {"type": init.type if init is not None else "fill_constant"}
    if init is not None:
        init_cfg.update({k: v for k, v in init.attrs.items()
                         if k in ("min", "max", "mean", "std", "seed", "value")})
    return TableConfig(
        name=tp.param.name, grad=tp.grad, height=int(tp.param.shape[0]), dim=int(tp.param.shape[1]),
        dtype=tp.param.dtype, shard_index=t.endpoints.index(endpoint), shard_num=len(t.endpoints),
        optimizer=tp.update_op.type,
        optimizer_attrs={k: v for k, v in tp.update_op.attrs.items()
                         if isinstance(v, _SCALAR_TYPES) and k not in ("op_role",)},
        lr_var=(tp.update_op.input("LearningRate") or [""])[0], init=init_cfg)


def _init_op_of(startup: Program, name: str) -> Operator | None:
    found = None
    for op in startup.global_block().ops:
        if name in op.output_arg_names:
            found = op
    return found


def build_pserver_startup(origin_startup: Program, pserver_program: Program) -> Program:
    """Init ops of the hosted vars, reshaped to their block (each pserver inits its slice)."""
    startup = Program()
    startup.random_seed = origin_startup.random_seed
    sb = startup.global_block()
    pgb = pserver_program.global_block()
    for new, (orig, offset, rows, block_id) in sorted((pserver_program.meta.origin_of or {}).items()):
        op = _init_op_of(origin_startup, orig)
        if op is None:
            continue
        v = pgb.vars[new]
        sb.create_var(name=new, shape=v.shape, dtype=v.dtype, persistable=True, type=v.type)
        attrs = dict(op.attrs)
        if rows >= 0 and op.type in _SHAPED_INIT_OPS:
            attrs["shape"] = list(v.shape)
            if op.type == "assign_value":
                attrs["values"] = _slice_values(attrs["values"], op.attrs["shape"], offset, rows)
            if attrs.get("seed"):  # distinct, still reproducible, streams per block
                attrs["seed"] = int(attrs["seed"]) + 7919 * block_id
        outs = {s: [new if n == orig else n for n in ns] for s, ns in op.outputs.items()}
        sb.append_op(op.type, dict(op.inputs), outs, attrs, infer=False)
    return startup


def _slice_values(values: list, shape: list, offset: int, rows: int) -> list:
    row = 1
    for d in shape[1:]:
        row *= int(d)
    return list(values[offset * row:(offset + rows) * row])
