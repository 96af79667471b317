"""Gradients through While, Switch (conditional_block) and IfElse (split_lod_tensor /
merge_lod_tensor) against finite differences, a model with an IfElse that trains, and
is_test clones that keep no pass scopes."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.core.framework import Program, program_guard
from fleetkit.core.layers.control_flow import IfElse, Switch, While
from fleetkit.core.scope import Scope
from fleetkit.errors import InvalidArgumentError
from fleetkit.testing.program_gradcheck import check_program_grad


def _grad_op_types(main):
    return [op.type for op in main.global_block().ops]


def _power_loop(steps):
    """acc = x; while i < steps: acc = acc * w + x  (w a parameter; i from fill_constant / less_than)."""
    x = layers.data("x", [3], dtype="float64")
    w = layers.create_parameter([3], "float64", name="loop_w",
                                default_initializer=fk.initializer.Uniform(0.5, 1.5, seed=3))
    i = layers.fill_constant([1], "int64", 0)
    n = layers.fill_constant([1], "int64", steps)
    acc = layers.scale(x, 1.0)
    cond = layers.less_than(i, n)
    with While(cond).block():
        layers.assign(layers.elementwise_add(layers.elementwise_mul(acc, w), x), acc)
        layers.increment(i, 1, in_place=True)
        layers.less_than(i, n, cond=cond)
    return x, w, acc


@pytest.mark.parametrize("steps", [0, 1, 3])
def test_while_gradient_of_a_carried_tensor_and_a_parameter_matches_finite_differences(steps):
    main, startup = Program(), Program()
    with program_guard(main, startup):
        x, w, acc = _power_loop(steps)
        loss = layers.reduce_sum(layers.square(acc))
    feed = {"x": np.random.default_rng(0).normal(size=(2, 3))}
    check_program_grad(loss, feed, ["x", "loop_w"], startup=startup)
    assert "while_grad" in _grad_op_types(main)


def test_while_gradient_with_readers_of_the_carried_value_before_and_after_the_loop():
    """acc is read before the loop (by a scale) and after it (twice): each reader's gradient
    is for its own version of acc, not summed with the others'."""
    main, startup = Program(), Program()
    with program_guard(main, startup):
        x, w, acc = _power_loop(2)
        before = layers.scale(x, 3.0)
        loss = layers.reduce_sum(layers.elementwise_mul(acc, acc)) + layers.reduce_sum(acc * before)
    check_program_grad(loss, {"x": np.random.default_rng(1).normal(size=(2, 3))}, ["x", "loop_w"], startup=startup)


@pytest.mark.parametrize("steps", [1, 4])
def test_while_steps_taken_are_read_at_run_time(steps):
    """The loop count is fed: the backward runs over the iterations actually taken."""
    main, startup = Program(), Program()
    with program_guard(main, startup):
        x = layers.data("x", [2], dtype="float64")
        n = layers.data("n", [1], dtype="int64", append_batch_size=False)
        i = layers.fill_constant([1], "int64", 0)
        acc = layers.scale(x, 1.0)
        cond = layers.less_than(i, n)
        with While(cond).block():
            layers.assign(layers.tanh(acc) * 1.5, acc)
            layers.increment(i, 1, in_place=True)
            layers.less_than(i, n, cond=cond)
        loss = layers.reduce_sum(acc)
    check_program_grad(loss, {"x": np.array([[0.3, -0.2]]), "n": np.array([steps], "int64")}, ["x"])


def _lr_switch(step_value):
    """lr = 2 * w if step < 5, 3 * w * w if step < 10, else w (a learning-rate-like scalar)."""
    step = layers.data("step", [1], dtype="float64", append_batch_size=False)
    w = layers.create_parameter([1], "float64", name="lr_w",
                                default_initializer=fk.initializer.Constant(0.7))
    lr = layers.create_global_var([1], 0.0, "float64", persistable=True, name="lr_value")
    with Switch() as switch:
        with switch.case(layers.less_than(step, layers.fill_constant([1], "float64", 5.0))):
            layers.assign(layers.scale(w, 2.0), lr)
        with switch.case(layers.less_than(step, layers.fill_constant([1], "float64", 10.0))):
            layers.assign(layers.scale(layers.elementwise_mul(w, w), 3.0), lr)
        with switch.default():
            layers.assign(w, lr)
    return lr


@pytest.mark.parametrize("step", [1.0, 7.0, 20.0])
def test_switch_gradient_flows_through_the_case_taken(step):
    main, startup = Program(), Program()
    with program_guard(main, startup):
        lr = _lr_switch(step)
        loss = layers.reduce_sum(layers.square(lr))
    check_program_grad(loss, {"step": np.array([step])}, ["lr_w"], startup=startup)
    assert "conditional_block_grad" in _grad_op_types(main)


def _ifelse(x, w):
    """rows with x[:, 0] > 0: fc-like x * w; the others: tanh(x) * 2 (rows merged back in order)."""
    cond = layers.greater_than(layers.slice(x, axes=[1], starts=[0], ends=[1]),
                               layers.fill_constant([1], "float64", 0.0))
    ie = IfElse(cond)
    with ie.true_block():
        ie.output(layers.elementwise_mul(ie.input(x), w))
    with ie.false_block():
        ie.output(layers.scale(layers.tanh(ie.input(x)), 2.0))
    return ie()[0]


@pytest.mark.parametrize("signs", [[1, -1, 1, -1], [1, 1, 1, 1], [-1, -1, -1, -1]])
def test_ifelse_gradient_through_both_branches_matches_finite_differences(signs):
    main, startup = Program(), Program()
    with program_guard(main, startup):
        x = layers.data("x", [3], dtype="float64")
        w = layers.create_parameter([3], "float64", name="ie_w",
                                    default_initializer=fk.initializer.Uniform(-1.0, 1.0, seed=5))
        loss = layers.reduce_sum(layers.square(_ifelse(x, w)))
    rng = np.random.default_rng(2)
    x0 = np.abs(rng.normal(size=(4, 3))) + 0.1
    x0[:, 0] *= signs  # the sign of column 0 picks the branch (kept away from 0 for the differences)
    check_program_grad(loss, {"x": x0}, ["x", "ie_w"], startup=startup)
    ops = _grad_op_types(main)
    assert {"split_lod_tensor_grad", "merge_lod_tensor_grad", "conditional_block_grad"} <= set(ops)


def test_the_gradient_checks_above_cover_the_control_flow_ops():
    """For the every-op-has-a-gradient-check audit: "while", "conditional_block",
    "split_lod_tensor" and "merge_lod_tensor" are gradient-checked here as whole programs."""
    from fleetkit.core.registry import get_op_def
    for op in ("while", "conditional_block", "split_lod_tensor", "merge_lod_tensor"):
        assert get_op_def(op).grad is not None, op


def test_is_test_clones_keep_no_pass_scopes_and_training_does():
    main, startup = Program(), Program()
    with program_guard(main, startup):
        x, w, acc = _power_loop(3)
        test_program = main.clone(for_test=True)
        loss = layers.reduce_sum(acc)
    scopes_var = next(op.outputs["StepScopes"][0] for op in main.global_block().ops if op.type == "while")
    exe, feed = fk.Executor(), {"x": np.ones((2, 3))}
    for program, kept in ((test_program, None), (main, 3)):
        scope = Scope()
        exe.run(startup, scope=scope)
        exe.run(program, feed=feed, fetch_list=[acc], scope=scope)
        found = scope.find_var(scopes_var)
        got = None if found is None else scope.get(scopes_var)
        assert (None if got is None else len(got)) == kept
    assert loss.block is main.global_block()


def test_a_seeded_model_with_an_ifelse_trains():
    main, startup = Program(), Program()
    main.random_seed = startup.random_seed = 7
    with program_guard(main, startup):
        x = layers.data("x", [3], dtype="float64")
        y = layers.data("y", [3], dtype="float64")
        w = layers.create_parameter([3], "float64", name="ie_train_w",
                                    default_initializer=fk.initializer.Constant(0.1))
        loss = layers.reduce_mean(layers.square(_ifelse(x, w) - y))
        fk.optimizer.SGD(0.1).minimize(loss)
    rng = np.random.default_rng(4)
    xs = rng.normal(size=(16, 3))
    ys = np.where(xs[:, :1] > 0, xs * np.array([1.5, -0.5, 2.0]), 2 * np.tanh(xs))
    exe, scope = fk.Executor(), Scope()
    exe.run(startup, scope=scope)
    losses = [float(exe.run(main, feed={"x": xs, "y": ys}, fetch_list=[loss], scope=scope)[0]) for _ in range(60)]
    assert losses[-1] < 0.2 * losses[0], losses[::10]


def test_a_trained_loop_holding_a_switch_that_updates_its_carried_value_says_it_has_no_backward():
    main, startup = Program(), Program()
    with program_guard(main, startup):
        x = layers.data("x", [3], dtype="float64")
        i = layers.fill_constant([1], "int64", 0)
        n = layers.fill_constant([1], "int64", 2)
        acc = layers.scale(x, 1.0)
        cond = layers.less_than(i, n)
        with While(cond).block():
            with Switch() as switch:
                with switch.default():
                    layers.assign(layers.scale(acc, 2.0), acc)
            layers.increment(i, 1, in_place=True)
            layers.less_than(i, n, cond=cond)
        loss = layers.reduce_sum(acc)
    got, = fk.Executor().run(main, feed={"x": np.ones((1, 3))}, fetch_list=[acc], scope=Scope())
    np.testing.assert_allclose(got, 4 * np.ones((1, 3)))  # forward still runs
    with pytest.raises(InvalidArgumentError, match=r"reads and writes .* nested control flow"):
        check_program_grad(loss, {"x": np.ones((1, 3))}, ["x"])
