"""``fleetkit launch``: run a training script as a whole job on one host.

    fleetkit launch --server_num 2 --worker_num 2 train.py --epochs 3   # parameter servers
    fleetkit launch --worker_num 4 train.py                            # collective (all-reduce)

Every process of the job is the same script; the launcher tells each its role
only through Paddle's environment variables (``TRAINING_ROLE``,
``PADDLE_PSERVERS_IP_PORT_LIST``, ``PADDLE_TRAINERS_NUM``, ``PADDLE_TRAINER_ID``,
``PADDLE_TRAINER_ENDPOINTS``, ``PADDLE_CURRENT_ENDPOINT``, ``POD_IP``,
``PADDLE_PORT``), so ``PaddleCloudRoleMaker`` reads them as it would on a
cluster.  It supervises the job: the first process that fails makes the
launcher stop every other one and exit with that process's code, naming it
and showing the end of its output; pservers are stopped once every worker has
finished.  Nothing is left running, whatever happens: Ctrl-C, SIGTERM, and
SIGKILL of the launcher too (the kernel kills the children: PR_SET_PDEATHSIG).

Secure by default: every process gets the same random ``FLEETKIT_AUTH_TOKEN``
for the job (unless the user set one), so pservers refuse anyone else.
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from .. import env as envmod

__all__ = ["JobSpec", "add_launch_parser", "free_ports", "job_envs", "run_job"]

#: seconds pservers get to exit on their own after the last worker finished
SERVER_GRACE_S = 30.0
#: seconds between SIGTERM and SIGKILL when the job is stopped
KILL_GRACE_S = 5.0
#: lines of a failed process's output repeated in the launcher's error
TAIL_LINES = 20


@dataclass
class JobSpec:
    """What to run and how many of each role."""
    script: list[str]                    # the command after the launcher's own options
    server_num: int = 0
    worker_num: int = 1
    collective: bool = False
    ip: str = "127.0.0.1"
    start_port: int = 0                  # 0: free ports chosen by the OS
    log_dir: str | None = None
    timeout: float | None = None         # whole-job limit in seconds


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    is_server: bool
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    reader: threading.Thread | None = None


def free_ports(n: int, ip: str = "127.0.0.1") -> list[int]:
    """n distinct ports the OS says are free now (held together so they differ).

    Another process may still take one before it is bound again: callers that
    can, bind port 0 instead."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((ip, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def job_envs(spec: JobSpec) -> list[tuple[str, bool, dict[str, str]]]:
    """(name, is_server, env vars) for every process of the job, servers first."""
    if spec.worker_num < 1:
        raise SystemExit(f"fleetkit launch: --worker_num must be >= 1, got {spec.worker_num}")
    if spec.server_num < 0:
        raise SystemExit(f"fleetkit launch: --server_num must be >= 0, got {spec.server_num}")
    if spec.collective and spec.server_num:
        raise SystemExit("fleetkit launch: --collective jobs have no parameter servers (drop --server_num)")
    n = spec.server_num + spec.worker_num
    ports = (list(range(spec.start_port, spec.start_port + n)) if spec.start_port
             else free_ports(n, spec.ip))
    server_eps = [f"{spec.ip}:{p}" for p in ports[:spec.server_num]]
    worker_eps = [f"{spec.ip}:{p}" for p in ports[spec.server_num:]]
    common = {
        envmod.PADDLE_TRAINERS_NUM: str(spec.worker_num),
        envmod.PADDLE_TRAINER_ENDPOINTS: ",".join(worker_eps),
        envmod.POD_IP: spec.ip,
    }
    if server_eps:
        common[envmod.PADDLE_PSERVERS_IP_PORT_LIST] = ",".join(server_eps)
    out = []
    for i, ep in enumerate(server_eps):
        out.append((f"server.{i}", True, {**common, envmod.TRAINING_ROLE: "PSERVER",
                                          envmod.PADDLE_PORT: ep.rsplit(":", 1)[1],
                                          envmod.PADDLE_CURRENT_ENDPOINT: ep}))
    for i, ep in enumerate(worker_eps):
        out.append((f"worker.{i}", False, {**common, envmod.TRAINING_ROLE: "TRAINER",
                                           envmod.PADDLE_TRAINER_ID: str(i),
                                           envmod.PADDLE_CURRENT_ENDPOINT: ep}))
    return out


def _child_env(extra: dict[str, str], n_procs: int, token: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    # secure by default: every process of the job shares one random secret, so pservers
    # refuse whoever else reaches their ports (a token the user set is kept)
    if not env.get(envmod.FLEETKIT_AUTH_TOKEN):
        env[envmod.FLEETKIT_AUTH_TOKEN] = token
    # one BLAS thread per core share: with more, processes on a small host slow each other down
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n_procs)))
    # big tensor buffers: keep freed memory instead of mmap/munmap each time (DESIGN.md)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "268435456")
    env.setdefault("MALLOC_TRIM_THRESHOLD_", "1073741824")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _pump(proc: _Proc, log: Any) -> None:
    """Copy a child's output to the log file or our stdout, keeping its tail for errors."""
    prefix = f"[{proc.name}] "
    for raw in iter(proc.popen.stdout.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        proc.tail.append(line)
        if log is not None:
            log.write(line + "\n")
            log.flush()
        else:
            sys.stdout.write(prefix + line + "\n")
            sys.stdout.flush()
    if log is not None:
        log.close()


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Any:
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


def _start(spec: JobSpec) -> list[_Proc]:
    roles = job_envs(spec)
    if spec.log_dir:
        os.makedirs(spec.log_dir, exist_ok=True)
    token = secrets.token_hex(16)
    preexec = _die_with_parent()
    procs: list[_Proc] = []
    try:
        for name, is_server, extra in roles:
            popen = subprocess.Popen(spec.script, env=_child_env(extra, len(roles), token),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, preexec_fn=preexec)
            p = _Proc(name, popen, is_server)
            procs.append(p)
            log = open(os.path.join(spec.log_dir, f"{name}.log"), "w") if spec.log_dir else None
            p.reader = threading.Thread(target=_pump, args=(p, log), daemon=True)
            p.reader.start()
    except BaseException:
        _stop(procs)  # a later start failed (bad script, log dir): do not leave the earlier ones running
        raise
    return procs


def _stop(procs: Sequence[_Proc]) -> None:
    """SIGTERM every live process group, then SIGKILL what is left after the grace."""
    live = [p for p in procs if p.popen.poll() is None]
    for p in live:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_S
    for p in live:
        try:
            p.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.popen.wait()


def _signal_group(p: _Proc, sig: int) -> None:
    try:
        os.killpg(p.popen.pid, sig)  # the script's own children go too
    except (ProcessLookupError, PermissionError):
        pass


def _describe(p: _Proc) -> str:
    code = p.popen.returncode
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    p.reader.join(timeout=2.0)  # let the pump catch the last lines
    tail = "\n".join("    " + line for line in p.tail) or "    (no output)"
    return f"fleetkit launch: {p.name} (pid {p.popen.pid}) {how}; last output:\n{tail}"


class _Terminated(Exception):
    """The launcher itself got SIGTERM (e.g. from a scheduler): stop the job, then exit."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated


def run_job(spec: JobSpec) -> int:
    """Run the job to the end; 0 when every worker succeeded, else the first failure's code."""
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        # the children run in their own sessions: without this, a SIGTERM to the launcher
        # would leave them running
        old_handler = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _supervise(spec)
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)


def _supervise(spec: JobSpec) -> int:
    procs = _start(spec)
    workers = [p for p in procs if not p.is_server]
    start = time.monotonic()
    workers_done_at: float | None = None
    try:
        while True:
            for p in procs:
                code = p.popen.poll()
                if code is None or code == 0:
                    continue  # a pserver exits 0 once every worker sent COMPLETE: not an error
                print(_describe(p), file=sys.stderr)
                _stop(procs)
                return code if code > 0 else 128 - code
            if workers_done_at is None and all(w.popen.poll() == 0 for w in workers):
                workers_done_at = time.monotonic()
            if workers_done_at is not None:
                if all(p.popen.poll() is not None for p in procs):
                    return 0
                if time.monotonic() - workers_done_at > SERVER_GRACE_S:
                    _stop(procs)  # pservers that do not exit on COMPLETE are stopped, not waited on
                    return 0
            if spec.timeout and time.monotonic() - start > spec.timeout:
                print(f"fleetkit launch: job still running after --timeout {spec.timeout:g}s; stopping it",
                      file=sys.stderr)
                _stop(procs)
                return 124
            time.sleep(0.05)
    except KeyboardInterrupt:
        _stop(procs)
        return 130
    except _Terminated:
        print("fleetkit launch: terminated; stopping the job", file=sys.stderr)
        _stop(procs)
        return 143
    finally:
        if any(p.popen.poll() is None for p in procs):
            _stop(procs)
        for p in procs:
            if p.reader is not None:
                p.reader.join(timeout=2.0)


def add_launch_parser(sub: Any) -> None:
    """The ``launch`` subcommand of the ``fleetkit`` CLI."""
    p = sub.add_parser("launch", help="run a training script as a job of pservers and workers on this host",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server_num", type=int, default=0, help="parameter servers (0: collective job)")
    p.add_argument("--worker_num", type=int, default=1, help="trainer processes")
    p.add_argument("--collective", action="store_true", help="all-reduce job (implied by --server_num 0)")
    p.add_argument("--ip", default="127.0.0.1", help="address the processes listen on")
    p.add_argument("--start_port", type=int, default=0, help="first port (default: free ports)")
    p.add_argument("--log_dir", default=None, help="write each process's output to LOG_DIR/<role>.<i>.log "
                   "instead of prefixing it to this terminal")
    p.add_argument("--timeout", type=float, default=None, help="stop the job after this many seconds")
    p.add_argument("script", help="the training script (a .py file, or a command with --)")
    p.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments for the script")
    p.set_defaults(func=_run_launch)


def _run_launch(args: argparse.Namespace) -> int:
    cmd = ([sys.executable, "-u", args.script] if args.script.endswith(".py") else [args.script])
    spec = JobSpec(script=cmd + list(args.script_args), server_num=args.server_num,
                   worker_num=args.worker_num, collective=args.collective or args.server_num == 0,
                   ip=args.ip, start_port=args.start_port, log_dir=args.log_dir, timeout=args.timeout)
    return run_job(spec)
