"""``fluid.incubate.fleet.collective``: the all-reduce fleet and its strategy."""
from .... import fleet  # noqa: F401  (the fleet object; collective mode for a collective role maker)
from ....fleet.collective_mode import CollectiveOptimizer, DistributedStrategy  # noqa: F401

__all__ = ["fleet", "CollectiveOptimizer", "DistributedStrategy"]
