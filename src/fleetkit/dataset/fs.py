"""Where input files come from: local paths, ``.gz``, ``hdfs://``/``afs://`` by a
command, and any fsspec URL (``s3://`` ...).  Every source is a stream read in
blocks; nothing is downloaded whole first.

``open_source(path, config)`` returns a ``Source``: a binary reader with
``read(n)`` and ``close()``, and, for local uncompressed files, ``fileno()`` so
the pipe command can read the file directly.
"""
from __future__ import annotations

import gzip
import os
import shlex
import subprocess
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import DataReadError, InvalidArgumentError

__all__ = ["FsConfig", "Source", "open_source", "remote_command"]

COMMAND_SCHEMES = ("hdfs", "afs")
STDERR_TAIL = 4000  # characters of a failing command's stderr kept for the error


@dataclass
class FsConfig:
    """File system settings of a dataset.

    Attributes:
        hadoop_bin: command prefix for ``hdfs://`` and ``afs://`` paths
            (Paddle: ``hadoop fs``); ``-cat`` (``-text`` for ``.gz``) and the
            path are appended, with ``-D fs.default.name=`` / ``-D
            hadoop.job.ugi=`` from ``set_hdfs_config`` in between.
        fs_name, fs_ugi: as given to ``set_hdfs_config``.
        cat_command: a full command template for command-read paths instead of
            the hadoop one; ``{url}`` is the whole path, ``{path}`` the part after
            ``scheme://authority``, ``{name}`` / ``{ugi}`` the hdfs config.
        storage_options: keyword arguments for fsspec (``key``, ``secret``,
            ``client_kwargs={"endpoint_url": ...}``...).
        block_size: read size for fsspec and command sources.
        idle_timeout: seconds a command may produce no output before it is
            killed and the read fails (no hangs on a stalled remote).
    """

    hadoop_bin: str = "hadoop fs"
    fs_name: str = ""
    fs_ugi: str = ""
    cat_command: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    block_size: int = 8 << 20
    idle_timeout: float = 600.0


class Source:
    """A binary stream of one input file."""

    def __init__(self, name: str, stream: IO[bytes], closer: Any = None, direct_fd: bool = False):
        self.name = name
        self._stream = stream
        self._closer = closer
        self.direct_fd = direct_fd  # the stream is a plain local file: a child may read its fd

    def fileno(self) -> int:
        return self._stream.fileno()

    def read(self, n: int) -> bytes:
        try:
            return self._stream.read(n)
        except DataReadError:
            raise
        except Exception as exc:  # OSError, EOFError, BadGzipFile; fsspec backends' own (botocore ...)
            raise DataReadError(f"reading {self.name} failed: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            if self._closer is not None:
                self._closer()


def scheme_of(path: str) -> str:
    head, sep, _ = path.partition("://")
    return head.lower() if sep else ""


def remote_command(path: str, config: FsConfig) -> list[str]:
    """The argv that prints ``path`` (an hdfs/afs URL) on stdout."""
    if config.cat_command:
        rest = path.partition("://")[2]
        sub_path = "/" + rest.partition("/")[2]
        text = config.cat_command.format(url=path, path=sub_path, name=config.fs_name, ugi=config.fs_ugi)
        return shlex.split(text)
    argv = shlex.split(config.hadoop_bin)
    if config.fs_name:
        argv += ["-D", f"fs.default.name={config.fs_name}"]
    if config.fs_ugi:
        argv += ["-D", f"hadoop.job.ugi={config.fs_ugi}"]
    return argv + ["-text" if path.endswith(".gz") else "-cat", path]


def open_source(path: str, config: FsConfig | None = None) -> Source:
    """Open ``path`` for streaming.

    Raises:
        DataReadError: the file does not exist or cannot be opened.
    """
    config = config or FsConfig()
    scheme = scheme_of(path)
    if scheme in COMMAND_SCHEMES:
        return _command_source(path, remote_command(path, config), config)
    if scheme in ("", "file"):
        local = path.partition("://")[2] if scheme else path
        try:
            f = open(local, "rb")
        except FileNotFoundError:
            raise DataReadError(f"input file {path} does not exist") from None
        except OSError as exc:
            raise DataReadError(f"cannot open input file {path}: {exc}") from exc
        return _file_source(path, f, direct_fd=True)
    return _fsspec_source(path, config)


def _file_source(path: str, f: Any, direct_fd: bool = False) -> Source:
    """A Source over an opened binary file, decompressed when ``path`` ends in .gz."""
    if path.endswith(".gz"):
        return Source(path, gzip.GzipFile(fileobj=f, mode="rb"), f.close)
    return Source(path, f, direct_fd=direct_fd)


def _fsspec_source(url: str, config: FsConfig) -> Source:
    try:
        import fsspec
    except ImportError:
        raise InvalidArgumentError(f"reading {url} needs fsspec (and s3fs for s3://): "
                                   f"pip install 'fleetkit[s3]'") from None
    try:
        # url_to_fs, not fsspec.open: block_size must reach fs.open, not the fs constructor
        fs, fpath = fsspec.core.url_to_fs(url, **config.storage_options)
        f = fs.open(fpath, "rb", block_size=config.block_size)
    except FileNotFoundError:
        raise DataReadError(f"input file {url} does not exist") from None
    except Exception as exc:
        raise DataReadError(f"cannot open input file {url}: {type(exc).__name__}: {exc}") from exc
    return _file_source(url, f)


class _CommandStream:
    """stdout of a command as a stream; a non-zero exit or a stall is an error."""

    def __init__(self, name: str, argv: list[str], idle_timeout: float):
        self.name, self.argv, self.idle_timeout = name, argv, idle_timeout
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise DataReadError(f"cannot run {shlex.join(argv)!r} to read {name}: {exc}") from exc
        self.stderr = StderrTail(self.proc.stderr)
        self.nread = 0
        self._done = False

    def read(self, n: int) -> bytes:
        if self._done:
            return b""
        data = read_with_timeout(self.proc.stdout, n, self.idle_timeout, self._stalled)
        if data:
            self.nread += len(data)
            return data
        self._done = True
        code = wait_exit(self.proc, self.idle_timeout)
        if code != 0:
            raise DataReadError(
                f"reading {self.name}: command {shlex.join(self.argv)!r} exited with status {code} after "
                f"{self.nread} bytes; stderr tail:\n{self.stderr.tail()}")
        return b""

    def _stalled(self) -> None:
        kill_group(self.proc)
        raise DataReadError(f"reading {self.name}: command {shlex.join(self.argv)!r} produced no output for "
                            f"{self.idle_timeout:g} s (after {self.nread} bytes); killed it. stderr tail:\n"
                            f"{self.stderr.tail()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            kill_group(self.proc)
        self.proc.stdout.close()
        self.stderr.join()


def _command_source(name: str, argv: list[str], config: FsConfig) -> Source:
    return Source(name, _CommandStream(name, argv, config.idle_timeout))  # type: ignore[arg-type]


# ---------------------------------------------------------------- helpers shared with pipe.py
class StderrTail:
    """Drains a child's stderr in a thread (so it never blocks on a full pipe), keeping the tail."""

    def __init__(self, stream: IO[bytes]):
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        with stream:
            for chunk in iter(lambda: stream.read1(65536), b""):
                self._chunks.append(chunk)
                self._size += len(chunk)
                while self._size > 2 * STDERR_TAIL and len(self._chunks) > 1:
                    self._size -= len(self._chunks.popleft())

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)

    def tail(self) -> str:
        self.join(2.0)
        text = b"".join(self._chunks).decode("utf-8", "replace")
        return text[-STDERR_TAIL:].rstrip() or "(empty)"


def read_with_timeout(stream: IO[bytes], n: int, timeout: float, on_timeout: Any) -> bytes:
    """``read1``-style read of at most ``n`` bytes; calls ``on_timeout()`` if nothing arrives in time."""
    import select
    fd = stream.fileno()
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        on_timeout()
    return os.read(fd, n)


def wait_exit(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return proc.wait()


def kill_group(proc: subprocess.Popen) -> None:
    """Kill the command and whatever it started (it runs in its own session)."""
    import signal
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass
