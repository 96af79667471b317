"""Values <-> ``VariableMessage`` wire bytes, without per-element Python work.

A message travels as an :class:`Envelope`: the protobuf header (every field except the
two payload fields) plus the raw ``rows`` and ``serialized`` byte slices.  Encoding
writes the header with protobuf and appends the payload fields by hand (tag, length,
bytes), so the tensor is copied once into the outgoing buffer; decoding walks the
top-level fields, keeps the payload fields as ``memoryview`` slices of the received
buffer and parses only the small header with protobuf, so ``np.frombuffer`` gives the
tensor without copying.  The result is an ordinary protobuf encoding: a plain
``VariableMessage.FromString`` reads it, and this module reads plain messages.

Values larger than ``max_bytes`` are split into ``chunk_count`` envelopes: the payload
stream (``rows`` bytes, then ``serialized`` bytes) is cut into equal pieces of
``ceil(total / chunk_count)`` bytes, so a receiver can place any chunk at once from its
index (:class:`Reassembler`).  Nothing received is ever unpickled; every length is
checked against the header before it is used.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from ..core.backend import to_numpy
from ..core.scope import LoDTensor, SelectedRows, check_lod
from ..errors import DTypeError, InvalidArgumentError
from ..proto.sendrecv_pb2 import SELECTED_ROWS, LOD_TENSOR, VariableMessage

__all__ = ["Envelope", "PayloadError", "Reassembler", "Value", "DEFAULT_MAX_MESSAGE_BYTES",
           "control", "decode", "dense_parts", "encode", "from_bytes", "header_from_bytes", "to_bytes",
           "wire_parts", "to_message", "from_message", "payload_nbytes"]

Value = Union[np.ndarray, LoDTensor, SelectedRows]
#: default largest payload per message (chunks above it); gRPC limits get headroom on top
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
_T = VariableMessage
_DTYPES: dict[str, int] = {
    "bool": _T.BOOL, "int16": _T.INT16, "int32": _T.INT32, "int64": _T.INT64,
    "float16": _T.FP16, "float32": _T.FP32, "float64": _T.FP64, "int8": _T.INT8,
    "uint8": _T.UINT8, "uint16": _T.UINT16, "uint32": _T.UINT32, "uint64": _T.UINT64,
}
_NP: dict[int, np.dtype] = {code: np.dtype(name).newbyteorder("<") for name, code in _DTYPES.items()}
#: the same table keyed by native dtype objects: ``dtype.name`` builds a new string on every
#: access (about 2.7 us), a dict lookup by dtype does not
_CODE_OF: dict[np.dtype, int] = {np.dtype(name): code for name, code in _DTYPES.items()}
_ROWS_FIELD, _DATA_FIELD = 9, 8
_ROWS_TAG, _DATA_TAG = bytes([(9 << 3) | 2]), bytes([(8 << 3) | 2])


class PayloadError(InvalidArgumentError):
    """A message is malformed: truncated or oversized payload, bad dims, unknown dtype, bad LoD."""


@dataclass
class Envelope:
    """One wire message: the protobuf header plus the raw payload slices."""

    header: VariableMessage = field(default_factory=VariableMessage)
    rows: Any = b""   # bytes-like: int64 row ids (SelectedRows) or this chunk's part
    data: Any = b""   # bytes-like: tensor bytes or this chunk's part

    @property
    def name(self) -> str:
        return self.header.varname


# ----------------------------------------------------------------- raw wire
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def wire_parts(env: Envelope) -> list[Any]:
    """The wire encoding as a list of bytes-like pieces (the payloads uncopied): write
    them in order to a file, or join them."""
    parts: list[Any] = [env.header.SerializeToString()]
    for tag, payload in ((_ROWS_TAG, env.rows), (_DATA_TAG, env.data)):
        n = memoryview(payload).nbytes
        if n:
            parts += [tag, _varint(n), payload]
    return parts


def to_bytes(env: Envelope) -> bytes:
    """Serialize an envelope (one copy of the payload, into the returned buffer)."""
    return b"".join(wire_parts(env))


def _read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= end or shift > 63:
            raise PayloadError("truncated or malformed message (bad varint)")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def from_bytes(raw: Any) -> Envelope:
    """Parse wire bytes; the payload slices are views of ``raw`` (no copy)."""
    buf = memoryview(raw).cast("B")
    end, pos = buf.nbytes, 0
    header_parts: list[memoryview] = []
    rows: Any = b""
    data: Any = b""
    while pos < end:
        start = pos
        tag, pos = _read_varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _read_varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            n, pos = _read_varint(buf, pos, end)
            if number in (_ROWS_FIELD, _DATA_FIELD):
                if pos + n > end:
                    raise PayloadError(f"truncated payload: field {number} declares {n} bytes, "
                                       f"only {end - pos} present")
                if number == _ROWS_FIELD:
                    rows = buf[pos:pos + n]
                else:
                    data = buf[pos:pos + n]
                pos += n
                continue
            pos += n
        else:
            raise PayloadError(f"malformed message: wire type {wire} of field {number}")
        if pos > end:
            raise PayloadError(f"truncated message: field {number} runs past the end")
        header_parts.append(buf[start:pos])
    try:
        header = VariableMessage.FromString(b"".join(header_parts))
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise PayloadError(f"malformed message header: {e}") from None
    return Envelope(header, rows, data)


def header_from_bytes(raw: Any) -> VariableMessage:
    """A header sent apart from its payload (the bulk channel's frames), parsed by protobuf
    in one call instead of walking its fields.  PayloadError if it is malformed or carries
    a payload field itself."""
    try:
        header = VariableMessage.FromString(raw)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise PayloadError(f"malformed message header: {e}") from None
    if header.rows or header.serialized:
        raise PayloadError("payload inside the bulk frame's header")
    return header


def to_message(env: Envelope) -> VariableMessage:
    """A plain protobuf message with the payload inside (tests, interop)."""
    msg = VariableMessage()
    msg.CopyFrom(env.header)
    msg.rows, msg.serialized = bytes(env.rows), bytes(env.data)
    return msg


def from_message(msg: VariableMessage) -> Envelope:
    """An envelope from a plain protobuf message."""
    header = VariableMessage()
    header.CopyFrom(msg)
    header.ClearField("rows")
    header.ClearField("serialized")
    return Envelope(header, msg.rows, msg.serialized)


# ------------------------------------------------------------------ values
def _host_array(a: Any, name: str) -> tuple[np.ndarray, int]:
    """(``a`` as a little-endian contiguous numpy array, its wire data_type)."""
    a = to_numpy(a) if not isinstance(a, np.ndarray) else a
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    code = _CODE_OF.get(a.dtype)
    if code is None:
        raise DTypeError(f"variable '{name}': dtype {a.dtype.name} cannot be sent "
                         f"(supported: {', '.join(_DTYPES)})")
    return (a if a.flags.c_contiguous else np.ascontiguousarray(a)), code   # (ascontiguousarray makes 0-d 1-d)


def control(name: str, trainer_id: int = 0, **fields: Any) -> Envelope:
    """A payload-free message (barriers, get/prefetch requests, checkpoint notify)."""
    return Envelope(VariableMessage(varname=name, trainer_id=trainer_id, **fields))


def encode(name: str, value: Value, trainer_id: int = 0, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
           **fields: Any) -> list[Envelope]:
    """Encode ``value`` as one envelope, or several when its payload exceeds ``max_bytes``.

    ``fields`` sets further header fields (``round``, ``table_name``, ``out_varname``...).
    The payload slices are views of the (contiguous) value, not copies.
    """
    header = VariableMessage(varname=name, trainer_id=trainer_id, **fields)
    rows: Any = b""
    if isinstance(value, SelectedRows):
        arr, code = _host_array(value.values, name)
        ids = np.ascontiguousarray(np.asarray(value.rows, dtype="<i8"))
        if len(ids) != (arr.shape[0] if arr.ndim else 1):
            raise InvalidArgumentError(f"variable '{name}': SelectedRows has {len(ids)} rows but "
                                       f"values of shape {arr.shape}")
        header.type, header.slr_height = SELECTED_ROWS, value.height
        rows = memoryview(ids).cast("B")
    else:
        lod = value.lod() if isinstance(value, LoDTensor) else []
        arr, code = _host_array(value.values if isinstance(value, LoDTensor) else value, name)
        header.type, header.lod_level = LOD_TENSOR, len(lod)
        for level in lod:
            header.lod.add().lod_data.extend(level)
    header.data_type = code
    header.dims.extend(arr.shape)
    data = memoryview(arr.reshape(-1)).cast("B") if arr.size else b""
    return _chunk(header, rows, data, max_bytes)


def dense_parts(name: str, value: Any) -> tuple[bytes, memoryview] | None:
    """(header bytes, tensor bytes) of ``encode(name, value)`` in one piece, for a plain
    contiguous little-endian numpy array: the header is built once per (name, dtype, shape)
    and reused, since a pserver serves the same blocks over and over.  None for any other
    value (LoD, SelectedRows, other layouts: use ``encode``)."""
    if type(value) is not np.ndarray or not value.flags.c_contiguous or value.dtype.byteorder == ">":
        return None
    code = _CODE_OF.get(value.dtype)
    if code is None:
        return None
    return _dense_header(name, code, value.shape), memoryview(value.reshape(-1)).cast("B")


@functools.lru_cache(maxsize=4096)
def _dense_header(name: str, code: int, dims: tuple[int, ...]) -> bytes:
    return VariableMessage(varname=name, type=LOD_TENSOR, data_type=code, dims=dims).SerializeToString()


def _chunk(header: VariableMessage, rows: Any, data: Any, max_bytes: int) -> list[Envelope]:
    nrows, ndata = memoryview(rows).nbytes, memoryview(data).nbytes
    total = nrows + ndata
    if total <= max_bytes:
        return [Envelope(header, rows, data)]
    count = math.ceil(total / max_bytes)
    size = math.ceil(total / count)
    out = []
    for k in range(count):
        lo, hi = k * size, min(total, (k + 1) * size)
        h = VariableMessage()
        h.CopyFrom(header)
        h.chunk_index, h.chunk_count = k, count
        r = rows[lo:min(hi, nrows)] if lo < nrows else b""
        d = data[max(lo - nrows, 0):hi - nrows] if hi > nrows else b""
        out.append(Envelope(h, r, d))
    return out


def payload_nbytes(header: VariableMessage) -> tuple[int, int]:
    """(rows bytes, tensor bytes) the header announces for the whole value."""
    _, _, nrows, ndata = _announced(header)
    return nrows, ndata


def _announced(header: VariableMessage) -> tuple[tuple[int, ...], np.dtype, int, int]:
    """(dims, dtype, rows bytes, tensor bytes) the header announces."""
    dtype = _NP.get(header.data_type)
    if dtype is None:
        raise PayloadError(f"variable '{header.varname}': unknown data_type {header.data_type}")
    dims = tuple(header.dims)   # once: each pass over a protobuf repeated field costs ~1.5 us
    if dims and min(dims) < 0:
        raise PayloadError(f"variable '{header.varname}': negative dims {list(dims)}")
    numel = math.prod(dims)   # no dims: a 0-d scalar
    nrows = 8 * (dims[0] if dims else 0) if header.type == SELECTED_ROWS else 0
    return dims, dtype, nrows, numel * dtype.itemsize


def decode(env: Envelope) -> Value:
    """The value of a whole (not chunked, or reassembled) envelope.

    Dense tensors without LoD come back as numpy arrays viewing the message bytes
    (read-only unless the buffer was writable, e.g. a reassembled one).
    """
    h = env.header
    if h.chunk_count > 1:
        raise PayloadError(f"variable '{h.varname}': chunk {h.chunk_index} of {h.chunk_count} "
                           f"decoded alone (reassemble first)")
    if h.type not in (LOD_TENSOR, SELECTED_ROWS):
        raise PayloadError(f"variable '{h.varname}': unsupported var type {h.type}")
    dims, dtype, nrows, ndata = _announced(h)
    got_rows, got_data = memoryview(env.rows).nbytes, memoryview(env.data).nbytes
    if (got_rows, got_data) != (nrows, ndata):
        what = "truncated" if got_rows + got_data < nrows + ndata else "oversized"
        raise PayloadError(
            f"{what} payload for variable '{h.varname}': dims {list(dims)} dtype "
            f"{dtype.name} need {ndata} tensor bytes + {nrows} row bytes, "
            f"got {got_data} + {got_rows}")
    # np.ndarray over the buffer: a view like np.frombuffer(...).reshape(dims), in one call
    arr = np.ndarray(dims, dtype, env.data) if ndata else np.empty(0, dtype).reshape(dims)
    if h.type == SELECTED_ROWS:
        ids = np.frombuffer(env.rows, dtype="<i8") if nrows else np.empty(0, np.int64)
        if h.slr_height < 0 or (len(ids) and (ids.min() < 0 or (h.slr_height and ids.max() >= h.slr_height))):
            raise PayloadError(f"variable '{h.varname}': SelectedRows row ids outside "
                               f"[0, {h.slr_height})")
        return SelectedRows(ids, arr, h.slr_height)
    if h.lod_level or len(h.lod):
        lod = [list(level.lod_data) for level in h.lod]
        if len(lod) != h.lod_level:
            raise PayloadError(f"variable '{h.varname}': lod_level {h.lod_level} but {len(lod)} levels")
        why = check_lod(lod, arr.shape[0] if arr.ndim else 0)
        if why:
            raise PayloadError(f"variable '{h.varname}': bad LoD: {why}")
        return LoDTensor(arr, lod)
    return arr


class Reassembler:
    """Collects the chunks of chunked values; ``add`` returns the whole envelope once
    its last chunk arrived (chunks may arrive in any order), else None.

    Keys are (trainer id, var name, round, kind) so concurrent values never mix.  Nothing
    is allocated for what a header merely declares: each chunk is checked against the
    header (index, size) and kept as received, and the whole value is joined only when
    every chunk is there.  Bytes held for unfinished values are bounded per trainer
    (``max_bytes_per_trainer``) and in all (``max_bytes``); values whose last chunk came
    more than ``timeout_s`` ago are dropped.  None: no bound (a client's own replies).
    """

    #: bytes charged per stored chunk on top of its payload (bookkeeping)
    OVERHEAD = 512

    def __init__(self, max_bytes_per_trainer: int | None = None, max_bytes: int | None = None,
                 timeout_s: float | None = None, max_values_per_trainer: int = 256,
                 clock: Any = None) -> None:
        self._parts: dict[tuple, _Pending] = {}
        self._per_trainer, self._max = max_bytes_per_trainer, max_bytes
        self._timeout, self._max_values = timeout_s, max_values_per_trainer
        self._clock = clock or time.monotonic
        self._held: dict[int, int] = {}     # trainer -> bytes held
        self.held = 0                       #: bytes held for unfinished values, all trainers

    def add(self, env: Envelope, kind: str = "") -> Envelope | None:
        h = env.header
        if h.chunk_count <= 1:
            return env
        self.expire()
        if not 0 <= h.chunk_index < h.chunk_count:
            raise PayloadError(f"variable '{h.varname}': chunk_index {h.chunk_index} outside "
                               f"[0, {h.chunk_count})")
        nrows, ndata = payload_nbytes(h)
        total = nrows + ndata
        if self._per_trainer is not None and total > self._per_trainer:
            raise PayloadError(f"variable '{h.varname}': a chunked value of {total} bytes exceeds this "
                               f"pserver's reassembly limit of {self._per_trainer} bytes per trainer")
        if h.chunk_count > max(total, 1):
            raise PayloadError(f"variable '{h.varname}': {h.chunk_count} chunks for {total} bytes")
        size = math.ceil(total / h.chunk_count)
        lo, hi = h.chunk_index * size, min(total, (h.chunk_index + 1) * size)
        r, d = memoryview(env.rows).cast("B"), memoryview(env.data).cast("B")
        want_r = max(0, min(hi, nrows) - lo)
        if (r.nbytes, d.nbytes) != (want_r, max(hi - lo, 0) - want_r):
            raise PayloadError(f"truncated chunk {h.chunk_index}/{h.chunk_count} of variable "
                               f"'{h.varname}': expected {max(hi - lo, 0)} bytes, got {r.nbytes + d.nbytes}")
        key = (h.trainer_id, h.varname, h.round, kind)
        entry = self._parts.get(key)
        if entry is not None and not entry.matches(h):
            self._drop(key)    # a new value under the same key (a restarted sender)
            entry = None
        if entry is None and sum(1 for k in self._parts if k[0] == h.trainer_id) >= self._max_values:
            raise PayloadError(f"variable '{h.varname}': trainer {h.trainer_id} already has "
                               f"{self._max_values} unfinished chunked values on this pserver")
        cost = r.nbytes + d.nbytes + self.OVERHEAD
        old = entry.cost_of(h.chunk_index) if entry is not None else 0   # a retried chunk replaces its copy
        self._reserve(h, cost - old)
        if entry is None:
            entry = self._parts[key] = _Pending(h, nrows, ndata)
        entry.store(h.chunk_index, r, d, cost, self._clock())
        if len(entry.chunks) < h.chunk_count:
            return None
        self._drop(key)
        return entry.join()

    def _reserve(self, h: VariableMessage, n: int) -> None:
        t = h.trainer_id
        mine = self._held.get(t, 0)
        if self._per_trainer is not None and mine + n > self._per_trainer:
            raise PayloadError(f"variable '{h.varname}': chunk {h.chunk_index} would make trainer {t}'s "
                               f"unfinished chunked values exceed this pserver's limit of "
                               f"{self._per_trainer} bytes per trainer ({mine} held)")
        if self._max is not None and self.held + n > self._max:
            raise PayloadError(f"variable '{h.varname}': chunk {h.chunk_index} would make unfinished "
                               f"chunked values exceed this pserver's limit of {self._max} bytes "
                               f"({self.held} held)")
        self._held[t] = mine + n
        self.held += n

    def _drop(self, key: tuple) -> None:
        entry = self._parts.pop(key)
        self._held[key[0]] = self._held.get(key[0], 0) - entry.nbytes
        self.held -= entry.nbytes

    def expire(self) -> list[tuple]:
        """Drop values whose last chunk came more than ``timeout_s`` ago; their keys."""
        if self._timeout is None:
            return []
        old = self._clock() - self._timeout
        stale = [k for k, e in self._parts.items() if e.touched < old]
        for k in stale:
            self._drop(k)
        return stale

    def discard(self, trainer_id: int) -> None:
        """Forget the partial values of one trainer (it left)."""
        for key in [k for k in self._parts if k[0] == trainer_id]:
            self._drop(key)


class _Pending:
    """The chunks of one value received so far (views of the received messages)."""

    def __init__(self, header: VariableMessage, nrows: int, ndata: int) -> None:
        self.header, self.nrows, self.ndata = header, nrows, ndata
        self.chunks: dict[int, tuple[Any, Any, int]] = {}
        self.nbytes, self.touched = 0, 0.0

    def matches(self, h: VariableMessage) -> bool:
        f = self.header
        return (f.chunk_count, list(f.dims), f.data_type, f.type) == (h.chunk_count, list(h.dims),
                                                                      h.data_type, h.type)

    def cost_of(self, index: int) -> int:
        return self.chunks[index][2] if index in self.chunks else 0

    def store(self, index: int, rows: memoryview, data: memoryview, cost: int, now: float) -> None:
        self.nbytes += cost - self.cost_of(index)
        self.chunks[index] = (rows, data, cost)
        self.touched = now

    def join(self) -> Envelope:
        """The whole value in fresh (writable) buffers; chunks are consecutive slices of
        the (rows bytes, tensor bytes) stream."""
        rows, data = bytearray(self.nrows), bytearray(self.ndata)
        pos = 0
        for k in range(len(self.chunks)):
            r, d, _ = self.chunks[k]
            if r.nbytes:
                rows[pos:pos + r.nbytes] = r
            if d.nbytes:
                start = max(pos + r.nbytes - self.nrows, 0)
                data[start:start + d.nbytes] = d
            pos += r.nbytes + d.nbytes
        whole = VariableMessage()
        whole.CopyFrom(self.header)
        whole.chunk_index, whole.chunk_count = 0, 1
        return Envelope(whole, rows, data)
