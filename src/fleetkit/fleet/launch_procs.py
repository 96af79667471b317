"""The launcher's child processes: start (tied to the launcher's life), copy their output,
stop them."""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Sequence

from .launch_plan import ProcPlan
from .launch_report import Outcome, parse_metrics

__all__ = ["KILL_GRACE_S", "Proc", "Watchdog", "probe_ready", "start_proc", "stop_procs"]

#: seconds between SIGTERM and SIGKILL when the job is stopped
KILL_GRACE_S = 5.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` that puts the child in its own session (so one killpg reaches the
    script's own children) and has the kernel SIGKILL it when the launcher dies, however
    it dies (SIGKILL cannot be caught, so no handler of ours could do this)."""
    # resolved before fork: nothing to load in the child (PR_SET_PDEATHSIG is Linux's)
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
    launcher = os.getpid()

    def preexec() -> None:
        os.setsid()
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != launcher:  # the launcher died before prctl took effect
            os._exit(1)
    return preexec


class Watchdog:
    """The launcher's side of ``fleetkit.fleet.launch_watchdog`` (run as a plain script, so
    that it starts without importing fleetkit): which children's process groups to kill
    should the launcher die without stopping them (see that module)."""

    def __init__(self) -> None:
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launch_watchdog.py")
        self._popen = subprocess.Popen([sys.executable, "-I", script], stdin=subprocess.PIPE,
                                       stdout=subprocess.DEVNULL, start_new_session=True)
        self._lock = threading.Lock()

    def _say(self, line: str) -> None:
        with self._lock:
            try:
                self._popen.stdin.write(line.encode() + b"\n")   # type: ignore[union-attr]
                self._popen.stdin.flush()                         # type: ignore[union-attr]
            except (BrokenPipeError, ValueError):
                pass   # the watchdog is gone (or closed): the kernel's PDEATHSIG still applies

    def guard(self, pgid: int) -> None:
        self._say(f"+{pgid}")

    def forget(self, pgid: int) -> None:
        self._say(f"-{pgid}")

    def close(self) -> None:
        """The launcher stopped its children itself: the watchdog exits killing nothing."""
        self._say("bye")
        with self._lock:
            self._popen.stdin.close()                             # type: ignore[union-attr]
        try:
            self._popen.wait(5)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()


class Proc:
    """One running child: its Popen, what the launcher knows of it, its output pump."""

    def __init__(self, plan: ProcPlan, popen: subprocess.Popen, outcome: Outcome,
                 watchdog: Watchdog | None = None) -> None:
        self.plan, self.popen, self.outcome = plan, popen, outcome
        self.reader: threading.Thread | None = None
        self._watchdog = watchdog
        if watchdog is not None:
            watchdog.guard(popen.pid)   # the child leads its own session: pgid == pid

    name = property(lambda self: self.plan.name)
    pid = property(lambda self: self.popen.pid)
    is_server = property(lambda self: self.plan.is_server)

    def poll(self) -> int | None:
        code = self.popen.poll()
        if code is not None and self.outcome.code is None:
            self.outcome.code, self.outcome.ended = code, time.monotonic()
            if self._watchdog is not None:
                self._watchdog.forget(self.popen.pid)   # reaped: its pid may be reused
        return code

    def running(self) -> bool:
        return self.popen.poll() is None

    def join_reader(self, timeout: float = 2.0) -> None:
        """Let the pump catch the last lines (a grandchild holding the pipe: give up)."""
        if self.reader is not None:
            self.reader.join(timeout)


def _pump(proc: Proc, log: Any, streamed: bool, on_metrics: Callable[[str, dict], None]) -> None:
    """Copy a child's output to its log file and/or our stdout (prefixed), keeping its tail
    for errors and passing its metric lines to the progress reporter."""
    prefix = f"[{proc.name}] "
    try:
        for raw in iter(proc.popen.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            metrics = parse_metrics(line)
            if metrics is not None:
                on_metrics(proc.name, metrics)
            else:
                proc.outcome.see(line)
            if log is not None:
                log.write(line + "\n")
                log.flush()
            if streamed and metrics is None:
                sys.stdout.write(prefix + line + "\n")
                sys.stdout.flush()
    finally:
        if log is not None:
            log.close()


def start_proc(script: Sequence[str], plan: ProcPlan, env: dict[str, str], log_path: str | None,
               streamed: bool, on_metrics: Callable[[str, dict], None], restarts: int = 0,
               watchdog: Watchdog | None = None) -> Proc:
    """Start one child (its output to ``log_path`` and, if ``streamed``, our stdout)."""
    log = open(log_path, "a" if restarts else "w") if log_path else None
    try:
        popen = subprocess.Popen(list(script), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, preexec_fn=_die_with_parent())
    except BaseException:
        if log is not None:
            log.close()
        raise
    role = "PSERVER" if plan.is_server else "TRAINER"
    proc = Proc(plan, popen, Outcome(plan.name, role, plan.endpoint, popen.pid, log_path, restarts=restarts),
                watchdog)
    proc.reader = threading.Thread(target=_pump, args=(proc, log, streamed, on_metrics), daemon=True,
                                   name=f"fk-launch-{plan.name}")
    proc.reader.start()
    return proc


def _signal_group(p: Proc, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)  # the script's own children go too
    except (ProcessLookupError, PermissionError):
        pass


def stop_procs(procs: Sequence[Proc], grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM every live process group, then SIGKILL what is left after ``grace_s``."""
    live = [p for p in procs if p.running()]
    for p in live:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in live:
        try:
            p.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.popen.wait()
        p.poll()


def probe_ready(endpoint: str, timeout: float = 0.2) -> bool:
    """Whether something listens on ``endpoint`` (a TCP connect, closed at once)."""
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False
