"""The activation/math ops added for fluid 1.4 parity and prelu: forward against numpy
formulas through the layers, finite-difference gradients away from the kinks."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.errors import InvalidArgumentError
from fleetkit.testing.gradcheck import check_grad


def sig(v):
    return 1 / (1 + np.exp(-v))


SELU = (1.0507009873554804934193349852946, 1.6732632423543772848170429916717)
# name -> (layer kwargs, op attrs, numpy reference, input low, high)
CASES = {
    "logsigmoid": ({}, {}, lambda x: np.log(sig(x)), -4, 4),
    "hard_sigmoid": ({"slope": 0.3, "offset": 0.4}, {"slope": 0.3, "offset": 0.4},
                     lambda x: np.clip(0.3 * x + 0.4, 0, 1), -4, 4),
    "swish": ({"beta": 1.5}, {"beta": 1.5}, lambda x: x * sig(1.5 * x), -3, 3),
    "brelu": ({"t_min": -1.0, "t_max": 2.0}, {"t_min": -1.0, "t_max": 2.0}, lambda x: np.clip(x, -1, 2), -3, 3),
    "soft_relu": ({"threshold": 2.0}, {"threshold": 2.0}, lambda x: np.log1p(np.exp(np.clip(x, -2, 2))), -3, 3),
    "stanh": ({"scale_a": 0.5, "scale_b": 2.0}, {"scale_a": 0.5, "scale_b": 2.0}, lambda x: 2 * np.tanh(0.5 * x), -3, 3),
    "pow": ({"factor": 2.5}, {"factor": 2.5}, lambda x: x ** 2.5, 0.2, 3),
    "selu": ({}, {"scale": SELU[0], "alpha": SELU[1]},
             lambda x: SELU[0] * np.where(x > 0, x, SELU[1] * (np.exp(x) - 1)), -3, 3),
    "hard_shrink": ({"threshold": 0.7}, {"threshold": 0.7}, lambda x: np.where(np.abs(x) > 0.7, x, 0), -3, 3),
    "softshrink": ({"alpha": 0.6}, {"lambda": 0.6},
                   lambda x: np.where(x > 0.6, x - 0.6, np.where(x < -0.6, x + 0.6, 0)), -3, 3),
    "thresholded_relu": ({"threshold": 0.5}, {"threshold": 0.5}, lambda x: np.where(x > 0.5, x, 0), -3, 3),
    "tanh_shrink": ({}, {}, lambda x: x - np.tanh(x), -3, 3),
    "rsqrt": ({}, {}, lambda x: 1 / np.sqrt(x), 0.3, 3),
    "cos": ({}, {}, np.cos, -3, 3),
    "sin": ({}, {}, np.sin, -3, 3),
    "acos": ({}, {}, np.arccos, -0.9, 0.9),
    "asin": ({}, {}, np.arcsin, -0.9, 0.9),
    "atan": ({}, {}, np.arctan, -3, 3),
}
KINKS = {"hard_sigmoid": [-4 / 3, 2], "brelu": [-1, 2], "soft_relu": [-2, 2], "hard_shrink": [-0.7, 0.7],
         "softshrink": [-0.6, 0.6], "thresholded_relu": [0.5], "selu": [0]}


def _inputs(name, lo, hi, size=(3, 4)):
    x = np.random.default_rng(len(name)).uniform(lo, hi, size=size)
    for k in KINKS.get(name, []):  # finite differences are meaningless right at a kink
        x = np.where(np.abs(x - k) < 0.05, x + 0.1, x)
    return x


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_matches_numpy_and_grad(name):
    kwargs, attrs, ref, lo, hi = CASES[name]
    x = _inputs(name, lo, hi)
    check_grad(name, {"X": x}, attrs)
    xv = layers.data("x", [4], dtype="float64")
    out = getattr(layers, name)(xv, **kwargs)
    (got,) = fk.Executor().run(feed={"x": x}, fetch_list=[out])
    np.testing.assert_allclose(got, ref(x), rtol=1e-12, atol=1e-14)


def test_rounding_ops_and_their_zero_gradient():
    x = np.array([[-2.5, -1.5, -0.4, 0.5, 1.5, 2.6]])
    xv = layers.data("x", [6], dtype="float64")
    got = fk.Executor().run(feed={"x": x}, fetch_list=[layers.ceil(xv), layers.floor(xv), layers.round(xv)])
    np.testing.assert_array_equal(got[0], np.ceil(x))
    np.testing.assert_array_equal(got[1], np.floor(x))
    np.testing.assert_array_equal(got[2], [[-3, -2, 0, 1, 2, 3]])  # halves away from zero, as C's round
    for op in ("ceil", "floor", "round"):
        check_grad(op, {"X": x + 0.2})


@pytest.mark.parametrize("mode,shape", [("all", [1]), ("channel", [1, 3, 1]), ("element", [1, 3, 2])])
def test_prelu(mode, shape):
    x = np.random.default_rng(1).normal(size=(2, 3, 2))
    x = np.where(np.abs(x) < 0.05, 0.1, x)
    alpha = np.random.default_rng(2).uniform(0.1, 0.5, size=shape)
    check_grad("prelu", {"X": x, "Alpha": alpha}, {"mode": mode})
    xv = layers.data("x", [3, 2], dtype="float64")
    out = layers.prelu(xv, mode)
    params = fk.default_main_program().global_block().all_parameters()
    assert [list(p.shape) for p in params] == [shape]
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    (got,) = exe.run(feed={"x": x}, fetch_list=[out])
    np.testing.assert_allclose(got, np.where(x > 0, x, 0.25 * x))


def test_bad_arguments():
    x = layers.data("x", [3])
    with pytest.raises(InvalidArgumentError, match="mode must be"):
        layers.prelu(x, "row")
    with pytest.raises(InvalidArgumentError, match="t_min 2 > t_max 1"):
        layers.brelu(x, 2, 1)
