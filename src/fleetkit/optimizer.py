"""``fluid.optimizer``: core's optimizers, plus ``DGCMomentumOptimizer`` from the collective.

Assembled here, at the top of the package, because DGC needs the collective backends and
core must import nothing above it (docs/architecture.md)."""
from .collective.dgc import DGCMomentumOptimizer
from .core.optimizer import *  # noqa: F401,F403
from .core.optimizer import __all__ as _core_all

__all__ = [*_core_all, "DGCMomentumOptimizer"]
