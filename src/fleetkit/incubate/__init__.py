"""``fluid.incubate``: the import paths fluid 1.4 scripts use for fleet and data generators.

    from fleetkit.incubate.fleet.parameter_server.distribute_transpiler import fleet
    from fleetkit.incubate.fleet.collective import fleet, DistributedStrategy
    from fleetkit.incubate.fleet.base import role_maker
    from fleetkit.incubate.data_generator import MultiSlotDataGenerator

Every ``fleet`` here is ``fleetkit.fleet``: it picks parameter-server or collective mode
from the role maker given to ``fleet.init``.
"""
