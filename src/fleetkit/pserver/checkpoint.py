"""Atomic checkpoints of a dict of named values (arrays, LoDTensor, SelectedRows).

File layout: the magic ``FKCKPT01``, then per value a little-endian uint64 length and
the value's wire bytes (``codec.to_bytes`` of one unchunked ``VariableMessage``), then
the trailer ``FKEND``+uint64 count.  A file without its trailer is incomplete and is
refused, so a crash while writing never yields a half-loaded state; writes go to a
temp file that is fsynced and renamed over the target (then the directory is fsynced),
so the target is always either the old or the new checkpoint.  Loading reads the
file into one writable buffer and decodes views of it: no per-value copies, and
nothing is unpickled.
"""
from __future__ import annotations

import os
import re
import struct
import tempfile
import time
from typing import Any, Mapping

from ..errors import CheckpointError, InvalidArgumentError
from . import codec

__all__ = ["save", "load", "save_numbered", "latest", "load_latest", "notify_path", "UPDATES_KEY"]

#: the pserver's update count (``liveness.Incarnation.updates``), stored beside the values
UPDATES_KEY = "@PSERVER_UPDATES@"

MAGIC = b"FKCKPT01"
TRAILER = b"FKEND"
_LEN = struct.Struct("<Q")
_NUMBERED = re.compile(r"^ckpt-(\d{20})\.fkckpt$")


def save(path: str, values: Mapping[str, Any]) -> str:
    """Write ``values`` to ``path`` atomically (temp file, fsync, rename); returns ``path``."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".fkckpt", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC)
            for name, value in values.items():
                # pieces written straight from the arrays: no second copy of a huge table
                parts = codec.wire_parts(codec.encode(name, value, max_bytes=1 << 62)[0])
                f.write(_LEN.pack(sum(memoryview(p).nbytes for p in parts)))
                for part in parts:
                    f.write(part)
            f.write(TRAILER + _LEN.pack(len(values)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(d)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, (OSError, InvalidArgumentError)):
            raise CheckpointError(f"cannot write checkpoint {path}: {e}") from e
        raise
    return path


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def load(path: str) -> dict[str, Any]:
    """Read a checkpoint written by ``save``; CheckpointError names the file if it is bad."""
    try:
        size = os.path.getsize(path)
        buf = bytearray(size)
        with open(path, "rb") as f:
            if f.readinto(buf) != size:
                raise CheckpointError(f"checkpoint {path}: short read")
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    view = memoryview(buf)
    if bytes(view[:len(MAGIC)]) != MAGIC:
        raise CheckpointError(f"{path} is not a fleetkit checkpoint (bad magic)")
    tail = len(TRAILER) + _LEN.size
    if size < len(MAGIC) + tail or bytes(view[size - tail:size - _LEN.size]) != TRAILER:
        raise CheckpointError(f"checkpoint {path} is incomplete (no trailer): written by a crashed process?")
    count = _LEN.unpack_from(view, size - _LEN.size)[0]
    out: dict[str, Any] = {}
    pos, end = len(MAGIC), size - tail
    try:
        while pos < end:
            (n,) = _LEN.unpack_from(view, pos)
            pos += _LEN.size
            if pos + n > end:
                raise CheckpointError(f"checkpoint {path}: record at byte {pos} runs past the end")
            env = codec.from_bytes(view[pos:pos + n])
            out[env.name] = codec.decode(env)
            pos += n
    except InvalidArgumentError as e:
        raise CheckpointError(f"checkpoint {path} is corrupt: {e}") from e
    if len(out) != count:
        raise CheckpointError(f"checkpoint {path}: trailer says {count} values, found {len(out)}")
    return out


def save_numbered(dirname: str, values: Mapping[str, Any], keep: int = 2) -> str:
    """Write a new ``ckpt-<time_ns>.fkckpt`` in ``dirname`` and keep only the newest ``keep``."""
    path = os.path.join(dirname, f"ckpt-{time.time_ns():020d}.fkckpt")
    save(path, values)
    olds = sorted(n for n in os.listdir(dirname) if _NUMBERED.match(n))[:-max(keep, 1)]
    for name in olds:
        try:
            os.unlink(os.path.join(dirname, name))
        except OSError:
            pass
    return path


def latest(dirname: str) -> str | None:
    """The newest numbered checkpoint in ``dirname`` (None if there is none)."""
    try:
        names = sorted(n for n in os.listdir(dirname) if _NUMBERED.match(n))
    except FileNotFoundError:
        return None
    return os.path.join(dirname, names[-1]) if names else None


def load_latest(dirname: str) -> dict[str, Any] | None:
    """Values of the newest readable numbered checkpoint (an unreadable newest one falls
    back to the one before it); None when the directory holds none."""
    try:
        names = sorted((n for n in os.listdir(dirname) if _NUMBERED.match(n)), reverse=True)
    except FileNotFoundError:
        return None
    last_error: CheckpointError | None = None
    for name in names:
        try:
            return load(os.path.join(dirname, name))
        except CheckpointError as e:
            last_error = e
    if last_error is not None:
        raise last_error
    return None


def notify_path(roots: "list[str]", path: str) -> str:
    """``path`` if it lies inside one of the configured ``roots`` (links and '..' resolved),
    else InvalidArgumentError naming both: CheckpointNotify requests come over the
    network, and may only name files inside this pserver's own checkpoint directories."""
    if "\0" in path:
        raise InvalidArgumentError(f"checkpoint path {path!r} contains a NUL byte")
    real = os.path.realpath(path)
    for root in roots:
        base = os.path.realpath(root)
        if os.path.commonpath([base, real]) == base:
            return real
    allowed = ", ".join(repr(r) for r in roots) or "none configured"
    raise InvalidArgumentError(f"checkpoint path '{path}' is outside this pserver's checkpoint directories "
                               f"({allowed}); configure checkpoint_dir, init_server(save_dirs=...) or "
                               f"FLEETKIT_PS_NOTIFY_DIRS")
