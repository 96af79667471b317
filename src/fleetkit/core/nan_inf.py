"""``FLAGS_check_nan_inf``: name the first op whose output holds NaN or inf.

fluid checks every op's outputs after it runs when the flag is on and stops at
the first non-finite value.  Here an executor checks when any of these says so:
the environment variable ``FLAGS_check_nan_inf`` (read when the executor is
made), ``Executor(place, check_nan_inf=True)`` (or its ``check_nan_inf``
attribute), or a program whose ``meta.check_nan_inf`` is set
(``DistributedStrategy.check_nan_inf`` sets it on the programs it rewrites).

When off, nothing here runs: the executor's steps are the usual ones.  When on,
each step is wrapped: before it, the fed (``is_data``) variables it reads are
checked (so NaN/inf that the data itself holds are named as data, not blamed on
the first op); after it, every output of every op it runs (a fused step runs
several) is checked, in program order.  Only floating-point values can hold
NaN/inf; integer, bool and non-array values are skipped.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import NanInfError
from .backend import get_array_module, to_numpy
from .scope import LoDTensor, SelectedRows

__all__ = ["checked_steps", "wanted"]

Step = tuple[Callable[[Any], None], Any]


def wanted(executor_flag: bool, steps: list[Step]) -> bool:
    """Whether these steps run checked: the executor's flag or their program's ``meta``."""
    if executor_flag:
        return True
    if not steps:
        return False
    program = getattr(getattr(steps[0][1].op, "block", None), "program", None)
    return program is not None and program.meta.check_nan_inf


def checked_steps(steps: list[Step]) -> list[Step]:
    """``steps`` with the same length and contexts, each kernel wrapped in the checks."""
    fed: set[str] = set()
    out = []
    for kernel, ctx in steps:
        members = [c for _, c in (getattr(kernel, "members", None) or [(kernel, ctx)])]
        feeds = []
        for c in members:
            for names in c.ins.values():
                for n in names:
                    if n not in fed and _is_data(c.op, n):
                        fed.add(n)
                        feeds.append((n, c))
        out.append((_checking(kernel, members, feeds), ctx))
    return out


def _checking(kernel: Callable[[Any], None], members: list[Any], feeds: list[tuple[str, Any]]) -> Callable:
    def run(ctx: Any) -> None:
        for name, reader in feeds:
            problem = _non_finite(ctx.env.get(name))
            if problem:
                raise NanInfError(f"FLAGS_check_nan_inf: fed variable '{name}' holds NaN/inf: {problem}; "
                                  f"read by {_where(reader.op)}. The data itself holds them: check the "
                                  f"input files or the reader", var=name, block=_block_idx(reader.op))
        kernel(ctx)
        for c in members:
            for slot, names in c.outs.items():
                for n in names:
                    problem = _non_finite(c.env.get(n))
                    if problem:
                        raise NanInfError(
                            f"FLAGS_check_nan_inf: {_where(c.op)} wrote NaN/inf into its output "
                            f"{slot}='{n}': {problem}; inputs: {_inputs(c)}", var=n, op_type=c.op.type,
                            block=_block_idx(c.op), op_index=_op_index(c.op))
    return run


def _is_data(op: Any, name: str) -> bool:
    block = getattr(op, "block", None)
    var = block._find_var_recursive(name) if block is not None else None
    return bool(getattr(var, "is_data", False))


def _array(value: Any) -> Any:
    if isinstance(value, (LoDTensor, SelectedRows)):
        value = value.values
    kind = getattr(getattr(value, "dtype", None), "kind", "")
    return value if kind in ("f", "c") and hasattr(value, "shape") else None


def _non_finite(value: Any) -> str | None:
    """None when ``value`` holds no NaN/inf (or is not a float array), else what it holds."""
    arr = _array(value)
    if arr is None or arr.size == 0:
        return None
    xp = get_array_module(arr)
    if bool(xp.isfinite(arr).all()):  # the common case: one reduction, no host copy
        return None
    host = to_numpy(arr)
    nan, bad = np.isnan(host), ~np.isfinite(host)
    first = np.unravel_index(int(np.argmax(bad)), host.shape) if host.ndim else ()
    return (f"{int(nan.sum())} NaN and {int(bad.sum() - nan.sum())} inf among {host.size} value(s) "
            f"(shape {list(host.shape)}, first at index {list(map(int, first))})")


def _block_idx(op: Any) -> int | None:
    return getattr(getattr(op, "block", None), "idx", None)


def _op_index(op: Any) -> int | None:
    ops = getattr(getattr(op, "block", None), "ops", [])
    return next((k for k, o in enumerate(ops) if o is op), None)


def _where(op: Any) -> str:
    return f"op '{op.type}' (block {_block_idx(op)}, op #{_op_index(op)})"


def _inputs(ctx: Any) -> str:
    parts = []
    for slot, names in ctx.ins.items():
        for n in names:
            arr = _array(ctx.env.get(n))
            shape = list(arr.shape) if arr is not None else ""
            parts.append(f"{slot}='{n}'{shape}" + (" (non-finite)" if arr is not None and _non_finite(arr) else ""))
    return ", ".join(parts) or "none"
