"""Saving from a parameter-server trainer: ``save_persistables`` / ``save_params`` /
``save_inference_model`` given a transpiled trainer program (fluid 1.4 behaviour).

A trainer program (it holds ``send`` / ``recv`` / ``distributed_lookup_table`` ops)
declares variables whose values live on the pservers: optimizer state and learning
rates (no trainer op touches them), sliced tables it only prefetches rows of, and
``is_distributed`` tables sharded over the pservers.  Saving from it:

- dense parameters are pulled fresh from the pservers (the program's ``recv``,
  without a barrier) and sliced prefetch tables are gathered whole, so the files
  hold the values the pservers train, in the single-process layout;
- variables no trainer op touches (optimizer state, learning rates) are the
  pservers' business and are skipped;
- ``save_persistables`` on trainer 0 also asks every pserver, through a
  ``checkpoint_notify`` op, to write its whole state (its shard of every
  distributed table, its accumulators) as ``dirname/__lookup_table__/pserver_<i>.fkckpt``
  (fleet.save_persistables' layout); the directory must be one the pservers accept
  (``FLEETKIT_PS_NOTIFY_DIRS``);
- the program the trainer was transpiled from (``default_main_program()`` in 1.4
  scripts, which transpile it in place) is saved as the trainer program;
- ``load_persistables(exe, dirname, pserver_program)`` on a pserver (fluid 1.4's
  ``_load_distributed_persistables``) loads the rows of every saved parameter that this
  pserver hosts, and makes ``listen_and_serv`` resume from the pserver's own state file
  there (tables, optimizer state) when it exists;
- ``save_inference_model`` gathers distributed tables whole and replaces the
  ``distributed_lookup_table`` ops by local ``lookup_table`` ops, so the saved model
  runs with ``load_inference_model`` in a process without pservers.

The pulls run the program's own rpc ops in a throwaway program, so this module
needs nothing from the pserver package (which registers those ops).
"""
from __future__ import annotations

import logging
import weakref
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import NotFoundError, RPCRequestError
from .framework import Operator, Program, Variable
from .registry import get_op_def
from .scope import Scope, global_scope

__all__ = ["inference_program_and_scope", "is_pserver_program", "is_trainer_program", "load_pserver_vars",
           "register_trainer_program", "save_trainer_vars", "trainer_program_for"]

_log = logging.getLogger("fleetkit.io")

_RPC_OPS = frozenset({"send", "recv", "distributed_lookup_table", "distributed_lookup_table_grad"})
#: rows per gather when a whole table is pulled (bounds one request's size)
_GATHER_ROWS = 65536


#: origin program -> the trainer program transpiled from it.  fluid 1.4 transpiles the
#: default main program in place, so its scripts save ``default_main_program()``; here the
#: trainer program is a copy, and saving the origin saves the trainer program instead.
_TRAINERS: "weakref.WeakKeyDictionary[Program, Program]" = weakref.WeakKeyDictionary()


def register_trainer_program(origin: Program, trainer: Program) -> None:
    """Record that ``trainer`` was transpiled from ``origin`` (``DistributeTranspiler`` calls this)."""
    _TRAINERS[origin] = trainer


def trainer_program_for(program: Program) -> Program:
    """The trainer program transpiled from ``program`` in this process, else ``program``."""
    return _TRAINERS.get(program, program)


def is_trainer_program(program: Program) -> bool:
    """Whether ``program`` is a transpiled parameter-server trainer program."""
    return any(op.type in _RPC_OPS for op in program.global_block().ops)


def _executor_like(executor: Any) -> Any:
    from .executor import Executor  # noqa: PLC0415  (executor imports io's neighbours)
    return Executor(getattr(executor, "place", None))


def _pull_dense(executor: Any, program: Program) -> dict[str, Any]:
    """The values of every ``recv`` output, pulled from the pservers now (no barrier)."""
    out: dict[str, Any] = {}
    for op in program.global_block().ops:
        if op.type != "recv":
            continue
        tmp = Program()
        block = tmp.global_block()
        for name in op.output("Out"):
            v = program.global_block().var(name)
            block.create_var(name=name, shape=v.shape, dtype=v.dtype)
        block.append_op("recv", {}, {"Out": op.output("Out")},
                        {**op.attrs, "with_barrier": False, "background": False}, infer=False)
        scope = Scope()
        _executor_like(executor).run(tmp, scope=scope)
        out.update({n: scope.get(n) for n in op.output("Out")})
    return out


def _lookup_ops(program: Program) -> dict[str, Operator]:
    """table name -> one ``distributed_lookup_table`` op reading it."""
    return {op.attr("table_name"): op for op in program.global_block().ops
            if op.type == "distributed_lookup_table"}


def _gather_table(executor: Any, op: Operator) -> np.ndarray:
    """Every row of the table ``op`` reads, looked up from the pservers in chunks."""
    height, dim = int(op.attr("table_height")), int(op.attr("table_dim"))
    tmp = Program()
    block = tmp.global_block()
    block.create_var(name="ids", shape=(-1, 1), dtype="int64")
    block.create_var(name="rows", shape=(-1, dim), dtype="float32")
    block.append_op("distributed_lookup_table", {"Ids": ["ids"], "W": [op.attr("table_name")]},
                    {"Out": ["rows"]}, {**op.attrs, "padding_idx": -1}, infer=False)
    exe = _executor_like(executor)
    parts = []
    for lo in range(0, height, _GATHER_ROWS):
        ids = np.arange(lo, min(height, lo + _GATHER_ROWS), dtype=np.int64).reshape(-1, 1)
        parts.append(exe.run(tmp, feed={"ids": ids}, fetch_list=["rows"], scope=Scope())[0].reshape(-1, dim))
    return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)


#: where pservers write their own state under a save_persistables directory (as fleet.save_persistables
#: does, so fleet.init_server(model_dir) and load_persistables(exe, dir, pserver_program) find it)
PSERVER_STATE_DIR = "__lookup_table__"


def _notify_pservers(executor: Any, program: Program, dirname: str) -> None:
    """Trainer 0 asks every pserver to save its state into ``dirname`` (fluid's checkpoint_notify)."""
    import os  # noqa: PLC0415
    eps: list[str] = []
    trainer_id = 0
    for op in program.global_block().ops:
        if op.type in ("send", "recv", "distributed_lookup_table"):
            trainer_id = int(op.attr("trainer_id", 0) or 0)
            for e in op.attr("epmap", []):
                for ep in (e if isinstance(e, (list, tuple)) else [e]):
                    if ep not in eps:
                        eps.append(ep)
    if trainer_id != 0 or not eps:
        return
    tmp = Program()
    tmp.global_block().append_op("checkpoint_notify", {}, {}, {
        "epmap": eps, "dir": os.path.abspath(os.path.join(dirname, PSERVER_STATE_DIR)), "lookup_table": "",
        "trainer_id": trainer_id}, infer=False)
    try:
        _executor_like(executor).run(tmp, scope=Scope())
    except RPCRequestError as e:
        # fluid 1.4 notifies only for distributed tables; without one the trainer's files are the whole
        # model, so pservers started by hand with no notify directory (the 1.4 way) do not fail the save
        if _has_distributed_table(program) or "checkpoint directories" not in str(e):
            raise
        _log.warning("save_persistables(%s): the pservers kept their own state (optimizer accumulators) unsaved: "
                     "%s", dirname, e)


def _has_distributed_table(program: Program) -> bool:
    """Whether ``program`` reads an ``is_distributed`` table (only the pservers hold it whole)."""
    return any(not op.attr("height_sections") for op in _lookup_ops(program).values())


def _touched(program: Program) -> set[str]:
    return {n for op in program.global_block().ops for n in op.input_arg_names + op.output_arg_names}


def _collect(executor: Any, program: Program, selected: Sequence[Variable], scope: Scope,
             gather_all_tables: bool) -> tuple[Scope, list[str]]:
    """A scope holding every value to save, and the names saved (pservers' own vars left out)."""
    pulled = _pull_dense(executor, program)
    lookups = _lookup_ops(program)
    touched = _touched(program)
    out, names = Scope(), []
    for var in selected:
        name = var.name
        if name in pulled:
            value = pulled[name]
        elif name in lookups:
            sliced = bool(lookups[name].attr("height_sections"))
            if not (sliced or gather_all_tables):
                continue  # a distributed table: the pservers save their shards (checkpoint_notify)
            value = _gather_table(executor, lookups[name])
        else:
            found = scope.find_var(name)
            value = found.value() if found is not None else None
            if value is None or getattr(value, "values", 0) is None:
                if name not in touched:
                    continue  # optimizer state / learning rate: lives on the pservers
                raise NotFoundError(f"save: variable '{name}' of the trainer program has no value in the scope "
                                    f"(run the trainer's startup program and at least the ops that produce it)")
        out.set(name, value)
        names.append(name)
    return out, names


def save_trainer_vars(executor: Any, dirname: str, program: Program, predicate: Callable[[Variable], bool],
                      filename: str | None, scope: Scope | None, save_vars: Callable[..., None],
                      notify: bool) -> None:
    """``save_vars`` for a trainer program (see the module docstring)."""
    scope = global_scope() if scope is None else scope
    selected = [v for v in program.list_vars() if predicate(v)]
    values, names = _collect(executor, program, selected, scope, gather_all_tables=False)
    save_vars(executor, dirname, program, vars=names, filename=filename, scope=values)
    if notify:
        _notify_pservers(executor, program, dirname)


def inference_program_and_scope(executor: Any, program: Program, pruned: Program,
                                scope: Scope | None) -> tuple[Program, Scope]:
    """``pruned`` (a pruned trainer program) with local lookups, and a scope with its persistables."""
    scope = global_scope() if scope is None else scope
    block = pruned.global_block()
    new_ops = []
    for op in block.ops:
        if op.type != "distributed_lookup_table":
            new_ops.append(op)
            continue
        for ids, out in zip(op.input("Ids"), op.output("Out")):
            attrs = {**get_op_def("lookup_table").default_attrs, "padding_idx": int(op.attr("padding_idx", -1)),
                     "is_sparse": False, "is_distributed": False}
            new_ops.append(Operator(block, "lookup_table", {"Ids": [ids], "W": [op.attr("table_name")]},
                                    {"Out": [out]}, attrs))
    block.ops = new_ops
    pruned._bump()
    selected = [v for v in pruned.list_vars() if v.persistable and v.type not in ("reader", "raw")]
    values, _ = _collect(executor, program, selected, scope, gather_all_tables=True)
    return pruned, values



def is_pserver_program(program: Program) -> bool:
    """Whether ``program`` is a transpiled pserver program (it knows where its vars come from)."""
    return program.meta.origin_of is not None


def load_pserver_vars(executor: Any, dirname: str, program: Program, scope: Scope | None,
                      load_vars: Callable[..., None]) -> None:
    """Load this pserver's rows of the parameters saved in ``dirname`` (see the module docstring)."""
    import os  # noqa: PLC0415
    scope = global_scope() if scope is None else scope
    origin_of: dict[str, list] = program.meta.origin_of or {}
    block = program.global_block()
    full = Program()
    wanted: list[str] = []
    for new, (orig, _, _, _) in origin_of.items():
        if orig not in wanted and os.path.isfile(os.path.join(dirname, _var_filename(orig))):
            v = block.var(new)
            full.global_block().create_var(name=orig, shape=(), dtype=v.dtype, persistable=True, type=v.type)
            wanted.append(orig)
    if not wanted:
        raise NotFoundError(f"load_persistables: '{dirname}' holds none of the variables this pserver hosts "
                            f"(e.g. {sorted(o[0] for o in origin_of.values())[:5]})")
    values = Scope()
    load_vars(executor, dirname, full, vars=wanted, scope=values)
    for new, (orig, offset, rows, _) in origin_of.items():
        if orig in wanted:
            value = values.get(orig)
            scope.set(new, value if int(rows) < 0 else value[int(offset):int(offset) + int(rows)].copy())
    for op in block.ops:  # the pserver's own state file (tables, accumulators) is read when it serves
        if op.type == "listen_and_serv":
            op.attrs["load_dir"] = os.path.abspath(dirname)
    program._bump()


def _var_filename(name: str) -> str:
    from .io import var_filename  # noqa: PLC0415  (io imports this module)
    return var_filename(name)
