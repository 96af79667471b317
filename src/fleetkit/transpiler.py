"""``fleetkit.transpiler``: where fluid 1.4 scripts find the transpiler
(``fluid.transpiler.DistributeTranspiler``); the implementation is ``fleetkit.fleet.transpiler``."""
from .core.memory import memory_optimize, release_memory
from .fleet.transpiler import DistributeTranspiler, DistributeTranspilerConfig, HashName, RoundRobin

__all__ = ["DistributeTranspiler", "DistributeTranspilerConfig", "HashName", "RoundRobin", "memory_optimize",
           "release_memory"]
