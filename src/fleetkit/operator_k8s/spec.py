"""Defaults and validation of a ``PaddleJob`` (our ``fleetkit.io/v1`` shape).

``normalize(job)`` returns a flat, defaulted view the builders and the status
machine read, or raises ``SpecError`` listing every problem, each naming its
field (``spec.worker.replicas: ...``).  The API server's schema refuses most bad
specs already; this catches the rest (and specs converted from Kubeflow's shape,
which our schema never saw).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from ..errors import ConfigError
from . import names as n

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_RUN_POLICY_INTS = ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished", "pendingTimeoutSeconds")


class SpecError(ConfigError):
    """A PaddleJob spec is invalid; ``problems`` lists each bad field with its value."""

    def __init__(self, job: str, problems: list[str]):
        self.job, self.problems = job, list(problems)
        super().__init__(f"PaddleJob {job!r} is invalid: " + "; ".join(problems))


def _int_field(value: Any, field: str, minimum: int, problems: list[str]) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        problems.append(f"{field}: must be an integer >= {minimum}, got {value!r}")
        return None
    return value


def _role(spec: Mapping[str, Any], role: str, problems: list[str]) -> dict[str, Any] | None:
    raw = spec.get(role)
    field = f"spec.{role}"
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        problems.append(f"{field}: must be an object, got {type(raw).__name__}")
        return None
    replicas = _int_field(raw.get("replicas", 1), f"{field}.replicas", 1, problems)
    policy = raw.get("restartPolicy", n.RESTART_NEVER)
    if policy not in n.RESTART_POLICIES:
        problems.append(f"{field}.restartPolicy: must be one of {', '.join(n.RESTART_POLICIES)}, got {policy!r}")
    template = raw.get("template")
    containers = (template or {}).get("spec", {}).get("containers") if isinstance(template, Mapping) else None
    if not isinstance(containers, list) or not containers:
        problems.append(f"{field}.template.spec.containers: at least one container is required")
    else:
        for i, c in enumerate(containers):
            if not isinstance(c, Mapping) or not c.get("name") or not c.get("image"):
                problems.append(f"{field}.template.spec.containers[{i}]: needs a name and an image")
    return {"replicas": replicas or 1, "restartPolicy": policy, "template": template}


def normalize(job: Mapping[str, Any]) -> dict[str, Any]:
    """The defaulted view of ``job`` (a PaddleJob object as a dict); raises ``SpecError``."""
    meta = job.get("metadata") or {}
    name = meta.get("name") or ""
    spec = job.get("spec")
    problems: list[str] = []
    if not _DNS1035.match(name) or len(name) > n.MAX_JOB_NAME:
        problems.append(f"metadata.name: {name!r} must be a DNS-1035 label (a-z, 0-9, '-', starting with a "
                        f"letter) of at most {n.MAX_JOB_NAME} characters")
    if not isinstance(spec, Mapping):
        raise SpecError(name, problems + ["spec: is required"])
    roles = {r: _role(spec, r, problems) for r in n.ROLES}
    if roles[n.ROLE_WORKER] is None and "worker" not in spec:
        problems.append("spec.worker: is required (the trainers; add spec.ps for parameter-server mode)")
    clean = spec.get("cleanPodPolicy", n.DEFAULT_CLEAN_POD_POLICY)
    if clean not in n.CLEAN_POLICIES:
        problems.append(f"spec.cleanPodPolicy: must be one of {', '.join(n.CLEAN_POLICIES)}, got {clean!r}")
    run = spec.get("runPolicy") or {}
    if not isinstance(run, Mapping):
        problems.append(f"spec.runPolicy: must be an object, got {type(run).__name__}")
        run = {}
    run_policy = {k: _int_field(run.get(k), f"spec.runPolicy.{k}", 0 if k != "activeDeadlineSeconds" else 1,
                                problems) for k in _RUN_POLICY_INTS}
    if run_policy["backoffLimit"] is None and "backoffLimit" not in run:
        run_policy["backoffLimit"] = n.DEFAULT_BACKOFF_LIMIT
    port = _int_field(spec.get("port", n.DEFAULT_PORT), "spec.port", 1, problems)
    if port is not None and port > 65535:
        problems.append(f"spec.port: must be <= 65535, got {port}")
    if problems:
        raise SpecError(name, problems)
    return {
        "name": name, "namespace": meta.get("namespace") or "default", "uid": meta.get("uid", ""),
        "apiVersion": job.get("apiVersion", n.API_VERSION), "kind": job.get("kind", n.KIND),
        "mode": "PS" if roles[n.ROLE_PS] else "Collective",
        "roles": {r: v for r, v in roles.items() if v is not None},
        "cleanPodPolicy": clean, "port": port or n.DEFAULT_PORT, **run_policy,
    }
