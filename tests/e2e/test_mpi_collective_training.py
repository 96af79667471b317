"""Collective fleet training over the mpi backend under a real ``mpiexec -n 2``: parameters
equal single-process training on the concatenated batches.

pytest starts ``mpiexec``; run as a script, the file is each MPI rank's program.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_mpi_backend import _mpiexec, pytestmark  # noqa: E402,F401  (e2e, skipped without MPI)


def test_fleet_training_over_mpi_equals_single_process():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable, __file__], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=180)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert sorted(re.findall(r"MPI-TRAIN-OK rank=(\d+)", proc.stdout)) == ["0", "1"], output


def _build(seed: int, fk, layers):
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = seed
    with fk.program_guard(main, startup), fk.unique_name.guard():
        x = layers.data("x", [10])
        label = layers.data("label", [1], dtype="int64")
        h = layers.fc(x, 16, act="tanh")
        loss = layers.mean(layers.cross_entropy(layers.fc(h, 3, act="softmax"), label))
    return main, startup, loss


def _spmd_main() -> None:
    import numpy as np

    import fleetkit as fk
    from fleetkit import fleet, layers
    from fleetkit.fleet import DistributedStrategy, UserDefinedCollectiveRoleMaker
    from mpi4py import MPI

    rank, size = MPI.COMM_WORLD.rank, MPI.COMM_WORLD.size
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((3, 4 * size, 10)).astype("float32")
    ys = rng.integers(0, 3, (3, 4 * size, 1)).astype("int64")

    # single-process reference on the concatenated batches
    main, startup, loss = _build(5, fk, layers)
    with fk.program_guard(main, startup):
        fk.optimizer.Momentum(0.2, momentum=0.9).minimize(loss)
    exe, ref = fk.Executor(), fk.Scope()
    exe.run(startup, scope=ref)
    for step in range(3):
        exe.run(main, feed={"x": xs[step], "label": ys[step]}, scope=ref)

    fleet.init(UserDefinedCollectiveRoleMaker(rank, [f"mpi-rank-{r}" for r in range(size)]))
    main, startup, loss = _build(5 + 10 * rank, fk, layers)  # different seeds: the broadcast fixes them
    strategy = DistributedStrategy()
    strategy.backend, strategy.fuse_all_reduce_ops = "mpi", True
    with fk.program_guard(main, startup):
        fleet.distributed_optimizer(fk.optimizer.Momentum(0.2, momentum=0.9), strategy).minimize(loss)
    scope = fk.Scope()
    exe.run(fleet.startup_program, scope=scope)
    mine = slice(4 * rank, 4 * rank + 4)
    for step in range(3):
        exe.run(fleet.main_program, feed={"x": xs[step][mine], "label": ys[step][mine]}, scope=scope)
    for p in main.all_parameters():
        np.testing.assert_allclose(np.array(scope.find_var(p.name).get_tensor()),
                                   np.array(ref.find_var(p.name).get_tensor()), rtol=1e-5, atol=1e-7,
                                   err_msg=p.name)
    fleet.stop_worker()
    print(f"MPI-TRAIN-OK rank={rank}", flush=True)


if __name__ == "__main__":
    _spmd_main()
