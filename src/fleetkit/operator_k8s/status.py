"""The status state machine: observed pods in, next status and actions out (pure).

``plan(job, status, pods, now)`` is the whole decision of one reconcile; the kopf
handler only lists the pods, calls it and applies the ``Plan``.  Because every
decision is recomputed from the API server's state (the status it wrote, the
pods that exist), an operator killed at any moment and started again carries
on where the last one stopped.

Rules:
- Conditions are ordered, ``conditions[-1]`` is the current one and ``phase``
  repeats its type: Created -> Running <-> Restarting -> Succeeded | Failed.
  Succeeded and Failed are final.
- A failed pod is recreated (job ``Restarting``) under ``OnFailure``, and under
  ``ExitCode`` when its code is 128 or more (killed by a signal: retryable);
  ``Never`` and codes 1-127 under ``ExitCode`` fail the job.
- Restarts are counted across recreated pods (``status.restartCount``; the uids
  already counted are kept so a crash between the status write and the pod
  delete never counts a pod twice) plus in-place container restarts of live
  pods; more than ``backoffLimit`` fails the job.
- ``activeDeadlineSeconds`` from ``startTime`` and ``pendingTimeoutSeconds`` per
  pod (from its creation) fail the job.  A failed job's running pods are deleted.
- Success: every worker (trainer) pod Succeeded.  Then ``cleanPodPolicy`` decides
  what goes (None: nothing, Running: pods still active, All: every pod and
  service), and ``ttlSecondsAfterFinished`` deletes the job itself.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from . import names as n
from .builders import desired_pods, main_container

CREATED, RUNNING, RESTARTING, SUCCEEDED, FAILED = "Created", "Running", "Restarting", "Succeeded", "Failed"
FINAL = (SUCCEEDED, FAILED)
_REMEMBERED_UIDS = 64       # bound on status.restartedPods


@dataclass
class Plan:
    """What one reconcile decided: the status to write and the actions to take."""

    status: dict[str, Any]
    create: list[tuple[str, int]] = field(default_factory=list)   #: (role, index) pods to create
    delete_pods: list[str] = field(default_factory=list)
    delete_services: list[str] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)  #: (Normal|Warning, reason, message)
    delete_job: bool = False


def fmt_time(t: datetime) -> str:
    """RFC 3339 in UTC, as the API server writes times."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> datetime | None:
    """Parse an API server time (``...Z`` or ``+00:00`` as the client serializes it); None stays None."""
    if not s:
        return None
    t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def set_condition(conditions: list[dict[str, Any]], ctype: str, reason: str, message: str,
                  now: str) -> list[dict[str, Any]]:
    """Make ``ctype`` the current (last) condition; Running/Restarting before it turn False."""
    conds = [dict(c) for c in conditions]
    if conds and conds[-1]["type"] == ctype and conds[-1]["status"] == "True":
        return conds
    for c in conds:
        if c["type"] in (RUNNING, RESTARTING) and c["status"] == "True":
            c.update(status="False", lastTransitionTime=now, lastUpdateTime=now)
    conds = [c for c in conds if c["type"] != ctype]
    conds.append({"type": ctype, "status": "True", "reason": reason, "message": message,
                  "lastTransitionTime": now, "lastUpdateTime": now})
    return conds


def exit_code(pod: Mapping[str, Any]) -> int | None:
    """The exit code of the pod's main container (None: it never terminated, e.g. evicted)."""
    spec, st = pod.get("spec") or {}, pod.get("status") or {}
    main = main_container(spec).get("name")
    for cs in st.get("containerStatuses") or []:
        if cs.get("name") == main:
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
            return None if term is None else int(term.get("exitCode", 0))
    return None


def _in_place_restarts(pod: Mapping[str, Any]) -> int:
    return sum(int(cs.get("restartCount", 0)) for cs in (pod.get("status") or {}).get("containerStatuses") or [])


def _phase(pod: Mapping[str, Any]) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"


def _counts(job: Mapping[str, Any], pods: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    out = {}
    for role in job["roles"]:
        c = {"active": 0, "succeeded": 0, "failed": 0}
        for (r, i) in desired_pods(job):
            pod = pods.get(n.pod_name(job["name"], r, i))
            if r != role or pod is None:
                continue
            ph = _phase(pod)
            c["succeeded" if ph == "Succeeded" else "failed" if ph == "Failed" else "active"] += 1
        out[role] = c
    return out


class _Reconcile:
    """One reconcile's working state (plan() is its only user)."""

    def __init__(self, job: Mapping[str, Any], status: Mapping[str, Any] | None,
                 pods: list[Mapping[str, Any]], now: datetime):
        self.job, self.now, self.ts = job, now, fmt_time(now)
        self.st: dict[str, Any] = copy.deepcopy(dict(status or {}))
        self.st.setdefault("conditions", [])
        self.st.setdefault("restartCount", 0)
        self.st.setdefault("restartedPods", [])
        self.pods = {p["metadata"]["name"]: p for p in pods}
        self.plan = Plan(self.st)

    def transition(self, ctype: str, reason: str, message: str, warning: bool = False) -> None:
        before = self.st["conditions"][-1]["type"] if self.st["conditions"] else None
        self.st["conditions"] = set_condition(self.st["conditions"], ctype, reason, message, self.ts)
        self.st["phase"] = ctype
        if before != ctype:
            self.plan.events.append(("Warning" if warning else "Normal", reason, message))
        if ctype in FINAL:
            self.st.setdefault("completionTime", self.ts)

    def live(self) -> list[tuple[str, int, Mapping[str, Any]]]:
        """(role, index, pod) of existing pods not being deleted."""
        out = []
        for role, i in desired_pods(self.job):
            pod = self.pods.get(n.pod_name(self.job["name"], role, i))
            if pod is not None and not pod["metadata"].get("deletionTimestamp"):
                out.append((role, i, pod))
        return out

    def retryable(self, role: str, code: int | None) -> bool:
        policy = self.job["roles"][role]["restartPolicy"]
        return policy == n.RESTART_ON_FAILURE or (policy == n.RESTART_EXIT_CODE and (code is None or code >= 128))

    def failures(self) -> tuple[str, str] | None:
        """Scan live pods: recreate retryable failures, return the first permanent failure."""
        j, limit = self.job, self.job["backoffLimit"]
        in_place = sum(_in_place_restarts(p) for _, _, p in self.live())
        for role, i, pod in self.live():
            name, uid, ph = pod["metadata"]["name"], pod["metadata"].get("uid", ""), _phase(pod)
            if ph == "Pending" and j["pendingTimeoutSeconds"] is not None:
                created = parse_time(pod["metadata"].get("creationTimestamp")) or self.now
                if (self.now - created).total_seconds() > j["pendingTimeoutSeconds"]:
                    return "PendingTimeout", (f"pod {name} has been Pending for more than "
                                              f"pendingTimeoutSeconds={j['pendingTimeoutSeconds']}")
            if ph != "Failed":
                continue
            code = exit_code(pod)
            what = f"pod {name} ({role} {i}) failed with exit code {code}"
            if not self.retryable(role, code):
                policy = j["roles"][role]["restartPolicy"]
                why = "permanent under restartPolicy ExitCode" if policy == n.RESTART_EXIT_CODE else \
                    f"restartPolicy {policy}"
                return "PodFailed", f"{what} ({why})"
            if uid in self.st["restartedPods"]:
                self.plan.delete_pods.append(name)         # counted before a crash: delete only
                continue
            count = self.st["restartCount"] + 1 + _in_place_restarts(pod)
            if count + in_place - _in_place_restarts(pod) > limit:
                return "BackoffLimitExceeded", f"{what}; {count} restarts exceed backoffLimit={limit}"
            self.plan.delete_pods.append(name)
            self.st["restartCount"] = count
            self.st["restartedPods"] = (self.st["restartedPods"] + [uid])[-_REMEMBERED_UIDS:]
            in_place -= _in_place_restarts(pod)
            self.transition(RESTARTING, "PodRestarting", f"{what}; recreating it (restart {count} of "
                            f"backoffLimit={limit})", warning=True)
        if self.st["restartCount"] + in_place > limit:
            return "BackoffLimitExceeded", (f"{self.st['restartCount'] + in_place} restarts exceed "
                                            f"backoffLimit={limit}")
        deadline, start = j["activeDeadlineSeconds"], parse_time(self.st.get("startTime"))
        if deadline is not None and start is not None and (self.now - start).total_seconds() > deadline:
            return "DeadlineExceeded", f"job active for more than activeDeadlineSeconds={deadline}"
        return None

    def cleanup(self) -> None:
        """Delete what a finished job no longer needs (cleanPodPolicy; a failed job's active pods)."""
        policy, failed = self.job["cleanPodPolicy"], self.st["phase"] == FAILED
        for role, i, pod in self.live():
            active = _phase(pod) in ("Pending", "Running", "Unknown")
            if policy == n.CLEAN_ALL or (active and (failed or policy == n.CLEAN_RUNNING)):
                if pod["metadata"]["name"] not in self.plan.delete_pods:
                    self.plan.delete_pods.append(pod["metadata"]["name"])
        if policy == n.CLEAN_ALL:
            self.plan.delete_services = [n.pod_name(self.job["name"], r, i) for r, i in desired_pods(self.job)]
        ttl, done = self.job["ttlSecondsAfterFinished"], parse_time(self.st.get("completionTime"))
        if ttl is not None and done is not None and (self.now - done).total_seconds() >= ttl:
            self.plan.delete_job = True

    def run(self) -> Plan:
        j, st = self.job, self.st
        if not st["conditions"]:
            st["startTime"] = self.ts
            self.transition(CREATED, "PaddleJobCreated", f"{j['mode']} job with " + ", ".join(
                f"{r['replicas']} {role}" for role, r in j["roles"].items()))
        if st.get("phase") not in FINAL:
            self.step()
        if st.get("phase") in FINAL:
            self.cleanup()
        counts = _counts(j, self.pods)
        st["mode"], st["replicaStatuses"] = j["mode"], counts
        running = sum(1 for r, _, p in self.live() if r == n.ROLE_WORKER and _phase(p) == "Running")
        st["workersReady"] = f"{running}/{j['roles'][n.ROLE_WORKER]['replicas']}"
        return self.plan

    def step(self) -> None:
        failure = self.failures()
        if failure is not None:
            self.transition(FAILED, *failure, warning=True)
            return
        missing = [(r, i) for r, i in desired_pods(self.job) if n.pod_name(self.job["name"], r, i) not in self.pods]
        self.plan.create = missing
        workers = [p for r, _, p in self.live() if r == n.ROLE_WORKER]
        if len(workers) == self.job["roles"][n.ROLE_WORKER]["replicas"] and \
                all(_phase(p) == "Succeeded" for p in workers):
            self.transition(SUCCEEDED, "PaddleJobSucceeded", f"all {len(workers)} workers succeeded")
            return
        pending = missing or self.plan.delete_pods or len(self.live()) < len(desired_pods(self.job)) or \
            any(_phase(p) not in ("Running", "Succeeded") for _, _, p in self.live())
        if not pending:
            self.transition(RUNNING, "PaddleJobRunning", "all pods are running")


def plan(job: Mapping[str, Any], status: Mapping[str, Any] | None, pods: list[Mapping[str, Any]],
         now: datetime) -> Plan:
    """Decide one reconcile of ``job`` (normalized) from its ``status`` and observed ``pods``."""
    return _Reconcile(job, status, pods, now).run()
