"""PaddleJob spec validation and the pure pod / service / secret builders (plain dicts)."""
from __future__ import annotations

import base64

import pytest

from fleetkit import env as e
from fleetkit.operator_k8s import SpecError, build_pod, build_secret, build_service, desired_pods, normalize


def _template(**container):
    return {"spec": {"containers": [{"name": "paddle", "image": "img", "command": ["python", "t.py"], **container}]}}


def _job(ps=2, workers=2, **spec):
    body = {"apiVersion": "fleetkit.io/v1", "kind": "PaddleJob",
            "metadata": {"name": "ctr", "namespace": "team", "uid": "u-1"},
            "spec": {"worker": {"replicas": workers, "template": _template()}, **spec}}
    if ps:
        body["spec"]["ps"] = {"replicas": ps, "template": _template()}
    return body


def test_defaults():
    job = normalize(_job())
    assert job["mode"] == "PS" and job["port"] == 36543 and job["cleanPodPolicy"] == "Running"
    assert job["backoffLimit"] == 3 and job["activeDeadlineSeconds"] is None
    assert job["roles"]["worker"]["restartPolicy"] == "Never"
    assert normalize(_job(ps=0))["mode"] == "Collective"
    assert desired_pods(job) == [("ps", 0), ("ps", 1), ("worker", 0), ("worker", 1)]


@pytest.mark.parametrize("mutate,field", [
    (lambda b: b["spec"]["worker"].update(replicas="two"), "spec.worker.replicas: must be an integer >= 1, got 'two'"),
    (lambda b: b["spec"]["worker"].update(replicas=0), "spec.worker.replicas"),
    (lambda b: b["spec"]["ps"].update(restartPolicy="Always"), "spec.ps.restartPolicy: must be one of"),
    (lambda b: b["spec"].update(cleanPodPolicy="Some"), "spec.cleanPodPolicy"),
    (lambda b: b["spec"].update(runPolicy={"backoffLimit": -1}), "spec.runPolicy.backoffLimit"),
    (lambda b: b["spec"].update(runPolicy={"activeDeadlineSeconds": 0}), "spec.runPolicy.activeDeadlineSeconds"),
    (lambda b: b["spec"].update(port=70000), "spec.port: must be <= 65535"),
    (lambda b: b["spec"].pop("worker"), "spec.worker: is required"),
    (lambda b: b["spec"]["worker"]["template"]["spec"].update(containers=[]), "spec.worker.template.spec.containers"),
    (lambda b: b["spec"]["worker"]["template"]["spec"]["containers"][0].pop("image"),
     "spec.worker.template.spec.containers[0]: needs a name and an image"),
    (lambda b: b["metadata"].update(name="Bad_Name"), "metadata.name: 'Bad_Name' must be a DNS-1035 label"),
    (lambda b: b.pop("spec"), "spec: is required"),
])
def test_bad_specs_name_the_field(mutate, field):
    body = _job()
    mutate(body)
    with pytest.raises(SpecError) as err:
        normalize(body)
    assert field in str(err.value)


def test_every_problem_is_reported_at_once():
    body = _job()
    body["spec"]["worker"]["replicas"] = "x"
    body["spec"]["port"] = 0
    with pytest.raises(SpecError) as err:
        normalize(body)
    assert len(err.value.problems) == 2


def _env(pod):
    return {v["name"]: v.get("value", v.get("valueFrom")) for v in pod["spec"]["containers"][0]["env"]}


def test_ps_pod_env_contract_is_complete_at_creation():
    job = normalize(_job())
    ps1, w0 = _env(build_pod(job, "ps", 1)), _env(build_pod(job, "worker", 0))
    assert ps1[e.TRAINING_ROLE] == "PSERVER" and w0[e.TRAINING_ROLE] == "TRAINER"
    assert ps1[e.PADDLE_PSERVERS_IP_PORT_LIST] == w0[e.PADDLE_PSERVERS_IP_PORT_LIST] == \
        "ctr-ps-0:36543,ctr-ps-1:36543"
    # a pserver finds itself in the list as POD_IP:PADDLE_PORT (stable DNS name, no IP needed)
    assert f"{ps1[e.POD_IP]}:{ps1[e.PADDLE_PORT]}" == "ctr-ps-1:36543"
    assert w0[e.PADDLE_TRAINER_ID] == "0" and w0[e.PADDLE_TRAINERS_NUM] == "2"
    assert w0[e.PADDLE_TRAINER_ENDPOINTS] == "ctr-worker-0:36543,ctr-worker-1:36543"
    assert w0[e.PADDLE_CURRENT_ENDPOINT] == "ctr-worker-0:36543"
    assert w0[e.FLEETKIT_AUTH_TOKEN] == {"secretKeyRef": {"name": "ctr-auth", "key": "token"}}


def test_env_contract_parses_with_fleetkit_env():
    """What the operator writes is what fleetkit.env reads (pserver, trainer, collective)."""
    job = normalize(_job())
    ps = e.load_role(_env(build_pod(job, "ps", 1)))
    assert (ps.role, ps.server_index, ps.trainers_num) == ("PSERVER", 1, 2)
    tr = e.load_role(_env(build_pod(job, "worker", 1)))
    assert (tr.role, tr.trainer_id, tr.pserver_endpoints) == ("TRAINER", 1, ("ctr-ps-0:36543", "ctr-ps-1:36543"))
    coll = normalize(_job(ps=0, workers=3))
    c = e.load_role(_env(build_pod(coll, "worker", 2)), is_collective=True)
    assert (c.trainer_id, c.trainers_num, c.current_endpoint) == (2, 3, "ctr-worker-2:36543")
    assert e.PADDLE_PSERVERS_IP_PORT_LIST not in _env(build_pod(coll, "worker", 0))


def test_pod_keeps_template_and_overrides_stale_contract_vars():
    body = _job()
    body["spec"]["worker"]["template"] = {
        "metadata": {"labels": {"team": "ads"}},
        "spec": {"containers": [{"name": "paddle", "image": "img", "env": [
            {"name": "MY_FLAG", "value": "1"}, {"name": "PADDLE_TRAINER_ID", "value": "7"}]},
            {"name": "sidecar", "image": "side"}], "restartPolicy": "Always"}}
    body["spec"]["worker"]["restartPolicy"] = "OnFailure"
    pod = build_pod(normalize(body), "worker", 1)
    env = _env(pod)
    assert env["MY_FLAG"] == "1" and env["PADDLE_TRAINER_ID"] == "1"
    assert [v["name"] for v in pod["spec"]["containers"][0]["env"]].count("PADDLE_TRAINER_ID") == 1
    assert "PADDLE_TRAINER_ID" in _env({"spec": {"containers": [pod["spec"]["containers"][1]]}})
    assert pod["spec"]["restartPolicy"] == "OnFailure"
    assert pod["metadata"]["labels"] == {"team": "ads", "fleetkit.io/job-name": "ctr",
                                         "fleetkit.io/replica-type": "worker", "fleetkit.io/replica-index": "1"}
    assert pod["metadata"]["ownerReferences"] == [{"apiVersion": "fleetkit.io/v1", "kind": "PaddleJob",
                                                   "name": "ctr", "uid": "u-1", "controller": True,
                                                   "blockOwnerDeletion": True}]
    assert pod["spec"]["containers"][0]["ports"] == [{"name": "fleetkit", "containerPort": 36543}]
    assert "ports" not in pod["spec"]["containers"][1]


def test_exitcode_and_never_pods_never_restart_themselves():
    body = _job()
    body["spec"]["worker"]["restartPolicy"] = "ExitCode"
    job = normalize(body)
    assert build_pod(job, "worker", 0)["spec"]["restartPolicy"] == "Never"
    assert build_pod(job, "ps", 0)["spec"]["restartPolicy"] == "Never"


def test_builders_do_not_mutate_the_job():
    job = normalize(_job())
    before = repr(job)
    build_pod(job, "ps", 0)
    assert repr(job) == before


def test_headless_service_per_pod():
    svc = build_service(normalize(_job()), "ps", 1)
    assert svc["metadata"]["name"] == "ctr-ps-1"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"fleetkit.io/job-name": "ctr", "fleetkit.io/replica-type": "ps",
                                       "fleetkit.io/replica-index": "1"}
    assert svc["spec"]["ports"][0]["port"] == 36543


def test_secret_holds_the_token():
    s = build_secret(normalize(_job()), "abc123")
    assert s["metadata"]["name"] == "ctr-auth" and s["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert base64.b64decode(s["data"]["token"]) == b"abc123"
