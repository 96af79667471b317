"""A fluid 1.4 trainer script that ends without ``exe.close()`` still tells a pserver started
by hand that it is done (``pserver/exit_complete.py``: COMPLETE at a clean exit), so the
pserver exits 0 in seconds; a trainer that ends with an uncaught exception (main thread or
another thread) or is killed by SIGKILL is reported lost, and the pserver exits non-zero."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from fleetkit.fleet.launch_plan import free_ports

pytestmark = pytest.mark.timeout(120)
JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "exit_complete_job.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run_job(mode: str) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess, float]:
    """Pserver and trainer as separate processes; the pserver's result, the trainer's, and
    how long the pserver took to exit after the trainer did."""
    endpoint = f"127.0.0.1:{free_ports(1)[0]}"
    ps = subprocess.Popen([sys.executable, JOB, "pserver", endpoint], env=ENV, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        tr = subprocess.run([sys.executable, JOB, "trainer", endpoint, mode], env=ENV, text=True,
                            capture_output=True, timeout=90)
        ended = time.monotonic()
        out, err = ps.communicate(timeout=30)
        after = time.monotonic() - ended
    finally:
        if ps.poll() is None:
            ps.kill()
            ps.wait()
    return subprocess.CompletedProcess(ps.args, ps.returncode, out, err), tr, after


def test_a_trainer_script_without_exe_close_completes_at_exit():
    ps, tr, after = _run_job("clean")
    assert tr.returncode == 0 and "trainer: trained" in tr.stdout, tr.stderr
    assert ps.returncode == 0 and "every trainer completed" in ps.stdout, ps.stderr
    print(f"the pserver exited {after:.2f} s after its trainer")
    assert after < 5, f"the pserver took {after:.1f} s to exit after its trainer"


@pytest.mark.parametrize("mode, code, crash", [
    ("raise", 1, "RuntimeError: the trainer script failed"),
    ("thread-raise", 0, "ZeroDivisionError"),
    ("sigkill", -9, None),
])
def test_a_trainer_that_crashed_or_was_killed_is_lost(mode, code, crash):
    ps, tr, after = _run_job(mode)
    assert tr.returncode == code and "trainer: trained" in tr.stdout, tr.stderr
    if crash:
        assert crash in tr.stderr and "not telling the pservers this trainer is done" in tr.stderr, tr.stderr
    assert ps.returncode not in (None, 0), ps.stdout
    assert "trainer(s) 0 lost without COMPLETE" in ps.stderr, ps.stderr
    # noticed by the heartbeat timeout (10 s) at the latest, as before this change
    assert after < 25, f"the pserver took {after:.1f} s to notice its trainer was lost"
