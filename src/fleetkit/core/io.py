"""Save and load variables, parameters, persistables and inference models (fluid 1.4 API).

Values come from (and go to) ``global_scope()``; a keyword-only ``scope=`` picks another
scope (a fleetkit extension).  Layouts on disk are described in docs/formats.md:

- parameter files: one file per variable in ``dirname`` (named after the variable, see
  ``var_filename``), or every variable in one ``filename`` in program order;
- ``__model__``: a serialized ``fleetkit.proto.ProgramDesc`` whose
  ``feed_target_names``/``fetch_target_names`` say what to feed and fetch.

Loading reads and checks every file before touching the scope, so a failed load leaves
the scope as it was.  Program <-> ``ProgramDesc`` conversion (``program_to_desc``,
``program_from_desc``, ``serialize_program``, ``deserialize_program``) lives in
``program_desc.py`` and is re-exported here.  Transpiled parameter-server programs (a
trainer's, a pserver's) are saved and loaded as fluid 1.4 does: see ``io_distributed.py``.
"""
from __future__ import annotations

import os
from typing import Any, BinaryIO, Callable, Iterable, Sequence

import numpy as np

from ..errors import DTypeError, InvalidArgumentError, NotFoundError, ShapeError
from ..proto.codec import TensorFormatError, TensorReader, write_lod_tensor, write_selected_rows
from .backend import CPUPlace, to_numpy
from .framework import EMPTY_VAR, Block, Parameter, Program, Variable, default_main_program
from .io_distributed import (inference_program_and_scope, is_pserver_program, is_trainer_program, load_pserver_vars,
                             save_trainer_vars, trainer_program_for)
from .program_desc import (deserialize_program, parse_program_desc, program_from_desc, program_to_desc,
                           serialize_program)
from .pyreader import PyReader
from .scope import LoDTensor, Scope, SelectedRows, check_lod, global_scope

__all__ = [
    "PyReader", "TensorFormatError", "deserialize_program", "get_inference_program", "get_program_parameter",
    "get_program_persistable_vars", "is_parameter", "is_persistable", "load_inference_model",
    "load_params", "load_persistables", "load_vars", "parse_program_desc", "program_from_desc", "program_to_desc",
    "prune_program", "save_inference_model", "save_params", "save_persistables", "save_vars",
    "serialize_program", "var_filename",
]

MODEL_FILENAME = "__model__"
#: variable types that hold no tensor worth saving (fluid skips the same kinds)
_UNSAVED_TYPES = frozenset({"feed_minibatch", "fetch_list", "reader", "raw"})


# ---------------------------------------------------------------- predicates
def is_parameter(var: Variable) -> bool:
    """True for trainable-or-not parameters (``Parameter`` instances)."""
    return isinstance(var, Parameter)


def is_persistable(var: Variable) -> bool:
    """True for persistable variables that hold a tensor (feed/fetch/reader vars excluded)."""
    return bool(var.persistable) and var.type not in _UNSAVED_TYPES


def get_program_parameter(program: Program) -> list[Variable]:
    """Every parameter of ``program``, in program order."""
    return [v for v in program.list_vars() if is_parameter(v)]


def get_program_persistable_vars(program: Program) -> list[Variable]:
    """Every persistable variable of ``program``, in program order."""
    return [v for v in program.list_vars() if is_persistable(v)]


# -------------------------------------------------------------------- pruning
def prune_program(program: Program, targets: Sequence[Any],
                  feeded_var_names: Sequence[str] | None = None) -> Program:
    """A test-mode copy of ``program`` with only the forward ops the targets need.

    Backward, optimizer and learning-rate ops are dropped, ``is_test`` attributes are set,
    and with ``feeded_var_names`` the graph is cut at the feeds (ops producing a fed
    variable go) and every remaining input must be fed, persistable or computed;
    variables no remaining op uses are removed.
    """
    target_names = _names(targets)
    new = program.clone(for_test=True)
    block = new.global_block()
    for n in target_names + list(feeded_var_names or []):
        block.var(n)  # NotFoundError names a target or feed missing from the program
    feeds = set(feeded_var_names or [])
    needed, keep = set(target_names), []
    for op in reversed(block.ops):
        if any(n in needed and n not in feeds for n in op.output_arg_names):
            keep.append(op)
            needed.update(n for n in op.input_arg_names if n != EMPTY_VAR)
    block.ops = keep[::-1]
    if feeded_var_names is not None:
        _check_computable(block, feeds, target_names)
    used = feeds | set(target_names)
    for b in new.blocks:
        for op in b.ops:
            used.update(op.input_arg_names + op.output_arg_names)
    block.vars = {n: v for n, v in block.vars.items() if n in used}
    new._bump()
    return new


def _check_computable(block: Block, feeds: set[str], targets: list[str]) -> None:
    have = feeds | {n for n, v in block.vars.items() if v.persistable}
    for op in block.ops:
        for n in op.input_arg_names:
            if n != EMPTY_VAR and n not in have:
                raise InvalidArgumentError(
                    f"targets {targets} need variable '{n}' (input of op '{op.type}'), which is neither fed "
                    f"({sorted(feeds)}) nor persistable nor computed from the feeds")
        have.update(op.output_arg_names)
    missing = [t for t in targets if t not in have]
    if missing:
        raise InvalidArgumentError(f"targets {missing} are neither fed nor computed by the program")


def get_inference_program(target_vars: Any, main_program: Program | None = None) -> Program:
    """The test-mode part of ``main_program`` that computes ``target_vars``."""
    targets = target_vars if isinstance(target_vars, (list, tuple)) else [target_vars]
    return prune_program(_program_arg(main_program, "get_inference_program"), targets)


# ------------------------------------------------------------ parameter files
def var_filename(name: str) -> str:
    """File name of variable ``name`` in a directory of per-variable files.

    ``%`` becomes ``%25`` and ``/`` (and the OS separator) ``%2F``, so every name maps to
    one file in ``dirname``; ``.`` and ``..`` are escaped as ``%2E`` / ``%2E%2E``.
    """
    out = name.replace("%", "%25").replace("/", "%2F")
    if os.sep != "/":
        out = out.replace(os.sep, "%5C")
    return "%2E" * len(out) if out in (".", "..") else out


def _names(vs: Iterable[Any]) -> list[str]:
    return [v.name if isinstance(v, Variable) else str(v) for v in vs]


def _program_arg(program: Program | None, fn: str) -> Program:
    program = default_main_program() if program is None else program
    if not isinstance(program, Program):
        raise InvalidArgumentError(f"{fn}: main_program must be a Program, got {type(program).__name__}")
    return program


def _select(program: Program, vars: Sequence[Any] | None,
            predicate: Callable[[Variable], bool] | None) -> list[Variable]:
    if vars is None:
        pool: Iterable[Variable] = (v for v in program.list_vars() if predicate is None or predicate(v))
    else:
        pool = (v if isinstance(v, Variable) else program.global_block().var(str(v)) for v in vars)
    out: dict[str, Variable] = {}
    for v in pool:
        out.setdefault(v.name, v)
    return list(out.values())


def _atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Write through a temp file, fsync, rename: readers never see a half-written file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_var(f: BinaryIO, var: Variable, scope: Scope) -> None:
    """One variable in the parameter-file layout; the declared type picks the layout."""
    what = f"variable '{var.name}'"
    found = scope.find_var(var.name)
    value = found.value() if found is not None else None
    if value is None or getattr(value, "values", 0) is None:  # absent, or an empty LoDTensor/SelectedRows
        raise NotFoundError(f"save: variable '{var.name}' has no value in the scope: no op that ran in "
                            f"this scope produced it (a parameter needs the startup program run first, an "
                            f"intermediate a run that fetched or kept it)")
    if var.type == "selected_rows":
        if not isinstance(value, SelectedRows):  # a dense table: every row present
            dense = to_numpy(value.values if isinstance(value, LoDTensor) else value)
            value = SelectedRows(np.arange(len(dense)), dense, len(dense))
        write_selected_rows(f, value.rows, to_numpy(value.values), value.height, what)
    elif isinstance(value, SelectedRows):  # declared dense: save the dense equivalent
        write_lod_tensor(f, to_numpy(value.to_dense()), None, what)
    elif isinstance(value, LoDTensor):
        write_lod_tensor(f, to_numpy(value.values), value._lod, what)
    else:
        write_lod_tensor(f, to_numpy(value), None, what)


def _read_var(r: TensorReader, var: Variable, place: Any) -> Any:
    r.var = var.name
    if var.type == "selected_rows":
        rows, values, height = r.read_selected_rows()
        _check_declared(r, var, values, height)
        return SelectedRows(rows, place.to_device(values), height)
    arr, lod = r.read_lod_tensor()
    if lod:
        why = check_lod(lod, arr.shape[0] if arr.ndim else 0)
        if why:
            raise r.error(f"LoD {lod} does not fit the tensor of shape {list(arr.shape)}: {why}")
    _check_declared(r, var, arr)
    arr = place.to_device(arr)
    return LoDTensor(arr, lod) if lod else arr


def _check_declared(r: TensorReader, var: Variable, arr: np.ndarray, height: int | None = None) -> None:
    """The file's dtype and shape must match the program's declaration (-1 matches any size)."""
    where = f"file '{r.path}', variable '{var.name}'"
    if np.dtype(var.dtype) != arr.dtype:
        raise DTypeError(f"{where}: the file holds {arr.dtype.name} data but the program declares {var.dtype}")
    want = tuple(var.shape)
    got = tuple(arr.shape) if height is None else (height,) + tuple(arr.shape[1:])
    if want and (len(want) != len(got) or any(w >= 0 and w != g for w, g in zip(want, got))):
        raise ShapeError(f"{where}: the file holds shape {list(got)} but the program declares {list(want)}")


def save_vars(executor: Any, dirname: str, main_program: Program | None = None,
              vars: Sequence[Any] | None = None, predicate: Callable[[Variable], bool] | None = None,
              filename: str | None = None, *, scope: Scope | None = None) -> None:
    """Save ``vars`` (or the program's vars passing ``predicate``) under ``dirname``.

    One file per variable, or all of them in ``dirname/filename`` in program order.
    """
    program = _program_arg(main_program, "save_vars")
    selected = _select(program, vars, predicate)
    scope = global_scope() if scope is None else scope
    os.makedirs(dirname, exist_ok=True)
    if filename is None:
        for v in selected:
            _atomic_write(os.path.join(dirname, var_filename(v.name)), lambda f, v=v: _write_var(f, v, scope))
    else:
        def write_all(f: BinaryIO) -> None:
            for v in selected:
                _write_var(f, v, scope)
        _atomic_write(os.path.join(dirname, filename), write_all)


def save_params(executor: Any, dirname: str, main_program: Program | None = None,
                filename: str | None = None, *, scope: Scope | None = None) -> None:
    """Save every parameter of the program (not optimizer state: see save_persistables).

    Given a parameter-server trainer program, the parameters are pulled from the
    pservers (see ``io_distributed``)."""
    program = trainer_program_for(_program_arg(main_program, "save_params"))
    if is_trainer_program(program):
        return save_trainer_vars(executor, dirname, program, is_parameter, filename, scope, save_vars, False)
    save_vars(executor, dirname, program, predicate=is_parameter, filename=filename, scope=scope)


def save_persistables(executor: Any, dirname: str, main_program: Program | None = None,
                      filename: str | None = None, *, scope: Scope | None = None) -> None:
    """Save every persistable variable: parameters, optimizer accumulators, counters.

    Given a parameter-server trainer program (fluid 1.4 ``_save_distributed_persistables``):
    parameters are pulled from the pservers, what only pservers hold is skipped, and on
    trainer 0 every pserver writes its own state into ``dirname`` (see ``io_distributed``)."""
    program = trainer_program_for(_program_arg(main_program, "save_persistables"))
    if is_trainer_program(program):
        return save_trainer_vars(executor, dirname, program, is_persistable, filename, scope, save_vars, True)
    save_vars(executor, dirname, program, predicate=is_persistable, filename=filename, scope=scope)


def load_vars(executor: Any, dirname: str, main_program: Program | None = None,
              vars: Sequence[Any] | None = None, predicate: Callable[[Variable], bool] | None = None,
              filename: str | None = None, *, scope: Scope | None = None) -> None:
    """Load what ``save_vars`` wrote, onto the executor's place, into the scope.

    Every file is read and checked (layout, dtype and shape against the program) before
    any value is stored.
    """
    program = _program_arg(main_program, "load_vars")
    selected = _select(program, vars, predicate)
    place = getattr(executor, "place", None) or CPUPlace()
    if not os.path.isdir(dirname):
        raise NotFoundError(f"load_vars: directory '{dirname}' does not exist")
    values: dict[str, Any] = {}
    if filename is None:
        for v in selected:
            path = os.path.join(dirname, var_filename(v.name))
            if not os.path.isfile(path):
                raise NotFoundError(f"load_vars: no file for variable '{v.name}' ('{path}' does not exist)")
            with open(path, "rb") as f:
                r = TensorReader(f, path)
                values[v.name] = _read_var(r, v, place)
                if not r.at_end():
                    raise r.error(f"{r.remaining()} unexpected bytes after the tensor")
    else:
        path = os.path.join(dirname, filename)
        if not os.path.isfile(path):
            raise NotFoundError(f"load_vars: parameter file '{path}' does not exist")
        with open(path, "rb") as f:
            r = TensorReader(f, path)
            for v in selected:
                values[v.name] = _read_var(r, v, place)
            if not r.at_end():
                r.var = None
                raise r.error(f"{r.remaining()} bytes left after the {len(selected)} variables the program "
                              f"selects: the file was saved from a program with other variables")
    scope = global_scope() if scope is None else scope
    for name, value in values.items():
        scope.set(name, value)


def load_params(executor: Any, dirname: str, main_program: Program | None = None,
                filename: str | None = None, *, scope: Scope | None = None) -> None:
    """Load every parameter of the program."""
    load_vars(executor, dirname, main_program, predicate=is_parameter, filename=filename, scope=scope)


def load_persistables(executor: Any, dirname: str, main_program: Program | None = None,
                      filename: str | None = None, *, scope: Scope | None = None) -> None:
    """Load every persistable variable of the program.

    Given a transpiled pserver program, loads the rows of the saved parameters that this
    pserver hosts and resumes the pserver's own state file (see ``io_distributed``)."""
    program = _program_arg(main_program, "load_persistables")
    if is_pserver_program(program) and filename is None:
        return load_pserver_vars(executor, dirname, program, scope, load_vars)
    load_vars(executor, dirname, program, predicate=is_persistable, filename=filename, scope=scope)


# ------------------------------------------------------------ inference models
def save_inference_model(dirname: str, feeded_var_names: Sequence[str] | str, target_vars: Any,
                         executor: Any, main_program: Program | None = None,
                         model_filename: str | None = None, params_filename: str | None = None,
                         export_for_deployment: bool = True, *, scope: Scope | None = None) -> list[str]:
    """Write ``dirname/__model__`` (or ``model_filename``) and the parameters it needs.

    With ``export_for_deployment`` the program is pruned to what ``target_vars`` need
    from ``feeded_var_names`` and put in test mode; otherwise the whole program is kept
    (so training can resume from it).  Returns the fetch target names.
    """
    feeds = [feeded_var_names] if isinstance(feeded_var_names, str) else list(feeded_var_names)
    if not all(isinstance(n, str) for n in feeds):
        raise InvalidArgumentError(f"save_inference_model: feeded_var_names must be strings, got {feeds!r}")
    targets = _names(target_vars if isinstance(target_vars, (list, tuple)) else [target_vars])
    if not targets:
        raise InvalidArgumentError("save_inference_model: target_vars is empty")
    program = trainer_program_for(_program_arg(main_program, "save_inference_model"))
    model_name = os.path.basename(model_filename) if model_filename else MODEL_FILENAME
    params_name = os.path.basename(params_filename) if params_filename else None
    if params_name == model_name:
        raise InvalidArgumentError(f"save_inference_model: model and params cannot share the file '{model_name}'")
    if is_trainer_program(program):  # a PS trainer: pull what the pservers hold, lookups made local
        program, scope = inference_program_and_scope(executor, program, prune_program(program, targets, feeds),
                                                     scope)
    elif export_for_deployment:
        program = prune_program(program, targets, feeds)
    else:
        program = program.clone()
        for n in feeds + targets:
            program.global_block().var(n)
    data = serialize_program(program, feeds, targets)
    os.makedirs(dirname, exist_ok=True)
    _atomic_write(os.path.join(dirname, model_name), lambda f: f.write(data))
    save_persistables(executor, dirname, program, params_name, scope=scope)
    return targets


def load_inference_model(dirname: str, executor: Any, model_filename: str | None = None,
                         params_filename: str | None = None, pserver_endpoints: Any = None,
                         *, scope: Scope | None = None) -> list[Any]:
    """Load a model written by ``save_inference_model``.

    Returns ``[program, feed_target_names, fetch_targets]``; run it with
    ``executor.run(program, feed={name: value}, fetch_list=fetch_targets)``.
    """
    if pserver_endpoints is not None:
        raise InvalidArgumentError("load_inference_model: pserver_endpoints (distributed lookup tables) "
                                   "is not supported; save the table with the model instead")
    if not os.path.isdir(dirname):
        raise NotFoundError(f"load_inference_model: directory '{dirname}' does not exist")
    path = os.path.join(dirname, os.path.basename(model_filename) if model_filename else MODEL_FILENAME)
    if not os.path.isfile(path):
        raise NotFoundError(f"load_inference_model: model file '{path}' does not exist")
    with open(path, "rb") as f:
        desc = parse_program_desc(f.read(), f"model file '{path}'")
    program = program_from_desc(desc, f"model file '{path}'")
    if not desc.fetch_target_names:
        raise InvalidArgumentError(f"model file '{path}' names no fetch targets: was it written by "
                                   f"save_inference_model?")
    params_name = os.path.basename(params_filename) if params_filename else None
    load_persistables(executor, dirname, program, params_name, scope=scope)
    fetch_targets = [program.global_block().var(n) for n in desc.fetch_target_names]
    return [program, list(desc.feed_target_names), fetch_targets]
