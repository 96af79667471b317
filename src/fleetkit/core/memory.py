"""Eager deletion: free each intermediate as soon as no later op of the run reads it.

fluid 1.4 has two ways to save memory: ``memory_optimize`` / ``release_memory``
(transpilers that reuse or release variables) and the executor's garbage collector
(``FLAGS_eager_delete_tensor_gb``).  fleetkit has one mechanism, the second: a
program passed to ``memory_optimize`` or ``release_memory``, or any program when
``FLAGS_eager_delete_tensor_gb`` >= 0, runs with a deletion plan.

The plan is computed once per (prepared program, fetch list).  A variable is freed
after the last step that touches it when it is

- not persistable (parameters, optimizer state, counters stay),
- first touched by an op that *writes* it without reading it (so nothing from a previous
  run or from outside the program is thrown away), or a data variable (fed every run,
  dropped once read, as fluid does),
- not fetched, not in the program's skip set (``memory_optimize(skip_opt_set=...)``).

Programs with sub-blocks (ops whose attributes hold a block) are left alone: their
ops read variables the outer block cannot see.  Freed variables are gone from the
scope after the run, as with fluid's garbage collector: fetch what you need.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from ..env import eager_delete_tensor_gb
from ..errors import InvalidArgumentError
from .framework import Block, Program

__all__ = ["memory_optimize", "release_memory", "deletion_plan", "eager_deletion_on"]

def memory_optimize(input_program: Program, skip_opt_set: Iterable[str] | None = None, print_log: bool = False,
                    level: int = 0, skip_grads: bool = False) -> None:
    """Run ``input_program`` with eager deletion (fluid's variable-reuse transpiler is not needed:
    freeing at last use gives the same peak); ``skip_opt_set`` names variables to keep."""
    _mark(input_program, skip_opt_set, "memory_optimize")
    if level not in (0, 1):
        raise InvalidArgumentError(f"memory_optimize: level must be 0 or 1, got {level}")
    if print_log:
        print(f"memory_optimize: program {input_program._id} frees intermediates at their last use")


def release_memory(input_program: Program, skip_opt_set: Iterable[str] | None = None) -> None:
    """Same as ``memory_optimize`` here: intermediates are freed after their last use."""
    _mark(input_program, skip_opt_set, "release_memory")


def _mark(program: Program, skip: Iterable[str] | None, fn: str) -> None:
    if not isinstance(program, Program):
        raise InvalidArgumentError(f"{fn}: input_program must be a Program, got {type(program).__name__}")
    names = sorted({getattr(v, "name", v) for v in (skip or ())})
    if not all(isinstance(n, str) for n in names):
        raise InvalidArgumentError(f"{fn}: skip_opt_set must hold variable names, got {skip!r}")
    program.meta.eager_delete = True
    program.meta.eager_delete_skip = tuple(sorted(set(program.meta.eager_delete_skip) | set(names)))
    program._bump()


def eager_deletion_on(program: Program, flag_gb: float | None = None) -> bool:
    """Whether ``program`` runs with eager deletion (marked, or the flag is >= 0)."""
    if program.meta.eager_delete:
        return True
    return (eager_delete_tensor_gb() if flag_gb is None else flag_gb) >= 0


def _has_sub_blocks(block: Block) -> bool:
    return any(isinstance(v, Block) for op in block.ops for v in op.attrs.values())


def deletion_plan(block: Block, step_ops: Sequence[Sequence[Any]], keep: Iterable[str]) -> list[tuple[str, ...]] | None:
    """For each step (the ops it runs, in order), the variables to drop after it; None: no plan."""
    if _has_sub_blocks(block):
        return None
    keep = set(keep) | set(block.program.meta.eager_delete_skip)
    first_is_write: dict[str, bool] = {}
    last_step: dict[str, int] = {}
    for si, ops in enumerate(step_ops):
        for op in ops:
            reads, writes = op.input_arg_names, op.output_arg_names
            for n in reads:
                first_is_write.setdefault(n, False)
                last_step[n] = si
            for n in writes:
                first_is_write.setdefault(n, n not in reads)
                last_step[n] = si
    plan: list[list[str]] = [[] for _ in step_ops]
    for name, si in last_step.items():
        if name in keep:
            continue
        var = block._find_var_recursive(name)
        if var is None or var.persistable or var.type not in ("lod_tensor", "selected_rows"):
            continue
        if first_is_write.get(name) or var.is_data:  # data vars are fed each run
            plan[si].append(name)
    return [tuple(p) for p in plan]

