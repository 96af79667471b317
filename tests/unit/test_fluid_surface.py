"""fluid.nets, fluid.metrics, fluid.profiler, memory_optimize / eager deletion, ParallelExecutor."""
import tracemalloc

import numpy as np
import pytest

import fleetkit as fluid
from fleetkit.errors import ConfigError, InvalidArgumentError


def _run(build, feed, seed=3):
    main, start = fluid.Program(), fluid.Program()
    main.random_seed = start.random_seed = seed
    with fluid.program_guard(main, start):
        outs = build()
    exe = fluid.Executor()
    scope = fluid.Scope()
    exe.run(start, scope=scope)
    return exe.run(main, feed=feed, fetch_list=list(outs), scope=scope), scope, main


def test_glu_matches_numpy():
    x = np.random.default_rng(0).standard_normal((3, 6)).astype("float32")
    (out,), _, _ = _run(lambda: [fluid.nets.glu(fluid.layers.data("x", [6]), dim=-1)], {"x": x})
    np.testing.assert_allclose(out, x[:, :3] / (1 + np.exp(-x[:, 3:])), rtol=1e-5)


def _softmax(a):
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_scaled_dot_product_attention_matches_numpy():
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 4, 6)).astype("float32") for _ in range(3))

    def build(heads):
        def b():
            qs, ks, vs = (fluid.layers.data(n, [4, 6]) for n in "qkv")
            return [fluid.nets.scaled_dot_product_attention(qs, ks, vs, num_heads=heads)]
        return b
    (out,), _, _ = _run(build(1), {"q": q, "k": k, "v": v})
    want = _softmax(q @ k.transpose(0, 2, 1) / np.sqrt(6)) @ v
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)

    (out2,), scope, main = _run(build(2), {"q": q, "k": k, "v": v})
    w = [scope.numpy(p.name) for p in main.all_parameters()]  # the q, k, v projections, in order
    qp, kp, vp = q @ w[0], k @ w[1], v @ w[2]
    split = lambda t: t.reshape(2, 4, 2, 3).transpose(0, 2, 1, 3)  # noqa: E731
    heads = _softmax(split(qp) @ split(kp).transpose(0, 1, 3, 2) / np.sqrt(3)) @ split(vp)
    np.testing.assert_allclose(out2, heads.transpose(0, 2, 1, 3).reshape(2, 4, 6), rtol=1e-4, atol=1e-5)
    with pytest.raises(InvalidArgumentError, match="divisible"):
        _run(build(4), {"q": q, "k": k, "v": v})


def test_conv_nets_shapes_and_training():
    img = np.random.default_rng(2).standard_normal((4, 1, 8, 8)).astype("float32")
    lbl = np.array([[0], [1], [2], [1]], "int64")

    def build():
        x = fluid.layers.data("img", [1, 8, 8])
        y = fluid.layers.data("lbl", [1], dtype="int64")
        c = fluid.nets.simple_img_conv_pool(x, num_filters=4, filter_size=3, pool_size=2, pool_stride=2,
                                            act="relu")
        g = fluid.nets.img_conv_group(c, conv_num_filter=[4, 4], pool_size=2, conv_act="relu",
                                      conv_with_batchnorm=[True, False], conv_batchnorm_drop_rate=[0.0, 0.0])
        pred = fluid.layers.fc(g, size=3, act="softmax")
        loss = fluid.layers.mean(fluid.layers.cross_entropy(pred, y))
        fluid.optimizer.SGD(0.1).minimize(loss)
        return [c, g, loss]
    (c, g, loss), _, _ = _run(build, {"img": img, "lbl": lbl})
    assert c.shape == (4, 4, 3, 3) and g.shape == (4, 4, 2, 2) and np.isfinite(loss).all()
    with pytest.raises(InvalidArgumentError, match="2 entries for 3"):
        with fluid.program_guard(fluid.Program(), fluid.Program()):
            fluid.nets.img_conv_group(fluid.layers.data("i", [1, 8, 8]), [2, 2, 2], 2, conv_padding=[1, 1])


@pytest.mark.skipif(not hasattr(fluid.layers, "sequence_conv"), reason="layers.sequence_conv not in this tree yet")
def test_sequence_conv_pool_runs_on_lod_input():
    words = fluid.create_lod_tensor(np.arange(6, dtype="float32").reshape(6, 1).repeat(3, 1), [[2, 4]])
    (out,), _, _ = _run(lambda: [fluid.nets.sequence_conv_pool(
        fluid.layers.data("w", [3], lod_level=1), num_filters=5, filter_size=3)], {"w": words})
    assert out.shape == (2, 5)


def test_metrics_against_sklearn():
    from sklearn.metrics import precision_score, recall_score, roc_auc_score
    rng = np.random.default_rng(4)
    probs = rng.random(200)
    labels = (rng.random(200) < probs).astype("int64")
    auc, prec, rec = fluid.metrics.Auc("auc"), fluid.metrics.Precision(), fluid.metrics.Recall()
    comp = fluid.metrics.CompositeMetric()
    comp.add_metric(prec)
    comp.add_metric(rec)
    for lo in range(0, 200, 50):
        p, y = probs[lo:lo + 50], labels[lo:lo + 50]
        auc.update(np.stack([1 - p, p], 1), y.reshape(-1, 1))
        comp.update(p, y)
    assert auc.eval() == pytest.approx(roc_auc_score(labels, probs), abs=2e-3)
    pred = (probs >= 0.5).astype(int)
    assert comp.eval() == pytest.approx([precision_score(labels, pred), recall_score(labels, pred)])
    comp.reset()
    assert prec.tp == 0 and rec.fn == 0

    acc = fluid.metrics.Accuracy()
    acc.update(value=0.5, weight=2)
    acc.update(value=np.array([1.0]), weight=6)
    assert acc.eval() == pytest.approx(7 / 8)
    acc.reset()
    with pytest.raises(InvalidArgumentError, match="no batch"):
        acc.eval()

    chunk = fluid.metrics.ChunkEvaluator()
    chunk.update(np.array([4]), np.array([5]), np.array([3]))
    chunk.update(6, 5, 5)
    p, r, f1 = chunk.eval()
    assert (p, r) == pytest.approx((0.8, 0.8)) and f1 == pytest.approx(0.8)

    ed = fluid.metrics.EditDistance("ed")
    ed.update(np.array([[0.0], [2.0], [1.0]]), 3)
    assert ed.eval() == pytest.approx((1.0, 2 / 3))
    with pytest.raises(InvalidArgumentError, match="seq_num=2 but 3"):
        ed.update(np.zeros(3), 2)
    assert ed.get_config()["states"]["seq_num"] == 3


def _mlp(width=64, depth=3):
    x = fluid.layers.data("x", [width])
    y = fluid.layers.data("y", [1], dtype="int64")
    h = x
    for _ in range(depth):
        h = fluid.layers.fc(h, width, act="relu")
    pred = fluid.layers.fc(h, 4, act="softmax")
    loss = fluid.layers.mean(fluid.layers.cross_entropy(pred, y))
    fluid.optimizer.SGD(0.05).minimize(loss)
    return h, loss


def _mlp_data(n=32, width=64):
    rng = np.random.default_rng(5)
    return {"x": rng.standard_normal((n, width)).astype("float32"), "y": rng.integers(0, 4, (n, 1))}


def test_profiler_reports_each_op(tmp_path, capsys):
    main, start = fluid.Program(), fluid.Program()
    with fluid.program_guard(main, start):
        _, loss = _mlp()
    exe = fluid.Executor()
    scope = fluid.Scope()
    exe.run(start, scope=scope)
    path = tmp_path / "profile.txt"
    with fluid.profiler.profiler("CPU", sorted_key="total", profile_path=str(path)):
        for _ in range(3):
            exe.run(main, feed=_mlp_data(), fetch_list=[loss], scope=scope)
    text = capsys.readouterr().out
    assert path.read_text().strip() == text.strip()
    rows = {ln.split()[0]: ln.split() for ln in text.splitlines()[3:]}
    assert rows["mul"][1] == "12" and rows["relu"][1] == "9" and rows["sgd"][1] == "24"
    totals = [float(r[2]) for r in rows.values()]
    assert totals == sorted(totals, reverse=True)
    assert sum(float(r[6]) for r in rows.values()) == pytest.approx(1.0, abs=1e-3)
    from fleetkit.core import executor
    assert executor._op_timer is None
    fluid.profiler.start_profiler("All")
    fluid.profiler.reset_profiler()
    exe.run(main, feed=_mlp_data(), fetch_list=[loss], scope=scope)
    assert "mul " in fluid.profiler.report("calls")
    fluid.profiler.stop_profiler(profile_path="")
    with pytest.raises(InvalidArgumentError, match="sorted_key"):
        fluid.profiler.report("fastest")
    with pytest.raises(InvalidArgumentError, match="state"):
        fluid.profiler.start_profiler("TPU")


def _train(mark, steps=2):
    main, start = fluid.Program(), fluid.Program()
    main.random_seed = start.random_seed = 11
    with fluid.program_guard(main, start):
        hidden, loss = _mlp(width=256, depth=4)
    if mark:
        fluid.memory_optimize(main, skip_opt_set={hidden.name} if mark == "skip" else None)
    exe = fluid.Executor()
    scope = fluid.Scope()
    exe.run(start, scope=scope)
    data = _mlp_data(128, 256)
    exe.run(main, feed=data, fetch_list=[loss], scope=scope)  # warm: parameters' gradients exist
    tracemalloc.start()
    losses = [exe.run(main, feed=data, fetch_list=[loss], scope=scope)[0].item() for _ in range(steps)]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return losses, peak, scope, hidden


def test_memory_optimize_frees_intermediates_same_results(monkeypatch):
    monkeypatch.delenv("FLAGS_eager_delete_tensor_gb", raising=False)
    keep, peak_keep, scope_keep, hidden = _train(None)
    free, peak_free, scope_free, hidden2 = _train("all")
    assert keep == free
    assert scope_keep.find_var(hidden.name) is not None and scope_free.find_var(hidden2.name) is None
    assert peak_free < 0.8 * peak_keep, (peak_free, peak_keep)
    _, _, scope_skip, hidden3 = _train("skip")
    assert scope_skip.find_var(hidden3.name) is not None
    monkeypatch.setenv("FLAGS_eager_delete_tensor_gb", "0.0")
    flagged, _, scope_flag, hidden4 = _train(None)
    assert flagged == keep and scope_flag.find_var(hidden4.name) is None
    monkeypatch.setenv("FLAGS_eager_delete_tensor_gb", "lots")
    with pytest.raises(ConfigError, match="FLAGS_eager_delete_tensor_gb='lots'"):
        fluid.Executor()
    with pytest.raises(InvalidArgumentError, match="Program"):
        fluid.release_memory("main")


def test_parallel_executor_runs_like_the_executor():
    main, start = fluid.Program(), fluid.Program()
    main.random_seed = start.random_seed = 2
    with fluid.program_guard(main, start):
        _, loss = _mlp(16, 1)
    data = _mlp_data(8, 16)
    scope_a, scope_b = fluid.Scope(), fluid.Scope()
    fluid.Executor().run(start, scope=scope_a)
    fluid.Executor().run(start, scope=scope_b)
    exe = fluid.Executor()
    want = [exe.run(main, feed=data, fetch_list=[loss], scope=scope_a)[0] for _ in range(3)]
    pe = fluid.ParallelExecutor(use_cuda=False, loss_name=loss.name, main_program=main, scope=scope_b)
    got = [pe.run(fetch_list=[loss.name], feed=data)[0] for _ in range(2)]
    got.append(pe.run([loss.name], feed_dict=[data])[0])
    np.testing.assert_array_equal(np.array(got), np.array(want))
    assert pe.device_count == 1
    with pytest.raises(InvalidArgumentError, match="num_trainers=2"):
        fluid.ParallelExecutor(False, loss.name, main, num_trainers=2)


def _reader_mlp_losses(place):
    """An MLP fed by a py_reader, with memory_optimize, trained 2 passes on ``place``."""
    data = _mlp_data(40, 16)
    samples = list(zip(data["x"], data["y"]))
    main, start = fluid.Program(), fluid.Program()
    main.random_seed = start.random_seed = 4
    with fluid.program_guard(main, start):
        x = fluid.layers.data("x", [16])
        y = fluid.layers.data("y", [1], dtype="int64")
        reader = fluid.layers.create_py_reader_by_data(capacity=4, feed_list=[x, y])
        x, y = fluid.layers.read_file(reader)
        pred = fluid.layers.fc(fluid.layers.fc(x, 16, act="relu"), 4, act="softmax")
        loss = fluid.layers.mean(fluid.layers.cross_entropy(pred, y))
        fluid.optimizer.Adam(0.01).minimize(loss)
    fluid.memory_optimize(main)
    reader.decorate_paddle_reader(fluid.batch(lambda: iter(samples), 8))
    exe, scope = fluid.Executor(place), fluid.Scope()
    exe.run(start, scope=scope)
    losses = []
    for _ in range(2):
        reader.start()
        try:
            while True:
                losses.append(exe.run(main, fetch_list=[loss], scope=scope)[0].item())
        except fluid.core.EOFException:
            reader.reset()
    return losses


@pytest.mark.gpu
def test_py_reader_and_eager_deletion_on_gpu_match_cpu():
    cpu = _reader_mlp_losses(fluid.CPUPlace())
    gpu = _reader_mlp_losses(fluid.CUDAPlace(0))
    assert len(cpu) == 10
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-6)


def test_py_reader_with_eager_deletion_trains():
    losses = _reader_mlp_losses(fluid.CPUPlace())
    assert len(losses) == 10 and np.mean(losses[5:]) < np.mean(losses[:5])  # the second pass fits better


def test_init_on_cpu_is_accepted():
    assert not fluid.initializer.force_init_on_cpu()
    with fluid.initializer.init_on_cpu():
        assert fluid.initializer.force_init_on_cpu()
        lr = fluid.layers.create_global_var([1], 0.5, "float32", persistable=True)
    assert not fluid.initializer.force_init_on_cpu() and lr.persistable


def test_program_parse_from_string_reads_a_saved_model(tmp_path):
    x = fluid.layers.data("x", [3])
    y = fluid.layers.fc(x, 2)
    exe = fluid.Executor()
    exe.run(fluid.default_startup_program())
    fluid.io.save_inference_model(str(tmp_path), ["x"], [y], exe)
    prog = fluid.Program.parse_from_string((tmp_path / "__model__").read_bytes())
    assert [op.type for op in prog.global_block().ops][:1] == ["mul"] and prog.global_block().has_var(y.name)
    with pytest.raises(InvalidArgumentError, match="parse_from_string"):
        fluid.Program.parse_from_string(b"\x00garbage")


def test_get_opti_var_name_list_names_the_accumulators():
    opt = fluid.optimizer.Adam(learning_rate=0.1)
    assert opt.get_opti_var_name_list() == []
    with fluid.program_guard(fluid.Program(), fluid.Program()):
        _, loss = _mlp(8, 1)  # (with its own SGD step too: the names are Adam's only)
        opt.minimize(loss)
        names = opt.get_opti_var_name_list()
        block = fluid.default_main_program().global_block()
        assert len(names) == 4 * len(fluid.default_main_program().all_parameters())  # 2 moments + 2 beta pows
        assert all(block.var(n).persistable for n in names)


def test_bilinear_initializer_upsamples_like_bilinear_interpolation():
    w = fluid.layers.create_parameter([2, 2, 4, 4], "float32", name="up_w",
                                      default_initializer=fluid.initializer.Bilinear())
    exe, scope = fluid.Executor(), fluid.Scope()
    exe.run(fluid.default_startup_program(), scope=scope)
    k = scope.numpy(w.name)
    tri = np.array([0.25, 0.75, 0.75, 0.25])  # factor 2: taps at distances 1.5 and 0.5 from the center
    for i in range(2):
        for j in range(2):
            np.testing.assert_allclose(k[i, j], np.outer(tri, tri), rtol=1e-6)
    with pytest.raises(InvalidArgumentError, match="square"):
        fluid.layers.create_parameter([2, 2, 3, 4], "float32", default_initializer=fluid.initializer.Bilinear())


def test_fetched_tensor_element_accessors_as_fluid_scripts_use_them():
    """``para[1]._get_float_element(0)`` reads a fetched metric in 1.4's model zoo (gru4rec infer)."""
    x = fluid.layers.data("x", [3])
    total = fluid.layers.reduce_sum(x)
    exe = fluid.Executor()
    (t,) = exe.run(feed={"x": np.arange(6, dtype="float32").reshape(2, 3)}, fetch_list=[total],
                   return_numpy=False)
    assert t._get_float_element(0) == 15.0 and t._get_double_element(0) == 15.0
    m = fluid.LoDTensor()
    m.set(np.zeros((2, 2), "float32"), fluid.CPUPlace())
    m._set_float_element(3, 2.5)
    assert m._get_float_element(3) == 2.5 and np.asarray(m)[1, 1] == 2.5
    with pytest.raises(InvalidArgumentError, match=r"element 4 is out of range: the tensor has 4 elements"):
        m._get_float_element(4)
