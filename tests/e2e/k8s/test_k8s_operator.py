"""The PaddleJob operator against a real kube-apiserver 1.20.2 + kube-controller-manager,
with the test kubelet running every pod's command as a local process in its own
network namespace (the one stand-in: for the container runtime)."""
from __future__ import annotations

import base64
import re
import subprocess
import sys
import time

import kubernetes
import pytest
from jobs_util import JOBS, REPO, create, events, example, get, job, last_condition, pods, wait_phase

from fleetkit.operator_k8s import names as n

pytestmark = pytest.mark.e2e


def _submit(cluster, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleetkit", "submit", *args], capture_output=True, text=True,
                          env=cluster.env(), timeout=timeout)


def test_submit_ps_ctr_job_succeeds_with_auc(cluster, ns):
    """`fleetkit submit` the CTR example (examples/ctr/train.py, async) as 2 pservers x 2
    trainers: exit 0 after following it to Succeeded; trainer 0 logs the held-out test AUC;
    every pod got the job's token from its Secret."""
    r = _submit(cluster, "--server_num", "2", "--worker_num", "2", "--image", "fleetkit:test", "--name", "ctr",
                "-n", ns, "--python", sys.executable, "--env", "OMP_NUM_THREADS=1",
                str(REPO / "examples" / "ctr" / "train.py"), "--async", "--steps", "100")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PaddleJob %s/ctr: Running" % ns in r.stdout and "Succeeded: PaddleJobSucceeded" in r.stdout
    found = re.findall(r"test AUC ([0-9.]+)", cluster.pod_log(ns, "ctr-worker-0"))
    assert found and float(found[0]) > 0.75, cluster.pod_log(ns, "ctr-worker-0")   # measured 0.83-0.86
    obj = get(cluster, ns, "ctr")
    # the pservers may still be shutting down when the last trainer succeeded (cleanPodPolicy Running
    # then deletes them): only the trainers' counts are fixed
    assert obj["status"]["replicaStatuses"]["worker"] == {"active": 0, "succeeded": 2, "failed": 0}
    assert [c["type"] for c in obj["status"]["conditions"]] == ["Created", "Running", "Succeeded"]
    secret = kubernetes.client.CoreV1Api(cluster.api).read_namespaced_secret("ctr-auth", ns)
    assert len(base64.b64decode(secret.data["token"])) == 64
    for pod in pods(cluster, ns, "ctr"):
        env = {e.name: e for e in pod.spec.containers[0].env}
        assert env["FLEETKIT_AUTH_TOKEN"].value_from.secret_key_ref.name == "ctr-auth"
        assert env["PADDLE_PSERVERS_IP_PORT_LIST"].value == "ctr-ps-0:36543,ctr-ps-1:36543"


def test_ps_ctr_example_manifest_succeeds(cluster, ns):
    """deploy/examples/ps-ctr.yaml as it is (image paths mapped): Succeeded, AUC logged."""
    create(cluster, example("ps-ctr", ns))
    obj = wait_phase(cluster, ns, "ctr", timeout=180)
    log = cluster.pod_log(ns, "ctr-worker-0")
    assert obj["status"]["phase"] == "Succeeded", (obj["status"], log)
    found = re.findall(r"test AUC ([0-9.]+)", log)
    assert found and float(found[0]) > 0.75, log


@pytest.mark.parametrize("manifest,group,name", [
    ("collective-dgc", n.GROUP, "dgc"), ("kubeflow-paddlejob", n.KUBEFLOW_GROUP, "paddle-simple-cpu")])
def test_collective_example_succeeds(cluster, ns, manifest, group, name):
    """deploy/examples: 2 all-reduce workers with DGC, and a Kubeflow kubeflow.org/v1 PaddleJob
    run unchanged: Succeeded, both workers end with the same parameters (the all-reduces ran)."""
    create(cluster, example(manifest, ns), group)
    obj = wait_phase(cluster, ns, name, group=group)
    logs = [cluster.pod_log(ns, f"{name}-worker-{i}") for i in range(2)]
    assert obj["status"]["phase"] == "Succeeded", (obj["status"], logs)
    digests = [re.findall(r"params ([0-9a-f]+)", log) for log in logs]
    assert digests[0] and digests[0] == digests[1], logs
    if group == n.KUBEFLOW_GROUP:
        assert obj["status"]["replicaStatuses"]["Worker"]["succeeded"] == 2
        pod = pods(cluster, ns, name)[0]
        owner = pod.metadata.owner_references[0]
        assert (owner.api_version, owner.kind, owner.uid) == (n.KUBEFLOW_API_VERSION, "PaddleJob",
                                                              obj["metadata"]["uid"])
        env = {e.name: e.value for e in pod.spec.containers[0].env}
        assert env["PADDLE_TRAINER_ENDPOINTS"] == f"{name}-worker-0:37777,{name}-worker-1:37777"


def test_trainer_exit_1_fails_job_with_reason(cluster, ns):
    create(cluster, job("bad", ns, "exit_with.py", ["1"], workers=2))
    obj = wait_phase(cluster, ns, "bad")
    cond = last_condition(obj)
    assert (obj["status"]["phase"], cond["reason"]) == ("Failed", "PodFailed")
    assert re.search(r"pod bad-worker-[01] \(worker [01]\) failed with exit code 1 ", cond["message"]), cond
    assert ("PodFailed", cond["message"]) in events(cluster, ns, obj["metadata"]["uid"])


def test_exit_137_under_exitcode_is_retried_and_succeeds(cluster, ns, tmp_path):
    create(cluster, job("retry", ns, "exit_with.py", ["137", "--once", str(tmp_path / "ran")],
                        restart_policy="ExitCode"))
    obj = wait_phase(cluster, ns, "retry")
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    assert obj["status"]["restartCount"] == 1
    types = [c["type"] for c in obj["status"]["conditions"]]
    assert types[0] == "Created" and "Restarting" in types and types[-1] == "Succeeded", types
    assert any(r == "PodRestarting" and "exit code 137" in m for r, m in events(cluster, ns, obj["metadata"]["uid"]))


def test_backoff_limit_counts_recreated_pods(cluster, ns):
    """backoffLimit 1, a pod that always exits 137 under ExitCode: recreated once, then Failed."""
    create(cluster, job("flaky", ns, "exit_with.py", ["137"], restart_policy="ExitCode", backoff_limit=1))
    obj = wait_phase(cluster, ns, "flaky")
    cond = last_condition(obj)
    assert (obj["status"]["phase"], cond["reason"]) == ("Failed", "BackoffLimitExceeded"), obj["status"]
    assert obj["status"]["restartCount"] == 1
    assert "backoffLimit=1" in cond["message"]


def test_pod_pending_past_timeout_fails_job(cluster, ns):
    body = job("stuck", ns, "exit_with.py", ["0"], pending_timeout=3)
    body["spec"]["worker"]["template"]["spec"]["nodeSelector"] = {"fleetkit.io/no-such-node": "true"}
    create(cluster, body)
    obj = wait_phase(cluster, ns, "stuck", timeout=60)
    cond = last_condition(obj)
    assert (obj["status"]["phase"], cond["reason"]) == ("Failed", "PendingTimeout")
    assert "pod stuck-worker-0 has been Pending" in cond["message"]


def test_active_deadline_fails_job_and_stops_pods(cluster, ns):
    create(cluster, job("slow", ns, "exit_with.py", ["0", "--sleep", "120"], workers=2, active_deadline=4))
    obj = wait_phase(cluster, ns, "slow", timeout=60)
    assert (obj["status"]["phase"], last_condition(obj)["reason"]) == ("Failed", "DeadlineExceeded")
    deadline = time.monotonic() + 30
    while pods(cluster, ns, "slow") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not pods(cluster, ns, "slow"), "a failed job's running pods are deleted"


def test_operator_sigkill_mid_job_resumes_without_duplicates(cluster, ns, operator, tmp_path):
    """kill -9 the operator while a job runs and its pod fails retryably; a new operator
    recreates that pod once, keeps the other, and the job completes with the count kept."""
    create(cluster, job("resume", ns, "exit_with.py", ["137", "--sleep", "4", "--once", str(tmp_path / "m")],
                        workers=2, restart_policy="ExitCode"))
    wait_phase(cluster, ns, "resume", ("Running",), timeout=60)
    before = {p.metadata.name: p.metadata.uid for p in pods(cluster, ns, "resume")}
    operator.sigkill()
    try:
        time.sleep(6)        # one worker exits 137 and the other 0 while no operator runs
    finally:
        operator.start()
    obj = wait_phase(cluster, ns, "resume", timeout=90)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    assert obj["status"]["restartCount"] == 1
    after = {p.metadata.name: p.metadata.uid for p in pods(cluster, ns, "resume")}
    assert sorted(after) == ["resume-worker-0", "resume-worker-1"]
    assert sum(before[k] != after[k] for k in after) == 1, "exactly the failed pod was recreated"


def test_deleting_job_removes_pods_and_services(cluster, ns):
    create(cluster, job("gone", ns, "exit_with.py", ["0", "--sleep", "120"], ps=1, workers=1))
    wait_phase(cluster, ns, "gone", ("Running",), timeout=60)
    core = kubernetes.client.CoreV1Api(cluster.api)
    assert len(core.list_namespaced_service(ns).items) == 2
    kubernetes.client.CustomObjectsApi(cluster.api).delete_namespaced_custom_object(
        n.GROUP, n.VERSION, ns, n.PLURAL, "gone")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (core.list_namespaced_pod(ns).items or core.list_namespaced_service(ns).items):
        time.sleep(0.5)
    assert not core.list_namespaced_pod(ns).items and not core.list_namespaced_service(ns).items
    assert not [s for s in core.list_namespaced_secret(ns).items if s.metadata.name == "gone-auth"]


@pytest.mark.parametrize("field,value", [("replicas", "two"), ("restartPolicy", "Sometimes")])
def test_invalid_spec_is_refused_by_the_schema(cluster, ns, field, value):
    body = job("invalid", ns, "exit_with.py", ["0"])
    body["spec"]["worker"][field] = value
    with pytest.raises(kubernetes.client.ApiException) as e:
        create(cluster, body)
    assert e.value.status == 422 and f"spec.worker.{field}" in e.value.body, e.value.body


def test_submit_failing_job_exits_nonzero_naming_the_pod(cluster, ns):
    r = _submit(cluster, "--worker_num", "1", "--image", "fleetkit:test", "--name", "oops", "-n", ns,
                "--python", sys.executable, str(JOBS / "exit_with.py"), "3")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Failed: PodFailed: pod oops-worker-0 (worker 0) failed with exit code 3" in r.stdout
    w = _submit(cluster, "--watch", "oops", "-n", ns, timeout=60)
    assert w.returncode == 1 and "oops-worker-0" in w.stdout
