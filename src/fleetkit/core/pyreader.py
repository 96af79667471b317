"""The fluid 1.4 input pipeline: ``layers.py_reader``, ``read_file``, ``io.PyReader``.

A reader is a bounded queue filled by a background thread from a Python
generator; the program's ``read`` op pops one batch per ``Executor.run`` and
writes it into the data variables.  When the generator is exhausted the ``read``
op raises ``EOFException``; ``reset()`` then readies the reader for the next pass::

    reader = fluid.layers.py_reader(capacity=64, shapes=[(-1, 784), (-1, 1)],
                                    dtypes=["float32", "int64"])
    image, label = fluid.layers.read_file(reader)
    ...
    reader.decorate_paddle_reader(paddle.batch(train_samples, 32))
    for pass_id in range(passes):
        reader.start()
        try:
            while True:
                exe.run(fetch_list=[loss])
        except fluid.core.EOFException:
            reader.reset()

The queue lives in this process (a registry keyed by the reader variable's name,
like fluid's queue in the global scope), so cloned programs (``clone(for_test=True)``)
read from the same reader.  ``double_buffer`` is accepted: the queue already
prefetches while the executor runs.
"""
from __future__ import annotations

import queue
import threading
import time
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import FleetkitError, InvalidArgumentError, OpError
from . import unique_name
from .data_feeder import BatchConverter
from .framework import Variable, convert_dtype, default_main_program
from .registry import register_op
from .scope import LoDTensor

__all__ = ["EOFException", "PyReader", "create_py_reader_by_data", "double_buffer", "py_reader", "read_file"]

#: how often a blocked put/get wakes up to look at the other side (reset, a dead thread)
_POLL_S = 0.2
#: longest wait for the filler thread to stop in ``reset()``
_JOIN_TIMEOUT_S = 10.0


class EOFException(FleetkitError):
    """The reader has no more batches this pass (``fluid.core.EOFException``): call ``reset()``."""


_END = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Queue:
    """A bounded queue of converted batches and the thread that fills it."""

    def __init__(self, name: str, slots: Sequence[Any], capacity: int) -> None:
        if int(capacity) <= 0:
            raise InvalidArgumentError(f"reader '{name}': capacity must be positive, got {capacity}")
        self.name = name
        self.slots = list(slots)
        self.capacity = int(capacity)
        self.source: Callable[[], Iterator[list[Any]]] | None = None
        self._q: queue.Queue = queue.Queue(self.capacity)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._exhausted = False

    def size(self) -> int:
        """Batches waiting (fluid 1.4's ``py_reader.queue.size()``, which scripts log).  A filler
        that has finished left one end-of-pass (or failure) marker last in the queue: not a batch."""
        n = self._q.qsize()
        done = self._thread is not None and not self._thread.is_alive()
        return max(n - 1, 0) if done else n

    # -- sources: each yields one list of values per batch, in slot order
    def set_sample_lists(self, reader: Callable[[], Iterable[Any]]) -> None:
        convert = BatchConverter(self.slots)
        names = convert.names

        def source() -> Iterator[list[Any]]:
            for batch in reader():
                fed = convert(batch)
                yield [fed[n] for n in names]
        self.source = source

    def set_batches(self, reader: Callable[[], Iterable[Any]]) -> None:
        n = len(self.slots)

        def source() -> Iterator[list[Any]]:
            for i, batch in enumerate(reader()):
                if isinstance(batch, dict):
                    batch = [batch[s.name] for s in self.slots]
                if not isinstance(batch, (list, tuple)) or len(batch) != n:
                    raise InvalidArgumentError(
                        f"reader '{self.name}': batch #{i} must be a list of {n} arrays "
                        f"({[s.name for s in self.slots]}), got {type(batch).__name__}")
                yield [v if isinstance(v, (LoDTensor, np.ndarray)) else np.asarray(v) for v in batch]
        self.source = source

    def set_samples(self, samples: Callable[[], Iterable[Any]], batch_size: int, drop_last: bool) -> None:
        if int(batch_size) <= 0:
            raise InvalidArgumentError(f"reader '{self.name}': batch_size must be positive, got {batch_size}")

        def lists() -> Iterator[list[Any]]:
            buf: list[Any] = []
            for s in samples():
                buf.append(s)
                if len(buf) == batch_size:
                    yield buf
                    buf = []
            if buf and not drop_last:
                yield buf
        self.set_sample_lists(lists)

    # -- life cycle
    def start(self) -> None:
        if self.source is None:
            raise InvalidArgumentError(f"reader '{self.name}': start() before any decorate_*() gave it data")
        if self._thread is not None:
            raise InvalidArgumentError(f"reader '{self.name}': start() called twice; call reset() after the "
                                       f"pass ends (EOFException) before starting again")
        # a fresh queue and stop flag per pass: a filler still stuck in user code after reset()
        # can only ever write into its own (abandoned) queue
        self._q = queue.Queue(self.capacity)
        self._stop = threading.Event()
        self._exhausted = False
        self._thread = threading.Thread(target=self._fill, args=(self._q, self._stop),
                                        name=f"py_reader:{self.name}", daemon=True)
        self._thread.start()

    def reset(self) -> None:
        self._stop.set()
        t, self._thread = self._thread, None
        deadline = time.monotonic() + _JOIN_TIMEOUT_S
        while t is not None and t.is_alive() and time.monotonic() < deadline:
            _drain(self._q)
            t.join(_POLL_S)
        _drain(self._q)
        self._exhausted = False

    def _fill(self, q: queue.Queue, stop: threading.Event) -> None:
        try:
            assert self.source is not None
            for batch in self.source():
                if not _put(q, stop, batch):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the reading thread, which raises it
            _put(q, stop, _Failed(e))
            return
        _put(q, stop, _END)

    def next_batch(self) -> list[Any]:
        """The next batch; ``EOFException`` when the pass is over."""
        if self._exhausted:
            raise EOFException(f"reader '{self.name}': the pass is over; call reset() and start()")
        if self._thread is None:
            raise InvalidArgumentError(f"reader '{self.name}': not started; call start() before running "
                                       f"the program")
        while True:
            try:
                item = self._q.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if self._thread is None or not self._thread.is_alive() and self._q.empty():
                    self._exhausted = True
                    raise EOFException(f"reader '{self.name}': stopped") from None
        if item is _END:
            self._exhausted = True
            raise EOFException(f"reader '{self.name}': end of the data (call reset() before the next pass)")
        if isinstance(item, _Failed):
            self._exhausted = True
            e = item.exc
            if isinstance(e, FleetkitError):
                raise e
            raise OpError(f"reader '{self.name}': the data source raised {type(e).__name__}: {e}") from e
        return item


def _drain(q: queue.Queue) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass


def _put(q: queue.Queue, stop: threading.Event, item: Any) -> bool:
    """Put ``item``, waking up to notice ``stop`` (False: stopped before it fit)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


#: reader variable name -> its queue (one process, like fluid's queue in the global scope)
_QUEUES: dict[str, _Queue] = {}


def _queue_of(name: str) -> _Queue:
    q = _QUEUES.get(name)
    if q is None:
        raise InvalidArgumentError(f"reader '{name}' was created in another process or never created here; "
                                   f"build the program with py_reader in this process")
    return q


class _DecorateMixin:
    """The ``decorate_*`` / ``start`` / ``reset`` methods shared by py_reader vars and PyReader."""

    def _q(self) -> _Queue:
        raise NotImplementedError

    def decorate_paddle_reader(self, paddle_reader: Callable, places: Any = None) -> None:
        """Data from a reader yielding lists of samples (``paddle.batch(...)`` output)."""
        self._q().set_sample_lists(paddle_reader)

    def decorate_sample_list_generator(self, reader: Callable, places: Any = None) -> None:
        """Data from a reader yielding lists of samples (``io.PyReader``'s name)."""
        self._q().set_sample_lists(reader)

    def decorate_tensor_provider(self, reader: Callable, places: Any = None) -> None:
        """Data from a reader yielding one list of arrays / LoDTensors per batch."""
        self._q().set_batches(reader)

    decorate_batch_generator = decorate_tensor_provider

    def decorate_sample_generator(self, sample_generator: Callable, batch_size: int, drop_last: bool = True,
                                  places: Any = None) -> None:
        """Data from a reader yielding single samples, batched here."""
        self._q().set_samples(sample_generator, int(batch_size), drop_last)

    def start(self) -> None:
        """Start filling the queue (once per pass)."""
        self._q().start()

    def reset(self) -> None:
        """Stop filling and empty the queue (after ``EOFException``, or to cut a pass short)."""
        self._q().reset()


class ReaderVariable(Variable, _DecorateMixin):
    """The variable ``py_reader`` returns; its methods drive the reader's queue."""

    def _q(self) -> _Queue:
        return _queue_of(self.name)

    @property
    def queue(self) -> _Queue:
        return self._q()


# ---------------------------------------------------------------- the read op
def _read_infer(ctx: Any) -> None:
    pass  # outputs are declared by read_file / PyReader with the reader's shapes


@register_op("read", _read_infer)
def _read_kernel(ctx: Any) -> None:
    from .executor import convert_feed  # executor imports the op registry; import at run time
    q = _queue_of(ctx.ins["Reader"][0])
    batch = q.next_batch()
    names = ctx.outs["Out"]
    block = ctx.op.block
    for name, value in zip(names, batch):
        ctx.env[name] = convert_feed(block.var(name), value, ctx.place)


# -------------------------------------------------------------- build helpers
def _slot_specs(shapes: Sequence[Sequence[int]], dtypes: Sequence[Any], lod_levels: Sequence[int] | None,
                where: str) -> list[SimpleNamespace]:
    if len(shapes) != len(dtypes):
        raise InvalidArgumentError(f"{where}: {len(shapes)} shapes but {len(dtypes)} dtypes")
    lod_levels = list(lod_levels) if lod_levels is not None else [0] * len(shapes)
    if len(lod_levels) != len(shapes):
        raise InvalidArgumentError(f"{where}: {len(shapes)} shapes but {len(lod_levels)} lod_levels")
    return [SimpleNamespace(name=f"slot{i}", shape=tuple(int(d) for d in s), dtype=convert_dtype(t),
                            lod_level=int(lv)) for i, (s, t, lv) in enumerate(zip(shapes, dtypes, lod_levels))]


def _reader_var(name: str | None, slots: list, capacity: int, q: _Queue | None = None) -> ReaderVariable:
    block = default_main_program().global_block()
    name = name or unique_name.generate("py_reader")
    if name in block.vars:
        raise InvalidArgumentError(f"py_reader: a variable named '{name}' already exists")
    var = ReaderVariable(block, name, shape=(), dtype="float32", persistable=True, stop_gradient=True,
                         type="reader")
    block.vars[name] = var
    block.program._bump()
    _QUEUES[name] = q or _Queue(name, slots, capacity)
    return var


def py_reader(capacity: int, shapes: Sequence[Sequence[int]], dtypes: Sequence[Any],
              lod_levels: Sequence[int] | None = None, name: str | None = None,
              use_double_buffer: bool = True) -> ReaderVariable:
    """A reader of batches with these ``shapes``/``dtypes``; get its data vars with ``read_file``."""
    slots = _slot_specs(shapes, dtypes, lod_levels, "py_reader")
    return _reader_var(name, slots, capacity)


def create_py_reader_by_data(capacity: int, feed_list: Sequence[Variable], name: str | None = None,
                             use_double_buffer: bool = True) -> ReaderVariable:
    """A reader shaped like ``feed_list`` (vars from ``layers.data``); ``read_file`` on it
    returns those very variables, so feed names (inference models, DataFeeder) stay theirs."""
    if not feed_list or not all(isinstance(v, Variable) for v in feed_list):
        raise InvalidArgumentError(f"create_py_reader_by_data: feed_list must be a non-empty list of Variables, "
                                   f"got {feed_list!r}")
    return _reader_var(name, list(feed_list), capacity)


def read_file(reader: ReaderVariable) -> Any:
    """Append the ``read`` op: returns the reader's data variables (one var if it has one slot)."""
    if not isinstance(reader, ReaderVariable):
        raise InvalidArgumentError(f"read_file: expected the variable py_reader returned, got {reader!r}")
    q = _queue_of(reader.name)
    block = default_main_program().global_block()
    if _unwritten_vars_of(block, q.slots):
        outs = list(q.slots)  # create_py_reader_by_data: the read op fills the data vars themselves
    else:
        outs = [block.create_var(name=unique_name.generate(f"{reader.name}_{s.name}"), shape=s.shape,
                                 dtype=s.dtype, lod_level=s.lod_level, stop_gradient=True, is_data=True)
                for s in q.slots]
    _append_read(block, reader.name, outs)
    return outs[0] if len(outs) == 1 else outs


def _unwritten_vars_of(block: Any, slots: Sequence[Any]) -> bool:
    """Whether ``slots`` are variables of ``block`` that no op writes yet."""
    if not all(isinstance(s, Variable) and block._find_var_recursive(s.name) is s for s in slots):
        return False
    names = {s.name for s in slots}
    return not any(names.intersection(op.output_arg_names) for op in block.ops)


def _append_read(block: Any, reader_name: str, outs: Sequence[Variable]) -> None:
    block.append_op("read", inputs={"Reader": [reader_name]}, outputs={"Out": [v.name for v in outs]})


def double_buffer(reader: ReaderVariable, place: Any = None, name: str | None = None) -> ReaderVariable:
    """Accepted for fluid compatibility: the reader's queue already prefetches."""
    return reader


class PyReader(_DecorateMixin):
    """``fluid.io.PyReader(feed_list, capacity, use_double_buffer, iterable)``.

    Not iterable: the main program gets a ``read`` op writing ``feed_list``; run it
    between ``start()`` and ``EOFException``.  Iterable: ``for data in reader():
    exe.run(feed=data, ...)`` (``data`` is a list of one feed dict, one place per process).
    """

    def __init__(self, feed_list: Sequence[Variable], capacity: int, use_double_buffer: bool = True,
                 iterable: bool = False) -> None:
        if not feed_list or not all(isinstance(v, Variable) for v in feed_list):
            raise InvalidArgumentError(f"PyReader: feed_list must be a non-empty list of Variables, got {feed_list!r}")
        self.feed_list = list(feed_list)
        self.iterable = bool(iterable)
        self._name = unique_name.generate("pyreader")
        self._queue = _Queue(self._name, self.feed_list, capacity)
        _QUEUES[self._name] = self._queue
        if not self.iterable:
            _reader_var(self._name, self.feed_list, capacity, self._queue)
            _append_read(default_main_program().global_block(), self._name, self.feed_list)

    def _q(self) -> _Queue:
        return self._queue

    @property
    def queue(self) -> _Queue:
        return self._queue

    def __call__(self) -> Iterator[list[dict[str, Any]]]:
        if not self.iterable:
            raise InvalidArgumentError("PyReader: only an iterable PyReader (iterable=True) can be iterated; "
                                       "otherwise use start() / reset()")
        return self._iterate()

    def _iterate(self) -> Iterator[list[dict[str, Any]]]:
        q = self._queue
        q.reset()
        q.start()
        names = [v.name for v in self.feed_list]
        try:
            while True:
                try:
                    batch = q.next_batch()
                except EOFException:
                    return
                yield [dict(zip(names, batch))]
        finally:
            q.reset()
