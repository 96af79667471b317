"""Finite-difference gradient check for one op (float64, central differences).

The op's grad kernel is driven exactly as ``append_backward`` drives it: the
grad op gets the forward inputs and outputs plus a random upstream gradient R
for each checked output, so the analytic result is d(sum(Out * R))/dX.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..core.backend import CUDAPlace, gpu_count, to_numpy
from ..core.backward import make_grad_op
from ..core.executor import Executor
from ..core.framework import EMPTY_VAR, Program
from ..core.scope import LoDTensor, Scope


def _value(v: Any) -> tuple[np.ndarray, Any]:
    if isinstance(v, LoDTensor):
        return np.asarray(v.values), v.lod()
    if isinstance(v, tuple):
        return np.asarray(v[0]), v[1]
    return np.asarray(v), None


def _build(op_type: str, inputs: dict, outputs: Sequence[str], attrs: dict) -> tuple[Program, Any]:
    prog = Program()
    block = prog.global_block()
    ins = {}
    for slot, vals in inputs.items():
        vals = vals if isinstance(vals, list) else [vals]
        ins[slot] = []
        for i, v in enumerate(vals):
            arr, lod = _value(v)
            name = f"{slot.lower()}_{i}"
            block.create_var(name=name, shape=arr.shape, dtype=arr.dtype, lod_level=len(lod or []))
            ins[slot].append(name)
    outs = {s: [f"out_{s.lower()}"] for s in outputs}
    op = block.append_op(op_type, ins, outs, attrs)
    return prog, op


def _feed(inputs: dict) -> dict:
    feed = {}
    for slot, vals in inputs.items():
        vals = vals if isinstance(vals, list) else [vals]
        for i, v in enumerate(vals):
            arr, lod = _value(v)
            feed[f"{slot.lower()}_{i}"] = LoDTensor(arr.copy(), lod) if lod else arr.copy()
    return feed


def _scalar_loss(exe: Executor, prog: Program, feed: dict, out_slots: Sequence[str], rs: dict) -> float:
    scope = Scope()
    outs = exe.run(prog, feed=feed, fetch_list=[f"out_{s.lower()}" for s in out_slots], scope=scope)
    return float(sum(np.sum(o.astype(np.float64) * rs[s]) for s, o in zip(out_slots, outs)))


def check_grad(op_type: str, inputs: dict, attrs: dict | None = None, outputs: Sequence[str] = ("Out",),
               wrt: Sequence[str] | None = None, grad_outputs: Sequence[str] | None = None,
               delta: float = 1e-6, rtol: float = 1e-5, atol: float = 1e-7, seed: int = 0,
               gpu: bool | None = None) -> None:
    """Assert the op's analytic gradients match central differences.

    On a machine with a CUDA device the same forward and gradient program also runs
    on ``CUDAPlace(0)`` and must match the CPU results (``gpu=False`` skips that,
    ``gpu=True`` demands it), so every gradient-checked op is checked on GPU too.

    Args:
        op_type: the forward op.
        inputs: {slot: array | (array, lod) | LoDTensor | list of those}; float inputs should be float64.
        attrs: op attributes.
        outputs: every output slot the op writes.
        wrt: input slots to check (default: every floating-point input slot).
        grad_outputs: output slots whose gradient flows back (default: ``outputs``).
    """
    attrs = dict(attrs or {})
    grad_outputs = list(grad_outputs or outputs)
    prog, op = _build(op_type, inputs, outputs, attrs)
    exe = Executor()
    feed = _feed(inputs)
    rng = np.random.default_rng(seed)
    fwd = exe.run(prog, feed=feed, fetch_list=[f"out_{s.lower()}" for s in grad_outputs], scope=Scope())
    rs = {s: rng.uniform(0.5, 1.5, size=o.shape) * rng.choice([-1, 1], size=o.shape)
          for s, o in zip(grad_outputs, fwd)}
    if wrt is None:
        wrt = [s for s, v in inputs.items()
               if np.issubdtype(_value(v if not isinstance(v, list) else v[0])[0].dtype, np.floating)]

    # analytic: forward op + grad op in one program, R fed as Out@GRAD
    gprog, gop = _build(op_type, inputs, outputs, attrs)
    block = gprog.global_block()
    out_grads = {}
    for s in grad_outputs:
        name = f"out_{s.lower()}@GRAD"
        block.create_var(name=name, dtype="float64")
        out_grads[s] = [name]
    in_grads = {s: [f"{n}@GRAD" if s in wrt else EMPTY_VAR for n in ns] for s, ns in gop.inputs.items()}
    make_grad_op(block, gop, out_grads, in_grads)
    gfeed = dict(feed)
    for s in grad_outputs:
        var_out = f"out_{s.lower()}"
        arr = rs[s].astype(np.float64)
        gfeed[f"{var_out}@GRAD"] = arr
    fetch = [n for s in wrt for n in in_grads[s]]
    analytic = exe.run(gprog, feed=gfeed, fetch_list=fetch, scope=Scope())
    if gpu or (gpu is None and gpu_count() > 0):
        _check_gpu_matches_cpu(op_type, exe, gprog, gfeed, [f"out_{s.lower()}" for s in grad_outputs] + fetch)

    for name, got in zip(fetch, analytic):
        base = name[: -len("@GRAD")]
        x0 = feed[base]
        arr = x0.values if isinstance(x0, LoDTensor) else x0
        num = np.zeros(arr.shape, dtype=np.float64)
        flat = arr.reshape(-1)
        for i in range(flat.size):
            orig = flat[i]
            flat[i] = orig + delta
            fp = _scalar_loss(exe, prog, feed, grad_outputs, rs)
            flat[i] = orig - delta
            fm = _scalar_loss(exe, prog, feed, grad_outputs, rs)
            flat[i] = orig
            num.reshape(-1)[i] = (fp - fm) / (2 * delta)
        got = np.asarray(got, dtype=np.float64).reshape(num.shape)
        if not np.allclose(got, num, rtol=rtol, atol=atol):
            err = np.abs(got - num)
            i = int(np.argmax(err))
            raise AssertionError(
                f"{op_type}: gradient of '{base}' differs from finite differences: max abs err "
                f"{err.max():.3g} at flat index {i} (analytic {got.reshape(-1)[i]:.8g}, numeric "
                f"{num.reshape(-1)[i]:.8g})")


def _check_gpu_matches_cpu(op_type: str, cpu_exe: Executor, prog: Program, feed: dict,
                           fetch: list[str]) -> None:
    """Forward outputs and analytic gradients on CUDAPlace(0) equal CPUPlace's (float64)."""
    def fresh_feed() -> dict:
        return {k: LoDTensor(np.array(v.values), v.lod()) if isinstance(v, LoDTensor) else np.array(v)
                for k, v in feed.items()}
    cpu = cpu_exe.run(prog, feed=fresh_feed(), fetch_list=fetch, scope=Scope())
    gpu = Executor(CUDAPlace(0)).run(prog, feed=fresh_feed(), fetch_list=fetch, scope=Scope())
    for name, c, g in zip(fetch, cpu, gpu):
        c, g = np.asarray(to_numpy(c)), np.asarray(to_numpy(g))
        if c.shape != g.shape or c.dtype != g.dtype:
            raise AssertionError(f"{op_type} on CUDAPlace(0): '{name}' is {g.dtype}{list(g.shape)}, "
                                 f"on CPUPlace {c.dtype}{list(c.shape)}")
        if not np.allclose(g, c, rtol=1e-7, atol=1e-10, equal_nan=True):
            err = np.abs(g.astype(np.float64) - c.astype(np.float64))
            raise AssertionError(f"{op_type} on CUDAPlace(0): '{name}' differs from CPUPlace: max abs "
                                 f"err {np.nanmax(err):.3g}")
