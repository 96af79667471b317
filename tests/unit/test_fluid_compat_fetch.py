"""Fetched values convert like fluid 1.4's (numpy 1.x): ``float(loss)``, ``"%.3f" % loss``."""
import json

import numpy as np
import pytest

import fleetkit as fluid
from fleetkit.core.fetch_result import FetchArray, as_fetch_result


def _run_mean_loss():
    main, startup = fluid.Program(), fluid.Program()
    with fluid.program_guard(main, startup):
        x = fluid.layers.data(name="x", shape=[3], dtype="float32")
        y = fluid.layers.fc(input=x, size=2)
        loss = fluid.layers.mean(y)
    exe = fluid.Executor(fluid.CPUPlace())
    scope = fluid.Scope()
    exe.run(startup, scope=scope)
    feed = {"x": np.arange(12, dtype="float32").reshape(4, 3)}
    return exe.run(main, feed=feed, fetch_list=[loss, y], scope=scope)


def test_fetched_loss_converts_like_fluid_14():
    loss, y = _run_mean_loss()
    assert loss.shape == (1,) and isinstance(loss, np.ndarray)
    value = float(np.asarray(loss).reshape(()))
    assert float(loss) == value
    assert "%.3f" % loss == "%.3f" % value
    assert "loss %s" % ("%.2f" % loss) == f"loss {value:.2f}"
    assert f"{loss:.4f}" == f"{value:.4f}"
    assert int(loss) == int(value)
    assert "%d" % loss == "%d" % int(value)
    assert float(loss * 2) == 2 * value  # arithmetic on a fetch converts too
    assert repr(loss).startswith("array(")  # prints as a plain ndarray


def test_a_fetched_batch_refuses_like_ndarray():
    _, y = _run_mean_loss()
    assert y.shape == (4, 2)
    with pytest.raises(TypeError, match=r"shape \(4, 2\)"):
        float(y)
    with pytest.raises(TypeError):
        "%f" % y
    with pytest.raises(TypeError):
        f"{y:.2f}"
    assert str(y) == str(np.asarray(y)) and f"{y}" == str(np.asarray(y))


def test_reductions_give_numpy_scalars_and_views_share_memory():
    base = np.array([1.0, 2.0, 4.0])
    a = as_fetch_result(base)
    assert isinstance(a, FetchArray) and np.shares_memory(a, base)
    for r in (a.sum(), np.mean(a), a.max(), a[1]):
        assert type(r) is np.float64
    assert json.dumps(np.mean(a)) == "2.3333333333333335"
    assert type(np.asarray(a)) is np.ndarray


def test_a_fetched_value_fed_back_is_stored_as_a_plain_ndarray():
    main, startup = fluid.Program(), fluid.Program()
    with fluid.program_guard(main, startup):
        x = fluid.layers.data(name="x", shape=[2], dtype="float32")
        y = fluid.layers.scale(x, scale=3.0)
    exe, scope = fluid.Executor(fluid.CPUPlace()), fluid.Scope()
    first, = exe.run(main, feed={"x": np.ones((2, 2), "float32")}, fetch_list=[y], scope=scope)
    again, = exe.run(main, feed={"x": first}, fetch_list=[y], scope=scope)
    assert type(scope.get("x")) is np.ndarray
    np.testing.assert_allclose(again, 9.0)
