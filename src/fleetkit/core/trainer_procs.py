"""Hogwild workers as forked processes: ``train_from_dataset(thread=N)`` on N cores.

Python threads share one interpreter lock, so N training threads use about one
core.  Here the parent moves every persistable array (parameters, optimizer
state, step counters) into one shared-memory block and forks N workers: an
update op or a step counter changes the shared arrays in place and every worker
sees it at once (Hogwild, as fluid's threads), and a persistable an op
*replaces* (a value derived each step) is copied into its shared array after
the step.  The prepared programs and the feed
iterators are built before the fork, so each child inherits its own; the
dataset's in-memory instances are shared copy-on-write and never copied.

Children report over a pipe from their own fork (never the network): worker
0's progress lines, then either their result (fetched values, metric-state
counts) or their exception with its traceback.  The first failure stops the
others at their next batch; a child that dies without a word is named with
its exit code.
"""
from __future__ import annotations

import ctypes
import mmap
import multiprocessing as mp
import os
import pickle
import signal
import sys
import traceback
import weakref
from multiprocessing.connection import wait
from typing import Any

import numpy as np

from ..env import paddle_num_threads
from ..errors import FleetkitError, InvalidArgumentError
from .backend import CPUPlace
from .ops import shared_scalars
from .registry import get_op_def
from .scope import LoDTensor

__all__ = ["can_fork", "run"]

_ALIGN = 64
_PR_SET_PDEATHSIG = 1
#: seconds a worker gets to stop after the run ended or failed, before it is killed
_REAP_S = 10.0


def can_fork(runner: Any, dataset: Any, preps: list) -> bool:
    """True when the workers of this run can be processes (see ``trainer.py``)."""
    if len(preps) < 2 or runner.agree is not None or "fork" not in mp.get_all_start_methods():
        return False
    if runner.executor.place.__class__ is not CPUPlace or not dataset.process_safe_feeds:
        return False
    # ops of other subsystems (send/recv, collectives) hold clients and sockets of this process
    if not all(get_op_def(op.type).forward.__module__.startswith("fleetkit.core.")
               for op in runner.program.global_block().ops):
        return False
    for n in runner.persistable:
        v = runner.shared.get(n)
        raw = v.values if isinstance(v, LoDTensor) else v
        if v is not None and raw.__class__ is not np.ndarray:
            return False  # SelectedRows or device values: not one flat host buffer
    return True


def run(runner: Any, feeds: list, preps: list, share: bool = True, dataset: Any = None) -> Any:
    """Run the workers as processes; returns the run's ``DatasetRunStats``.

    ``dataset``'s counters that its feeds update while parsing (skipped malformed lines)
    are copies in each worker: what every worker added is added to the parent's.

    ``share=False`` (inference: nothing is updated but metric state) skips the shared
    block: the workers read the parent's arrays copy-on-write, and a persistable an op
    replaces stays the worker's own."""
    n = len(feeds)
    if share:
        runner.shared.update(_share(runner.shared, runner.persistable))
    runner.share = share
    block = _shared_block(16 * n + 1)
    runner.counts = np.frombuffer(block, np.int64, 2 * n).reshape(n, 2)
    runner.stop = np.frombuffer(block, np.uint8, 1, 16 * n)
    base = dataset.skip_counts()  # what every worker's copy starts from
    ctx = mp.get_context("fork")
    procs, conns = [], []
    try:
        with shared_scalars.use(ctx.Lock()):  # the workers fork with it (beta powers, step counters)
            _start(ctx, runner, feeds, preps, dataset, procs, conns)
        results = _collect(runner, procs, conns)
    finally:
        runner.stop[0] = 1
        _reap(procs)
    for r in results:
        if r is not None and r.get("skipped") is not None:
            dataset.add_skip_counts(r["skipped"][0] - base[0], r["skipped"][1])
    return runner.finish(results, "processes")


def _start(ctx: Any, runner: Any, feeds: list, preps: list, dataset: Any, procs: list, conns: list) -> None:
    """Fork one worker per feed, each reporting on its own pipe (``procs``, ``conns`` filled in)."""
    for tid, (feed_iter, prep) in enumerate(zip(feeds, preps)):
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(runner, tid, len(feeds), feed_iter, prep, send, os.getpid(), dataset),
                           name=f"hogwild-{tid}", daemon=True)
        proc.start()
        send.close()  # the child holds the only write end: EOF means it is gone
        procs.append(proc)
        conns.append(recv)


#: the shared blocks made here (arrays in them need no copy on the next run)
_BLOCKS: "weakref.WeakSet[mmap.mmap]" = weakref.WeakSet()


def _shared_block(nbytes: int) -> mmap.mmap:
    block = mmap.mmap(-1, max(int(nbytes), 1))  # anonymous MAP_SHARED: inherited by forked children
    _BLOCKS.add(block)
    return block


def _in_shared_block(a: np.ndarray) -> bool:
    b = a.base
    while isinstance(b, np.ndarray):
        b = b.base
    return isinstance(b, mmap.mmap) and b in _BLOCKS


def _share(values: dict, names: list[str]) -> dict[str, Any]:
    """Copies of the named arrays in one shared block (LoDTensors keep their LoD)."""
    arrays = {}
    for n in names:
        v = values.get(n)
        a = v.values if isinstance(v, LoDTensor) else v
        if v is not None and not _in_shared_block(a):  # shared by an earlier run: already in place
            arrays[n] = a
    offsets, total = {}, 0
    for n, a in arrays.items():
        offsets[n] = total
        total += -(-a.nbytes // _ALIGN) * _ALIGN
    block = _shared_block(total)
    out = {}
    for n, a in arrays.items():
        view = np.frombuffer(block, a.dtype, a.size, offsets[n]).reshape(a.shape)
        view[...] = a
        v = values[n]
        out[n] = LoDTensor(view, v._lod) if isinstance(v, LoDTensor) else view
    return out


def _die_with(parent: int) -> None:
    """Have the kernel SIGKILL this worker when the parent dies, however it dies (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def _child(runner: Any, tid: int, n: int, feed_iter: Any, prep: Any, conn: Any, parent: int,
           dataset: Any = None) -> None:
    _die_with(parent)
    _limit_blas(n)
    shared = runner.shared
    runner.say = lambda line: conn.send(("say", line))

    def publish(name: str, value: Any, env: dict) -> None:
        """An op replaced a shared persistable: copy it into the shared array."""
        if not runner.share:
            return  # env keeps the worker's own value
        dst = shared[name].values if isinstance(shared[name], LoDTensor) else shared[name]
        src = value.values if isinstance(value, LoDTensor) else value
        if getattr(src, "shape", None) != dst.shape:
            raise InvalidArgumentError(
                f"train_from_dataset: persistable '{name}' changed from shape {list(dst.shape)} to "
                f"{list(getattr(src, 'shape', ()))} during training; worker processes share persistables in "
                f"fixed-size memory")
        dst[...] = src
        env[name] = shared[name]

    try:
        result = runner.work(tid, feed_iter, prep, dict(shared), publish, pick_up=False)
        result["skipped"] = dataset.skip_counts()  # this fork's copy: the parent adds the difference
        msg: tuple = ("ok", result)
    except BaseException as exc:  # noqa: BLE001  (sent to the parent, which raises it)
        runner.stop[0] = 1
        msg = ("error", _portable(exc), traceback.format_exc())
    conn.send(msg)
    conn.close()


def _limit_blas(workers: int) -> None:
    """BLAS threads per worker: the cores shared between the workers (N workers x all-core
    BLAS pools oversubscribe the cores), at most ``FLAGS_paddle_num_threads`` (default 1)."""
    from threadpoolctl import threadpool_limits
    share = max(1, (os.cpu_count() or 1) // workers)
    flag = paddle_num_threads()
    threadpool_limits(share if flag is None else min(share, flag))


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a FleetkitError with its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001  (any exception type may fail to pickle)
        return FleetkitError(f"{type(exc).__name__}: {exc}")


def _collect(runner: Any, procs: list, conns: list) -> list[dict | None]:
    """Every worker's result; relays progress lines; raises the first worker's error."""
    results: list[dict | None] = [None] * len(procs)
    pending = dict(enumerate(conns))
    error: BaseException | None = None
    while pending:
        for conn in wait(list(pending.values()), timeout=1.0):  # a dead child reads as EOF
            tid = conns.index(conn)
            try:
                msg = conn.recv()
            except EOFError:
                procs[tid].join(_REAP_S)
                msg = ("error", FleetkitError(f"train_from_dataset: worker process {tid} (pid {procs[tid].pid}) "
                                              f"exited with code {procs[tid].exitcode} without finishing "
                                              f"(killed, or out of memory?)"), "")
            if msg[0] == "say":
                runner.say(msg[1])
                continue
            del pending[tid]
            if msg[0] == "ok":
                results[tid] = msg[1]
            elif error is None:
                runner.stop[0] = 1
                error = msg[1]
                if msg[2]:
                    error.add_note(f"raised in Hogwild worker process {tid}:\n{msg[2]}")
    if error is not None:
        raise error
    return results


def _reap(procs: list) -> None:
    for proc in procs:
        proc.join(_REAP_S)
        if proc.is_alive():
            proc.kill()
            proc.join(_REAP_S)
