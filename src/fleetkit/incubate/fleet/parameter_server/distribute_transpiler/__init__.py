"""``fluid.incubate.fleet.parameter_server.distribute_transpiler``: the parameter-server fleet."""
from ..... import fleet  # noqa: F401  (the fleet object; PS mode for a PS role maker)
from .....fleet.ps_mode import TranspilerOptimizer  # noqa: F401

__all__ = ["fleet", "TranspilerOptimizer"]
