"""What ``fleetkit launch`` says: the start banner, one line per process end, which
failure was the cause, and the closing summary.

Choosing the cause: when one rank raises, its peers learn it within a second
(a dropped connection) and fail too, often *before* the crashing rank has
finished exiting (its interpreter is still tearing down threads and sockets).
So the first exit in time is not always the cause.  A failure whose last
exception only reports another process's failure (``PeerFailedError``, a
pserver that went away, a barrier some trainer never reached) is a
consequence; the cause is the earliest failure that is not one.
"""
from __future__ import annotations

import collections
import json
import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

__all__ = ["CONSEQUENCE_ERRORS", "METRICS_PREFIX", "Outcome", "Progress", "banner", "parse_metrics",
           "pick_cause", "report_metrics", "summary"]

#: a child's output line starting with this carries a JSON object of training metrics
METRICS_PREFIX = "@fleetkit-metrics "
#: largest metrics line the launcher parses (a child's output must not make it allocate)
MAX_METRICS_LINE = 4096

#: exceptions that say "another process failed" rather than what went wrong
CONSEQUENCE_ERRORS = frozenset({
    "PeerFailedError", "PServerUnavailableError", "BarrierTimeoutError", "CollectiveTimeoutError",
    "ServerNotReadyError", "BrokenPipeError", "ConnectionResetError",
})
#: lines of a failed process's output repeated in the launcher's error
TAIL_LINES = 20
_EXC_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit))\b(?::|$)")


@dataclass
class Outcome:
    """A process's life as the launcher saw it."""
    name: str
    role: str                            # PSERVER / TRAINER
    endpoint: str
    pid: int
    log: str | None
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    code: int | None = None
    stopped: bool = False                # the launcher stopped it (not its own exit)
    restarts: int = 0
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    traceback_at: float | None = None    # when its output first showed "Traceback"

    def see(self, line: str) -> None:
        """Record one output line (kept for the error report)."""
        self.tail.append(line)
        if self.traceback_at is None and line.startswith("Traceback (most recent call last)"):
            self.traceback_at = time.monotonic()

    @property
    def failed(self) -> bool:
        return self.code not in (None, 0) and not self.stopped

    @property
    def error_name(self) -> str | None:
        """The last exception name in its output, if any."""
        for line in reversed(self.tail):
            m = _EXC_LINE.match(line.strip())
            if m:
                return m.group(1)
        return None

    @property
    def is_consequence(self) -> bool:
        return self.error_name in CONSEQUENCE_ERRORS

    def how(self) -> str:
        code = self.code
        if code is None:
            return "is running"
        what = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return f"{what} after {self.seconds():.1f} s"

    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started


def banner(kind: str, outcomes: Sequence[Outcome], token_source: str) -> str:
    """The start banner: job kind, then one row per process (role, endpoint, pid, log)."""
    rows = [f"fleetkit launch: {kind}; auth token {token_source}"]
    for o in outcomes:
        rows.append(f"  {o.name:<10} {o.role:<8} {o.endpoint:<21} pid {o.pid:<7} "
                    f"{'log ' + o.log if o.log else 'output below, prefixed [' + o.name + ']'}")
    return "\n".join(rows)


def ended_line(o: Outcome) -> str:
    return f"fleetkit launch: {o.name} (pid {o.pid}) {o.how()}"


def pick_cause(outcomes: Iterable[Outcome]) -> Outcome | None:
    """The failure to report: the earliest that is not a consequence of another's. When every
    process that failed by itself only reports another's failure, the cause is a process the
    launcher stopped after it had printed an error of its own (it raised, but was still in its
    teardown when the wait for it ran out)."""
    outcomes = list(outcomes)
    failures = [o for o in outcomes if o.failed]
    if not failures:
        return None
    def when(o: Outcome) -> float:  # a traceback printed earlier is an earlier failure
        return min(t for t in (o.traceback_at, o.ended) if t is not None)
    causes = [o for o in failures if not o.is_consequence] or [
        o for o in outcomes if o.stopped and o.traceback_at is not None and not o.is_consequence] or failures
    return min(causes, key=when)


def describe_failure(cause: Outcome, others: Sequence[Outcome]) -> str:
    """The error report: the cause with its output tail and log, then who only saw it."""
    tail = "\n".join("    " + line for line in cause.tail) or "    (no output)"
    where = f"; full output in {cause.log}" if cause.log else ""
    lines = [f"fleetkit launch: {cause.name} (pid {cause.pid}) failed first: it {cause.how()}{where}; "
             f"last output:\n{tail}"]
    for o in others:
        if o is cause or not o.failed:
            continue
        seen = (f"{o.error_name}: it only saw the failure of another process, not the cause"
                if o.is_consequence else f"{o.error_name or 'no exception shown'}")
        lines.append(f"fleetkit launch: {o.name} (pid {o.pid}) also {o.how()} ({seen})")
    return "\n".join(lines)


def summary(outcomes: Sequence[Outcome], code: int, elapsed: float) -> str:
    """The closing summary: the job's result, then each process's."""
    result = "finished" if code == 0 else f"failed (exit code {code})"
    rows = [f"fleetkit launch: job {result} in {elapsed:.1f} s"]
    for o in outcomes:
        state = "stopped by the launcher" if o.stopped else o.how()
        extra = f", restarted {o.restarts}x" if o.restarts else ""
        rows.append(f"  {o.name:<10} {state}{extra}")
    return "\n".join(rows)


def report_metrics(**values: float) -> None:
    """Called in a launched trainer: hand the launcher this step's metrics (e.g. ``step``,
    ``examples`` (cumulative), ``loss``, ``auc``).  It prints one progress line per period
    for all trainers and appends every record to ``--metrics_file``.  Outside the launcher
    it is one line on stdout."""
    clean = {k: (float(v) if not isinstance(v, int) else v) for k, v in values.items()}
    print(METRICS_PREFIX + json.dumps(clean, allow_nan=False), flush=True)


def parse_metrics(line: str) -> dict[str, float] | None:
    """The metrics of a ``report_metrics`` line (None for any other or malformed line)."""
    if not line.startswith(METRICS_PREFIX) or len(line) > MAX_METRICS_LINE:
        return None
    try:
        obj = json.loads(line[len(METRICS_PREFIX):])
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    out = {str(k): v for k, v in obj.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    return out


class Progress:
    """Collects the trainers' metrics; one line per period, every record to a JSONL file."""

    def __init__(self, period: float, metrics_file: str | None, say: Callable[[str], None]) -> None:
        self.period, self.say = period, say
        self.t0 = self.last = time.monotonic()
        self.latest: dict[str, dict[str, Any]] = {}
        self.fresh = False                       # records since the last line
        self.at_last: dict[str, float] = {}      # examples seen at the last line, per trainer
        self._lock = threading.Lock()
        self._file = open(metrics_file, "w") if metrics_file else None

    def feed(self, name: str, metrics: dict[str, float]) -> None:
        """One record from trainer ``name`` (called from the output pumps)."""
        now = time.monotonic()
        with self._lock:
            self.latest[name] = metrics
            self.fresh = True
            if self._file is not None:
                self._file.write(json.dumps({"t": round(now - self.t0, 3), "worker": name, **metrics}) + "\n")
                self._file.flush()

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.fresh or (not force and now - self.last < self.period):
            return
        with self._lock:
            line = self._line(now)
        self.say(line)

    def _line(self, now: float) -> str:
        dt = max(now - self.last, 1e-9)
        parts, total_rate, losses, aucs = [], 0.0, [], []
        for name in sorted(self.latest, key=_rank_key):
            m = self.latest[name]
            # the trainer's own rate when it says how long it trained, else what arrived since the last line
            rate = (m["examples"] / m["seconds"] if m.get("seconds") and "examples" in m
                    else (m.get("examples", 0) - self.at_last.get(name, 0)) / dt)
            self.at_last[name] = m.get("examples", 0)
            total_rate += rate
            bits = [f"step {m['step']}" if "step" in m else "", f"{rate:.0f} ex/s"]
            if "loss" in m:
                bits.append(f"loss {m['loss']:.4f}")
                losses.append(m["loss"])
            if "auc" in m:
                bits.append(f"auc {m['auc']:.4f}")
                aucs.append(m["auc"])
            if "test_auc" in m:
                bits.append(f"held-out auc {m['test_auc']:.4f}")
            parts.append(f"{name} " + ", ".join(b for b in bits if b))
        total = [f"{total_rate:.0f} ex/s"]
        if losses:
            total.append(f"loss {sum(losses) / len(losses):.4f}")
        if aucs:
            total.append(f"auc {sum(aucs) / len(aucs):.4f}")
        self.last, self.fresh = now, False
        return f"fleetkit launch: progress {now - self.t0:.0f} s | " + " | ".join(parts) + \
            " | total " + ", ".join(total)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def _rank_key(name: str) -> tuple[str, int]:
    kind, _, idx = name.partition(".")
    return kind, int(idx) if idx.isdigit() else 0
