"""Executor: runs a Program's global block op by op against a Scope.

A program is *prepared* once (kernels looked up, per-op contexts built, feed
checks computed) and cached by (program id, version), so a training loop pays
only the kernel calls on each step.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..env import FLAGS_CHECK_NAN_INF, eager_delete_tensor_gb, flag
from ..errors import DTypeError, FleetkitError, InvalidArgumentError, NotFoundError, OpError, ShapeError
from .backend import CPUPlace, Place, to_numpy
from .fetch_result import as_fetch_result
from .framework import Program, Variable, default_main_program
from .fusion import failed_context, fuse_steps
from .memory import deletion_plan, eager_deletion_on
from .nan_inf import checked_steps, wanted
from .registry import KernelContext, get_op_def
from .scope import LoDTensor, Scope, SelectedRows, check_lod, global_scope, lengths_to_offsets


class _Prepared:
    __slots__ = ("steps", "ctxs", "version", "env", "feed_vars", "fetch_names", "reseed", "gc_plans")

    def __init__(self, program: Program, place: Place, block_idx: int = 0) -> None:
        self.version = program._version
        #: the scope dict the contexts point at (re-pointed only when another scope runs)
        self.env: dict | None = None
        #: feed key -> Variable, and fetch_list item names already checked to exist
        self.feed_vars: dict[str, Variable] = {}
        self.fetch_names: set[str] = set()
        self.steps: list[tuple[Any, KernelContext]] = []
        #: random ops with their own nonzero ``seed``: as in fluid, every run draws the same
        #: numbers, so their generator restarts from the seed before each run
        self.reseed: list[tuple[KernelContext, int]] = []
        #: fetch names -> eager-deletion plan (core/memory.py), built on first use
        self.gc_plans: dict[tuple[str, ...], Any] = {}
        xp = place.xp
        for idx, op in enumerate(program.block(block_idx).ops):
            opdef = get_op_def(op.type)
            rng = _op_rng(program, op, idx) if opdef.random else None
            ctx = KernelContext(op, xp, rng, place)
            self.steps.append((opdef.forward, ctx))
            if opdef.random and int(op.attrs.get("seed", 0) or 0):
                self.reseed.append((ctx, int(op.attrs["seed"])))
        self.ctxs = [c for _, c in self.steps]


def _reseed(prepared: _Prepared) -> None:
    for ctx, seed in prepared.reseed:
        ctx.rng = np.random.default_rng(seed)


def _op_rng(program: Program, op: Any, idx: int) -> np.random.Generator:
    """Seeded from the op's ``seed`` attr, else the program's random_seed, else entropy."""
    seed = int(op.attrs.get("seed", 0) or 0)
    if seed == 0 and program.random_seed:
        seed = int(program.random_seed) * 1000003 + idx
    return np.random.default_rng(seed if seed else None)


#: set by ``fleetkit.profiler`` while profiling: ``timer(prepared, run_steps)`` runs the ops one by one, timed
_op_timer: Any = None

#: called as ``hook(executor)`` by ``Executor.close()``; core cannot import the subsystems
#: (pserver client, ...) that have something to finish there, so they register themselves.
_CLOSE_HOOKS: list[Any] = []


def register_close_hook(hook: Any) -> Any:
    """Run ``hook(executor)`` in every ``Executor.close()`` (once per hook; returns the hook)."""
    if hook not in _CLOSE_HOOKS:
        _CLOSE_HOOKS.append(hook)
    return hook


class Executor:
    """Runs programs on a place: ``Executor(CPUPlace()).run(program, feed, fetch_list)``.

    ``check_nan_inf``: after each op, stop at the first NaN/inf output (or fed value) with a
    ``NanInfError`` naming the op, its block and index, and the variable (``core/nan_inf.py``).
    None (the default) reads ``FLAGS_check_nan_inf``; a program's ``_meta["check_nan_inf"]``
    (set by ``DistributedStrategy.check_nan_inf``) turns it on for that program.
    """

    def __init__(self, place: Place | None = None, check_nan_inf: bool | None = None) -> None:
        self.place = place or CPUPlace()
        self._cache: dict[int, _Prepared] = {}
        self._gc_flag = eager_delete_tensor_gb()  # FLAGS_eager_delete_tensor_gb, read once
        self.check_nan_inf = flag(FLAGS_CHECK_NAN_INF) if check_nan_inf is None else bool(check_nan_inf)

    def close(self) -> None:
        """Drop the prepared programs and run the ``register_close_hook`` hooks (fluid's
        ``Executor.close()`` is where a trainer tells the pservers it is done)."""
        self._cache.clear()
        for hook in list(_CLOSE_HOOKS):
            hook(self)

    def _prepare(self, program: Program, use_cache: bool, block_idx: int = 0) -> _Prepared:
        key = program._id if block_idx == 0 else (program._id, block_idx)
        p = self._cache.get(key) if use_cache else None
        if p is None or p.version != program._version:
            p = _Prepared(program, self.place, block_idx)
            p.steps = fuse_steps(p.steps)  # ctxs keeps every op's context (all get the env)
            if use_cache:
                self._cache[key] = p
        return p

    def run_block(self, program: Program, block_idx: int, scope: Scope | None = None) -> None:
        """Run the ops of one block of ``program`` against ``scope`` (no feed/fetch).

        Parameter servers use this for their optimize blocks.
        """
        scope = global_scope() if scope is None else scope
        prepared = self._prepare(program, True, block_idx)
        _bind(prepared, scope._vars)
        _reseed(prepared)
        self._run_steps(prepared.steps)

    def run(self, program: Program | None = None, feed: dict | None = None,
            fetch_list: Sequence[Any] | None = None, feed_var_name: str = "feed",
            fetch_var_name: str = "fetch", scope: Scope | None = None,
            return_numpy: bool = True, use_program_cache: bool = True) -> list[Any]:
        """Feed ``feed`` (name -> array/LoDTensor/(values, lengths)), run every op,
        return the values of ``fetch_list`` (numpy arrays, or LoDTensors if
        ``return_numpy`` is False)."""
        program = default_main_program() if program is None else program
        if hasattr(program, "_executor_run"):  # CompiledProgram and friends
            return program._executor_run(self, feed, fetch_list, scope, return_numpy)
        if not isinstance(program, Program):
            raise InvalidArgumentError(f"Executor.run: program must be a Program, got {type(program).__name__}")
        scope = global_scope() if scope is None else scope
        block = program.global_block()
        prepared = self._prepare(program, use_program_cache)
        fetch_names = [_fetch_name(block, f, prepared.fetch_names) for f in (fetch_list or [])]
        env = scope._vars
        if isinstance(feed, (list, tuple)):  # one feed dict per place (DataFeeder, PyReader): one place here
            if len(feed) != 1:
                raise InvalidArgumentError(f"Executor.run: feed is a list of {len(feed)} feed dicts; fleetkit "
                                           f"runs one place per process, so give one dict")
            feed = feed[0]
        if feed:
            feed_vars = prepared.feed_vars
            for name, value in feed.items():
                key = name.name if isinstance(name, Variable) else name
                var = feed_vars.get(key)
                if var is None:
                    var = block._find_var_recursive(key)
                    if var is None:
                        raise NotFoundError(f"feed: variable '{name}' is not in the program")
                    feed_vars[key] = var
                env[var.name] = convert_feed(var, value, self.place)
        _bind(prepared, env)
        _reseed(prepared)
        if _op_timer is not None:
            _op_timer(prepared, self._run_steps)
        elif eager_deletion_on(program, self._gc_flag):
            self._run_steps(prepared.steps, _gc_plan(prepared, block, fetch_names), env)
        else:
            self._run_steps(prepared.steps)
        return [self._fetch(env, n, return_numpy) for n in fetch_names]

    def _run_steps(self, steps: list, plan: list | None = None, env: dict | None = None) -> None:
        """Run ``steps``; with a deletion ``plan``, drop ``plan[i]``'s names from ``env`` after step i."""
        if self.check_nan_inf or (steps and steps[0][1].op.block.program._meta):  # off: one test per run
            if wanted(self.check_nan_inf, steps):
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
            raise OpError(f"op #{_op_index(op, i)} {op.type} failed: {type(e).__name__}: {e}\n  op: {op}\n"
                          f"  inputs: {_describe_inputs(ctx)}") from e

    def _fetch(self, env: dict, name: str, return_numpy: bool) -> Any:
        if name not in env:
            raise NotFoundError(f"fetch: variable '{name}' has no value after the run")
        v = env[name]
        if isinstance(v, SelectedRows):
            return as_fetch_result(to_numpy(v.to_dense())) if return_numpy else v
        if isinstance(v, LoDTensor):
            return as_fetch_result(_host_copy(v.values)) if return_numpy else LoDTensor(_host_copy(v.values), v._lod)
        return as_fetch_result(_host_copy(v)) if return_numpy else LoDTensor(_host_copy(v))

    # train_from_dataset / infer_from_dataset: the work is in trainer.py
    def train_from_dataset(self, program: Program | None = None, dataset: Any = None, scope: Scope | None = None,
                           thread: int = 0, debug: bool = False, fetch_list: Sequence[Any] | None = None,
                           fetch_info: Sequence[str] | None = None, print_period: int = 100) -> Any:
        """Train on every batch of ``dataset`` with ``thread`` Hogwild workers sharing the
        parameters (``thread`` <= 0: the dataset's ``set_thread``); thread 0 prints the
        ``fetch_list`` values, labelled by ``fetch_info``, every ``print_period`` batches."""
        from .trainer import run_from_dataset
        return run_from_dataset(self, program, dataset, scope, thread, debug, fetch_list, fetch_info,
                                print_period, infer=False)

    def infer_from_dataset(self, program: Program | None = None, dataset: Any = None, scope: Scope | None = None,
                           thread: int = 0, debug: bool = False, fetch_list: Sequence[Any] | None = None,
                           fetch_info: Sequence[str] | None = None, print_period: int = 100) -> Any:
        """Like ``train_from_dataset`` but without backward and optimize ops (nothing is updated)."""
        from .trainer import run_from_dataset
        return run_from_dataset(self, program, dataset, scope, thread, debug, fetch_list, fetch_info,
                                print_period, infer=True)


def _gc_plan(prepared: _Prepared, block: Any, fetch_names: list[str]) -> list | None:
    """The eager-deletion plan for this fetch list (each step lists the ops it runs)."""
    key = tuple(fetch_names)
    if key not in prepared.gc_plans:
        index = {id(op): k for k, op in enumerate(block.ops)}
        starts = [index[id(ctx.op)] for _, ctx in prepared.steps] + [len(block.ops)]
        step_ops = [block.ops[a:b] for a, b in zip(starts, starts[1:])]
        prepared.gc_plans[key] = deletion_plan(block, step_ops, fetch_names)
    return prepared.gc_plans[key]


def _host_copy(a: Any) -> np.ndarray:
    """A host array that does not alias the scope's (optimizers update parameters in place)."""
    h = to_numpy(a)
    return h.copy() if h is a else h


def _op_index(op: Any, default: int) -> int:
    """The op's position in its block (steps may be fused, so the step index can differ)."""
    try:
        return next(k for k, o in enumerate(op.block.ops) if o is op)
    except (AttributeError, StopIteration):
        return default


def _bind(prepared: _Prepared, env: dict) -> None:
    """Point every op context at ``env`` (skipped when they already do)."""
    if prepared.env is not env:
        for ctx in prepared.ctxs:
            ctx.env = env
        prepared.env = env


def _fetch_name(block: Any, f: Any, known: set[str] | None = None) -> str:
    name = f.name if isinstance(f, Variable) else str(f)
    if known is not None and name in known:
        return name
    if block._find_var_recursive(name) is None:
        raise NotFoundError(f"fetch_list: variable '{name}' is not in the program")
    if known is not None:
        known.add(name)
    return name


def _describe_inputs(ctx: KernelContext) -> str:
    parts = []
    for slot, names in ctx.ins.items():
        for n in names:
            v = ctx.env.get(n)
            v = v.values if isinstance(v, LoDTensor) else v
            shape = getattr(v, "shape", None)
            parts.append(f"{slot}={n}{list(shape) if shape is not None else ''}")
    return ", ".join(parts)


def convert_feed(var: Variable, value: Any, place: Place) -> Any:
    """Check one fed value against its variable and convert it for ``place``."""
    if value.__class__ is np.ndarray and not var.lod_level and place.__class__ is CPUPlace:
        # the common case, a host batch for a dense var on the host: same checks, fewer calls
        arr = value if value.dtype == _dtype(var.dtype) else _check_dtype(var, value)
        _check_shape(var, arr)
        return arr
    lod = None
    if isinstance(value, LoDTensor):
        arr, lod = value.values, value._lod  # not copied: the fed tensor shares it (kernels never edit a LoD)
    elif isinstance(value, tuple) and len(value) == 2 and var.lod_level > 0:
        arr, lengths = value
        lengths = lengths if lengths and isinstance(lengths[0], (list, tuple, np.ndarray)) else [lengths]
        lod = [lengths_to_offsets(lv) for lv in lengths]
    else:
        arr = value
    arr = arr if hasattr(arr, "__array_interface__") or hasattr(arr, "__cuda_array_interface__") else np.asarray(arr)
    arr = _check_dtype(var, arr)
    _check_shape(var, arr)
    if var.lod_level > 0 and not lod:
        raise InvalidArgumentError(
            f"feed: variable '{var.name}' has lod_level {var.lod_level}: feed a LoDTensor "
            f"(fleetkit.create_lod_tensor) or a (values, sequence_lengths) tuple")
    if lod:
        why = check_lod(lod, arr.shape[0] if arr.ndim else 0)
        if why:
            raise InvalidArgumentError(f"feed: the LoD {lod} of variable '{var.name}' does not match its "
                                       f"values of shape {list(arr.shape)}: {why}")
    arr = place.to_device(arr)
    return LoDTensor._of(arr, lod) if lod else arr


_DTYPES: dict[Any, np.dtype] = {}


def _dtype(name: Any) -> np.dtype:
    """``np.dtype(name)``, cached (a feed checks it every step)."""
    d = _DTYPES.get(name)
    if d is None:
        d = _DTYPES[name] = np.dtype(name)
    return d


def _check_dtype(var: Variable, arr: Any) -> Any:
    want = _dtype(var.dtype)
    if arr.dtype == want:
        return arr
    if arr.dtype.kind in "OUSV" or not np.can_cast(arr.dtype, want, casting="same_kind"):
        raise DTypeError(f"feed: variable '{var.name}' expects dtype {want.name}, got {arr.dtype.name} "
                         f"(shape {list(arr.shape)})")
    return arr.astype(want)


def _check_shape(var: Variable, arr: Any) -> None:
    want = var.shape
    if not want or not var.is_data:
        return
    got = arr.shape
    if len(got) == len(want):
        for w, g in zip(want, got):
            if w != g and w >= 0:
                break
        else:
            return
    raise ShapeError(f"feed: variable '{var.name}' expects shape {list(want)} (-1 = any), "
                     f"got {list(got)}")
