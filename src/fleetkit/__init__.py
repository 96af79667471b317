"""fleetkit: distributed training for static-graph models, with Paddle 1.4 fluid names.

    import fleetkit as fk
    from fleetkit import layers
"""
import sys as _sys

from .core import *  # noqa: F401,F403
from .core import __all__ as _core_all
from .core import clip, initializer, io, layers, optimizer, regularizer, unique_name
from . import install_check  # noqa: F401  (fk.install_check.run_check(), as in fluid)
from .errors import FleetkitError
from . import collective  # noqa: F401,E402  (cheap, ~35 ms: registers the c_* ops programs may hold)

__version__ = "0.1.0"

# ``import fleetkit.layers`` (and friends) work like the fluid submodules they mirror
for _name in ("clip", "initializer", "io", "layers", "optimizer", "regularizer", "unique_name"):
    _sys.modules[f"{__name__}.{_name}"] = globals()[_name]

__all__ = list(_core_all) + ["FleetkitError", "__version__"]

# data pipeline (fluid.DatasetFactory and friends)
from . import dataset  # noqa: E402
from .dataset import DatasetFactory, InMemoryDataset, QueueDataset  # noqa: E402

__all__ += ["DatasetFactory", "InMemoryDataset", "QueueDataset", "dataset"]
