"""The operator runs with deploy/operator/rbac.yaml's ServiceAccount and nothing more."""
from __future__ import annotations

import base64
import time

import kubernetes
import pytest
import yaml
from jobs_util import REPO, create, job, wait_phase

from fleetkit.operator_k8s import names as n

pytestmark = pytest.mark.e2e


def _service_account_kubeconfig(cluster, path):
    """A kubeconfig holding the token the controller-manager minted for fleetkit-operator."""
    core = kubernetes.client.CoreV1Api(cluster.api)
    for doc in yaml.safe_load_all((REPO / "deploy" / "operator" / "rbac.yaml").read_text()):
        kubernetes.utils.create_from_dict(cluster.api, doc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        secrets = [s for s in core.list_namespaced_secret("fleetkit-system").items
                   if s.type == "kubernetes.io/service-account-token" and (s.data or {}).get("token")
                   and (s.metadata.annotations or {}).get("kubernetes.io/service-account.name") == "fleetkit-operator"]
        if secrets:
            break
        time.sleep(0.5)
    else:
        raise TimeoutError("no token Secret for ServiceAccount fleetkit-system/fleetkit-operator in 60 s")
    token = base64.b64decode(secrets[0].data["token"]).decode()
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["users"] = [{"name": "admin", "user": {"token": token}}]
    path.write_text(yaml.safe_dump(config))
    return path


def test_operator_needs_only_its_cluster_role(cluster, operator, ns, tmp_path):
    """PS job (pods, services, secret, events, status) then TTL deletion, with the
    ServiceAccount's token: Succeeded, deleted, and no request was forbidden."""
    kubeconfig = _service_account_kubeconfig(cluster, tmp_path / "sa-kubeconfig")
    operator.stop()
    first = operator.starts + 1
    operator.start(kubeconfig)
    try:
        create(cluster, job("rbac", ns, "exit_with.py", ["0"], ps=1, workers=1))
        obj = wait_phase(cluster, ns, "rbac", timeout=90)
        assert obj["status"]["phase"] == "Succeeded", obj["status"]
        custom = kubernetes.client.CustomObjectsApi(cluster.api)
        custom.patch_namespaced_custom_object(n.GROUP, n.VERSION, ns, n.PLURAL, "rbac",
                                              {"spec": {"runPolicy": {"ttlSecondsAfterFinished": 0}}})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
                j["metadata"]["name"] == "rbac"
                for j in custom.list_namespaced_custom_object(n.GROUP, n.VERSION, ns, n.PLURAL)["items"]):
            time.sleep(0.5)
        assert not custom.list_namespaced_custom_object(n.GROUP, n.VERSION, ns, n.PLURAL)["items"]
    finally:
        operator.stop()
        logs = "\n".join((cluster.state / f"operator-{i}.log").read_text() for i in range(first, operator.starts + 1))
        operator.start()
    assert "Forbidden" not in logs and "forbidden" not in logs, logs[-3000:]
