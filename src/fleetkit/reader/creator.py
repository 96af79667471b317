"""Reader creators (``paddle.reader.creator``): readers over an array or a text file."""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

__all__ = ["np_array", "text_file"]


def np_array(x: Any) -> Callable[[], Iterator[Any]]:
    """A reader yielding the rows of ``x`` (its first-axis elements)."""
    arr = np.asarray(x)

    def reader() -> Iterator[Any]:
        if arr.ndim == 0:
            yield arr
            return
        yield from arr
    return reader


def text_file(path: str) -> Callable[[], Iterator[str]]:
    """A reader yielding the lines of ``path`` without their line ends."""
    def reader() -> Iterator[str]:
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield line.rstrip("\r\n")
    return reader
