"""Who runs where in a ``fleetkit launch`` job, and the environment each process gets.

Pure functions of the launch options (no processes started here), so every host
of a multi-host job derives the same roles, ranks and ports from the same
command line: ``--ips A,B --node_ip A`` on host A and ``--node_ip B`` on host B.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from .. import env as envmod

__all__ = ["DEFAULT_MULTIHOST_PORT", "JobSpec", "ProcPlan", "child_env", "free_ports", "plan_job"]

#: first port of a multi-host job (Paddle's launcher's default): free ports cannot be
#: agreed on by hosts that do not talk to each other
DEFAULT_MULTIHOST_PORT = 6170
#: what the launcher sets for the children unless the user did (see DESIGN.md: glibc
#: keeps big freed buffers instead of mmap/munmap each time: 2-4x faster for gRPC/MPI)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "268435456", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
#: env var the children's ``fleetkit`` logger level comes from (pserver INFO logs in the log files)
LOG_LEVEL_ENV = envmod.FLEETKIT_LOG_LEVEL
#: env var carrying ``--backend`` to collective scripts
BACKEND_ENV = envmod.FLEETKIT_COLLECTIVE_BACKEND


@dataclass
class JobSpec:
    """What to run and how many of each role (per node when ``ips`` has several hosts)."""
    script: list[str]                    # the command after the launcher's own options
    server_num: int = 0
    worker_num: int = 1
    collective: bool = False
    ip: str = "127.0.0.1"                # this host's address (``--node_ip``)
    ips: list[str] = field(default_factory=list)   # every host of the job, same order everywhere
    servers: list[str] = field(default_factory=list)  # explicit pserver endpoints (all hosts)
    workers: list[str] = field(default_factory=list)  # explicit trainer endpoints (all hosts)
    start_port: int = 0                  # 0: free ports chosen by the OS (one host only)
    selected_gpus: list[str] = field(default_factory=list)
    backend: str | None = None
    log_dir: str | None = None
    timeout: float | None = None         # whole-job limit in seconds
    max_restarts: int = 0
    server_grace: float = 30.0           # s pservers get to exit after the last worker finished
    kill_grace: float = 5.0              # s from SIGTERM to SIGKILL when stopping processes
    cause_wait: float = 5.0              # s to wait for the cause after a "peer failed" exit


@dataclass(frozen=True)
class ProcPlan:
    """One local process of the job."""
    name: str                            # server.<i> / worker.<rank>
    is_server: bool
    endpoint: str
    env: dict[str, str]


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


def _fail(msg: str) -> SystemExit:
    return SystemExit(f"fleetkit launch: {msg}")


def _check(spec: JobSpec) -> None:
    if spec.worker_num < 1 and not spec.workers:
        raise _fail(f"--worker_num must be >= 1, got {spec.worker_num}")
    if spec.server_num < 0:
        raise _fail(f"--server_num must be >= 0, got {spec.server_num}")
    if spec.collective and (spec.server_num or spec.servers):
        raise _fail("--collective jobs have no parameter servers (drop --server_num / --servers)")
    if spec.ips and spec.ip not in spec.ips:
        raise _fail(f"--node_ip {spec.ip} is not one of --ips {','.join(spec.ips)}")
    for flag, eps in (("--servers", spec.servers), ("--workers", spec.workers)):
        bad = [e for e in eps if not e.rpartition(":")[2].isdigit() or not e.rpartition(":")[0]]
        if bad:
            raise _fail(f"{flag}: {', '.join(bad)} is not ip:port")


def _endpoints(spec: JobSpec) -> tuple[list[str], list[str]]:
    """(pserver endpoints, trainer endpoints) of the whole job, in rank order."""
    if spec.workers or spec.servers:
        return list(spec.servers), list(spec.workers)
    hosts = spec.ips or [spec.ip]
    s, w = spec.server_num, spec.worker_num
    if len(hosts) == 1 and not spec.start_port:
        ports = free_ports(s + w, spec.ip)
    else:
        first = spec.start_port or DEFAULT_MULTIHOST_PORT
        ports = list(range(first, first + s + w))
    servers = [f"{h}:{p}" for h in hosts for p in ports[:s]]
    workers = [f"{h}:{p}" for h in hosts for p in ports[s:]]
    return servers, workers


def _host(ep: str) -> str:
    return ep.rpartition(":")[0]


def plan_job(spec: JobSpec) -> tuple[list[str], list[str], list[ProcPlan]]:
    """(pserver endpoints, trainer endpoints, this host's processes: servers first)."""
    _check(spec)
    servers, workers = _endpoints(spec)
    common = {
        envmod.PADDLE_TRAINERS_NUM: str(len(workers)),
        envmod.PADDLE_TRAINER_ENDPOINTS: ",".join(workers),
        envmod.POD_IP: spec.ip,
        # PaddleCloud 1.4 names, for cluster_train.sh-style scripts
        envmod.PADDLE_TRAINERS: str(len(workers)),
        envmod.PADDLE_IS_LOCAL: "0",
        envmod.PADDLE_CURRENT_IP: spec.ip,
    }
    if servers:
        common[envmod.PADDLE_PSERVERS_IP_PORT_LIST] = ",".join(servers)
        common[envmod.PADDLE_PSERVERS] = ",".join(_host(e) for e in servers)
        ports = [e.rpartition(":")[2] for e in servers]
        # one port when every pserver uses the same one (multi-host), else one per pserver
        common[envmod.PADDLE_PORT] = ports[0] if len(set(ports)) == 1 else ",".join(ports)
    if spec.backend:
        common[BACKEND_ENV] = spec.backend
    local: list[ProcPlan] = []
    for i, ep in enumerate(servers):
        if _host(ep) == spec.ip:
            local.append(ProcPlan(f"server.{i}", True, ep, {
                **common, envmod.TRAINING_ROLE: "PSERVER", envmod.PADDLE_PORT: ep.rpartition(":")[2],
                envmod.PADDLE_CURRENT_ENDPOINT: ep}))
    gpus = iter(spec.selected_gpus)
    for rank, ep in enumerate(workers):
        if _host(ep) != spec.ip:
            continue
        extra = {envmod.TRAINING_ROLE: "TRAINER", envmod.PADDLE_TRAINER_ID: str(rank),
                 envmod.PADDLE_CURRENT_ENDPOINT: ep}
        gpu = next(gpus, None)
        if gpu is not None:
            extra[envmod.FLAGS_SELECTED_GPUS] = gpu
        local.append(ProcPlan(f"worker.{rank}", False, ep, {**common, **extra}))
    if not local:
        raise _fail(f"no process of the job is on this host ({spec.ip}): check --node_ip")
    return servers, workers, local


def child_env(plan: ProcPlan, n_local: int, token: str) -> dict[str, str]:
    """The full environment of one child: ours, the plan's, and defaults the user may override."""
    env = dict(os.environ)   # the child inherits ours (allowed in tests/unit/test_env_reads.py)
    env.update(plan.env)
    # secure by default: every process of the job shares one random secret, so pservers
    # refuse whoever else reaches their ports (a token the user set is kept)
    if not env.get(envmod.FLEETKIT_AUTH_TOKEN):
        env[envmod.FLEETKIT_AUTH_TOKEN] = token
    # one BLAS thread per core share: with more, processes on a small host slow each other
    # down (Gloo-style all-reduce measured 2-8x slower with 2 threads per process on 2 cores)
    env.setdefault(envmod.OMP_NUM_THREADS, str(max(1, (os.cpu_count() or 1) // n_local)))
    for k, v in MALLOC_ENV.items():
        env.setdefault(k, v)
    env.setdefault(LOG_LEVEL_ENV, "INFO")
    env.setdefault("PYTHONUNBUFFERED", "1")
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(proxy, None)  # as Paddle's launcher: gRPC would route peers through a proxy
    return env
