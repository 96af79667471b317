"""train_from_dataset worker processes die with their parent, even when it is SIGKILLed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

SCRIPT = textwrap.dedent("""
    import sys
    import fleetkit as fk
    from fleetkit.demo.ctr_data import CTRConfig, UniformCTRData
    from fleetkit.demo.ctr_model import build_per_slot
    spec = CTRConfig(num_slots=2, dense_dim=2, vocab=20, max_len=1, seed=7)
    files = UniformCTRData(spec).write_per_slot_files(sys.argv[1], 1, 20000)  # one run: ~10k steps per worker
    model = build_per_slot(spec)
    exe = fk.Executor(fk.CPUPlace())
    exe.run(fk.default_startup_program())
    ds = fk.DatasetFactory().create_dataset("InMemoryDataset")
    ds.set_use_var(model["use_vars"]); ds.set_filelist(files); ds.set_batch_size(1)
    ds.load_into_memory()
    print("training", flush=True)
    for _ in range(1000):  # far longer than the test waits
        exe.train_from_dataset(fk.default_main_program(), ds, thread=2)
""")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_when_the_parent_is_killed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "training"
        deadline = time.monotonic() + 60
        while len(workers := _children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(workers) == 2, workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 2  # the kernel kills them at once; their run would take far longer
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(w) for w in workers)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
