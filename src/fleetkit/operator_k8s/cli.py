"""The ``operator`` and ``submit`` subcommands of ``fleetkit`` (parsers and runners)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .. import env as envmod
from . import names as n


def add_operator_parser(sub: Any) -> None:
    """``fleetkit operator [--kubeflow] [--namespace NS ...]``."""
    p = sub.add_parser("operator", help="run the PaddleJob operator (Kubernetes)",
                       description="Reconcile fleetkit.io/v1 PaddleJobs into pods and headless services, "
                                   "and report their status. Credentials: in-cluster service account, "
                                   "else the kubeconfig.")
    p.add_argument("--kubeflow", action="store_true",
                   help="also reconcile Kubeflow's kubeflow.org/v1 PaddleJobs (that CRD must be installed)")
    p.add_argument("--namespace", action="append", default=[], help="watch only these namespaces "
                   "(repeatable; default: the whole cluster)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    p.set_defaults(func=_run_operator)


def _run_operator(args: argparse.Namespace) -> int:
    if args.kubeconfig:
        os.environ[envmod.KUBECONFIG] = args.kubeconfig   # kopf's own login reads it too
    from .handlers import run
    return run(kubeflow=args.kubeflow, namespaces=args.namespace, kubeconfig=args.kubeconfig)


def add_submit_parser(sub: Any) -> None:
    """``fleetkit submit [options] script [args]`` and ``fleetkit submit --watch NAME``."""
    p = sub.add_parser("submit", help="run a training script as a PaddleJob on Kubernetes",
                       description="Write a PaddleJob for SCRIPT, create it with your kubeconfig and follow "
                                   "it: exit 0 when it Succeeded, 1 (with the failed pod) when it Failed.")
    p.add_argument("--server_num", type=int, default=0, help="parameter servers (0: collective job)")
    p.add_argument("--worker_num", type=int, default=1, help="trainers")
    p.add_argument("--image", help="container image with fleetkit and the script")
    p.add_argument("--name", help="job name (default: from the script name plus a random suffix)")
    p.add_argument("--namespace", "-n", default=None, help="namespace (default: the kubeconfig's)")
    p.add_argument("--python", default="python", help="interpreter in the image (default: python)")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="extra env for every pod")
    p.add_argument("--restart-policy", default=n.RESTART_NEVER, choices=n.RESTART_POLICIES)
    p.add_argument("--backoff-limit", type=int)
    p.add_argument("--active-deadline", type=int, help="activeDeadlineSeconds")
    p.add_argument("--pending-timeout", type=int, help="pendingTimeoutSeconds")
    p.add_argument("--port", type=int, default=n.DEFAULT_PORT)
    p.add_argument("--dry-run", action="store_true", help="print the PaddleJob YAML and exit")
    p.add_argument("--watch", metavar="NAME", help="follow the existing job NAME instead of submitting")
    p.add_argument("--timeout", type=float, default=86400.0, help="seconds to follow before giving up")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    p.add_argument("script", nargs="?", help="training script (path inside the image)")
    p.add_argument("script_args", nargs=argparse.REMAINDER, help="its arguments")
    p.set_defaults(func=_run_submit)


def _parse_env(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise SystemExit(f"fleetkit submit: --env {item!r} must be K=V")
        out[k] = v
    return out


def _run_submit(args: argparse.Namespace) -> int:
    import yaml

    from .spec import SpecError, normalize
    from .submit import build_job, create, follow, job_name
    if not args.watch and (not args.script or not args.image):
        print("fleetkit submit: a script and --image are needed (or --watch NAME)", file=sys.stderr)
        return 2
    namespace = args.namespace or _kube_namespace(args.kubeconfig, args.dry_run)
    if args.watch:
        core, custom = _clients(args.kubeconfig)
        return follow(core, custom, namespace, args.watch, args.timeout)
    job = build_job(name=args.name or job_name(args.script), namespace=namespace, image=args.image,
                    script=args.script, script_args=args.script_args, server_num=args.server_num,
                    worker_num=args.worker_num, python=args.python, env=_parse_env(args.env),
                    restart_policy=args.restart_policy, backoff_limit=args.backoff_limit,
                    active_deadline=args.active_deadline, pending_timeout=args.pending_timeout, port=args.port)
    try:
        normalize(job)
    except SpecError as e:
        print(f"fleetkit submit: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(yaml.safe_dump(job, sort_keys=False), end="")
        return 0
    core, custom = _clients(args.kubeconfig)
    create(custom, job)
    print(f"PaddleJob {namespace}/{job['metadata']['name']} created", flush=True)
    return follow(core, custom, namespace, job["metadata"]["name"], args.timeout)


def _kube_namespace(kubeconfig: str | None, dry_run: bool) -> str:
    """The current context's namespace (``default`` without one, or on a dry run with no kubeconfig)."""
    import kubernetes
    try:
        _, ctx = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
    except (kubernetes.config.ConfigException, OSError, TypeError) as e:
        if dry_run:
            return "default"
        raise SystemExit(f"fleetkit submit: cannot read the kubeconfig "
                         f"({kubeconfig or envmod.kubeconfig() or '~/.kube/config'}): {e}") from None
    return (ctx or {}).get("context", {}).get("namespace") or "default"


def _clients(kubeconfig: str | None) -> tuple[Any, Any]:
    import kubernetes

    from .handlers import load_config
    load_config(kubeconfig)
    return kubernetes.client.CoreV1Api(), kubernetes.client.CustomObjectsApi()
