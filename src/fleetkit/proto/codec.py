"""Codecs between Python/numpy values and the formats of ``framework.proto``.

Two independent parts:

- attribute values: ``encode_value``/``decode_value`` map op attributes (ints, floats,
  strings, bools, None, lists and dicts of those, sub-blocks) to ``Attr`` and back
  without changing a value's type: ints stay ints, floats stay floats, a list (even an
  empty one) comes back as a list.  Tuples come back as lists.
- tensors: ``write_lod_tensor``/``write_selected_rows`` and a bounds-checked
  ``TensorReader`` for the little-endian layout of parameter files (docs/formats.md).
  Reading checks every length against the bytes that are really there before
  allocating, so a corrupt file gives an error naming the file and variable, never a
  huge allocation or a silently wrong array.  Nothing is ever unpickled.
"""
from __future__ import annotations

import os
import struct
import sys
from typing import Any, BinaryIO, Callable, Sequence

import numpy as np
from google.protobuf.message import DecodeError

from ..errors import DTypeError, InvalidArgumentError
from .framework_pb2 import Attr, DataType, TensorDesc

# ------------------------------------------------------------------ dtypes
_DTYPES: dict[str, int] = {
    "bool": DataType.DT_BOOL, "int8": DataType.DT_INT8, "uint8": DataType.DT_UINT8,
    "int16": DataType.DT_INT16, "uint16": DataType.DT_UINT16, "int32": DataType.DT_INT32,
    "uint32": DataType.DT_UINT32, "int64": DataType.DT_INT64, "uint64": DataType.DT_UINT64,
    "float16": DataType.DT_FP16, "float32": DataType.DT_FP32, "float64": DataType.DT_FP64,
    "complex64": DataType.DT_COMPLEX64, "complex128": DataType.DT_COMPLEX128,
}
_CODES: dict[int, np.dtype] = {code: np.dtype(name) for name, code in _DTYPES.items()}

#: versions written in (and accepted from) the uint32 headers of parameter files
LOD_TENSOR_VERSION = 0
TENSOR_VERSION = 0
SELECTED_ROWS_VERSION = 0
#: deeper LoD than this is taken as corruption (fluid programs use 1 or 2 levels)
MAX_LOD_LEVEL = 64

_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1


class TensorFormatError(InvalidArgumentError):
    """A parameter file (or tensor bytes) is truncated, corrupt or of an unknown version."""


def dtype_to_proto(dtype: Any, what: str = "tensor") -> int:
    """``DataType`` code of a numpy dtype (or dtype name); DTypeError names ``what`` if unsupported."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    code = _DTYPES.get(name)
    if code is None:
        raise DTypeError(f"{what}: dtype {name!r} cannot be serialized (supported: {', '.join(_DTYPES)})")
    return code


def dtype_from_proto(code: int) -> np.dtype | None:
    """The numpy dtype of a ``DataType`` code, or None when the code is unknown."""
    return _CODES.get(int(code))


# ------------------------------------------------------------ attribute values
BlockIndexOf = Callable[[Any], "int | None"]
ResolveBlock = Callable[[int], Any]


def encode_value(value: Any, attr: Attr, block_index_of: BlockIndexOf | None = None) -> Attr:
    """Store ``value`` in ``attr``'s oneof and return ``attr``.

    ``block_index_of(value)`` returns a block's index for block-valued attributes
    (None for anything else).  np.dtype values are stored as their name.
    """
    if value is None:
        attr.none.SetInParent()
    elif isinstance(value, (bool, np.bool_)):  # before int: bool is an int subclass
        attr.b = bool(value)
    elif isinstance(value, (int, np.integer)):
        attr.i = _check_int64(int(value), attr.name)
    elif isinstance(value, (float, np.floating)):
        attr.f = float(value)
    elif isinstance(value, str):
        attr.s = value
    elif isinstance(value, np.dtype):
        attr.s = value.name
    elif isinstance(value, (list, tuple)):
        _encode_list(list(value), attr, block_index_of)
    elif isinstance(value, dict):
        attr.map.SetInParent()
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidArgumentError(
                    f"attribute '{attr.name}': dict keys must be strings to be serialized, got {k!r}")
            encode_value(v, attr.map.entries.add(name=k), block_index_of)
    else:
        idx = block_index_of(value) if block_index_of is not None else None
        if idx is None:
            hint = " (use .tolist())" if isinstance(value, np.ndarray) else ""
            raise InvalidArgumentError(
                f"attribute '{attr.name}': a value of type {type(value).__name__} cannot be "
                f"serialized{hint}: {value!r:.80}")
        attr.block_idx = int(idx)
    return attr


def _check_int64(v: int, name: str) -> int:
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise InvalidArgumentError(f"attribute '{name}': integer {v} does not fit in int64")
    return v


def _all(items: list, types: tuple, exclude: tuple = ()) -> bool:
    return all(isinstance(x, types) and not isinstance(x, exclude) for x in items)


def _encode_list(items: list, attr: Attr, block_index_of: BlockIndexOf | None) -> None:
    bools = (bool, np.bool_)
    if not items:
        attr.ints.SetInParent()  # an empty list: decodes to []
    elif _all(items, bools):
        attr.bools.v.extend(bool(x) for x in items)
    elif _all(items, (int, np.integer), bools):
        attr.ints.v.extend(_check_int64(int(x), attr.name) for x in items)
    elif _all(items, (float, np.floating)):
        attr.floats.v.extend(float(x) for x in items)
    elif _all(items, str):
        attr.strings.v.extend(items)
    else:  # mixed or nested: item by item, so each keeps its own type
        attr.list.SetInParent()
        for x in items:
            encode_value(x, attr.list.items.add(name=attr.name), block_index_of)


def decode_value(attr: Attr, resolve_block: ResolveBlock | None = None) -> Any:
    """The Python value stored in ``attr`` (inverse of ``encode_value``)."""
    kind = attr.WhichOneof("value")
    if kind in ("i", "f", "s", "b"):
        return getattr(attr, kind)
    if kind in ("ints", "floats", "strings", "bools"):
        return list(getattr(attr, kind).v)
    if kind == "none":
        return None
    if kind == "list":
        return [decode_value(a, resolve_block) for a in attr.list.items]
    if kind == "map":
        return {a.name: decode_value(a, resolve_block) for a in attr.map.entries}
    if kind == "block_idx":
        if resolve_block is None:
            raise InvalidArgumentError(f"attribute '{attr.name}' refers to block {attr.block_idx}, "
                                       f"which cannot be resolved here")
        return resolve_block(attr.block_idx)
    raise InvalidArgumentError(f"attribute '{attr.name}' has no value")


# ------------------------------------------------------------------ tensors
def _le(arr: np.ndarray) -> np.ndarray:
    """C-contiguous little-endian view or copy of ``arr``."""
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and sys.byteorder == "big"):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def write_tensor(f: BinaryIO, arr: np.ndarray, what: str = "tensor") -> None:
    """uint32 version, int32 TensorDesc length, TensorDesc, raw C-order data."""
    arr = np.asarray(arr)
    desc = TensorDesc(dtype=dtype_to_proto(arr.dtype, what), dims=list(arr.shape)).SerializeToString()
    f.write(struct.pack("<Ii", TENSOR_VERSION, len(desc)))
    f.write(desc)
    f.write(_le(arr).reshape(-1).view(np.uint8))


def write_lod_tensor(f: BinaryIO, arr: np.ndarray, lod: Sequence[Sequence[int]] | None = None,
                     what: str = "tensor") -> None:
    """uint32 version, uint64 levels, per level (uint64 byte size, uint64 offsets), the tensor."""
    lod = list(lod or [])
    f.write(struct.pack("<IQ", LOD_TENSOR_VERSION, len(lod)))
    for level in lod:
        b = np.asarray(level, dtype="<u8").tobytes()
        f.write(struct.pack("<Q", len(b)))
        f.write(b)
    write_tensor(f, arr, what)


def write_selected_rows(f: BinaryIO, rows: Any, arr: np.ndarray, height: int, what: str = "tensor") -> None:
    """uint32 version, uint64 row count, int64 rows, int64 height, the tensor."""
    rows = np.asarray(rows, dtype="<i8").reshape(-1)
    f.write(struct.pack("<IQ", SELECTED_ROWS_VERSION, len(rows)))
    f.write(rows.tobytes())
    f.write(struct.pack("<q", int(height)))
    write_tensor(f, arr, what)


class TensorReader:
    """Reads the parameter-file layout from ``f`` with every length checked.

    ``path`` names the source in errors; set ``var`` to the variable being read so
    errors name it too.  ``size`` (bytes from the current position) enables the
    checks that refuse to allocate more than the file holds; files and BytesIO get it
    automatically.
    """

    def __init__(self, f: BinaryIO, path: str, size: int | None = None) -> None:
        self.f, self.path, self.var = f, path, None
        self.pos = 0
        self.size = _stream_size(f) if size is None else size

    def error(self, problem: str) -> TensorFormatError:
        var = f", variable '{self.var}'" if self.var is not None else ""
        return TensorFormatError(f"file '{self.path}'{var}: {problem}")

    def remaining(self) -> int | None:
        return None if self.size is None else self.size - self.pos

    def _need(self, n: int, what: str) -> None:
        left = self.remaining()
        if left is not None and n > left:
            raise self.error(f"truncated: {what} needs {n} bytes at offset {self.pos}, "
                             f"only {left} remain")

    def read(self, n: int, what: str) -> bytes:
        self._need(n, what)
        data = self.f.read(n)
        if len(data) != n:
            raise self.error(f"truncated: {what} needs {n} bytes at offset {self.pos}, got {len(data)}")
        self.pos += n
        return data

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt), what))[0]

    def at_end(self) -> bool:
        if self.size is not None:
            return self.pos >= self.size
        return not self.f.peek(1) if hasattr(self.f, "peek") else False

    # -- tensors
    def read_tensor(self) -> np.ndarray:
        self._version("<I", TENSOR_VERSION, "tensor")
        n = self.unpack("<i", "TensorDesc length")
        if n < 0:
            raise self.error(f"corrupt: negative TensorDesc length {n}")
        desc = TensorDesc()
        try:
            desc.ParseFromString(self.read(n, "TensorDesc"))
        except DecodeError as e:
            raise self.error(f"corrupt TensorDesc ({e})") from None
        dtype = dtype_from_proto(desc.dtype)
        if dtype is None:
            raise self.error(f"unknown dtype code {desc.dtype} in TensorDesc "
                             f"(known: {', '.join(f'{c}={d.name}' for c, d in _CODES.items())})")
        dims = [int(d) for d in desc.dims]
        if any(d < 0 for d in dims):
            raise self.error(f"corrupt: negative dimension in shape {dims}")
        nbytes = int(np.prod(dims, dtype=object)) * dtype.itemsize
        self._need(nbytes, f"data of shape {dims} {dtype.name}")
        arr = np.empty(dims, dtype=dtype.newbyteorder("<"))
        got = self.f.readinto(arr.reshape(-1).view(np.uint8)) if nbytes else 0
        if got != nbytes:
            raise self.error(f"truncated: data of shape {dims} {dtype.name} needs {nbytes} bytes at "
                             f"offset {self.pos}, got {got or 0}")
        self.pos += nbytes
        return arr if arr.dtype == dtype else arr.astype(dtype)

    def read_lod_tensor(self) -> tuple[np.ndarray, list[list[int]]]:
        """(array, lod offsets); checking the LoD against the rows is the caller's job."""
        self._version("<I", LOD_TENSOR_VERSION, "LoDTensor")
        levels = self.unpack("<Q", "LoD level count")
        if levels > MAX_LOD_LEVEL:
            raise self.error(f"corrupt: LoD level count {levels} (more than {MAX_LOD_LEVEL})")
        lod = []
        for i in range(levels):
            nb = self.unpack("<Q", f"byte size of LoD level {i}")
            if nb % 8:
                raise self.error(f"corrupt: LoD level {i} has {nb} bytes, not a multiple of 8")
            lod.append(np.frombuffer(self.read(nb, f"LoD level {i}"), dtype="<u8").tolist())
        return self.read_tensor(), lod

    def read_selected_rows(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(rows, values, height), with rows checked against height and the value rows."""
        self._version("<I", SELECTED_ROWS_VERSION, "SelectedRows")
        n = self.unpack("<Q", "row count")
        self._need(n * 8, f"{n} row indices")
        rows = np.frombuffer(self.read(n * 8, "row indices"), dtype="<i8").astype(np.int64)
        height = self.unpack("<q", "height")
        values = self.read_tensor()
        if height < 0:
            raise self.error(f"corrupt: negative SelectedRows height {height}")
        if values.ndim == 0 or values.shape[0] != n:
            raise self.error(f"SelectedRows has {n} rows but its values have shape {list(values.shape)}")
        if n and (rows.min() < 0 or rows.max() >= height):
            raise self.error(f"SelectedRows row index out of range [0, {height}): "
                             f"min {int(rows.min())}, max {int(rows.max())}")
        return rows, values, int(height)

    def _version(self, fmt: str, want: int, what: str) -> None:
        v = self.unpack(fmt, f"{what} version")
        if v != want:
            raise self.error(f"unsupported {what} version {v} (this fleetkit reads version {want})")


def _stream_size(f: BinaryIO) -> int | None:
    """Bytes from the current position to the end, when the stream can tell."""
    try:
        return os.fstat(f.fileno()).st_size - f.tell()
    except (AttributeError, OSError, ValueError):
        pass
    try:
        here = f.tell()
        end = f.seek(0, os.SEEK_END)
        f.seek(here)
        return end - here
    except (AttributeError, OSError, ValueError):
        return None
