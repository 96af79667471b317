"""``fleetkit.transpiler``: where fluid 1.4 scripts find the transpiler
(``fluid.transpiler.DistributeTranspiler``, ``fluid.transpiler.InferenceTranspiler``); the
implementations are ``fleetkit.fleet.transpiler`` and ``fleetkit.core.inference_transpiler``."""
from .core.inference_transpiler import InferenceTranspiler
from .core.memory import memory_optimize, release_memory
from .fleet.transpiler import DistributeTranspiler, DistributeTranspilerConfig, HashName, RoundRobin

__all__ = ["DistributeTranspiler", "DistributeTranspilerConfig", "HashName", "InferenceTranspiler", "RoundRobin",
           "memory_optimize", "release_memory"]
