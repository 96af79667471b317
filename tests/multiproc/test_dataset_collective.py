"""train_from_dataset on a collective (all-reduce) program in 2 real processes equals one
process training on the concatenated batches."""
from __future__ import annotations

import numpy as np

import fleetkit as fk
from fleetkit import collective, layers
from fleetkit.testing import run_workers

STEPS, BATCH, WORLD = 5, 6, 2


def _data():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((STEPS, BATCH * WORLD, 12)).astype("float32")
    y = rng.integers(0, 5, size=(STEPS, BATCH * WORLD, 1)).astype("int64")
    return x, y


def _build(seed):
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = seed
    with fk.program_guard(main, startup), fk.unique_name.guard():
        x = layers.data("x", [12])
        label = layers.data("label", [1], dtype="int64")
        h = layers.fc(x, 16, act="tanh")
        predict = layers.fc(h, 5, act="softmax")
        loss = layers.mean(layers.cross_entropy(predict, label))
    return main, startup, [x, label], loss


def _write_rank_file(path, rank, steps=STEPS):
    """This rank's share of the first ``steps`` batches, as MultiSlot lines (float32 reprs parse exactly)."""
    x, y = _data()
    mine = slice(rank * BATCH, (rank + 1) * BATCH)
    with open(path, "w") as f:
        for step in range(steps):
            f.writelines("12 " + " ".join(repr(float(v)) for v in xi) + f" 1 {int(yi[0])}\n"
                         for xi, yi in zip(x[step][mine], y[step][mine]))


def _params(main, scope):
    return {p.name: scope.numpy(p.name) for p in main.all_parameters()}


def _rank(rank, world, port, data_dir, short_rank=None):
    from fleetkit import fleet
    from fleetkit.fleet import DistributedStrategy, UserDefinedCollectiveRoleMaker
    store = collective.TCPStore("127.0.0.1", port, timeout=30)
    group = collective.set_group(collective.get_backend("tcp", rank=rank, world_size=world, store=store,
                                                        timeout=30))
    fleet.init(UserDefinedCollectiveRoleMaker(rank, group.endpoints))
    main, startup, use_vars, loss = _build(seed=7 if rank == 0 else 50 + rank)  # startup broadcast equalizes
    with fk.program_guard(main, startup):
        fleet.distributed_optimizer(fk.optimizer.SGD(0.5), DistributedStrategy()).minimize(loss)
    exe, scope = fk.Executor(), fk.Scope()
    fleet.init_worker()
    exe.run(fleet.startup_program, scope=scope)
    path = f"{data_dir}/rank-{rank}"
    _write_rank_file(path, rank, STEPS - 2 if rank == short_rank else STEPS)
    ds = fk.DatasetFactory().create_dataset("QueueDataset")
    ds.set_use_var(use_vars)
    ds.set_filelist([path])
    ds.set_batch_size(BATCH)
    stats = exe.train_from_dataset(fleet.main_program, ds, scope=scope, thread=1, fetch_list=[loss])
    out = (_params(main, scope), stats.batches, [op.type for op in main.global_block().ops], stats.unused_batches)
    fleet.stop_worker()
    return out


def _single_process_params(steps):
    main, startup, _, loss = _build(seed=7)
    with fk.program_guard(main, startup):
        fk.optimizer.SGD(0.5).minimize(loss)
    exe, scope = fk.Executor(), fk.Scope()
    exe.run(startup, scope=scope)
    x, y = _data()
    for step in range(steps):
        exe.run(main, feed={"x": x[step], "label": y[step]}, scope=scope)
    return _params(main, scope)


def _run_job(tmp_path, short_rank=None):
    server = collective.TCPStoreServer("127.0.0.1", 0)
    try:
        return run_workers(_rank, WORLD, (server.port, str(tmp_path), short_rank), timeout=120)
    finally:
        server.close()


def test_ranks_with_fewer_batches_stop_every_rank_together(tmp_path):
    """Rank 1 has 2 batches fewer: both ranks take STEPS-2 steps (no hang), rank 0 reports its
    2 unused batches, and the result equals one process on the first STEPS-2 global batches."""
    results = _run_job(tmp_path, short_rank=1)
    want = _single_process_params(STEPS - 2)
    assert [(r[1], r[3]) for r in results] == [(STEPS - 2, 2), (STEPS - 2, 0)]
    for rank, (params, *_rest) in enumerate(results):
        for name, value in want.items():
            np.testing.assert_allclose(params[name], value, rtol=1e-5, atol=1e-6, err_msg=f"rank {rank} {name}")


def test_train_from_dataset_on_collective_program_equals_single_process(tmp_path):
    results = _run_job(tmp_path)
    want = _single_process_params(STEPS)
    for rank, (params, batches, types, _unused) in enumerate(results):
        assert batches == STEPS and any("all_reduce" in t or "allreduce" in t for t in types), types
        for name, value in want.items():
            np.testing.assert_allclose(params[name], value, rtol=1e-5, atol=1e-6, err_msg=f"rank {rank} {name}")
