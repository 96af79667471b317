"""Fixtures of the Kubernetes e2e tier: a real control plane (etcd, kube-apiserver,
kube-controller-manager 1.20.2, from scripts/k8s/cluster.sh's cache), the test
kubelet, the operator as a real process, one namespace per test.

A missing toolchain FAILS the tier (run scripts/k8s/ci_setup.sh), it never skips.
"""
from __future__ import annotations

import ctypes
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
CLUSTER_SH = REPO / "scripts" / "k8s" / "cluster.sh"
CRDS = [REPO / "deploy" / "crd" / "paddlejob.yaml", REPO / "deploy" / "kubeflow" / "paddlejob-crd.yaml"]

pytestmark = pytest.mark.e2e


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _wait(cond: Any, timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:g} s")


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies (PR_SET_PDEATHSIG), teardown or not."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


@dataclass
class Cluster:
    """A running control plane plus test kubelet."""

    state: Path
    kubeconfig: Path
    api: Any

    @property
    def logs(self) -> Path:
        return self.state / "kubelet" / "logs"

    def pod_log(self, ns: str, pod: str, container: str = "paddle") -> str:
        path = self.logs / f"{ns}_{pod}_{container}.log"
        return path.read_text() if path.exists() else ""

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}


def _install_crds(api: Any) -> None:
    import kubernetes
    import yaml
    ext = kubernetes.client.ApiextensionsV1Api(api)
    for path in CRDS:
        ext.create_custom_resource_definition(yaml.safe_load(path.read_text()))
    for path in CRDS:
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        _wait(lambda: any(c.type == "Established" and c.status == "True"
                          for c in ext.read_custom_resource_definition(name).status.conditions or []),
              30, f"CRD {name} Established")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    r = subprocess.run([str(CLUSTER_SH), "bin"], capture_output=True, text=True, timeout=30)
    if r.returncode:
        pytest.fail(f"Kubernetes e2e toolchain missing ({r.stderr.strip()}): run scripts/k8s/ci_setup.sh",
                    pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the Kubernetes e2e tier needs root (the test kubelet creates network namespaces)",
                    pytrace=False)
    import kubernetes
    state = tmp_path_factory.mktemp("k8s")
    etcd, peer, apiserver = _free_ports(3)
    env = {**os.environ, "ETCD_PORT": str(etcd), "ETCD_PEER_PORT": str(peer), "APISERVER_PORT": str(apiserver),
           "FLEETKIT_K8S_PARENT_PID": str(os.getpid())}
    kubelet = None
    try:
        subprocess.run([str(CLUSTER_SH), "start-apiserver", str(state)], env=env, check=True, timeout=120)
        api = kubernetes.config.new_client_from_config(config_file=str(state / "kubeconfig"))
        _install_crds(api)
        subprocess.run([str(CLUSTER_SH), "start-kcm", str(state)], env=env, check=True, timeout=60)
        kcm_log = state / "kcm.log"
        _wait(lambda: kcm_log.exists() and "all resource monitors have synced" in kcm_log.read_text(), 120,
              "kube-controller-manager's garbage collector")
        (state / "kubelet").mkdir()
        with open(state / "kubelet.log", "wb") as log:   # the child keeps its own copy of the fd
            kubelet = subprocess.Popen([sys.executable, str(HERE / "kubelet.py"), "--kubeconfig",
                                        str(state / "kubeconfig"), "--state", str(state / "kubelet")],
                                       stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                                       env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
        core = kubernetes.client.CoreV1Api(api)
        _wait(lambda: any(c.type == "Ready" and c.status == "True" for node in core.list_node().items
                          for c in node.status.conditions or []), 30, "test kubelet's node Ready")
        yield Cluster(state, state / "kubeconfig", api)
    finally:
        if kubelet is not None:
            kubelet.terminate()
            try:
                kubelet.wait(30)
            except subprocess.TimeoutExpired:
                kubelet.kill()
                kubelet.wait(10)
        subprocess.run([str(CLUSTER_SH), "stop", str(state)], timeout=60)


class Operator:
    """``fleetkit operator --kubeflow`` as a real process; kill -9 and start again."""

    def __init__(self, cluster: Cluster):
        self.cluster, self.proc, self.starts = cluster, None, 0

    def start(self, kubeconfig: Path | None = None) -> None:
        self.starts += 1
        with open(self.cluster.state / f"operator-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "fleetkit", "operator", "--kubeflow",
                                          "--kubeconfig", str(kubeconfig or self.cluster.kubeconfig)],
                                         stdout=log, stderr=subprocess.STDOUT, env=self.cluster.env(),
                                         preexec_fn=_die_with_parent)

    def sigkill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def output(self) -> str:
        return "\n".join((self.cluster.state / f"operator-{i}.log").read_text()
                         for i in range(1, self.starts + 1))


@pytest.fixture(scope="session")
def operator(cluster: Cluster):
    op = Operator(cluster)
    op.start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def ns(cluster: Cluster, operator: Operator, request: pytest.FixtureRequest) -> str:
    """A fresh namespace per test (names never collide; the operator watches all)."""
    import kubernetes
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name[5:].lower())[:30].strip("-")
    name = f"t{secrets.token_hex(3)}-{slug}"[:63].rstrip("-")
    kubernetes.client.CoreV1Api(cluster.api).create_namespace({"metadata": {"name": name}})
    return name
