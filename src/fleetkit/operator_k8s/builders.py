"""Pure builders: the pods, headless services and auth Secret of a normalized job.

Every name a process needs is known when the job is created: pod ``i`` of role
``r`` is reachable at ``{job}-{r}-{i}:{port}`` through its own headless service
(``publishNotReadyAddresses``: resolvable before the pod is ready), so all pods
are created together with their whole env, with no init container and no
ConfigMap written later.  ``POD_IP`` is that stable name too: a pserver finds
itself in ``PADDLE_PSERVERS_IP_PORT_LIST`` as ``POD_IP:PADDLE_PORT``.
"""
from __future__ import annotations

import base64
import copy
from typing import Any, Mapping

from .. import env as envnames
from . import names as n


def owner_reference(job: Mapping[str, Any]) -> dict[str, Any]:
    """The controller owner reference to ``job``: the garbage collector deletes dependents with it."""
    return {"apiVersion": job["apiVersion"], "kind": job["kind"], "name": job["name"], "uid": job["uid"],
            "controller": True, "blockOwnerDeletion": True}


def labels(job: Mapping[str, Any], role: str, index: int) -> dict[str, str]:
    """The labels of a pod (and its service's selector)."""
    return {n.LABEL_JOB: job["name"], n.LABEL_ROLE: role, n.LABEL_INDEX: str(index)}


def endpoints(job: Mapping[str, Any], role: str) -> list[str]:
    """Stable ``host:port`` of every replica of ``role`` (empty when the role is absent)."""
    spec = job["roles"].get(role)
    count = spec["replicas"] if spec else 0
    return [f"{n.pod_name(job['name'], role, i)}:{job['port']}" for i in range(count)]


def pod_env(job: Mapping[str, Any], role: str, index: int) -> list[dict[str, Any]]:
    """The env contract of one pod (Paddle's PaddleCloud names, read by fleetkit.env)."""
    e = envnames
    host = n.pod_name(job["name"], role, index)
    trainers = endpoints(job, n.ROLE_WORKER)
    paddle_role = e.ROLE_PSERVER if role == n.ROLE_PS else e.ROLE_TRAINER
    values = {
        e.TRAINING_ROLE: paddle_role, e.PADDLE_TRAINING_ROLE: paddle_role,
        e.PADDLE_TRAINER_ID: str(index), e.PADDLE_TRAINERS_NUM: str(len(trainers)),
        e.PADDLE_TRAINER_ENDPOINTS: ",".join(trainers),
        e.PADDLE_CURRENT_ENDPOINT: f"{host}:{job['port']}",
        e.POD_IP: host, e.PADDLE_PORT: str(job["port"]),
        "PADDLE_JOB_ID": job["name"],
        "PADDLE_NNODES": str(sum(r["replicas"] for r in job["roles"].values())),
        "PYTHONUNBUFFERED": "1",
    }
    if job["mode"] == "PS":
        values[e.PADDLE_PSERVERS_IP_PORT_LIST] = ",".join(endpoints(job, n.ROLE_PS))
    out = [{"name": k, "value": v} for k, v in values.items()]
    out.append({"name": e.FLEETKIT_AUTH_TOKEN, "valueFrom": {"secretKeyRef": {
        "name": n.secret_name(job["name"]), "key": n.SECRET_KEY}}})
    return out


def main_container(pod_spec: Mapping[str, Any]) -> Mapping[str, Any]:
    """The container whose exit code decides: the one named ``paddle``, else the first."""
    containers = pod_spec.get("containers") or [{}]
    return next((c for c in containers if c.get("name") == n.MAIN_CONTAINER), containers[0])


def _with_env(container: dict[str, Any], injected: list[dict[str, Any]]) -> None:
    ours = {v["name"] for v in injected}
    # ours win over the template's: a stale PADDLE_* in a template would break the job
    container["env"] = [v for v in container.get("env", []) if v.get("name") not in ours] + injected


def build_pod(job: Mapping[str, Any], role: str, index: int) -> dict[str, Any]:
    """The pod of replica ``index`` of ``role``, from that role's template."""
    spec = job["roles"][role]
    template = copy.deepcopy(spec["template"])
    meta = template.get("metadata") or {}
    name = n.pod_name(job["name"], role, index)
    pod_spec = template["spec"]
    # ExitCode: the pod never restarts itself, the operator decides from the code
    pod_spec["restartPolicy"] = "OnFailure" if spec["restartPolicy"] == n.RESTART_ON_FAILURE else "Never"
    pod_spec.setdefault("hostname", name)
    injected = pod_env(job, role, index)
    for c in pod_spec["containers"]:
        _with_env(c, injected)
    main = main_container(pod_spec)
    if not any(p.get("containerPort") == job["port"] for p in main.get("ports", [])):
        main.setdefault("ports", []).append({"name": n.PORT_NAME, "containerPort": job["port"]})
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": job["namespace"],
                     "labels": {**(meta.get("labels") or {}), **labels(job, role, index)},
                     "annotations": dict(meta.get("annotations") or {}),
                     "ownerReferences": [owner_reference(job)]},
        "spec": pod_spec,
    }


def build_service(job: Mapping[str, Any], role: str, index: int) -> dict[str, Any]:
    """The headless service giving pod ``index`` of ``role`` its stable DNS name."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": n.pod_name(job["name"], role, index), "namespace": job["namespace"],
                     "labels": labels(job, role, index), "ownerReferences": [owner_reference(job)]},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": labels(job, role, index),
                 "ports": [{"name": n.PORT_NAME, "port": job["port"], "targetPort": job["port"]}]},
    }


def build_secret(job: Mapping[str, Any], token: str) -> dict[str, Any]:
    """The job's auth Secret; every pod reads ``token`` as ``FLEETKIT_AUTH_TOKEN``."""
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": n.secret_name(job["name"]), "namespace": job["namespace"],
                     "labels": {n.LABEL_JOB: job["name"]}, "ownerReferences": [owner_reference(job)]},
        "data": {n.SECRET_KEY: base64.b64encode(token.encode()).decode()},
    }


def desired_pods(job: Mapping[str, Any]) -> list[tuple[str, int]]:
    """Every ``(role, index)`` the job should have, pservers first."""
    return [(role, i) for role in n.ROLES if role in job["roles"] for i in range(job["roles"][role]["replicas"])]
