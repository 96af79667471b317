"""The PaddleJob status state machine: every transition, from plain pod dicts."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from fleetkit.operator_k8s import normalize, plan
from fleetkit.operator_k8s.status import fmt_time, set_condition

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def _job(ps=1, workers=2, policy="Never", **spec):
    tpl = {"spec": {"containers": [{"name": "paddle", "image": "i"}]}}
    body = {"metadata": {"name": "j", "namespace": "ns", "uid": "u"},
            "spec": {"worker": {"replicas": workers, "restartPolicy": policy, "template": tpl}, **spec}}
    if ps:
        body["spec"]["ps"] = {"replicas": ps, "restartPolicy": policy, "template": tpl}
    return normalize(body)


def _pod(name, phase="Running", code=None, restarts=0, uid=None, created=T0, deleting=False):
    state = {"running": {}} if code is None else {"terminated": {"exitCode": code}}
    meta = {"name": name, "uid": uid or f"uid-{name}", "creationTimestamp": fmt_time(created)}
    if deleting:
        meta["deletionTimestamp"] = fmt_time(created)
    return {"metadata": meta, "spec": {"containers": [{"name": "paddle"}]},
            "status": {"phase": phase, "containerStatuses": [{"name": "paddle", "restartCount": restarts,
                                                              "state": state}]}}


def _all(job, phase="Running", **kw):
    names = ["j-ps-0"] * ("ps" in job["roles"]) + [f"j-worker-{i}" for i in range(job["roles"]["worker"]["replicas"])]
    return [_pod(n, phase, **kw) for n in names]


def _types(p):
    return [c["type"] for c in p.status["conditions"]]


def test_new_job_is_created_and_all_pods_are_made_together():
    p = plan(_job(), None, [], T0)
    assert p.status["phase"] == "Created" and p.status["startTime"] == fmt_time(T0)
    assert p.create == [("ps", 0), ("worker", 0), ("worker", 1)]
    assert p.events == [("Normal", "PaddleJobCreated", "PS job with 1 ps, 2 worker")]
    assert p.status["mode"] == "PS" and p.status["workersReady"] == "0/2"


def test_created_to_running_only_when_every_pod_runs():
    job = _job()
    st = plan(job, None, [], T0).status
    pods = _all(job)
    pods[1]["status"]["phase"] = "Pending"
    assert plan(job, st, pods, T0).status["phase"] == "Created"
    p = plan(job, st, _all(job), T0)
    assert p.status["phase"] == "Running" and _types(p) == ["Created", "Running"]
    assert p.status["workersReady"] == "2/2" and p.create == []
    assert p.status["replicaStatuses"]["ps"] == {"active": 1, "succeeded": 0, "failed": 0}


def test_running_to_succeeded_when_all_workers_succeeded_then_clean_running_pods():
    job = _job()
    st = plan(job, plan(job, None, [], T0).status, _all(job), T0).status
    pods = [_pod("j-ps-0"), _pod("j-worker-0", "Succeeded", 0), _pod("j-worker-1", "Succeeded", 0)]
    p = plan(job, st, pods, T0 + timedelta(seconds=5))
    assert p.status["phase"] == "Succeeded" and _types(p) == ["Created", "Running", "Succeeded"]
    assert p.status["conditions"][1]["status"] == "False"     # Running turned off
    assert p.status["completionTime"] == fmt_time(T0 + timedelta(seconds=5))
    assert p.delete_pods == ["j-ps-0"]                         # cleanPodPolicy Running (default)
    # final: a later reconcile changes nothing
    again = plan(job, p.status, pods, T0 + timedelta(seconds=9))
    assert again.status["conditions"] == p.status["conditions"] and again.events == [] and again.create == []


@pytest.mark.parametrize("policy,deleted", [("None", []), ("Running", ["j-ps-0"]),
                                            ("All", ["j-ps-0", "j-worker-0", "j-worker-1"])])
def test_clean_pod_policy(policy, deleted):
    job = _job(cleanPodPolicy=policy)
    pods = [_pod("j-ps-0"), _pod("j-worker-0", "Succeeded", 0), _pod("j-worker-1", "Succeeded", 0)]
    p = plan(job, {"conditions": [{"type": "Running", "status": "True"}], "phase": "Running"}, pods, T0)
    assert p.status["phase"] == "Succeeded" and p.delete_pods == deleted
    assert p.delete_services == (["j-ps-0", "j-worker-0", "j-worker-1"] if policy == "All" else [])


def test_never_exit_1_fails_with_the_pod_named():
    job = _job()
    pods = _all(job)
    pods[2] = _pod("j-worker-1", "Failed", 1)
    p = plan(job, plan(job, None, [], T0).status, pods, T0)
    cond = p.status["conditions"][-1]
    assert (p.status["phase"], cond["reason"]) == ("Failed", "PodFailed")
    assert cond["message"] == "pod j-worker-1 (worker 1) failed with exit code 1 (restartPolicy Never)"
    assert p.events[-1] == ("Warning", "PodFailed", cond["message"])
    assert p.delete_pods == ["j-ps-0", "j-worker-0"]           # a failed job stops its running pods


@pytest.mark.parametrize("code,retried", [(1, False), (127, False), (128, True), (137, True), (None, True)])
def test_exitcode_policy(code, retried):
    job = _job(policy="ExitCode")
    pods = _all(job)
    pods[1] = _pod("j-worker-0", "Failed", code)
    p = plan(job, {"conditions": [{"type": "Running", "status": "True"}], "phase": "Running",
                   "startTime": fmt_time(T0)}, pods, T0)
    if retried:
        assert p.status["phase"] == "Restarting" and p.status["restartCount"] == 1
        assert p.delete_pods == ["j-worker-0"] and p.status["restartedPods"] == ["uid-j-worker-0"]
        assert p.events[-1][1] == "PodRestarting"
    else:
        assert p.status["phase"] == "Failed"
        assert "permanent under restartPolicy ExitCode" in p.status["conditions"][-1]["message"]


def test_restart_cycle_recreates_then_runs_again_and_counts_once():
    job = _job(policy="OnFailure")
    st = {"conditions": [{"type": "Running", "status": "True"}], "phase": "Running", "startTime": fmt_time(T0)}
    pods = _all(job)
    pods[1] = _pod("j-worker-0", "Failed", 2)
    p1 = plan(job, st, pods, T0)
    assert p1.status["phase"] == "Restarting" and p1.status["restartCount"] == 1
    # crashed before the delete landed: the same failed pod again is deleted, not counted again
    p2 = plan(job, p1.status, pods, T0)
    assert p2.status["restartCount"] == 1 and p2.delete_pods == ["j-worker-0"] and p2.events == []
    # terminating: no replacement until it is gone
    pods[1] = _pod("j-worker-0", "Failed", 2, deleting=True)
    assert plan(job, p1.status, pods, T0).create == []
    gone = [p for p in pods if p["metadata"]["name"] != "j-worker-0"]
    p3 = plan(job, p1.status, gone, T0)
    assert p3.create == [("worker", 0)] and p3.status["phase"] == "Restarting"
    p4 = plan(job, p3.status, _all(job, uid=None), T0)
    assert p4.status["phase"] == "Running" and p4.status["restartCount"] == 1
    assert _types(p4) == ["Restarting", "Running"]
    assert [c["type"] for c in p4.status["conditions"] if c["status"] == "True"] == ["Running"]


def test_backoff_limit_counts_recreated_pods():
    """backoffLimit 1: the first retryable failure recreates, the second fails the job
    (a fresh pod has restartCount 0: the count lives in the job's status)."""
    job = _job(ps=0, workers=1, policy="ExitCode", runPolicy={"backoffLimit": 1})
    st = {"conditions": [{"type": "Running", "status": "True"}], "phase": "Running", "startTime": fmt_time(T0)}
    p1 = plan(job, st, [_pod("j-worker-0", "Failed", 137, uid="a")], T0)
    assert p1.status["phase"] == "Restarting" and p1.status["restartCount"] == 1
    p2 = plan(job, p1.status, [_pod("j-worker-0", "Failed", 137, uid="b")], T0)
    cond = p2.status["conditions"][-1]
    assert (p2.status["phase"], cond["reason"]) == ("Failed", "BackoffLimitExceeded")
    assert "2 restarts exceed backoffLimit=1" in cond["message"] and p2.status["restartCount"] == 1


def test_backoff_limit_counts_in_place_restarts_too():
    job = _job(ps=0, workers=2, policy="OnFailure", runPolicy={"backoffLimit": 2})
    st = {"conditions": [{"type": "Running", "status": "True"}], "phase": "Running", "startTime": fmt_time(T0),
          "restartCount": 1}
    pods = [_pod("j-worker-0", restarts=1), _pod("j-worker-1", restarts=0)]
    assert plan(job, st, pods, T0).status["phase"] == "Running"
    pods[1] = _pod("j-worker-1", restarts=1)
    p = plan(job, st, pods, T0)
    assert p.status["phase"] == "Failed" and p.status["conditions"][-1]["reason"] == "BackoffLimitExceeded"


def test_pending_timeout():
    job = _job(ps=0, workers=1, runPolicy={"pendingTimeoutSeconds": 30})
    st = plan(job, None, [], T0).status
    pending = [_pod("j-worker-0", "Pending", created=T0)]
    assert plan(job, st, pending, T0 + timedelta(seconds=30)).status["phase"] == "Created"
    p = plan(job, st, pending, T0 + timedelta(seconds=31))
    assert p.status["phase"] == "Failed" and p.status["conditions"][-1]["reason"] == "PendingTimeout"
    assert "pod j-worker-0 has been Pending for more than pendingTimeoutSeconds=30" in \
        p.status["conditions"][-1]["message"]
    assert p.delete_pods == ["j-worker-0"]


def test_active_deadline():
    job = _job(runPolicy={"activeDeadlineSeconds": 60})
    st = plan(job, None, [], T0).status
    assert plan(job, st, _all(job), T0 + timedelta(seconds=60)).status["phase"] == "Running"
    p = plan(job, st, _all(job), T0 + timedelta(seconds=61))
    assert p.status["phase"] == "Failed" and p.status["conditions"][-1]["reason"] == "DeadlineExceeded"
    assert sorted(p.delete_pods) == ["j-ps-0", "j-worker-0", "j-worker-1"]


def test_ttl_after_finished_deletes_the_job():
    job = _job(runPolicy={"ttlSecondsAfterFinished": 10})
    st = {"conditions": [{"type": "Succeeded", "status": "True"}], "phase": "Succeeded",
          "completionTime": fmt_time(T0)}
    assert not plan(job, st, [], T0 + timedelta(seconds=9)).delete_job
    assert plan(job, st, [], T0 + timedelta(seconds=10)).delete_job


def test_failed_is_final():
    job = _job()
    st = {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailed"}], "phase": "Failed"}
    p = plan(job, st, _all(job, "Succeeded", code=0), T0)
    assert p.status["phase"] == "Failed" and p.create == [] and p.events == []


def test_missing_pod_is_recreated_while_running():
    job = _job()
    st = plan(job, plan(job, None, [], T0).status, _all(job), T0).status
    p = plan(job, st, _all(job)[:2], T0)
    assert p.create == [("worker", 1)] and p.status["phase"] == "Running"


def test_set_condition_order_and_no_op():
    now = fmt_time(T0)
    c = set_condition([], "Created", "r", "m", now)
    c = set_condition(c, "Running", "r", "m", now)
    c = set_condition(c, "Restarting", "r", "m", now)
    assert [(x["type"], x["status"]) for x in c] == [("Created", "True"), ("Running", "False"),
                                                      ("Restarting", "True")]
    c = set_condition(c, "Running", "r", "m", now)
    assert [(x["type"], x["status"]) for x in c] == [("Created", "True"), ("Restarting", "False"),
                                                      ("Running", "True")]
    assert set_condition(c, "Running", "other", "m", "later") == c
