"""The CTR example's data lives in the package (``fleetkit.demo.ctr_data``), shared with
``fleetkit demo``, the tests and the benchmarks; this name stays for scripts that import it."""
from fleetkit.demo.ctr_data import *  # noqa: F401,F403
from fleetkit.demo.ctr_data import __all__  # noqa: F401
