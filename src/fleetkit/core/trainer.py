"""``Executor.train_from_dataset`` / ``infer_from_dataset``: Hogwild threads fed by a dataset.

Each of ``thread`` workers runs the whole program on its own batches, with its
own prepared ops and its own values of the non-persistable variables, while
the persistable ones (parameters, optimizer state) are shared: update ops
change shared arrays in place, so every thread sees every other thread's
updates without locks (Hogwild), and a persistable that an op *replaces*
(a step counter, metric state) is copied back to the shared scope after the
step and picked up by the other threads before their next one.

The dataset is duck-typed (the core does not import ``fleetkit.dataset``): it
needs ``thread_num``, ``_prepare_to_run()``, ``_thread_feeds(n)`` returning one
iterator of feed dicts per worker and, optionally, ``_finish_run()``.  A PS
trainer program or a collective program is just a program with more ops
(send/recv, all-reduce) and runs the same way; a collective program needs
``thread=1`` (ranks stop together when the first runs out of batches), since its ranks
must issue their all-reduces in the same order.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgumentError, NotFoundError
from .framework import (
    ROLE_BACKWARD,
    ROLE_OPTIMIZE,
    Program,
    Variable,
    default_main_program,
)
from .scope import LoDTensor, Scope, global_scope

_log = logging.getLogger("fleetkit.trainer")

__all__ = ["DatasetRunStats", "run_from_dataset"]


class _NoDatasetError(InvalidArgumentError, RuntimeError):
    """``dataset`` is None: fluid raises RuntimeError here, fleetkit's callers expect ValueError."""

# ops an inference pass leaves out (no gradients, no updates)
_TRAIN_ONLY_ROLES = {ROLE_BACKWARD, ROLE_OPTIMIZE}


@dataclass
class DatasetRunStats:
    """What a dataset run did (Paddle returns None; this is extra)."""

    batches: int = 0
    examples: int = 0
    seconds: float = 0.0
    threads: int = 0
    #: fetch label -> last value thread 0 fetched
    fetched: dict[str, Any] = field(default_factory=dict)
    #: batches this rank did not run because another rank of a collective job ran out first
    unused_batches: int = 0

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else 0.0


# A collective program's ranks must take the same number of steps: a rank with
# one batch more would wait forever in an all-reduce its peers never join (after
# a global shuffle, counts differ by a few).  ``fleetkit.collective`` registers a
# factory here (core does not import it): ``factory(program)`` returns None, or
# ``agree(has_batch) -> bool``, True while EVERY rank still has a batch.
_LOCKSTEP_FACTORIES: list[Callable[[Program], Callable[[bool], bool] | None]] = []


def register_lockstep(factory: Callable[[Program], Callable[[bool], bool] | None]) -> None:
    """Add a step-agreement factory for train_from_dataset (see ``_LOCKSTEP_FACTORIES``)."""
    if factory not in _LOCKSTEP_FACTORIES:
        _LOCKSTEP_FACTORIES.append(factory)


def _lockstep(program: Program) -> Callable[[bool], bool] | None:
    for factory in _LOCKSTEP_FACTORIES:
        agree = factory(program)
        if agree is not None:
            return agree
    return None


def run_from_dataset(executor: Any, program: Program | None, dataset: Any, scope: Scope | None,
                     thread: int, debug: bool, fetch_list: Sequence[Any] | None,
                     fetch_info: Sequence[str] | None, print_period: int, infer: bool) -> DatasetRunStats:
    """Run ``program`` over every batch of ``dataset`` in ``thread`` Hogwild workers."""
    from .executor import _Prepared
    from .fusion import fuse_steps
    program = default_main_program() if program is None else getattr(program, "_program", program)
    if not isinstance(program, Program):
        raise InvalidArgumentError(f"train_from_dataset: program must be a Program, got {type(program).__name__}")
    if dataset is None:
        raise _NoDatasetError("train_from_dataset: dataset is None; create one with "
                              "fleetkit.DatasetFactory().create_dataset(...)")
    thread = int(thread) if thread and int(thread) > 0 else int(getattr(dataset, "thread_num", 0) or 0)
    if thread <= 0:
        raise InvalidArgumentError("train_from_dataset: thread must be > 0 (pass thread= or dataset.set_thread)")
    block = program.global_block()
    fetch_names = [f.name if isinstance(f, Variable) else str(f) for f in (fetch_list or [])]
    labels = list(fetch_info) if fetch_info is not None else list(fetch_names)
    if len(labels) != len(fetch_names):
        raise InvalidArgumentError(f"train_from_dataset: fetch_list has {len(fetch_names)} entries but "
                                   f"fetch_info has {len(labels)}")
    for name in fetch_names:
        if block._find_var_recursive(name) is None:
            raise NotFoundError(f"fetch_list: variable '{name}' is not in the program")
    collective = sorted({op.type for op in block.ops if op.type.startswith("c_")})
    if collective and thread > 1:
        raise InvalidArgumentError(
            f"train_from_dataset: the program has collective ops ({', '.join(collective)}): use thread=1. "
            f"Every rank must run its collectives in the same order, which Hogwild threads would not")
    dataset._prepare_to_run()
    for slot in getattr(dataset, "used_slots", []):
        if block._find_var_recursive(slot.name) is None:
            raise NotFoundError(f"dataset slot '{slot.name}' (set_use_var) is not a variable of the program")
    scope = global_scope() if scope is None else scope
    feeds = dataset._thread_feeds(thread)
    runner = _Run(executor, program, scope, fetch_names, labels, max(1, int(print_period)), debug)
    runner.agree = _lockstep(program) if collective else None
    preps = []
    for _ in feeds:
        prep = _Prepared(program, executor.place)
        if infer:
            prep.steps = [(k, c) for k, c in prep.steps if c.op.attrs.get("op_role") not in _TRAIN_ONLY_ROLES]
        if not debug:  # debug times every op on its own
            prep.steps = fuse_steps(prep.steps)  # the same fused fast paths as Executor.run
        preps.append(prep)
    stats = runner.run(feeds, preps)
    finish = getattr(dataset, "_finish_run", None)
    if finish is not None:
        finish()
    return stats


class _Run:
    """State shared by the worker threads of one run."""

    def __init__(self, executor: Any, program: Program, scope: Scope, fetch_names: list[str],
                 labels: list[str], print_period: int, debug: bool):
        self.executor, self.program, self.scope = executor, program, scope
        self.fetch_names, self.labels = fetch_names, labels
        self.print_period, self.debug = print_period, debug
        self.shared = scope._vars
        self.persistable = sorted({v.name for v in program.list_vars() if v.persistable})
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()
        self.batches = self.examples = self.t0_batches = 0
        self.fetched: dict[str, Any] = {}
        self.op_seconds: dict[str, float] = {}
        self.start = time.perf_counter()
        self.agree: Callable[[bool], bool] | None = None
        self.unused_batches = 0

    def run(self, feeds: list[Any], preps: list[Any]) -> DatasetRunStats:
        workers = [threading.Thread(target=self._worker, args=(i, it, p), name=f"hogwild-{i}", daemon=True)
                   for i, (it, p) in enumerate(zip(feeds, preps))]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        seconds = time.perf_counter() - self.start
        if self.errors:
            raise self.errors[0]
        if self.debug and self.op_seconds:
            total = sum(self.op_seconds.values()) or 1.0
            for op, sec in sorted(self.op_seconds.items(), key=lambda kv: -kv[1]):
                print(f"[debug] op {op}: {sec:.3f} s ({100 * sec / total:.1f}%) in thread 0")
        return DatasetRunStats(self.batches, self.examples, seconds, len(workers), dict(self.fetched),
                               self.unused_batches)

    def _worker(self, tid: int, feed_iter: Any, prep: Any) -> None:
        from .executor import convert_feed
        env = dict(self.shared)
        for ctx in prep.ctxs:
            ctx.env = env
        block = self.program.global_block()
        place = self.executor.place
        shared, persist = self.shared, self.persistable
        try:
            for feed in self._feeds(feed_iter):
                if self.stop.is_set():
                    break
                for n in persist:  # pick up persistables other threads replaced
                    if n in shared:
                        env[n] = shared[n]
                before = {n: env.get(n) for n in persist}
                rows = 0
                for name, value in feed.items():
                    env[name] = convert_feed(block.var(name), value, place)
                    rows = rows or _rows(value)
                self._steps(prep.steps, tid)
                for n in persist:  # publish persistables this step replaced
                    v = env.get(n)
                    if v is not before[n]:
                        shared[n] = v
                self._account(tid, env, rows)
        except BaseException as exc:  # noqa: BLE001  (re-raised by the main thread)
            with self.lock:
                self.errors.append(exc)
            self.stop.set()
        finally:
            close = getattr(feed_iter, "close", None)
            if close is not None:
                close()  # stops readers (kills pipe commands) of an unfinished stream

    def _feeds(self, feed_iter: Any) -> Any:
        """The batches to run: all of them, or (collective programs) as many as every rank has."""
        if self.agree is None:
            yield from feed_iter
            return
        it = iter(feed_iter)
        while True:
            feed = next(it, None)
            if not self.agree(feed is not None):
                if feed is not None:  # a peer ran out first: count what this rank leaves unused
                    self.unused_batches = 1 + sum(1 for _ in it)
                    _log.warning("train_from_dataset: another rank ran out of data; this rank leaves %d "
                                 "batch(es) unused so that all ranks take the same number of steps "
                                 "(balance the files, or use InMemoryDataset.global_shuffle)",
                                 self.unused_batches)
                return
            yield feed

    def _steps(self, steps: list, tid: int) -> None:
        if not (self.debug and tid == 0):
            self.executor._run_steps(steps)
            return
        for kernel, ctx in steps:
            t = time.perf_counter()
            self.executor._run_steps([(kernel, ctx)])
            self.op_seconds[ctx.op.type] = self.op_seconds.get(ctx.op.type, 0.0) + time.perf_counter() - t

    def _account(self, tid: int, env: dict, rows: int) -> None:
        with self.lock:
            self.batches += 1
            self.examples += rows
            batches, examples = self.batches, self.examples
        if tid != 0 or not self.fetch_names:
            return
        self.t0_batches += 1
        values = [self.executor._fetch(env, n, True) for n in self.fetch_names]
        self.fetched = dict(zip(self.labels, values))
        if self.t0_batches % self.print_period == 0:
            rate = examples / max(time.perf_counter() - self.start, 1e-9)
            shown = ", ".join(f"{lab}: {_show(v)}" for lab, v in zip(self.labels, values))
            print(f"batch {self.t0_batches} (all threads: {batches}): {shown}, examples/s: {rate:.0f}", flush=True)


def _rows(value: Any) -> int:
    if isinstance(value, LoDTensor):
        lod = value.lod()
        return len(lod[0]) - 1 if lod else len(value.values)
    shape = getattr(value, "shape", None)
    return int(shape[0]) if shape else 0


def _show(v: Any) -> str:
    flat = getattr(v, "ravel", lambda: v)()
    size = getattr(flat, "size", 1)
    return str(flat[0]) if size == 1 else str(v)
