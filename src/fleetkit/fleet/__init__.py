"""``fleetkit.fleet``: role makers and the fleet API (modes are added by the PS / collective work)."""
from . import role_maker  # noqa: F401
from .base import FleetBase, split_files
from .role_maker import (MPISymetricRoleMaker, PaddleCloudRoleMaker, Role, UserDefinedCollectiveRoleMaker,
                         UserDefinedRoleMaker)

__all__ = ["FleetBase", "MPISymetricRoleMaker", "PaddleCloudRoleMaker", "Role", "UserDefinedCollectiveRoleMaker",
           "UserDefinedRoleMaker", "role_maker", "split_files"]
