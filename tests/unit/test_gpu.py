"""Training on CUDAPlace(0) equals training on CPUPlace: the cupy kernels against the numpy
ones, whole models at a time (the per-op checks live in ``check_grad``, which also runs every
gradient-checked op on the GPU when one is present).

Marked ``gpu``: skipped without CUDA.  On a GPU machine: ``python -m pytest -m gpu``.
"""
from __future__ import annotations

import numpy as np
import pytest

import fleetkit as fk
from fleetkit import collective, layers
from fleetkit.testing import free_ports
from fleetkit.testing.collective_programs import collective_ops_program, dgc_op_program
from fleetkit.demo.ctr_data import CTRConfig, UniformCTRData
from fleetkit.demo.ctr_model import build_per_slot

pytestmark = pytest.mark.gpu

GPU = fk.CUDAPlace(0)


def _params(program, scope) -> dict[str, np.ndarray]:
    return {p.name: scope.numpy(p.name) for p in program.all_parameters()}


def _assert_params_close(cpu, gpu, rtol=1e-4, atol=1e-6, what=""):
    assert set(cpu) == set(gpu)
    for name in cpu:
        np.testing.assert_allclose(gpu[name], cpu[name], rtol=rtol, atol=atol, err_msg=f"{what} parameter {name}")


def _train_both(main, startup, feeds, fetch=None):
    """Run ``startup`` once on the CPU, copy it to a GPU scope, train both on ``feeds``."""
    cpu_exe, gpu_exe = fk.Executor(fk.CPUPlace()), fk.Executor(GPU)
    cpu_scope, gpu_scope = fk.Scope(), fk.Scope()
    cpu_exe.run(startup, scope=cpu_scope)
    for var in startup.global_block().vars.values():
        if var.persistable and cpu_scope.find_var(var.name) is not None:
            gpu_scope.set(var.name, GPU.to_device(np.array(cpu_scope.numpy(var.name))))
    fetched = {"cpu": [], "gpu": []}
    for feed in feeds:
        for key, exe, scope in (("cpu", cpu_exe, cpu_scope), ("gpu", gpu_exe, gpu_scope)):
            out = exe.run(main, feed=feed, fetch_list=fetch or [], scope=scope)
            fetched[key].append([np.asarray(o) for o in out])
    return _params(main, cpu_scope), _params(main, gpu_scope), fetched


@pytest.mark.parametrize("model", ["mlp", "conv"])
def test_digits_losses_on_gpu_match_cpu(digits, model):
    cpu, _ = digits.train(model, epochs=2, verbose=False)
    gpu, _ = digits.train(model, epochs=2, verbose=False, use_cuda=True)
    np.testing.assert_allclose(gpu, cpu, rtol=2e-3)


def test_digits_conv_net_reaches_97_percent_on_gpu(digits):
    _, acc = digits.train("conv", epochs=15, verbose=False, use_cuda=True)
    assert acc >= 0.97


OPTIMIZERS = {
    "sgd": lambda: fk.optimizer.SGD(0.1),
    "momentum_nesterov": lambda: fk.optimizer.Momentum(0.05, momentum=0.9, use_nesterov=True),
    "adagrad": lambda: fk.optimizer.Adagrad(0.05),
    "adam": lambda: fk.optimizer.Adam(0.01),
    "adamax": lambda: fk.optimizer.Adamax(0.01),
    "decayed_adagrad": lambda: fk.optimizer.DecayedAdagrad(0.05),
    "rmsprop": lambda: fk.optimizer.RMSProp(0.01, momentum=0.5),
    "adadelta": lambda: fk.optimizer.Adadelta(0.5),
    "ftrl": lambda: fk.optimizer.Ftrl(0.05, l1=0.01, l2=0.01),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizers_with_regularization_and_clipping_on_gpu(name):
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = 3
    with fk.program_guard(main, startup), fk.unique_name.guard():
        x = layers.data("x", [10])
        y = layers.data("y", [1], dtype="int64")
        h = layers.fc(x, 16, act="tanh", param_attr=fk.ParamAttr(regularizer=fk.regularizer.L2Decay(1e-3)))
        h = layers.dropout(h, 0.2, seed=5)
        pred = layers.fc(h, 4, act="softmax")
        loss = layers.mean(layers.cross_entropy(pred, y))
        fk.clip.set_gradient_clip(fk.clip.GradientClipByGlobalNorm(1.0))
        OPTIMIZERS[name]().minimize(loss)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((8, 10)).astype("float32"),
              "y": rng.integers(0, 4, (8, 1)).astype("int64")} for _ in range(6)]
    cpu, gpu, losses = _train_both(main, startup, feeds, [loss])
    np.testing.assert_allclose(np.ravel(losses["gpu"]), np.ravel(losses["cpu"]), rtol=1e-4)
    _assert_params_close(cpu, gpu, what=name)


SPEC = CTRConfig(num_slots=4, dense_dim=3, vocab=50, max_len=3, seed=2)
DATA = UniformCTRData(SPEC)


def _ctr_feeds(d, batch):
    n = len(d["label"])
    feeds = []
    offs = [np.concatenate([[0], np.cumsum(ln)]) for ln in d["lens"]]
    for lo in range(0, n - batch + 1, batch):
        hi = lo + batch
        feed = {"label": d["label"][lo:hi].reshape(-1, 1)}
        for k in range(SPEC.dense_dim):
            feed[f"dense_{k}"] = d["dense"][lo:hi, k:k + 1]
        for s in range(SPEC.num_slots):
            ids = d["ids"][s][offs[s][lo]:offs[s][hi]].reshape(-1, 1).astype(np.int64)
            feed[f"sparse_{s}"] = fk.create_lod_tensor(ids, [d["lens"][s][lo:hi].tolist()])
        feeds.append(feed)
    return feeds


@pytest.mark.parametrize("opt", ["sgd", "adagrad", "adam"])
def test_sparse_embeddings_sequence_pool_on_gpu(opt):
    """SelectedRows gradients, LoD inputs and sparse optimizer updates on the GPU."""
    main, startup = fk.default_main_program(), fk.default_startup_program()
    main.random_seed = startup.random_seed = 4
    make = {"sgd": lambda: fk.optimizer.SGD(0.2), "adagrad": lambda: fk.optimizer.Adagrad(0.1),
            "adam": lambda: fk.optimizer.Adam(0.01)}[opt]
    model = build_per_slot(SPEC, emb_dim=4, hidden=8, opt=make())
    feeds = _ctr_feeds(DATA.per_slot_columns(320, seed=1), 32)
    cpu, gpu, losses = _train_both(main, startup, feeds, [model["loss"]])
    np.testing.assert_allclose(np.ravel(losses["gpu"]), np.ravel(losses["cpu"]), rtol=1e-4)
    _assert_params_close(cpu, gpu, what=opt)


def test_train_from_dataset_on_gpu_matches_cpu(tmp_path):
    main, startup = fk.default_main_program(), fk.default_startup_program()
    main.random_seed = startup.random_seed = 6
    model = build_per_slot(SPEC, emb_dim=4, hidden=8, lr=0.01)
    files = DATA.write_per_slot_files(str(tmp_path), 2, 300, seed=3)
    params = {}
    for place in (fk.CPUPlace(), GPU):
        exe, scope = fk.Executor(place), fk.Scope()
        exe.run(startup, scope=scope)
        ds = fk.DatasetFactory().create_dataset("QueueDataset")
        ds.set_use_var(model["use_vars"])
        ds.set_filelist(files)
        ds.set_batch_size(32)
        ds.set_thread(1)
        stats = exe.train_from_dataset(main, ds, scope=scope, thread=1)
        assert stats.examples == 600
        params[repr(place)] = _params(main, scope)
    _assert_params_close(params["CPUPlace"], params["CUDAPlace(0)"], what="train_from_dataset")


def _nccl_group(port):
    store = collective.TCPStore("127.0.0.1", port, is_server=True, timeout=30)
    return collective.get_backend("nccl", rank=0, world_size=1, store=store, device=0, timeout=30), store


def test_nccl_one_rank_equals_local_oracle():
    from fleetkit.testing.collective_oracle import check_against_oracle, check_large_all_reduce

    (port,) = free_ports(1)
    backend, store = _nccl_group(port)
    try:
        checks = check_against_oracle(backend)
        checks += check_large_all_reduce(backend, 64 << 20, np.float32)
        assert checks > 10
        import cupy
        x = cupy.arange(10, dtype=cupy.float32)
        out = backend.all_reduce(x)
        assert isinstance(out, cupy.ndarray) and float(out.sum()) == 45.0
    finally:
        backend.close()
        store.close()


def test_collective_fleet_with_nccl_on_gpu_equals_single_process(monkeypatch):
    """fleet collective mode, backend nccl, one rank on CUDAPlace (one worker needs no
    all-reduce ops: the group, broadcast and training run) equals plain CPU training."""
    from fleetkit import fleet
    from fleetkit.fleet import DistributedStrategy, UserDefinedCollectiveRoleMaker

    (port,) = free_ports(1)
    endpoint = f"127.0.0.1:{port}"
    monkeypatch.setenv("PADDLE_TRAINER_ENDPOINTS", endpoint)
    monkeypatch.setenv("PADDLE_TRAINER_ID", "0")
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((6, 12)).astype("float32"),
              "label": rng.integers(0, 5, (6, 1)).astype("int64")} for _ in range(4)]

    def build():
        main, startup = fk.Program(), fk.Program()
        main.random_seed = startup.random_seed = 7
        with fk.program_guard(main, startup), fk.unique_name.guard():
            x = layers.data("x", [12])
            label = layers.data("label", [1], dtype="int64")
            h = layers.fc(x, 16, act="tanh")
            predict = layers.fc(h, 5, act="softmax")
            loss = layers.mean(layers.cross_entropy(predict, label))
        return main, startup, loss

    main, startup, loss = build()
    with fk.program_guard(main, startup):
        fk.optimizer.Momentum(0.3, momentum=0.9).minimize(loss)
    exe, scope = fk.Executor(), fk.Scope()
    exe.run(startup, scope=scope)
    for feed in feeds:
        exe.run(main, feed=feed, scope=scope)
    want = _params(main, scope)

    for fuse in (False, True):
        fleet.init(UserDefinedCollectiveRoleMaker(0, [endpoint]))
        main, startup, loss = build()
        strategy = DistributedStrategy()
        strategy.backend = "nccl"
        strategy.fuse_all_reduce_ops = fuse
        strategy.fuse_grad_size_in_MB = 0.0005
        with fk.program_guard(main, startup):
            fleet.distributed_optimizer(fk.optimizer.Momentum(0.3, momentum=0.9), strategy).minimize(loss)
        exe, scope = fk.Executor(GPU), fk.Scope()
        fleet.init_worker()
        exe.run(fleet.startup_program, scope=scope)
        for feed in feeds:
            exe.run(fleet.main_program, feed=feed, scope=scope)
        _assert_params_close(want, _params(main, scope), rtol=1e-5, what=f"fuse={fuse}")
        fleet.stop_worker()


def test_dgc_op_on_gpu_matches_cpu():
    """The dgc op (momentum correction, selection, masking) on cupy arrays through a one-rank
    nccl group gives the CPU result."""
    n = 40000  # above MIN_COMPRESS_NUMEL
    rng = np.random.default_rng(1)
    u0, v0, g = (rng.standard_normal(n).astype("float32") for _ in range(3))
    main = dgc_op_program(n, m=0.9, use_nesterov=False, ring_id=6, clip_norm=0.5, exchange="sparse",
                          rampup_begin_step=1, rampup_step=1, sparsity=[0.99])
    results = {}
    (port,) = free_ports(1)
    cpu_group = collective.LocalGroup(1, timeout=10)[0]
    gpu_group, store = _nccl_group(port)
    try:
        for place, group in ((fk.CPUPlace(), cpu_group), (GPU, gpu_group)):
            collective.set_group(group, ring_id=6)
            feed = {"u": u0.copy(), "v": v0.copy(), "g": g.copy(), "step": np.array([3.0], "float32")}
            results[repr(place)] = fk.Executor(place).run(main, feed=feed, fetch_list=["u", "v", "g"],
                                                          scope=fk.Scope())
            collective.destroy_group(6)
    finally:
        gpu_group.close()
        store.close()
    for c, g_ in zip(results["CPUPlace"], results["CUDAPlace(0)"]):
        np.testing.assert_allclose(np.asarray(g_), np.asarray(c), rtol=1e-5, atol=1e-6)


def test_collective_ops_in_a_program_on_gpu():
    """c_* ops on cupy arrays through a one-rank nccl group: results stay on the device."""
    import cupy

    (port,) = free_ports(1)
    group, store = _nccl_group(port)
    collective.set_group(group, ring_id=0)
    try:
        main, outs = collective_ops_program(root=0, nranks=1)
        value = np.arange(6, dtype="float32").reshape(2, 3)
        scope = fk.Scope()
        got = fk.Executor(GPU).run(main, feed={"x": value}, fetch_list=list(outs.values()), scope=scope)
        for name, out in zip(outs, got):
            np.testing.assert_array_equal(out, value, err_msg=name)
        kept = scope.get("r_sum")
        assert isinstance(getattr(kept, "values", kept), cupy.ndarray)  # not moved to the host
    finally:
        collective.destroy_group(0)
        group.close()
        store.close()


def test_host_backends_take_gpu_arrays():
    """A host backend (here the local one, 3 thread-ranks) given cupy arrays copies them
    down and the results back up: all_reduce in place, all_gather as a list, broadcast,
    reduce_scatter."""
    import cupy

    def body(backend):
        r = backend.rank
        x = cupy.full((4, 2), r + 1, dtype=cupy.float32)
        summed = backend.all_reduce(x)
        gathered = backend.all_gather(cupy.arange(r + 1, dtype=cupy.int64))
        bcast = backend.broadcast(cupy.full(3, r, dtype=cupy.float64), root=2)
        block = backend.reduce_scatter(cupy.ones((6, 2), dtype=cupy.float32))
        return summed is x, summed, gathered, bcast, block

    group = collective.LocalGroup(3, timeout=20)
    try:
        results = group.run(body)
    finally:
        for b in group.backends:
            b.close()
    for in_place, summed, gathered, bcast, block in results:
        assert in_place and isinstance(summed, cupy.ndarray)
        np.testing.assert_array_equal(cupy.asnumpy(summed), np.full((4, 2), 6, np.float32))
        assert all(isinstance(g, cupy.ndarray) for g in gathered)
        assert [cupy.asnumpy(g).tolist() for g in gathered] == [[0], [0, 1], [0, 1, 2]]
        np.testing.assert_array_equal(cupy.asnumpy(bcast), np.full(3, 2.0))
        assert isinstance(block, cupy.ndarray) and cupy.asnumpy(block).tolist() == [[3.0, 3.0]] * 2
