"""lookup_table (dense and SelectedRows gradients, padding, bad ids) and sequence_pool
(every pool type, empty sequences, multi-level LoD, gradients, bad LoD); a small
embedding + sequence_pool + fc model trains identically with sparse and dense gradients."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.core.scope import LoDTensor, SelectedRows
from fleetkit.errors import InvalidArgumentError, ShapeError
from fleetkit.testing.gradcheck import check_grad

RNG = np.random.default_rng(2)


def _exe():
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    return exe


# ------------------------------------------------------------- lookup_table
def test_embedding_forward_keeps_lod_and_zeroes_padding():
    ids = layers.data("ids", [1], dtype="int64", lod_level=1)
    emb = layers.embedding(ids, size=[10, 3], padding_idx=-1)  # -1 counts from the end: row 9
    assert emb.shape == (-1, 3) and emb.lod_level == 1
    op = fk.default_main_program().global_block().ops[-1]
    assert op.type == "lookup_table" and op.attr("padding_idx") == 9
    iv = np.array([[1], [9], [4], [1], [0]])
    exe = _exe()
    (out,) = exe.run(feed={"ids": (iv, [2, 3])}, fetch_list=[emb], return_numpy=False)
    w = fk.global_scope().numpy("embedding_0.w_0")
    want = w[iv[:, 0]]
    want[1] = 0
    np.testing.assert_array_equal(np.asarray(out), want)
    assert out.lod() == [[0, 2, 5]]


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("padding_idx", [-1, 2])
def test_lookup_table_grad(sparse, padding_idx):
    ids = (np.array([[2], [0], [2], [4], [2]]), [[0, 3, 5]])
    check_grad("lookup_table", {"W": RNG.normal(size=(6, 3)), "Ids": ids},
               {"is_sparse": sparse, "padding_idx": padding_idx})


def _lookup_grad(sparse, padding_idx, ids, w, g):
    prog = fk.Program()
    block = prog.global_block()
    block.create_var(name="w", shape=w.shape, dtype="float32")
    block.create_var(name="ids", shape=ids.shape, dtype="int64")
    block.create_var(name="g", dtype="float32")
    block.append_op("lookup_table_grad", {"W": ["w"], "Ids": ["ids"], "Out@GRAD": ["g"]}, {"W@GRAD": ["dw"]},
                    {"is_sparse": sparse, "padding_idx": padding_idx}, infer=False)
    (dw,) = fk.Executor().run(prog, feed={"w": w, "ids": ids, "g": g}, fetch_list=["dw"], return_numpy=False)
    return dw


def test_sparse_grad_equals_dense_with_repeats_and_padding():
    ids = np.array([[3], [1], [3], [7], [3], [1], [0]])
    w = RNG.normal(size=(8, 4)).astype("float32")
    g = RNG.normal(size=(7, 4)).astype("float32")
    dense = np.asarray(_lookup_grad(False, 1, ids, w, g))
    sparse = _lookup_grad(True, 1, ids, w, g)
    assert isinstance(sparse, SelectedRows) and sparse.height == 8
    assert sorted(sparse.rows.tolist()) == [0, 3, 3, 3, 7]  # the padding id (1) gets no row
    np.testing.assert_allclose(sparse.to_dense(), dense, rtol=1e-6)
    want = np.zeros_like(w)
    for i, r in enumerate(ids[:, 0]):
        if r != 1:
            want[r] += g[i]
    np.testing.assert_allclose(dense, want, rtol=1e-6)


def test_backward_declares_selected_rows_for_sparse_embedding():
    ids = layers.data("ids", [1], dtype="int64", lod_level=1)
    sparse = layers.embedding(ids, size=[10, 3], is_sparse=True)
    dense = layers.embedding(ids, size=[10, 3])
    loss = layers.mean(layers.elementwise_add(layers.sequence_pool(sparse, "sum"),
                                              layers.sequence_pool(dense, "sum")))
    grads = dict((p.name, g) for p, g in fk.append_backward(loss))
    assert grads["embedding_0.w_0"].type == "selected_rows"
    assert grads["embedding_1.w_0"].type == "lod_tensor"


def test_id_out_of_range_names_var_id_and_vocabulary():
    ids = layers.data("word_ids", [1], dtype="int64")
    emb = layers.embedding(ids, size=[5, 2])
    exe = _exe()
    with pytest.raises(InvalidArgumentError, match=r"'word_ids' holds id 5, outside the vocabulary \[0, 5\)"):
        exe.run(feed={"word_ids": np.array([[1], [5]])}, fetch_list=[emb])
    with pytest.raises(InvalidArgumentError, match=r"holds id 18446744073709551614 \(uint64; -2 as int64\), outside"):
        exe.run(feed={"word_ids": np.array([[-2], [0]])}, fetch_list=[emb])


def test_embedding_bad_arguments():
    ids = layers.data("ids", [1], dtype="int64")
    with pytest.raises(InvalidArgumentError, match="padding_idx 7"):
        layers.embedding(ids, size=[5, 2], padding_idx=7)
    wide = layers.data("wide", [3], dtype="int64")
    with pytest.raises(ShapeError, match=r"last dimension of 1.*\[-1, 3\]"):
        layers.embedding(wide, size=[5, 2])


# ------------------------------------------------------------ sequence_pool
def _ref_pool(x, offsets, pt, pad=0.0):
    rows = []
    for a, b in zip(offsets, offsets[1:]):
        seq = x[a:b]
        if b == a:
            rows.append(np.full(x.shape[1:], pad))
            continue
        rows.append({"sum": seq.sum(0), "average": seq.mean(0), "sqrt": seq.sum(0) / np.sqrt(b - a),
                     "max": seq.max(0), "first": seq[0], "last": seq[-1]}[pt])
    return np.stack(rows)


POOLS = ["sum", "average", "sqrt", "max", "first", "last"]


@pytest.mark.parametrize("pt", POOLS)
def test_sequence_pool_forward(pt):
    x = layers.data("x", [3], lod_level=1)
    out = layers.sequence_pool(x, pt)
    assert out.shape == (-1, 3) and out.lod_level == 0
    xv = RNG.normal(size=(9, 3)).astype("float32")
    lengths = [2, 0, 4, 1, 2, 0]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    (got,) = _exe().run(feed={"x": (xv, lengths)}, fetch_list=[out], return_numpy=False)
    assert got.lod() == []
    np.testing.assert_allclose(np.asarray(got), _ref_pool(xv, offsets, pt), rtol=1e-6)


def test_sequence_pool_max_index_pad_value_and_two_level_lod():
    prog = fk.Program()
    block = prog.global_block()
    block.create_var(name="x", shape=[-1, 2], dtype="float32", lod_level=2)
    block.append_op("sequence_pool", {"X": ["x"]}, {"Out": ["out"], "MaxIndex": ["idx"]},
                    {"pooltype": "MAX", "pad_value": -7.0})
    xv = np.array([[1, 5], [3, 2], [0, 0], [4, 9]], "float32")
    feed = {"x": LoDTensor(xv, [[0, 2, 3], [0, 2, 2, 4]])}
    out, idx = fk.Executor().run(prog, feed=feed, fetch_list=["out", "idx"], return_numpy=False)
    np.testing.assert_array_equal(np.asarray(out), [[3, 5], [-7, -7], [4, 9]])
    np.testing.assert_array_equal(np.asarray(idx), [[1, 0], [-1, -1], [3, 3]])
    assert np.asarray(idx).dtype == np.int32
    assert out.lod() == [[0, 2, 3]]


@pytest.mark.parametrize("pt", [p.upper() for p in POOLS])
def test_sequence_pool_grad(pt):
    x = RNG.permutation(18).reshape(6, 3).astype(np.float64)  # distinct values: no max ties
    check_grad("sequence_pool", {"X": (x, [[0, 2, 2, 5, 6]])}, {"pooltype": pt},
               outputs=["Out", "MaxIndex"], grad_outputs=["Out"])


@pytest.mark.parametrize("pt", [p.upper() for p in POOLS])
def test_sequence_pool_of_one_row_sequences(pt, monkeypatch):
    """One row per sequence (a one-id slot) takes a shortcut (the general rule's segments are
    never built): the same values, MaxIndex, LoD and gradient as the general rule."""
    from fleetkit.core.ops import sequence
    monkeypatch.setattr(sequence, "_segments", lambda *a: pytest.fail("the general rule ran"))
    x = RNG.permutation(12).reshape(4, 3).astype(np.float64)
    check_grad("sequence_pool", {"X": (x, [[0, 1, 2, 3, 4]])}, {"pooltype": pt},
               outputs=["Out", "MaxIndex"], grad_outputs=["Out"])
    prog = fk.Program()
    prog.global_block().create_var(name="x", shape=[-1, 3], dtype="float32", lod_level=2)
    prog.global_block().append_op("sequence_pool", {"X": ["x"]}, {"Out": ["out"], "MaxIndex": ["idx"]},
                                  {"pooltype": pt})
    xv = x.astype(np.float32)
    out, *idx = fk.Executor().run(prog, feed={"x": LoDTensor(xv, [[0, 3, 4], [0, 1, 2, 3, 4]])},
                                  fetch_list=["out"] + ["idx"] * (pt == "MAX"), return_numpy=False)
    np.testing.assert_array_equal(np.asarray(out), _ref_pool(xv, [0, 1, 2, 3, 4], pt.lower()))
    assert out.lod() == [[0, 3, 4]] and not np.shares_memory(np.asarray(out), xv)
    if pt == "MAX":
        np.testing.assert_array_equal(np.asarray(idx[0]), np.repeat(np.arange(4)[:, None], 3, axis=1))


def test_sequence_pool_rank3_input():
    check_grad("sequence_pool", {"X": (RNG.normal(size=(5, 2, 2)), [[0, 3, 5]])}, {"pooltype": "SQRT"},
               outputs=["Out", "MaxIndex"], grad_outputs=["Out"])


def test_sequence_pool_without_lod_fails_clearly():
    x = layers.data("plain", [3])
    out = layers.sequence_pool(x, "sum")
    with pytest.raises(InvalidArgumentError, match="'plain' has no LoD"):
        _exe().run(feed={"plain": np.ones((4, 3), "float32")}, fetch_list=[out])


def test_sequence_pool_offsets_not_matching_rows():
    x = layers.data("x", [3], lod_level=1)
    out = layers.sequence_pool(x, "sum")
    fk.global_scope().set("x", LoDTensor(np.ones((4, 3), "float32"), [[0, 2, 7]]))
    with pytest.raises(InvalidArgumentError, match=r"offsets \[0, 2, 7\] of input 'x' do not fit its 4 rows"):
        fk.Executor().run(fetch_list=[out])


def test_sequence_pool_bad_pool_type():
    x = layers.data("x", [3], lod_level=1)
    with pytest.raises(InvalidArgumentError, match="'median'"):
        layers.sequence_pool(x, "median")


def test_first_and_last_step_layers():
    x = layers.data("x", [1], lod_level=1)
    first, last = layers.sequence_first_step(x), layers.sequence_last_step(x)
    xv = np.arange(6, dtype="float32").reshape(6, 1)
    got_f, got_l = _exe().run(feed={"x": (xv, [2, 3, 1])}, fetch_list=[first, last])
    assert got_f[:, 0].tolist() == [0, 2, 5] and got_l[:, 0].tolist() == [1, 4, 5]


# -------------------------------------------------- sparse vs dense training
def _batches(steps=6, epochs=4):
    rng = np.random.default_rng(7)
    out = []
    for _ in range(steps):
        lengths = rng.integers(1, 5, size=8)
        ids = rng.integers(0, 30, size=(int(lengths.sum()), 1))
        ids[rng.random(ids.shape) < 0.1] = 29  # some padding ids
        first_ids = ids[np.concatenate([[0], np.cumsum(lengths)[:-1]]), 0]
        out.append((ids, lengths.tolist(), (first_ids < 15).astype("int64")[:, None]))  # learnable
    return out * epochs


def _train(is_sparse, use_optimizer, lr=1.0):
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = 11
    with fk.program_guard(main, startup), fk.unique_name.guard():
        ids = layers.data("ids", [1], dtype="int64", lod_level=1)
        label = layers.data("label", [1], dtype="int64")
        emb = layers.embedding(ids, size=[30, 8], is_sparse=is_sparse, padding_idx=29)
        pooled = layers.sequence_pool(emb, "average")
        pred = layers.fc(layers.fc(pooled, 16, act="tanh"), 2, act="softmax")
        loss = layers.mean(layers.cross_entropy(pred, label))
        if use_optimizer:
            fk.optimizer.SGD(learning_rate=lr).minimize(loss)
            grads = []
        else:
            grads = fk.append_backward(loss)
    scope = fk.Scope()
    exe = fk.Executor()
    exe.run(startup, scope=scope)
    names = sorted(p.name for p in main.all_parameters())
    initial = {n: scope.numpy(n).copy() for n in names}
    losses = []
    for ids_v, lengths, lab in _batches():
        fetched = exe.run(main, feed={"ids": (ids_v, lengths), "label": lab},
                          fetch_list=[loss] + [g for _, g in grads], scope=scope)
        losses.append(float(fetched[0][0]))
        for (p, _), g in zip(grads, fetched[1:]):  # manual SGD from the fetched (densified) gradients
            scope.set(p.name, scope.numpy(p.name) - lr * g)
    return {n: scope.numpy(n) for n in names}, losses, initial


@pytest.mark.parametrize("use_optimizer", [False, True])
def test_sparse_and_dense_embedding_train_identically(use_optimizer):
    if use_optimizer and not hasattr(fk.optimizer, "SGD"):
        pytest.skip("fleetkit.optimizer.SGD is not available yet")
    dense, loss_d, initial = _train(False, use_optimizer)
    sparse, loss_s, _ = _train(True, use_optimizer)
    assert np.mean(loss_d[-6:]) < np.mean(loss_d[:6]) - 0.1  # it learns
    np.testing.assert_allclose(loss_s, loss_d, rtol=1e-6)
    for name in dense:
        np.testing.assert_allclose(sparse[name], dense[name], rtol=1e-6, atol=1e-6, err_msg=name)
    pad_row = [n for n in dense if n.startswith("embedding")][0]
    # the padding row never receives a gradient: it keeps its initial value in both runs
    np.testing.assert_array_equal(sparse[pad_row][29], initial[pad_row][29])
    np.testing.assert_array_equal(dense[pad_row][29], initial[pad_row][29])
    assert not np.allclose(dense[pad_row][:29], initial[pad_row][:29])


def _shared_table_grad(is_sparse):
    main, startup = fk.Program(), fk.Program()
    startup.random_seed = 3
    with fk.program_guard(main, startup), fk.unique_name.guard():
        a = layers.data("a", [1], dtype="int64", lod_level=1)
        b = layers.data("b", [1], dtype="int64", lod_level=1)
        attr = fk.ParamAttr(name="shared_emb")
        pa = layers.sequence_pool(layers.embedding(a, [12, 4], is_sparse=is_sparse, param_attr=attr), "sum")
        pb = layers.sequence_pool(layers.embedding(b, [12, 4], is_sparse=is_sparse, param_attr=attr), "max")
        loss = layers.mean(layers.square(pa - pb))
        (_, grad), = fk.append_backward(loss, parameter_list=["shared_emb"])
    exe, scope = fk.Executor(), fk.Scope()
    exe.run(startup, scope=scope)
    feed = {"a": (np.array([[1], [3], [3], [5]]), [3, 1]), "b": (np.array([[3], [7], [1]]), [1, 2])}
    return exe.run(main, feed=feed, fetch_list=[grad], scope=scope)[0], grad.type


def test_shared_table_used_twice_sums_sparse_grads():
    dense, dense_type = _shared_table_grad(False)
    sparse, sparse_type = _shared_table_grad(True)
    assert (dense_type, sparse_type) == ("lod_tensor", "selected_rows")
    np.testing.assert_allclose(sparse, dense, rtol=1e-6)
    assert np.abs(dense[[1, 3, 5, 7]]).sum() > 0 and not dense[[0, 2, 4, 6, 8]].any()


def test_clone_for_test_max_pool_skips_max_index():
    x = layers.data("x", [2], lod_level=1)
    out = layers.sequence_pool(x, "max")
    test_prog = fk.default_main_program().clone(for_test=True)
    assert test_prog.global_block().ops[-1].attr("is_test") is True
    xv = RNG.normal(size=(5, 2)).astype("float32")
    exe = fk.Executor()
    (train_out,) = exe.run(feed={"x": (xv, [2, 3])}, fetch_list=[out])
    (test_out,) = exe.run(test_prog, feed={"x": (xv, [2, 3])}, fetch_list=[out.name], scope=fk.Scope())
    np.testing.assert_array_equal(train_out, test_out)
