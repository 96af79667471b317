"""The LoD rank-table ops against hand-computed results, and their gradients against
finite differences (whole programs: each op needs a rank table made by another)."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.core.ops.lod_rank import LoDRankTable
from fleetkit.errors import InvalidArgumentError
from fleetkit.testing.program_gradcheck import check_program_grad

# three sequences of lengths 2, 3, 1: rows 0-1, 2-4, 5
LOD = [[0, 2, 5, 6]]
X = np.arange(12, dtype=np.float64).reshape(6, 2)


def _run(build, feed, fetch_raw=False):
    main, startup = fk.Program(), fk.Program()
    with fk.program_guard(main, startup):
        outs = build()
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    scope = fk.Scope()
    exe = fk.Executor(fk.CPUPlace())
    exe.run(startup, scope=scope)
    got = exe.run(main, feed=feed, fetch_list=[] if fetch_raw else outs, scope=scope, return_numpy=False)
    return [scope.get(o.name) for o in outs] if fetch_raw else got


def _x(name="x", dtype="float64"):
    return layers.data(name, shape=[2], dtype=dtype, lod_level=1)


def test_rank_table_is_longest_first_and_stable():
    table, = _run(lambda: layers.lod_rank_table(_x()), {"x": fk.LoDTensor(X, LOD)}, fetch_raw=True)
    assert table.items == ((1, 3), (0, 2), (2, 1))
    # equal lengths keep their order (fluid's stable sort)
    table, = _run(lambda: layers.lod_rank_table(_x()), {"x": fk.LoDTensor(X, [[0, 2, 4, 6]])}, fetch_raw=True)
    assert table.items == ((0, 2), (1, 2), (2, 2))


def test_rank_table_of_a_coarser_level_keeps_the_levels_above():
    x = np.zeros((7, 2))
    table, = _run(lambda: layers.lod_rank_table(_x(), level=1), {"x": fk.LoDTensor(x, [[0, 2, 3], [0, 5, 6, 7]])},
                  fetch_raw=True)
    assert table.items == ((0, 5), (1, 1), (2, 1)) and table.coarse_lod == ((0, 2, 3),)
    with pytest.raises(InvalidArgumentError, match="level 2 is outside the 2 LoD level"):
        _run(lambda: layers.lod_rank_table(_x(), level=2), {"x": fk.LoDTensor(x, [[0, 2, 3], [0, 5, 6, 7]])})


def test_max_sequence_len():
    out, = _run(lambda: layers.max_sequence_len(layers.lod_rank_table(_x())), {"x": fk.LoDTensor(X, LOD)})
    assert np.asarray(out).tolist() == [3] and np.asarray(out).dtype == np.int64


def test_lod_tensor_to_array_and_back():
    def build():
        x = _x()
        table = layers.lod_rank_table(x)
        array = layers.lod_tensor_to_array(x, table)
        return array, layers.array_to_lod_tensor(array, table)
    array, back = _run(build, {"x": fk.LoDTensor(X, LOD)}, fetch_raw=True)
    # step t: row t of each sequence longer than t, longest sequence first
    assert [a.tolist() for a in array] == [X[[2, 0, 5]].tolist(), X[[3, 1]].tolist(), X[[4]].tolist()]
    np.testing.assert_array_equal(back.values, X)
    assert back.lod() == LOD


def test_shrink_memory_keeps_the_sequences_still_running():
    def build():
        x = _x()
        table = layers.lod_rank_table(x)
        mem = layers.data("mem", shape=[2], dtype="float64")
        return [layers.shrink_memory(mem, layers.fill_constant([1], "int64", t), table) for t in range(4)]
    mem = np.arange(6, dtype=np.float64).reshape(3, 2)
    outs = _run(build, {"x": fk.LoDTensor(X, LOD), "mem": mem})
    assert [np.asarray(o).shape[0] for o in outs] == [3, 2, 1, 0]
    np.testing.assert_array_equal(np.asarray(outs[1]), mem[:2])


def test_shrink_memory_of_a_lod_tensor_keeps_whole_sequences():
    def build():
        table = layers.lod_rank_table(_x())
        mem = layers.data("mem", shape=[1], dtype="float64", lod_level=1)
        return layers.shrink_memory(mem, layers.fill_constant([1], "int64", 2), table)
    mem = fk.LoDTensor(np.arange(5, dtype=np.float64).reshape(5, 1), [[0, 3, 4, 5]])
    out, = _run(build, {"x": fk.LoDTensor(X, LOD), "mem": mem})
    assert out.lod() == [[0, 3]] and np.asarray(out).reshape(-1).tolist() == [0, 1, 2]


def test_reorder_lod_tensor_by_rank_rows_and_sequences():
    def build():
        table = layers.lod_rank_table(_x())
        dense = layers.data("dense", shape=[1], dtype="float64")
        seqs = layers.data("seqs", shape=[1], dtype="float64", lod_level=1)
        return layers.reorder_lod_tensor_by_rank(dense, table), layers.reorder_lod_tensor_by_rank(seqs, table)
    dense = np.array([[10.0], [11.0], [12.0]])
    seqs = fk.LoDTensor(np.arange(4, dtype=np.float64).reshape(4, 1), [[0, 1, 3, 4]])
    d, s = _run(build, {"x": fk.LoDTensor(X, LOD), "dense": dense, "seqs": seqs})
    assert np.asarray(d).reshape(-1).tolist() == [11.0, 10.0, 12.0]  # table order: sequences 1, 0, 2
    assert np.asarray(s).reshape(-1).tolist() == [1.0, 2.0, 0.0, 3.0] and s.lod() == [[0, 2, 3, 4]]


def test_wrong_inputs_are_named():
    with pytest.raises(InvalidArgumentError, match="has 2 rows and no LoD; the rank table has 3 sequences"):
        _run(lambda: layers.reorder_lod_tensor_by_rank(layers.data("d", shape=[1], dtype="float64"),
                                                       layers.lod_rank_table(_x())),
             {"x": fk.LoDTensor(X, LOD), "d": np.zeros((2, 1))})
    with pytest.raises(InvalidArgumentError, match="'x' has no LoD"):
        _run(lambda: layers.lod_rank_table(layers.data("x", shape=[2], dtype="float64")), {"x": X})
    with pytest.raises(InvalidArgumentError, match="must be a rank table"):
        with fk.program_guard(fk.Program(), fk.Program()):
            layers.max_sequence_len(_x())
    with pytest.raises(InvalidArgumentError, match="needs the same LoD as the rank table's input"):
        def build():
            table = layers.lod_rank_table(_x())
            return layers.lod_tensor_to_array(_x("y"), table)
        _run(build, {"x": fk.LoDTensor(X, LOD), "y": fk.LoDTensor(X, [[0, 6]])}, fetch_raw=True)


def test_rank_table_value_type():
    table = LoDRankTable(((1, 3), (0, 2)))
    assert table.lengths() == [2, 3] and table.offsets() == [0, 2, 5] and table.max_len() == 3


# ------------------------------------------------------------------ gradients
def _checked_ops(program):
    """The ops whose gradient kernels the backward of ``program`` ran."""
    return {op.type[:-len("_grad")] for op in program.global_block().ops if op.type.endswith("_grad")}


def _weighted_sum(out, seed, shape):
    weight = layers.assign(np.random.default_rng(seed).uniform(-1.5, 1.5, size=shape))
    return layers.reduce_sum(layers.elementwise_mul(out, weight))


def test_gradient_through_lod_tensor_to_array_and_back_in_another_order():
    """x's steps put back by the table of y (same lengths, other order): a permutation of
    x's rows, so both ops' gradients are exercised."""
    main = fk.Program()
    with fk.program_guard(main, fk.Program()):
        x, y = _x(), _x("y")
        array = layers.lod_tensor_to_array(x, layers.lod_rank_table(x))
        loss = _weighted_sum(layers.array_to_lod_tensor(array, layers.lod_rank_table(y)), 1, (6, 2))
    feed = {"x": fk.LoDTensor(X.copy(), LOD), "y": fk.LoDTensor(X.copy(), [[0, 3, 5, 6]])}
    check_program_grad(loss, feed, ["x"])
    assert {"lod_tensor_to_array", "array_to_lod_tensor"} <= _checked_ops(main)


def test_gradient_of_shrink_memory():
    main = fk.Program()
    with fk.program_guard(main, fk.Program()):
        table = layers.lod_rank_table(_x())
        mem = layers.data("mem", shape=[2], dtype="float64")
        out = layers.shrink_memory(mem, layers.fill_constant([1], "int64", 1), table)
        loss = _weighted_sum(out, 2, (2, 2))
    feed = {"x": fk.LoDTensor(X.copy(), LOD), "mem": np.random.default_rng(0).normal(size=(3, 2))}
    check_program_grad(loss, feed, ["mem"])
    assert "shrink_rnn_memory" in _checked_ops(main)


def test_gradient_of_reorder_lod_tensor_by_rank():
    main = fk.Program()
    with fk.program_guard(main, fk.Program()):
        table = layers.lod_rank_table(_x())
        seqs = layers.data("seqs", shape=[2], dtype="float64", lod_level=1)
        loss = _weighted_sum(layers.reorder_lod_tensor_by_rank(seqs, table), 3, (4, 2))
    seqs = fk.LoDTensor(np.random.default_rng(1).normal(size=(4, 2)), [[0, 1, 3, 4]])
    check_program_grad(loss, {"x": fk.LoDTensor(X.copy(), LOD), "seqs": seqs}, ["seqs"])
    assert "reorder_lod_tensor_by_rank" in _checked_ops(main)


def test_a_while_loop_over_the_rank_table_ops_computes_what_dynamic_rnn_does():
    """fluid 1.4 builds DynamicRNN from these ops and a while op; written out by hand with
    fleetkit's While (forward only), they give DynamicRNN's outputs."""
    lengths, width = [2, 4, 1, 3], 3
    main, startup = fk.Program(), fk.Program()
    startup.random_seed = 4
    attrs = [fk.ParamAttr(name="w_x"), fk.ParamAttr(name="w_h")]
    with fk.program_guard(main, startup):
        x = layers.data("x", shape=[2], dtype="float64", lod_level=1)
        h0 = layers.data("h0", shape=[width], dtype="float64")
        drnn = layers.DynamicRNN()
        with drnn.block():
            x_t = drnn.step_input(x)
            h = drnn.memory(init=h0, need_reorder=True)
            new_h = layers.fc([x_t, h], width, act="tanh", param_attr=attrs, bias_attr="b")
            drnn.update_memory(h, new_h)
            drnn.output(new_h)
        want = drnn()

        table = layers.lod_rank_table(x)
        max_len = layers.max_sequence_len(table)
        steps = layers.lod_tensor_to_array(x, table)
        i = layers.fill_constant([1], "int64", 0)
        memory = layers.array_write(layers.reorder_lod_tensor_by_rank(h0, table), i)
        outputs = layers.create_array("float64")
        cond = layers.less_than(i, max_len)
        with layers.While(cond).block():
            prev = layers.shrink_memory(layers.array_read(memory, i), i, table)
            new_h = layers.fc([layers.array_read(steps, i), prev], width, act="tanh", param_attr=attrs,
                              bias_attr="b")
            layers.array_write(new_h, i, outputs)
            layers.increment(i)
            layers.array_write(new_h, i, memory)
            layers.less_than(i, max_len, cond=cond)
        got = layers.array_to_lod_tensor(outputs, table)
    scope = fk.Scope()
    exe = fk.Executor(fk.CPUPlace())
    exe.run(startup, scope=scope)
    rng = np.random.default_rng(6)
    feed = {"x": fk.LoDTensor(rng.normal(size=(sum(lengths), 2)), [np.cumsum([0] + lengths).tolist()]),
            "h0": rng.normal(size=(len(lengths), width))}
    a, b = exe.run(main, feed=feed, fetch_list=[want, got], scope=scope, return_numpy=False)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-12)
    assert a.lod() == b.lod() == [np.cumsum([0] + lengths).tolist()]
