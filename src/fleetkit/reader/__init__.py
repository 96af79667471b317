"""Reader decorators: what 1.4 scripts import as ``paddle.reader`` and ``paddle.batch``.

A *reader* is a function of no arguments returning an iterable of samples; a
decorator takes readers and returns a new reader::

    from fleetkit import reader as preader
    train = fleetkit.batch(preader.shuffle(my_samples, buf_size=500), batch_size=32)
    for batch in train():          # batch: a list of 32 samples
        ...

Import map: ``paddle.batch`` -> ``fleetkit.batch`` (also ``fleetkit.reader.batch``),
``paddle.reader.X`` -> ``fleetkit.reader.X``.
"""
from __future__ import annotations

import itertools
import queue
import random
import threading
from typing import Any, Callable, Iterable, Iterator

from ..errors import FleetkitError, InvalidArgumentError
from . import creator  # noqa: F401
from .pipe import Fake, PipeReader

__all__ = ["ComposeNotAligned", "Fake", "PipeReader", "batch", "buffered", "cache", "chain", "compose", "creator",
           "firstn", "map_readers", "multiprocess_reader", "shuffle", "xmap_readers"]

Reader = Callable[[], Iterable[Any]]

#: how often a blocked producer/consumer wakes up to check that the other side is alive
_POLL_S = 0.2


def _put(q: queue.Queue, stop: threading.Event, item: Any) -> None:
    """Put ``item`` unless ``stop`` is set first (the consumer went away)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return
        except queue.Full:
            continue


class ComposeNotAligned(FleetkitError, ValueError):
    """``compose(check_alignment=True)`` found readers of different lengths."""


def batch(reader: Reader, batch_size: int, drop_last: bool = False) -> Reader:
    """Group samples into lists of ``batch_size`` (the last, shorter one kept unless ``drop_last``)."""
    batch_size = int(batch_size)
    if batch_size <= 0:
        raise InvalidArgumentError(f"batch: batch_size must be a positive integer, got {batch_size}")

    def batch_reader() -> Iterator[list[Any]]:
        buf: list[Any] = []
        for sample in reader():
            buf.append(sample)
            if len(buf) == batch_size:
                yield buf
                buf = []
        if buf and not drop_last:
            yield buf
    return batch_reader


def shuffle(reader: Reader, buf_size: int) -> Reader:
    """Shuffle within windows of ``buf_size`` samples."""
    if int(buf_size) <= 0:
        raise InvalidArgumentError(f"shuffle: buf_size must be positive, got {buf_size}")

    def shuffled() -> Iterator[Any]:
        buf: list[Any] = []
        for sample in reader():
            buf.append(sample)
            if len(buf) >= buf_size:
                random.shuffle(buf)
                yield from buf
                buf = []
        random.shuffle(buf)
        yield from buf
    return shuffled


def chain(*readers: Reader) -> Reader:
    """All samples of the first reader, then of the second, ..."""
    def chained() -> Iterator[Any]:
        return itertools.chain(*(r() for r in readers))
    return chained


def compose(*readers: Reader, check_alignment: bool = True) -> Reader:
    """Zip readers: each output sample is the tuple of their samples (tuples are flattened)."""
    def as_tuple(x: Any) -> tuple:
        return x if isinstance(x, tuple) else (x,)

    def composed() -> Iterator[tuple]:
        its = [iter(r()) for r in readers]
        if not check_alignment:
            for items in zip(*its):
                yield sum((as_tuple(x) for x in items), ())
            return
        for items in itertools.zip_longest(*its, fillvalue=_MISSING):
            if any(x is _MISSING for x in items):
                raise ComposeNotAligned("compose: the readers yield different numbers of samples")
            yield sum((as_tuple(x) for x in items), ())
    return composed


_MISSING = object()


def map_readers(func: Callable[..., Any], *readers: Reader) -> Reader:
    """``func`` applied to the zipped samples of ``readers``."""
    def mapped() -> Iterator[Any]:
        for items in zip(*(r() for r in readers)):
            yield func(*items)
    return mapped


def firstn(reader: Reader, n: int) -> Reader:
    """The first ``n`` samples."""
    def first() -> Iterator[Any]:
        return itertools.islice(reader(), int(n))
    return first


def cache(reader: Reader) -> Reader:
    """Read everything once, replay it from memory on every call."""
    data = list(reader())

    def cached() -> Iterator[Any]:
        return iter(data)
    return cached


def buffered(reader: Reader, size: int) -> Reader:
    """Read ahead up to ``size`` samples in a background thread."""
    return xmap_readers(lambda s: s, reader, 1, size, order=True)


def xmap_readers(mapper: Callable[[Any], Any], reader: Reader, process_num: int, buffer_size: int,
                 order: bool = False) -> Reader:
    """``mapper`` applied to every sample by ``process_num`` threads, ``buffer_size`` samples ahead.

    With ``order`` the output keeps the input order.  An exception in the reader or the
    mapper is raised in the consumer.
    """
    if int(process_num) <= 0 or int(buffer_size) <= 0:
        raise InvalidArgumentError(f"xmap_readers: process_num and buffer_size must be positive, "
                                   f"got {process_num} and {buffer_size}")

    def xreader() -> Iterator[Any]:
        return _XMap(mapper, reader, int(process_num), int(buffer_size), order).run()
    return xreader


class _XMap:
    """The threads behind ``xmap_readers``: one feeder, ``n`` mappers, results to the caller."""

    _END = object()

    def __init__(self, mapper: Callable, reader: Reader, n: int, size: int, order: bool) -> None:
        self.mapper, self.reader, self.n, self.order = mapper, reader, n, order
        self.inq: queue.Queue = queue.Queue(size)
        self.outq: queue.Queue = queue.Queue(size)
        self.stop = threading.Event()

    def _put(self, q: queue.Queue, item: Any) -> None:
        _put(q, self.stop, item)

    def _feed(self) -> None:
        try:
            for i, sample in enumerate(self.reader()):
                self._put(self.inq, (i, sample))
        except BaseException as e:  # noqa: BLE001 - re-raised by the consumer
            self._put(self.outq, (-1, e))
        for _ in range(self.n):
            self._put(self.inq, self._END)

    def _map(self) -> None:
        while not self.stop.is_set():
            try:
                item = self.inq.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is self._END:
                self._put(self.outq, self._END)
                return
            i, sample = item
            try:
                self._put(self.outq, (i, self.mapper(sample)))
            except BaseException as e:  # noqa: BLE001 - re-raised by the consumer
                self._put(self.outq, (-1, e))

    def run(self) -> Iterator[Any]:
        threads = [threading.Thread(target=self._feed, daemon=True)]
        threads += [threading.Thread(target=self._map, daemon=True) for _ in range(self.n)]
        for t in threads:
            t.start()
        try:
            yield from self._collect()
        finally:
            self.stop.set()

    def _collect(self) -> Iterator[Any]:
        done, pending, nxt = 0, {}, 0
        while done < self.n:
            try:
                item = self.outq.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is self._END:
                done += 1
                continue
            i, value = item
            if i < 0:
                raise value
            if not self.order:
                yield value
                continue
            pending[i] = value
            while nxt in pending:
                yield pending.pop(nxt)
                nxt += 1
        for i in sorted(pending):
            yield pending[i]


def multiprocess_reader(readers: list[Reader], use_pipe: bool = True, queue_size: int = 1000) -> Reader:
    """Samples of all ``readers``, read concurrently (threads here: samples need not be picklable)."""
    def merged() -> Iterator[Any]:
        out: queue.Queue = queue.Queue(int(queue_size))
        stop = threading.Event()
        end = object()

        def run(r: Reader) -> None:
            try:
                for s in r():
                    _put(out, stop, s)
            except BaseException as e:  # noqa: BLE001 - re-raised by the consumer
                _put(out, stop, _Raised(e))
            _put(out, stop, end)
        for r in readers:
            threading.Thread(target=run, args=(r,), daemon=True).start()
        finished = 0
        try:
            while finished < len(readers):
                try:
                    s = out.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if s is end:
                    finished += 1
                elif isinstance(s, _Raised):
                    raise s.exc
                else:
                    yield s
        finally:
            stop.set()
    return merged


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
