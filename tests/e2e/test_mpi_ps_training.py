"""Parameter-server fleet under a real ``mpiexec -n 4`` with ``MPISymetricRoleMaker``: even
ranks serve, odd ranks train; sync SGD on the two trainers equals single-process training
on the concatenated batches.

pytest starts ``mpiexec``; run as a script, the file is each MPI rank's program.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_mpi_backend import _mpiexec, pytestmark  # noqa: E402,F401  (e2e, skipped without MPI)

STEPS, BATCH = 4, 6   # batch per trainer


def test_ps_fleet_with_mpi_symetric_role_maker_equals_single_process():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PADDLE_PORT", None)
    proc = subprocess.run([_mpiexec(), "-n", "4", sys.executable, __file__], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=240)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert sorted(re.findall(r"MPI-PS-OK worker=(\d+)", proc.stdout)) == ["0", "1"], output
    assert sorted(re.findall(r"MPI-PS-SERVED server=(\d+)", proc.stdout)) == ["0", "1"], output


def _build(fk, layers):
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = 7
    with fk.program_guard(main, startup), fk.unique_name.guard():
        x = layers.data("x", [12])
        label = layers.data("label", [1], dtype="int64")
        h = layers.fc(x, 1024, act="tanh")   # 12 x 1024 weights: sliced over both pservers
        loss = layers.mean(layers.cross_entropy(layers.fc(h, 3, act="softmax"), label))
    return main, startup, loss


def _spmd_main() -> None:
    import numpy as np

    import fleetkit as fk
    from fleetkit import fleet, layers
    from fleetkit.fleet import DistributeTranspilerConfig, MPISymetricRoleMaker

    rng = np.random.default_rng(0)
    xs = rng.standard_normal((STEPS, 2 * BATCH, 12)).astype("float32")
    ys = rng.integers(0, 3, (STEPS, 2 * BATCH, 1)).astype("int64")

    role = MPISymetricRoleMaker()
    fleet.init(role)
    main, startup, loss = _build(fk, layers)
    with fk.program_guard(main, startup):
        fleet.distributed_optimizer(fk.optimizer.SGD(0.5), DistributeTranspilerConfig(sync_mode=True)).minimize(loss)
    if fleet.is_server():
        fleet.init_server()
        fleet.run_server()
        print(f"MPI-PS-SERVED server={fleet.server_index()}", flush=True)
        return

    w = fleet.worker_index()
    fleet.init_worker()
    exe, scope = fk.Executor(), fk.Scope()
    exe.run(fleet.startup_program, scope=scope)   # pulls the pservers' initial blocks
    start = {p.name: np.array(scope.numpy(p.name)) for p in main.all_parameters()}
    mine = slice(BATCH * w, BATCH * (w + 1))
    for step in range(STEPS):
        exe.run(fleet.main_program, feed={"x": xs[step][mine], "label": ys[step][mine]}, scope=scope)

    # single-process reference on the concatenated batches, from the same initial values
    ref_main, ref_startup, ref_loss = _build(fk, layers)
    with fk.program_guard(ref_main, ref_startup):
        fk.optimizer.SGD(0.5).minimize(ref_loss)
    ref = fk.Scope()
    exe.run(ref_startup, scope=ref)
    for name, value in start.items():
        ref.set(name, value.copy())
    for step in range(STEPS):
        exe.run(ref_main, feed={"x": xs[step], "label": ys[step]}, scope=ref)
    for name in start:
        np.testing.assert_allclose(scope.numpy(name), ref.numpy(name), rtol=1e-5, atol=1e-7, err_msg=name)
        assert not np.allclose(scope.numpy(name), start[name]), f"{name} did not train"
    fleet.stop_worker()
    print(f"MPI-PS-OK worker={w}", flush=True)


def _abort_on_failure() -> None:
    """A failed rank takes the whole job down (the pservers would otherwise wait for it)."""
    try:
        _spmd_main()
    except BaseException:  # noqa: BLE001 - printed, then the whole MPI job is aborted
        import traceback

        from mpi4py import MPI
        traceback.print_exc()
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)


if __name__ == "__main__":
    _abort_on_failure()
