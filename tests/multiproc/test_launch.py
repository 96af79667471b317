"""``fleetkit launch`` runs whole jobs on this host: collective, parameter-server, and failing ones."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCH = [sys.executable, "-m", "fleetkit.cli", "launch"]

COLLECTIVE_SCRIPT = """
    import os
    import numpy as np
    from fleetkit import collective, fleet
    from fleetkit.fleet import role_maker
    fleet.init(role_maker.PaddleCloudRoleMaker(is_collective=True))
    collective.init_parallel_env()
    total = collective.all_reduce(np.array([fleet.worker_index() + 1.0]))
    print(f"rank {fleet.worker_index()} of {fleet.worker_num()} sum {total[0]:g} "
          f"omp {os.environ['OMP_NUM_THREADS']}")
"""

FAILING_SCRIPT = """
    import os, sys, time
    rank = int(os.environ["PADDLE_TRAINER_ID"])
    if rank == 1:
        print("worker one gives up: bad shard", flush=True)
        sys.exit(3)
    time.sleep(120)
"""


def _script(tmp_path, text: str) -> str:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(text))
    return str(path)


def _launch(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(LAUNCH + args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_collective_job_sets_roles_and_all_reduces(tmp_path):
    res = _launch(["--worker_num", "2", "--timeout", "100", _script(tmp_path, COLLECTIVE_SCRIPT)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[worker.0] rank 0 of 2 sum 3 omp " in res.stdout
    assert "[worker.1] rank 1 of 2 sum 3 omp " in res.stdout


def test_failing_worker_stops_the_job_and_is_named(tmp_path):
    t0 = time.monotonic()
    res = _launch(["--worker_num", "2", "--log_dir", str(tmp_path / "logs"), _script(tmp_path, FAILING_SCRIPT)])
    took = time.monotonic() - t0
    assert res.returncode == 3, res.stdout + res.stderr
    assert "worker.1" in res.stderr and "exited with code 3" in res.stderr
    assert "worker one gives up: bad shard" in res.stderr  # the tail of its output
    assert took < 60, f"the sleeping worker was not stopped ({took:.0f}s)"
    assert "bad shard" in (tmp_path / "logs" / "worker.1.log").read_text()
    assert (tmp_path / "logs" / "worker.0.log").exists()


def test_job_timeout_stops_everything(tmp_path):
    res = _launch(["--worker_num", "1", "--timeout", "2", "--", sys.executable, "-c", "import time; time.sleep(120)"])
    assert res.returncode == 124
    assert "--timeout 2s" in res.stderr


def test_bad_counts_are_refused():
    res = _launch(["--worker_num", "0", "x.py"])
    assert res.returncode != 0 and "--worker_num must be >= 1" in res.stderr


def test_parameter_server_ctr_job(tmp_path):
    """2 pservers x 2 trainers of the CTR example, async: the job ends by itself with a sane AUC."""
    pytest.importorskip("grpc")
    res = _launch(["--server_num", "2", "--worker_num", "2", "--timeout", "200",
                   "examples/ctr/train.py", "--steps", "40", "--async"], timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("[worker.0]") and "test AUC" in ln)
    assert float(line.rsplit("test AUC", 1)[1]) > 0.6, line


def test_sigterm_to_the_launcher_stops_the_job(tmp_path):
    """The children run in their own sessions, so the launcher must stop them itself."""
    marker = tmp_path / "pid"
    script = _script(tmp_path, f"""
        import os, time
        with open({str(marker)!r} + os.environ["PADDLE_TRAINER_ID"], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(120)
    """)
    proc = subprocess.Popen(LAUNCH + ["--worker_num", "2", script], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = []
    deadline = time.monotonic() + 60
    while len(pids) < 2 and time.monotonic() < deadline:
        pids = [int(p.read_text()) for p in tmp_path.glob("pid*") if p.read_text()]
        time.sleep(0.1)
    assert len(pids) == 2, "the workers did not start"
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    for pid in pids:
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"worker pid {pid} still runs after the launcher was terminated")
