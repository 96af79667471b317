"""``fleetkit submit``: write a PaddleJob for a script, create it, follow it to the end.

    fleetkit submit --server_num 2 --worker_num 2 --image IMG train.py [args]   # PS job
    fleetkit submit --worker_num 4 --image IMG train.py                         # collective
    fleetkit submit ... --dry-run          # print the YAML only
    fleetkit submit --watch NAME           # follow an existing job

Following prints each phase change and each event of the job as it happens and
exits 0 when the job Succeeded, 1 with the failure reason (naming the pod) when
it Failed, 2 when it vanished or ``--timeout`` passed.
"""
from __future__ import annotations

import copy
import re
import secrets
import sys
import time
from pathlib import PurePath
from typing import Any, Callable, TextIO

from . import names as n


def job_name(script: str) -> str:
    """A fresh DNS-1035 job name from the script's file name (``train-x7k2q``)."""
    stem = re.sub(r"[^a-z0-9-]+", "-", PurePath(script).stem.lower()).strip("-")
    stem = stem if stem[:1].isalpha() else f"job-{stem}".rstrip("-")
    return f"{stem[:n.MAX_JOB_NAME - 6].rstrip('-')}-{secrets.token_hex(3)[:5]}"


def build_job(*, name: str, namespace: str, image: str, script: str, script_args: list[str],
              server_num: int, worker_num: int, python: str = "python", env: dict[str, str] | None = None,
              restart_policy: str = n.RESTART_NEVER, backoff_limit: int | None = None,
              active_deadline: int | None = None, pending_timeout: int | None = None,
              port: int = n.DEFAULT_PORT) -> dict[str, Any]:
    """The PaddleJob running ``python script args`` in ``image`` (ps only when ``server_num``)."""
    container = {"name": n.MAIN_CONTAINER, "image": image, "command": [python, script, *script_args]}
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]

    def role(replicas: int) -> dict[str, Any]:
        return {"replicas": replicas, "restartPolicy": restart_policy,
                "template": {"spec": {"containers": [copy.deepcopy(container)]}}}

    run = {k: v for k, v in (("backoffLimit", backoff_limit), ("activeDeadlineSeconds", active_deadline),
                             ("pendingTimeoutSeconds", pending_timeout)) if v is not None}
    spec: dict[str, Any] = {"worker": role(worker_num), "port": port}
    if server_num:
        spec["ps"] = role(server_num)
    if run:
        spec["runPolicy"] = run
    return {"apiVersion": n.API_VERSION, "kind": n.KIND,
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def create(custom: Any, job: dict[str, Any]) -> None:
    """Create ``job`` through a ``CustomObjectsApi``."""
    custom.create_namespaced_custom_object(n.GROUP, n.VERSION, job["metadata"]["namespace"], n.PLURAL, job,
                                           _request_timeout=30)


def follow(core: Any, custom: Any, namespace: str, name: str, timeout: float, out: TextIO = sys.stdout,
           poll: float = 0.5, clock: Callable[[], float] = time.monotonic) -> int:
    """Print phase changes and events of job ``namespace/name`` until it ends; the exit code."""
    import kubernetes
    deadline, phase, seen = clock() + timeout, None, set()
    while clock() < deadline:
        try:
            job = custom.get_namespaced_custom_object(n.GROUP, n.VERSION, namespace, n.PLURAL, name,
                                                      _request_timeout=30)
        except kubernetes.client.ApiException as e:
            if e.status == 404:
                print(f"PaddleJob {namespace}/{name} does not exist (deleted?)", file=out, flush=True)
                return 2
            raise
        uid = job["metadata"]["uid"]
        events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.uid={uid}",
                                            _request_timeout=30).items
        for ev in sorted(events, key=lambda e: (e.last_timestamp or e.first_timestamp or 0, e.metadata.name)):
            if ev.metadata.uid not in seen:
                seen.add(ev.metadata.uid)
                print(f"event {ev.type} {ev.reason}: {ev.message}", file=out, flush=True)
        status = job.get("status") or {}
        if status.get("phase") != phase:
            phase = status.get("phase")
            print(f"PaddleJob {namespace}/{name}: {phase}", file=out, flush=True)
        if phase in ("Succeeded", "Failed"):
            last = (status.get("conditions") or [{}])[-1]
            print(f"{phase}: {last.get('reason', '')}: {last.get('message', '')}", file=out, flush=True)
            return 0 if phase == "Succeeded" else 1
        time.sleep(poll)
    print(f"PaddleJob {namespace}/{name}: still {phase} after --timeout={timeout:g}s", file=out, flush=True)
    return 2
