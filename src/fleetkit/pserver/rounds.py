"""Sync-mode round bookkeeping of one pserver (transport-free, thread-safe).

A round collects each live trainer's gradients; a trainer's BATCH_BARRIER says it has
sent all of them.  When every live trainer has sent its barrier the gradients are
averaged (sum, then 1/n with n = trainers that sent that gradient; SelectedRows rows
are concatenated and their values scaled) and ``apply`` runs once.  Until then the
trainer's gets (and FETCH_BARRIER) wait in ``wait_applied``.

Every gradient and barrier carries its sender's round number (the count of barriers
it has sent to this pserver), so each lands in its own round; no fetch phase is needed.

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
from collections import OrderedDict
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


class _Round:
    """One numbered sync round: gradients per trainer, the trainers whose barrier came."""
    __slots__ = ("grads", "barrier", "started")

    def __init__(self) -> None:
        self.grads: dict[int, dict[str, Any]] = {}
        self.barrier: set[int] = set()
        self.started: float | None = None    # first barrier (the timeout counts from it)


class SyncRounds:
    """Barrier and averaging state for ``num_trainers`` trainers.

    Rounds are numbered by the trainers' own barrier counts (header ``round``), so a
    trainer can never be paired with another trainer's different round.  Round k is
    applied once every live trainer has sent its barrier for k or shown it is past k
    (a later barrier).  Why "past" counts: a pserver restarted between a trainer's
    barrier and its gets has lost that barrier, and the trainer, whose gets the new
    process answered at once, goes on to k + 1; the other trainers still send round k,
    which must not be matched with that trainer's k + 1, or the trainers would stay a
    round apart until one of them waits for a barrier that never comes.  A trainer
    whose count goes back started again: it joins the round being collected."""

    def __init__(self, num_trainers: int, barrier_timeout: float,
                 apply: Callable[[dict[str, Any]], None], endpoint: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.num_trainers = num_trainers
        self.barrier_timeout = float(barrier_timeout)
        self._apply = apply
        self._endpoint = endpoint
        self._clock = clock
        self._cond = threading.Condition()
        self._apply_lock = threading.Lock()     # rounds apply one at a time, in number order
        self.live: set[int] = set(range(num_trainers))
        self._completed: set[int] = set()
        self._open: dict[int, _Round] = {}      # round number -> not applied yet
        self._sent: dict[int, int] = {}         # trainer -> its count in its last barrier
        self._offset: dict[int, int] = {}       # trainer -> added to its count (it restarted)
        self._at: dict[int, int] = {}           # trainer -> round of its last barrier
        self._pending: dict[int, int] = {}      # trainer -> round its gets wait for
        self._failed: dict[int, Exception] = {}
        self._stopping = False
        self._broken: BarrierTimeoutError | None = None   # a trainer was lost: no round can complete
        self.rounds_applied = 0
        self.all_complete = threading.Event()

    def _where(self) -> str:
        return f"pserver {self._endpoint}: " if self._endpoint else ""

    def _number(self, trainer: int, count: int) -> int:
        """The round a trainer's count names; a count below its last barrier's means the
        trainer process restarted, and it joins the round being collected."""
        last = self._sent.get(trainer)
        if last is not None and count < last:
            joins = min(self._open) if self._open else max(self._at.values(), default=-1) + 1
            self._offset[trainer] = joins - count
            del self._sent[trainer]
            self._at.pop(trainer, None)
            self._pending.pop(trainer, None)
        return count + self._offset.get(trainer, 0)

    def _check_sender(self, trainer: int, what: str) -> None:
        self._raise_if_broken()
        if trainer not in self.live:
            raise PServerError(f"{self._where()}trainer {trainer} sent {what} after COMPLETE")

    def add_grad(self, trainer: int, name: str, value: Any, round_: int = 0) -> bool:
        """Store a trainer's gradient for its round; False if it was stale (a retried
        message of a round whose barrier it sent already).  A gradient sent twice in one
        round replaces the first (retries are idempotent)."""
        with self._cond:
            self._check_sender(trainer, f"gradient '{name}'")
            k = self._number(trainer, round_)
            if k <= self._at.get(trainer, -1):
                return False
            self._open.setdefault(k, _Round()).grads.setdefault(trainer, {})[name] = value
            return True

    def batch_barrier(self, trainer: int, round_: int = 0) -> None:
        """Record a trainer's barrier (a repeated one is ignored); the rounds it makes
        complete are applied in this thread."""
        with self._cond:
            self._check_sender(trainer, "BATCH_BARRIER")
            k = self._number(trainer, round_)
            if k <= self._at.get(trainer, -1):
                return
            self._sent[trainer], self._at[trainer], self._pending[trainer] = round_, k, k
            self._failed.pop(trainer, None)
            rnd = self._open.setdefault(k, _Round())
            rnd.barrier.add(trainer)
            if rnd.started is None:
                rnd.started = self._clock()
        self._apply_complete_rounds()

    def complete(self, trainer: int) -> None:
        """A trainer finished: stop waiting for it (may complete the open rounds)."""
        with self._cond:
            self.live.discard(trainer)
            self._completed.add(trainer)
            self._pending.pop(trainer, None)
            for k, rnd in list(self._open.items()):
                rnd.grads.pop(trainer, None)
                rnd.barrier.discard(trainer)
                if not rnd.grads and not rnd.barrier:
                    del self._open[k]
            if not self.live:
                self.all_complete.set()
            self._cond.notify_all()
        self._apply_complete_rounds()

    def _apply_complete_rounds(self) -> None:
        with self._apply_lock:
            while True:
                with self._cond:
                    job = self._take_complete_round()
                if job is None:
                    return
                self._run(*job)

    def _take_complete_round(self) -> tuple[int, dict[str, list[Any]]] | None:
        if not self._open or not self.live:
            return None
        k = min(self._open)
        if any(self._at.get(t, -1) < k for t in self.live):
            return None
        rnd = self._open.pop(k)
        by_name: dict[str, list[Any]] = {}
        for t in sorted(rnd.grads):
            for name, value in rnd.grads[t].items():
                by_name.setdefault(name, []).append(value)
        return k, by_name

    def _run(self, k: int, by_name: dict[str, list[Any]]) -> None:
        error: Exception | None = None
        try:
            self._apply({name: average(vals) for name, vals in by_name.items()})
        except Exception as e:  # noqa: BLE001 - reported to every waiting trainer
            error = PServerError(f"{self._where()}applying round {self.rounds_applied + 1} failed: "
                                 f"{type(e).__name__}: {e}")
        with self._cond:
            self.rounds_applied += 1
            for t in [t for t, r in self._pending.items() if r == k]:
                del self._pending[t]
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
                k = self._pending.get(trainer)
                if k is None:
                    return
                if self._stopping:
                    raise PServerError(f"{self._where()}shutting down")
                blocking = [r for r in self._open if r <= k]
                if not blocking:        # being applied now
                    self._cond.wait(1.0)
                    continue
                started = min((self._open[r].started for r in blocking if self._open[r].started is not None),
                              default=self._clock())
                if started + self.barrier_timeout - self._clock() <= 0:
                    self._fail_round(min(blocking))
                    continue
                self._cond.wait(min(started + self.barrier_timeout - self._clock(), 1.0))

    def _fail_round(self, k: int) -> None:
        rnd = self._open.pop(k)
        missing = tuple(sorted(t for t in self.live if self._at.get(t, -1) < k))
        err = BarrierTimeoutError(
            f"{self._where()}sync round {k + 1} failed: trainer(s) "
            f"{', '.join(map(str, missing))} did not send BATCH_BARRIER within "
            f"{self.barrier_timeout:g} s (trainers {sorted(rnd.barrier)} did); did they die?",
            endpoint=self._endpoint or None, missing_trainers=missing)
        for t in [t for t, r in self._pending.items() if r == k]:
            self._failed[t] = err
            del self._pending[t]
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
            self._open.clear()
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
        # trainer -> numbers, oldest first.  An OrderedDict: a plain dict whose oldest key is
        # deleted on every claim makes next(iter(d)) skip the deleted slots (~6 us a send)
        self._seen: dict[int, OrderedDict[int, None]] = {}
        self._lock = threading.Lock()

    def claim(self, trainer: int, seq: int) -> bool:
        """Record send ``seq`` of ``trainer`` as applied; False if it already was."""
        with self._lock:
            seen = self._seen.get(trainer)
            if seen is None:
                seen = self._seen[trainer] = OrderedDict()
            if seq in seen:
                return False
            seen[seq] = None
            if len(seen) > self.keep:
                seen.popitem(last=False)
            return True

    def release(self, trainer: int, seq: int) -> None:
        """Forget ``seq`` (its apply failed, so a retry of it must apply)."""
        with self._lock:
            self._seen.get(trainer, {}).pop(seq, None)
