"""``fleetkit launch`` runs whole jobs on this host: collective, parameter-server, and failing ones."""
from __future__ import annotations

import os
import re
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
    assert "[worker.0] rank 0 of 2 sum 3 omp 1" in res.stdout  # 2 cores / 2 processes (or fewer)
    assert "[worker.1] rank 1 of 2 sum 3 omp " in res.stdout
    # the banner: kind, then role, endpoint, pid of every process; one line per end; a summary
    assert "fleetkit launch: collective job, 2 trainers" in res.stderr
    banner = [ln.split() for ln in res.stderr.splitlines() if ln.startswith("  worker.")]
    assert [b[:2] for b in banner[:2]] == [["worker.0", "TRAINER"], ["worker.1", "TRAINER"]], res.stderr
    assert banner[0][2].startswith("127.0.0.1:") and banner[0][3] == "pid" and banner[0][4].isdigit()
    assert f"worker.1 (pid {banner[1][4]}) exited with code 0 after" in res.stderr
    assert "fleetkit launch: job finished in" in res.stderr


LOGGING_SCRIPT = """
    import logging, os
    import fleetkit
    rank = os.environ["PADDLE_TRAINER_ID"]
    logging.getLogger("fleetkit.demo").info("library info line of rank %s", rank)
    print("plain output of rank", rank, os.environ["PADDLE_IS_LOCAL"], os.environ["PADDLE_TRAINERS"],
          os.environ["MALLOC_MMAP_THRESHOLD_"], os.environ.get("http_proxy"))
"""


def test_log_dir_has_everything_and_worker0_is_still_shown(tmp_path):
    logs = tmp_path / "logs"
    env = {**os.environ, "http_proxy": "http://127.0.0.1:9"}
    res = subprocess.run(LAUNCH + ["--worker_num", "2", "--log_dir", str(logs), _script(tmp_path, LOGGING_SCRIPT)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    for rank in (0, 1):
        text = (logs / f"worker.{rank}.log").read_text()
        assert f"INFO fleetkit.demo: library info line of rank {rank}" in text, text
        assert f"plain output of rank {rank} 0 2 268435456 None" in text, text
    assert "[worker.0] plain output of rank 0" in res.stdout  # worker 0 still on the console
    assert "rank 1" not in res.stdout
    assert f"log {logs / 'worker.1.log'}" in res.stderr  # the banner names the files


CRASH_SCRIPT = """
    import atexit, os, time
    import numpy as np
    from fleetkit import collective
    group = collective.init_parallel_env(timeout=60)
    if group.rank == 1:
        atexit.register(time.sleep, 1.0)  # a slow teardown: its peer exits first
        group.close()  # as a `with` block would on the way out: the peer fails at once
        raise ValueError("rank one read a corrupt shard")
    collective.all_reduce(np.ones(4))
"""


def test_the_crashing_rank_is_named_not_the_peer_that_saw_it(tmp_path):
    """20 runs out of 20: the peer's PeerFailedError exits first, the cause is still rank 1."""
    script = _script(tmp_path, CRASH_SCRIPT)
    for run in range(20):
        res = _launch(["--worker_num", "2", "--timeout", "60", script], timeout=90)
        err = res.stderr
        assert res.returncode == 1, f"run {run}: {res.stdout}{err}"
        assert re.search(r"worker\.1 \(pid \d+\) failed first", err), f"run {run}: wrong process named:\n{err}"
        assert "ValueError: rank one read a corrupt shard" in err, f"run {run}: {err}"
        if "worker.0 (pid" in err and "also exited" in err:
            assert "PeerFailedError: it only saw the failure of another process" in err, f"run {run}: {err}"


def test_bare_fleetkit_prints_help():
    res = subprocess.run([sys.executable, "-m", "fleetkit.cli"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "launch" in res.stdout and "usage: fleetkit" in res.stdout, res.stderr


METRICS_SCRIPT = """
    import os, time
    from fleetkit.fleet.launch_report import report_metrics
    rank = int(os.environ["PADDLE_TRAINER_ID"])
    for step in range(1, 4):
        report_metrics(step=step, examples=100 * step, loss=1.0 / step, auc=0.5 + 0.1 * rank)
        time.sleep(0.4)
"""


def test_progress_lines_and_metrics_file(tmp_path):
    metrics = tmp_path / "m.jsonl"
    res = _launch(["--worker_num", "2", "--progress_period", "0.3", "--metrics_file", str(metrics),
                   "--print_config", _script(tmp_path, METRICS_SCRIPT)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "fleetkit launch: configuration" in res.stderr and "trainers       127.0.0.1:" in res.stderr
    progress = [ln for ln in res.stderr.splitlines() if ln.startswith("fleetkit launch: progress")]
    assert progress, res.stderr
    assert "worker.0 step 3" in progress[-1] and "worker.1 step 3" in progress[-1], progress[-1]
    assert "auc 0.6000" in progress[-1] and "total " in progress[-1]
    import json
    records = [json.loads(ln) for ln in metrics.read_text().splitlines()]
    assert sorted((r["worker"], r["step"]) for r in records) == [(f"worker.{w}", s) for w in (0, 1) for s in (1, 2, 3)]
    assert "@fleetkit-metrics" not in res.stdout  # metric lines are the launcher's, not the console's


def test_failing_worker_stops_the_job_and_is_named(tmp_path):
    t0 = time.monotonic()
    res = _launch(["--worker_num", "2", "--log_dir", str(tmp_path / "logs"), _script(tmp_path, FAILING_SCRIPT)])
    took = time.monotonic() - t0
    assert res.returncode == 3, res.stdout + res.stderr
    assert "worker.1" in res.stderr and "failed first: it exited with code 3" in res.stderr
    assert f"full output in {tmp_path / 'logs' / 'worker.1.log'}" in res.stderr
    assert "worker one gives up: bad shard" in res.stderr  # the tail of its output
    assert took < 20, f"the sleeping worker was not stopped within seconds ({took:.0f} s)"
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
    left = _sigkill_and_survivors(proc, _wait_pids(tmp_path, 2))
    assert not left, f"children {left} outlived the SIGKILLed launcher"


def _sigkill_and_survivors(launcher: subprocess.Popen, pids: list[int]) -> list[int]:
    """SIGKILL the launcher; the pids still running 10 s later."""
    assert all(_running(p) for p in pids)
    launcher.kill()
    launcher.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _running(p)]


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


SLOW_PSERVER_SCRIPT = """
    import os, socket, time
    if os.environ["TRAINING_ROLE"] == "PSERVER":
        time.sleep(4)  # a slow start: the launcher must say what it waits for
        host, port = os.environ["PADDLE_CURRENT_ENDPOINT"].rsplit(":", 1)
        with socket.create_server((host, int(port))):
            time.sleep(1.5)
    else:
        ep = os.environ["PADDLE_PSERVERS_IP_PORT_LIST"]
        host, port = ep.rsplit(":", 1)
        for _ in range(200):
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
"""


def test_waiting_for_pservers_is_announced(tmp_path):
    res = _launch(["--server_num", "1", "--worker_num", "1", "--timeout", "60",
                   _script(tmp_path, SLOW_PSERVER_SCRIPT)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"waiting for pservers: 0 of 1 ready \(127\.0\.0\.1:\d+ not listening yet", res.stderr), \
        res.stderr
    assert "all 1 pservers ready after" in res.stderr
    assert "PSERVER  127.0.0.1:" in res.stderr


def test_ctrl_c_says_what_it_stopped(tmp_path):
    import signal as sig
    # SIGINT at its default in the launcher, as in a terminal: a suite run in the background
    # (``cmd &``) inherits it ignored, and Python then installs no KeyboardInterrupt handler
    proc = subprocess.Popen(LAUNCH + ["--worker_num", "2", _write_pid_script(tmp_path, tmp_path / "pid")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: sig.signal(sig.SIGINT, sig.SIG_DFL))
    pids = _wait_pids(tmp_path, 2)
    proc.send_signal(sig.SIGINT)  # what Ctrl-C sends (to the launcher; its children have their own sessions)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()  # not left running into the next test
        raise AssertionError(f"the launcher did not exit within 30 s of Ctrl-C: {proc.communicate()[1]}") from None
    assert proc.returncode == 130, err
    assert "interrupted (Ctrl-C); stopped " in err and all(f"(pid {p})" in err for p in pids), err
    assert "stopped by the launcher" in err  # the summary
    assert not any(_running(p) for p in pids)


STUBBORN_PSERVER_SCRIPT = """
    import os, signal, socket, time
    if os.environ["TRAINING_ROLE"] == "PSERVER":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # neither exits on COMPLETE nor on SIGTERM
        host, port = os.environ["PADDLE_CURRENT_ENDPOINT"].rsplit(":", 1)
        with socket.create_server((host, int(port))):
            time.sleep(120)
"""


def test_server_grace_and_kill_grace_are_options(tmp_path):
    """A pserver that outlives its workers is stopped after --server_grace, and one that ignores
    SIGTERM is killed --kill_grace later (defaults 30 s and 5 s)."""
    t0 = time.monotonic()
    res = _launch(["--server_num", "1", "--worker_num", "1", "--timeout", "60", "--server_grace", "0.5",
                   "--kill_grace", "0.5", _script(tmp_path, STUBBORN_PSERVER_SCRIPT)], timeout=90)
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stdout + res.stderr
    assert took < 20, (took, res.stderr)
    bad = _launch(["--worker_num", "1", "--kill_grace", "-1", _script(tmp_path, STUBBORN_PSERVER_SCRIPT)])
    assert bad.returncode != 0 and "--kill_grace -1 must be a number of seconds >= 0" in bad.stderr, bad.stderr


@pytest.mark.parametrize("entry", ["fleetrun", "python -m fleetkit.launch"])
def test_the_other_entry_points_launch_the_same_job(tmp_path, entry):
    exe = os.path.join(os.path.dirname(sys.executable), "fleetrun")
    cmd = [exe] if entry == "fleetrun" else [sys.executable, "-m", "fleetkit.launch"]
    if entry == "fleetrun" and not os.path.exists(exe):
        pytest.fail(f"the fleetrun console script is not installed next to {sys.executable}")
    res = subprocess.run(cmd + ["--worker_num", "2", "--timeout", "100", _script(tmp_path, COLLECTIVE_SCRIPT)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[worker.1] rank 1 of 2 sum 3" in res.stdout
    assert "fleetkit launch: collective job, 2 trainers" in res.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_sigkill_of_the_launcher_leaves_no_grandchild(tmp_path):
    """What a child started (in its process group) goes too: the launcher's watchdog kills
    the groups once the launcher is gone."""
    marker = tmp_path / "pid"
    script = _script(tmp_path, f"""
        import os, subprocess, sys, time
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open({str(marker)!r} + os.environ["PADDLE_TRAINER_ID"], "w") as f:
            f.write(str(helper.pid))
        time.sleep(120)
    """)
    proc = subprocess.Popen(LAUNCH + ["--worker_num", "2", script], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    left = _sigkill_and_survivors(proc, _wait_pids(tmp_path, 2))
    for p in left:
        os.kill(p, 9)
    assert not left, f"grandchildren {left} outlived the SIGKILLed launcher"
