"""``fleetkit launch``: run a training script as a whole job.

    fleetkit launch --server_num 2 --worker_num 2 train.py --epochs 3   # parameter servers
    fleetkit launch --worker_num 4 train.py                            # collective (all-reduce)
    fleetkit launch --ips 10.0.0.1,10.0.0.2 --node_ip 10.0.0.1 --server_num 1 --worker_num 2 train.py

Every process of the job is the same script; the launcher tells each its role
only through Paddle's environment variables (``TRAINING_ROLE``,
``PADDLE_PSERVERS_IP_PORT_LIST``, ``PADDLE_TRAINERS_NUM``, ``PADDLE_TRAINER_ID``,
``PADDLE_TRAINER_ENDPOINTS``, ``PADDLE_CURRENT_ENDPOINT``, ``POD_IP``,
``PADDLE_PORT``, and PaddleCloud 1.4's ``PADDLE_PSERVERS``, ``PADDLE_TRAINERS``,
``PADDLE_CURRENT_IP``, ``PADDLE_IS_LOCAL``), so ``PaddleCloudRoleMaker`` reads
them as it would on a cluster.  With ``--ips`` every host runs the same command
and derives the same roles, ranks and ports; each starts its own share.

It says what it does: a banner (every process's role, endpoint, pid, log file),
a line when each process ends, progress while waiting for pservers and from
the scripts' ``report_metrics`` lines, a closing summary.  The first process
that fails makes it stop every other one and exit with that process's code,
naming it, its log file and the end of its output; a peer that only saw that
failure is named as such.  Pservers are stopped once every worker finished.
Nothing is left running, whatever happens: Ctrl-C, SIGTERM, and SIGKILL of the
launcher too (the kernel kills the children: PR_SET_PDEATHSIG; the watchdog of
``launch_watchdog.py`` kills what they started in their process groups).

Secure by default: every process gets the same random ``FLEETKIT_AUTH_TOKEN``
for the job (unless the user set one), so pservers refuse anyone else.
"""
from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import threading
import time
from typing import Any, Sequence

from .. import env as envmod
from . import launch_cli, launch_report as report
from .launch_plan import JobSpec, ProcPlan, child_env, free_ports, plan_job
from .launch_procs import Proc, Watchdog, probe_ready, start_proc, stop_procs

__all__ = ["RESTARTS_ENV", "JobSpec", "add_launch_parser", "free_ports", "main", "run_job"]

#: first "waiting for pservers" line after this many seconds, then every WAIT_REPEAT_S
WAIT_FIRST_S, WAIT_REPEAT_S = 3.0, 10.0
POLL_S = 0.05
#: how many times this process was restarted (``--max_restarts``): a script may skip what
#: needs every peer (e.g. a global shuffle) when it rejoins a running job
RESTARTS_ENV = envmod.FLEETKIT_RESTARTS


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Terminated(Exception):
    """The launcher itself got SIGTERM (e.g. from a scheduler): stop the job, then exit."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated


def run_job(spec: JobSpec, progress_period: float = 10.0, metrics_file: str | None = None,
            print_config: bool = False) -> int:
    """Run the job to the end; 0 when every worker succeeded, else the first failure's code.

    ``progress_period``: seconds between progress lines (from the scripts' ``report_metrics``);
    ``metrics_file``: every metrics record as JSONL; ``print_config``: the layout first."""
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        # the children run in their own sessions: without this, a SIGTERM to the launcher
        # would leave them running until the kernel's PDEATHSIG at our exit
        old_handler = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        job = _Job(spec, progress_period, metrics_file)
        if print_config:
            _say(launch_cli.describe_config(spec, job.servers, job.workers, job.plans))
        return job.run()
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)


class _Job:
    """One launch: start, supervise, report."""

    def __init__(self, spec: JobSpec, progress_period: float, metrics_file: str | None) -> None:
        self.spec = spec
        self.servers, self.workers, self.plans = plan_job(spec)
        self.user_token = bool(envmod.auth_token())
        hosts = {ep.rpartition(":")[0] for ep in self.servers + self.workers}
        if len(hosts) > 1 and not self.user_token:
            # each host's launcher would draw its own secret and the hosts would refuse each other
            raise SystemExit(
                "fleetkit launch: a job on several hosts needs one FLEETKIT_AUTH_TOKEN shared by every host "
                f"({', '.join(sorted(hosts))}); set the same value on each, e.g. the output of\n"
                "    python -c 'import secrets; print(secrets.token_hex(16))'")
        self.token = envmod.auth_token() or secrets.token_hex(16)
        self.progress = report.Progress(progress_period, metrics_file, _say)
        self.procs: list[Proc] = []
        self.watchdog: Watchdog | None = None
        self.t0 = time.monotonic()

    # ------------------------------------------------------------------ start
    def _kind(self) -> str:
        hosts = f" on {len(self.spec.ips)} hosts (this one: {self.spec.ip})" if len(self.spec.ips) > 1 else ""
        if self.servers:
            return (f"parameter-server job, {len(self.servers)} pservers + {len(self.workers)} trainers{hosts}"
                    f"{'; up to ' + str(self.spec.max_restarts) + ' restarts each' if self.spec.max_restarts else ''}")
        return f"collective job, {len(self.workers)} trainers{hosts}"

    def _start_one(self, plan: ProcPlan) -> Proc:
        streamed = self.spec.log_dir is None or plan.name == self._console_worker()
        log = os.path.join(self.spec.log_dir, f"{plan.name}.log") if self.spec.log_dir else None
        return start_proc(self.spec.script, plan, child_env(plan, len(self.plans), self.token), log,
                          streamed, self.progress.feed, watchdog=self.watchdog)

    def _console_worker(self) -> str | None:
        names = [p.name for p in self.plans if not p.is_server]
        return names[0] if names else None

    def start(self) -> None:
        if self.spec.log_dir:
            os.makedirs(self.spec.log_dir, exist_ok=True)
        try:
            for plan in self.plans:
                self.procs.append(self._start_one(plan))
        except BaseException:
            stop_procs(self.procs, self.spec.kill_grace)  # a later start failed (bad script): leave nothing running
            raise
        source = "from FLEETKIT_AUTH_TOKEN" if self.user_token else "generated for this job"
        _say(report.banner(self._kind(), [p.outcome for p in self.procs], source))

    # -------------------------------------------------------------- supervise
    def run(self) -> int:
        code: int | None = None
        try:
            # inside the try: a Ctrl-C that lands while the processes are being started (or
            # the banner printed) still stops the ones already running, instead of leaving
            # them to outlive an interpreter that waits on their output readers
            self.watchdog = Watchdog()
            self.start()
            code = self._loop()
        except KeyboardInterrupt:
            _say(f"fleetkit launch: interrupted (Ctrl-C); {self._stop_all()}")
            code = 130
        except _Terminated:
            _say(f"fleetkit launch: terminated (SIGTERM); {self._stop_all()}")
            code = 143
        finally:
            if any(p.running() for p in self.procs):
                self._stop_all()
            if self.watchdog is not None:
                self.watchdog.close()
            for p in self.procs:
                p.join_reader()
            self.progress.tick(force=True)
            self.progress.close()
            if code is not None:
                _say(report.summary([p.outcome for p in self.procs], code, time.monotonic() - self.t0))
        return code

    def _stop_all(self) -> str:
        live = [p for p in self.procs if p.running()]
        stop_procs(live, self.spec.kill_grace)
        for p in live:
            p.outcome.stopped = True
            p.outcome.ended = p.outcome.ended or time.monotonic()
        if not live:
            return "no other process was left running"
        return "stopped " + ", ".join(f"{p.name} (pid {p.pid})" for p in live)

    def _reap(self) -> list[Proc]:
        """Processes that ended since the last poll (each announced once)."""
        ended = []
        for p in self.procs:
            if p.outcome.code is None and p.poll() is not None:
                _say(report.ended_line(p.outcome))
                ended.append(p)
        return ended

    def _loop(self) -> int:
        workers_done_at: float | None = None
        waiter = _ServerWait(self.servers)
        while True:
            for p in self._reap():
                if p.outcome.failed and not self._restart(p):
                    return self._fail(p)
            waiter.tick()
            self.progress.tick()
            worker_procs = [p for p in self.procs if not p.is_server]
            if workers_done_at is None and all(p.outcome.code == 0 for p in worker_procs):
                workers_done_at = time.monotonic()
            if workers_done_at is not None:
                if not any(p.running() for p in self.procs):
                    return 0
                if time.monotonic() - workers_done_at > self.spec.server_grace:
                    self._stop_all()  # pservers that do not exit on COMPLETE are stopped, not waited on
                    return 0
            if self.spec.timeout and time.monotonic() - self.t0 > self.spec.timeout:
                _say(f"fleetkit launch: job still running after --timeout {self.spec.timeout:g}s; "
                     f"{self._stop_all()}")
                return 124
            time.sleep(POLL_S)

    def _restart(self, p: Proc) -> bool:
        """``--max_restarts``: start a failed process again with the same plan (same endpoint,
        same environment), so a pserver resumes from its checkpoint and an async trainer
        rejoins.  False when it has used up its restarts (the job then fails)."""
        if p.outcome.restarts >= self.spec.max_restarts or self._stopping_soon():
            return False
        p.join_reader()
        n = p.outcome.restarts + 1
        _say(f"fleetkit launch: restarting {p.name} on {p.plan.endpoint} (restart {n} of "
             f"{self.spec.max_restarts}); it {p.outcome.how()}, last output: "
             f"{p.outcome.tail[-1] if p.outcome.tail else '(none)'}")
        log = os.path.join(self.spec.log_dir, f"{p.name}.log") if self.spec.log_dir else None
        env = {**child_env(p.plan, len(self.plans), self.token), RESTARTS_ENV: str(n)}
        fresh = start_proc(self.spec.script, p.plan, env, log,
                           self.spec.log_dir is None or p.name == self._console_worker(), self.progress.feed,
                           restarts=n, watchdog=self.watchdog)
        self.procs[self.procs.index(p)] = fresh
        _say(f"fleetkit launch: {p.name} restarted as pid {fresh.pid}")
        return True

    def _stopping_soon(self) -> bool:
        """A failure elsewhere already means the job ends: do not restart into it."""
        return any(q.outcome.failed and q.outcome.restarts >= self.spec.max_restarts for q in self.procs)

    def _fail(self, first: Proc) -> int:
        """Find the cause (waiting a little when the first failure only reports another's), stop
        the rest, say who failed and why."""
        first.join_reader()
        deadline = time.monotonic() + self.spec.cause_wait
        while first.outcome.is_consequence and time.monotonic() < deadline:
            failed = [p for p in self.procs if p.outcome.failed]
            for p in failed:
                p.join_reader()
            if any(not p.outcome.is_consequence for p in failed) or not any(p.running() for p in self.procs):
                break
            time.sleep(POLL_S)
            self._reap()
        stopped = self._stop_all()
        for p in self.procs:
            p.join_reader()
        outcomes = [p.outcome for p in self.procs]
        cause = report.pick_cause(outcomes)
        _say(report.describe_failure(cause, outcomes))
        _say(f"fleetkit launch: {stopped}")
        code = cause.code
        return code if code > 0 else 128 - code


class _ServerWait:
    """"waiting for pservers: 1 of 2 ready (...)" after a few seconds, then periodically."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        self.pending = list(endpoints)
        self.total = len(endpoints)
        self.t0 = time.monotonic()
        self.next_say = self.t0 + WAIT_FIRST_S
        self.next_probe = self.t0

    def tick(self) -> None:
        now = time.monotonic()
        if not self.pending or now < self.next_probe:
            return
        self.next_probe = now + 0.5
        self.pending = [ep for ep in self.pending if not probe_ready(ep)]
        if not self.pending and now >= self.t0 + WAIT_FIRST_S:
            _say(f"fleetkit launch: all {self.total} pservers ready after {now - self.t0:.1f} s")
        elif self.pending and now >= self.next_say:
            self.next_say = now + WAIT_REPEAT_S
            _say(f"fleetkit launch: waiting for pservers: {self.total - len(self.pending)} of {self.total} "
                 f"ready ({', '.join(self.pending)} not listening yet, {now - self.t0:.0f} s)")


def add_launch_parser(sub: Any) -> None:
    """The ``launch`` subcommand of the ``fleetkit`` CLI."""
    p = sub.add_parser("launch", help="run a training script as a job of pservers and workers",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    launch_cli.add_arguments(p)
    p.set_defaults(func=_run_launch)


def _run_launch(args: argparse.Namespace) -> int:
    spec = launch_cli.spec_from_args(args)
    return run_job(spec, progress_period=args.progress_period, metrics_file=args.metrics_file,
                   print_config=args.print_config)


def main(argv: Sequence[str] | None = None) -> int:
    """``fleetrun`` / ``python -m fleetkit.launch``: the launch subcommand on its own."""
    parser = argparse.ArgumentParser(prog="fleetrun", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    launch_cli.add_arguments(parser)
    args = parser.parse_args(argv)
    return _run_launch(args)
