"""`fleetkit submit`: the PaddleJob it writes (--dry-run), names, argument errors."""
from __future__ import annotations

import re

import yaml

from fleetkit.cli import main
from fleetkit.operator_k8s import normalize
from fleetkit.operator_k8s.submit import build_job, job_name


def test_dry_run_prints_a_valid_ps_job(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    rc = main(["submit", "--server_num", "2", "--worker_num", "3", "--image", "reg/fk:1", "--name", "ctr",
               "--env", "A=1", "--backoff-limit", "2", "--dry-run", "train.py", "--epochs", "3"])
    assert rc == 0
    job = yaml.safe_load(capsys.readouterr().out)
    assert "&id" not in yaml.safe_dump(job)
    norm = normalize(job)
    assert norm["mode"] == "PS" and norm["roles"]["worker"]["replicas"] == 3 and norm["backoffLimit"] == 2
    c = job["spec"]["ps"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["python", "train.py", "--epochs", "3"] and c["image"] == "reg/fk:1"
    assert c["env"] == [{"name": "A", "value": "1"}] and job["metadata"]["namespace"] == "default"


def test_collective_job_has_no_ps():
    job = build_job(name="c", namespace="n", image="i", script="t.py", script_args=[], server_num=0, worker_num=2)
    assert "ps" not in job["spec"] and normalize(job)["mode"] == "Collective"


def test_job_name_is_a_fresh_dns_label():
    a, b = job_name("/x/My_Train.py"), job_name("/x/My_Train.py")
    assert re.fullmatch(r"my-train-[0-9a-f]{5}", a) and a != b
    assert job_name("9lives.py").startswith("job-9lives-")


def test_bad_arguments_exit_2_with_a_message(capsys):
    assert main(["submit", "--image", "i", "--dry-run", "--name", "Bad_Name", "t.py"]) == 2
    assert "metadata.name: 'Bad_Name'" in capsys.readouterr().err
    assert main(["submit", "--dry-run", "t.py"]) == 2
    assert "--image" in capsys.readouterr().err
