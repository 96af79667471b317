"""The test kubelet: the one stand-in of the e2e tier, for the container runtime.

It plays scheduler and kubelet for one Node against the real API server:
binds pending pods whose nodeSelector its node satisfies (others stay Pending,
``Unschedulable``, as with a real scheduler), runs each container's
command + args as a local process with the pod's env (``value``, ``$(VAR)``,
``fieldRef``, ``secretKeyRef``, ``configMapKeyRef``) inside the pod's own network
namespace (``podnet``), and reports real status: phase, container states,
exit codes (128 + signal when killed), restart counts, podIP.  Images are not
pulled: the kubelet's PATH stands in for them.  A deleted pod's processes get
SIGTERM then SIGKILL, then the pod object is removed.  Logs:
``STATE/logs/<namespace>_<pod>_<container>.log``.

    python kubelet.py --kubeconfig K --state DIR [--node NAME]
"""
from __future__ import annotations

import argparse
import base64
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

import kubernetes
from kubernetes.client import ApiException

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from podnet import PodNetwork, write_hosts  # noqa: E402

log = logging.getLogger("test-kubelet")
POLL, HEARTBEAT, KILL_GRACE = 0.25, 10.0, 3.0


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Container:
    """One container's process and its reported state."""

    def __init__(self, spec: dict[str, Any]):
        self.spec, self.name = spec, spec["name"]
        self.proc: subprocess.Popen | None = None
        self.restarts, self.started, self.exit_at = 0, "", 0.0
        self.state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self.last: dict[str, Any] = {}

    def status(self) -> dict[str, Any]:
        state = {"waiting": None, "running": None, "terminated": None, **self.state}
        return {"name": self.name, "image": self.spec.get("image", ""), "imageID": "", "restartCount": self.restarts,
                "ready": "running" in self.state, "started": "running" in self.state,
                "state": state, "lastState": self.last}


class PodRun:
    """A pod this kubelet runs."""

    def __init__(self, pod: dict[str, Any], netns: str, ip: str):
        self.pod, self.netns, self.ip = pod, netns, ip
        self.containers = [Container(c) for c in pod["spec"]["containers"]]
        self.phase, self.start_time, self.hosts = "Pending", now(), {}


class Kubelet:
    def __init__(self, kubeconfig: str, state: str, node: str):
        self.api = kubernetes.config.new_client_from_config(config_file=kubeconfig)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.coord = kubernetes.client.CoordinationV1Api(self.api)
        self.node, self.state = node, state
        os.makedirs(os.path.join(state, "logs"), exist_ok=True)
        self.net = PodNetwork()
        self.runs: dict[str, PodRun] = {}             # pod uid -> run
        self.labels = {"kubernetes.io/hostname": node, "fleetkit.io/test-kubelet": "true"}
        self.unschedulable: set[str] = set()
        self.names: dict[str, dict[str, str]] = {}    # namespace -> host name -> IP (last dns())
        self.stop = threading.Event()
        self._beat = 0.0

    # --- node --------------------------------------------------------------------------------
    def register(self) -> None:
        cap = {"cpu": "64", "memory": "256Gi", "pods": "250"}
        body = {"metadata": {"name": self.node, "labels": self.labels},
                "status": {"capacity": cap, "allocatable": cap,
                           "addresses": [{"type": "InternalIP", "address": self.net.gateway}]}}
        try:
            self.core.create_node(body)
        except ApiException as e:
            if e.status != 409:
                raise
        self.heartbeat()

    def heartbeat(self) -> None:
        """Ready condition + node Lease: keeps the node lifecycle controller from tainting the node."""
        t = now()
        self.core.patch_node_status(self.node, {"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test kubelet",
             "lastHeartbeatTime": t, "lastTransitionTime": t}]}})
        renew = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lease = {"metadata": {"name": self.node, "namespace": "kube-node-lease"},
                 "spec": {"holderIdentity": self.node, "leaseDurationSeconds": 40, "renewTime": renew}}
        try:
            self.coord.patch_namespaced_lease(self.node, "kube-node-lease", {"spec": lease["spec"]})
        except ApiException as e:
            if e.status != 404:
                raise
            self.coord.create_namespaced_lease("kube-node-lease", lease)
        self._beat = time.monotonic()

    # --- loop --------------------------------------------------------------------------------
    def loop(self) -> None:
        self.register()
        while not self.stop.is_set():
            try:
                self.sync()
            except Exception:                           # an API hiccup must not kill the node
                log.exception("sync failed")
            self.stop.wait(POLL)

    def sync(self) -> None:
        if time.monotonic() - self._beat > HEARTBEAT:
            self.heartbeat()
        pods = [self.api.sanitize_for_serialization(p) for p in self.core.list_pod_for_all_namespaces().items]
        seen = set()
        for pod in pods:
            uid, spec, meta = pod["metadata"]["uid"], pod["spec"], pod["metadata"]
            seen.add(uid)
            if not spec.get("nodeName"):
                self.schedule(pod)
            elif spec["nodeName"] != self.node:
                continue
            elif meta.get("deletionTimestamp"):
                self.kill(uid)
                self._ignore(404, lambda: self.core.delete_namespaced_pod(meta["name"], meta["namespace"],
                                                                         grace_period_seconds=0))
            elif uid not in self.runs and (pod.get("status") or {}).get("phase") in (None, "Pending"):
                self.start(pod)
            elif uid in self.runs:
                self.check(self.runs[uid])
        for uid in [u for u in self.runs if u not in seen]:
            self.kill(uid)                              # deleted with grace 0 behind our back
        self.dns(pods)

    @staticmethod
    def _ignore(code: int, fn: Any) -> None:
        try:
            fn()
        except ApiException as e:
            if e.status != code:
                raise

    def schedule(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        if spec.get("schedulerName", "default-scheduler") != "default-scheduler" or meta.get("deletionTimestamp"):
            return
        if any(self.labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
            if meta["uid"] not in self.unschedulable:
                self.unschedulable.add(meta["uid"])
                self.core.patch_namespaced_pod_status(meta["name"], meta["namespace"], {"status": {"conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "lastTransitionTime": now(),
                     "message": "0/1 nodes are available: 1 node(s) didn't match node selector."}]}})
            return
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": meta["name"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node}}
        # the generated client cannot read a Binding reply back: skip decoding it
        self._ignore(409, lambda: self.core.create_namespaced_binding(meta["namespace"], body,
                                                                      _preload_content=False))

    # --- pods --------------------------------------------------------------------------------
    def env(self, pod: dict[str, Any], container: dict[str, Any], ip: str) -> dict[str, str]:
        """The container's env as kubelet computes it (raises KeyError naming a missing ref)."""
        meta, ns = pod["metadata"], pod["metadata"]["namespace"]
        fields = {"status.podIP": ip, "metadata.name": meta["name"], "metadata.namespace": ns,
                  "spec.nodeName": self.node, "status.hostIP": self.net.gateway, "metadata.uid": meta["uid"]}
        out: dict[str, str] = {}
        for src in container.get("envFrom") or []:
            data = self.ref_data(ns, src.get("configMapRef") or src.get("secretRef"), "secretRef" in src)
            out.update({src.get("prefix", "") + k: v for k, v in data.items()})
        for var in container.get("env") or []:
            frm = var.get("valueFrom")
            if frm is None:
                out[var["name"]] = expand(var.get("value") or "", out)
            elif "fieldRef" in frm:
                out[var["name"]] = fields[frm["fieldRef"]["fieldPath"]]
            else:
                ref = frm.get("secretKeyRef") or frm.get("configMapKeyRef")
                data = self.ref_data(ns, ref, "secretKeyRef" in frm)
                if ref["key"] not in data:
                    raise KeyError(f"key {ref['key']!r} not in {ref['name']!r}")
                out[var["name"]] = data[ref["key"]]
        return out

    def ref_data(self, ns: str, ref: dict[str, Any], secret: bool) -> dict[str, str]:
        try:
            if secret:
                data = self.core.read_namespaced_secret(ref["name"], ns).data or {}
                return {k: base64.b64decode(v).decode() for k, v in data.items()}
            return self.core.read_namespaced_config_map(ref["name"], ns).data or {}
        except ApiException as e:
            if e.status == 404:
                raise KeyError(f"{'secret' if secret else 'configmap'} {ref['name']!r} not found") from None
            raise

    def start(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            envs = [self.env(pod, c, "0.0.0.0") for c in pod["spec"]["containers"]]
        except KeyError as e:          # as kubelet: wait in CreateContainerConfigError, retry
            self.core.patch_namespaced_pod_status(meta["name"], meta["namespace"], {"status": {
                "containerStatuses": [{"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False,
                                       "restartCount": 0, "state": {"waiting": {
                                           "reason": "CreateContainerConfigError", "message": str(e).strip('"')}}}
                                      for c in pod["spec"]["containers"]]}})
            return
        del envs
        netns, ip = self.net.add()
        run = PodRun(pod, netns, ip)
        self.runs[meta["uid"]] = run
        # as kubelet: the pod's own name resolves from its first instruction on
        run.hosts = {**self.names.get(meta["namespace"], {}), pod["spec"].get("hostname") or meta["name"]: ip}
        write_hosts(netns, run.hosts)
        for c in run.containers:
            self.spawn(run, c)
        run.phase = "Running"
        self.report(run)

    def spawn(self, run: PodRun, c: Container) -> None:
        pod = run.pod
        env = self.env(pod, c.spec, run.ip)
        cmd = [expand(a, env) for a in (c.spec.get("command") or []) + (c.spec.get("args") or [])]
        base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "VIRTUAL_ENV") if k in os.environ}
        full = {**base, "HOSTNAME": pod["spec"].get("hostname") or pod["metadata"]["name"], **env}
        path = os.path.join(self.state, "logs", f"{pod['metadata']['namespace']}_{pod['metadata']['name']}_{c.name}.log")
        with open(path, "ab") as out:
            if not cmd:
                out.write(b"test kubelet: the container has no command (images are not run here)\n")
                c.state = {"terminated": {"exitCode": 127, "reason": "ContainerCannotRun", "finishedAt": now()}}
                return
            c.proc = subprocess.Popen(["ip", "netns", "exec", run.netns, *cmd], env=full, stdout=out,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      cwd=c.spec.get("workingDir") or self.state, start_new_session=True)
        c.started = now()
        c.state = {"running": {"startedAt": c.started}}
        log.info("%s/%s %s: started %s at %s", pod["metadata"]["namespace"], pod["metadata"]["name"], c.name,
                 cmd, run.ip)

    def check(self, run: PodRun) -> None:
        if run.phase in ("Succeeded", "Failed"):
            return
        changed = False
        policy = run.pod["spec"].get("restartPolicy", "Always")
        for c in run.containers:
            if c.proc is None or c.proc.poll() is None:
                continue
            code = c.proc.returncode if c.proc.returncode >= 0 else 128 - c.proc.returncode
            c.proc, changed = None, True
            log.info("%s/%s %s: exited %d", run.pod["metadata"]["namespace"], run.pod["metadata"]["name"], c.name, code)
            c.state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                      "startedAt": c.started, "finishedAt": now()}}
            if policy == "Always" or (policy == "OnFailure" and code != 0):
                c.last, c.restarts = c.state, c.restarts + 1     # restart in place, as kubelet does
                self.spawn(run, c)
        if changed and all("terminated" in c.state for c in run.containers):
            codes = [c.state["terminated"]["exitCode"] for c in run.containers]
            run.phase = "Succeeded" if not any(codes) else "Failed"
            self.net.remove(run.netns)
        if changed:
            self.report(run)

    def report(self, run: PodRun) -> None:
        meta, t = run.pod["metadata"], now()
        ready = "True" if run.phase == "Running" else "False"
        status = {"phase": run.phase, "podIP": run.ip, "podIPs": [{"ip": run.ip}], "hostIP": self.net.gateway,
                  "startTime": run.start_time,
                  "conditions": [{"type": t_, "status": s, "lastTransitionTime": t}
                                 for t_, s in (("Initialized", "True"), ("Ready", ready),
                                               ("ContainersReady", ready), ("PodScheduled", "True"))],
                  "containerStatuses": [c.status() for c in run.containers]}
        self._ignore(404, lambda: self.core.patch_namespaced_pod_status(meta["name"], meta["namespace"],
                                                                        {"status": status}))

    def kill(self, uid: str) -> None:
        run = self.runs.pop(uid, None)
        if run is None:
            return
        procs = [c.proc for c in run.containers if c.proc is not None]
        for p in procs:
            _signal(p, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(p, signal.SIGKILL)
                p.wait(10)
        self.net.remove(run.netns)

    # --- cluster DNS -------------------------------------------------------------------------
    def dns(self, pods: list[dict[str, Any]]) -> None:
        """Headless services -> pod IPs, written to the hosts file of every pod in the namespace."""
        ips = {p["metadata"]["uid"]: r.ip for p in pods for r in [self.runs.get(p["metadata"]["uid"])] if r}
        names: dict[str, dict[str, str]] = {}
        for svc in self.core.list_service_for_all_namespaces().items:
            if svc.spec.cluster_ip != "None" or not svc.spec.selector:
                continue
            ns = svc.metadata.namespace
            for p in pods:
                m = p["metadata"]
                if m["namespace"] == ns and m["uid"] in ips and \
                        all((m.get("labels") or {}).get(k) == v for k, v in svc.spec.selector.items()):
                    for host in (svc.metadata.name, f"{svc.metadata.name}.{ns}", f"{svc.metadata.name}.{ns}.svc",
                                 f"{svc.metadata.name}.{ns}.svc.cluster.local"):
                        names.setdefault(ns, {})[host] = ips[m["uid"]]
        self.names = names
        for run in self.runs.values():
            if run.phase != "Running":
                continue
            own = {run.pod["spec"].get("hostname") or run.pod["metadata"]["name"]: run.ip}
            want = {**names.get(run.pod["metadata"]["namespace"], {}), **own}
            if want != run.hosts:
                write_hosts(run.netns, want)
                run.hosts = want

    def shutdown(self) -> None:
        for uid in list(self.runs):
            self.kill(uid)
        self.net.close()


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(s: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion (unknown references stay as written)."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), s)


def _signal(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--state", required=True)
    ap.add_argument("--node", default="fleetkit-test-node")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s kubelet %(levelname)s %(message)s")
    kubelet = Kubelet(args.kubeconfig, args.state, args.node)
    signal.signal(signal.SIGTERM, lambda *_: kubelet.stop.set())
    try:
        kubelet.loop()
    finally:
        kubelet.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
