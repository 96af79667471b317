"""sequence_expand_as, sequence_slice, sequence_enumerate, row_conv, range, linspace, diag, rank,
pad_constant_like, crop, add_position_encoding, bilinear_tensor_product, affine_channel,
group_norm, gru_unit, lstm_unit, dice_loss, npair_loss."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.errors import InvalidArgumentError
from fleetkit.testing.gradcheck import check_grad

RNG = np.random.default_rng(14)
OFF = [0, 2, 2, 5]


def sig(v):
    return 1 / (1 + np.exp(-v))


def _run(fetch, feed=None):
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    return exe.run(feed=feed or {}, fetch_list=fetch, return_numpy=False)


def _d(name, shape, dtype="float64", **kw):
    return layers.data(name, shape, dtype=dtype, **kw)


def test_sequence_expand_as_and_slice():
    x, y = RNG.normal(size=(3, 2)), np.zeros((5, 1))
    check_grad("sequence_expand_as", {"X": x, "Y": (y, [OFF])}, wrt=["X"])
    s = RNG.normal(size=(5, 2))
    off, length = np.array([[1], [0], [0]]), np.array([[1], [0], [2]])
    check_grad("sequence_slice", {"X": (s, [OFF]), "Offset": off, "Length": length}, wrt=["X"])
    xv, yv, sv = _d("x", [2]), _d("y", [1], lod_level=1), _d("s", [2], lod_level=1)
    ov, lv = _d("o", [1], dtype="int64"), _d("l", [1], dtype="int64")
    got = _run([layers.sequence_expand_as(xv, yv), layers.sequence_slice(sv, ov, lv)],
               {"x": x, "y": (y, [[2, 0, 3]]), "s": (s, [[2, 0, 3]]), "o": off, "l": length})
    np.testing.assert_array_equal(np.asarray(got[0]), x[[0, 0, 2, 2, 2]])
    assert got[0].lod() == [OFF]
    np.testing.assert_array_equal(np.asarray(got[1]), s[[1, 2, 3]])
    assert got[1].lod() == [[0, 1, 1, 3]]
    with pytest.raises(InvalidArgumentError, match="sequence 2 .* has 3 rows; offset 2 \\+ length 2"):
        _run([layers.sequence_slice(sv, ov, lv)], {"s": (s, [[2, 0, 3]]), "o": np.array([[0], [0], [2]]),
                                                   "l": np.array([[1], [0], [2]])})


def test_sequence_enumerate_and_row_conv():
    ids = np.array([[1], [2], [3], [4], [5]])
    (got,) = _run([layers.sequence_enumerate(_d("i", [1], dtype="int64", lod_level=1), 3, pad_value=-1)],
                  {"i": (ids, [[2, 3]])})
    np.testing.assert_array_equal(np.asarray(got), [[1, 2, -1], [2, -1, -1], [3, 4, 5], [4, 5, -1], [5, -1, -1]])
    x, f = RNG.normal(size=(5, 3)), RNG.normal(size=(3, 3))
    check_grad("row_conv", {"X": (x, [OFF]), "Filter": f})
    prog_out = layers.row_conv(_d("x", [3], lod_level=1), future_context_size=2)
    (out,) = _run([prog_out], {"x": (x, [[2, 0, 3]])})
    w = fk.global_scope().numpy(fk.default_main_program().global_block().all_parameters()[0].name)
    want = np.zeros_like(x)
    for a, b in zip(OFF, OFF[1:]):
        for t in np.arange(a, b):
            want[t] = sum(w[k] * x[t + k] for k in np.arange(3) if t + k < b)
    np.testing.assert_allclose(np.asarray(out), want)


def test_range_linspace_diag_rank():
    d = RNG.normal(size=(3,))
    check_grad("diag", {"Diagonal": d})
    x = _d("x", [3, 4])
    got = _run([layers.range(1, 8, 2, "int64"), layers.linspace(0, 1, 5, "float32"), layers.diag(_d("d", [3],
               append_batch_size=False)), layers.rank(x)], {"d": d})
    assert np.asarray(got[0]).tolist() == [1, 3, 5, 7]
    np.testing.assert_allclose(np.asarray(got[1]), np.linspace(0, 1, 5))
    np.testing.assert_array_equal(np.asarray(got[2]), np.diag(d))
    assert np.asarray(got[3]).tolist() == [3]


def test_pad_constant_like_and_crop():
    big, small = RNG.normal(size=(4, 5)), RNG.normal(size=(2, 3))
    check_grad("pad_constant_like", {"X": big, "Y": small}, {"pad_value": 1.5}, wrt=["Y"])
    check_grad("crop", {"X": big}, {"shape": [2, 3], "offsets": [1, 2]})
    bv, sv = _d("b", [4, 5], append_batch_size=False), _d("s", [2, 3], append_batch_size=False)
    got = _run([layers.pad_constant_like(bv, sv, 1.5), layers.crop(bv, shape=[2, 3], offsets=[1, 2]),
                layers.crop(bv, shape=sv, offsets=[2, 0])], {"b": big, "s": small})
    want = np.full((4, 5), 1.5)
    want[:2, :3] = small
    np.testing.assert_array_equal(np.asarray(got[0]), want)
    np.testing.assert_array_equal(np.asarray(got[1]), big[1:3, 2:5])
    np.testing.assert_array_equal(np.asarray(got[2]), big[2:4, 0:3])
    with pytest.raises(InvalidArgumentError, match="does not fit"):
        _run([layers.crop(bv, shape=[2, 3], offsets=[3, 0])], {"b": big})


def test_add_position_encoding():
    x = RNG.normal(size=(2, 3, 4))
    check_grad("add_position_encoding", {"X": x}, {"alpha": 0.5, "beta": 2.0})
    (got,) = _run([layers.add_position_encoding(_d("x", [3, 4]), 0.5, 2.0)], {"x": x})
    pos, k = np.arange(3)[:, None], np.arange(2)[None, :]
    val = pos / 10000.0 ** (k / 1)
    pe = np.concatenate([np.sin(val), np.cos(val)], 1)
    np.testing.assert_allclose(np.asarray(got), 0.5 * x + 2.0 * pe[None])


def test_bilinear_tensor_product_and_affine_channel():
    x, y, w, b = RNG.normal(size=(3, 2)), RNG.normal(size=(3, 4)), RNG.normal(size=(5, 2, 4)), RNG.normal(size=(1, 5))
    check_grad("bilinear_tensor_product", {"X": x, "Y": y, "Weight": w, "Bias": b})
    img, sc, bi = RNG.normal(size=(2, 3, 2, 2)), RNG.normal(size=3), RNG.normal(size=3)
    check_grad("affine_channel", {"X": img, "Scale": sc, "Bias": bi})
    out = layers.bilinear_tensor_product(_d("x", [2]), _d("y", [4]), size=5)
    (got,) = _run([out], {"x": x, "y": y})
    assert np.asarray(got).shape == (3, 5)
    iv, sv, bv = _d("i", [3, 2, 2]), _d("s", [3], append_batch_size=False), _d("bb", [3], append_batch_size=False)
    (got,) = _run([layers.affine_channel(iv, sv, bv)], {"i": img, "s": sc, "bb": bi})
    np.testing.assert_allclose(np.asarray(got), img * sc[None, :, None, None] + bi[None, :, None, None])


def test_group_norm():
    x = RNG.normal(size=(2, 4, 3, 1))
    check_grad("group_norm", {"X": x, "Scale": RNG.normal(size=4), "Bias": RNG.normal(size=4)},
               {"groups": 2, "epsilon": 1e-5}, outputs=("Y", "Mean", "Variance"), grad_outputs=("Y",))
    (got,) = _run([layers.group_norm(_d("x", [4, 3, 1]), groups=2)], {"x": x})
    r = x.reshape(2, 2, -1)
    want = ((r - r.mean(2, keepdims=True)) / np.sqrt(r.var(2, keepdims=True) + 1e-5)).reshape(x.shape)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


@pytest.mark.parametrize("origin", [False, True])
def test_gru_unit_matches_one_step_of_dynamic_gru(origin):
    d = 2
    x, h, w, b = RNG.normal(size=(3, 3 * d)), RNG.normal(size=(3, d)), RNG.normal(size=(d, 3 * d)), \
        RNG.normal(size=(1, 3 * d))
    attrs = {"origin_mode": origin}
    check_grad("gru_unit", {"Input": x, "HiddenPrev": h, "Weight": w, "Bias": b}, attrs,
               outputs=("Hidden", "Gate", "ResetHiddenPrev"), grad_outputs=("Hidden",))
    prog = fk.Program()
    block = prog.global_block()
    for n, v in (("x", x), ("h", h), ("w", w), ("b", b)):
        block.create_var(name=n, shape=v.shape, dtype="float64")
    block.append_op("gru_unit", {"Input": ["x"], "HiddenPrev": ["h"], "Weight": ["w"], "Bias": ["b"]},
                    {"Hidden": ["o"], "Gate": ["g"], "ResetHiddenPrev": ["r"]}, attrs)
    block.append_op("gru", {"Input": ["x"], "H0": ["h"], "Weight": ["w"], "Bias": ["b"]}, {"Hidden": ["o2"]}, attrs)
    feed = {"x": fk.LoDTensor(x, [[0, 1, 2, 3]]), "h": h, "w": w, "b": b}
    one, seq = fk.Executor().run(prog, feed=feed, fetch_list=["o", "o2"])
    np.testing.assert_allclose(one, seq, rtol=1e-12)


def test_lstm_unit():
    d = 2
    x, c = RNG.normal(size=(3, 4 * d)), RNG.normal(size=(3, d))
    check_grad("lstm_unit", {"X": x, "C_prev": c}, {"forget_bias": 0.5}, outputs=("C", "H"))
    prog = fk.Program()
    block = prog.global_block()
    block.create_var(name="x", shape=x.shape, dtype="float64")
    block.create_var(name="c", shape=c.shape, dtype="float64")
    block.append_op("lstm_unit", {"X": ["x"], "C_prev": ["c"]}, {"C": ["co"], "H": ["ho"]}, {"forget_bias": 0.5})
    co, ho = fk.Executor().run(prog, feed={"x": x, "c": c}, fetch_list=["co", "ho"])
    i, f, o, g = sig(x[:, :d]), sig(x[:, d:2 * d] + 0.5), sig(x[:, 2 * d:3 * d]), np.tanh(x[:, 3 * d:])
    np.testing.assert_allclose(co, f * c + i * g)
    np.testing.assert_allclose(ho, o * np.tanh(f * c + i * g))
    h, cell = layers.lstm_unit(_d("xt", [3]), _d("hp", [d]), _d("cp", [d]))
    assert h.shape == (-1, d) and cell.shape == (-1, d)


def test_dice_and_npair_losses():
    p = RNG.dirichlet(np.ones(3), size=4)
    lab = RNG.integers(0, 3, size=(4, 1))
    (got,) = _run([layers.dice_loss(_d("p", [3]), _d("l", [1], dtype="int64"))], {"p": p, "l": lab})
    oh = np.eye(3)[lab[:, 0]]
    want = np.mean(1 - 2 * (p * oh).sum(1) / (p.sum(1) + oh.sum(1) + 1e-5))
    assert float(np.asarray(got)[0]) == pytest.approx(want)
    a, pos, labels = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3)), np.array([1.0, 2.0, 1.0, 3.0])
    av, pv = _d("a", [4, 3], append_batch_size=False), _d("q", [4, 3], append_batch_size=False)
    lv = _d("y", [4], append_batch_size=False)
    (got,) = _run([layers.npair_loss(av, pv, lv, l2_reg=0.01)], {"a": a, "q": pos, "y": labels})
    t = (labels[:, None] == labels[None, :]).astype(float)
    t /= t.sum(1, keepdims=True)
    s = a @ pos.T
    logp = s - np.log(np.exp(s).sum(1, keepdims=True))
    ce = (t * -(t * logp).sum(1, keepdims=True)).sum(0).mean()
    l2 = 0.25 * 0.01 * ((a ** 2).sum(1).mean() + (pos ** 2).sum(1).mean())
    assert float(np.asarray(got)[0]) == pytest.approx(ce + l2)


@pytest.mark.parametrize("dim", [0, 1])
def test_spectral_norm(dim):
    w = RNG.normal(size=(3, 4, 2))
    h = w.shape[dim]
    u, v = RNG.normal(size=h), RNG.normal(size=w.size // h)
    attrs = {"dim": dim, "power_iters": 30, "epsilon": 1e-12}
    check_grad("spectral_norm", {"Weight": w, "U": u, "V": v}, attrs, wrt=["Weight"])
    prog = fk.Program()
    b = prog.global_block()
    for n, val in (("w", w), ("u", u), ("v", v)):
        b.create_var(name=n, shape=val.shape, dtype="float64")
    b.append_op("spectral_norm", {"Weight": ["w"], "U": ["u"], "V": ["v"]}, {"Out": ["o"]}, attrs)
    (got,) = fk.Executor().run(prog, feed={"w": w, "u": u, "v": v}, fetch_list=["o"])
    mat = np.moveaxis(w, dim, 0).reshape(h, -1)
    np.testing.assert_allclose(got, w / np.linalg.svd(mat, compute_uv=False)[0], rtol=1e-6)
    out = layers.spectral_norm(_d("p", [3, 4, 2], append_batch_size=False), dim=dim)
    assert out.shape == (3, 4, 2)
