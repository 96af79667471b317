"""Who is alive: a pserver's trainers (heartbeats) and the pserver itself (incarnation).

Trainers: every client keeps one ``Heartbeat`` stream open to each pserver it talks to
and sends a beat on it every ``ClientOptions.heartbeat_s`` (default 1 s).  The pserver
(``TrainerLiveness``) declares a trainer lost when its stream drops without COMPLETE
(a killed process: its kernel closes the connection, noticed at once) or when neither a
beat nor a call came for ``ServerOptions.heartbeat_timeout_s`` (default 10 s: a vanished
host, or a trainer that died before its stream to a restarted pserver reopened).  Then the
failure rules apply: a sync round fails at once naming the lost trainer, and a pserver
whose trainers are all finished or lost exits (non-zero if any was lost).

The pserver: ``Incarnation`` is a random id drawn at each start, with the count of
updates applied and where the state came from (``resumed``: the update count of the
checkpoint loaded at start, ``FRESH`` for freshly initialized parameters, ``RESEEDED``
once trainer 0 re-seeded them).  Every reply carries it, so a client notices a restarted
pserver on its next reply (``restarts.py``).
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import grpc

from ..errors import PServerError
from . import codec, rpc

__all__ = ["FRESH", "RESEEDED", "Heartbeats", "Incarnation", "LivenessMixin", "TrainerLiveness", "call_incarnation",
           "parse_incarnation"]
log = logging.getLogger(__name__)

FRESH, RESEEDED = -1, -2


@dataclass
class Incarnation:
    """This pserver's identity as replies carry it: (id, updates, resumed)."""

    id: int = field(default_factory=lambda: secrets.randbits(63) | 1)
    updates: int = 0          #: sync rounds or async gradients applied, checkpoints included
    resumed: int = FRESH      #: update count of the checkpoint loaded at start, or FRESH / RESEEDED

    def info(self) -> tuple[int, int, int]:
        return self.id, self.updates, self.resumed

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((rpc.INCARNATION_KEY, f"{self.id:x},{self.updates},{self.resumed}"),)


def parse_incarnation(value: Any) -> tuple[int, int, int] | None:
    """(id, updates, resumed) from the INCARNATION_KEY metadata value; None if malformed."""
    try:
        a, b, c = str(value).split(",")
        return int(a, 16), int(b), int(c)
    except ValueError:
        return None


def call_incarnation(call: Any) -> tuple[int, int, int] | None:
    """The (incarnation, updates, resumed) a gRPC reply or failed call carries, if any."""
    try:
        md = call.trailing_metadata() or ()
    except Exception:  # noqa: BLE001 - not every RpcError carries metadata
        return None
    for key, value in md:
        if key == rpc.INCARNATION_KEY:
            return parse_incarnation(value)
    return None


class TrainerLiveness:
    """Pserver side: heartbeat streams and last beats per trainer (thread-safe).

    ``on_lost(trainer, why)`` runs (in the stream's or the monitor's thread) once per
    loss of a trainer that has not sent COMPLETE."""

    def __init__(self, timeout_s: float, on_lost: Callable[[int, str], None], num_trainers: int | None = None,
                 first_contact_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s, self.num_trainers = float(timeout_s), num_trainers
        self.first_contact_s = first_contact_s   # a trainer never heard from within this is lost
        self._heard: set[int] = set()
        self._started: float | None = None
        self._on_lost, self._clock = on_lost, clock
        self._lock = threading.Lock()
        self._last: dict[int, float] = {}       # trainer -> last beat (watched trainers only)
        self._resolution = min(0.05, self.timeout_s / 100)   # beats closer than this are one (beat)
        self._stream: dict[int, int] = {}       # trainer -> id of its newest stream
        self._next = 0
        self.completed: set[int] = set()
        self.lost: dict[int, str] = {}          #: trainer -> why it was declared lost
        self._lost_at: dict[int, float] = {}

    def opened(self, trainer: int) -> int:
        """A heartbeat stream of ``trainer`` opened; returns its id (for ``closed``)."""
        with self._lock:
            self._next += 1
            self._heard.add(trainer)
            self._stream[trainer] = self._next
            self._last[trainer] = self._clock()
            self.lost.pop(trainer, None)
            return self._next

    def beat(self, trainer: int) -> None:
        """Evidence that ``trainer`` is alive: a heartbeat, or any call it made.  A trainer
        heard from is watched from then on (until COMPLETE), so one that dies before its
        heartbeat stream (re)opened is still lost after the timeout.

        Every call of a trainer beats, so a beat within ``_resolution`` of the last one is
        dropped without taking the lock: a watched trainer (in ``_last``) is heard, not
        completed and not lost (each of those pops ``_last``), so only the time would
        change, by less than a hundredth of the timeout."""
        last = self._last.get(trainer)
        if last is not None and self._clock() - last < self._resolution:
            return
        with self._lock:
            self._heard.add(trainer)
            if trainer not in self.completed:
                self._last[trainer] = self._clock()
                self.lost.pop(trainer, None)   # async: a restarted trainer is back

    def complete(self, trainer: int) -> None:
        """COMPLETE: the trainer is done; its stream closing is no loss."""
        with self._lock:
            self.completed.add(trainer)
            self._last.pop(trainer, None)

    def closed(self, trainer: int, stream: int, why: str) -> None:
        """A stream ended without its trainer's COMPLETE (if it is the trainer's newest)."""
        with self._lock:
            if self._stream.get(trainer) != stream or trainer in self.completed:
                return
            self._stream.pop(trainer, None)
            self._last.pop(trainer, None)
            first = trainer not in self.lost
            self._mark_lost(trainer, why)
        if first:
            self._on_lost(trainer, why)

    def lost_for(self, seconds: float) -> set[int]:
        """The trainers lost at least ``seconds`` ago."""
        now = self._clock()
        with self._lock:
            return {t for t in self.lost if now - self._lost_at.get(t, now) >= seconds}

    def _mark_lost(self, trainer: int, why: str) -> None:
        self.lost[trainer] = why
        self._lost_at[trainer] = self._clock()

    def start(self) -> None:
        """The pserver started serving: the first-contact clock starts."""
        self._started = self._clock()

    def check(self) -> None:
        """Declare lost the watched trainers silent for longer than the timeout, and those
        never heard from within ``first_contact_s`` of the start."""
        now = self._clock()
        with self._lock:
            silent = [t for t, last in self._last.items() if now - last > self.timeout_s]
            for t in silent:
                self._last.pop(t, None)
                self._stream.pop(t, None)
                self._mark_lost(t, f"no heartbeat for {self.timeout_s:g} s")
            started = self._started
            if self.first_contact_s is not None and self.num_trainers and started is not None \
                    and now - started > self.first_contact_s:
                for t in range(self.num_trainers):
                    if t not in self._heard and t not in self.completed and t not in self.lost:
                        silent.append(t)
                        self._mark_lost(t, f"never contacted this pserver within {self.first_contact_s:g} s "
                                           f"of its start")
        for t in silent:
            self._on_lost(t, self.lost[t])

    def serve_stream(self, requests: Iterator[Any], context: grpc.ServicerContext,
                     stopping: Callable[[], bool]) -> bytes:
        """The body of the Heartbeat method: beats until the client ends the stream
        (after COMPLETE) or its connection drops."""
        trainer, stream = None, 0
        try:
            for raw in requests:
                t = codec.from_bytes(raw).header.trainer_id
                if self.num_trainers is not None and not 0 <= t < self.num_trainers:
                    return b""    # not one of this pserver's trainers: ignored
                if trainer is None:
                    trainer, stream = t, self.opened(t)
                self.beat(trainer)
        except Exception as e:  # noqa: BLE001 - the connection dropped (RpcError) or junk arrived
            if trainer is not None and not stopping():
                self.closed(trainer, stream, f"its connection dropped without COMPLETE "
                                             f"({type(e).__name__})")
            return b""
        if trainer is not None and not stopping():
            self.closed(trainer, stream, "its heartbeat stream ended without COMPLETE (the process exited "
                                         "or closed its client)")
        return b""


class Heartbeats:
    """Client side: one heartbeat stream per pserver endpoint, reopened after a failure
    (a restarted pserver), ended cleanly by ``stop`` (after COMPLETE)."""

    def __init__(self, trainer_id: int, interval_s: float, metadata: tuple,
                 stub: Callable[[str], Any]) -> None:
        self.trainer_id, self.interval_s = trainer_id, float(interval_s)
        self._metadata, self._stub = metadata, stub
        self._stop: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, endpoint: str) -> None:
        """Keep a stream open to ``endpoint`` (idempotent)."""
        if self.interval_s <= 0:
            return
        with self._lock:
            if endpoint in self._stop:
                return
            stop = self._stop[endpoint] = threading.Event()
        self._open(endpoint, stop)

    def _open(self, endpoint: str, stop: threading.Event) -> None:
        beat = codec.to_bytes(codec.control(rpc.HEARTBEAT, self.trainer_id))

        def beats() -> Iterator[bytes]:
            while not stop.is_set():
                yield beat
                stop.wait(self.interval_s)
        try:
            fut = self._stub(endpoint).future(beats(), metadata=self._metadata)
        except (ValueError, RuntimeError):   # the channel was closed meanwhile
            return
        fut.add_done_callback(lambda _f: self._reopen_later(endpoint, stop))

    def _reopen_later(self, endpoint: str, stop: threading.Event) -> None:
        if stop.is_set():
            return
        timer = threading.Timer(min(self.interval_s, 1.0), lambda: stop.is_set() or self._open(endpoint, stop))
        timer.daemon = True
        timer.start()

    def stop(self, endpoints: Any = None) -> None:
        """End the streams (to ``endpoints``, default all): the pserver sees a clean close."""
        with self._lock:
            eps = list(self._stop) if endpoints is None else [e for e in endpoints if e in self._stop]
            events = [self._stop.pop(e) for e in eps]
        for ev in events:
            ev.set()


class LivenessMixin:
    """The liveness methods of ``ParameterServer`` (which provides the attributes)."""

    endpoint: str
    num_trainers: int
    options: Any
    alive: TrainerLiveness
    rounds: Any
    _asm: Any
    _asm_lock: threading.Lock
    _stop_flag: threading.Event

    stop: Callable[..., None]
    def wait(self, timeout: float | None = None) -> bool:
        """Block until ``stop()`` or (if ``exit_when_complete``) every trainer sent COMPLETE
        or was lost; True when that happened, False on timeout.  Raises PServerError naming
        the lost trainers if any was (the pserver process then exits non-zero)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop_flag.is_set():
            if self.options.exit_when_complete and self._all_done():
                self.stop()
                lost = dict(self.alive.lost)
                if lost:
                    raise PServerError(f"pserver {self.endpoint}: exiting, trainer(s) "
                                       f"{', '.join(map(str, sorted(lost)))} lost without COMPLETE ("
                                       + "; ".join(f"{t}: {w}" for t, w in sorted(lost.items())) + ")",
                                       endpoint=self.endpoint)
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._stop_flag.wait(0.2 if left is None else min(0.2, left))
        return True

    def _all_done(self) -> bool:
        """Every trainer sent COMPLETE or is lost (async: lost for ``rejoin_grace_s``, so a
        trainer that a supervisor restarts can come back before the pserver gives up)."""
        grace = 0.0 if self.rounds is not None else float(self.options.rejoin_grace_s)
        done = self.alive.lost_for(grace) | self.alive.completed
        return done >= set(range(self.num_trainers))

    def _watch_trainers(self) -> None:
        while not self._stop_flag.wait(0.5):
            self.alive.check()
            self._asm_expire()

    def _asm_expire(self) -> None:
        with self._asm_lock:
            for t, name, _, _ in self._asm.expire():
                log.warning("pserver %s: dropped the unfinished chunked value '%s' of trainer %d (no chunk "
                            "for %g s)", self.endpoint, name, t, self.options.reassembly_timeout_s)

    def _trainer_lost(self, trainer: int, why: str) -> None:
        """A trainer died (no COMPLETE): sync rounds fail naming it; see ``wait``."""
        log.error("pserver %s: trainer %d is lost: %s", self.endpoint, trainer, why)
        with self._asm_lock:
            self._asm.discard(trainer)
        if self.rounds is not None:
            self.rounds.lose(trainer, why)
