"""The small header ranks exchange before every collective, and its checks.

Before moving any data, every rank shares a fixed-size description of the call
it is making: sequence number, collective, op, root, dtype and shape.  With all
ranks' headers in hand each rank runs the same check, so a mismatch (different
sizes, dtypes, ops, or a rank that skipped a call) raises the same
``CollectiveMismatchError`` on every rank instead of silently mis-reducing or
desynchronising the byte stream.  The header is plain ``struct`` bytes: nothing
from the network is ever unpickled.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from ..errors import CollectiveMismatchError, DTypeError, InvalidArgumentError
from .constants import MAX_NDIM, REDUCE_OPS

COLLECTIVES = ("all_reduce", "all_gather", "broadcast", "reduce_scatter", "barrier")
_MAGIC = 0x464B4331  # "FKC1"
_FORMAT = struct.Struct(f"<IQBBi8sB{MAX_NDIM}q")
#: Size in bytes of one packed header.
HEADER_BYTES = _FORMAT.size


@dataclass(frozen=True)
class Header:
    """What one rank is about to do: the ``seq``-th collective of its group."""

    seq: int
    coll: str
    op: str = ""
    root: int = -1
    dtype: str = ""
    shape: tuple[int, ...] = ()

    def pack(self) -> bytes:
        """Fixed-size little-endian bytes (HEADER_BYTES long)."""
        coll = COLLECTIVES.index(self.coll)
        op = REDUCE_OPS.index(self.op) + 1 if self.op else 0
        dims = list(self.shape) + [0] * (MAX_NDIM - len(self.shape))
        return _FORMAT.pack(_MAGIC, self.seq, coll, op, self.root, self.dtype.encode("ascii"),
                            len(self.shape), *dims)

    @classmethod
    def unpack(cls, data: bytes | memoryview, source: str = "peer") -> "Header":
        """Parse bytes made by ``pack``; a bad magic means a corrupt or foreign stream."""
        magic, seq, coll, op, root, dtype, ndim, *dims = _FORMAT.unpack(data)
        if magic != _MAGIC or coll >= len(COLLECTIVES) or op > len(REDUCE_OPS) or ndim > MAX_NDIM:
            raise CollectiveMismatchError(
                f"bad collective header from {source} (magic {magic:#x}): the byte streams "
                "are out of step or another program connected")
        return cls(seq, COLLECTIVES[coll], REDUCE_OPS[op - 1] if op else "", root,
                   dtype.rstrip(b"\0").decode("ascii"), tuple(dims[:ndim]))

    def describe(self) -> str:
        """Human form used in error messages, e.g. ``all_reduce(sum) float32[1001]``."""
        arg = self.op or (f"root={self.root}" if self.coll == "broadcast" else "")
        what = f"{self.coll}({arg})"
        if self.coll == "barrier":
            return what
        return f"{what} {np.dtype(self.dtype).name}{list(self.shape)}"


def make_header(seq: int, coll: str, array: object | None = None, op: str = "",
                root: int = -1) -> Header:
    """Describe a call; ``array`` needs ``.dtype`` and ``.shape`` (numpy or cupy)."""
    if array is None:
        return Header(seq, coll, op, root)
    return Header(seq, coll, op, root, np.dtype(array.dtype).str, tuple(int(d) for d in array.shape))


def check_array(array: object, coll: str) -> None:
    """Reject arrays no backend can move: odd dtypes, too many dimensions."""
    dtype = np.dtype(getattr(array, "dtype"))
    if dtype.kind not in "biufc" or dtype.fields is not None:
        raise DTypeError(f"{coll}: dtype {dtype} is not supported (bool, int, uint, float, complex)")
    if len(array.shape) > MAX_NDIM:  # type: ignore[attr-defined]
        raise InvalidArgumentError(f"{coll}: arrays of more than {MAX_NDIM} dims are not supported "
                                   f"(got shape {tuple(array.shape)})")  # type: ignore[attr-defined]


def check_headers(headers: list[Header]) -> None:
    """Raise CollectiveMismatchError unless all ranks' headers describe one call.

    Every rank runs this on the same list, so every rank raises the same error.
    """
    first = headers[0]
    for rank, other in enumerate(headers[1:], start=1):
        problem = _difference(first, other)
        if problem:
            raise CollectiveMismatchError(
                f"collective #{first.seq}: ranks disagree on {problem}: rank 0 called "
                f"{first.describe()}, rank {rank} called {other.describe()}"
                + (f" (rank 0 is at call #{first.seq}, rank {rank} at #{other.seq}: "
                   "a rank skipped or repeated a collective)" if other.seq != first.seq else ""))


def _difference(a: Header, b: Header) -> str:
    if a.seq != b.seq:
        return "the call sequence"
    if a.coll != b.coll:
        return "the collective"
    if a.op != b.op:
        return "the reduce op"
    if a.root != b.root:
        return "the root"
    if a.dtype != b.dtype:
        return "the dtype"
    if a.coll == "all_gather":
        # Only the first dimension may differ between ranks.
        if len(a.shape) != len(b.shape) or a.shape[1:] != b.shape[1:]:
            return "the shape (all_gather allows only the first dim to differ)"
    elif a.shape != b.shape:
        return "the shape"
    return ""
