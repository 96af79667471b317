"""The operator process: thin kopf handlers around ``status.plan``.

One kopf timer per job (every ``RESYNC_SECONDS``; ``FINISHED_RESYNC_SECONDS`` once
it Succeeded or Failed) does a level-based reconcile:
read the job and its pods from the API server, ``plan`` the next status, write
the status first (optimistic concurrency on the job's resourceVersion, so two
reconciles never overwrite each other and a restarted operator loses nothing),
then create or delete pods and services and post the events.  Nothing is kept
in memory between reconciles; kill the operator at any moment and start it
again.  Run with ``fleetkit operator`` (``--kubeflow`` also reconciles
``kubeflow.org/v1`` PaddleJobs).
"""
from __future__ import annotations

import logging
import secrets
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

import kopf
import kubernetes

from ..env import log_level
from . import names as n
from .builders import build_pod, build_secret, build_service
from .kubeflow import from_kubeflow, to_kubeflow_status
from .spec import SpecError, normalize
from .status import FAILED, FINAL, Plan, fmt_time, plan, set_condition

log = logging.getLogger("fleetkit.operator")
REQUEST_TIMEOUT = 30.0          # seconds per API call: a hung API server never hangs a reconcile
RESYNC_SECONDS = 1.0            # running jobs
FINISHED_RESYNC_SECONDS = 5.0   # finished jobs: cleanPodPolicy and ttlSecondsAfterFinished


class Cluster:
    """The few API calls the operator makes (kubernetes client, sync), 404/409 tolerant."""

    def __init__(self, api_client: Any = None):
        self.api = api_client or kubernetes.client.ApiClient()
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)

    def to_dict(self, obj: Any) -> dict[str, Any]:
        return self.api.sanitize_for_serialization(obj)

    def get_job(self, group: str, ns: str, name: str) -> dict[str, Any] | None:
        return _ignore(404, lambda: self.custom.get_namespaced_custom_object(
            group, n.VERSION, ns, n.PLURAL, name, _request_timeout=REQUEST_TIMEOUT))

    def pods(self, ns: str, job: str, uid: str) -> list[dict[str, Any]]:
        pods = self.core.list_namespaced_pod(ns, label_selector=f"{n.LABEL_JOB}={job}",
                                             _request_timeout=REQUEST_TIMEOUT).items
        # a job deleted and created again under the same name must not adopt the old one's pods
        return [p for p in map(self.to_dict, pods)
                if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or [])]

    def create(self, kind: str, ns: str, body: Mapping[str, Any]) -> None:
        fn = {"Pod": self.core.create_namespaced_pod, "Service": self.core.create_namespaced_service,
              "Secret": self.core.create_namespaced_secret}[kind]
        # deterministic names: AlreadyExists means an earlier reconcile did it
        _ignore(409, lambda: fn(ns, body, _request_timeout=REQUEST_TIMEOUT))

    def delete(self, kind: str, ns: str, name: str) -> None:
        fn = {"Pod": self.core.delete_namespaced_pod, "Service": self.core.delete_namespaced_service}[kind]
        _ignore(404, lambda: fn(name, ns, _request_timeout=REQUEST_TIMEOUT))

    def patch_status(self, group: str, job: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
        """Write ``status`` if the job is still at the version we read; False on a conflict."""
        meta = job["metadata"]
        body = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status}
        try:
            self.custom.patch_namespaced_custom_object_status(
                group, n.VERSION, meta["namespace"], n.PLURAL, meta["name"], body,
                _request_timeout=REQUEST_TIMEOUT)
        except kubernetes.client.ApiException as e:
            if e.status in (404, 409):
                return False
            raise
        return True

    def delete_job(self, group: str, ns: str, name: str) -> None:
        _ignore(404, lambda: self.custom.delete_namespaced_custom_object(
            group, n.VERSION, ns, n.PLURAL, name, _request_timeout=REQUEST_TIMEOUT))

    def event(self, job: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        meta, now = job["metadata"], fmt_time(datetime.now(timezone.utc))
        self.core.create_namespaced_event(meta["namespace"], {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": job["apiVersion"], "kind": job["kind"], "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "type": kind, "reason": reason, "message": message[:1024], "count": 1,
            "firstTimestamp": now, "lastTimestamp": now, "source": {"component": "fleetkit-operator"}},
            _request_timeout=REQUEST_TIMEOUT)


def _ignore(code: int, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except kubernetes.client.ApiException as e:
        if e.status != code:
            raise
        return None


def _invalid(cluster: Cluster, group: str, raw: Mapping[str, Any], err: SpecError) -> None:
    status = dict(raw.get("status") or {})
    if status.get("phase") == FAILED:
        return
    now = fmt_time(datetime.now(timezone.utc))
    status["conditions"] = set_condition(status.get("conditions") or [], FAILED, "FailedValidation", str(err), now)
    status.update(phase=FAILED, completionTime=now)
    if cluster.patch_status(group, raw, status):
        cluster.event(raw, "Warning", "FailedValidation", str(err))


def reconcile(cluster: Cluster, group: str, namespace: str, name: str) -> Plan | None:
    """One level-based reconcile of job ``namespace/name`` of API ``group``; returns what it did."""
    raw = cluster.get_job(group, namespace, name)
    if raw is None or raw["metadata"].get("deletionTimestamp"):
        return None                              # being deleted: the garbage collector takes the rest
    kubeflow = group == n.KUBEFLOW_GROUP
    try:
        job = normalize(from_kubeflow(raw) if kubeflow else raw)
    except SpecError as e:
        _invalid(cluster, group, raw, e)
        return None
    old = raw.get("status") or {}
    p = plan(job, old, cluster.pods(namespace, name, job["uid"]), datetime.now(timezone.utc))
    status = to_kubeflow_status(p.status) if kubeflow else p.status
    if status != old and not cluster.patch_status(group, raw, status):
        return None                              # someone wrote first: decide again next tick
    if p.create and p.status.get("phase") not in FINAL:
        cluster.create("Secret", namespace, build_secret(job, secrets.token_hex(32)))
        for role, i in p.create:                 # every service first: names resolve before any pod runs
            cluster.create("Service", namespace, build_service(job, role, i))
        for role, i in p.create:
            cluster.create("Pod", namespace, build_pod(job, role, i))
    for pod in p.delete_pods:
        cluster.delete("Pod", namespace, pod)
    for svc in p.delete_services:
        cluster.delete("Service", namespace, svc)
    for kind, reason, message in p.events:
        log.info("%s/%s: %s: %s", namespace, name, reason, message)
        cluster.event(raw, kind, reason, message)
    if p.delete_job:
        log.info("%s/%s: deleted ttlSecondsAfterFinished after completion", namespace, name)
        cluster.delete_job(group, namespace, name)
    return p


def make_registry(kubeflow: bool = False) -> kopf.OperatorRegistry:
    """A kopf registry with the reconcile timer for our PaddleJobs (and Kubeflow's with ``kubeflow``)."""
    registry = kopf.OperatorRegistry()
    cluster: list[Cluster] = []

    @kopf.on.startup(registry=registry)
    def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False         # our events are explicit, not log lines
        settings.execution.max_workers = 16      # reconciles are sync calls in threads
        # a job deleted from its own timer (TTL) keeps kopf's finalizer until kopf sees
        # that timer exit: look every second, not every minute
        settings.background.cancellation_polling = 1.0
        settings.persistence.finalizer = "fleetkit.io/operator"
        if logging.getLogger().level > logging.DEBUG:                   # "Timer succeeded" every second
            logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        cluster.append(Cluster())

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> Any:
        return kopf.login_via_client(**kwargs)   # the same credentials as the kubernetes client

    groups = [n.GROUP] + ([n.KUBEFLOW_GROUP] if kubeflow else [])
    for group in groups:
        def _tick(name: str, namespace: str, group: str = group, **_: Any) -> None:
            reconcile(cluster[0], group, namespace, name)
        # a finished job only needs its cleanup and TTL: reconcile it rarely, so a
        # namespace full of old jobs does not starve the running ones
        kopf.timer(group, n.VERSION, n.PLURAL, interval=RESYNC_SECONDS, registry=registry,
                   id=f"reconcile-{group}", when=_active)(_tick)
        kopf.timer(group, n.VERSION, n.PLURAL, interval=FINISHED_RESYNC_SECONDS, registry=registry,
                   id=f"finished-{group}", when=_finished)(_tick)
    return registry


def _finished(status: Mapping[str, Any], **_: Any) -> bool:
    return (status or {}).get("phase") in FINAL


def _active(status: Mapping[str, Any], **_: Any) -> bool:
    return not _finished(status)


def load_config(kubeconfig: str | None = None) -> None:
    """Credentials for the kubernetes client: in-cluster service account, else the kubeconfig."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=kubeconfig)


def run(kubeflow: bool = False, namespaces: list[str] | None = None, kubeconfig: str | None = None) -> int:
    """Run the operator until SIGINT/SIGTERM (``fleetkit operator``)."""
    level = log_level() or "INFO"
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    load_config(kubeconfig)
    kopf.run(registry=make_registry(kubeflow), standalone=True,
             clusterwide=not namespaces, namespaces=namespaces or ())
    return 0
