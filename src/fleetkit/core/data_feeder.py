"""``fluid.DataFeeder``: turn a minibatch of samples into the feed dict of ``Executor.run``.

A sample is a tuple with one entry per feed variable, in ``feed_list`` order.  For a
variable with ``lod_level`` 0 the entries of a batch are stacked and, if that gives
another rank, reshaped to the variable's shape (its -1 dim becomes the batch size); for ``lod_level`` N each entry is
an N-deep nesting of sequences, flattened into one array with an N-level LoD::

    feeder = fk.DataFeeder(feed_list=[image, label], place=fk.CPUPlace())
    for batch in train_reader():             # batch: [(img, lbl), (img, lbl), ...]
        exe.run(feed=feeder.feed(batch), fetch_list=[loss])

fleetkit runs one place per process, so ``feed_parallel`` and
``decorate_reader(multi_devices=True)`` serve exactly one place.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import InvalidArgumentError
from .framework import Program, Variable, default_main_program
from .scope import LoDTensor, lengths_to_offsets

__all__ = ["DataFeeder", "BatchConverter"]


class _SlotConverter:
    """Collects one variable's entries of a batch and builds its array or LoDTensor."""

    def __init__(self, var: Variable) -> None:
        self.var = var
        self.dtype = np.dtype(var.dtype)
        self.lod_level = int(var.lod_level or 0)
        shape = [int(d) for d in var.shape]
        # a reshape can fill in at most one unknown dim
        self.shape = shape if sum(1 for d in shape if d < 0) <= 1 else None
        self.data: list[Any] = []
        self.lengths: list[list[int]] = [[] for _ in range(self.lod_level)]

    def add(self, entry: Any, where: str) -> None:
        self._add(entry, self.lod_level, where)

    def _add(self, entry: Any, level: int, where: str) -> None:
        if level == 0:
            self.data.append(entry)
            return
        if isinstance(entry, np.ndarray) and level == 1:
            entry = list(entry)
        if not isinstance(entry, (list, tuple)):
            raise InvalidArgumentError(
                f"DataFeeder: {where}: variable '{self.var.name}' has lod_level {self.lod_level}, so each "
                f"entry must be a sequence nested {self.lod_level} deep; got {type(entry).__name__} {entry!r:.60}")
        self.lengths[self.lod_level - level].append(len(entry))
        for item in entry:
            self._add(item, level - 1, where)

    def done(self) -> Any:
        try:
            arr = np.array(self.data, dtype=self.dtype)
        except (ValueError, TypeError) as e:
            raise InvalidArgumentError(f"DataFeeder: variable '{self.var.name}' ({self.var.dtype}): the batch's "
                                       f"entries do not form one array: {e}") from None
        # as fluid 1.4: reshaped to the declared shape only when the ranks differ (entries of
        # [steps, 1] for a [-1, max_len, 1] variable stay [batch, steps, 1]: DIN pads each batch
        # to its own length); Executor.run says when a fed shape differs from the declaration
        if self.lod_level:
            rows = [-1] + self.shape[1:] if self.shape else None
            if rows and all(d >= 0 for d in rows[1:]) and arr.ndim != len(rows):
                arr = self._reshape(arr, rows)
            lod = [lengths_to_offsets(lv) for lv in self.lengths]
            return LoDTensor(arr, lod)
        if self.shape and arr.ndim != len(self.shape):
            arr = self._reshape(arr, self.shape)
        return arr

    def _reshape(self, arr: np.ndarray, shape: list[int]) -> np.ndarray:
        try:
            return arr.reshape(shape)
        except ValueError:
            raise InvalidArgumentError(
                f"DataFeeder: variable '{self.var.name}' expects shape {list(self.var.shape)}; the batch's "
                f"{len(self.data)} entries give an array of shape {list(arr.shape)}") from None


class BatchConverter:
    """Converts a list of samples (tuples, one entry per variable) to ``{name: value}``."""

    def __init__(self, feed_vars: Sequence[Variable]) -> None:
        self.feed_vars = list(feed_vars)
        self.names = [v.name for v in self.feed_vars]

    def __call__(self, minibatch: Iterable[Any]) -> dict[str, Any]:
        convs = [_SlotConverter(v) for v in self.feed_vars]
        n = len(convs)
        count = 0
        for i, sample in enumerate(minibatch):
            if not isinstance(sample, (list, tuple)) or len(sample) != n:
                got = len(sample) if isinstance(sample, (list, tuple)) else type(sample).__name__
                raise InvalidArgumentError(f"DataFeeder: sample #{i} has {got} entries; the feed list "
                                           f"{self.names} needs {n}")
            for conv, entry in zip(convs, sample):
                conv.add(entry, f"sample #{i}")
            count += 1
        if count == 0:
            raise InvalidArgumentError(f"DataFeeder: the minibatch is empty (feed list {self.names})")
        return {c.var.name: c.done() for c in convs}


def _resolve(feed_list: Sequence[Any], program: Program | None) -> list[Variable]:
    program = default_main_program() if program is None else program
    block = program.global_block()
    out = []
    for v in feed_list:
        if isinstance(v, Variable):
            out.append(v)
        elif isinstance(v, str):
            var = block._find_var_recursive(v)
            if var is None:
                raise InvalidArgumentError(f"DataFeeder: feed variable '{v}' is not in the program")
            out.append(var)
        else:
            raise InvalidArgumentError(f"DataFeeder: feed_list holds {v!r}; give Variables or their names")
    return out


class DataFeeder:
    """Converts user minibatches to feed dicts for ``feed_list`` (Variables or names)."""

    def __init__(self, feed_list: Sequence[Any], place: Any, program: Program | None = None) -> None:
        self.feed_vars = _resolve(feed_list, program)
        self.feed_names = [v.name for v in self.feed_vars]
        self.feed_dtypes = [v.dtype for v in self.feed_vars]
        self.feed_shapes = [list(v.shape) for v in self.feed_vars]
        self.feed_lod_level = [int(v.lod_level or 0) for v in self.feed_vars]
        self.place = place
        self._convert = BatchConverter(self.feed_vars)

    def feed(self, iterable: Iterable[Any]) -> dict[str, Any]:
        """One minibatch (an iterable of samples) -> ``{var name: ndarray or LoDTensor}``."""
        return self._convert(iterable)

    def feed_parallel(self, iterable: Iterable[Any], num_places: int | None = None) -> Iterator[dict[str, Any]]:
        """One feed dict per place for a list of minibatches (one place per process here)."""
        _one_place(num_places, "feed_parallel")
        for batch in iterable:
            yield self.feed(batch)

    def decorate_reader(self, reader: Callable[[], Iterable[Any]], multi_devices: bool,
                        num_places: int | None = None, drop_last: bool = True) -> Callable[[], Iterator[Any]]:
        """A reader yielding feed dicts (with ``multi_devices``: lists of one feed dict per place)."""
        _one_place(num_places, "decorate_reader")

        def creator() -> Iterator[Any]:
            for batch in reader():
                fed = self.feed(batch)
                yield [fed] if multi_devices else fed
        return creator


def _one_place(num_places: int | None, fn: str) -> None:
    if num_places not in (None, 1):
        raise InvalidArgumentError(f"DataFeeder.{fn}: num_places={num_places}; fleetkit runs one place per "
                                   f"process (use fleet collective mode for several devices)")
