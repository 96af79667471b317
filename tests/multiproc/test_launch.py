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


def _write_pid_script(tmp_path, marker) -> str:
    return _script(tmp_path, f"""
        import os, time
        with open({str(marker)!r} + os.environ["PADDLE_TRAINER_ID"], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(120)
    """)


def _wait_pids(tmp_path, n: int) -> list[int]:
    pids: list[int] = []
    deadline = time.monotonic() + 60
    while len(pids) < n and time.monotonic() < deadline:
        pids = [int(p.read_text()) for p in tmp_path.glob("pid*") if p.read_text()]
        time.sleep(0.1)
    assert len(pids) == n, "the workers did not start"
    return pids


def _running(pid: int) -> bool:
    """In the process table and not a zombie (a reparented child may wait to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_sigkill_of_the_launcher_leaves_no_child(tmp_path):
    """kill -9 cannot be caught: the kernel kills the children (PR_SET_PDEATHSIG)."""
    proc = subprocess.Popen(LAUNCH + ["--worker_num", "2", _write_pid_script(tmp_path, tmp_path / "pid")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids = _wait_pids(tmp_path, 2)
    assert all(_running(p) for p in pids)
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in pids if _running(p)]
    assert not left, f"children {left} outlived the SIGKILLed launcher"


AUTH_SCRIPT = """
    import os
    import numpy as np
    import fleetkit as fk
    from fleetkit import fleet, layers
    from fleetkit.errors import RPCAuthError
    from fleetkit.pserver.client import ClientOptions, RPCClient
    fleet.init(fleet.PaddleCloudRoleMaker())
    x = layers.data("x", shape=[4], dtype="float32")
    y = layers.data("y", shape=[1], dtype="float32")
    loss = layers.mean(layers.square_error_cost(layers.fc(x, 1), y))
    strategy = fleet.DistributeTranspilerConfig(sync_mode=False)
    fleet.distributed_optimizer(fk.optimizer.SGD(0.1), strategy).minimize(loss)
    if fleet.is_server():
        fleet.init_server()
        fleet.run_server()
    else:
        exe = fk.Executor(fk.CPUPlace())
        fleet.init_worker()
        exe.run(fleet.startup_program)
        rng = np.random.default_rng(fleet.worker_index())
        for _ in range(3):
            exe.run(fleet.main_program, feed={"x": rng.random((8, 4), dtype=np.float32),
                                              "y": rng.random((8, 1), dtype=np.float32)}, fetch_list=[loss])
        token = os.environ["FLEETKIT_AUTH_TOKEN"]
        print(f"token length {len(token)}")
        if fleet.worker_index() == 0:
            outsider = RPCClient(7, ClientOptions(auth_token="", retry_window_s=5, deadline_s=10))
            try:
                outsider.sparse_memory(fleet.server_endpoints()[0])
                print("unauthenticated call accepted")
            except RPCAuthError as e:
                print(f"unauthenticated call refused: {e}")
            outsider.close()
        fleet.stop_worker()
"""


def test_launched_ps_job_is_authenticated_by_default(tmp_path):
    """The launcher hands every process one random FLEETKIT_AUTH_TOKEN: an outsider is refused."""
    pytest.importorskip("grpc")
    env = {k: v for k, v in os.environ.items() if k != "FLEETKIT_AUTH_TOKEN"}
    res = subprocess.run(LAUNCH + ["--server_num", "1", "--worker_num", "2", "--timeout", "100",
                                   _script(tmp_path, AUTH_SCRIPT)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "[worker.0] unauthenticated call refused" in res.stdout, res.stdout[-3000:]
    assert "[worker.1] token length 32" in res.stdout
    # the user's own token is kept
    res = subprocess.run(LAUNCH + ["--worker_num", "1", "--", sys.executable, "-c",
                                   "import os; print('token', os.environ['FLEETKIT_AUTH_TOKEN'])"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**env, "FLEETKIT_AUTH_TOKEN": "mine"})
    assert "[worker.0] token mine" in res.stdout, res.stdout + res.stderr
