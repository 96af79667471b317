"""Pipe reader: one file's bytes through the user's ``pipe_command``, out as blocks of lines.

As in Paddle, every file goes through ``pipe_command`` (default ``cat``) run by
the shell in a subprocess; its stdout is MultiSlot text.  A local plain file is
given to the command as its stdin directly; other sources (``.gz``, remote
streams) are copied into its stdin by a feeder thread, block by block.

Failures never pass silently: a command exiting non-zero (its stderr tail is
in the error), a source failing mid-file, or a command producing nothing for
``idle_timeout`` seconds (killed) all raise ``DataReadError``.  Closing the
iterator early kills the command.
"""
from __future__ import annotations

import fcntl
import subprocess
import threading
from collections.abc import Iterator

from ..errors import DataReadError
from .fs import (
    FsConfig,
    Source,
    StderrTail,
    kill_group,
    open_source,
    read_with_timeout,
    wait_exit,
)

__all__ = ["DEFAULT_BLOCK_BYTES", "read_blocks", "source_label"]

#: target size of the line blocks handed to the parser (big enough to amortize numpy calls)
DEFAULT_BLOCK_BYTES = 4 << 20
_PIPE_BYTES = 1 << 20  # ask Linux for 1 MiB pipes: fewer wakeups per MB
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def _grow_pipe(fd: int) -> None:
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
    except OSError:
        pass  # a smaller pipe only costs speed


class _Feeder(threading.Thread):
    """Copies a source into the command's stdin; remembers a read error."""

    def __init__(self, source: Source, stdin: object, block: int):
        super().__init__(daemon=True, name=f"feed {source.name}")
        self.source, self.stdin, self.block = source, stdin, block
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                data = self.source.read(self.block)
                if not data:
                    break
                self.stdin.write(data)  # type: ignore[attr-defined]
        except BrokenPipeError:
            pass  # the command stopped reading; its exit status tells whether that is fine
        except BaseException as exc:  # noqa: BLE001  (reported by the reader thread)
            self.error = exc
        finally:
            try:
                self.stdin.close()  # type: ignore[attr-defined]
            except OSError:
                pass


def source_label(path: str, pipe_command: str = "cat") -> str:
    """How errors name a file's data: the path, with the pipe command unless it is ``cat``."""
    return path if pipe_command.strip() == "cat" else f"{path} | {pipe_command}"


def read_blocks(path: str, pipe_command: str = "cat", config: FsConfig | None = None,
                block_bytes: int = DEFAULT_BLOCK_BYTES) -> Iterator[tuple[bytes, int]]:
    """Yield ``(lines, first_line_number)``: blocks of complete lines of ``path``
    after ``pipe_command``, about ``block_bytes`` each.

    Raises:
        DataReadError: missing file, failing command or source, stalled command.
    """
    config = config or FsConfig()
    source = open_source(path, config)
    label = source_label(path, pipe_command)
    try:
        proc = subprocess.Popen(pipe_command, shell=True, stdin=source if source.direct_fd else subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        source.close()
        raise DataReadError(f"cannot start pipe_command {pipe_command!r} for {path}: {exc}") from exc
    feeder = None
    stderr = StderrTail(proc.stderr)
    try:
        _grow_pipe(proc.stdout.fileno())
        if not source.direct_fd:
            _grow_pipe(proc.stdin.fileno())
            feeder = _Feeder(source, proc.stdin, min(config.block_size, 1 << 20))
            feeder.start()
        yield from _blocks(proc, label, pipe_command, config.idle_timeout, block_bytes, stderr, feeder)
    finally:
        if proc.poll() is None:
            kill_group(proc)
        if feeder is not None:
            feeder.stop.set()
            feeder.join(5)
        proc.stdout.close()
        stderr.join()
        source.close()


def _blocks(proc: subprocess.Popen, label: str, command: str, idle_timeout: float, block_bytes: int,
            stderr: StderrTail, feeder: _Feeder | None) -> Iterator[tuple[bytes, int]]:
    def stalled() -> None:
        kill_group(proc)
        raise DataReadError(f"reading {label}: pipe_command {command!r} produced no output for "
                            f"{idle_timeout:g} s; killed it. stderr tail:\n{stderr.tail()}")

    out = proc.stdout
    pending: list[bytes] = []
    size, line_no = 0, 1
    while True:
        data = read_with_timeout(out, _PIPE_BYTES, idle_timeout, stalled)
        if feeder is not None and feeder.error is not None:
            break  # the source failed: report that, not a shorter file
        if not data:
            break
        pending.append(data)
        size += len(data)
        if size >= block_bytes:
            cut = data.rfind(b"\n") + 1  # split the newest chunk only: the block is joined once
            if cut:
                block = b"".join(pending[:-1] + [data[:cut]])
                yield block, line_no
                line_no += block.count(b"\n")
                rest = data[cut:]
                pending, size = ([rest], len(rest)) if rest else ([], 0)
    if feeder is not None:
        feeder.join(idle_timeout)
        if feeder.error is not None:
            kill_group(proc)
            raise DataReadError(f"reading {label} failed mid-file (after line {line_no - 1} of the output): "
                                f"{feeder.error}") from feeder.error
    code = wait_exit(proc, idle_timeout)
    if code != 0:
        raise DataReadError(f"reading {label}: pipe_command {command!r} exited with status {code}; "
                            f"stderr tail:\n{stderr.tail()}")
    if pending:
        yield b"".join(pending), line_no
