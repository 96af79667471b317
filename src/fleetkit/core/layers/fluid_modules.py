"""fluid 1.4's layer submodules, as scripts import them by path.

1.4 scripts write ``import paddle.fluid.layers.nn as nn`` or ``from paddle.fluid.layers.tensor
import concat`` and then call layers through that module.  fleetkit groups its layers in
other modules, so each fluid submodule name is given a module that answers every layer
of the package (``nn.sequence_conv`` is found although fleetkit keeps it elsewhere), and
an unsupported name raises the package's explanation.  ``fleetkit/__init__.py`` registers
them as ``fleetkit.layers.<name>``.
"""
from __future__ import annotations

import importlib
import types
from typing import Any

__all__ = ["FLUID_SUBMODULES", "fluid_submodules"]

#: the submodules of fluid 1.4's ``layers`` package that scripts import
FLUID_SUBMODULES = ("nn", "tensor", "control_flow", "io", "ops", "metric_op", "learning_rate_scheduler",
                    "detection", "device", "math_op_patch", "layer_function_generator", "utils")


def _fallback(package: types.ModuleType) -> Any:
    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(package, name)
    return __getattr__


def fluid_submodules(package: types.ModuleType) -> dict[str, types.ModuleType]:
    """``name -> module`` for every FLUID_SUBMODULES name: fleetkit's own module of that name
    where it has one (its names first), else an empty one; both fall back to ``package``."""
    out = {}
    for name in FLUID_SUBMODULES:
        try:
            mod = importlib.import_module(f"{package.__name__}.{name}")
        except ModuleNotFoundError:
            mod = types.ModuleType(f"{package.__name__}.{name}", f"fluid's layers.{name}: every fleetkit layer")
            setattr(package, name, mod)   # ``import fleetkit.layers.ops as ops`` reads the attribute
        if "__getattr__" not in vars(mod):
            mod.__getattr__ = _fallback(package)   # type: ignore[attr-defined]
        out[name] = mod
    return out
