"""Installation self-test (``fleetkit check`` / ``fleetkit.install_check.run_check()``).

Builds a tiny model in its own Program and Scope (x[2,2] -> fc(3, weights 0.1) ->
mean), appends the backward pass and one SGD step, runs it on CUDAPlace(0) when a GPU
is visible (CPUPlace otherwise) and checks every number against numpy.  It then round-
trips the program through its protobuf form and the parameters through files, so a
broken protobuf runtime or I/O path shows up here too.
"""
from __future__ import annotations

import contextlib
import sys
import tempfile
from typing import Any, Iterator

import numpy as np

from .core import io, layers, unique_name
from .core.backend import CPUPlace, CUDAPlace, Place, gpu_count
from .core.backward import append_backward
from .core.executor import Executor
from .core.framework import ROLE_OPTIMIZE, Program, op_role_guard, program_guard
from .core.initializer import ConstantInitializer
from .core.param_attr import ParamAttr
from .core.scope import Scope
from .errors import FleetkitError

__all__ = ["InstallCheckError", "run_check"]

_LR = 0.5
_X = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)


class InstallCheckError(FleetkitError, RuntimeError):
    """The self-test failed; the message says which stage and what was wrong."""


def run_check(place: Place | None = None) -> None:
    """Verify the installation; print a success line, or print what is broken and raise."""
    print("Running Verify Fleetkit Program ... ")
    place = place if place is not None else (CUDAPlace(0) if gpu_count() > 0 else CPUPlace())
    try:
        _verify(place)
    except Exception as e:
        err = e if isinstance(e, InstallCheckError) else InstallCheckError(f"{type(e).__name__}: {e}")
        print(f"fleetkit install check FAILED on {place}: {err}", file=sys.stderr)
        raise err from e
    import google.protobuf

    from . import __version__
    print(f"Your fleetkit is installed successfully! (fleetkit {__version__} on {place}; "
          f"numpy {np.__version__}, protobuf {google.protobuf.__version__})")


@contextlib.contextmanager
def _stage(name: str) -> Iterator[None]:
    """Name the stage that failed in the error."""
    try:
        yield
    except InstallCheckError:
        raise
    except Exception as e:
        raise InstallCheckError(f"{name}: {type(e).__name__}: {e}") from e


def _expect(what: str, got: Any, want: np.ndarray) -> None:
    got = np.asarray(got)
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-6):
        raise InstallCheckError(f"{what}: got {got.tolist()}, expected {want.tolist()}")


def _build() -> tuple[Program, Program, Any, Any, list]:
    main, startup = Program(), Program()
    with program_guard(main, startup), unique_name.guard():
        x = layers.data("x", [2, 2], append_batch_size=False, dtype="float32")
        y = layers.fc(x, size=3, param_attr=ParamAttr(name="w", initializer=ConstantInitializer(0.1)),
                      bias_attr=ParamAttr(name="b", initializer=ConstantInitializer(0.0)))
        loss = layers.mean(y)
        params_grads = append_backward(loss)
        with op_role_guard(ROLE_OPTIMIZE):
            for p, g in params_grads:  # plain SGD: p += -lr * g
                step = layers.scale(g, scale=-_LR)
                main.global_block().append_op("elementwise_add", {"X": [p], "Y": [step]}, {"Out": [p]},
                                              {"axis": -1})
    return main, startup, y, loss, params_grads


def _verify(place: Place) -> None:
    with _stage("building the program"):
        main, startup, y, loss, params_grads = _build()
    exe, scope = Executor(place), Scope()
    with _stage(f"running the startup program on {place}"):
        exe.run(startup, scope=scope)
    with _stage(f"running forward, backward and SGD on {place}"):
        grad_names = {p.name: g.name for p, g in params_grads}
        loss_v, y_v, gw, gb = exe.run(main, feed={"x": _X}, fetch_list=[loss, y, grad_names["w"],
                                                                        grad_names["b"]], scope=scope)
        w1, b1 = scope.numpy("w"), scope.numpy("b")
    w0, b0 = np.full((2, 3), 0.1, np.float32), np.zeros(3, np.float32)
    y_ref = _X @ w0 + b0
    dy = np.full_like(y_ref, 1.0 / y_ref.size)
    _expect("fc output", y_v, y_ref)
    _expect("mean loss", loss_v, np.asarray(y_ref.mean()).reshape(np.shape(loss_v)))
    _expect("gradient of the weights", gw, _X.T @ dy)
    _expect("gradient of the bias", gb, dy.sum(axis=0))
    _expect("weights after one SGD step", w1, w0 - _LR * (_X.T @ dy))
    _expect("bias after one SGD step", b1, b0 - _LR * dy.sum(axis=0))

    with _stage("program serialization (protobuf)"):
        copy = io.deserialize_program(io.serialize_program(main))
    with _stage("saving and loading parameters"), tempfile.TemporaryDirectory() as d:
        io.save_persistables(exe, d, main, scope=scope)
        fresh = Scope()
        io.load_persistables(exe, d, copy, scope=fresh)
        _expect("reloaded weights", fresh.numpy("w"), w1)
        _expect("reloaded bias", fresh.numpy("b"), b1)
    with _stage(f"running the deserialized program on {place}"):
        (loss2,) = exe.run(copy, feed={"x": _X}, fetch_list=[loss.name], scope=fresh)
    _expect("loss of the deserialized program after the step", loss2,
            np.asarray((_X @ w1 + b1).mean()).reshape(np.shape(loss2)))
