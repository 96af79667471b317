"""Kubeflow kubeflow.org/v1 PaddleJob -> fleetkit's shape (one pure function)."""
from __future__ import annotations

import pytest

from fleetkit.operator_k8s import SpecError, build_pod, from_kubeflow, normalize
from fleetkit.operator_k8s.kubeflow import to_kubeflow_status


def _kf(master=True, **run):
    tpl = {"spec": {"containers": [{"name": "paddle", "image": "registry/paddle:2.4", "command": ["python", "t.py"],
                                    "ports": [{"name": "master", "containerPort": 37777}]}]}}
    specs = {"Worker": {"replicas": 2, "restartPolicy": "ExitCode", "template": tpl}}
    if master:
        specs["Master"] = {"replicas": 1, "template": tpl}
    return {"apiVersion": "kubeflow.org/v1", "kind": "PaddleJob",
            "metadata": {"name": "kf", "namespace": "ml", "uid": "k-1"},
            "spec": {"paddleReplicaSpecs": specs, "runPolicy": run}}


def test_master_is_ps_worker_is_trainer_with_kubeflow_defaults():
    job = normalize(from_kubeflow(_kf(backoffLimit=4, activeDeadlineSeconds=600, ttlSecondsAfterFinished=30)))
    assert job["mode"] == "PS" and job["roles"]["ps"]["replicas"] == 1 and job["roles"]["worker"]["replicas"] == 2
    assert job["roles"]["ps"]["restartPolicy"] == "OnFailure"          # Kubeflow's default
    assert job["roles"]["worker"]["restartPolicy"] == "ExitCode"
    assert job["cleanPodPolicy"] == "None"                              # Kubeflow's default
    assert (job["backoffLimit"], job["activeDeadlineSeconds"], job["ttlSecondsAfterFinished"]) == (4, 600, 30)
    assert job["port"] == 37777                                         # the paddle container's "master" port
    assert (job["apiVersion"], job["uid"]) == ("kubeflow.org/v1", "k-1")


def test_no_master_is_collective_and_owner_is_the_kubeflow_object():
    job = normalize(from_kubeflow(_kf(master=False, cleanPodPolicy="All")))
    assert job["mode"] == "Collective" and job["cleanPodPolicy"] == "All" and job["port"] == 37777
    owner = build_pod(job, "worker", 0)["metadata"]["ownerReferences"][0]
    assert (owner["apiVersion"], owner["kind"], owner["uid"]) == ("kubeflow.org/v1", "PaddleJob", "k-1")


def test_key_case_is_fixed_and_always_becomes_on_failure():
    body = _kf(master=False)
    body["spec"]["paddleReplicaSpecs"] = {"worker": dict(body["spec"]["paddleReplicaSpecs"]["Worker"],
                                                         restartPolicy="Always")}
    job = normalize(from_kubeflow(body))
    assert job["roles"]["worker"]["restartPolicy"] == "OnFailure"


def test_default_port_without_a_master_port():
    body = _kf(master=False)
    body["spec"]["paddleReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].pop("ports")
    assert normalize(from_kubeflow(body))["port"] == 36543


@pytest.mark.parametrize("mutate,msg", [
    (lambda b: b["spec"].pop("paddleReplicaSpecs"), "spec.paddleReplicaSpecs: is required"),
    (lambda b: b["spec"]["paddleReplicaSpecs"].update(Chief={}), "spec.paddleReplicaSpecs.Chief: unknown replica"),
])
def test_bad_kubeflow_specs_name_the_field(mutate, msg):
    body = _kf()
    mutate(body)
    with pytest.raises(SpecError) as err:
        from_kubeflow(body)
    assert msg in str(err.value)


def test_bad_replicas_are_reported_with_our_field_name():
    body = _kf()
    body["spec"]["paddleReplicaSpecs"]["Worker"]["replicas"] = "x"
    with pytest.raises(SpecError, match="spec.worker.replicas"):
        normalize(from_kubeflow(body))


def test_status_uses_kubeflow_replica_names():
    out = to_kubeflow_status({"phase": "Running", "replicaStatuses": {"ps": {"active": 1}, "worker": {"active": 2}}})
    assert out["replicaStatuses"] == {"Master": {"active": 1}, "Worker": {"active": 2}} and out["phase"] == "Running"
