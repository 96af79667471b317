"""The ``checkpoint_notify`` op (fluid 1.4): ask pservers to save their state into a directory.

``fluid.io.save_persistables`` on trainer 0 of a parameter-server job runs it (see
``core/io_distributed.py``): each pserver in ``epmap`` writes its whole state, its
shard of every distributed table included, to ``<dir>/pserver_<index>.fkckpt``.  The
pserver only accepts directories it was configured with (``FLEETKIT_PS_NOTIFY_DIRS``,
its checkpoint_dir), and says so otherwise.
"""
from __future__ import annotations

from typing import Any

from ..core.registry import register_op
from ..errors import InvalidArgumentError

__all__ = ["checkpoint_notify"]


@register_op("checkpoint_notify", attrs={"epmap": [], "dir": "", "lookup_table": "", "trainer_id": 0})
def checkpoint_notify(ctx: Any) -> None:
    """Every pserver of ``epmap`` saves its state under ``dir`` (one concurrent call each)."""
    from ..pserver.api import get_client  # noqa: PLC0415  (gRPC only when a program really talks)
    eps, dirname = list(ctx.attrs["epmap"]), str(ctx.attrs["dir"])
    if not eps or not dirname:
        raise InvalidArgumentError(f"op 'checkpoint_notify': needs endpoints and a directory, got epmap={eps} "
                                   f"dir={dirname!r}")
    get_client(int(ctx.attrs["trainer_id"])).checkpoint_notify(eps, dirname, str(ctx.attrs["lookup_table"]))
