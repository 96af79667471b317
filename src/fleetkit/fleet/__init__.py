"""``fleetkit.fleet``: role makers and the fleet API.

The module itself is the fleet object, as DESIGN.md shows::

    from fleetkit import fleet
    fleet.init(role_maker.PaddleCloudRoleMaker())      # or is_collective=True
    opt = fleet.distributed_optimizer(optimizer, strategy)
    opt.minimize(loss)
    exe.run(fleet.startup_program)

``init`` picks the mode from the role maker: collective role makers get the
all-reduce fleet (``collective_mode.CollectiveFleet``), the others the
parameter-server fleet (``ps_mode.PSFleet``).  Every other attribute of this
module that is not defined here is looked up on that fleet, so both modes
expose their full fluid 1.4 API (``init_server``, ``run_server``,
``init_worker``, ``stop_worker``, ``main_program``, ...) without a list here to
keep in sync.  The mode classes are imported lazily: a PS job never imports
the collective backends and the other way round.
"""
from __future__ import annotations

import importlib
from typing import Any, Sequence

from . import role_maker  # noqa: F401
from ..errors import InvalidArgumentError
from .base import FleetBase
from .base import split_files as _split_files
from .role_maker import (MPISymetricRoleMaker, PaddleCloudRoleMaker, Role, RoleMakerBase,
                         UserDefinedCollectiveRoleMaker, UserDefinedRoleMaker)

# public names defined in sibling modules, imported on first use
_LAZY = {
    "PSFleet": "ps_mode",
    "DistributeTranspiler": "transpiler",
    "DistributeTranspilerConfig": "transpiler",
    "CollectiveFleet": "collective_mode",
    "DistributedStrategy": "collective_mode",
}

_fleet: FleetBase | None = None


def _mode_class(rm: RoleMakerBase) -> type[FleetBase]:
    if rm.is_collective():
        return importlib.import_module(".collective_mode", __name__).CollectiveFleet
    return importlib.import_module(".ps_mode", __name__).PSFleet


def init(*args: Any, role_maker: RoleMakerBase | None = None, executor: Any = None) -> FleetBase:
    """Read the role, pick the fleet mode for it and make it this module's fleet.

    Both fluid signatures work: ``init(role_maker=None)`` (1.5) and
    ``init(executor, role_maker=None)`` (1.4, positional or keyword).  An executor
    given that way runs the fleet's own programs (``init_server``, ``run_server``).
    """
    global _fleet
    rest = list(args)
    if rest and _is_executor(rest[0]):
        if executor is not None:
            raise TypeError("fleet.init: executor given twice")
        executor = rest.pop(0)
    if rest:
        if role_maker is not None or len(rest) > 1:
            raise TypeError(f"fleet.init takes (role_maker) or (executor, role_maker), got {len(args)} "
                            f"positional argument(s){' and role_maker=' if role_maker is not None else ''}")
        role_maker = rest.pop(0)
    if executor is not None and not _is_executor(executor):
        raise InvalidArgumentError(f"fleet.init: executor must be a fleetkit Executor, got {type(executor).__name__}")
    if role_maker is None:
        role_maker = PaddleCloudRoleMaker()
    if not isinstance(role_maker, RoleMakerBase):
        raise InvalidArgumentError(f"fleet.init: role_maker must be a RoleMakerBase, got {type(role_maker).__name__}")
    fleet_obj = _mode_class(role_maker)()
    fleet_obj.init(role_maker)
    if executor is not None and hasattr(fleet_obj, "_executor"):
        fleet_obj._executor = executor
    _fleet = fleet_obj
    return fleet_obj


def _is_executor(obj: Any) -> bool:
    from ..core.executor import Executor  # noqa: PLC0415  (core is imported already; keeps this module light)
    return isinstance(obj, Executor)


def current() -> FleetBase:
    """The fleet ``init`` made (raises a clear error before ``init``)."""
    if _fleet is None:
        raise AttributeError("fleet.init(role_maker) must be called before using fleet")
    return _fleet


def split_files(files: Sequence[str], index: int | None = None, num: int | None = None) -> list[str]:
    """This worker's share of ``files`` (``fleet.split_files(files)`` after ``init``), or
    worker ``index`` of ``num``'s share when both are given."""
    if index is None or num is None:
        return current().split_files(files)
    return _split_files(files, index, num)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("." + _LAZY[name], __name__), name)
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(current(), name)


__all__ = ["FleetBase", "MPISymetricRoleMaker", "PaddleCloudRoleMaker", "Role", "UserDefinedCollectiveRoleMaker",
           "UserDefinedRoleMaker", "current", "init", "role_maker", "split_files"]
__all__ += sorted(_LAZY)  # ``from fleetkit.fleet import *`` gets them too (imported then)
