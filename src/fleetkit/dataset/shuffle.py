"""Global shuffle: every instance goes to a pseudo-random trainer over a real transport.

Each trainer draws a destination for each of its instances (``seed`` and its
rank fix the draw, so a fixed seed gives the same assignment), then the
trainers exchange instances in rounds of at most ``send_batch_size`` each with
the collective backend's ``all_gather`` (sizes may differ per rank); every
trainer keeps the instances addressed to it, in (source rank, source order),
and shuffles them locally with the seed.  Nothing is pickled: a round's
payload is one byte buffer of raw int64/float32 columns.

The transport is a ``tcp`` collective backend on the trainers' endpoints
(``fleet.worker_endpoints()``), opened for the shuffle and closed after it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from .instances import InstanceStore

__all__ = ["DEFAULT_SEND_BATCH", "global_shuffle", "open_backend", "shuffle_rng"]

#: instances each trainer sends per round (Paddle's fleet_send_batch_size)
DEFAULT_SEND_BATCH = 80000


def shuffle_rng(seed: int | None, *stream: int) -> np.random.Generator:
    """A generator fixed by ``seed`` and ``stream`` (fresh entropy when seed is None)."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *stream])


def open_backend(fleet: Any, timeout: float) -> Any:
    """A tcp collective backend over the fleet's worker endpoints."""
    from ..collective.backends.tcp import TcpBackend
    endpoints = list(fleet.worker_endpoints())
    rank, world = int(fleet.worker_index()), int(fleet.worker_num())
    if len(endpoints) != world:
        raise InvalidArgumentError(f"global_shuffle: fleet has {world} workers but {len(endpoints)} worker "
                                   f"endpoints {endpoints}: each trainer needs an endpoint to exchange data (parameter-server "
                                   f"jobs: set PADDLE_TRAINER_ENDPOINTS for the trainers, or give the role maker "
                                   f"worker_endpoints)")
    return TcpBackend(rank=rank, endpoints=endpoints, timeout=timeout, prefix="fleetkit/shuffle/")


def _encode(store: InstanceStore, dest: np.ndarray, world: int) -> np.ndarray:
    """One uint8 buffer: [count per destination], then per slot [lengths][values], all
    instances ordered by destination (stable, so source order is kept)."""
    order = np.argsort(dest, kind="stable")
    part = store.take(order)
    counts = np.bincount(dest, minlength=world).astype(np.int64)
    pieces = [counts.view(np.uint8)]
    for k in range(len(part.slots)):
        pieces.append(part.lengths(k).astype(np.int64).view(np.uint8))
        pieces.append(np.ascontiguousarray(part.values[k]).view(np.uint8))
    return np.concatenate(pieces)  # never empty: the counts come first


def _decode_for(buf: np.ndarray, store: InstanceStore, rank: int, world: int) -> InstanceStore:
    """The instances addressed to ``rank`` in a buffer made by ``_encode``."""
    counts = buf[:8 * world].view(np.int64)
    n = int(counts.sum())
    lo, hi = int(counts[:rank].sum()), int(counts[:rank + 1].sum())
    pos = 8 * world
    values, offsets = [], []
    for slot in store.slots:
        lens = buf[pos:pos + 8 * n].view(np.int64)
        pos += 8 * n
        total = int(lens.sum())
        item = slot.dtype.itemsize
        vals = buf[pos:pos + item * total].view(slot.dtype)
        pos += item * total
        v_lo, v_hi = int(lens[:lo].sum()), int(lens[:hi].sum())
        mine = lens[lo:hi]
        off = np.zeros(len(mine) + 1, np.int64)
        np.cumsum(mine, out=off[1:])
        values.append(vals[v_lo:v_hi].copy())
        offsets.append(off)
    return InstanceStore(store.slots, values, offsets)


def global_shuffle(store: InstanceStore, backend: Any, seed: int | None = None,
                   send_batch_size: int = DEFAULT_SEND_BATCH) -> InstanceStore:
    """Redistribute ``store`` over the backend's ranks; returns this rank's share, shuffled."""
    rank, world = backend.rank, backend.world_size
    if send_batch_size < 1:
        raise InvalidArgumentError(f"send batch size must be >= 1, got {send_batch_size}")
    rng = shuffle_rng(seed, rank)
    n = len(store)
    dest = rng.integers(0, world, size=n) if n else np.zeros(0, np.int64)
    # every rank must run the same number of rounds
    rounds = int(backend.all_reduce(np.array([-(-n // send_batch_size)], np.int64), op="max")[0])
    received: list[list[InstanceStore]] = [[] for _ in range(world)]
    for r in range(rounds):
        lo, hi = min(r * send_batch_size, n), min((r + 1) * send_batch_size, n)
        buf = _encode(store.slice(lo, hi), dest[lo:hi], world)
        for src, part in enumerate(backend.all_gather(buf)):
            received[src].append(_decode_for(np.asarray(part), store, rank, world))
    mine = InstanceStore.concat(store.slots, [p for parts in received for p in parts])
    if len(mine) == 0:
        return mine
    return mine.take(shuffle_rng(seed, rank, 1).permutation(len(mine)))
