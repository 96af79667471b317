"""``Executor.train_from_dataset`` / ``infer_from_dataset``: Hogwild workers fed by a dataset.

Each of ``thread`` workers runs the whole program on its own batches, with its
own prepared ops and its own values of the non-persistable variables, while
the persistable ones (parameters, optimizer state, step counters) are shared:
update ops and counters change the shared arrays in place, so every worker sees
every other worker's updates without locks (Hogwild; ``ops/optimizer.py`` says
how its kernels keep a half-applied update from misleading another worker).  A
persistable that an op *replaces* (a learning rate computed from the step) is
published back whole after the step for the others: right for a value derived
each step, wrong for anything that accumulates, which must be updated in place.

Two kinds of workers run the same loop (``_Run._loop``):

* processes (``thread`` > 1 on the CPU, a program of core ops only, a dataset
  whose feeds survive a fork): forked workers that truly run in parallel; the
  persistables live in one shared-memory block (``trainer_procs.py``);
* threads otherwise (one worker, GPU places, programs with send/recv or
  collective ops, whose clients and sockets belong to this process).

Metric state (``auc`` buckets) is never shared while running: each worker
counts its own batches from the starting value and the counts are merged
exactly at the end (start + the sum of every worker's change), so every example
is counted once whatever ``thread`` is.  A fetched metric shows worker 0's own
batches while running; the scope holds the merged state afterwards.

The dataset is anything that implements ``DatasetSource`` (``core/dataset_source.py``;
the core does not import ``fleetkit.dataset``): ``thread_feeds(n)`` gives one
iterator of feed dicts per worker, ``process_safe_feeds`` says whether they may
run in forked processes.
A collective program needs ``thread=1`` (ranks stop together when the first
runs out of batches), since its ranks must issue their all-reduces in the same
order.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, NotFoundError
from .framework import (
    ROLE_BACKWARD,
    ROLE_OPTIMIZE,
    Program,
    Variable,
    default_main_program,
)
from .dataset_source import DatasetSource, missing_members
from .ops import adam_host
from .prepared import PreparedProgram, bind, fetch_value, reseed, run_steps
from .scope import LoDTensor, Scope, global_scope

_log = logging.getLogger("fleetkit.trainer")

__all__ = ["DatasetRunStats", "run_from_dataset"]


class _NoDatasetError(InvalidArgumentError, RuntimeError):
    """``dataset`` is None: fluid raises RuntimeError here, fleetkit's callers expect ValueError."""

# ops an inference pass leaves out (no gradients, no updates)
_TRAIN_ONLY_ROLES = {ROLE_BACKWARD, ROLE_OPTIMIZE}

#: op type -> output slots holding metric state that counts examples: kept per worker
#: and merged by summing every worker's change (see the module docstring)
ACCUMULATOR_OUTPUTS: dict[str, tuple[str, ...]] = {"auc": ("StatPosOut", "StatNegOut")}

#: "auto" (processes where possible), or "threads" to always use threads
WORKERS = "auto"


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
    #: "processes" or "threads": how the workers ran
    workers: str = "threads"

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
    from . import trainer_procs
    program = default_main_program() if program is None else getattr(program, "_program", program)
    if not isinstance(program, Program):
        raise InvalidArgumentError(f"train_from_dataset: program must be a Program, got {type(program).__name__}")
    if dataset is None:
        raise _NoDatasetError("train_from_dataset: dataset is None; create one with "
                              "fleetkit.DatasetFactory().create_dataset(...)")
    if not isinstance(dataset, DatasetSource):
        raise InvalidArgumentError(f"train_from_dataset: {type(dataset).__name__} is not a dataset (it lacks "
                                   f"{', '.join(missing_members(dataset))}); create one with "
                                   f"fleetkit.DatasetFactory().create_dataset(...)")
    thread = int(thread) if thread and int(thread) > 0 else int(dataset.thread_num or 0)
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
    dataset.prepare_to_run()
    for slot in dataset.used_slots:
        if block._find_var_recursive(slot.name) is None:
            raise NotFoundError(f"dataset slot '{slot.name}' (set_use_var) is not a variable of the program")
    scope = global_scope() if scope is None else scope
    feeds = dataset.thread_feeds(thread)
    runner = _Run(executor, program, scope, fetch_names, labels, max(1, int(print_period)), debug, len(feeds))
    runner.agree = _lockstep(program) if collective else None
    preps = [_prepare(program, executor.place, infer, debug) for _ in feeds]
    if WORKERS == "auto" and trainer_procs.can_fork(runner, dataset, preps):
        stats = trainer_procs.run(runner, feeds, preps, share=not infer, dataset=dataset)
    else:
        stats = runner.run_threads(feeds, preps)
    dataset.finish_run()
    return stats


def _prepare(program: Program, place: Any, infer: bool, debug: bool) -> Any:
    from .fusion import fuse_steps
    prep = PreparedProgram(program, place)
    if infer:
        prep.steps = [(k, c) for k, c in prep.steps if c.op.attrs.get("op_role") not in _TRAIN_ONLY_ROLES]
    if not debug:  # debug times every op on its own
        prep.steps = fuse_steps(prep.steps)  # the same fused fast paths as Executor.run
    return prep


def accumulator_names(program: Program) -> set[str]:
    """Persistable metric-state variables of ``program`` (``ACCUMULATOR_OUTPUTS``)."""
    block = program.global_block()
    names = set()
    for op in block.ops:
        for slot in ACCUMULATOR_OUTPUTS.get(op.type, ()):
            for n in op.outputs.get(slot, []):
                v = block._find_var_recursive(n)
                if v is not None and v.persistable:
                    names.add(n)
    return names


class _Run:
    """State shared by the workers of one run, and the loop each worker runs."""

    def __init__(self, executor: Any, program: Program, scope: Scope, fetch_names: list[str],
                 labels: list[str], print_period: int, debug: bool, workers: int):
        self.executor, self.program, self.scope = executor, program, scope
        self.fetch_names, self.labels = fetch_names, labels
        self.print_period, self.debug = print_period, debug
        self.shared = scope._vars
        self.private = sorted(n for n in accumulator_names(program) if scope._vars.get(n) is not None)
        private = set(self.private)
        self.persistable = sorted({v.name for v in program.list_vars() if v.persistable} - private)
        #: per worker: batches, examples (process mode puts this in shared memory)
        self.counts = np.zeros((workers, 2), np.int64)
        #: nonzero: every worker stops at its next batch
        self.stop = np.zeros(1, np.uint8)
        self.start = time.perf_counter()
        self.agree: Callable[[bool], bool] | None = None
        #: prints worker 0's progress lines (a worker process sends them to the parent instead)
        self.say: Callable[[str], None] = _say

    # ---- thread workers ----------------------------------------------------------------
    def run_threads(self, feeds: list[Any], preps: list[Any]) -> DatasetRunStats:
        results: list[dict | None] = [None] * len(feeds)
        errors: list[BaseException] = []

        def work(tid: int, feed_iter: Any, prep: Any) -> None:
            try:
                results[tid] = self.work(tid, feed_iter, prep, dict(self.shared), self._publish_ref)
            except BaseException as exc:  # noqa: BLE001  (re-raised by the main thread)
                errors.append(exc)
                self.stop[0] = 1

        workers = [threading.Thread(target=work, args=(i, it, p), name=f"hogwild-{i}", daemon=True)
                   for i, (it, p) in enumerate(zip(feeds, preps))]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if errors:
            raise errors[0]
        return self.finish(results, "threads")

    def _publish_ref(self, name: str, value: Any, env: dict) -> None:
        self.shared[name] = value

    def _pick_up(self, env: dict) -> None:
        shared = self.shared
        for n in self.persistable:  # persistables other threads replaced
            if n in shared:
                env[n] = shared[n]

    # ---- the loop every worker runs ----------------------------------------------------
    def work(self, tid: int, feed_iter: Any, prep: Any, env: dict,
             publish: Callable[[str, Any, dict], None], pick_up: bool = True) -> dict:
        """Run the batches of ``feed_iter``; returns what ``finish`` merges."""
        from .executor import convert_feed
        bind(prep, env)
        block = self.program.global_block()
        place = self.executor.place
        persist = self.persistable
        out: dict[str, Any] = {"fetched": {}, "op_seconds": {}, "unused": 0,
                               "start": {n: self.shared[n] for n in self.private}}
        for n in self.private:  # this worker's own counts, even if an op updates them in place
            v = self.shared[n]
            env[n] = LoDTensor(v.values.copy(), v._lod) if isinstance(v, LoDTensor) else v.copy()
        # Hogwild workers take the zero-gradient passes of large non-lazy Adam tables in pairs
        # (``ops/adam_host.py``): half the memory traffic that two cores compete for
        paired = adam_host.paired_steps() if len(self.counts) > 1 else contextlib.nullcontext()
        try:
            with paired:
                for feed in self._feeds(feed_iter, out):
                    if self.stop[0]:
                        break
                    if pick_up:
                        self._pick_up(env)
                    before = [env.get(n) for n in persist]
                    rows = 0
                    for name, value in feed.items():
                        env[name] = convert_feed(block.var(name), value, place)
                        rows = rows or _rows(value)
                    reseed(prep)   # each batch is a run: seeded random ops draw what Executor.run draws
                    self._steps(prep.steps, tid, out["op_seconds"])
                    for n, b in zip(persist, before):  # publish persistables this step replaced
                        v = env.get(n)
                        if v is not b:
                            publish(n, v, env)
                    self._account(tid, env, rows, out)
        finally:
            close = getattr(feed_iter, "close", None)
            if close is not None:
                close()  # stops readers (kills pipe commands) of an unfinished stream
        out["final"] = {n: env.get(n) for n in self.private}
        return out

    def finish(self, results: list[dict | None], how: str) -> DatasetRunStats:
        """Merge the workers' metric state into the scope; the run's stats."""
        seconds = time.perf_counter() - self.start
        done = [r for r in results if r is not None]
        for n in self.private:
            self.shared[n] = _merge_counts([r["start"][n] for r in done], [r["final"][n] for r in done],
                                           self.shared[n])
        first = results[0] or {"fetched": {}, "op_seconds": {}}
        if self.debug and first["op_seconds"]:
            total = sum(first["op_seconds"].values()) or 1.0
            for op, sec in sorted(first["op_seconds"].items(), key=lambda kv: -kv[1]):
                print(f"[debug] op {op}: {sec:.3f} s ({100 * sec / total:.1f}%) in thread 0")
        batches, examples = (int(x) for x in self.counts.sum(axis=0))
        return DatasetRunStats(batches, examples, seconds, len(results), dict(first["fetched"]),
                               sum(r["unused"] for r in done), how)

    def _feeds(self, feed_iter: Any, out: dict) -> Any:
        """The batches to run: all of them, or (collective programs) as many as every rank has."""
        if self.agree is None:
            yield from feed_iter
            return
        it = iter(feed_iter)
        while True:
            feed = next(it, None)
            if not self.agree(feed is not None):
                if feed is not None:  # a peer ran out first: count what this rank leaves unused
                    out["unused"] = 1 + sum(1 for _ in it)
                    _log.warning("train_from_dataset: another rank ran out of data; this rank leaves %d "
                                 "batch(es) unused so that all ranks take the same number of steps "
                                 "(balance the files, or use InMemoryDataset.global_shuffle)", out["unused"])
                return
            yield feed

    def _steps(self, steps: list, tid: int, op_seconds: dict) -> None:
        if not (self.debug and tid == 0):
            run_steps(steps, self.executor.check_nan_inf)
            return
        for kernel, ctx in steps:
            t = time.perf_counter()
            run_steps([(kernel, ctx)], self.executor.check_nan_inf)
            op_seconds[ctx.op.type] = op_seconds.get(ctx.op.type, 0.0) + time.perf_counter() - t

    def _account(self, tid: int, env: dict, rows: int, out: dict) -> None:
        mine = self.counts[tid]
        mine[0] += 1
        mine[1] += rows
        if tid != 0 or not self.fetch_names:
            return
        values = [fetch_value(env, n, True) for n in self.fetch_names]
        out["fetched"] = dict(zip(self.labels, values))
        if mine[0] % self.print_period == 0:
            batches, examples = (int(x) for x in self.counts.sum(axis=0))
            rate = examples / max(time.perf_counter() - self.start, 1e-9)
            shown = ", ".join(f"{lab}: {_show(v)}" for lab, v in zip(self.labels, values))
            self.say(f"batch {int(mine[0])} (all threads: {batches}): {shown}, examples/s: {rate:.0f}")


def _say(line: str) -> None:
    print(line, flush=True)


def _merge_counts(starts: list[Any], finals: list[Any], current: Any) -> Any:
    """``start + sum(final_i - start_i)``, in ``current``'s container (array or LoDTensor)."""
    if not finals:
        return current
    raw = [f.values if isinstance(f, LoDTensor) else f for f in finals]
    base = [s.values if isinstance(s, LoDTensor) else s for s in starts]
    total = raw[0].copy()
    for f, s in zip(raw[1:], base[1:]):
        total += f - s
    if isinstance(current, LoDTensor):
        return LoDTensor(total, current.lod())
    return total


def _rows(value: Any) -> int:
    if isinstance(value, LoDTensor):
        lod = value._lod
        return len(lod[0]) - 1 if lod else len(value.values)
    shape = getattr(value, "shape", None)
    return int(shape[0]) if shape else 0


def _show(v: Any) -> str:
    flat = getattr(v, "ravel", lambda: v)()
    size = getattr(flat, "size", 1)
    return str(flat[0]) if size == 1 else str(v)
