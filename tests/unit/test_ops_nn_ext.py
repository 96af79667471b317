"""layer_norm, im2sequence, print (layers.Print): forward against numpy references,
finite-difference gradients, bad input."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.errors import InvalidArgumentError, ShapeError
from fleetkit.testing.gradcheck import check_grad

RNG = np.random.default_rng(5)


def _run(fetch, feed):
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    return exe.run(feed=feed, fetch_list=fetch, return_numpy=False)


# --------------------------------------------------------------- layer_norm
@pytest.mark.parametrize("axis", [1, 2])
def test_layer_norm_grad(axis):
    x = RNG.normal(size=(3, 2, 4))
    d = int(np.prod(x.shape[axis:]))
    check_grad("layer_norm", {"X": x, "Scale": RNG.normal(size=d), "Bias": RNG.normal(size=d)},
               {"begin_norm_axis": axis, "epsilon": 1e-5}, outputs=("Y", "Mean", "Variance"), grad_outputs=("Y",))


def test_layer_norm_grad_without_scale_and_bias():
    check_grad("layer_norm", {"X": RNG.normal(size=(4, 5))}, {"begin_norm_axis": 1, "epsilon": 1e-5},
               outputs=("Y", "Mean", "Variance"), grad_outputs=("Y",))


def test_layer_norm_layer_forward():
    x = layers.data("x", [3, 4], dtype="float64")
    y = layers.layer_norm(x, begin_norm_axis=1, act="relu")
    params = sorted(p.shape for p in fk.default_main_program().global_block().all_parameters())
    assert params == [(12,), (12,)]
    xs = RNG.normal(size=(2, 3, 4)) * 5 + 3
    (got,) = _run([y], {"x": xs})
    flat = xs.reshape(2, -1)
    want = (flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(np.asarray(got), np.maximum(want, 0).reshape(xs.shape), rtol=1e-10)


def test_layer_norm_bad_axis():
    with pytest.raises(InvalidArgumentError, match="begin_norm_axis=2"):
        layers.layer_norm(layers.data("x", [3]), begin_norm_axis=2)


# -------------------------------------------------------------- im2sequence
def _ref_im2seq(x, kh, kw, sh, sw, pad):
    up, left, down, right = pad
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + up + down, w + left + right))
    xp[:, :, up:up + h, left:left + w] = x
    oh, ow = (h + up + down - kh) // sh + 1, (w + left + right - kw) // sw + 1
    rows = [xp[i, :, y * sh:y * sh + kh, z * sw:z * sw + kw].reshape(-1)
            for i in range(n) for y in range(oh) for z in range(ow)]
    return np.stack(rows), oh * ow


@pytest.mark.parametrize("k,s,pad", [((2, 2), (1, 1), [0, 0, 0, 0]), ((3, 2), (2, 1), [1, 0, 2, 1])])
def test_im2sequence_forward_grad_and_lod(k, s, pad):
    x = RNG.normal(size=(2, 2, 4, 5))
    attrs = {"kernels": list(k), "strides": list(s), "paddings": pad}
    check_grad("im2sequence", {"X": x}, attrs)
    xv = layers.data("x", [2, 4, 5], dtype="float64")
    out = layers.im2sequence(xv, filter_size=list(k), stride=list(s), padding=pad)
    assert out.shape == (-1, 2 * k[0] * k[1]) and out.lod_level == 1
    (got,) = _run([out], {"x": x})
    want, steps = _ref_im2seq(x, *k, *s, pad)
    np.testing.assert_allclose(np.asarray(got), want)
    assert got.lod() == [[0, steps, 2 * steps]]


def test_im2sequence_rejects_what_it_cannot_do():
    x = layers.data("x", [1, 3, 3])
    with pytest.raises(InvalidArgumentError, match="input_image_size"):
        layers.im2sequence(x, 2, input_image_size=layers.data("s", [2]))
    with pytest.raises(ShapeError, match="does not fit"):
        layers.im2sequence(x, 4)


# -------------------------------------------------------------------- print
def test_print_passes_values_and_gradients_and_prints(capfd):
    check_grad("print", {"In": RNG.normal(size=(2, 3))}, {"print_phase": "both", "message": "m"})
    x = layers.data("x", [3], dtype="float64", lod_level=1)
    h = layers.fc(x, 1, bias_attr=False)
    p = layers.Print(h, message="look:", summarize=2, first_n=1)
    loss = layers.mean(layers.scale(p, 2.0))
    (w, gw), = fk.append_backward(loss)
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    capfd.readouterr()
    xs = np.arange(6.0).reshape(2, 3)
    for _ in range(2):
        got, hv, g = exe.run(feed={"x": (xs, [[2]])}, fetch_list=[p, h, gw])
    np.testing.assert_array_equal(got, hv)
    np.testing.assert_allclose(g, 2 * xs.mean(0).reshape(3, 1))  # the gradient went through print
    text = capfd.readouterr().out
    assert text.count("look:") == 2  # first_n=1: once forward, once backward
    assert f"Tensor[{h.name}] (forward)" in text and "shape: [2, 1]" in text and "lod: [[0, 2]]" in text
    assert "data: 1,1" in text and "(backward)" in text


def test_print_bad_phase():
    with pytest.raises(InvalidArgumentError, match="print_phase"):
        layers.Print(layers.data("x", [1]), print_phase="sideways")
