"""``fluid.incubate.fleet.base``: the role makers."""
from ....fleet import role_maker  # noqa: F401

__all__ = ["role_maker"]
