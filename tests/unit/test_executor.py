"""Executor.run: feeding, fetching, scopes, the prepared-program cache and error messages."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.errors import DTypeError, InvalidArgumentError, NotFoundError, OpError


def _mlp():
    x = layers.data("x", [4])
    out = layers.fc(x, 3, act="relu")
    return x, out


def test_run_feed_fetch_and_scope_access():
    x, out = _mlp()
    exe = fk.Executor(fk.CPUPlace())
    exe.run(fk.default_startup_program())
    xv = np.ones((2, 4), "float32")
    (o,) = exe.run(feed={"x": xv}, fetch_list=[out])
    w = np.array(fk.global_scope().find_var("fc_0.w_0").get_tensor())
    b = np.array(fk.global_scope().find_var("fc_0.b_0").get_tensor())
    np.testing.assert_allclose(o, np.maximum(xv @ w + b, 0), rtol=1e-6)
    # writing through get_tensor().set lands in the scope
    fk.global_scope().find_var("fc_0.b_0").get_tensor().set(np.full(3, 5.0, "float32"), fk.CPUPlace())
    (o2,) = exe.run(feed={"x": xv}, fetch_list=[out.name])
    np.testing.assert_allclose(o2, np.maximum(xv @ w + 5.0, 0), rtol=1e-6)


def test_explicit_scope_is_separate():
    x, out = _mlp()
    exe = fk.Executor(fk.CPUPlace())
    s = fk.Scope()
    exe.run(fk.default_startup_program(), scope=s)
    assert s.find_var("fc_0.w_0") is not None
    assert fk.global_scope().find_var("fc_0.w_0") is None


def test_prepared_program_is_cached_until_program_changes():
    x, out = _mlp()
    exe = fk.Executor(fk.CPUPlace())
    exe.run(fk.default_startup_program())
    prog = fk.default_main_program()
    exe.run(prog, feed={"x": np.ones((1, 4), "float32")}, fetch_list=[out])
    first = exe._cache[prog._id]
    exe.run(prog, feed={"x": np.ones((1, 4), "float32")}, fetch_list=[out])
    assert exe._cache[prog._id] is first
    y = layers.scale(out, 2.0)
    (yv,) = exe.run(prog, feed={"x": np.ones((1, 4), "float32")}, fetch_list=[y])
    assert exe._cache[prog._id] is not first and yv.shape == (1, 3)


def test_fixed_seed_is_reproducible():
    def init_values():
        main, start = fk.Program(), fk.Program()
        start.random_seed = 7
        with fk.program_guard(main, start), fk.unique_name.guard():
            layers.fc(layers.data("x", [5]), 4)
        s = fk.Scope()
        fk.Executor().run(start, scope=s)
        return s.numpy("fc_0.w_0")
    np.testing.assert_array_equal(init_values(), init_values())


def test_feed_wrong_shape_names_var_and_shapes(caplog):
    # fluid 1.4 ran any fed shape: a warning names the variable, the op it does not fit fails
    _mlp()
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    with caplog.at_level("WARNING"), pytest.raises(fk.FleetkitError, match=r"(?s)mul.*x\[2, 5\].*\[4, "):
        exe.run(feed={"x": np.ones((2, 5), "float32")})
    assert any("'x' is declared with shape [-1, 4] and fed [2, 5]" in r.getMessage() for r in caplog.records)


def test_feed_wrong_dtype_names_var():
    _mlp()
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    with pytest.raises(DTypeError, match=r"'x' expects dtype float32, got <U1|'x' expects dtype float32"):
        exe.run(feed={"x": np.array([["a"] * 4])})
    label = layers.data("label", [1], dtype="int64")
    with pytest.raises(DTypeError, match=r"'label' expects dtype int64, got float32"):
        exe.run(feed={"x": np.ones((1, 4), "float32"), "label": np.ones((1, 1), "float32")},
                fetch_list=[label])
    # same-kind precision changes are converted, not rejected
    exe.run(feed={"x": np.ones((1, 4), "float64")})


def test_fetch_unknown_and_feed_unknown():
    _mlp()
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    with pytest.raises(NotFoundError, match="'nope'"):
        exe.run(feed={"x": np.ones((1, 4), "float32")}, fetch_list=["nope"])
    with pytest.raises(NotFoundError, match="'ghost'"):
        exe.run(feed={"ghost": np.ones(1)})


def test_missing_feed_names_the_var():
    _, out = _mlp()
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    with pytest.raises(NotFoundError, match=r"'x'.*(not fed|startup)"):
        exe.run(fetch_list=[out])


def test_lod_feed_forms_and_bad_lod(caplog):
    ids = layers.data("ids", [1], dtype="int64", lod_level=1)
    y = layers.scale(layers.cast(ids, "float32") if hasattr(layers, "cast") else ids, 1.0)
    exe = fk.Executor()
    vals = np.arange(5, dtype="int64").reshape(5, 1)
    t = fk.create_lod_tensor(vals, [[2, 3]], fk.CPUPlace())
    assert t.lod() == [[0, 2, 5]] and t.recursive_sequence_lengths() == [[2, 3]]
    (out,) = exe.run(feed={"ids": t}, fetch_list=[y], return_numpy=False)
    assert out.lod() == [[0, 2, 5]]
    (out,) = exe.run(feed={"ids": (vals, [2, 3])}, fetch_list=[y], return_numpy=False)
    assert out.lod() == [[0, 2, 5]]
    with pytest.raises(InvalidArgumentError, match=r"\[\[0, 2, 4\]\] of variable 'ids'.*ends at 4 but the tensor has 5 rows"):
        exe.run(feed={"ids": fk.LoDTensor(vals, [[0, 2, 4]])}, fetch_list=[y])
    with pytest.raises(InvalidArgumentError, match="do not match data with 5 rows"):
        fk.create_lod_tensor(vals, [[2, 2]], fk.CPUPlace())
    with caplog.at_level("WARNING"):   # fluid 1.4 ran a plain array fed to a sequence variable
        (out,) = exe.run(feed={"ids": vals}, fetch_list=[y], return_numpy=False)
    assert out.lod() == [] and np.asarray(out).ravel().tolist() == [0, 1, 2, 3, 4]
    assert any("'ids' is declared with lod_level 1 and fed a plain array" in r.getMessage() for r in caplog.records)
    pooled = layers.sequence_pool(layers.cast(ids, "float32"), "sum")   # a sequence op then says what it lacks
    with pytest.raises(fk.FleetkitError, match=r"sequence_pool.*has no LoD; feed it as a LoDTensor"):
        exe.run(feed={"ids": vals}, fetch_list=[pooled])


def test_kernel_failure_names_op():
    x = layers.data("x", [-1], append_batch_size=False)
    y = layers.data("y", [-1], append_batch_size=False)
    z = layers.elementwise_add(x, y)
    with pytest.raises(OpError, match=r"(?s)elementwise_add.*x\[3\].*y\[2\]"):
        fk.Executor().run(feed={"x": np.ones(3, "float32"), "y": np.ones(3, "float32")[:2]},
                          fetch_list=[z])


@pytest.mark.gpu
def test_cuda_place_matches_cpu():
    x, out = _mlp()
    exe = fk.Executor(fk.CPUPlace())
    exe.run(fk.default_startup_program())
    xv = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    (cpu,) = exe.run(feed={"x": xv}, fetch_list=[out])
    gpu_scope = fk.Scope()
    gexe = fk.Executor(fk.CUDAPlace(0))
    for p in fk.default_main_program().all_parameters():
        gpu_scope.set(p.name, fk.CUDAPlace(0).to_device(fk.global_scope().numpy(p.name)))
    (gpu,) = gexe.run(feed={"x": xv}, fetch_list=[out], scope=gpu_scope)
    np.testing.assert_allclose(cpu, gpu, rtol=1e-5, atol=1e-6)


def test_run_block_runs_a_sub_block():
    prog = fk.Program()
    b1 = prog._create_block()
    b1.create_var(name="v", shape=[2], dtype="float32")
    b1.append_op("fill_constant", {}, {"Out": ["v"]}, {"shape": [2], "value": 3.0, "dtype": "float32"})
    s = fk.Scope()
    fk.Executor().run_block(prog, 1, s)
    np.testing.assert_array_equal(s.numpy("v"), [3.0, 3.0])
    assert prog.num_blocks == 2 and b1.idx == 1


def test_random_op_with_its_own_seed_repeats_every_run():
    """fluid: an op with a nonzero ``seed`` attr draws the same numbers on every run; without
    one, runs differ."""
    main = fk.Program()
    with fk.program_guard(main, fk.Program()):
        fixed = layers.uniform_random([4, 3], min=-1.0, max=1.0, seed=5)
        free = layers.uniform_random([4, 3], min=-1.0, max=1.0)
    exe = fk.Executor()
    a_fixed, a_free = exe.run(main, fetch_list=[fixed, free])
    b_fixed, b_free = exe.run(main, fetch_list=[fixed, free])
    np.testing.assert_array_equal(a_fixed, b_fixed)
    assert not np.array_equal(a_free, b_free)


def test_check_grad_on_gpu_demanded_without_one_says_why():
    """check_grad(gpu=True) must not silently skip the GPU comparison."""
    from fleetkit.core.backend import gpu_count
    from fleetkit.errors import GPUUnavailableError
    from fleetkit.testing.gradcheck import check_grad
    if gpu_count() > 0:
        pytest.skip("a GPU is present: the comparison runs")
    x = np.random.default_rng(0).random((2, 3))
    check_grad("tanh", {"X": x}, gpu=False)
    with pytest.raises(GPUUnavailableError, match="CUDAPlace needs cupy"):
        check_grad("tanh", {"X": x}, gpu=True)


def test_placeholder_shapes_of_fluid_14_scripts_are_fed_as_given(caplog):
    """fluid 1.4 did not check feeds: the PTB language model declares x [-1, 1, 1] and feeds
    [batch, steps, 1], its initial state [1] fed [layers, batch, hidden], and its label y
    as float32 fed with int64 class ids."""
    x = layers.data("x", shape=[-1, 1, 1], dtype="int64")
    h0 = layers.data("h0", shape=[1], dtype="float32")
    y = layers.data("y", shape=[-1, 1], dtype="float32")
    emb = layers.reshape(layers.embedding(layers.reshape(x, [-1, 1]), size=[10, 4]), [-1, 4])
    state = layers.reduce_sum(h0)
    logits = layers.elementwise_add(layers.fc(emb, 10), state)
    loss = layers.mean(layers.softmax_with_cross_entropy(logits, y))
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    feed = {"x": np.arange(6, dtype="int64").reshape(2, 3, 1), "h0": np.zeros((2, 2, 4), "float32"),
            "y": np.arange(6, dtype="int64").reshape(6, 1)}
    with caplog.at_level("WARNING"):
        first = exe.run(feed=feed, fetch_list=[loss])[0]
        exe.run(feed=feed, fetch_list=[loss])
    said = [r.getMessage() for r in caplog.records]
    assert any("'x' is declared with shape [-1, 1, 1] and fed [2, 3, 1]" in m for m in said), said
    assert any("'h0' is declared with shape [-1, 1] and fed [2, 2, 4]" in m for m in said), said
    assert len(said) == 2                                  # once per variable, not every step
    assert np.isclose(float(first[0]), np.log(10), atol=0.5)
    bad = dict(feed, y=np.full((6, 1), 0.5, "float32"))   # not class ids
    with pytest.raises(fk.FleetkitError, match=r"hard label 'y' must hold class ids"):
        exe.run(feed=bad, fetch_list=[loss])
