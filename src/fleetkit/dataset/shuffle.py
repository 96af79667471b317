"""Global shuffle: every instance goes to a pseudo-random trainer, as an all-to-all.

Each trainer draws a destination for each of its instances (``seed`` and its
rank fix the draw, so a fixed seed gives the same assignment), then sends each
peer only the instances addressed to it, straight over one TCP connection per
pair of trainers (``_mesh.py``), in frames of at most ``send_batch_size``
instances; its own share never leaves it.  A trainer therefore receives about
``total / N`` of the data, not every other trainer's whole buffer.  Every
trainer keeps what it received in (source rank, source order), checks that each
peer's announced count arrived, and shuffles its share locally with the seed.
Nothing is pickled: a frame is raw int64/float32 columns, checked against its
header before anything is kept.

The backend the fleet hands over (``fleet.data_exchange_backend``: tcp over the
workers' endpoints) is the rendezvous: it carries the mesh's listening ports and a random per-shuffle
token that every mesh connection must present.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ._mesh import Mesh, ShuffleStats
from .instances import InstanceStore

__all__ = ["DEFAULT_SEND_BATCH", "ShuffleStats", "global_shuffle", "shuffle_rng"]

#: instances each trainer sends per frame to a peer (Paddle's fleet_send_batch_size)
DEFAULT_SEND_BATCH = 80000


def shuffle_rng(seed: int | None, *stream: int) -> np.random.Generator:
    """A generator fixed by ``seed`` and ``stream`` (fresh entropy when seed is None)."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *stream])


def split_by_destination(store: InstanceStore, dest: np.ndarray, world: int) -> list[InstanceStore]:
    """``store``'s instances grouped by destination rank, each group in source order."""
    order = np.argsort(dest, kind="stable")
    bounds = np.zeros(world + 1, np.int64)
    np.cumsum(np.bincount(dest, minlength=world), out=bounds[1:])
    grouped = store.take(order)
    return [grouped.slice(int(bounds[d]), int(bounds[d + 1])) for d in range(world)]


def global_shuffle(store: InstanceStore, backend: Any, seed: int | None = None,
                   send_batch_size: int = DEFAULT_SEND_BATCH, stats: ShuffleStats | None = None) -> InstanceStore:
    """Redistribute ``store`` over the backend's ranks; returns this rank's share, shuffled.

    ``stats``, if given, is filled with what this rank sent and received."""
    rank, world = backend.rank, backend.world_size
    if send_batch_size < 1:
        raise InvalidArgumentError(f"send batch size must be >= 1, got {send_batch_size}")
    n = len(store)
    dest = shuffle_rng(seed, rank).integers(0, world, size=n) if n else np.zeros(0, np.int64)
    parts = split_by_destination(store, dest, world)
    with Mesh(backend, backend.timeout) as mesh:
        received = mesh.exchange(parts, store.slots, send_batch_size, stats)
    received[rank] = [parts[rank]]  # this rank's own share stays here
    mine = InstanceStore.concat(store.slots, [p for src in range(world) for p in received[src]])
    if len(mine) == 0:
        return mine
    return mine.take(shuffle_rng(seed, rank, 1).permutation(len(mine)))
