"""Finite-difference checks and numpy references for math, elementwise and activation ops."""
import re
from pathlib import Path

import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.core.registry import get_op_def, registered_ops
from fleetkit.testing.gradcheck import check_grad

R = np.random.default_rng(42)


def n(*shape):
    return R.normal(size=shape)


@pytest.mark.parametrize("op", ["relu", "sigmoid", "tanh", "exp", "square", "abs", "softplus", "softsign",
                                "elu", "leaky_relu", "relu6"])
def test_unary_grads(op):
    x = n(3, 5)
    x[np.abs(x) < 0.05] = 0.3  # keep away from kinks (relu, abs) where differences are one-sided
    check_grad(op, {"X": x})


@pytest.mark.parametrize("op", ["log", "sqrt", "reciprocal"])
def test_positive_domain_grads(op):
    check_grad(op, {"X": R.uniform(0.5, 2.0, size=(4, 3))})


@pytest.mark.parametrize("op", ["elementwise_add", "elementwise_sub", "elementwise_mul", "elementwise_div",
                                "elementwise_max", "elementwise_min"])
@pytest.mark.parametrize("y_shape,axis", [((2, 3, 4), -1), ((3,), 1), ((3, 4), 1), ((4,), -1), ((2, 3), 0)])
def test_elementwise_broadcast_grads(op, y_shape, axis):
    x = n(2, 3, 4)
    y = R.uniform(0.5, 1.5, size=y_shape) * R.choice([-1, 1], size=y_shape)
    check_grad(op, {"X": x, "Y": y}, {"axis": axis})


@pytest.mark.parametrize("op", ["elementwise_add", "elementwise_mul"])
def test_axis_0_lines_a_row_vector_up_with_the_rows_of_a_square_x(op):
    """[N] Y at axis=0 of a [N, N] X scales rows (machine_translation's attention weights),
    though it also fits X's last dim: forward and gradients."""
    x, y = n(3, 3), n(3)
    main = fk.Program()
    with fk.program_guard(main, fk.Program()):
        out = getattr(layers, op)(layers.assign(x), layers.assign(y), axis=0)
    got, = fk.Executor().run(main, fetch_list=[out])
    np.testing.assert_allclose(got, x + y[:, None] if op == "elementwise_add" else x * y[:, None])
    check_grad(op, {"X": x, "Y": y}, {"axis": 0})


def test_elementwise_pow_grad():
    check_grad("elementwise_pow", {"X": R.uniform(0.5, 2, size=(3, 4)), "Y": R.uniform(0.5, 2, size=(3, 4))})


def test_elementwise_forward_matches_numpy_broadcast():
    x = layers.data("x", [3, 4])
    y = layers.data("y", [3], append_batch_size=False)
    out = layers.elementwise_mul(x, y, axis=1)
    xv, yv = n(2, 3, 4).astype("float32"), n(3).astype("float32")
    (o,) = fk.Executor().run(feed={"x": xv, "y": yv}, fetch_list=[out])
    np.testing.assert_allclose(o, xv * yv[None, :, None], rtol=1e-6)


@pytest.mark.parametrize("xs,ys,xk,yk", [((3, 4), (4, 5), 1, 1), ((2, 3, 4), (12, 5), 1, 1),
                                         ((2, 3, 4), (4, 5), 2, 1), ((2, 6), (3, 2, 5), 1, 2)])
def test_mul_grads(xs, ys, xk, yk):
    check_grad("mul", {"X": n(*xs), "Y": n(*ys)}, {"x_num_col_dims": xk, "y_num_col_dims": yk})


@pytest.mark.parametrize("xs,ys,tx,ty", [((3, 4), (4, 5), False, False), ((4, 3), (4, 5), True, False),
                                         ((2, 3, 4), (2, 5, 4), False, True), ((2, 3, 4), (4, 5), False, False),
                                         ((4,), (4, 3), False, False)])
def test_matmul_grads(xs, ys, tx, ty):
    check_grad("matmul", {"X": n(*xs), "Y": n(*ys)}, {"transpose_X": tx, "transpose_Y": ty, "alpha": 0.5})


def test_matmul_forward():
    x = layers.data("x", [2, 3, 4], append_batch_size=False)
    y = layers.data("y", [2, 5, 4], append_batch_size=False)
    out = layers.matmul(x, y, transpose_y=True, alpha=2.0)
    assert out.shape == (2, 3, 5)
    xv, yv = n(2, 3, 4).astype("float32"), n(2, 5, 4).astype("float32")
    (o,) = fk.Executor().run(feed={"x": xv, "y": yv}, fetch_list=[out])
    np.testing.assert_allclose(o, 2 * xv @ yv.transpose(0, 2, 1), rtol=1e-5)


def test_reduction_and_copy_grads():
    check_grad("mean", {"X": n(3, 4)})
    check_grad("scale", {"X": n(3, 4)}, {"scale": -1.5, "bias": 0.3})
    check_grad("scale", {"X": n(3, 4)}, {"scale": 2.0, "bias": 0.3, "bias_after_scale": False})
    check_grad("sum", {"X": [n(3, 4), n(3, 4), n(3, 4)]})
    check_grad("assign", {"X": n(2, 5)})


def test_every_differentiable_op_has_a_gradient_check():
    """Each op with a gradient kernel is named in some test file next to a gradient check."""
    text = "\n".join(p.read_text() for p in Path(__file__).resolve().parents[1].rglob("test_*.py"))
    assert "check_grad" in text
    ops = [o for o in registered_ops() if not o.endswith("_grad") and get_op_def(o).grad is not None]
    missing = [o for o in ops if not re.search(r"[\"']%s[\"']" % re.escape(o), text)]
    assert not missing, f"ops with gradients but no gradient check in tests: {missing}"
