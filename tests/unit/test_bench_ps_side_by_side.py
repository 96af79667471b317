"""benchmarks/ps_side_by_side.py: the roles it hands out and the figures it derives (no jobs run)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import ps_side_by_side as bench  # noqa: E402


def test_role_envs_give_every_process_its_role_and_own_port():
    envs = dict(bench.role_envs([7001, 7002, 7003, 7004], pservers=2))
    assert list(envs) == ["pserver.0", "pserver.1", "trainer.0", "trainer.1"]
    assert {e["PADDLE_PSERVERS_IP_PORT_LIST"] for e in envs.values()} == {"127.0.0.1:7001,127.0.0.1:7002"}
    assert {e["PADDLE_TRAINERS_NUM"] for e in envs.values()} == {"2"}
    assert [e["TRAINING_ROLE"] for e in envs.values()] == ["PSERVER", "PSERVER", "TRAINER", "TRAINER"]
    assert [e["PADDLE_PORT"] for e in envs.values()] == ["7001", "7002", "7003", "7004"]
    assert [envs[f"trainer.{i}"]["PADDLE_TRAINER_ID"] for i in range(2)] == ["0", "1"]
    assert "PADDLE_TRAINER_ID" not in envs["pserver.0"]


def _trainer(tid, seconds, counted, **extra):
    return {"trainer": tid, "train_s": seconds, "train_counted": counted, "train_auc": 0.6 + tid / 10, **extra}


def test_job_figures_divide_all_lines_by_the_slowest_trainer_and_take_trainer_0s_aucs():
    f = bench.job_figures([_trainer(1, 4.0, 500), _trainer(0, 2.0, 500, test_auc=0.7, test_counted=100)], 1000)
    assert f == {"ex_s": 250.0, "counted": 1000, "train_auc": 0.6, "test_auc": 0.7, "test_counted": 100}


def test_report_prints_medians_and_the_fleetkit_over_paddle_ratio():
    run = {"train_auc": 0.6, "counted": 1000, "test_counted": 100}
    runs = {"fleetkit": [dict(run, ex_s=300.0, test_auc=0.70), dict(run, ex_s=100.0, test_auc=0.72),
                         dict(run, ex_s=200.0, test_auc=0.71)],
            "paddle": [dict(run, ex_s=160.0, test_auc=0.70), dict(run, ex_s=160.0, test_auc=0.70, counted=999)]}
    s = bench.summarize(runs)
    assert s["fleetkit"]["ex_s"] == 200.0 and s["paddle"]["counted"] == 999  # median; worst count
    lines = bench.report_lines(s, 1000, 100)
    assert lines[-1].startswith("async PS 2x2: fleetkit / Paddle training examples/s 1.25x")
    assert "+0.0100" in lines[-1]
    assert lines[2].split()[:3] == ["paddle", "2", "160"] and "999/1000" in lines[2]


def test_without_paddle_only_fleetkits_row_and_no_ratio():
    s = bench.summarize({"fleetkit": [{"ex_s": 5.0, "train_auc": 0.6, "test_auc": 0.7, "counted": 4,
                                       "test_counted": 1}]})
    lines = bench.report_lines(s, 4, 1)
    assert len(lines) == 2 and not any("Paddle" in ln for ln in lines)


@pytest.mark.parametrize("argv, message", [(["--repeat", "0"], "repeat 0"),
                                           (["--paddle-python", "/nonexistent/python"], "/nonexistent/python")])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err
