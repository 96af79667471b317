"""Helpers of the Kubernetes e2e tests: job manifests for the scripts in jobs/, waiting on jobs."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from fleetkit.operator_k8s import names as n
from fleetkit.operator_k8s.submit import build_job

JOBS = Path(__file__).resolve().parent / "jobs"
REPO = Path(__file__).resolve().parents[3]
IMAGE_ROOT = "/opt/fleetkit/"    # where deploy/Dockerfile puts the repository


def example(name: str, ns: str) -> dict[str, Any]:
    """deploy/examples/<name>.yaml as the test kubelet can run it: the image's python and
    /opt/fleetkit are this interpreter and this checkout; nothing else changes."""
    import yaml
    body = yaml.safe_load((REPO / "deploy" / "examples" / f"{name}.yaml").read_text())
    body["metadata"]["namespace"] = ns

    def local(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: ([sys.executable] + [local(a) for a in v[1:]] if k == "command" and v[0] == "python"
                        else local(v)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [local(v) for v in obj]
        return obj.replace(IMAGE_ROOT, f"{REPO}/") if isinstance(obj, str) else obj
    return local(body)
ENV = {"OMP_NUM_THREADS": "1"}   # 2 cores shared by every pod


def job(name: str, ns: str, script: str, args: list[str] | None = None, ps: int = 0, workers: int = 1,
        **kw: Any) -> dict[str, Any]:
    """A PaddleJob running ``jobs/<script>`` with this interpreter (the test kubelet's "image")."""
    return build_job(name=name, namespace=ns, image="fleetkit:test", script=str(JOBS / script),
                     script_args=list(args or []), server_num=ps, worker_num=workers, python=sys.executable,
                     env=ENV, **kw)


def create(cluster: Any, body: dict[str, Any], group: str = n.GROUP) -> None:
    import kubernetes
    kubernetes.client.CustomObjectsApi(cluster.api).create_namespaced_custom_object(
        group, n.VERSION, body["metadata"]["namespace"], n.PLURAL, body)


def get(cluster: Any, ns: str, name: str, group: str = n.GROUP) -> dict[str, Any]:
    import kubernetes
    return kubernetes.client.CustomObjectsApi(cluster.api).get_namespaced_custom_object(
        group, n.VERSION, ns, n.PLURAL, name)


def wait_phase(cluster: Any, ns: str, name: str, phases: tuple[str, ...] = ("Succeeded", "Failed"),
               timeout: float = 120, group: str = n.GROUP) -> dict[str, Any]:
    """The job once its phase is one of ``phases`` (TimeoutError with the last status otherwise)."""
    deadline, status = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        obj = get(cluster, ns, name, group)
        status = obj.get("status") or {}
        if status.get("phase") in phases:
            return obj
        time.sleep(0.5)
    raise TimeoutError(f"job {ns}/{name} not {phases} within {timeout} s; status {status}")


def pods(cluster: Any, ns: str, name: str) -> list[Any]:
    import kubernetes
    return kubernetes.client.CoreV1Api(cluster.api).list_namespaced_pod(
        ns, label_selector=f"{n.LABEL_JOB}={name}").items


def events(cluster: Any, ns: str, uid: str) -> list[tuple[str, str]]:
    import kubernetes
    evs = kubernetes.client.CoreV1Api(cluster.api).list_namespaced_event(
        ns, field_selector=f"involvedObject.uid={uid}").items
    return [(e.reason, e.message) for e in evs]


def last_condition(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["status"]["conditions"][-1]
