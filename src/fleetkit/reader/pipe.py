"""``paddle.reader.PipeReader`` and ``paddle.reader.Fake``."""
from __future__ import annotations

import subprocess
import zlib
from typing import Any, Callable, Iterable, Iterator

from ..errors import InvalidArgumentError, OpError

__all__ = ["Fake", "PipeReader"]

#: how long a finished command may take to exit after its output ended
_EXIT_TIMEOUT_S = 30.0


class PipeReader:
    """Lines (or raw chunks) of a shell command's output, plain or gzip-compressed::

        for line in PipeReader("hadoop fs -cat /data/part-0.gz", file_type="gzip").get_line():
            ...
    """

    def __init__(self, command: str, bufsize: int = 8192, file_type: str = "plain") -> None:
        if not isinstance(command, str) or not command.strip():
            raise InvalidArgumentError(f"PipeReader: command must be a non-empty string, got {command!r}")
        if file_type not in ("plain", "gzip"):
            raise InvalidArgumentError(f"PipeReader: file_type must be 'plain' or 'gzip', got {file_type!r}")
        if int(bufsize) <= 0:
            raise InvalidArgumentError(f"PipeReader: bufsize must be positive, got {bufsize}")
        self.command, self.bufsize, self.file_type = command, int(bufsize), file_type

    def _chunks(self) -> Iterator[bytes]:
        proc = subprocess.Popen(self.command, shell=True, stdout=subprocess.PIPE)
        inflate = zlib.decompressobj(32 + zlib.MAX_WBITS) if self.file_type == "gzip" else None
        finished = False
        try:
            assert proc.stdout is not None
            while True:
                buf = proc.stdout.read(self.bufsize)
                if not buf:
                    break
                yield inflate.decompress(buf) if inflate else buf
            if inflate:
                yield inflate.flush()
            finished = True
        finally:
            if not finished and proc.poll() is None:
                proc.kill()  # the consumer stopped early or failed: the rest is not wanted
            rc = proc.wait(timeout=_EXIT_TIMEOUT_S)
            if proc.stdout is not None:
                proc.stdout.close()
        if rc != 0:
            raise OpError(f"PipeReader: command {self.command!r} exited with status {rc}")

    def get_line(self, cut_lines: bool = True, line_break: str = "\n") -> Iterator[str]:
        """The output as text lines without ``line_break`` (or, without ``cut_lines``, raw chunks)."""
        sep = line_break.encode()
        rest = b""
        for chunk in self._chunks():
            if not cut_lines:
                yield chunk.decode("utf-8")
                continue
            *lines, rest = (rest + chunk).split(sep)
            for ln in lines:
                yield ln.decode("utf-8")
        if cut_lines and rest:
            yield rest.decode("utf-8")


class Fake:
    """``Fake()(reader, data_num)``: a reader repeating ``reader``'s first sample ``data_num`` times
    (to time a model without the cost of reading)."""

    def __call__(self, reader: Callable[[], Iterable[Any]], data_num: int) -> Callable[[], Iterator[Any]]:
        def fake() -> Iterator[Any]:
            first = next(iter(reader()))
            for _ in range(int(data_num)):
                yield first
        return fake
