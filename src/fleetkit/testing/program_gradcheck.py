"""Finite-difference gradient check for a whole program (float64, central differences).

``gradcheck.check_grad`` drives one op; this checks what ``append_backward`` builds for a
composition of ops, e.g. a rank-table op that needs a rank table made by another op, or a
``DynamicRNN`` whose gradient runs its step block backwards: the analytic gradients of
the scalar ``loss`` with respect to fed variables and parameters against d loss / d x
estimated by perturbing each element of x in turn.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..core.backward import gradients
from ..core.executor import Executor
from ..core.framework import Program, Variable
from ..core.scope import LoDTensor, Scope


def _values(v: Any) -> np.ndarray:
    return np.asarray(v.values if isinstance(v, LoDTensor) else v)


def _with(feed: dict, name: str, arr: np.ndarray) -> dict:
    out = dict(feed)
    old = feed[name]
    out[name] = LoDTensor(arr, old.lod()) if isinstance(old, LoDTensor) else arr
    return out


def check_program_grad(loss: Variable, feed: dict, wrt: Sequence[str], startup: Program | None = None,
                       delta: float = 1e-6, rtol: float = 1e-5, atol: float = 1e-7) -> None:
    """Assert d ``loss`` / d ``wrt`` from the program's backward matches central differences.

    Args:
        loss: a one-element float64 variable of its program (which gets the gradient ops appended).
        feed: the program's feeds (arrays or LoDTensors); ``wrt`` names fed variables or parameters.
        startup: the startup program that initializes the parameters (run once; their values are
            then fed, so every evaluation sees the same ones).
    """
    program = loss.block.program
    forward = program.clone()
    exe = Executor()
    feed = dict(feed)
    if startup is not None:
        scope = Scope()
        exe.run(startup, scope=scope)
        for p in program.all_parameters():
            feed.setdefault(p.name, np.array(scope.get(p.name), dtype=np.float64))
    block = program.global_block()
    grads = gradients([loss], [block.var(n) for n in wrt])
    missing = [n for n, g in zip(wrt, grads) if g is None]
    if missing:
        raise AssertionError(f"the loss '{loss.name}' has no gradient with respect to {missing}")
    analytic = exe.run(program, feed=feed, fetch_list=[g.name for g in grads], scope=Scope())

    def loss_at(f: dict) -> float:
        out, = exe.run(forward, feed=f, fetch_list=[loss.name], scope=Scope())
        return float(np.sum(np.asarray(out, dtype=np.float64)))

    for name, got in zip(wrt, analytic):
        x0 = _values(feed[name]).astype(np.float64)
        num = np.zeros(x0.shape, dtype=np.float64)
        for i in range(x0.size):
            plus, minus = x0.copy(), x0.copy()
            plus.reshape(-1)[i] += delta
            minus.reshape(-1)[i] -= delta
            num.reshape(-1)[i] = (loss_at(_with(feed, name, plus)) - loss_at(_with(feed, name, minus))) / (2 * delta)
        got = _values(got).astype(np.float64).reshape(num.shape)
        if not np.allclose(got, num, rtol=rtol, atol=atol):
            err = np.abs(got - num)
            i = int(np.argmax(err))
            raise AssertionError(f"gradient of '{loss.name}' with respect to '{name}' differs from finite "
                                 f"differences: max abs err {err.max():.3g} at flat index {i} (analytic "
                                 f"{got.reshape(-1)[i]:.8g}, numeric {num.reshape(-1)[i]:.8g})")
