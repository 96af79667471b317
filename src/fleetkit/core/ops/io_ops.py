"""``load`` (``layers.load``): read one variable from a file in the LoDTensor layout that
``io.save_vars`` writes (docs/formats.md), with every length checked before allocating;
and ``py_func`` (``layers.py_func``): run registered Python callables as an op."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ...errors import InvalidArgumentError, NotFoundError
from ...proto.codec import TensorReader
from ..backend import to_numpy
from ..registry import KernelContext, register_grad, register_op
from ..scope import LoDTensor, check_lod


# --------------------------------------------------------------------- load
@register_op("load", lambda ctx: None, attrs={"file_path": "", "load_as_fp16": False})
def load(ctx: KernelContext) -> None:
    """Out = the tensor stored at ``file_path`` (float16 when ``load_as_fp16``)."""
    path = str(ctx.attrs["file_path"])
    try:
        with open(path, "rb") as f:
            r = TensorReader(f, path)
            r.var = ctx.outs["Out"][0]
            arr, lod = r.read_lod_tensor()
    except FileNotFoundError:
        raise NotFoundError(f"op 'load': no file '{path}' for variable '{ctx.outs['Out'][0]}'") from None
    if lod and check_lod(lod, arr.shape[0]) is not None:
        raise InvalidArgumentError(f"op 'load': file '{path}' holds a LoD {lod} that does not fit its "
                                   f"{arr.shape[0]} rows")
    if ctx.attrs["load_as_fp16"]:
        arr = arr.astype(np.float16)
    ctx.out("Out", ctx.xp.asarray(arr), lod or None)


# ------------------------------------------------------------------ py_func
#: id -> Python callable of the py_func ops built in this process
PY_FUNCS: list[Callable | None] = []


def register_py_func(fn: Callable | None) -> int:
    """Keep ``fn`` for py_func ops; returns the id their attributes carry (-1 for None)."""
    if fn is None:
        return -1
    if not callable(fn):
        raise InvalidArgumentError(f"py_func: {fn!r} is not callable")
    PY_FUNCS.append(fn)
    return len(PY_FUNCS) - 1


def _func(ctx: KernelContext, attr: str) -> Callable:
    i = int(ctx.attrs[attr])
    if not 0 <= i < len(PY_FUNCS):
        raise NotFoundError(f"op 'py_func': no Python function with id {i} in this process (py_func ops only run in "
                            f"the process that built them)")
    return PY_FUNCS[i]


def _as_tensor(ctx: KernelContext, slot: str, i: int) -> LoDTensor:
    v = ctx.raw(slot, i)
    return v if isinstance(v, LoDTensor) else LoDTensor(v)


def _store(ctx: KernelContext, slot: str, results: Any, what: str) -> None:
    names = ctx.outs.get(slot, [])
    vals = list(results) if isinstance(results, (list, tuple)) else [results]
    if len(vals) != len(names):
        raise InvalidArgumentError(f"op 'py_func': the {what} returned {len(vals)} values for {len(names)} outputs")
    for n, v in zip(names, vals):
        if v is None:
            continue
        lod = v.lod() if isinstance(v, LoDTensor) else None
        arr = v.values if isinstance(v, LoDTensor) else v
        ctx.env[n] = LoDTensor(ctx.xp.asarray(arr), lod) if lod else ctx.xp.asarray(np.asarray(to_numpy(arr)))


@register_op("py_func", lambda ctx: None, attrs={"forward_callable_id": -1, "backward_callable_id": -1,
                                                 "backward_skip_vars": []})
def py_func(ctx: KernelContext) -> None:
    """Out = func(*X) with the inputs as LoDTensors; func returns arrays or LoDTensors."""
    xs = [_as_tensor(ctx, "X", i) for i in range(len(ctx.ins.get("X", [])))]
    _store(ctx, "Out", _func(ctx, "forward_callable_id")(*xs), "forward function")


@register_grad("py_func")
def py_func_grad(ctx: KernelContext) -> None:
    """X@GRAD = backward_func(*X not skipped, *Out, *Out@GRAD) (None for no gradient)."""
    if int(ctx.attrs["backward_callable_id"]) < 0:
        raise InvalidArgumentError("op 'py_func': a gradient is needed but no backward_func was given")
    skip = set(ctx.attrs["backward_skip_vars"])
    args = [_as_tensor(ctx, "X", i) for i, n in enumerate(ctx.ins.get("X", [])) if n not in skip]
    args += [_as_tensor(ctx, "Out", i) for i, n in enumerate(ctx.ins.get("Out", [])) if n not in skip]
    args += [_as_tensor(ctx, "Out@GRAD", i) for i in range(len(ctx.ins.get("Out@GRAD", [])))]
    _store(ctx, "X@GRAD", _func(ctx, "backward_callable_id")(*args), "backward function")
