"""``fluid.incubate.fleet.parameter_server``: see ``distribute_transpiler``."""
