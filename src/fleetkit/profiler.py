"""``fluid.profiler``: time every op the executor runs and print a sorted report.

    with fluid.profiler.profiler("CPU", sorted_key="total", profile_path="/tmp/profile"):
        for batch in reader():
            exe.run(feed=..., fetch_list=[loss])

or ``start_profiler("CPU")`` ... ``stop_profiler("total", "/tmp/profile")``.  While the
profiler is on, ``Executor.run`` runs each op as its own step (no fusion) and records
its wall time under the op type; the report lists, per op type, the number of calls
and the total, minimum, maximum and average time in milliseconds, plus its share of
the total.  ``profile_path`` receives the same table as text (fluid writes a protobuf
for its timeline tool, which fleetkit does not have).  Ops run by
``train_from_dataset`` threads and by parameter servers are not profiled.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

from .core import executor as _executor
from .core.registry import get_op_def
from .errors import InvalidArgumentError

__all__ = ["cuda_profiler", "profiler", "reset_profiler", "start_profiler", "stop_profiler", "report"]

_STATES = ("CPU", "GPU", "All")
_SORT_KEYS = (None, "calls", "total", "max", "min", "ave")


@dataclass
class _Event:
    calls: int = 0
    total: float = 0.0
    min: float = float("inf")
    max: float = 0.0

    def add(self, seconds: float) -> None:
        self.calls += 1
        self.total += seconds
        self.min = min(self.min, seconds)
        self.max = max(self.max, seconds)


_lock = threading.Lock()
_events: dict[str, _Event] = {}
_state: str | None = None


def _timer(prepared: Any, run_steps: Any) -> None:
    """The executor hook: every op unfused, wrapped in a timer."""
    steps = [(_timed(get_op_def(ctx.op.type).forward, ctx.op.type), ctx) for ctx in prepared.ctxs]
    run_steps(steps)


def _timed(kernel: Any, name: str) -> Any:
    def run(ctx: Any) -> None:
        t0 = time.perf_counter()
        try:
            kernel(ctx)
        finally:
            dt = time.perf_counter() - t0
            with _lock:
                ev = _events.get(name)
                if ev is None:
                    ev = _events[name] = _Event()
                ev.add(dt)
    return run


def start_profiler(state: str) -> None:
    """Start recording (``state``: 'CPU', 'GPU' or 'All'; GPU kernels are timed from the host)."""
    global _state
    if state not in _STATES:
        raise InvalidArgumentError(f"start_profiler: state must be one of {list(_STATES)}, got {state!r}")
    _state = state
    _executor.set_op_timer(_timer)


def reset_profiler() -> None:
    """Forget what was recorded so far."""
    with _lock:
        _events.clear()


def report(sorted_key: str | None = None) -> str:
    """The recorded events as a table (sorted by ``sorted_key``, else in first-seen order)."""
    if sorted_key not in _SORT_KEYS:
        raise InvalidArgumentError(f"profiler: sorted_key must be one of {list(_SORT_KEYS)}, got {sorted_key!r}")
    with _lock:
        rows = list(_events.items())
    if sorted_key is not None:
        attr = {"ave": None}.get(sorted_key, sorted_key)
        rows.sort(key=lambda kv: -(kv[1].total / kv[1].calls if attr is None else getattr(kv[1], attr)))
    grand = sum(ev.total for _, ev in rows) or 1.0
    width = max([len("Event")] + [len(n) for n, _ in rows])
    lines = ["------------------------->     Profiling Report     <-------------------------",
             f"Place: {_state or 'CPU'}    Time unit: ms    Sorted by: {sorted_key or 'none'}",
             f"{'Event':<{width}}  {'Calls':>7}  {'Total':>10}  {'Min.':>9}  {'Max.':>9}  {'Ave.':>9}  {'Ratio.':>7}"]
    for name, ev in rows:
        lines.append(f"{name:<{width}}  {ev.calls:>7}  {ev.total * 1e3:>10.4f}  {ev.min * 1e3:>9.4f}  "
                     f"{ev.max * 1e3:>9.4f}  {ev.total / ev.calls * 1e3:>9.4f}  {ev.total / grand:>7.4f}")
    return "\n".join(lines)


def stop_profiler(sorted_key: str | None = None, profile_path: str = "/tmp/profile") -> None:
    """Stop recording, print the report and write it to ``profile_path``."""
    global _state
    text = report(sorted_key)
    _executor.set_op_timer(None)
    _state = None
    print(text)
    if profile_path:
        with open(profile_path, "w", encoding="utf-8") as f:
            f.write(text + "\n")


@contextlib.contextmanager
def profiler(state: str, sorted_key: str | None = None, profile_path: str = "/tmp/profile") -> Iterator[None]:
    """Profile the block: ``start_profiler(state)``, then ``stop_profiler(sorted_key, profile_path)``."""
    if sorted_key not in _SORT_KEYS:
        raise InvalidArgumentError(f"profiler: sorted_key must be one of {list(_SORT_KEYS)}, got {sorted_key!r}")
    reset_profiler()
    start_profiler(state)
    try:
        yield
    finally:
        stop_profiler(sorted_key, profile_path)


@contextlib.contextmanager
def cuda_profiler(output_file: str, output_mode: str | None = None, config: Any = None) -> Iterator[None]:
    """fluid's nvprof wrapper: accepted, records nothing (use ``profiler('GPU')`` for per-op times)."""
    if output_mode not in (None, "kvp", "csv"):
        raise InvalidArgumentError(f"cuda_profiler: output_mode must be 'kvp' or 'csv', got {output_mode!r}")
    yield
