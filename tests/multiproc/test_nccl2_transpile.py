"""DistributeTranspiler in nccl2 mode, in real processes: 2 trainers, each on half of every
batch, end with the parameters of one process on the whole batches (the collective oracle);
a fluid 1.4-style script runs under ``fleetkit launch --worker_num 2``."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np

import fleetkit as fk
from fleetkit import layers
from fleetkit.testing import free_ports, run_workers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS, BATCH = 4, 6  # BATCH per trainer
OPTIMIZERS = ("sgd", "adam")


def _data(world_size: int):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((STEPS, BATCH * world_size, 10)).astype("float32")
    y = rng.integers(0, 4, size=(STEPS, BATCH * world_size, 1)).astype("int64")
    return x, y


def _build(opt_name: str, seed: int):
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = seed
    with fk.program_guard(main, startup), fk.unique_name.guard():
        x = layers.data("x", [10])
        label = layers.data("label", [1], dtype="int64")
        h = layers.fc(x, 12, act="tanh")
        predict = layers.fc(h, 4, act="softmax")
        loss = layers.mean(layers.cross_entropy(predict, label))
        opt = fk.optimizer.SGD(0.5) if opt_name == "sgd" else fk.optimizer.Adam(0.05)
        opt.minimize(loss)
    return main, startup, loss


def _params(main, scope):
    return {p.name: np.array(scope.numpy(p.name)) for p in main.all_parameters()}


def _single(opt_name: str, world_size: int):
    main, startup, loss = _build(opt_name, seed=7)
    exe, scope = fk.Executor(fk.CPUPlace()), fk.Scope()
    exe.run(startup, scope=scope)
    x, y = _data(world_size)
    for step in range(STEPS):
        exe.run(main, feed={"x": x[step], "label": y[step]}, scope=scope)
    return _params(main, scope)


def _trainer(rank, world_size, endpoints):
    """Both optimizers, through ParallelExecutor (sgd) and CompiledProgram (adam)."""
    from fleetkit import collective
    out = {}
    x, y = _data(world_size)
    mine = slice(rank * BATCH, (rank + 1) * BATCH)
    for opt_name in OPTIMIZERS:
        # a different seed per trainer: only the startup broadcast makes the weights equal
        main, startup, loss = _build(opt_name, seed=7 if rank == 0 else 50 + rank)
        config = fk.DistributeTranspilerConfig()
        config.mode = "nccl2"
        t = fk.DistributeTranspiler(config=config)
        t.transpile(rank, trainers=",".join(endpoints), current_endpoint=endpoints[rank],
                    startup_program=startup, program=main)
        scope = fk.Scope()
        fk.Executor(fk.CPUPlace()).run(startup, scope=scope)
        if opt_name == "sgd":
            pe = fk.ParallelExecutor(False, loss_name=loss.name, main_program=main, num_trainers=world_size,
                                     trainer_id=rank, scope=scope)
            run = lambda feed: pe.run(fetch_list=[loss.name], feed=feed)  # noqa: E731
        else:
            bs = fk.BuildStrategy()
            bs.num_trainers, bs.trainer_id = world_size, rank
            compiled = fk.CompiledProgram(main).with_data_parallel(loss_name=loss.name, build_strategy=bs)
            exe = fk.Executor(fk.CPUPlace())
            run = lambda feed: exe.run(compiled, feed=feed, fetch_list=[loss], scope=scope)  # noqa: E731
        for step in range(STEPS):
            run({"x": x[step][mine], "label": y[step][mine]})
        out[opt_name] = _params(main, scope), [op.type for op in main.global_block().ops]
    collective.destroy_group()
    return out


def test_two_nccl2_trainers_equal_one_process_on_the_whole_batch():
    endpoints = [f"127.0.0.1:{p}" for p in free_ports(2)]
    results = run_workers(_trainer, 2, (endpoints,), timeout=180)
    for opt_name in OPTIMIZERS:
        want = _single(opt_name, 2)
        for rank, by_opt in enumerate(results):
            params, types = by_opt[opt_name]
            assert types.count("c_allreduce_sum") == len(want), (opt_name, rank, types)
            for name, value in want.items():
                np.testing.assert_allclose(params[name], value, rtol=1e-5, atol=1e-6,
                                           err_msg=f"{opt_name} trainer {rank} {name}")
            assert not np.allclose(want["fc_0.w_0"], _build_init(opt_name)), "training did nothing"


def _build_init(opt_name: str):
    main, startup, _ = _build(opt_name, seed=7)
    scope = fk.Scope()
    fk.Executor(fk.CPUPlace()).run(startup, scope=scope)
    return np.array(scope.numpy("fc_0.w_0"))


# A script written the fluid 1.4 way (models v1.4 image_classification/dist_train, whose
# nccl2_prepare transpiles only the startup program and gives ParallelExecutor its own train
# program), with only the import changed; "single" trains alone on whole batches, for the oracle.
SCRIPT = """
    import os, sys
    import numpy as np
    import fleetkit as fluid

    out_dir, single = sys.argv[1], len(sys.argv) > 2
    main, startup = fluid.Program(), fluid.Program()
    trainer_id = int(os.getenv("PADDLE_TRAINER_ID", "0"))
    main.random_seed = startup.random_seed = 11 + (0 if single else trainer_id)
    with fluid.program_guard(main, startup):
        x = fluid.layers.data(name="x", shape=[6], dtype="float32")
        y = fluid.layers.data(name="y", shape=[1], dtype="float32")
        pred = fluid.layers.fc(input=fluid.layers.fc(input=x, size=8, act="relu"), size=1)
        loss = fluid.layers.mean(fluid.layers.square_error_cost(input=pred, label=y))
        fluid.optimizer.Momentum(learning_rate=0.05, momentum=0.9).minimize(loss)
    rng = np.random.RandomState(5)
    xs = rng.randn(5, 8, 6).astype("float32")
    ys = rng.randn(5, 8, 1).astype("float32")
    if single:
        num_trainers, part = 1, slice(None)
    else:
        num_trainers = int(os.getenv("PADDLE_TRAINERS_NUM"))
        config = fluid.DistributeTranspilerConfig()
        config.mode = "nccl2"
        t = fluid.DistributeTranspiler(config=config)
        t.transpile(trainer_id, trainers=os.getenv("PADDLE_TRAINER_ENDPOINTS"),
                    current_endpoint=os.getenv("PADDLE_CURRENT_ENDPOINT"),
                    startup_program=startup)
        part = slice(trainer_id * 4, (trainer_id + 1) * 4)
    exe = fluid.Executor(fluid.CPUPlace())
    exe.run(startup)
    build_strategy = fluid.BuildStrategy()
    build_strategy.num_trainers, build_strategy.trainer_id = num_trainers, trainer_id
    pe = fluid.ParallelExecutor(False, loss.name, main_program=main, build_strategy=build_strategy,
                                num_trainers=num_trainers, trainer_id=trainer_id)
    for step in range(5):
        loss_value, = pe.run(fetch_list=[loss.name], feed={"x": xs[step][part], "y": ys[step][part]})
    print("trainer", trainer_id, "loss", float(np.mean(loss_value)))
    scope = fluid.global_scope()
    np.savez(os.path.join(out_dir, "single.npz" if single else "trainer%d.npz" % trainer_id),
             **{p.name: np.array(scope.numpy(p.name)) for p in main.all_parameters()})
"""


def test_fluid_14_script_under_fleetkit_launch(tmp_path):
    script = tmp_path / "dist_train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, str(script), str(tmp_path), "single"], capture_output=True,
                            text=True, timeout=120, cwd=ROOT, env=env)
    assert single.returncode == 0, single.stderr
    res = subprocess.run([sys.executable, "-m", "fleetkit.cli", "launch", "--worker_num", "2", "--timeout", "100",
                          str(script), str(tmp_path)], capture_output=True, text=True, timeout=150, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    want = np.load(tmp_path / "single.npz")
    for rank in range(2):
        got = np.load(tmp_path / f"trainer{rank}.npz")
        assert sorted(got.files) == sorted(want.files)
        for name in want.files:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=f"trainer {rank} {name}")
