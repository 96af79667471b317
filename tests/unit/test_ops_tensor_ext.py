"""cumsum, reverse, pad, unstack, label_smooth, sequence_mask, comparisons/logic, l2_normalize,
cos_sim, smooth_l1, huber_loss, sum, increment, and sequence_pad/unpad/reverse/concat:
forward against numpy, finite-difference gradients, bad input."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.errors import InvalidArgumentError, ShapeError
from fleetkit.testing.gradcheck import check_grad

RNG = np.random.default_rng(9)


def _run(fetch, feed, startup=False):
    exe = fk.Executor()
    if startup:
        exe.run(fk.default_startup_program())
    return exe.run(feed=feed, fetch_list=fetch, return_numpy=False)


def _d(name, shape, dtype="float64", **kw):
    return layers.data(name, shape, dtype=dtype, **kw)


@pytest.mark.parametrize("exclusive,reverse", [(False, False), (True, False), (False, True), (True, True)])
def test_cumsum(exclusive, reverse):
    x = RNG.normal(size=(3, 4))
    check_grad("cumsum", {"X": x}, {"axis": 1, "exclusive": exclusive, "reverse": reverse})
    (got,) = _run([layers.cumsum(_d("x", [4]), axis=1, exclusive=exclusive, reverse=reverse)], {"x": x})
    src = x[:, ::-1] if reverse else x
    want = np.cumsum(src, 1) - (src if exclusive else 0)
    np.testing.assert_allclose(np.asarray(got), want[:, ::-1] if reverse else want)


def test_reverse_and_pad():
    x = RNG.normal(size=(2, 3, 2))
    check_grad("reverse", {"X": x}, {"axis": [0, 2]})
    check_grad("pad", {"X": x}, {"paddings": [1, 0, 0, 2, 1, 1], "pad_value": 0.5})
    xv = _d("x", [3, 2])
    rev, padded = layers.reverse(xv, [0, 2]), layers.pad(xv, [1, 0, 0, 2, 1, 1], pad_value=0.5)
    assert padded.shape == (-1, 5, 4)
    got = _run([rev, padded], {"x": x})
    np.testing.assert_array_equal(np.asarray(got[0]), x[::-1, :, ::-1])
    np.testing.assert_array_equal(np.asarray(got[1]), np.pad(x, [(1, 0), (0, 2), (1, 1)], constant_values=0.5))
    with pytest.raises(ShapeError, match="paddings must be 2 \\* rank = 6"):
        layers.pad(xv, [1, 1])


def test_unstack():
    x = RNG.normal(size=(2, 3))
    check_grad("unstack", {"X": x}, {"axis": 1, "num": 3}, outputs=("Y",))
    outs = layers.unstack(_d("x", [3]), axis=1)
    assert len(outs) == 3 and outs[0].shape == (-1,)
    got = _run(outs, {"x": x})
    for i, g in enumerate(got):
        np.testing.assert_array_equal(np.asarray(g), x[:, i])


def test_label_smooth():
    x = np.eye(4)[[0, 2, 3]]
    check_grad("label_smooth", {"X": x}, {"epsilon": 0.2})
    prior = np.array([[0.1, 0.2, 0.3, 0.4]])
    xv, pv = _d("x", [4]), _d("p", [1, 4], append_batch_size=False)
    got = _run([layers.label_smooth(xv, epsilon=0.2, dtype="float64"),
                layers.label_smooth(xv, prior_dist=pv, epsilon=0.2, dtype="float64")], {"x": x, "p": prior})
    np.testing.assert_allclose(np.asarray(got[0]), 0.8 * x + 0.05)
    np.testing.assert_allclose(np.asarray(got[1]), 0.8 * x + 0.2 * prior)


def test_sequence_mask():
    lens = np.array([3, 0, 1])
    xv = _d("n", [], dtype="int64")
    got = _run([layers.sequence_mask(xv), layers.sequence_mask(xv, maxlen=5, dtype="float32")], {"n": lens})
    np.testing.assert_array_equal(np.asarray(got[0]), [[1, 1, 1], [0, 0, 0], [1, 0, 0]])
    assert np.asarray(got[1]).dtype == np.float32 and np.asarray(got[1]).shape == (3, 5)
    with pytest.raises(InvalidArgumentError, match="negative length -1"):
        _run([layers.sequence_mask(xv)], {"n": np.array([2, -1])})
    with pytest.raises(InvalidArgumentError, match="holds a length of 4000000000"):  # never allocated
        _run([layers.sequence_mask(xv)], {"n": np.array([3, 4_000_000_000])})


def test_comparisons_and_logic():
    x, y = np.array([[1.0, 2.0, 3.0]]), np.array([[2.0, 2.0, 1.0]])
    xv, yv = _d("x", [3]), _d("y", [3])
    fns = ["less_than", "less_equal", "greater_than", "greater_equal", "equal", "not_equal"]
    got = _run([getattr(layers, f)(xv, yv) for f in fns], {"x": x, "y": y})
    for f, g, ref in zip(fns, got, [np.less, np.less_equal, np.greater, np.greater_equal, np.equal, np.not_equal]):
        assert np.asarray(g).dtype == np.bool_
        np.testing.assert_array_equal(np.asarray(g), ref(x, y), err_msg=f)
    a, b = layers.less_than(xv, yv), layers.equal(xv, yv)
    got = _run([layers.logical_and(a, b), layers.logical_or(a, b), layers.logical_xor(a, b), layers.logical_not(a)],
               {"x": x, "y": y})
    np.testing.assert_array_equal([np.asarray(g)[0].tolist() for g in got],
                                  [[False, False, False], [True, True, False], [True, True, False],
                                   [False, True, True]])


@pytest.mark.parametrize("axis", [0, 1])
def test_l2_normalize(axis):
    x = RNG.normal(size=(3, 4))
    check_grad("norm", {"X": x}, {"axis": axis, "epsilon": 1e-10}, outputs=("Out", "Norm"), grad_outputs=("Out",))
    (got,) = _run([layers.l2_normalize(_d("x", [4]), axis=axis)], {"x": x})
    np.testing.assert_allclose(np.asarray(got), x / np.linalg.norm(x, axis=axis, keepdims=True))


@pytest.mark.parametrize("yrows", [3, 1])
def test_cos_sim(yrows):
    x, y = RNG.normal(size=(3, 4)), RNG.normal(size=(yrows, 4))
    check_grad("cos_sim", {"X": x, "Y": y}, outputs=("Out", "XNorm", "YNorm"), grad_outputs=("Out",))
    (got,) = _run([layers.cos_sim(_d("x", [4]), _d("y", [yrows, 4], append_batch_size=False))], {"x": x, "y": y})
    want = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    np.testing.assert_allclose(np.asarray(got).ravel(), want)


def test_smooth_l1_and_huber():
    x, y = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
    iw, ow = RNG.uniform(0.5, 1.5, size=(4, 3)), RNG.uniform(0.5, 1.5, size=(4, 3))
    for d in (x - y, iw * (x - y)):  # keep finite differences off the kink at |d| = 1 / sigma^2
        assert np.abs(np.abs(d) * 4 - 1).min() > 1e-3
    check_grad("smooth_l1_loss", {"X": x, "Y": y, "InsideWeight": iw, "OutsideWeight": ow}, {"sigma": 2.0},
               outputs=("Out", "Diff"), grad_outputs=("Out",), wrt=["X", "Y"])
    got = _run([layers.smooth_l1(_d("x", [3]), _d("y", [3]), sigma=2.0)], {"x": x, "y": y})[0]
    d = np.abs(x - y)
    np.testing.assert_allclose(np.asarray(got).ravel(), np.where(d < 0.25, 2 * d * d, d - 0.125).sum(1))
    p, t = RNG.normal(size=(6, 1)), RNG.normal(size=(6, 1))
    check_grad("huber_loss", {"X": p, "Y": t}, {"delta": 0.8}, outputs=("Out", "Residual"), grad_outputs=("Out",))
    got = _run([layers.huber_loss(_d("p", [1]), _d("t", [1]), 0.8)], {"p": p, "t": t})[0]
    r = np.abs(t - p)
    np.testing.assert_allclose(np.asarray(got), np.where(r <= 0.8, 0.5 * r * r, 0.8 * (r - 0.4)))


def test_sum_and_increment():
    a, b = _d("a", [2]), _d("b", [2])
    counter = layers.fill_constant([1], "int64", 0)
    layers.increment(counter, value=2)
    copy = layers.increment(counter, value=1, in_place=False)
    got = _run([layers.sum([a, b]), counter, copy], {"a": np.ones((1, 2)), "b": np.ones((1, 2))})
    np.testing.assert_array_equal(np.asarray(got[0]), [[2, 2]])
    assert int(np.asarray(got[1])[0]) == 2 and int(np.asarray(got[2])[0]) == 3


# ------------------------------------------------------------- sequences
OFF = [0, 2, 2, 5]


def test_sequence_pad_and_unpad():
    x = RNG.normal(size=(5, 2))
    check_grad("sequence_pad", {"X": (x, [OFF]), "PadValue": np.array([0.5])}, {"padded_length": 4},
               outputs=("Out", "Length"), grad_outputs=("Out",), wrt=["X"])
    xv, pv = _d("x", [2], lod_level=1), _d("pv", [1], append_batch_size=False)
    out, length = layers.sequence_pad(xv, pv)
    back = layers.sequence_unpad(out, length)
    got = _run([out, length, back], {"x": (x, [[2, 0, 3]]), "pv": np.array([-1.0])})
    want = np.full((3, 3, 2), -1.0)
    want[0, :2], want[2, :3] = x[:2], x[2:]
    np.testing.assert_array_equal(np.asarray(got[0]), want)
    assert np.asarray(got[1]).tolist() == [2, 0, 3]
    np.testing.assert_array_equal(np.asarray(got[2]), x)
    assert got[2].lod() == [OFF]
    check_grad("sequence_unpad", {"X": want, "Length": np.array([2, 0, 3])}, wrt=["X"])
    with pytest.raises(InvalidArgumentError, match="padded_length 2 is shorter than the longest sequence \\(3\\)"):
        _run([layers.sequence_pad(xv, pv, maxlen=2)[0]], {"x": (x, [[2, 0, 3]]), "pv": np.array([0.0])})


def test_sequence_reverse_and_concat():
    x, y = RNG.normal(size=(5, 2)), RNG.normal(size=(4, 2))
    check_grad("sequence_reverse", {"X": (x, [OFF])}, outputs=("Y",))
    check_grad("sequence_concat", {"X": [(x, [OFF]), (y, [[0, 1, 3, 4]])]})
    xv, yv = _d("x", [2], lod_level=1), _d("y", [2], lod_level=1)
    got = _run([layers.sequence_reverse(xv), layers.sequence_concat([xv, yv])],
               {"x": (x, [[2, 0, 3]]), "y": (y, [[1, 2, 1]])})
    np.testing.assert_array_equal(np.asarray(got[0]), x[[1, 0, 4, 3, 2]])
    np.testing.assert_array_equal(np.asarray(got[1]), np.concatenate([x[:2], y[:1], y[1:3], x[2:], y[3:]]))
    assert got[1].lod() == [[0, 3, 5, 9]]
    with pytest.raises(InvalidArgumentError, match="different numbers of sequences"):
        _run([layers.sequence_concat([xv, yv])], {"x": (x, [[2, 3]]), "y": (y, [[1, 2, 1]])})
