"""``fleetkit launch --max_restarts 1``: kill -9 of a pserver in the middle of an async job
(the demo's wide&deep CTR job, checkpointing every second): the launcher starts it again on
the same endpoint, it resumes from its checkpoint, the trainers ride it out, and the job's
held-out AUC is within 0.01 of an undisturbed run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from fleetkit.demo.run import write_data

LAUNCH = [sys.executable, "-m", "fleetkit.cli", "launch"]


def _job(tmp_path, name: str, data: str) -> tuple[list[str], str]:
    out = tmp_path / name
    out.mkdir()
    cmd = LAUNCH + ["--server_num", "2", "--worker_num", "2", "--max_restarts", "1", "--timeout", "200",
                    "--log_dir", str(out / "logs"), "--metrics_file", str(out / "metrics.jsonl"), "--",
                    sys.executable, "-m", "fleetkit.demo.job", "--data", data, "--out", str(out), "--epochs", "3",
                    "--checkpoint_dir", str(out / "ckpt"), "--checkpoint_interval_s", "0.5"]
    return cmd, str(out)


def _kill_mid_job(cmd: list[str], out: str, victim: str) -> str:
    """Run the job, kill -9 ``victim`` after the first epoch's metrics; the launcher's stderr."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    metrics = os.path.join(out, "metrics.jsonl")
    while time.monotonic() < deadline and not (os.path.exists(metrics) and os.path.getsize(metrics)):
        time.sleep(0.1)  # the first epoch's record: the job is mid-way
    pid = next(int(ln.split("pid")[1].split()[0]) for ln in list(lines) if ln.startswith(f"  {victim} "))
    time.sleep(1.0)  # a checkpoint with trained values
    os.kill(pid, signal.SIGKILL)
    rc = proc.wait(timeout=240)
    reader.join(timeout=5)
    proc.stderr.close()
    err = "".join(lines)
    assert rc == 0, err[-5000:]
    return err


def _auc(out: str) -> float:
    with open(os.path.join(out, "result.json")) as f:
        return json.load(f)["test_auc"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    pytest.importorskip("grpc")
    d = str(tmp_path_factory.mktemp("restart") / "data")
    write_data(d, 48_000, 4_000)
    return d


def test_kill9_pserver_is_restarted_and_the_job_completes(tmp_path, data):
    cmd, calm = _job(tmp_path, "calm", data)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-4000:]
    calm_auc = _auc(calm)

    cmd, hit = _job(tmp_path, "hit", data)
    err = _kill_mid_job(cmd, hit, "server.1")
    assert "restarting server.1 on 127.0.0.1:" in err and "(restart 1 of 1)" in err, err[-3000:]
    assert "was killed by signal 9" in err
    hit_auc = _auc(hit)
    print(f"held-out AUC undisturbed {calm_auc:.4f}, pserver killed and restarted {hit_auc:.4f}")
    assert abs(hit_auc - calm_auc) <= 0.01, (calm_auc, hit_auc)


def test_kill9_async_trainer_is_restarted_and_rejoins(tmp_path, data):
    """The restarted trainer sees FLEETKIT_RESTARTS=1, skips the global shuffle its peers are past,
    trains its files again and finishes; the pservers then exit 0 too."""
    cmd, hit = _job(tmp_path, "trainer", data)
    err = _kill_mid_job(cmd, hit, "worker.1")
    assert "restarting worker.1 on 127.0.0.1:" in err and "worker.1 restarted as pid" in err, err[-3000:]
    assert "job finished" in err and "restarted 1x" in err
    assert _auc(hit) > 0.8
