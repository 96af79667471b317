"""fleetkit: distributed training for static-graph models, with Paddle 1.4 fluid names.

    import fleetkit as fk
    from fleetkit import layers
"""
import sys as _sys

from . import _logconfig

_logconfig.configure_from_env()  # FLEETKIT_LOG_LEVEL (set by `fleetkit launch`): our log records on stderr

from .core import *  # noqa: F401,F403
from .core import __all__ as _core_all
from .core import clip, initializer, io, layers, regularizer, unique_name
from . import _op_providers  # noqa: F401  (where the pserver/collective/fleet ops live: loaded on first use)
from . import install_check  # noqa: F401  (fk.install_check.run_check(), as in fluid)
from .errors import FleetkitError
from . import collective  # noqa: F401,E402  (cheap, ~35 ms: registers the c_* ops programs may hold)

del optimizer  # noqa: F821  (core's, bound by the star import; fluid's namespace adds DGCMomentumOptimizer to it)
from . import optimizer  # noqa: E402,F401

__version__ = "0.1.0"

# ``import fleetkit.layers`` (and friends) work like the fluid submodules they mirror
for _name in ("clip", "initializer", "io", "layers", "regularizer", "unique_name"):
    _sys.modules[f"{__name__}.{_name}"] = globals()[_name]
# and ``import fleetkit.layers.nn as nn`` (fluid's layer submodules, core/layers/fluid_modules.py)
from .core.layers.fluid_modules import fluid_submodules as _fluid_submodules  # noqa: E402

for _name, _module in _fluid_submodules(layers).items():
    _sys.modules[f"{__name__}.layers.{_name}"] = _module

__all__ = list(_core_all) + ["FleetkitError", "__version__"]

# data pipeline (fluid.DatasetFactory and friends)
from . import dataset  # noqa: E402
from .dataset import DatasetFactory, InMemoryDataset, QueueDataset  # noqa: E402

__all__ += ["DatasetFactory", "InMemoryDataset", "QueueDataset", "dataset"]

# fluid.CompiledProgram and its strategies (one place per process; see core/compiler.py)
from .core import compiler  # noqa: E402
from .core.compiler import BuildStrategy, CompiledProgram, ExecutionStrategy  # noqa: E402

_sys.modules[f"{__name__}.compiler"] = compiler  # fluid.compiler.CompiledProgram

__all__ += ["BuildStrategy", "CompiledProgram", "ExecutionStrategy"]

# fluid exposes the transpiler at top level too (fluid.DistributeTranspiler, fluid.transpiler);
# imported on first use so ``import fleetkit`` does not load the parameter-server code.
_LAZY = {"DistributeTranspiler": "fleetkit.transpiler", "DistributeTranspilerConfig": "fleetkit.transpiler",
         "transpiler": None, "fleet": None}
__all__ += ["DistributeTranspiler", "DistributeTranspilerConfig"]

# the rest of the fluid 1.4 surface (see docs/porting.md): readers, feeders, nets, metrics, profiler
from . import reader  # noqa: E402  (paddle.reader)
from .reader import batch  # noqa: E402  (paddle.batch)
from .core import data_feeder, param_attr  # noqa: E402
from .core.memory import memory_optimize, release_memory  # noqa: E402
from . import metrics, nets, profiler  # noqa: E402
from .parallel_executor import ParallelExecutor  # noqa: E402
from .core import backward  # noqa: E402
from .core.compat import (CUDAPinnedPlace, LoDTensorArray, cpu_places, create_random_int_lodtensor,  # noqa: E402
                          cuda_pinned_places, cuda_places, in_dygraph_mode, name_scope)

for _name in ("backward", "data_feeder", "param_attr"):
    _sys.modules[f"{__name__}.{_name}"] = globals()[_name]
__all__ += ["CUDAPinnedPlace", "LoDTensorArray", "ParallelExecutor", "batch", "cpu_places",
            "create_random_int_lodtensor", "cuda_pinned_places", "cuda_places", "in_dygraph_mode",
            "memory_optimize", "metrics", "name_scope", "nets", "profiler", "reader", "release_memory"]
_LAZY["incubate"] = None


def __getattr__(name: str):  # PEP 562: lazy public names
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    if _LAZY[name] is None:
        return importlib.import_module(f"{__name__}.{name}")
    return getattr(importlib.import_module(_LAZY[name]), name)
