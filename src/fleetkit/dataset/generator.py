"""Data generators: user code turning raw lines into MultiSlot lines (fluid 1.4 API).

A user subclasses ``MultiSlotDataGenerator`` and implements
``generate_sample(line)``, returning a zero-argument generator function that
yields samples ``[(slot_name, [values...]), ...]``; ``generate_batch(samples)``
may regroup or pad a batch.  The script's ``run_from_stdin()`` is then used as
a dataset's ``pipe_command`` (``python my_generator.py``)::

    class Words(MultiSlotDataGenerator):
        def generate_sample(self, line):
            def gen():
                ids = [int(w) for w in line.split()[1:]]
                yield [("words", ids), ("label", [int(line.split()[0])])]
            return gen

    if __name__ == "__main__":
        Words().run_from_stdin()

Mistakes in user output (slot order or count changing between samples, an
empty slot, a non-numeric value) raise ``DataFormatError`` naming the slot and
the input line.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from numbers import Integral, Real
from typing import IO, Any

import numpy as np

from ..errors import DataFormatError, InvalidArgumentError

__all__ = ["DataGenerator", "MultiSlotDataGenerator"]


class DataGenerator:
    """Base class: batching, stdin/memory drivers; subclasses format samples (``_gen_str``)."""

    def __init__(self) -> None:
        self.batch_size_ = 32
        self._proto_info: list[tuple[str, str]] | None = None
        self._line: Any = None  # the input line being processed, for error messages

    def set_batch(self, batch_size: int) -> None:
        """Samples handed to ``generate_batch`` at once (default 32)."""
        if int(batch_size) < 1:
            raise InvalidArgumentError(f"set_batch: batch size must be >= 1, got {batch_size}")
        self.batch_size_ = int(batch_size)

    def generate_sample(self, line: Any) -> Callable[[], Iterable[Any]]:
        """Return a function yielding the samples of ``line``; implemented by the user."""
        raise NotImplementedError("implement generate_sample(line) in your DataGenerator subclass")

    def generate_batch(self, samples: list[Any]) -> Callable[[], Iterable[Any]]:
        """Return a function yielding the samples of one batch (default: unchanged)."""
        def local_iter() -> Iterator[Any]:
            yield from samples
        return local_iter

    # ---- drivers --------------------------------------------------------------------------
    def run_from_stdin(self, stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> None:
        """Read raw lines from stdin, write MultiSlot lines to stdout (a pipe command's loop)."""
        stdin = sys.stdin if stdin is None else stdin
        stdout = sys.stdout if stdout is None else stdout
        batch: list[Any] = []
        for line in stdin:
            self._line = line
            for sample in self._call_user(self.generate_sample, line)():
                batch.append((line, sample))
                if len(batch) == self.batch_size_:
                    self._flush(batch, stdout)
                    batch = []
        if batch:
            self._flush(batch, stdout)
        stdout.flush()

    def run_from_memory(self, stdout: IO[str] | None = None) -> None:
        """Drive ``generate_sample(None)`` (samples made in memory, e.g. in tests)."""
        self.run_from_stdin(stdin=iter([None]), stdout=stdout)  # type: ignore[arg-type]

    def run_to_lines(self, lines: Iterable[Any]) -> list[str]:
        """Process ``lines`` and return the output lines (no stdin/stdout involved)."""
        out: list[str] = []

        class _Sink:
            def write(self, text: str) -> None:
                out.append(text)

            def flush(self) -> None:
                pass
        self.run_from_stdin(stdin=iter(lines), stdout=_Sink())  # type: ignore[arg-type]
        return out

    def _flush(self, batch: list[tuple[Any, Any]], stdout: IO[str]) -> None:
        if type(self).generate_batch is DataGenerator.generate_batch:
            # passthrough batching: each output sample comes from one known line, so errors name it
            for line, sample in batch:
                self._line = line
                stdout.write(self._gen_str(sample))
            return
        lines = [ln for ln, _ in batch]
        self._line = (lines[0] if len(set(map(repr, lines))) == 1
                      else f"one of {len(lines)} lines from {_clip(lines[0])}")
        for sample in self._call_user(self.generate_batch, [s for _, s in batch])():
            stdout.write(self._gen_str(sample))

    def _call_user(self, fn: Callable[..., Any], arg: Any) -> Callable[[], Iterable[Any]]:
        gen = fn(arg)
        if not callable(gen):
            raise DataFormatError(f"{type(self).__name__}.{fn.__name__} must return a function that yields "
                                  f"samples, got {type(gen).__name__} (input line {_clip(self._line)})")
        return gen

    def _gen_str(self, sample: Any) -> str:
        raise NotImplementedError


class MultiSlotDataGenerator(DataGenerator):
    """Writes samples as MultiSlot lines: ``<n> v1 .. vn`` per slot, in slot order.

    The first sample fixes the slots (names, order, and the type: "float" if
    any value is a float, else "uint64"; a later float value turns a uint64
    slot into a float slot, since the text is the same).
    """

    def _gen_str(self, sample: Any) -> str:
        where = f"(input line {_clip(self._line)})"
        if not isinstance(sample, (list, tuple)) or not sample:
            raise DataFormatError(f"a sample must be a non-empty list of (slot_name, values) pairs, got "
                                  f"{_clip(sample)} {where}")
        first = self._proto_info is None
        if first:
            self._proto_info = []
        elif len(sample) != len(self._proto_info):
            raise DataFormatError(f"sample has {len(sample)} slots but the first sample had "
                                  f"{len(self._proto_info)} ({[n for n, _ in self._proto_info]}) {where}")
        parts = []
        for i, item in enumerate(sample):
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise DataFormatError(f"slot #{i + 1} of the sample must be a (name, values) pair, got "
                                      f"{_clip(item)} {where}")
            name, values = item
            if not first and name != self._proto_info[i][0]:
                raise DataFormatError(f"slot #{i + 1} is {name!r} but was {self._proto_info[i][0]!r} in the "
                                      f"first sample: slot order must not change {where}")
            text, kind = _format_values(name, values, where)
            if first:
                self._proto_info.append((name, kind))
            elif kind == "float" and self._proto_info[i][1] == "uint64":
                self._proto_info[i] = (name, "float")
            parts.append(text)
        return " ".join(parts) + "\n"


def _clip(value: Any, limit: int = 40) -> str:
    """``repr(value)`` for a message, cut to about ``limit`` characters with its length (an input
    line or a value can be megabytes)."""
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= 2 * limit else f"{text[:limit]}... ({len(text)} characters)"


def _format_values(name: str, values: Any, where: str) -> tuple[str, str]:
    """``"<n> v1 .. vn"`` and the slot type; errors name the slot."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise DataFormatError(f"slot {name!r}: values must be a list, got {type(values).__name__} {where}")
    if not values:
        raise DataFormatError(f"slot {name!r} is empty: every slot needs at least one value "
                              f"(pad it in the data generator) {where}")
    is_float = False
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (Integral, Real)):
            raise DataFormatError(f"slot {name!r}: value {_clip(v)} is not a number {where}")
        if not isinstance(v, Integral):
            is_float = True
    if is_float:
        return f"{len(values)} " + " ".join(repr(float(v)) for v in values), "float"
    if any(int(v) < 0 for v in values):
        raise DataFormatError(f"slot {name!r}: negative id {min(int(v) for v in values)} in a uint64 slot {where}")
    return f"{len(values)} " + " ".join(str(int(v)) for v in values), "uint64"
