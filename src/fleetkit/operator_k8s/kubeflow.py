"""Kubeflow ``kubeflow.org/v1`` PaddleJob -> our ``fleetkit.io/v1`` shape (one pure function).

Kubeflow's spec: ``paddleReplicaSpecs`` with ``Master`` (parameter servers) and
``Worker`` (trainers; no Master means collective), each ``{replicas,
restartPolicy, template}``, and ``runPolicy {cleanPodPolicy, backoffLimit,
activeDeadlineSeconds, ttlSecondsAfterFinished, ...}``.  Kubeflow's defaults are
kept: restartPolicy ``OnFailure``, cleanPodPolicy ``None``, the port is the
``paddle`` container's port named ``master`` (36543 when absent).  ``Always``
becomes ``OnFailure``: a training pod that exited 0 is done, not restarted.
The rest of the operator only sees the converted job (``apiVersion`` stays
Kubeflow's so the pods' owner is the Kubeflow object).
"""
from __future__ import annotations

from typing import Any, Mapping

from . import names as n
from .spec import SpecError

_ROLE_OF = {"master": n.ROLE_PS, "worker": n.ROLE_WORKER}
_KUBEFLOW_NAME = {n.ROLE_PS: "Master", n.ROLE_WORKER: "Worker"}


def _port(template: Mapping[str, Any]) -> int | None:
    for c in (template.get("spec") or {}).get("containers") or []:
        if c.get("name") == n.MAIN_CONTAINER:
            for p in c.get("ports") or []:
                if p.get("name") == "master" and p.get("containerPort"):
                    return int(p["containerPort"])
    return None


def from_kubeflow(job: Mapping[str, Any]) -> dict[str, Any]:
    """Our PaddleJob (a dict) equivalent to the Kubeflow PaddleJob ``job``; raises ``SpecError``."""
    meta = dict(job.get("metadata") or {})
    spec = job.get("spec") or {}
    replicas = spec.get("paddleReplicaSpecs")
    if not isinstance(replicas, Mapping) or not replicas:
        raise SpecError(meta.get("name", ""), ["spec.paddleReplicaSpecs: is required (keys Master, Worker)"])
    ours: dict[str, Any] = {}
    problems = []
    port = None
    for key, rs in replicas.items():
        role = _ROLE_OF.get(str(key).lower())   # Kubeflow's defaulting fixes the key's case too
        if role is None:
            problems.append(f"spec.paddleReplicaSpecs.{key}: unknown replica type (Master or Worker)")
            continue
        rs = rs or {}
        policy = rs.get("restartPolicy", n.RESTART_ON_FAILURE)
        ours[role] = {"replicas": rs.get("replicas", 1), "template": rs.get("template"),
                      "restartPolicy": n.RESTART_ON_FAILURE if policy == "Always" else policy}
        port = port or _port(rs.get("template") or {})
    if problems:
        raise SpecError(meta.get("name", ""), problems)
    run = dict(spec.get("runPolicy") or {})
    ours["cleanPodPolicy"] = run.pop("cleanPodPolicy", n.CLEAN_NONE)
    ours["runPolicy"] = {k: run[k] for k in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished")
                         if run.get(k) is not None}
    ours["port"] = port or n.DEFAULT_PORT
    return {"apiVersion": job.get("apiVersion", n.KUBEFLOW_API_VERSION), "kind": n.KIND,
            "metadata": meta, "spec": ours}


def to_kubeflow_status(status: Mapping[str, Any]) -> dict[str, Any]:
    """Our status written the way Kubeflow's clients read it (``replicaStatuses.Master|Worker``)."""
    out = dict(status)
    out["replicaStatuses"] = {_KUBEFLOW_NAME[r]: c for r, c in (status.get("replicaStatuses") or {}).items()}
    return out
