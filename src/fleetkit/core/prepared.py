"""A prepared program and the loop that runs it: the runtime shared by ``Executor.run``
(``core/executor.py``) and ``train_from_dataset``'s workers (``core/trainer.py``).

Preparing looks each op's kernel up and builds its context once; a run then only
points the contexts at the scope, re-seeds seeded random ops and calls the kernels.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import FleetkitError, NotFoundError, OpError
from .backend import Place, to_numpy
from .fetch_result import FetchArray, as_fetch_result
from .framework import Program, Variable
from .fusion import failed_context
from .memory import deletion_plan
from .nan_inf import checked_steps, wanted
from .registry import KernelContext, get_op_def
from .scope import LoDTensor, SelectedRows

__all__ = ["PreparedProgram", "bind", "fetch_value", "fetch_values", "gc_plan", "reseed", "run_steps"]


class PreparedProgram:
    """One block of a program made ready to run: a kernel and a context per op (fused
    steps share their members' contexts), feed and fetch checks remembered."""

    __slots__ = ("steps", "ctxs", "version", "env", "feed_vars", "feed_passed", "fetch_names", "reseed",
                 "gc_plans")

    def __init__(self, program: Program, place: Place, block_idx: int = 0) -> None:
        self.version = program._version
        #: the scope dict the contexts point at (re-pointed only when another scope runs)
        self.env: dict | None = None
        #: feed key -> Variable, and fetch_list item names already checked to exist
        self.feed_vars: dict[str, Variable] = {}
        #: feed key -> the (value shape, dtype, var shape, dtype, lod level, is_data) a host array
        #: last passed ``convert_feed`` with unchanged (``Executor._feed`` then skips the checks)
        self.feed_passed: dict[str, tuple] = {}
        self.fetch_names: set[str] = set()
        self.steps: list[tuple[Any, KernelContext]] = []
        #: generators restored to their seeded state before each run, so those ops draw the same
        #: numbers every run (``_repeats_every_run`` says which); with the state, not the seed,
        #: a restore costs ~3 us and keeps the generator object (sub-block caches key on it)
        self.reseed: list[tuple[np.random.Generator, dict]] = []
        #: fetch names -> eager-deletion plan (core/memory.py), built on first use
        self.gc_plans: dict[tuple[str, ...], Any] = {}
        xp = place.xp
        block = program.block(block_idx)
        for idx, op in enumerate(block.ops):
            opdef = get_op_def(op.type)
            rng = _op_rng(program, op, idx) if opdef.random else None
            ctx = KernelContext(op, xp, rng, place)
            self.steps.append((opdef.forward, ctx))
            if rng is not None and _repeats_every_run(program, block, op):
                self.reseed.append((rng, rng.bit_generator.state))
        self.ctxs = [c for _, c in self.steps]


def reseed(prepared: PreparedProgram) -> None:
    """Put back the seeded state of each generator that repeats every run (fluid: same numbers)."""
    for rng, state in prepared.reseed:
        rng.bit_generator.state = state


def _repeats_every_run(program: Program, block: Any, op: Any) -> bool:
    """Whether a random op draws the same numbers on every run, as in fluid 1.4.

    An op with its own nonzero ``seed`` does.  In a program with ``random_seed`` set, so does
    one that only writes persistable variables: fluid's initializers copy the program's seed
    into their op, so running a seeded startup program again gives the same parameters.  Other
    random ops of a seeded program (dropout, sampling: fluid leaves their seed at 0) go on
    drawing from their seeded stream, fresh numbers each step, the same sequence each process.
    """
    if int(op.attrs.get("seed", 0) or 0):
        return True
    if not program.random_seed:
        return False
    outs = [block._find_var_recursive(n) for n in op.output_arg_names]
    return bool(outs) and all(v is not None and v.persistable for v in outs)


def _op_rng(program: Program, op: Any, idx: int) -> np.random.Generator:
    """Seeded from the op's ``seed`` attr, else the program's random_seed, else entropy."""
    seed = int(op.attrs.get("seed", 0) or 0)
    if seed == 0 and program.random_seed:
        seed = int(program.random_seed) * 1000003 + idx
    return np.random.default_rng(seed if seed else None)


def gc_plan(prepared: PreparedProgram, block: Any, fetch_names: list[str]) -> list | None:
    """The eager-deletion plan for this fetch list (each step lists the ops it runs)."""
    key = tuple(fetch_names)
    if key not in prepared.gc_plans:
        index = {id(op): k for k, op in enumerate(block.ops)}
        starts = [index[id(ctx.op)] for _, ctx in prepared.steps] + [len(block.ops)]
        step_ops = [block.ops[a:b] for a, b in zip(starts, starts[1:])]
        prepared.gc_plans[key] = deletion_plan(block, step_ops, fetch_names)
    return prepared.gc_plans[key]


def host_copy(a: Any) -> np.ndarray:
    """A host array that does not alias the scope's (optimizers update parameters in place)."""
    h = to_numpy(a)
    return h.copy() if h is a else h


def op_index(op: Any, default: int) -> int:
    """The op's position in its block (steps may be fused, so the step index can differ)."""
    try:
        return next(k for k, o in enumerate(op.block.ops) if o is op)
    except (AttributeError, StopIteration):
        return default


def bind(prepared: PreparedProgram, env: dict) -> None:
    """Point every op context at ``env`` (skipped when they already do)."""
    if prepared.env is not env:
        for ctx in prepared.ctxs:
            ctx.env = env
        prepared.env = env


def describe_inputs(ctx: KernelContext) -> str:
    """The op's inputs as ``slot=name[shape]`` (for error messages)."""
    parts = []
    for slot, names in ctx.ins.items():
        for n in names:
            v = ctx.env.get(n)
            v = v.values if isinstance(v, LoDTensor) else v
            shape = getattr(v, "shape", None)
            parts.append(f"{slot}={n}{list(shape) if shape is not None else ''}")
    return ", ".join(parts)


def run_steps(steps: list, check_nan_inf: bool = False, plan: list | None = None, env: dict | None = None) -> None:
    """Run ``steps``; with a deletion ``plan``, drop ``plan[i]``'s names from ``env`` after step i.
    ``check_nan_inf`` (or a program marked for it) checks every output (``core/nan_inf.py``)."""
    if wanted(check_nan_inf, steps):
        steps = checked_steps(steps)
    i = 0
    try:
        if plan is None:
            for i, (kernel, ctx) in enumerate(steps):
                kernel(ctx)
        else:
            assert env is not None
            for i, (kernel, ctx) in enumerate(steps):
                kernel(ctx)
                for name in plan[i]:
                    env.pop(name, None)
    except FleetkitError:
        raise
    except Exception as e:
        ctx = failed_context(e) or steps[i][1]  # a fused step names the member that failed
        op = ctx.op
        raise OpError(f"op #{op_index(op, i)} {op.type} failed: {type(e).__name__}: {e}\n  op: {op}\n"
                      f"  inputs: {describe_inputs(ctx)}") from e


def fetch_value(env: dict, name: str, return_numpy: bool) -> Any:
    """The fetched value of ``name`` after a run: a host copy (never the scope's array)."""
    if name not in env:
        raise NotFoundError(f"fetch: variable '{name}' has no value after the run")
    v = env[name]
    if isinstance(v, SelectedRows):
        return as_fetch_result(to_numpy(v.to_dense())) if return_numpy else v
    if isinstance(v, LoDTensor):
        return as_fetch_result(host_copy(v.values)) if return_numpy else LoDTensor(host_copy(v.values), v._lod)
    return as_fetch_result(host_copy(v)) if return_numpy else LoDTensor(host_copy(v))


def fetch_values(env: dict, names: list[str], return_numpy: bool) -> list[Any]:
    """``fetch_value`` of each name; a plain host array (the common case) is copied here
    without the calls (a step's arrays leave each call's code and data cold in the caches)."""
    out = []
    for name in names:
        v = env.get(name)
        out.append(v.copy().view(FetchArray) if v.__class__ is np.ndarray and return_numpy
                   else fetch_value(env, name, return_numpy))
    return out
