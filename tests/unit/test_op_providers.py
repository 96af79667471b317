"""The table of op families defined above core (``fleetkit/_op_providers.py``) is exactly
what those modules register: every op whose kernel lives outside ``fleetkit.core`` is in
it under its own module, and every entry names an op its module really defines."""
import importlib
import pkgutil

from fleetkit._op_providers import OP_PROVIDERS
from fleetkit.core.registry import get_op_def, registered_ops


def _import_all(package: str) -> None:
    pkg = importlib.import_module(package)
    for info in pkgutil.walk_packages(pkg.__path__, f"{package}."):
        importlib.import_module(info.name)


def test_every_op_above_core_is_in_the_table_under_its_module():
    for package in ("fleetkit.collective", "fleetkit.pserver", "fleetkit.fleet", "fleetkit.dataset"):
        _import_all(package)
    table = {t: module for module, types in OP_PROVIDERS.items() for t in types}
    outside = {t: get_op_def(t).forward.__module__ for t in registered_ops()}
    outside = {t: m for t, m in outside.items() if not m.startswith("fleetkit.core.")}
    assert outside, "no op registered outside core: the scan imported nothing"
    for t, module in outside.items():
        assert table.get(t.removesuffix("_grad")) == module, f"op '{t}' ({module}) missing from OP_PROVIDERS"
    for t, module in table.items():
        assert outside.get(t) == module, f"OP_PROVIDERS says {module} defines '{t}', it does not"
