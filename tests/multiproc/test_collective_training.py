"""Data-parallel training in real processes equals one process on the concatenated batches;
collective ops in programs and the plain collective API."""
from __future__ import annotations

import os

import numpy as np
import pytest

import fleetkit as fk
from fleetkit import collective, layers
from fleetkit.testing import run_workers
from fleetkit.testing.collective_programs import collective_ops_program

STEPS = 4
BATCH = 6  # per rank


def _data(world_size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    x = rng.standard_normal((STEPS, BATCH * world_size, 12)).astype("float32")
    y = rng.integers(0, 5, size=(STEPS, BATCH * world_size, 1)).astype("int64")
    return x, y


def _build(opt_name: str, seed: int):
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = seed
    with fk.program_guard(main, startup), fk.unique_name.guard():
        x = layers.data("x", [12])
        label = layers.data("label", [1], dtype="int64")
        h = layers.fc(x, 16, act="tanh")
        h = layers.fc(h, 8, act="relu")
        predict = layers.fc(h, 5, act="softmax")
        loss = layers.mean(layers.cross_entropy(predict, label))
        opt = fk.optimizer.SGD(0.5) if opt_name == "sgd" else fk.optimizer.Momentum(0.3, momentum=0.9)
    return main, startup, loss, opt


def _params(main, scope) -> dict[str, np.ndarray]:
    return {p.name: np.array(scope.numpy(p.name)) for p in main.all_parameters()}


def _single(opt_name: str, world_size: int) -> dict[str, np.ndarray]:
    main, startup, loss, opt = _build(opt_name, seed=7)
    with fk.program_guard(main, startup):
        opt.minimize(loss)
    exe, scope = fk.Executor(), fk.Scope()
    exe.run(startup, scope=scope)
    x, y = _data(world_size)
    for step in range(STEPS):
        exe.run(main, feed={"x": x[step], "label": y[step]}, scope=scope)
    return _params(main, scope)


def _tcp_group(rank: int, world_size: int, port: int):
    store = collective.TCPStore("127.0.0.1", port, timeout=30)
    return collective.set_group(collective.get_backend("tcp", rank=rank, world_size=world_size, store=store,
                                                       timeout=30))


CONFIGS = [(opt_name, fuse) for opt_name in ("sgd", "momentum") for fuse in (False, True)]


def _data_parallel(rank, world_size, port, save_dir, use_cuda=False):
    """Every config in one group: spawning and rendezvous are the expensive part."""
    from fleetkit import fleet
    from fleetkit.fleet import DistributedStrategy, UserDefinedCollectiveRoleMaker

    group = _tcp_group(rank, world_size, port)
    out = {}
    for opt_name, fuse in CONFIGS:
        fleet.init(UserDefinedCollectiveRoleMaker(rank, group.endpoints))
        # A different seed per rank: only the startup broadcast makes the weights equal.
        main, startup, loss, opt = _build(opt_name, seed=7 if rank == 0 else 100 + rank)
        strategy = DistributedStrategy()
        strategy.fuse_all_reduce_ops = fuse
        strategy.fuse_grad_size_in_MB = 0.0005  # ~500 bytes: several buckets for this small net
        with fk.program_guard(main, startup):
            fleet.distributed_optimizer(opt, strategy).minimize(loss)
        assert fleet.main_program is main and fleet.startup_program is startup
        types = [op.type for op in main.global_block().ops]
        exe, scope = fk.Executor(fk.CUDAPlace(0) if use_cuda else fk.CPUPlace()), fk.Scope()
        fleet.init_worker()
        exe.run(fleet.startup_program, scope=scope)
        x, y = _data(world_size)
        mine = slice(rank * BATCH, (rank + 1) * BATCH)
        for step in range(STEPS):
            exe.run(fleet.main_program, feed={"x": x[step][mine], "label": y[step][mine]}, scope=scope)
        with fk.scope_guard(scope):
            fleet.save_persistables(exe, os.path.join(save_dir, f"{opt_name}_{fuse}_from_rank_{rank}"))
        out[opt_name, fuse] = _params(main, scope), types
    fleet.stop_worker()
    return out


@pytest.mark.parametrize("world_size", [2, 3])
def test_data_parallel_equals_single_process(world_size, tmp_path):
    """SGD and Momentum, with and without fusion: parameters equal one process on the
    concatenated batches (rtol 1e-5) on every rank."""
    server = collective.TCPStoreServer("127.0.0.1", 0)
    try:
        results = run_workers(_data_parallel, world_size, (server.port, str(tmp_path)), timeout=180)
    finally:
        server.close()
    # only the first worker saves
    assert sorted(os.listdir(tmp_path)) == sorted(f"{o}_{f}_from_rank_0" for o, f in CONFIGS)
    for opt_name, fuse in CONFIGS:
        want = _single(opt_name, world_size)
        for rank, by_config in enumerate(results):
            params, types = by_config[opt_name, fuse]
            _check_rank(params, types, want, fuse, f"{opt_name} fuse={fuse} rank {rank}")


@pytest.mark.gpu
def test_data_parallel_on_gpu_over_tcp_equals_single_process(tmp_path):
    """Two ranks on CUDAPlace(0) (one GPU is enough: no NCCL) with the tcp backend: the
    c_* ops copy the cupy gradients down and the results back up; parameters equal one
    CPU process on the concatenated batches (float32 on two devices: rtol 1e-4)."""
    server = collective.TCPStoreServer("127.0.0.1", 0)
    try:
        results = run_workers(_data_parallel, 2, (server.port, str(tmp_path), True), timeout=180)
    finally:
        server.close()
    for opt_name, fuse in CONFIGS:
        want = _single(opt_name, 2)
        for rank, by_config in enumerate(results):
            params, types = by_config[opt_name, fuse]
            _check_rank(params, types, want, fuse, f"gpu {opt_name} fuse={fuse} rank {rank}", rtol=1e-4)


def _check_rank(params, types, want, fuse, what, rtol=1e-5):
    assert set(params) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(params[name], value, rtol=rtol, atol=rtol / 100,
                                   err_msg=f"{what} parameter {name}")
    if fuse:
        assert "c_allreduce_sum" not in types and types.count("c_fused_allreduce_sum") >= 2, types
    else:
        assert types.count("c_allreduce_sum") == 6, types
    assert types.count("c_sync_comm_stream") == 1
    # communication starts inside backward: the first all-reduce precedes the last grad op
    first = min(i for i, t in enumerate(types) if t.startswith("c_"))
    last_grad = max(i for i, t in enumerate(types) if t.endswith("_grad"))
    assert first < last_grad, types


# ---- collective ops inside a program, and the plain API ------------------------------------------


def _ops_program(rank, world_size, port):
    _tcp_group(rank, world_size, port)
    main, outs = collective_ops_program(root=world_size - 1, nranks=world_size)
    value = np.arange(6, dtype="float32").reshape(2, 3) + rank
    got = fk.Executor().run(main, feed={"x": value}, fetch_list=list(outs.values()), scope=fk.Scope())
    plain = collective.all_reduce(value.copy(), op="max")
    scattered = collective.reduce_scatter(np.ones((world_size * 2, 3)) * (rank + 1))
    collective.barrier()
    return dict(zip(outs, got)), plain, scattered, collective.get_rank(), collective.get_world_size()


def test_collective_ops_in_a_program_and_plain_api():
    n = 3
    server = collective.TCPStoreServer("127.0.0.1", 0)
    try:
        results = run_workers(_ops_program, n, (server.port,), timeout=60)
    finally:
        server.close()
    inputs = [np.arange(6, dtype="float32").reshape(2, 3) + r for r in range(n)]
    for rank, (got, plain, scattered, got_rank, size) in enumerate(results):
        assert (got_rank, size) == (rank, n)
        np.testing.assert_array_equal(got["sum"], sum(inputs))
        np.testing.assert_array_equal(got["max"], inputs[-1])
        np.testing.assert_array_equal(got["min"], inputs[0])
        np.testing.assert_array_equal(got["prod"], inputs[0] * inputs[1] * inputs[2])
        np.testing.assert_array_equal(got["bcast"], inputs[-1])
        np.testing.assert_array_equal(got["gather"], np.concatenate(inputs))
        np.testing.assert_array_equal(got["async"], sum(inputs))
        np.testing.assert_array_equal(plain, inputs[-1])
        np.testing.assert_array_equal(scattered, np.full((2, 3), 6.0))


def test_collective_op_without_a_group_says_how_to_set_one_up():
    main = fk.Program()
    with fk.program_guard(main, fk.Program()):
        x = layers.data("x", [3], append_batch_size=False)
    main.global_block().append_op("c_allreduce_sum", {"X": [x]}, {"Out": [x]}, {"ring_id": 7})
    with pytest.raises(fk.FleetkitError, match="init_parallel_env"):
        fk.Executor().run(main, feed={"x": np.ones(3, "float32")}, scope=fk.Scope())


# ---- a worker dies mid-training ---------------------------------------------------------------------


def _dies_mid_training(rank, world_size, port):
    import os
    import socket
    import time

    from fleetkit import fleet
    from fleetkit.fleet import PaddleCloudRoleMaker

    # Roles from Paddle's variables; each rank binds port 0 first and shares the real port.
    listener = socket.create_server(("127.0.0.1", 0))
    store = collective.TCPStore("127.0.0.1", port, timeout=30)
    store.set(f"ep/{rank}", f"127.0.0.1:{listener.getsockname()[1]}".encode())
    endpoints = [store.get(f"ep/{r}").decode() for r in range(world_size)]
    os.environ.update(PADDLE_TRAINER_ENDPOINTS=",".join(endpoints), PADDLE_TRAINER_ID=str(rank),
                      PADDLE_TRAINERS_NUM=str(world_size))
    group = collective.init_parallel_env("tcp", listener=listener, timeout=10)  # from the env above
    assert (group.rank, group.world_size) == (rank, world_size) and collective.init_parallel_env() is group
    fleet.init(PaddleCloudRoleMaker(is_collective=True))
    main, startup, loss, opt = _build("momentum", seed=7)
    with fk.program_guard(main, startup):
        fleet.distributed_optimizer(opt).minimize(loss)
    exe, scope = fk.Executor(), fk.Scope()
    exe.run(fleet.startup_program, scope=scope)
    x, y = _data(world_size)
    feed = {"x": x[0][:BATCH], "label": y[0][:BATCH]}
    exe.run(fleet.main_program, feed=feed, scope=scope)
    if rank == 1:
        os._exit(17)
    start = time.monotonic()
    with pytest.raises(collective.PeerFailedError) as info:
        for _ in range(3):
            exe.run(fleet.main_program, feed=feed, scope=scope)
    return str(info.value), time.monotonic() - start, endpoints[1]


def test_a_worker_dying_mid_training_is_named_by_the_others():
    server = collective.TCPStoreServer("127.0.0.1", 0)
    try:
        results = run_workers(_dies_mid_training, 3, (server.port,), timeout=60, expect_exit={1: 17})
    finally:
        server.close()
    for rank in (0, 2):
        message, elapsed, endpoint = results[rank]
        assert "rank 1" in message and endpoint in message, message
        assert elapsed < 8.0, f"rank {rank} took {elapsed:.1f} s to notice"
