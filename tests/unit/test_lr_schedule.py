"""Learning-rate schedules: values over steps vs numpy formulas, the shared step counter,
schedules of schedules, an optimizer driven by a schedule, argument errors."""
import math

import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers, optimizer
from fleetkit.core.framework import ROLE_LRSCHED
from fleetkit.errors import InvalidArgumentError

STEPS = 14


def _values(lr_var, steps=STEPS):
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    return np.array([exe.run(fetch_list=[lr_var])[0][0] for _ in range(steps)])


def _poly(step, lr, decay_steps, end, power, cycle):
    if cycle:
        decay_steps = decay_steps * max(math.ceil(step / decay_steps), 1)
    else:
        step = min(step, decay_steps)
    return (lr - end) * (1 - step / decay_steps) ** power + end


# name -> (builder, formula of the step; steps counted from 0, noam from 1)
SCHEDULES = {
    "exponential": (lambda: layers.exponential_decay(0.5, 4, 0.6),
                    lambda s: 0.5 * 0.6 ** (s / 4)),
    "exponential_staircase": (lambda: layers.exponential_decay(0.5, 4, 0.6, staircase=True),
                              lambda s: 0.5 * 0.6 ** (s // 4)),
    "natural_exp": (lambda: layers.natural_exp_decay(0.5, 3, 0.2),
                    lambda s: 0.5 * math.exp(-0.2 * s / 3)),
    "natural_exp_staircase": (lambda: layers.natural_exp_decay(0.5, 3, 0.2, staircase=True),
                              lambda s: 0.5 * math.exp(-0.2 * (s // 3))),
    "inverse_time": (lambda: layers.inverse_time_decay(0.5, 3, 0.5),
                     lambda s: 0.5 / (1 + 0.5 * s / 3)),
    "inverse_time_staircase": (lambda: layers.inverse_time_decay(0.5, 3, 0.5, staircase=True),
                               lambda s: 0.5 / (1 + 0.5 * (s // 3))),
    "polynomial": (lambda: layers.polynomial_decay(0.5, 8, end_learning_rate=0.01, power=2.0),
                   lambda s: _poly(s, 0.5, 8, 0.01, 2.0, False)),
    "polynomial_cycle": (lambda: layers.polynomial_decay(0.5, 5, power=1.0, cycle=True),
                         lambda s: _poly(s, 0.5, 5, 0.0001, 1.0, True)),
    "piecewise": (lambda: layers.piecewise_decay([3, 7], [1.0, 0.5, 0.1]),
                  lambda s: 1.0 if s < 3 else 0.5 if s < 7 else 0.1),
    "noam": (lambda: layers.noam_decay(64, 4),
             lambda s: 64 ** -0.5 * min((s + 1) ** -0.5, (s + 1) * 4 ** -1.5)),
    "cosine": (lambda: layers.cosine_decay(0.5, step_each_epoch=3, epochs=5),
               lambda s: 0.5 * 0.5 * (math.cos((s // 3) * math.pi / 5) + 1)),
    "linear_warmup": (lambda: layers.linear_lr_warmup(0.5, 5, 0.1, 0.4),
                      lambda s: 0.1 + 0.3 * s / 5 if s < 5 else 0.5),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_values_over_steps(name):
    build, formula = SCHEDULES[name]
    lr = build()
    assert lr.shape == (1,) and lr.dtype == "float32"
    want = np.array([formula(s) for s in range(STEPS)], dtype=np.float32)
    np.testing.assert_allclose(_values(lr), want, rtol=1e-6)


def test_step_counter_is_shared_persistable_and_first():
    a = layers.exponential_decay(0.1, 2, 0.5)
    b = layers.piecewise_decay([1], [1.0, 2.0])
    main, startup = fk.default_main_program(), fk.default_startup_program()
    ops = main.global_block().ops
    assert [op.type for op in ops] == ["increment", "lr_schedule", "lr_schedule"]
    assert all(op.role == ROLE_LRSCHED for op in ops)
    counter = main.global_block().var("@LR_DECAY_COUNTER@")
    assert counter.persistable and counter.dtype == "float32" and counter.shape == (1,)
    init = [op for op in startup.global_block().ops if op.output("Out") == ["@LR_DECAY_COUNTER@"]]
    assert len(init) == 1 and init[0].attr("value") == -1.0
    exe = fk.Executor()
    exe.run(startup)
    got = [exe.run(fetch_list=[a, b, counter]) for _ in range(3)]
    assert [float(c[0]) for _, _, c in got] == [0.0, 1.0, 2.0]
    assert [float(v[0]) for _, v, _ in got] == [1.0, 2.0, 2.0]
    # a test clone drops the counter and the schedule
    assert not main.clone(for_test=True).global_block().ops


def test_warmup_over_another_schedule():
    base = layers.piecewise_decay([6], [0.3, 0.03])
    lr = layers.linear_lr_warmup(base, warmup_steps=3, start_lr=0.0, end_lr=0.3)
    want = [0.0, 0.1, 0.2, 0.3, 0.3, 0.3, 0.03, 0.03]
    np.testing.assert_allclose(_values(lr, len(want)), want, rtol=1e-6)


def test_decay_of_a_learning_rate_variable():
    base = layers.piecewise_decay([2], [1.0, 0.5])
    lr = layers.exponential_decay(base, 1, 0.5)
    want = [1.0, 0.5, 0.5 * 0.25, 0.5 * 0.125]
    np.testing.assert_allclose(_values(lr, 4), want, rtol=1e-6)


def test_optimizer_follows_the_schedule():
    x = layers.data("x", [3], dtype="float64")
    loss = layers.mean(layers.fc(x, 1, bias_attr=False))
    lr = layers.exponential_decay(0.2, 1, 0.5)
    _, pgs = optimizer.SGD(lr).minimize(loss)
    (p, g), = pgs
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    scope = fk.global_scope()
    w = scope.numpy(p.name).copy()
    for step in range(4):
        (gv,) = exe.run(feed={"x": np.full((2, 3), step + 1.0)}, fetch_list=[g])
        w = w - np.float32(0.2 * 0.5 ** step) * gv
    np.testing.assert_allclose(scope.numpy(p.name), w, rtol=1e-6)


@pytest.mark.parametrize("build, match", [
    (lambda: layers.exponential_decay(0.1, 0, 0.5), "decay_steps must be > 0"),
    (lambda: layers.piecewise_decay([1, 2], [1.0, 0.5]), r"len\(values\) == len\(boundaries\) \+ 1"),
    (lambda: layers.piecewise_decay([5, 2], [1.0, 0.5, 0.1]), "boundaries must be increasing"),
    (lambda: layers.noam_decay(0, 10), "d_model must be > 0"),
    (lambda: layers.linear_lr_warmup(0.1, 0, 0.0, 0.1), "warmup_steps must be > 0"),
    (lambda: layers.cosine_decay("0.1", 10, 5), "learning_rate must be a finite number"),
])
def test_bad_schedule_arguments(build, match):
    with pytest.raises(InvalidArgumentError, match=match):
        build()
