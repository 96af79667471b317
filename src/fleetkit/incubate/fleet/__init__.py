"""``fluid.incubate.fleet``: see ``fleetkit.incubate``."""
