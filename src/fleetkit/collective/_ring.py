"""Ring schedules: which element ranges a rank sends and receives, in what order.

Pure functions (no sockets) so the algorithms can be unit-tested by simulation.

A ring has ``n`` ranks; rank r sends to ``r + 1`` and receives from ``r - 1``.
The buffer is cut into ``n`` segments; each collective is a list of steps
``(send_segment, recv_segment, reduce)``.  Segments are cut further into chunks
and every step's send of chunk c depends only on the previous step's receive of
chunk c, so sending, receiving and reducing overlap across chunks and steps.

* reduce-scatter, step t: send segment r-t-1, receive segment r-t-2 and reduce
  it; after n-1 steps segment r holds the full reduction.
* all-gather, step t: send segment r-t, receive segment r-t-1 (a copy).
* all-reduce = reduce-scatter then all-gather: every rank sends and receives
  2(n-1)/n of the buffer, the bandwidth optimum.
"""
from __future__ import annotations

from dataclasses import dataclass

Step = tuple[int, int, bool]  # (send segment, receive segment, reduce on receive)


@dataclass(frozen=True)
class SendItem:
    """Send elements [start, end); first wait until ``gate`` receives have finished."""

    start: int
    end: int
    gate: int


@dataclass(frozen=True)
class RecvItem:
    """Receive elements [start, end); ``reduce`` combines them with the local values."""

    start: int
    end: int
    reduce: bool


def reduce_scatter_steps(rank: int, n: int) -> list[Step]:
    """Steps after which segment ``rank`` holds the reduction over all ranks."""
    return [((rank - t - 1) % n, (rank - t - 2) % n, True) for t in range(n - 1)]


def all_gather_steps(rank: int, n: int) -> list[Step]:
    """Steps that spread every rank's own segment ``rank`` to all ranks."""
    return [((rank - t) % n, (rank - t - 1) % n, False) for t in range(n - 1)]


def all_reduce_steps(rank: int, n: int) -> list[Step]:
    """Reduce-scatter followed by all-gather."""
    return reduce_scatter_steps(rank, n) + all_gather_steps(rank, n)


def chunks(start: int, end: int, size: int) -> list[tuple[int, int]]:
    """[start, end) cut into pieces of at most ``size`` elements (none if empty)."""
    return [(a, min(a + size, end)) for a in range(start, end, size)]


def schedule(steps: list[Step], bounds: list[tuple[int, int]],
             chunk: int) -> tuple[list[SendItem], list[RecvItem]]:
    """Turn ring steps over segments ``bounds`` into gated send and receive items."""
    sends: list[SendItem] = []
    recvs: list[RecvItem] = []
    filled: dict[tuple[int, int], int] = {}  # (segment, chunk index) -> receive number
    for send_seg, recv_seg, reduce in steps:
        for i, (a, b) in enumerate(chunks(*bounds[send_seg], chunk)):
            sends.append(SendItem(a, b, filled.get((send_seg, i), 0)))
        for i, (a, b) in enumerate(chunks(*bounds[recv_seg], chunk)):
            recvs.append(RecvItem(a, b, reduce))
            filled[(recv_seg, i)] = len(recvs)
    return sends, recvs


def broadcast_schedule(rank: int, root: int, n: int, total: int,
                       chunk: int) -> tuple[list[SendItem], list[RecvItem]]:
    """A pipelined chain root -> root+1 -> ... -> root-1 along the ring.

    Each rank forwards chunk c as soon as it has received it, so the time is
    about (n - 2) chunk transfers plus one pass of the whole buffer.
    """
    position = (rank - root) % n
    pieces = chunks(0, total, chunk)
    recvs = [] if position == 0 else [RecvItem(a, b, False) for a, b in pieces]
    if position == n - 1:
        return [], recvs
    gates = [0] * len(pieces) if position == 0 else list(range(1, len(pieces) + 1))
    return [SendItem(a, b, g) for (a, b), g in zip(pieces, gates)], recvs
