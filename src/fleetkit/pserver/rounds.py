"""Sync-mode round bookkeeping of one pserver (transport-free, thread-safe).

A round collects each live trainer's gradients; a trainer's BATCH_BARRIER says it has
sent all of them.  When every live trainer has sent its barrier the gradients are
averaged (sum, then 1/n with n = trainers that sent that gradient; SelectedRows rows
are concatenated and their values scaled) and ``apply`` runs once.  Until then the
trainer's gets (and FETCH_BARRIER) wait in ``wait_applied``.

Why no explicit fetch phase is needed: a trainer sends the next round's gradients
only after its gets returned, and those return only after this round's apply, so
every gradient that arrives before an apply belongs to that apply's round.

``AppliedSends`` is the async-mode counterpart: it recognises a retried gradient send by
its number, so that the send is applied once.

A round whose barriers are not complete ``barrier_timeout`` seconds after its first
barrier fails: every trainer that is waiting (or will next ask) gets a
BarrierTimeoutError naming the missing trainer ids, the round's gradients are
dropped, and the pserver goes on serving.  A trainer's COMPLETE removes it from the
live set, which may complete the round.  A trainer lost without COMPLETE (``lose``: its
heartbeat stream dropped) ends sync training on this pserver: every waiting trainer, and
every later call, gets a BarrierTimeoutError naming the lost trainer at once.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np

from ..core.scope import LoDTensor, SelectedRows
from ..errors import BarrierTimeoutError, InvalidArgumentError, PServerError

__all__ = ["AppliedSends", "SyncRounds", "average"]


def average(values: list[Any]) -> Any:
    """Mean of one gradient over the trainers that sent it (see module docstring)."""
    n = len(values)
    first = values[0]
    if isinstance(first, SelectedRows):
        rows = np.concatenate([np.asarray(v.rows, dtype=np.int64) for v in values])
        vals = np.concatenate([np.asarray(v.values) for v in values], axis=0)
        if n > 1:
            vals *= np.asarray(1.0 / n, dtype=vals.dtype)
        return SelectedRows(rows, vals, first.height)
    arrays = [np.asarray(v.values if isinstance(v, LoDTensor) else v) for v in values]
    if n == 1:
        return arrays[0]
    acc = arrays[0].copy()
    for a in arrays[1:]:
        if a.shape != acc.shape or a.dtype != acc.dtype:
            raise InvalidArgumentError(f"trainers sent different shapes/dtypes for one gradient: "
                                       f"{acc.shape} {acc.dtype} vs {a.shape} {a.dtype}")
        acc += a
    acc *= np.asarray(1.0 / n, dtype=acc.dtype)
    return acc


class SyncRounds:
    """Barrier and averaging state for ``num_trainers`` trainers."""

    def __init__(self, num_trainers: int, barrier_timeout: float,
                 apply: Callable[[dict[str, Any]], None], endpoint: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.num_trainers = num_trainers
        self.barrier_timeout = float(barrier_timeout)
        self._apply = apply
        self._endpoint = endpoint
        self._clock = clock
        self._cond = threading.Condition()
        self.live: set[int] = set(range(num_trainers))
        self._completed: set[int] = set()
        self._grads: dict[int, dict[str, Any]] = {}
        self._barrier: set[int] = set()
        self._pending: set[int] = set()       # barrier sent, round not applied yet
        self._failed: dict[int, Exception] = {}
        self._seen_round: dict[int, int] = {}
        self._started: float | None = None
        self._stopping = False
        self._broken: BarrierTimeoutError | None = None   # a trainer was lost: no round can complete
        self.rounds_applied = 0
        self.all_complete = threading.Event()

    def _where(self) -> str:
        return f"pserver {self._endpoint}: " if self._endpoint else ""

    def add_grad(self, trainer: int, name: str, value: Any, round_: int = 0) -> bool:
        """Store a trainer's gradient for its current round; False if it was stale (a
        retried message of the round the trainer's last barrier closed).  A gradient
        sent twice in one round replaces the first (retries are idempotent).  A round
        number further back means the trainer process restarted: accepted."""
        with self._cond:
            self._raise_if_broken()
            if trainer not in self.live:
                raise PServerError(f"{self._where()}trainer {trainer} sent gradient '{name}' "
                                   f"after COMPLETE")
            seen = self._seen_round.get(trainer, 0)
            if round_ == seen - 1:
                return False      # a retry from the round this trainer's barrier closed
            if round_ < seen - 1:
                self._seen_round[trainer] = round_   # the trainer restarted: its count began anew
            self._grads.setdefault(trainer, {})[name] = value
            return True

    def batch_barrier(self, trainer: int, round_: int = 0) -> None:
        """Record a trainer's barrier; the last one runs ``apply`` in this thread."""
        with self._cond:
            self._raise_if_broken()
            if trainer not in self.live:
                raise PServerError(f"{self._where()}trainer {trainer} sent BATCH_BARRIER after COMPLETE")
            self._seen_round[trainer] = round_ + 1
            self._failed.pop(trainer, None)
            self._barrier.add(trainer)
            self._pending.add(trainer)
            if self._started is None:
                self._started = self._clock()
            job = self._take_round_if_complete()
        if job is not None:
            self._run(*job)

    def complete(self, trainer: int) -> None:
        """A trainer finished: stop waiting for it (may complete the current round)."""
        with self._cond:
            self.live.discard(trainer)
            self._completed.add(trainer)
            self._grads.pop(trainer, None)
            self._barrier.discard(trainer)
            self._pending.discard(trainer)
            job = self._take_round_if_complete()
            if not self.live:
                self.all_complete.set()
            self._cond.notify_all()
        if job is not None:
            self._run(*job)

    def _take_round_if_complete(self) -> tuple[dict[str, Any], set[int]] | None:
        if not self._barrier or not self.live <= self._barrier:
            return None
        by_name: dict[str, list[Any]] = {}
        for t in sorted(self._grads):
            for name, value in self._grads[t].items():
                by_name.setdefault(name, []).append(value)
        waiting = set(self._pending)
        self._grads, self._barrier, self._started = {}, set(), None
        return by_name, waiting

    def _run(self, by_name: dict[str, list[Any]], waiting: set[int]) -> None:
        error: Exception | None = None
        try:
            self._apply({name: average(vals) for name, vals in by_name.items()})
        except Exception as e:  # noqa: BLE001 - reported to every waiting trainer
            error = PServerError(f"{self._where()}applying round {self.rounds_applied + 1} failed: "
                                 f"{type(e).__name__}: {e}")
        with self._cond:
            self.rounds_applied += 1
            for t in waiting:
                self._pending.discard(t)
                if error is not None:
                    self._failed[t] = error
            self._cond.notify_all()
        # the failure reaches every trainer of the round (this one included) through
        # wait_applied, not through this barrier call

    def wait_applied(self, trainer: int) -> None:
        """Block until the trainer's last barrier has been applied (immediately if it
        has none pending); raises the round's failure if it failed."""
        with self._cond:
            while True:
                if trainer in self._failed:
                    raise self._failed.pop(trainer)
                self._raise_if_broken()
                if trainer not in self._pending:
                    return
                if self._stopping:
                    raise PServerError(f"{self._where()}shutting down")
                started = self._started if self._started is not None else self._clock()
                remaining = started + self.barrier_timeout - self._clock()
                if remaining <= 0:
                    self._fail_round()
                    continue
                self._cond.wait(min(remaining, 1.0))

    def _fail_round(self) -> None:
        missing = tuple(sorted(self.live - self._barrier))
        err = BarrierTimeoutError(
            f"{self._where()}sync round {self.rounds_applied + 1} failed: trainer(s) "
            f"{', '.join(map(str, missing))} did not send BATCH_BARRIER within "
            f"{self.barrier_timeout:g} s (trainers {sorted(self._barrier)} did); did they die?",
            endpoint=self._endpoint or None, missing_trainers=missing)
        for t in self._pending:
            self._failed[t] = err
        self._pending.clear()
        self._grads, self._barrier, self._started = {}, set(), None
        self._cond.notify_all()

    def lose(self, trainer: int, why: str) -> None:
        """A trainer died without COMPLETE: fail the round now and every call after it."""
        with self._cond:
            if trainer not in self.live:
                return
            self.live.discard(trainer)
            lost = tuple(sorted(set(range(self.num_trainers)) - self.live - self._completed))
            self._broken = BarrierTimeoutError(
                f"{self._where()}sync training cannot go on: trainer(s) {', '.join(map(str, lost))} "
                f"lost without COMPLETE (trainer {trainer}: {why}); sync round "
                f"{self.rounds_applied + 1} will never complete",
                endpoint=self._endpoint or None, missing_trainers=lost)
            self._pending.clear()
            self._grads, self._barrier, self._started = {}, set(), None
            self._cond.notify_all()

    def _raise_if_broken(self) -> None:
        if self._broken is not None:
            raise self._broken

    def stop(self) -> None:
        """Wake every waiter with an error (server shutdown)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()


class AppliedSends:
    """Async mode: the numbers (header ``seq``) of the gradient sends applied recently, per
    trainer, so that a send repeated by a client retry (its reply was lost, not the
    request) is applied once.  Only the last ``keep`` numbers per trainer are remembered:
    a retry comes within seconds of its send."""

    def __init__(self, keep: int = 4096) -> None:
        self.keep = keep
        self._seen: dict[int, dict[int, None]] = {}   # trainer -> numbers, oldest first
        self._lock = threading.Lock()

    def claim(self, trainer: int, seq: int) -> bool:
        """Record send ``seq`` of ``trainer`` as applied; False if it already was."""
        with self._lock:
            seen = self._seen.setdefault(trainer, {})
            if seq in seen:
                return False
            seen[seq] = None
            if len(seen) > self.keep:
                del seen[next(iter(seen))]
            return True

    def release(self, trainer: int, seq: int) -> None:
        """Forget ``seq`` (its apply failed, so a retry of it must apply)."""
        with self._lock:
            self._seen.get(trainer, {}).pop(seq, None)
