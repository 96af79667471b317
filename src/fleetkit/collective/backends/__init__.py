"""Backend implementations, imported lazily through ``fleetkit.collective.get_backend``
(so that mpi4py and cupy load only when their backend is asked for)."""
