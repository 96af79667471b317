"""StaticRNN (unrolled at build time) against a numpy RNN: forward, parameter gradients
against central differences of the numpy loss, and one SGD step against the same step in numpy."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.core.backward import append_backward
from fleetkit.core.framework import Program, program_guard
from fleetkit.core.layers.static_rnn import StaticRNN
from fleetkit.core.scope import Scope
from fleetkit.errors import InvalidArgumentError

T, N, D, H = 3, 2, 4, 5


def _build(optimize=False):
    main, startup = Program(), Program()
    with program_guard(main, startup):
        x = layers.data("x", [T, N, D], dtype="float64", append_batch_size=False)
        rnn = StaticRNN()
        with rnn.step():
            x_t = rnn.step_input(x)
            h_prev = rnn.memory(shape=[-1, H], batch_ref=x_t)  # fluid's default: dim 1 of x
            h = layers.fc(layers.concat([x_t, h_prev], axis=1), H, act="tanh", param_attr="rnn_w",
                          bias_attr="rnn_b")
            rnn.update_memory(h_prev, h)
            rnn.step_output(h)
        out = rnn()
        loss = layers.mean(layers.square(out))
        if optimize:
            fk.optimizer.SGD(learning_rate=0.5).minimize(loss)
        else:
            append_backward(loss)
    return main, startup, out, loss


def _numpy_rnn(x, w, b):
    h, outs = np.zeros((N, H)), []
    for t in range(T):
        h = np.tanh(np.concatenate([x[t], h], axis=1) @ w + b)
        outs.append(h)
    out = np.stack(outs)
    return out, np.mean(out ** 2)


def _setup(optimize=False):
    main, startup, out, loss = _build(optimize)
    exe, scope = fk.Executor(fk.CPUPlace()), Scope()
    exe.run(startup, scope=scope)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(T, N, D))
    w, b = np.asarray(scope.find_var("rnn_w").get_tensor()), np.asarray(scope.find_var("rnn_b").get_tensor())
    return main, out, loss, exe, scope, x, w.astype("float64").copy(), b.astype("float64").copy()


def test_static_rnn_is_one_block_and_matches_numpy_forward():
    main, out, loss, exe, scope, x, w, b = _setup()
    assert main.num_blocks == 1 and list(out.shape) == [T, N, H]
    got_out, got_loss = exe.run(main, feed={"x": x}, fetch_list=[out, loss], scope=scope)
    want_out, want_loss = _numpy_rnn(x, w, b)
    np.testing.assert_allclose(got_out, want_out, rtol=1e-6)
    np.testing.assert_allclose(got_loss.reshape(()), want_loss, rtol=1e-6)


def test_static_rnn_parameter_gradients_match_central_differences():
    main, out, loss, exe, scope, x, w, b = _setup()
    gw, gb = exe.run(main, feed={"x": x}, fetch_list=["rnn_w@GRAD", "rnn_b@GRAD"], scope=scope)
    for param, grad in ((w, gw), (b, gb)):
        numeric = np.zeros_like(param)
        for idx in np.ndindex(param.shape):
            saved = param[idx]
            param[idx] = saved + 1e-6
            up = _numpy_rnn(x, w, b)[1]
            param[idx] = saved - 1e-6
            down = _numpy_rnn(x, w, b)[1]
            param[idx] = saved
            numeric[idx] = (up - down) / 2e-6
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_static_rnn_sgd_step_matches_numpy():
    main, out, loss, exe, scope, x, w, b = _setup(optimize=True)
    exe.run(main, feed={"x": x}, scope=scope)
    eps, gw = 1e-6, np.zeros_like(w)
    for idx in np.ndindex(w.shape):
        wp, wm = w.copy(), w.copy()
        wp[idx] += eps
        wm[idx] -= eps
        gw[idx] = (_numpy_rnn(x, wp, b)[1] - _numpy_rnn(x, wm, b)[1]) / (2 * eps)
    np.testing.assert_allclose(np.asarray(scope.find_var("rnn_w").get_tensor()), w - 0.5 * gw, rtol=1e-5,
                               atol=1e-8)


def test_static_rnn_needs_every_memory_updated():
    with program_guard(Program(), Program()):
        x = layers.data("x", [T, N, D], append_batch_size=False)
        rnn = StaticRNN()
        with pytest.raises(InvalidArgumentError, match="not updated"):
            with rnn.step():
                x_t = rnn.step_input(x)
                rnn.memory(shape=[-1, H], batch_ref=x_t)
                rnn.step_output(x_t)
