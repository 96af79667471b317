"""``fluid.incubate.fleet.base.role_maker``: ``fleetkit.fleet.role_maker`` under its 1.4 path."""
from ....fleet.role_maker import (MPISymetricRoleMaker, PaddleCloudRoleMaker, Role, RoleMakerBase,  # noqa: F401
                                  UserDefinedCollectiveRoleMaker, UserDefinedRoleMaker)

__all__ = ["MPISymetricRoleMaker", "PaddleCloudRoleMaker", "Role", "RoleMakerBase",
           "UserDefinedCollectiveRoleMaker", "UserDefinedRoleMaker"]
