"""adaptive_pool2d, image_resize_short, continuous_value_model (cvm), ctc_greedy_decoder,
mean_iou, sequence_scatter, random_crop, merge_selected_rows, get_tensor_from_selected_rows."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.core.scope import SelectedRows
from fleetkit.errors import InvalidArgumentError
from fleetkit.testing.gradcheck import check_grad

RNG = np.random.default_rng(15)


def _run(fetch, feed=None, **kw):
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    return exe.run(feed=feed or {}, fetch_list=fetch, **kw)


def _d(name, shape, dtype="float64", **kw):
    return layers.data(name, shape, dtype=dtype, **kw)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_adaptive_pool2d(kind):
    x = RNG.permutation(2 * 3 * 5 * 7).reshape(2, 3, 5, 7).astype(np.float64) / 10  # distinct: no max ties
    check_grad("adaptive_pool2d", {"X": x}, {"ksize": [2, 3], "pooling_type": kind})
    (got,) = _run([layers.adaptive_pool2d(_d("x", [3, 5, 7]), [2, 3], kind)], {"x": x})
    f = np.max if kind == "max" else np.mean
    hb, wb = [(0, 3), (2, 5)], [(0, 3), (2, 5), (4, 7)]
    want = np.stack([np.stack([f(x[:, :, a:b, c:d], axis=(2, 3)) for c, d in wb], -1) for a, b in hb], -2)
    np.testing.assert_allclose(got, want)


def test_image_resize_short():
    out = layers.image_resize_short(_d("x", [1, 4, 8]), 2)
    assert out.shape == (-1, 1, 2, 4)


def test_cvm_gradient_of_the_embedding_columns():
    """Without use_cvm the output is X[:, 2:], so with a zero CVM input fluid's rule (show/click
    columns get CVM) is the true gradient: finite differences check the embedding columns."""
    x = np.abs(RNG.normal(size=(3, 5)))
    check_grad("cvm", {"X": x, "CVM": np.zeros((3, 2))}, {"use_cvm": False}, outputs=("Y",), wrt=["X"])


def test_cvm_forward_and_its_fluid_gradient():
    x = np.abs(RNG.normal(size=(3, 5))) * 4
    c = np.abs(RNG.normal(size=(3, 2)))
    xv, cv = _d("x", [5]), _d("c", [2])
    y1, y0 = layers.continuous_value_model(xv, cv, True), layers.continuous_value_model(xv, cv, False)
    assert y1.shape == (-1, 5) and y0.shape == (-1, 3)
    got = _run([y1, y0], {"x": x, "c": c})
    want = x.copy()
    want[:, 0], want[:, 1] = np.log(x[:, 0] + 1), np.log(x[:, 1] + 1) - np.log(x[:, 0] + 1)
    np.testing.assert_allclose(got[0], want)
    np.testing.assert_array_equal(got[1], x[:, 2:])
    # the embedding columns get true gradients; the show/click columns get the CVM input (fluid's rule)
    prog = fk.Program()
    b = prog.global_block()
    for n, v in (("x", x), ("c", c), ("g", np.ones((3, 5)))):
        b.create_var(name=n, shape=v.shape, dtype="float64")
    b.append_op("cvm_grad", {"X": ["x"], "CVM": ["c"], "Y@GRAD": ["g"]}, {"X@GRAD": ["dx"]}, {"use_cvm": True},
                infer=False)
    (dx,) = fk.Executor().run(prog, feed={"x": x, "c": c, "g": np.full((3, 5), 2.0)}, fetch_list=["dx"])
    np.testing.assert_array_equal(dx[:, 2:], 2.0)
    np.testing.assert_array_equal(dx[:, :2], c)


def test_ctc_greedy_decoder():
    # argmax per step: [1 1 0 2 2 | 0 0 | 3 0 3]
    steps = [1, 1, 0, 2, 2, 0, 0, 3, 0, 3]
    probs = np.eye(4)[steps] + 0.01
    (got,) = _run([layers.ctc_greedy_decoder(_d("p", [4], lod_level=1), blank=0)],
                  {"p": (probs, [[5, 2, 3]])}, return_numpy=False)
    assert np.asarray(got).ravel().tolist() == [1, 2, 3, 3] and got.lod() == [[0, 2, 2, 4]]


def test_mean_iou():
    p, lab = np.array([0, 1, 1, 2, 2, 2]), np.array([0, 1, 2, 2, 2, 0])
    miou, wrong, correct = _run(list(layers.mean_iou(_d("p", [], dtype="int32"), _d("l", [], dtype="int32"), 4)),
                                {"p": p.astype("int32"), "l": lab.astype("int32")})
    # class 0: 1 right, 1 wrong; class 1: 1 right, 1 wrong (predicted for a 2); class 2: 2 right, 2 wrong
    assert correct.tolist() == [1, 1, 2, 0] and wrong.tolist() == [1, 1, 2, 0]
    assert float(miou[0]) == pytest.approx((0.5 + 0.5 + 0.5) / 3)


def test_sequence_scatter():
    x = RNG.normal(size=(2, 4))
    ids, upd = np.array([[1], [1], [3], [0]]), RNG.normal(size=(4, 1))
    check_grad("sequence_scatter", {"X": x, "Ids": (ids, [[0, 3, 4]]), "Updates": (upd, [[0, 3, 4]])},
               wrt=["X", "Updates"])
    (got,) = _run([layers.sequence_scatter(_d("x", [4]), _d("i", [1], dtype="int64", lod_level=1),
                                           _d("u", [1], lod_level=1))],
                  {"x": x, "i": (ids, [[3, 1]]), "u": (upd, [[3, 1]])})
    want = x.copy()
    want[0, 1] += upd[0, 0] + upd[1, 0]
    want[0, 3] += upd[2, 0]
    want[1, 0] += upd[3, 0]
    np.testing.assert_allclose(got, want)


def test_random_crop():
    x = np.arange(2 * 5 * 6, dtype=np.float64).reshape(2, 5, 6)
    (got,) = _run([layers.random_crop(_d("x", [5, 6]), [3, 4], seed=7)], {"x": x})
    assert got.shape == (2, 3, 4)
    for i in range(2):  # each crop is a contiguous window of its own instance
        r0, c0 = np.argwhere(x[i] == got[i, 0, 0])[0]
        np.testing.assert_array_equal(got[i], x[i, r0:r0 + 3, c0:c0 + 4])


def test_selected_rows_layers():
    prog = fk.Program()
    with fk.program_guard(prog, fk.Program()):
        x = prog.global_block().create_var(name="sr", dtype="float64", type="selected_rows")
        merged = layers.merge_selected_rows(x)
        values = layers.get_tensor_from_selected_rows(merged)
    sr = SelectedRows(np.array([3, 1, 3]), np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), 5)
    scope = fk.Scope()
    scope.set("sr", sr)  # as a sparse gradient would be: SelectedRows live in the scope, they are not fed
    m, v = fk.Executor().run(prog, scope=scope, fetch_list=[merged, values], return_numpy=False)
    assert isinstance(m, SelectedRows) and sorted(np.asarray(m.rows).tolist()) == [1, 3]
    np.testing.assert_allclose(m.to_dense(), sr.to_dense())
    assert np.asarray(v).shape == (2, 2)
    with pytest.raises(InvalidArgumentError, match="not a SelectedRows"):
        scope.set("sr", np.ones((2, 2)))
        fk.Executor().run(prog, scope=scope, fetch_list=[merged])


def test_affine_grid_and_grid_sampler():
    theta = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.0, -1.0, 0.1], [1.0, 0.0, -0.2]]])
    check_grad("affine_grid", {"Theta": theta}, {"output_shape": [2, 1, 3, 4]}, outputs=("Output",))
    x = RNG.normal(size=(2, 2, 4, 5))
    grid = RNG.uniform(-1.2, 1.2, size=(2, 3, 3, 2))  # some points fall outside the image
    frac_x, frac_y = (grid[..., 0] + 1) * 2, (grid[..., 1] + 1) * 1.5
    assert min(np.abs(frac_x - np.round(frac_x)).min(), np.abs(frac_y - np.round(frac_y)).min()) > 1e-3
    check_grad("grid_sampler", {"X": x, "Grid": grid}, outputs=("Output",))
    tv, xv = _d("t", [2, 3]), _d("x", [2, 4, 5])
    g = layers.affine_grid(tv, [2, 2, 4, 5])
    out = layers.grid_sampler(xv, g)
    ident = np.tile(np.array([[[1.0, 0, 0], [0, 1.0, 0]]]), (2, 1, 1))
    got_g, got = _run([g, out], {"t": ident, "x": x})
    np.testing.assert_allclose(got, x, atol=1e-12)  # the identity map samples every pixel exactly
    np.testing.assert_allclose(got_g[0, 0, :, 0], np.linspace(-1, 1, 5))


def test_fsp_matrix():
    x, y = RNG.normal(size=(2, 3, 2, 2)), RNG.normal(size=(2, 4, 2, 2))
    check_grad("fsp_matrix", {"X": x, "Y": y})
    (got,) = _run([layers.fsp_matrix(_d("x", [3, 2, 2]), _d("y", [4, 2, 2]))], {"x": x, "y": y})
    np.testing.assert_allclose(got, np.einsum("nchw,ndhw->ncd", x, y) / 4)


def test_space_to_depth_matches_fluid_element_order():
    x = RNG.normal(size=(2, 8, 4, 6))
    check_grad("space_to_depth", {"X": x}, {"blocksize": 2})
    (got,) = _run([layers.space_to_depth(_d("x", [8, 4, 6]), 2)], {"x": x})
    assert got.shape == (2, 32, 2, 3)
    # fluid's loop: input (b, k, j, i) goes to flat position w2 + W*bs*(h2 + H*bs*(k % oc + oc*b))
    flat, oc = np.empty(x.size), 8 // 4
    for b, k, j, i in np.ndindex(*x.shape):
        off = k // oc
        flat[(i * 2 + off % 2) + 12 * ((j * 2 + off // 2) + 8 * (k % oc + oc * b))] = x[b, k, j, i]
    np.testing.assert_array_equal(got.reshape(-1), flat)


def test_temporal_shift():
    x = RNG.normal(size=(2 * 3, 4, 1, 2))
    check_grad("temporal_shift", {"X": x}, {"seg_num": 3, "shift_ratio": 0.25})
    (got,) = _run([layers.temporal_shift(_d("x", [4, 1, 2]), seg_num=3)], {"x": x})
    v, o = x.reshape(2, 3, 4, 1, 2), got.reshape(2, 3, 4, 1, 2)
    for t in range(3):
        np.testing.assert_array_equal(o[:, t, 0], v[:, t - 1, 0] if t > 0 else 0)   # channel 0: previous frame
        np.testing.assert_array_equal(o[:, t, 1], v[:, t + 1, 1] if t < 2 else 0)   # channel 1: next frame
        np.testing.assert_array_equal(o[:, t, 2:], v[:, t, 2:])


def test_teacher_student_sigmoid_loss():
    x = RNG.normal(size=(8, 1)) * 3
    lab = np.array([[-2.0], [-1.0], [0.3], [1.7], [-2.0], [-1.0], [0.0], [1.0]])
    check_grad("teacher_student_sigmoid_loss", {"X": x, "Label": lab}, outputs=("Y",), wrt=["X"])
    (got,) = _run([layers.teacher_student_sigmoid_loss(_d("x", [1]), _d("l", [1]))], {"x": x, "l": lab})
    sp = np.log1p(np.exp(x))
    want = np.where(lab < -1, sp, np.where(lab < 0, sp - x, np.where(lab < 1, 2 * sp - x * lab,
                                                                       2 * sp - x - x * (lab - 1))))
    np.testing.assert_allclose(got, want)


def test_hash_matches_xxh64():
    import xxhash  # the reference implementation (test extra)
    ids = RNG.integers(0, 10 ** 9, size=(7, 3)).astype(np.int64)
    (got,) = _run([layers.hash(_d("i", [3], dtype="int64", lod_level=1), hash_size=1000, num_hash=2)],
                  {"i": (ids, [[3, 4]])}, return_numpy=False)
    assert np.asarray(got).shape == (7, 2, 1) and got.lod() == [[0, 3, 7]]
    want = [[xxhash.xxh64(row.tobytes(), seed=s).intdigest() % 1000 for s in range(2)] for row in ids]
    assert np.asarray(got)[:, :, 0].tolist() == want
    from fleetkit.core.ops.hash import xxh64_rows
    for k in (1, 4, 5, 9):  # every code path of XXH64: short input, full stripes, stripes plus lanes
        rows = RNG.integers(-2 ** 62, 2 ** 62, size=(3, k), dtype=np.int64)
        assert xxh64_rows(rows.view(np.uint64), 7).tolist() == [xxhash.xxh64(r.tobytes(), seed=7).intdigest()
                                                               for r in rows]


def test_load_reads_what_save_vars_wrote(tmp_path):
    src = layers.create_global_var([2, 3], 0.0, "float32", persistable=True, name="src_v")
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    fk.global_scope().set("src_v", np.arange(6, dtype=np.float32).reshape(2, 3))
    fk.io.save_vars(exe, str(tmp_path), vars=[src])
    prog = fk.Program()
    with fk.program_guard(prog, fk.Program()):
        dst = prog.global_block().create_var(name="dst", shape=[2, 3], dtype="float32")
        layers.load(dst, str(tmp_path / "src_v"))
    (got,) = exe.run(prog, fetch_list=[dst])
    np.testing.assert_array_equal(got, np.arange(6).reshape(2, 3))
    bad = fk.Program()
    with fk.program_guard(bad, fk.Program()):
        layers.load(bad.global_block().create_var(name="d2", dtype="float32"), str(tmp_path / "missing"))
    with pytest.raises(fk.errors.NotFoundError, match="no file"):
        exe.run(bad)


def test_py_func_forward_and_backward():
    x = _d("x", [3])
    x.stop_gradient = False
    h = layers.fc(x, 3, bias_attr=False)
    out = fk.default_main_program().global_block().create_var(name="cubed", dtype="float64", shape=[-1, 3])
    seen = {}

    def cube(t):
        return np.asarray(t) ** 3

    def cube_grad(t, dout):  # the output is skipped: only the input and the output gradient come in
        seen["args"] = 2
        return 3 * np.asarray(t) ** 2 * np.asarray(dout)

    layers.py_func(cube, h, out, backward_func=cube_grad, skip_vars_in_backward_input=out)
    loss = layers.mean(out)
    (w, gw), = fk.append_backward(loss)
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    xs = RNG.normal(size=(4, 3))
    hv, ov, g = exe.run(feed={"x": xs}, fetch_list=[h, out, gw])
    np.testing.assert_allclose(ov, hv ** 3)
    np.testing.assert_allclose(g, xs.T @ (3 * hv ** 2 / 12), rtol=1e-10)
    assert seen["args"] == 2


def test_py_func_gradient_path_by_finite_differences():
    from fleetkit.core.ops.io_ops import register_py_func
    fwd = register_py_func(lambda t: np.sin(np.asarray(t)) * 2)
    bwd = register_py_func(lambda t, o, d: 2 * np.cos(np.asarray(t)) * np.asarray(d))
    check_grad("py_func", {"X": RNG.normal(size=(3, 2))},
               {"forward_callable_id": fwd, "backward_callable_id": bwd, "backward_skip_vars": []})


def test_similarity_focus():
    x = np.zeros((1, 2, 3, 3))
    x[0, 0] = [[0.9, 0.8, 0.1], [0.7, 0.2, 0.3], [0.4, 0.6, 0.5]]
    (got,) = _run([layers.similarity_focus(_d("x", [2, 3, 3]), axis=1, indexes=[0])], {"x": x})
    # picks 0.9 at (0, 0), then 0.6 at (2, 1) (row 0 and column 0 are taken), then 0.3 at (1, 2)
    want = np.zeros((3, 3))
    want[0, 0] = want[2, 1] = want[1, 2] = 1
    np.testing.assert_array_equal(got[0, 0], want)
    np.testing.assert_array_equal(got[0, 1], want)  # marked across the whole axis


def test_tree_conv_coefficients_and_gradients():
    from fleetkit.core.ops.tree_conv import coefficients
    # tree: 1 -> (2, 3), 2 -> (4); the edge list ends with (0, 0)
    edges = np.array([[1, 2], [1, 3], [2, 4], [0, 0]])
    coef = coefficients(edges, 5, max_depth=2)
    l, r, t = coef
    # the patch of node 1: itself (depth 0: top weight 1) and its children (depth 1: top 1/2)
    assert t[0, 0] == 1 and t[0, 1] == t[0, 2] == 0.5 and t[0, 3] == 0
    assert l[0, 1] == 0 and l[0, 2] == 0.5          # first and last of two siblings
    assert r[0, 1] == 0.5 and r[0, 2] == 0.5 * (1 - 0.5)  # fluid's eta_r = (1 - top) * (1 - eta_l)
    assert coef.shape == (3, 4, 5) and coef[:, :, 4].sum() == 0  # 4 patches (3 edges + 1); node 5 unused
    x = RNG.normal(size=(2, 5, 3))
    e = np.stack([edges, np.array([[1, 2], [2, 3], [0, 0], [0, 0]])])
    w = RNG.normal(size=(3, 3, 2, 2))
    check_grad("tree_conv", {"NodesVector": x, "EdgeSet": e, "Filter": w}, {"max_depth": 3},
               wrt=["NodesVector", "Filter"])
    out = layers.tree_conv(_d("n", [5, 3]), _d("e", [4, 2], dtype="int32"), output_size=2, num_filters=2)
    (got,) = _run([out], {"n": x, "e": e.astype("int32")})
    assert got.shape == (2, 5, 2, 2)
