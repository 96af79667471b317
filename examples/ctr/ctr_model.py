"""The CTR example's model lives in the package (``fleetkit.demo.ctr_model``), shared with
``fleetkit demo``, the tests and the benchmarks; this name stays for scripts that import it."""
from fleetkit.demo.ctr_model import *  # noqa: F401,F403
from fleetkit.demo.ctr_model import __all__  # noqa: F401
