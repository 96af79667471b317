"""Executor: runs a Program's global block op by op against a Scope.

A program is *prepared* once (``core/prepared.py``: kernels looked up, per-op
contexts built, feed checks computed) and cached by (program id, version), so a
training loop pays only the kernel calls on each step.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from ..env import FLAGS_CHECK_NAN_INF, eager_delete_tensor_gb, flag
from ..errors import DTypeError, InvalidArgumentError, NotFoundError, ShapeError
from .backend import CPUPlace, Place, limit_math_threads
from .framework import Program, Variable, default_main_program
from .fusion import fuse_steps
from .memory import eager_deletion_on
from .prepared import PreparedProgram, bind, fetch_values, gc_plan, reseed, run_steps
from .scope import LoDTensor, Scope, check_lod, global_scope, lengths_to_offsets

log = logging.getLogger(__name__)


#: set by ``fleetkit.profiler`` while profiling (``set_op_timer``): ``timer(prepared, run_steps)``
#: runs the ops one by one, timed
_op_timer: Any = None


def set_op_timer(timer: Any) -> None:
    """Route every ``Executor.run`` through ``timer(prepared, run_steps)`` (None: run normally)."""
    global _op_timer
    _op_timer = timer

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
    None (the default) reads ``FLAGS_check_nan_inf``; a program's ``meta.check_nan_inf``
    (set by ``DistributedStrategy.check_nan_inf``) turns it on for that program.
    """

    def __init__(self, place: Place | None = None, check_nan_inf: bool | None = None) -> None:
        self.place = place or CPUPlace()
        limit_math_threads()   # FLAGS_paddle_num_threads, once per process (backend.py says why)
        self._cache: dict[int, PreparedProgram] = {}
        self._gc_flag = eager_delete_tensor_gb()  # FLAGS_eager_delete_tensor_gb, read once
        self.check_nan_inf = flag(FLAGS_CHECK_NAN_INF) if check_nan_inf is None else bool(check_nan_inf)

    def close(self) -> None:
        """Drop the prepared programs and run the ``register_close_hook`` hooks (fluid's
        ``Executor.close()`` is where a trainer tells the pservers it is done)."""
        self._cache.clear()
        for hook in list(_CLOSE_HOOKS):
            hook(self)

    def _prepare(self, program: Program, use_cache: bool, block_idx: int = 0) -> PreparedProgram:
        key = program._id if block_idx == 0 else (program._id, block_idx)
        p = self._cache.get(key) if use_cache else None
        if p is None or p.version != program._version:
            p = PreparedProgram(program, self.place, block_idx)
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
        bind(prepared, scope._vars)
        reseed(prepared)
        run_steps(prepared.steps, self.check_nan_inf)

    def run(self, program: Program | None = None, feed: dict | None = None,
            fetch_list: Sequence[Any] | None = None, feed_var_name: str = "feed",
            fetch_var_name: str = "fetch", scope: Scope | None = None,
            return_numpy: bool = True, use_program_cache: bool = True) -> list[Any]:
        """Feed ``feed`` (name -> array/LoDTensor/(values, lengths)), run every op,
        return the values of ``fetch_list`` (numpy arrays, or LoDTensors if
        ``return_numpy`` is False)."""
        program = default_main_program() if program is None else program
        if program.__class__ is not Program:  # the common case skips the next two checks
            if hasattr(program, "_executor_run"):  # CompiledProgram and friends
                return program._executor_run(self, feed, fetch_list, scope, return_numpy)
            if not isinstance(program, Program):
                raise InvalidArgumentError(f"Executor.run: program must be a Program, got {type(program).__name__}")
        scope = global_scope() if scope is None else scope
        prepared = self._cache.get(program._id) if use_program_cache else None
        if prepared is None or prepared.version != program._version:
            prepared = self._prepare(program, use_program_cache)
        # a step of a small model is a few hundred us and its arrays evict the interpreter's
        # data from the caches: each object and call this path touches costs a cache miss or
        # two, so the common case (a Variable or name fetched before) takes no call
        known = prepared.fetch_names
        fetch_names = []
        for f in fetch_list or ():
            name = f.name if f.__class__ is Variable else f
            fetch_names.append(name if name.__class__ is str and name in known
                               else _fetch_name(program.global_block(), f, known))
        env = scope._vars
        if feed.__class__ is not dict and isinstance(feed, (list, tuple)):
            # one feed dict per place (DataFeeder, PyReader): one place here
            if len(feed) != 1:
                raise InvalidArgumentError(f"Executor.run: feed is a list of {len(feed)} feed dicts; fleetkit "
                                           f"runs one place per process, so give one dict")
            feed = feed[0]
        if feed:
            self._feed(prepared, program, feed, env)
        if prepared.env is not env:
            bind(prepared, env)
        if prepared.reseed:
            reseed(prepared)
        if _op_timer is not None:
            _op_timer(prepared, lambda steps: run_steps(steps, self.check_nan_inf))
        elif eager_deletion_on(program, self._gc_flag):
            run_steps(prepared.steps, self.check_nan_inf, gc_plan(prepared, program.global_block(), fetch_names),
                      env)
        else:
            run_steps(prepared.steps, self.check_nan_inf)
        return fetch_values(env, fetch_names, return_numpy)

    def _feed(self, prepared: PreparedProgram, program: Program, feed: dict, env: dict) -> None:
        """Put each fed value, checked and converted (``convert_feed``), into ``env``.

        A host ndarray with the shape and dtype that last passed unchanged for its variable
        (the same batch shape every step) goes in as it is: ``convert_feed`` would return
        it after the same checks, which depend only on those and on the variable, also
        compared (its shape / dtype / lod level are plain attributes a script may change)."""
        feed_vars, passed = prepared.feed_vars, prepared.feed_passed
        host = self.place.__class__ is CPUPlace
        for name, value in feed.items():
            key = name if name.__class__ is str else name.name if isinstance(name, Variable) else name
            var = feed_vars.get(key)
            if var is None:
                var = program.global_block()._find_var_recursive(key)
                if var is None:
                    raise NotFoundError(f"feed: variable '{name}' is not in the program")
                feed_vars[key] = var
            if value.__class__ is np.ndarray and host:
                sig = (value.shape, value.dtype, var.shape, var.dtype, var.lod_level, var.is_data)
                if passed.get(key) == sig:
                    env[var.name] = value
                    continue
                arr = convert_feed(var, value, self.place, loose_shape=True)
                if arr is value:
                    passed[key] = sig
            else:
                arr = convert_feed(var, value, self.place, loose_shape=True)
            env[var.name] = arr

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


def _fetch_name(block: Any, f: Any, known: set[str] | None = None) -> str:
    name = f.name if isinstance(f, Variable) else str(f)
    if known is not None and name in known:
        return name
    if block._find_var_recursive(name) is None:
        raise NotFoundError(f"fetch_list: variable '{name}' is not in the program")
    if known is not None:
        known.add(name)
    return name


def convert_feed(var: Variable, value: Any, place: Place, loose_shape: bool = False) -> Any:
    """Check one fed value against its variable and convert it for ``place``.

    ``loose_shape`` (a feed dict given to ``Executor.run``): fluid 1.4 did not check feeds,
    and its scripts declare placeholder shapes (``shape=[-1, 1, 1]`` fed ``[batch, steps, 1]``;
    ``shape=[1]`` for an initial state fed ``[layers, batch, hidden]``; the transformer's
    ``[batch, max_length, 1]`` fed ``[batch, this batch's length, 1]``).  Such a value is
    used as fed, with one warning per variable naming both shapes; an op it does not fit
    then fails naming its inputs' shapes.  Readers and datasets stay strict."""
    if value.__class__ is np.ndarray and not var.lod_level and place.__class__ is CPUPlace:
        # the common case, a host batch for a dense var on the host: same checks, fewer calls
        arr = value if value.dtype == _dtype(var.dtype) else _check_dtype(var, value)
        _check_shape(var, arr, loose_shape)
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
    _check_shape(var, arr, loose_shape)
    if var.lod_level > 0 and not lod and loose_shape:
        _warn_loose(var, "is declared with lod_level %d and fed a plain array; using it without sequences "
                    "(no LoD)", var.lod_level)   # fluid 1.4's transformer feeds padded batches so
    elif var.lod_level > 0 and not lod:
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


def _warn_loose(var: Variable, what: str, *args: Any) -> None:
    said = var.__dict__.setdefault("_loose_feeds_said", set())   # on the variable: it goes with its program
    if what not in said:                  # once per variable: a training loop feeds it every step
        said.add(what)
        log.warning("feed: variable '%s' " + what + ", as fluid 1.4 did (later fluid versions refuse this)",
                    var.name, *args)


def _warn_loose_shape(var: Variable, got: tuple[int, ...]) -> None:
    _warn_loose(var, "is declared with shape %s and fed %s; using the fed shape", list(var.shape), list(got))


def _check_dtype(var: Variable, arr: Any) -> Any:
    want = _dtype(var.dtype)
    if arr.dtype == want:
        return arr
    if arr.dtype.kind in "OUSV" or not np.can_cast(arr.dtype, want, casting="same_kind"):
        raise DTypeError(f"feed: variable '{var.name}' expects dtype {want.name}, got {arr.dtype.name} "
                         f"(shape {list(arr.shape)})")
    return arr.astype(want)


def _check_shape(var: Variable, arr: Any, loose: bool = False) -> None:
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
    if loose:
        _warn_loose_shape(var, got)
        return
    raise ShapeError(f"feed: variable '{var.name}' expects shape {list(want)} (-1 = any), "
                     f"got {list(got)}")
