"""LarsMomentumOptimizer (its update op and minimize are checked against a numpy reference
in test_optimizer.py; here the zero-gradient guard and bad arguments) and
ModelAverage (window sums vs a numpy replay of fluid's rule, apply()/restore())."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers, optimizer
from fleetkit.errors import InvalidArgumentError


def test_lars_momentum_names_and_zero_gradient_step():
    """A zero gradient makes |g| = 0: the plain learning rate is used (no division by zero)."""
    assert optimizer.LarsMomentum is optimizer.LarsMomentumOptimizer
    prog, scope = fk.Program(), fk.Scope()
    block = prog.global_block()
    for n, shape in (("p", [2, 2]), ("g", [2, 2]), ("v", [2, 2]), ("lr", [1])):
        block.create_var(name=n, shape=shape, dtype="float64", persistable=True)
    block.append_op("lars_momentum", {"Param": ["p"], "Grad": ["g"], "Velocity": ["v"], "LearningRate": ["lr"]},
                    {"ParamOut": ["p"], "VelocityOut": ["v"]}, {"mu": 0.5, "lars_weight_decay": 0.1})
    scope.set("p", np.ones((2, 2)))
    scope.set("g", np.zeros((2, 2)))
    scope.set("v", np.ones((2, 2)))
    scope.set("lr", np.array([2.0]))
    fk.Executor().run(prog, scope=scope)
    np.testing.assert_allclose(scope.numpy("v"), 0.5 + 2.0 * 0.1)  # mu * v + lr * (0 + wd * p)
    np.testing.assert_allclose(scope.numpy("p"), 1 - 0.7)


def test_lars_bad_arguments():
    with pytest.raises(InvalidArgumentError, match="lars_coeff must be in"):
        optimizer.LarsMomentum(0.1, 0.9, lars_coeff=-1)


# ------------------------------------------------------------- ModelAverage
def ref_window_sums(params, rate, min_w, max_w, max_acc=16384):
    """fluid's average_accumulates, step by step; returns the average after the last step."""
    s1 = s2 = s3 = np.zeros_like(params[0])
    n_acc = old = n_upd = 0
    for p in params:
        n_upd += 1
        n_acc += 1
        s1 = s1 + p
        if n_upd % max_acc == 0:
            s2, s1 = s2 + s1, np.zeros_like(s1)
        if n_acc >= min_w and n_acc >= min(max_w, int(n_upd * rate)):
            s3, s1, s2 = s1 + s2, np.zeros_like(s1), np.zeros_like(s1)
            old, n_acc = n_acc, 0
    return (s1 + s2 + s3) / (n_acc + old)


def _model():
    x = layers.data("x", [3])
    y = layers.data("y", [1])
    loss = layers.mean(layers.square_error_cost(layers.fc(x, 1, bias_attr=False), y))
    optimizer.SGD(0.1).minimize(loss)
    return loss


def test_model_average_apply_and_restore():
    loss = _model()
    avg = optimizer.ModelAverage(0.5, min_average_window=2, max_average_window=3)
    assert [p.name for p in avg.params] == ["fc_0.w_0"]
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    scope = fk.global_scope()
    rng = np.random.default_rng(1)
    seen = []
    for _ in range(7):
        exe.run(feed={"x": rng.normal(size=(4, 3)).astype("float32"),
                      "y": rng.normal(size=(4, 1)).astype("float32")}, fetch_list=[loss])
        seen.append(scope.numpy("fc_0.w_0").astype(np.float64))  # the parameter after this step's update
    trained = scope.numpy("fc_0.w_0").copy()
    with avg.apply(exe):
        np.testing.assert_allclose(scope.numpy("fc_0.w_0"), ref_window_sums(seen, 0.5, 2, 3), rtol=1e-5)
        assert not np.allclose(scope.numpy("fc_0.w_0"), trained)
    np.testing.assert_array_equal(scope.numpy("fc_0.w_0"), trained)
    with avg.apply(exe, need_restore=False):
        pass
    assert not np.allclose(scope.numpy("fc_0.w_0"), trained)
    avg.restore(exe)
    np.testing.assert_array_equal(scope.numpy("fc_0.w_0"), trained)


def test_model_average_restores_after_an_error_in_the_body():
    _model()
    avg = optimizer.ModelAverage(0.15)
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    exe.run(feed={"x": np.ones((2, 3), "float32"), "y": np.ones((2, 1), "float32")})
    before = fk.global_scope().numpy("fc_0.w_0").copy()
    with pytest.raises(RuntimeError):
        with avg.apply(exe):
            raise RuntimeError("eval failed")
    np.testing.assert_array_equal(fk.global_scope().numpy("fc_0.w_0"), before)


def test_model_average_needs_a_trained_program():
    layers.fc(layers.data("x", [3]), 1)
    with pytest.raises(InvalidArgumentError, match="after optimizer.minimize"):
        optimizer.ModelAverage(0.15)
    with pytest.raises(InvalidArgumentError, match="min_average_window <= max_average_window"):
        optimizer.ModelAverage(0.15, min_average_window=10, max_average_window=5)
