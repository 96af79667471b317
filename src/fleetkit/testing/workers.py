"""Run one function in several real processes, SPMD style, for multi-process tests.

``run_workers(fn, world_size)`` starts ``world_size`` fresh interpreters (the
``spawn`` start method: no forked locks, threads or sockets), calls
``fn(rank, world_size, *args)`` in each, and returns every rank's return value.
It never hangs a test run: there is one hard deadline for the whole group, and
on the first failure (or at the deadline) every child still running is
stack-dumped and killed, and one error reports what every rank was doing.
"""
from __future__ import annotations

import faulthandler
import multiprocessing as mp
import os
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, Union

from .. import env as envmod

__all__ = ["WorkerFailure", "run_workers"]

EnvSpec = Union[None, Mapping[str, "str | None"], Sequence[Mapping[str, "str | None"]],
                Callable[[int], Mapping[str, "str | None"]]]

# How long the other ranks get to finish (and report their own error) after the
# first failure.  Short: it only lets e.g. peers of a crashed rank report the
# PeerFailedError they raise at once, instead of showing up as "killed".
FAILURE_GRACE_S = 1.0
# Time for children to write their faulthandler stack dump before SIGKILL.
DUMP_WAIT_S = 0.3

# os.environ is process-global; children inherit it at exec time, so per-rank
# variables are applied around Process.start() under this lock.
_ENV_LOCK = threading.Lock()


class WorkerFailure(RuntimeError):
    """One or more worker processes failed, exited early or ran past the deadline.

    Attributes:
        reports: rank -> text (traceback, exit status or stack dump) for every
            rank that did not return normally.
        results: rank -> return value for the ranks that did return.
    """

    def __init__(self, message: str, reports: dict[int, str], results: dict[int, Any]):
        super().__init__(message)
        self.reports = reports
        self.results = results


def run_workers(fn: Callable[..., Any], world_size: int, args: Sequence[Any] = (),
                timeout: float = 60.0, env: EnvSpec = None,
                expect_exit: Mapping[int, int | None] | None = None) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes.

    Args:
        fn: a picklable (module-level) function.  Its return value must pickle.
        world_size: number of processes (ranks 0..world_size-1).
        args: extra positional arguments, identical for every rank (picklable).
        timeout: hard deadline in seconds for the whole group.
        env: extra environment variables for the children: one mapping for all
            ranks, a sequence with one mapping per rank, or ``rank -> mapping``.
            A value of None removes the variable.  ``OMP_NUM_THREADS`` defaults
            to cores / world_size so BLAS threads do not oversubscribe.
        expect_exit: ranks allowed to exit without returning, e.g. ``{1: 17}``
            for a test that kills rank 1 with ``os._exit(17)``; None as the code
            accepts any.  Their result is None.

    Returns:
        The return values, indexed by rank.

    Raises:
        WorkerFailure: a rank raised, exited unexpectedly or the deadline
            passed; the message holds every rank's traceback or stack dump.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    expect_exit = dict(expect_exit or {})
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="fk_workers_") as tmp:
        procs, conns = [], []
        try:
            for rank in range(world_size):
                reader, writer = ctx.Pipe(duplex=False)
                dump = os.path.join(tmp, f"stack.{rank}")
                proc = ctx.Process(target=_child_main, name=f"fleetkit-worker-{rank}",
                                   args=(fn, rank, world_size, tuple(args), writer, dump))
                _start_with_env(proc, _env_for(env, rank, world_size))
                writer.close()  # the parent keeps only the read end: EOF when the child dies
                procs.append(proc)
                conns.append(reader)
            return _supervise(procs, conns, tmp, timeout, expect_exit)
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
                proc.join(5)
            for conn in conns:
                conn.close()


def _env_for(env: EnvSpec, rank: int, world_size: int) -> dict[str, str | None]:
    if env is None:
        extra: Mapping[str, str | None] = {}
    elif callable(env):
        extra = env(rank)
    elif isinstance(env, Mapping):
        extra = env
    else:
        if len(env) != world_size:
            raise ValueError(f"env has {len(env)} entries for {world_size} ranks")
        extra = env[rank]
    out: dict[str, str | None] = {}
    if not envmod.omp_threads_set():
        out[envmod.OMP_NUM_THREADS] = str(max(1, (os.cpu_count() or 1) // world_size))
    out.update(extra)
    return out


def _start_with_env(proc: mp.process.BaseProcess, extra: Mapping[str, str | None]) -> None:
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in extra}   # to restore (allowed in test_env_reads.py)
        try:
            for key, value in extra.items():
                _set_env(key, value)
            proc.start()
        finally:
            for key, value in saved.items():
                _set_env(key, value)


def _set_env(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = str(value)


def _child_main(fn: Callable[..., Any], rank: int, world_size: int, args: tuple,
                conn: Connection, dump_path: str) -> None:
    # The parent sends SIGUSR1 before killing a child so the report shows where
    # every thread of a hung rank was stuck.
    dump = open(dump_path, "w")
    faulthandler.enable(file=dump, all_threads=True)
    faulthandler.register(signal.SIGUSR1, file=dump, all_threads=True)
    try:
        result = fn(rank, world_size, *args)
        message: tuple[str, Any] = ("ok", result)
    except BaseException:  # noqa: BLE001 - reported to the parent, then exit 1
        message = ("error", traceback.format_exc())
    try:
        conn.send(message)
    except Exception:  # noqa: BLE001 - e.g. an unpicklable result
        conn.send(("error", "could not send the result to the parent:\n" + traceback.format_exc()))
    conn.close()
    if message[0] == "error":
        os._exit(1)  # skip atexit handlers that could block (threads, sockets)


def _supervise(procs: list, conns: list[Connection], tmp: str, timeout: float,
               expect_exit: dict[int, int | None]) -> list[Any]:
    deadline = time.monotonic() + timeout
    results: dict[int, Any] = {}
    reports: dict[int, str] = {}
    pending = set(range(len(procs)))
    first_failure_at: float | None = None
    while pending:
        now = time.monotonic()
        limit = deadline if first_failure_at is None else min(deadline, first_failure_at + FAILURE_GRACE_S)
        if now >= limit:
            break
        ready = wait([conns[r] for r in pending] + [procs[r].sentinel for r in pending], limit - now)
        for rank in sorted(pending):
            if conns[rank] not in ready and procs[rank].sentinel not in ready:
                continue
            done = _collect(rank, procs[rank], conns[rank], results, reports, expect_exit)
            if done:
                pending.discard(rank)
                if rank in reports and first_failure_at is None:
                    first_failure_at = time.monotonic()
    if pending:
        why = "deadline of %.1f s passed" % timeout if first_failure_at is None else "killed after another rank failed"
        _dump_and_kill([procs[r] for r in pending])
        for rank in pending:
            reports[rank] = f"{why}; its stacks:\n{_read(os.path.join(tmp, f'stack.{rank}'))}"
    if reports:
        raise WorkerFailure(_format(reports, len(procs), timeout), reports, results)
    return [results.get(rank) for rank in range(len(procs))]


def _collect(rank: int, proc: mp.process.BaseProcess, conn: Connection, results: dict,
             reports: dict, expect_exit: dict[int, int | None]) -> bool:
    """Take what a ready rank produced; True when that rank is finished."""
    if conn.poll():
        try:
            status, payload = conn.recv()
        except EOFError:
            status, payload = "eof", None
        if status == "ok":
            results[rank] = payload
            return True
        if status == "error":
            reports[rank] = payload
            return True
    if proc.is_alive():
        # EOF on the pipe but the process still runs (it closed the pipe itself?):
        # wait for the exit code instead of spinning.
        proc.join(1)
        if proc.is_alive():
            return False
    proc.join()
    code = proc.exitcode
    if rank in expect_exit and expect_exit[rank] in (None, code):
        results[rank] = None
    else:
        reports[rank] = f"exited with code {code} without returning a result"
    return True


def _dump_and_kill(procs: list) -> None:
    for proc in procs:
        if proc.is_alive() and proc.pid:
            try:
                os.kill(proc.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass
    time.sleep(DUMP_WAIT_S)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
        proc.join(5)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip() or "(no stack dump)"
    except OSError:
        return "(no stack dump)"


def _format(reports: dict[int, str], world_size: int, timeout: float) -> str:
    head = f"{len(reports)} of {world_size} worker(s) failed (timeout {timeout:.1f} s)"
    parts = [head] + [f"--- rank {rank}:\n{text}" for rank, text in sorted(reports.items())]
    return "\n".join(parts)
