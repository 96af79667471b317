"""The options of ``fleetkit launch`` / ``fleetrun``.

Every option falls back to an environment variable ``FLEETKIT_LAUNCH_<OPTION>``
(``FLEETKIT_LAUNCH_IPS=10.0.0.1,10.0.0.2``, ``FLEETKIT_LAUNCH_NODE_IP=...``), so a
scheduler can set them once for every host; an option on the command line wins.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from .. import env as envmod
from .launch_plan import JobSpec, ProcPlan

__all__ = ["ENV_PREFIX", "add_arguments", "describe_config", "spec_from_args"]

ENV_PREFIX = envmod.FLEETKIT_LAUNCH_PREFIX


def _list(raw: str) -> list[str]:
    return [x.strip() for x in raw.split(",") if x.strip()]


def _env(name: str, default: Any, conv: Callable[[str], Any] = str) -> Any:
    raw = envmod.launch_option(name)
    if raw is None:
        return default
    try:
        return conv(raw)
    except ValueError:
        raise SystemExit(f"fleetkit launch: {ENV_PREFIX}{name.upper()}={raw!r} is not a valid "
                         f"--{name}") from None


def _flag(value: str) -> bool:
    if value.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError(value)
    return value.lower() in ("1", "true", "yes", "on")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the launcher's options (each with its environment fallback) to ``p``."""
    g = p.add_argument_group("job shape")
    g.add_argument("--server_num", type=int, default=_env("server_num", 0, int),
                   help="parameter servers per host (0: a collective job)")
    g.add_argument("--worker_num", "--nproc_per_node", dest="worker_num", type=int,
                   default=_env("worker_num", None, int),
                   help="trainer processes per host (default 1, or one per --selected_gpus entry)")
    g.add_argument("--collective", action="store_true", default=_env("collective", False, _flag),
                   help="all-reduce job (implied by --server_num 0)")
    g.add_argument("--servers", type=_list, default=_env("servers", [], _list),
                   help="explicit pserver endpoints ip:port,... of the whole job (this host starts its own)")
    g.add_argument("--workers", type=_list, default=_env("workers", [], _list),
                   help="explicit trainer endpoints ip:port,... of the whole job, in rank order")
    g.add_argument("--selected_gpus", type=_list, default=_env("selected_gpus", [], _list),
                   help="GPU ids for this host's trainers, one each (FLAGS_selected_gpus)")
    g.add_argument("--backend", default=_env("backend", None),
                   help="collective backend for the script (tcp, mpi, nccl): FLEETKIT_COLLECTIVE_BACKEND")
    h = p.add_argument_group("hosts and ports")
    h.add_argument("--ips", "--cluster_node_ips", dest="ips", type=_list, default=_env("ips", [], _list),
                   help="every host of the job, same order on each (each runs this same command)")
    h.add_argument("--node_ip", "--ip", dest="node_ip", default=_env("node_ip", "127.0.0.1"),
                   help="this host's address, one of --ips (default 127.0.0.1)")
    h.add_argument("--start_port", "--started_port", dest="start_port", type=int,
                   default=_env("start_port", 0, int),
                   help="first port of each host (default: free ports on one host, 6170 on several)")
    r = p.add_argument_group("supervision and output")
    r.add_argument("--log_dir", default=_env("log_dir", None),
                   help="each process's full output to LOG_DIR/<role>.<i>.log; worker 0 still shown here")
    r.add_argument("--timeout", type=float, default=_env("timeout", None, float),
                   help="stop the job after this many seconds (default: no limit)")
    r.add_argument("--server_grace", type=float, default=_env("server_grace", 30.0, float),
                   help="seconds pservers get to exit after the last worker finished, then stopped (default 30)")
    r.add_argument("--kill_grace", type=float, default=_env("kill_grace", 5.0, float),
                   help="seconds from SIGTERM to SIGKILL when the launcher stops processes (default 5)")
    r.add_argument("--cause_wait", type=float, default=_env("cause_wait", 5.0, float),
                   help="seconds to wait, after a process only reported a peer's failure, for that "
                        "failure itself (default 5)")
    r.add_argument("--max_restarts", type=int, default=_env("max_restarts", 0, int),
                   help="restart a pserver (or an async trainer) that dies, up to N times each")
    r.add_argument("--progress_period", type=float, default=_env("progress_period", 10.0, float),
                   help="seconds between progress lines from the trainers' metrics (default 10)")
    r.add_argument("--metrics_file", default=_env("metrics_file", None),
                   help="append every trainer metrics record to this JSONL file")
    r.add_argument("--print_config", action="store_true", default=_env("print_config", False, _flag),
                   help="print the job's layout (every endpoint and role) before starting")
    p.add_argument("script", help="the training script (a .py file, or a command after --)")
    p.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments for the script")


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    """The ``JobSpec`` of parsed options."""
    cmd = [sys.executable, "-u", args.script] if args.script.endswith(".py") else [args.script]
    worker_num = args.worker_num if args.worker_num is not None else (len(args.selected_gpus) or 1)
    if args.selected_gpus and len(args.selected_gpus) < worker_num:
        raise SystemExit(f"fleetkit launch: --selected_gpus {','.join(args.selected_gpus)} has fewer GPUs "
                         f"than --worker_num {worker_num}")
    return JobSpec(script=cmd + list(args.script_args), server_num=args.server_num, worker_num=worker_num,
                   collective=args.collective or (args.server_num == 0 and not args.servers),
                   ip=args.node_ip, ips=list(args.ips), servers=list(args.servers), workers=list(args.workers),
                   start_port=args.start_port, selected_gpus=list(args.selected_gpus), backend=args.backend,
                   log_dir=args.log_dir, timeout=args.timeout, max_restarts=args.max_restarts,
                   server_grace=_non_negative("server_grace", args.server_grace),
                   kill_grace=_non_negative("kill_grace", args.kill_grace),
                   cause_wait=_non_negative("cause_wait", args.cause_wait))


def _non_negative(option: str, seconds: float) -> float:
    if not seconds >= 0:
        raise SystemExit(f"fleetkit launch: --{option} {seconds:g} must be a number of seconds >= 0")
    return float(seconds)


def describe_config(spec: JobSpec, servers: list[str], workers: list[str], local: list[ProcPlan]) -> str:
    """``--print_config``: the whole job as every host derives it (``plan_job``'s result)."""
    rows = ["fleetkit launch: configuration",
            f"  command        {' '.join(spec.script)}",
            f"  hosts          {','.join(spec.ips) or spec.ip} (this one: {spec.ip})",
            f"  pservers       {','.join(servers) or '-'}",
            f"  trainers       {','.join(workers)}",
            f"  this host runs {', '.join(p.name + '@' + p.endpoint for p in local)}",
            f"  log_dir        {spec.log_dir or '-'}    timeout {spec.timeout or '-'}    "
            f"max_restarts {spec.max_restarts}"]
    return "\n".join(rows)
