"""softmax, cross_entropy, softmax_with_cross_entropy, sigmoid_cross_entropy_with_logits,
square_error_cost and log_loss: forward vs numpy, finite-difference gradients, errors."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.errors import FleetkitError, InvalidArgumentError, ShapeError
from fleetkit.testing.gradcheck import check_grad

RNG = np.random.default_rng(0)


def _ref_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _run(fetch, feed):
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    return exe.run(feed=feed, fetch_list=fetch)


def _probs(n, d):
    return _ref_softmax(RNG.normal(size=(n, d)))


# ------------------------------------------------------------------ softmax
def test_softmax_forward_is_stable_and_matches_numpy():
    x = layers.data("x", [5])
    out = layers.softmax(x)
    xv = (RNG.normal(size=(4, 5)) * 300).astype("float32")  # exp would overflow without the shift
    (got,) = _run([out], {"x": xv})
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, _ref_softmax(xv.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_softmax_axis():
    x = layers.data("x", [3, 4])
    out = layers.softmax(x, axis=1)
    xv = RNG.normal(size=(2, 3, 4)).astype("float32")
    (got,) = _run([out], {"x": xv})
    np.testing.assert_allclose(got, _ref_softmax(xv, axis=1), rtol=1e-5)


def test_softmax_as_fc_activation_uses_default_attrs():
    x = layers.data("x", [3])
    out = layers.fc(x, 4, act="softmax")
    assert fk.default_main_program().global_block().ops[-1].type == "softmax"
    (got,) = _run([out], {"x": RNG.normal(size=(5, 3)).astype("float32")})
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("shape,axis", [((3, 4), -1), ((2, 3, 4), 1)])
def test_softmax_grad(shape, axis):
    check_grad("softmax", {"X": RNG.normal(size=shape)}, {"axis": axis})


# ------------------------------------------------------------- cross_entropy
def test_cross_entropy_hard_soft_and_ignore_index():
    p = layers.data("p", [4])
    lab = layers.data("lab", [1], dtype="int64")
    soft = layers.data("soft", [4])
    hard = layers.cross_entropy(p, lab, ignore_index=2)
    soft_out = layers.cross_entropy(p, soft, soft_label=True)
    pv = _probs(5, 4).astype("float32")
    lv = np.array([[0], [2], [3], [1], [2]])
    sv = _probs(5, 4).astype("float32")
    got_h, got_s = _run([hard, soft_out], {"p": pv, "lab": lv, "soft": sv})
    want_h = -np.log(pv[np.arange(5), lv[:, 0]])[:, None]
    want_h[lv[:, 0] == 2] = 0
    np.testing.assert_allclose(got_h, want_h, rtol=1e-6)
    np.testing.assert_allclose(got_s, -(sv * np.log(pv)).sum(1, keepdims=True), rtol=1e-5)
    assert got_h.shape == (5, 1) and got_h.dtype == np.float32


def test_cross_entropy_zero_probability_is_finite():
    p = layers.data("p", [2])
    lab = layers.data("lab", [1], dtype="int64")
    out = layers.cross_entropy(p, lab)
    (got,) = _run([out], {"p": np.array([[1.0, 0.0]], "float32"), "lab": np.array([[1]])})
    assert np.isfinite(got).all() and got[0, 0] > 50


def test_cross_entropy_grads():
    lab = np.array([[0], [3], [1], [-100]])
    check_grad("cross_entropy", {"X": _probs(4, 4), "Label": lab}, outputs=["Y"])
    check_grad("cross_entropy", {"X": _probs(4, 4), "Label": _probs(4, 4)}, {"soft_label": True},
               outputs=["Y"], wrt=["X"])


def test_cross_entropy_rank3():
    check_grad("cross_entropy", {"X": _ref_softmax(RNG.normal(size=(2, 3, 4))),
                                 "Label": RNG.integers(0, 4, size=(2, 3, 1))}, outputs=["Y"])


def test_cross_entropy_label_shape_mismatch_names_shapes():
    p = layers.data("p", [4])
    soft = layers.data("soft", [3])
    with pytest.raises(ShapeError, match=r"\[-1, 3\].*\[-1, 4\]"):
        layers.cross_entropy(p, soft, soft_label=True)
    lab3 = layers.data("lab3", [2, 1], dtype="int64")
    with pytest.raises(ShapeError, match="rank"):
        layers.cross_entropy(p, lab3)
    flt = layers.data("flt", [1])      # a float label builds (fluid 1.4 checks the fed value) ...
    out = layers.cross_entropy(p, flt)
    exe = fk.Executor()
    probs = np.full((2, 4), 0.25, "float32")
    got = exe.run(feed={"p": probs, "flt": np.array([[1.0], [3.0]], "float32")}, fetch_list=[out])[0]
    np.testing.assert_allclose(got, np.log(4) * np.ones((2, 1)), rtol=1e-6)
    with pytest.raises(fk.FleetkitError, match=r"hard label 'flt' must hold class ids"):   # ... not 0.5
        exe.run(feed={"p": probs, "flt": np.array([[1.0], [0.5]], "float32")}, fetch_list=[out])


def test_cross_entropy_runtime_batch_mismatch_and_bad_class():
    p = layers.data("p", [3])
    lab = layers.data("lab", [1], dtype="int64")
    out = layers.cross_entropy(p, lab)
    pv = _probs(4, 3).astype("float32")
    with pytest.raises(ShapeError, match=r"shape \[3, 1\].*4 rows"):
        _run([out], {"p": pv, "lab": np.zeros((3, 1), "int64")})
    with pytest.raises(InvalidArgumentError, match="class 7"):
        _run([out], {"p": pv, "lab": np.array([[0], [7], [1], [2]])})


# ------------------------------------------------- softmax_with_cross_entropy
def test_softmax_with_cross_entropy_forward():
    x = layers.data("x", [5])
    lab = layers.data("lab", [1], dtype="int64")
    loss, sm = layers.softmax_with_cross_entropy(x, lab, return_softmax=True)
    xv = (RNG.normal(size=(6, 5)) * 100).astype("float32")
    lv = RNG.integers(0, 5, size=(6, 1))
    got_loss, got_sm = _run([loss, sm], {"x": xv, "lab": lv})
    x64 = xv.astype(np.float64)
    logp = x64 - x64.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    np.testing.assert_allclose(got_sm, np.exp(logp), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got_loss, -logp[np.arange(6), lv[:, 0]][:, None], rtol=1e-5, atol=1e-4)
    assert np.isfinite(got_loss).all()


@pytest.mark.parametrize("soft", [False, True])
def test_softmax_with_cross_entropy_grad(soft):
    x = RNG.normal(size=(4, 5))
    label = _probs(4, 5) if soft else np.array([[0], [4], [-100], [2]])
    check_grad("softmax_with_cross_entropy", {"Logits": x, "Label": label}, {"soft_label": soft},
               outputs=["Softmax", "Loss"], grad_outputs=["Loss"], wrt=["Logits"])


def test_softmax_with_cross_entropy_backward_skips_label():
    x = layers.data("x", [3])
    lab = layers.data("lab", [1], dtype="int64")
    loss = layers.mean(layers.softmax_with_cross_entropy(layers.fc(x, 3), lab))
    fk.append_backward(loss)
    grad_ops = [op for op in fk.default_main_program().global_block().ops
                if op.type == "softmax_with_cross_entropy_grad"]
    assert len(grad_ops) == 1
    assert "Label@GRAD" not in grad_ops[0].outputs and "Softmax@GRAD" not in grad_ops[0].inputs


# ------------------------------------------- sigmoid_cross_entropy_with_logits
def _ref_sigmoid_ce(x, z):
    return np.maximum(x, 0) - x * z + np.log1p(np.exp(-np.abs(x)))


def test_sigmoid_cross_entropy_forward_ignore_and_normalize():
    x = layers.data("x", [4])
    z = layers.data("z", [4])
    out = layers.sigmoid_cross_entropy_with_logits(x, z)
    out_n = layers.sigmoid_cross_entropy_with_logits(x, z, ignore_index=-1, normalize=True)
    xv = (RNG.normal(size=(3, 4)) * 50).astype("float32")
    zv = RNG.integers(0, 2, size=(3, 4)).astype("float32")
    zv[0, :2] = -1
    got, got_n = _run([out, out_n], {"x": xv, "z": zv})
    ref = _ref_sigmoid_ce(xv.astype(np.float64), zv)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    ref_n = np.where(zv == -1, 0, ref) / (zv != -1).sum()
    np.testing.assert_allclose(got_n, ref_n, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attrs", [{}, {"ignore_index": -1, "normalize": True}])
def test_sigmoid_cross_entropy_grad(attrs):
    z = RNG.uniform(size=(3, 4))
    z[1, 1] = -1
    check_grad("sigmoid_cross_entropy_with_logits", {"X": RNG.normal(size=(3, 4)) * 3, "Label": z}, attrs,
               wrt=["X"])


def test_sigmoid_cross_entropy_shape_mismatch():
    x = layers.data("x", [4])
    z = layers.data("z", [3])
    with pytest.raises(ShapeError, match=r"\[-1, 3\].*\[-1, 4\]"):
        layers.sigmoid_cross_entropy_with_logits(x, z)


# ---------------------------------------------------- square_error_cost, log_loss
def test_square_error_cost_layer_and_backward():
    x = layers.data("x", [3])
    y = layers.data("y", [1])
    pred = layers.fc(x, 1)
    cost = layers.square_error_cost(pred, y)
    types = [op.type for op in fk.default_main_program().global_block().ops]
    assert types[-2:] == ["elementwise_sub", "square"]
    loss = layers.mean(cost)
    pg = fk.append_backward(loss)
    xv, yv = RNG.normal(size=(4, 3)).astype("float32"), RNG.normal(size=(4, 1)).astype("float32")
    got_cost, got_pred, gw = _run([cost, pred, pg[0][1]], {"x": xv, "y": yv})
    np.testing.assert_allclose(got_cost, (got_pred - yv) ** 2, rtol=1e-6)
    np.testing.assert_allclose(gw, xv.T @ (2 * (got_pred - yv) / 4), rtol=1e-5, atol=1e-6)


def test_log_loss_forward_and_grad():
    p = layers.data("p", [1])
    z = layers.data("z", [1])
    out = layers.log_loss(p, z, epsilon=1e-4)
    pv = RNG.uniform(0.05, 0.95, size=(6, 1)).astype("float32")
    zv = RNG.integers(0, 2, size=(6, 1)).astype("float32")
    (got,) = _run([out], {"p": pv, "z": zv})
    want = -zv * np.log(pv + 1e-4) - (1 - zv) * np.log(1 - pv + 1e-4)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    check_grad("log_loss", {"Predicted": RNG.uniform(0.1, 0.9, size=(5, 1)),
                            "Labels": RNG.integers(0, 2, size=(5, 1)).astype(np.float64)},
               outputs=["Loss"], wrt=["Predicted"])


def test_layer_rejects_non_variable():
    with pytest.raises(FleetkitError, match="must be a Variable"):
        layers.cross_entropy(np.zeros((2, 2)), layers.data("lab", [1], dtype="int64"))


def test_float32_gradients_stay_float32():
    x = layers.data("x", [4])
    lab = layers.data("lab", [1], dtype="int64")
    z = layers.data("z", [2])
    h = layers.fc(x, 3)
    loss = layers.mean(layers.softmax_with_cross_entropy(h, lab)) + layers.mean(
        layers.cross_entropy(layers.softmax(h), lab)) + layers.mean(
        layers.sigmoid_cross_entropy_with_logits(layers.fc(x, 2), z))
    pg = fk.append_backward(loss)
    feed = {"x": RNG.normal(size=(5, 4)).astype("float32"), "lab": RNG.integers(0, 3, size=(5, 1)),
            "z": RNG.integers(0, 2, size=(5, 2)).astype("float32")}
    for g in _run([g for _, g in pg], feed):
        assert g.dtype == np.float32 and np.isfinite(g).all()
