"""append_backward: summed gradients of shared vars, stop_gradient, no_grad_set, gradients()."""
import numpy as np

import fleetkit as fk
from fleetkit import layers


def _numeric_grad(exe, loss, feed, pname, delta=1e-3):
    scope = fk.global_scope()
    p = scope.numpy(pname).astype(np.float64)
    g = np.zeros_like(p)
    for i in range(p.size):
        for sign in (1, -1):
            q = p.copy()
            q.reshape(-1)[i] += sign * delta
            scope.set(pname, q.astype(np.float32))
            (lv,) = exe.run(feed=feed, fetch_list=[loss])
            g.reshape(-1)[i] += sign * float(lv[0]) / (2 * delta)
    scope.set(pname, p.astype(np.float32))
    return g


def _check_all(loss, params_grads, feed):
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    fetched = exe.run(feed=feed, fetch_list=[g for _, g in params_grads])
    for (p, _), got in zip(params_grads, fetched):
        np.testing.assert_allclose(got, _numeric_grad(exe, loss, feed, p.name), rtol=2e-2, atol=2e-3)


def test_shared_parameter_gradients_are_summed():
    x = layers.data("x", [3])
    shared = fk.ParamAttr(name="shared_w")
    h1 = layers.fc(x, 3, param_attr=shared, bias_attr=False)
    h2 = layers.fc(layers.tanh(h1), 3, param_attr=shared, bias_attr=False)
    loss = layers.mean(layers.square(h2))
    pg = fk.append_backward(loss)
    assert [p.name for p, _ in pg] == ["shared_w"]
    ops = [op.type for op in fk.default_main_program().global_block().ops]
    assert "sum" in ops
    feed = {"x": np.random.default_rng(0).normal(size=(4, 3)).astype("float32")}
    _check_all(loss, pg, feed)


def test_var_used_twice_in_one_op():
    x = layers.data("x", [3])
    h = layers.fc(x, 2)
    loss = layers.mean(layers.elementwise_mul(h, h))
    pg = fk.append_backward(loss)
    feed = {"x": np.random.default_rng(1).normal(size=(5, 3)).astype("float32")}
    _check_all(loss, pg, feed)


def test_stop_gradient_and_no_grad_set():
    x = layers.data("x", [3])
    h = layers.fc(x, 3, act="relu")
    h.stop_gradient = True
    out = layers.fc(h, 1)
    loss = layers.mean(out)
    pg = fk.append_backward(loss, no_grad_set={"fc_1.b_0"})
    assert [p.name for p, _ in pg] == ["fc_1.w_0"]
    assert not any(op.type == "relu_grad" for op in fk.default_main_program().global_block().ops)


def test_parameter_list_limits_gradients():
    x = layers.data("x", [3])
    loss = layers.mean(layers.fc(layers.fc(x, 4), 1))
    pg = fk.append_backward(loss, parameter_list=["fc_0.w_0"])
    assert [p.name for p, _ in pg] == ["fc_0.w_0"]


def test_gradients_wrt_input():
    x = layers.data("x", [3], stop_gradient=False)
    y = layers.mean(layers.square(x))
    (gx,) = fk.gradients([y], [x])
    xv = np.arange(6, dtype="float32").reshape(2, 3)
    (g,) = fk.Executor().run(feed={"x": xv}, fetch_list=[gx])
    np.testing.assert_allclose(g, 2 * xv / xv.size, rtol=1e-6)
