"""The launcher's job layout is a pure function of its options: every host of a multi-host
job derives the same roles, ranks and ports, and starts only its own share."""
from __future__ import annotations

import pytest

from fleetkit.fleet.launch_plan import JobSpec, child_env, plan_job


def _plan(ip: str, **kw):
    return plan_job(JobSpec(script=["x"], ip=ip, **kw))


def test_two_hosts_agree_on_the_layout_and_split_it():
    kw = dict(ips=["10.0.0.1", "10.0.0.2"], server_num=1, worker_num=2)
    s_a, w_a, local_a = _plan("10.0.0.1", **kw)
    s_b, w_b, local_b = _plan("10.0.0.2", **kw)
    assert s_a == s_b == ["10.0.0.1:6170", "10.0.0.2:6170"]
    assert w_a == w_b == ["10.0.0.1:6171", "10.0.0.1:6172", "10.0.0.2:6171", "10.0.0.2:6172"]
    assert [p.name for p in local_a] == ["server.0", "worker.0", "worker.1"]
    assert [p.name for p in local_b] == ["server.1", "worker.2", "worker.3"]
    w3 = local_b[-1].env
    assert w3["PADDLE_TRAINER_ID"] == "3" and w3["PADDLE_TRAINERS_NUM"] == "4"
    assert w3["PADDLE_PSERVERS_IP_PORT_LIST"] == "10.0.0.1:6170,10.0.0.2:6170"
    assert w3["PADDLE_PSERVERS"] == "10.0.0.1,10.0.0.2" and w3["PADDLE_PORT"] == "6170"
    assert w3["PADDLE_CURRENT_IP"] == w3["POD_IP"] == "10.0.0.2" and w3["PADDLE_IS_LOCAL"] == "0"
    assert local_b[0].env["TRAINING_ROLE"] == "PSERVER" and local_b[0].env["PADDLE_CURRENT_ENDPOINT"] == "10.0.0.2:6170"


def test_explicit_endpoints_and_gpus():
    servers, workers, local = _plan("10.0.0.2", servers=["10.0.0.1:7000"], workers=["10.0.0.1:7001", "10.0.0.2:7001"],
                                    selected_gpus=["3"])
    assert servers == ["10.0.0.1:7000"] and [p.name for p in local] == ["worker.1"]
    assert local[0].env["FLAGS_selected_gpus"] == "3" and local[0].env["PADDLE_TRAINER_ID"] == "1"


@pytest.mark.parametrize("kw,msg", [
    (dict(ips=["10.0.0.1"], ip="10.0.0.9"), "--node_ip 10.0.0.9 is not one of --ips"),
    (dict(workers=["nohost"]), "--workers: nohost is not ip:port"),
    (dict(worker_num=0), "--worker_num must be >= 1"),
    (dict(collective=True, server_num=1), "no parameter servers"),
    (dict(workers=["10.0.0.1:1"], ip="10.0.0.2"), "no process of the job is on this host (10.0.0.2)"),
])
def test_bad_layouts_are_refused_naming_the_option(kw, msg):
    kw.setdefault("ip", "127.0.0.1")
    with pytest.raises(SystemExit, match=msg.replace("(", r"\(").replace(")", r"\)")):
        plan_job(JobSpec(script=["x"], **kw))


def test_child_env_defaults_do_not_override_the_user(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.setenv("http_proxy", "http://proxy:1")
    monkeypatch.delenv("FLEETKIT_AUTH_TOKEN", raising=False)
    _, _, (plan,) = _plan("127.0.0.1", start_port=9000)
    env = child_env(plan, 2, "tok")
    assert env["OMP_NUM_THREADS"] == "7" and env["FLEETKIT_AUTH_TOKEN"] == "tok"
    assert env["MALLOC_MMAP_THRESHOLD_"] == "268435456" and "http_proxy" not in env
