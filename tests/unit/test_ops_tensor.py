"""Tensor ops (concat, split, reshape, reductions, slice, gather, ...) and their layers:
forward vs numpy through the Executor, finite-difference gradients, shape inference
with the -1 batch dim, LoD pass-through and error messages that name shapes."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.core.registry import get_op_def
from fleetkit.errors import InvalidArgumentError, ShapeError
from fleetkit.testing.gradcheck import check_grad

RNG = np.random.default_rng(0)


def _run(fetch, feed=None, startup=True, return_numpy=True):
    exe = fk.Executor()
    if startup:
        exe.run(fk.default_startup_program())
    return exe.run(feed=feed or {}, fetch_list=fetch, return_numpy=return_numpy)


def _r(*shape):
    return RNG.normal(size=shape)


def _data(name, shape, dtype="float32", **kw):
    return layers.data(name, shape, dtype=dtype, **kw)


# =========================================================== forward vs numpy
def test_concat_forward_and_shape_inference():
    a, b = _data("a", [2, 3]), _data("b", [2, 5])
    out = layers.concat([a, b], axis=-1)
    assert out.shape == (-1, 2, 8)
    av, bv = _r(4, 2, 3).astype("float32"), _r(4, 2, 5).astype("float32")
    (got,) = _run([out], {"a": av, "b": bv})
    np.testing.assert_array_equal(got, np.concatenate([av, bv], axis=-1))


def test_concat_axis0_keeps_batch_unknown_and_merges_lod():
    a = _data("a", [2], lod_level=1)
    b = _data("b", [2], lod_level=1)
    out = layers.concat([a, b], axis=0)
    assert out.shape == (-1, 2) and out.lod_level == 1
    av, bv = _r(3, 2).astype("float32"), _r(4, 2).astype("float32")
    (got,) = _run([out], {"a": (av, [1, 2]), "b": (bv, [4])}, return_numpy=False)
    np.testing.assert_array_equal(np.asarray(got), np.concatenate([av, bv]))
    assert got.lod() == [[0, 1, 3, 7]]


@pytest.mark.parametrize("num_or_sections,want", [(3, [2, 2, 2]), ([1, -1, 2], [1, 3, 2]), ([4, 2], [4, 2])])
def test_split_forward(num_or_sections, want):
    x = _data("x", [6, 2])
    outs = layers.split(x, num_or_sections, dim=1)
    assert [o.shape for o in outs] == [(-1, w, 2) for w in want]
    xv = _r(3, 6, 2).astype("float32")
    got = _run(outs, {"x": xv})
    for g, w in zip(got, np.split(xv, np.cumsum(want)[:-1], axis=1)):
        np.testing.assert_array_equal(g, w)


def test_split_on_batch_dim_keeps_it_unknown():
    x = _data("x", [3])
    a, b = layers.split(x, 2, dim=0)
    assert a.shape == b.shape == (-1, 3)
    xv = _r(4, 3).astype("float32")
    ga, gb = _run([a, b], {"x": xv})
    np.testing.assert_array_equal(ga, xv[:2])
    np.testing.assert_array_equal(gb, xv[2:])


def test_reshape_zero_copies_and_minus_one_inferred():
    x = _data("x", [3, 4])
    a = layers.reshape(x, [0, -1])
    b = layers.reshape(x, [-1, 2, 0])  # 0 at index 2 copies dim 2 (= 4)
    c = layers.reshape(x, [0, 2, 6])
    assert a.shape == (-1, 12) and b.shape == (-1, 2, 4) and c.shape == (-1, 2, 6)
    xv = _r(4, 3, 4).astype("float32")
    ga, gb, gc = _run([a, b, c], {"x": xv})
    np.testing.assert_array_equal(ga, xv.reshape(4, 12))
    np.testing.assert_array_equal(gb, xv.reshape(-1, 2, 4))
    np.testing.assert_array_equal(gc, xv.reshape(4, 2, 6))


def test_reshape_actual_shape_overrides_attr_and_act_applies():
    x = _data("x", [6])
    shp = _data("shp", [2], dtype="int32", append_batch_size=False)
    out = layers.reshape(x, [-1, 3], actual_shape=shp, act="relu")
    xv = _r(2, 6).astype("float32")
    (got,) = _run([out], {"x": xv, "shp": np.array([3, 4], dtype="int32")})
    np.testing.assert_array_equal(got, np.maximum(xv.reshape(3, 4), 0))


def test_reshape_keeps_lod_when_rows_kept():
    x = _data("x", [2, 3], lod_level=1)
    out = layers.reshape(x, [0, 6])
    assert out.lod_level == 1
    (got,) = _run([out], {"x": (_r(3, 2, 3).astype("float32"), [1, 2])}, return_numpy=False)
    assert got.lod() == [[0, 1, 3]]


def test_transpose_forward():
    x = _data("x", [3, 4])
    out = layers.transpose(x, perm=[2, 0, 1])
    assert out.shape == (4, -1, 3)
    xv = _r(2, 3, 4).astype("float32")
    (got,) = _run([out], {"x": xv})
    np.testing.assert_array_equal(got, xv.transpose(2, 0, 1))


def test_cast_and_astype():
    x = _data("x", [3])
    i = layers.cast(x, "int64")
    f = i.astype("float64")
    assert i.dtype == "int64" and f.dtype == "float64"
    xv = np.array([[1.7, -2.2, 3.0]], dtype="float32")
    gi, gf = _run([i, f], {"x": xv})
    assert gi.dtype == np.int64 and gf.dtype == np.float64
    np.testing.assert_array_equal(gi, xv.astype("int64"))
    np.testing.assert_array_equal(gf, xv.astype("int64").astype("float64"))


def test_clip_and_clip_by_norm_forward():
    x = _data("x", [4])
    c = layers.clip(x, -0.5, 0.5)
    n1 = layers.clip_by_norm(x, max_norm=1.0)
    n100 = layers.clip_by_norm(x, max_norm=100.0)
    xv = _r(3, 4).astype("float32") * 3
    gc, g1, g100 = _run([c, n1, n100], {"x": xv})
    np.testing.assert_array_equal(gc, np.clip(xv, -0.5, 0.5))
    np.testing.assert_allclose(g1, xv / np.linalg.norm(xv), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(g1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(g100, xv)
    assert g1.dtype == np.float32


@pytest.mark.parametrize("layer,ref", [(layers.reduce_sum, np.sum), (layers.reduce_mean, np.mean),
                                       (layers.reduce_max, np.max), (layers.reduce_min, np.min),
                                       (layers.reduce_prod, np.prod)])
def test_reductions_forward(layer, ref):
    x = _data("x", [3, 4])
    outs = [layer(x), layer(x, dim=1), layer(x, dim=[-1, 1], keep_dim=True), layer(x, dim=0)]
    assert [o.shape for o in outs] == [(1,), (-1, 4), (-1, 1, 1), (3, 4)]
    assert outs[1].lod_level == 0
    xv = RNG.uniform(0.5, 1.5, size=(2, 3, 4)).astype("float32")
    got = _run(outs, {"x": xv})
    wants = [np.reshape(ref(xv), (1,)), ref(xv, axis=1), ref(xv, axis=(1, 2), keepdims=True), ref(xv, axis=0)]
    for g, w in zip(got, wants):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=1e-5)


def test_reduce_sum_of_ints_keeps_dtype_and_lod_passes_when_rows_kept():
    x = _data("x", [3], dtype="int32", lod_level=1)
    out = layers.reduce_sum(x, dim=1)
    assert out.lod_level == 1 and out.dtype == "int32"
    xv = np.arange(9, dtype="int32").reshape(3, 3)
    (got,) = _run([out], {"x": (xv, [2, 1])}, return_numpy=False)
    assert np.asarray(got).dtype == np.int32 and got.lod() == [[0, 2, 3]]
    np.testing.assert_array_equal(np.asarray(got), xv.sum(1))


def test_squeeze_unsqueeze_flatten_forward():
    x = _data("x", [1, 3, 1])
    sq = layers.squeeze(x, axes=[1])
    sq_all = layers.squeeze(x, axes=[])
    un = layers.unsqueeze(x, axes=[0, -1])
    fl0, fl2 = layers.flatten(x, axis=0), layers.flatten(x, axis=2)
    assert sq.shape == (-1, 3, 1) and sq_all.shape == (-1, 3) and un.shape == (1, -1, 1, 3, 1, 1)
    assert fl0.shape == (1, -1) and fl2.shape == (-1, 3)
    xv = _r(2, 1, 3, 1).astype("float32")
    g = _run([sq, sq_all, un, fl0, fl2], {"x": xv})
    np.testing.assert_array_equal(g[0], xv[:, 0])
    np.testing.assert_array_equal(g[1], xv[:, 0, :, 0])
    np.testing.assert_array_equal(g[2], xv[None, ..., None])
    np.testing.assert_array_equal(g[3], xv.reshape(1, 6))
    np.testing.assert_array_equal(g[4], xv.reshape(2, 3))


def test_unsqueeze_axes_index_the_growing_shape():
    x = _data("x", [3, 4], append_batch_size=False)
    out = layers.unsqueeze(x, axes=[2, 0])  # [3,4] -> [3,4,1] -> [1,3,4,1]
    assert out.shape == (1, 3, 4, 1)


def test_stack_expand_slice_gather_forward():
    a, b = _data("a", [3]), _data("b", [3])
    st = layers.stack([a, b], axis=1)
    ex = layers.expand(a, [2, 3])
    sl = layers.slice(a, axes=[1], starts=[-2], ends=[100])
    idx = _data("idx", [1], dtype="int64")
    ga = layers.gather(a, idx)
    assert st.shape == (-1, 2, 3) and ex.shape == (-1, 9) and sl.shape == (-1, 2) and ga.shape == (-1, 3)
    av, bv = _r(4, 3).astype("float32"), _r(4, 3).astype("float32")
    iv = np.array([[3], [0], [3]], dtype="int64")
    g = _run([st, ex, sl, ga], {"a": av, "b": bv, "idx": iv})
    np.testing.assert_array_equal(g[0], np.stack([av, bv], axis=1))
    np.testing.assert_array_equal(g[1], np.tile(av, (2, 3)))
    np.testing.assert_array_equal(g[2], av[:, -2:])
    np.testing.assert_array_equal(g[3], av[[3, 0, 3]])


def test_slice_known_dims_clamped_and_lod_kept():
    x = _data("x", [5, 4], lod_level=1)
    out = layers.slice(x, axes=[1, 2], starts=[1, -3], ends=[10, -1])
    assert out.shape == (-1, 4, 2) and out.lod_level == 1
    xv = _r(3, 5, 4).astype("float32")
    (got,) = _run([out], {"x": (xv, [3])}, return_numpy=False)
    np.testing.assert_array_equal(np.asarray(got), xv[:, 1:, -3:-1])
    assert got.lod() == [[0, 3]]


def test_one_hot_shape_and_fill_constant_batch_size_like():
    ids = _data("ids", [1], dtype="int64")
    oh = layers.one_hot(ids, depth=4)
    shp = layers.shape(oh)
    fc = layers.fill_constant_batch_size_like(ids, shape=[-1, 3], dtype="int64", value=7)
    fc2 = layers.fill_constant_batch_size_like(oh, shape=[2, 1, -1], dtype="float32", value=0.5,
                                               input_dim_idx=1, output_dim_idx=2)
    assert oh.shape == (-1, 4) and oh.dtype == "float32" and shp.dtype == "int32"
    assert fc.shape == (-1, 3) and fc2.shape == (2, 1, 4) and fc.stop_gradient
    iv = np.array([[0], [3], [1]], dtype="int64")
    g_oh, g_shp, g_fc, g_fc2 = _run([oh, shp, fc, fc2], {"ids": iv})
    np.testing.assert_array_equal(g_oh, np.eye(4, dtype="float32")[iv[:, 0]])
    np.testing.assert_array_equal(g_shp, np.array([3, 4], dtype="int32"))
    assert g_fc.dtype == np.int64 and (g_fc == 7).all() and g_fc.shape == (3, 3)
    assert g_fc2.shape == (2, 1, 4) and (g_fc2 == 0.5).all()


def test_fill_constant_batch_size_like_counts_sequences_of_lod_input():
    x = _data("x", [2], lod_level=1)
    out = layers.fill_constant_batch_size_like(x, shape=[-1, 5], dtype="float32", value=1.0)
    (got,) = _run([out], {"x": (_r(6, 2).astype("float32"), [1, 2, 3])})
    assert got.shape == (3, 5)


def test_uniform_random_batch_size_like_range_shape_and_seed():
    x = _data("x", [2])
    a = layers.uniform_random_batch_size_like(x, [-1, 50], min=2.0, max=3.0, seed=7)
    b = layers.uniform_random_batch_size_like(x, [-1, 50], min=2.0, max=3.0, seed=7)
    assert a.shape == (-1, 50)
    ga, gb = _run([a, b], {"x": np.zeros((4, 2), "float32")})
    assert ga.shape == (4, 50) and ga.dtype == np.float32
    assert (ga >= 2).all() and (ga < 3).all() and ga.std() > 0.1
    np.testing.assert_array_equal(ga, gb)  # same seed, same draws


def test_finiteness_checks_sign_argsort():
    x = _data("x", [3])
    inf, nan, fin, sg = layers.has_inf(x), layers.has_nan(x), layers.isfinite(x), layers.sign(x)
    srt, ids = layers.argsort(x, axis=-1)
    assert inf.dtype == "bool" and inf.shape == (1,) and ids.dtype == "int64"
    ok = np.array([[3.0, -1.0, 2.0], [0.0, 5.0, -4.0]], dtype="float32")
    g = _run([inf, nan, fin, sg, srt, ids], {"x": ok})
    assert not g[0][0] and not g[1][0] and g[2][0]
    np.testing.assert_array_equal(g[3], np.sign(ok))
    np.testing.assert_array_equal(g[4], np.sort(ok, axis=-1))
    np.testing.assert_array_equal(g[5], np.argsort(ok, axis=-1))
    bad = ok.copy()
    bad[0, 1] = np.inf
    g = _run([inf, nan, fin], {"x": bad}, startup=False)
    assert g[0][0] and not g[1][0] and not g[2][0]
    bad[1, 1] = np.nan
    g = _run([inf, nan, fin], {"x": bad}, startup=False)
    assert g[0][0] and g[1][0] and not g[2][0]


def test_elementwise_mod_and_floordiv_round_toward_zero():
    x = _data("x", [4], dtype="int64")
    y = _data("y", [4], dtype="int64")
    m, d = layers.elementwise_mod(x, y), layers.elementwise_floordiv(x, y)
    xv = np.array([[7, -7, 7, -7]], dtype="int64")
    yv = np.array([[3, 3, -3, -3]], dtype="int64")
    gm, gd = _run([m, d], {"x": xv, "y": yv})
    np.testing.assert_array_equal(gm, [[1, -1, 1, -1]])
    np.testing.assert_array_equal(gd, [[2, -2, -2, 2]])
    np.testing.assert_array_equal(gd * yv + gm, xv)


def test_elementwise_mod_float_and_broadcast():
    x = _data("x", [2, 3])
    y = _data("y", [3], append_batch_size=False)
    out = layers.elementwise_mod(x, y, axis=2)
    xv = RNG.uniform(0, 10, size=(2, 2, 3)).astype("float32")
    yv = np.array([1.5, 2.0, 4.0], dtype="float32")
    (got,) = _run([out], {"x": xv, "y": yv})
    np.testing.assert_allclose(got, np.fmod(xv, yv), rtol=1e-6)


# ------------------------------------------------------- creation layers
def test_creation_layers():
    t = layers.create_tensor("float32", name="t")
    layers.assign(np.arange(6, dtype="float32").reshape(2, 3), output=t)
    iv = layers.assign(np.array([[1, 2]], dtype="int64"))
    p = layers.create_parameter([2, 3], "float32", name="p",
                                default_initializer=fk.initializer.Constant(0.25))
    g = layers.create_global_var([1], value=3.0, dtype="float32", persistable=True, name="gv")
    fc = layers.fill_constant([2, 3], "int32", 5)
    o, z = layers.ones([2, 3], "float32"), layers.zeros([2], "int64")
    s = layers.sums([t, p, layers.assign(t)])
    zl = layers.zeros_like(s)
    assert t.name == "t" and p.trainable and g.persistable and g.stop_gradient
    assert s.shape == (2, 3) and fc.dtype == "int32" and fc.stop_gradient and iv.shape == (1, 2)
    got = _run([t, iv, p, g, fc, o, z, s, zl])
    tv = np.arange(6, dtype="float32").reshape(2, 3)
    np.testing.assert_array_equal(got[0], tv)
    assert got[1].dtype == np.int64 and got[1].tolist() == [[1, 2]]
    np.testing.assert_array_equal(got[2], np.full((2, 3), 0.25, "float32"))
    assert got[3].tolist() == [3.0] and got[4].dtype == np.int32 and (got[4] == 5).all()
    assert (got[5] == 1).all() and got[6].dtype == np.int64 and (got[6] == 0).all()
    np.testing.assert_array_equal(got[7], 2 * tv + 0.25)
    assert (got[8] == 0).all() and got[8].shape == (2, 3)


def test_fill_constant_into_given_out():
    out = layers.create_tensor("int64")
    ret = layers.fill_constant([3], "int64", 9, out=out)
    assert ret is out and out.shape == (3,)
    (got,) = _run([out])
    assert got.tolist() == [9, 9, 9]


def test_layers_exported_and_ops_registered():
    from fleetkit.core.layers import tensor as tl
    for name in tl.__all__:
        assert getattr(layers, name) is getattr(tl, name)
    for op in ("concat", "split", "reshape", "transpose", "cast", "clip", "clip_by_norm", "reduce_sum",
               "reduce_mean", "reduce_max", "reduce_min", "reduce_prod", "squeeze", "unsqueeze", "stack",
               "expand", "slice", "gather", "flatten"):
        assert get_op_def(op).grad is not None, op
    for op in ("one_hot", "shape", "fill_constant_batch_size_like", "uniform_random_batch_size_like",
               "isfinite", "isinf", "isnan", "sign", "argsort", "elementwise_mod", "elementwise_floordiv"):
        assert get_op_def(op).grad is None, op


# ============================================================ gradients
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat_grad(axis):
    check_grad("concat", {"X": [_r(2, 3), _r(2, 3), _r(2, 3)]}, {"axis": axis})


def test_concat_grad_uneven():
    check_grad("concat", {"X": [_r(2, 1), _r(2, 3)]}, {"axis": 1})


def test_stack_grad():
    # stack's output slot is Y
    check_grad("stack", {"X": [_r(2, 3), _r(2, 3)]}, {"axis": 1}, outputs=("Y",))


@pytest.mark.parametrize("shape,target", [((2, 6), [0, 3, -1]), ((2, 3, 2), [-1]), ((4, 3), [3, 2, 2])])
def test_reshape_grad(shape, target):
    check_grad("reshape", {"X": _r(*shape)}, {"shape": target})


def test_reshape_grad_with_shape_input():
    check_grad("reshape", {"X": _r(2, 6), "Shape": np.array([4, 3], dtype="int32")}, {"shape": [-1, 2]})


def test_transpose_grad():
    check_grad("transpose", {"X": _r(2, 3, 4)}, {"axis": [1, 2, 0]})


def test_cast_grad_casts_back():
    check_grad("cast", {"X": _r(3, 4)}, {"in_dtype": "float64", "out_dtype": "float32"},
               delta=1e-2, rtol=1e-3, atol=1e-4)


def test_clip_grad():
    x = RNG.uniform(-2, 2, size=(4, 5))
    x[np.abs(np.abs(x) - 0.5) < 0.05] = 0.0  # keep clear of the kinks
    check_grad("clip", {"X": x}, {"min": -0.5, "max": 0.5})


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_by_norm_grad(max_norm):
    check_grad("clip_by_norm", {"X": _r(3, 4)}, {"max_norm": max_norm})


@pytest.mark.parametrize("op", ["reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod"])
@pytest.mark.parametrize("attrs", [{"dim": [1]}, {"dim": [0, -1], "keep_dim": True}, {"reduce_all": True}])
def test_reduce_grads(op, attrs):
    x = RNG.uniform(0.5, 1.5, size=(2, 3, 2)) * RNG.choice([-1, 1], size=(2, 3, 2))
    check_grad(op, {"X": x}, {"dim": [0], "keep_dim": False, "reduce_all": False, **attrs})


def test_reduce_prod_grad_with_zeros():
    x = _r(3, 4)
    x[0, 1] = 0.0
    x[2, 0] = x[2, 3] = 0.0  # two zeros in one row: every gradient of that row is 0
    check_grad("reduce_prod", {"X": x}, {"dim": [1], "keep_dim": False, "reduce_all": False})


def test_reduce_max_ties_share_the_gradient_as_fluid():
    x = layers.data("x", [3], append_batch_size=False, stop_gradient=False)
    (gx,) = fk.gradients([layers.reduce_max(x)], [x])
    (got,) = _run([gx], {"x": np.array([1.0, 4.0, 4.0], "float32")})
    assert got.tolist() == [0.0, 1.0, 1.0]


@pytest.mark.parametrize("op,attrs,shape", [("squeeze", {"axes": [1]}, (3, 1, 2)), ("squeeze", {"axes": []}, (1, 3, 1)),
                                            ("unsqueeze", {"axes": [0, 3]}, (2, 3)),
                                            ("flatten", {"axis": 2}, (2, 3, 2)), ("flatten", {"axis": 0}, (2, 3))])
def test_reshaper_grads(op, attrs, shape):
    check_grad(op, {"X": _r(*shape)}, attrs)


def test_expand_grad():
    check_grad("expand", {"X": _r(2, 3)}, {"expand_times": [2, 3]})


def test_slice_grad():
    check_grad("slice", {"Input": _r(3, 4, 5)}, {"axes": [0, 2], "starts": [1, -3], "ends": [3, 100]})


def test_gather_grad_accumulates_repeated_rows():
    check_grad("gather", {"X": _r(4, 3), "Index": np.array([2, 0, 2, 2], dtype="int64")})
    check_grad("gather", {"X": _r(4), "Index": np.array([[1], [1]], dtype="int32")})


def _program_grad_check(build, feed, wrt, delta=1e-6):
    """Analytic d loss / d wrt (append_backward through layers) vs central differences."""
    loss = build()
    (g,) = fk.gradients([loss], [fk.default_main_program().global_block().var(wrt)])
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    got, = exe.run(feed=feed, fetch_list=[g])
    x = feed[wrt]
    num = np.zeros_like(x)
    for i in range(x.size):
        vals = []
        for d in (delta, -delta):
            xp = x.copy()
            xp.reshape(-1)[i] += d
            vals.append(exe.run(feed={**feed, wrt: xp}, fetch_list=[loss])[0].sum())
        num.reshape(-1)[i] = (vals[0] - vals[1]) / (2 * delta)
    np.testing.assert_allclose(got, num, rtol=1e-5, atol=1e-7)


def test_split_grad_through_backward_with_an_unused_part():
    def build():
        x = layers.data("x", [6, 2], dtype="float64", stop_gradient=False)
        a, _unused, c = layers.split(x, [2, -1, 1], dim=1)
        w = layers.assign(RNG.normal(size=(2, 2, 2)))
        return layers.reduce_sum(layers.elementwise_mul(a, w)) + layers.reduce_sum(layers.square(c))
    _program_grad_check(build, {"x": _r(2, 6, 2)}, "x")


def test_layer_chain_grad_through_backward():
    def build():
        x = layers.data("x", [3, 4], dtype="float64", stop_gradient=False)
        y = layers.transpose(layers.reshape(x, [0, 4, 3]), [0, 2, 1])
        y = layers.concat([y, layers.slice(y, axes=[2], starts=[1], ends=[3])], axis=2)
        # max over dim 1: the slice duplicated columns of dim 2, which would tie
        y = layers.unsqueeze(layers.reduce_max(y, dim=1), axes=[1])
        m = layers.reduce_mean(layers.reshape(x, [0, 6, 2]), dim=2)
        z = layers.stack([layers.squeeze(y, axes=[1]), m], axis=0)
        return layers.reduce_sum(layers.square(layers.expand(z, [1, 1, 2])))
    _program_grad_check(build, {"x": _r(2, 3, 4)}, "x")


def test_ops_without_grad_do_not_break_backward():
    x = layers.data("x", [4], stop_gradient=False)
    hidden = layers.fc(x, 3)
    state = layers.fill_constant_batch_size_like(hidden, [-1, 3], "float32", 1.0)
    noise = layers.uniform_random_batch_size_like(hidden, [-1, 3])
    shp = layers.cast(layers.shape(hidden), "float32")
    loss = layers.mean(layers.elementwise_mul(hidden, state) + noise) + layers.reduce_sum(shp)
    params_grads = fk.append_backward(loss)
    assert len(params_grads) == 2
    got = _run([params_grads[0][1]], {"x": np.ones((2, 4), "float32")})
    np.testing.assert_allclose(got[0], np.full((4, 3), 2 / 6), rtol=1e-6)


# ================================================================ errors
def test_concat_mismatch_names_every_input_shape():
    a, b, c = _data("a", [2, 3]), _data("b", [2, 3]), _data("c", [4, 3])
    with pytest.raises(ShapeError) as e:
        layers.concat([a, b, c], axis=2)
    msg = str(e.value)
    assert "[[-1, 2, 3], [-1, 2, 3], [-1, 4, 3]]" in msg
    for n in ("'a'", "'b'", "'c'"):
        assert n in msg


def test_concat_rank_mismatch():
    with pytest.raises(ShapeError, match="different ranks"):
        layers.concat([_data("a", [2, 3]), _data("b", [2])], axis=1)


def test_reshape_incompatible_names_both_shapes():
    x = _data("x", [3, 4], append_batch_size=False)
    with pytest.raises(ShapeError, match=r"cannot reshape \[3, 4\] to \[5, 5\]: 12 elements vs 25"):
        layers.reshape(x, [5, 5])
    y = _data("y", [3, 4])
    with pytest.raises(ShapeError, match=r"cannot reshape \[-1, 3, 4\] to \[0, 5\]"):
        layers.reshape(y, [0, 5])
    with pytest.raises(ShapeError, match="more than one -1"):
        layers.reshape(y, [-1, -1])
    with pytest.raises(ShapeError, match="past the input rank"):
        layers.reshape(y, [0, 0, 0, 0])


def test_reshape_runtime_mismatch_names_var_and_shapes():
    x = _data("x", [6])
    shp = _data("shp", [2], dtype="int32", append_batch_size=False)
    out = layers.reshape(x, [-1, 3], actual_shape=shp)
    with pytest.raises(ShapeError, match=r"'x'.*cannot reshape \[2, 6\] to \[5, 5\]"):
        _run([out], {"x": np.zeros((2, 6), "float32"), "shp": np.array([5, 5], "int32")})


def test_shape_errors_name_the_shapes():
    x = _data("x", [3, 4])
    with pytest.raises(ShapeError, match=r"axis \[0, 2\] is not a permutation .* \[-1, 3, 4\]"):
        layers.transpose(x, [0, 2])
    with pytest.raises(ShapeError, match="not divisible into num=2"):
        layers.split(x, 2, dim=1)
    with pytest.raises(ShapeError, match=r"sections \[1, 1\] sum to 2, but the axis dim is 3"):
        layers.split(x, [1, 1], dim=1)
    with pytest.raises(ShapeError, match=r"dim 1 of shape \[-1, 3, 4\] is 3, not 1"):
        layers.squeeze(x, axes=[1])
    with pytest.raises(ShapeError, match=r"out of range"):
        layers.reduce_sum(x, dim=3)
    with pytest.raises(ShapeError, match=r"expand_times \[2\]"):
        layers.expand(x, [2])
    with pytest.raises(ShapeError, match="same length"):
        layers.slice(x, axes=[1, 2], starts=[0], ends=[1])
    with pytest.raises(ShapeError, match="same shape"):
        layers.stack([x, _data("y", [4, 3])])
    with pytest.raises(ShapeError, match=r"min \(1.0\) must not exceed max \(0.0\)"):
        layers.clip(x, 1.0, 0.0)
    with pytest.raises(InvalidArgumentError, match=r"axis must be an int in \[0, 3\]"):
        layers.flatten(x, axis=4)
    with pytest.raises(ShapeError, match="last dim of 1"):
        layers.one_hot(_data("ids", [2], dtype="int64"), 3)
    with pytest.raises(ShapeError, match="Index must be int32 or int64"):
        layers.gather(x, _data("fi", [1]))


def test_runtime_index_errors_name_the_bad_value():
    x = _data("x", [3])
    idx = _data("idx", [1], dtype="int64")
    out = layers.gather(x, idx)
    with pytest.raises(InvalidArgumentError, match=r"'idx' holds 5, outside \[0, 2\)"):
        _run([out], {"x": np.zeros((2, 3), "float32"), "idx": np.array([[1], [5]], "int64")})
    with fk.program_guard(fk.Program(), fk.Program()):
        ids = _data("ids", [1], dtype="int64")
        oh = layers.one_hot(ids, depth=3)
        with pytest.raises(InvalidArgumentError, match=r"'ids' holds 3, outside \[0, 3\)"):
            _run([oh], {"ids": np.array([[1], [3]], "int64")})


def test_layer_argument_errors():
    x = _data("x", [3])
    with pytest.raises(InvalidArgumentError, match="concat: 'input' must be a Variable"):
        layers.concat([x, np.zeros(3)])
    with pytest.raises(InvalidArgumentError, match="reshape: 'shape' must be a list"):
        layers.reshape(x, 3)
    with pytest.raises(InvalidArgumentError, match="assign: input must be a Variable or a numpy array"):
        layers.assign([1, 2])
    with pytest.raises(InvalidArgumentError, match="split: num_or_sections must be positive"):
        layers.split(x, 0)


# ================================================================== GPU
@pytest.mark.gpu
def test_tensor_ops_on_gpu_match_cpu():
    x = layers.data("x", [3, 4], stop_gradient=False)
    idx = layers.data("idx", [1], dtype="int64")
    y = layers.concat([layers.transpose(x, [0, 2, 1]), layers.reshape(x, [0, 4, 3])], axis=2)
    y = layers.gather(layers.flatten(y, 1), idx)
    p = layers.reduce_prod(layers.clip(x, -1.0, 1.0), dim=[1, 2])
    y = layers.elementwise_add(layers.expand(y, [1, 2]), p, axis=0)
    parts = layers.split(layers.stack([y, y], axis=1), 2, dim=2)
    loss = layers.reduce_mean(layers.reduce_max(parts[0], dim=[1, 2])) + layers.reduce_sum(
        layers.clip_by_norm(layers.slice(parts[1], [2], [3], [9]), 1.0))
    (g,) = fk.gradients([loss], [x])
    feed = {"x": _r(3, 3, 4).astype("float32"), "idx": np.array([[2], [0], [2]], "int64")}
    cpu = fk.Executor(fk.CPUPlace()).run(feed=feed, fetch_list=[loss, g])
    gpu = fk.Executor(fk.CUDAPlace(0)).run(feed=feed, fetch_list=[loss, g])
    for a, b in zip(cpu, gpu):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
