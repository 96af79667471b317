"""Which random ops repeat their numbers on every run (core/prepared.py ``_repeats_every_run``).

fluid 1.4: a seeded startup program gives the same parameters each time it runs (its
initializers carry the program's seed), unseeded ones differ; dropout in a seeded main
program still draws a new mask each step.
"""
import numpy as np

import fleetkit as fk
from fleetkit import layers


def _net(seed):
    main, start = fk.Program(), fk.Program()
    main.random_seed = start.random_seed = seed
    with fk.program_guard(main, start), fk.unique_name.guard():
        x = layers.data("x", [5])
        h = layers.fc(x, 4, param_attr=fk.ParamAttr(initializer=fk.initializer.Normal(0.0, 1.0)))
        out = layers.dropout(layers.fc(h, 3), 0.5)
    return main, start, out


def _params(scope):
    return {n: scope.numpy(n).copy() for n in ("fc_0.w_0", "fc_1.w_0")}


def _run_startup_twice(seed, same_executor):
    _, start, _ = _net(seed)
    s = fk.Scope()
    exe = fk.Executor()
    exe.run(start, scope=s)
    first = _params(s)
    (exe if same_executor else fk.Executor()).run(start, scope=s)
    return first, _params(s)


def test_seeded_startup_program_gives_the_same_parameters_on_every_run():
    for same_executor in (True, False):
        first, second = _run_startup_twice(7, same_executor)
        for name in first:
            np.testing.assert_array_equal(first[name], second[name], err_msg=name)
        assert not np.array_equal(first["fc_0.w_0"][:, :3], first["fc_1.w_0"][:3]), "params drew one stream"


def test_unseeded_startup_program_differs_between_runs():
    for same_executor in (True, False):
        first, second = _run_startup_twice(0, same_executor)
        for name in first:
            assert not np.array_equal(first[name], second[name]), name


def test_seeded_startup_is_the_same_in_a_fresh_program_and_scope():
    a, _ = _run_startup_twice(7, True)
    b, _ = _run_startup_twice(7, True)
    c, _ = _run_startup_twice(8, True)
    np.testing.assert_array_equal(a["fc_0.w_0"], b["fc_0.w_0"])
    assert not np.array_equal(a["fc_0.w_0"], c["fc_0.w_0"])


def test_dropout_in_a_seeded_main_program_draws_a_new_mask_each_step_and_the_same_sequence():
    def masks():
        main, start, out = _net(3)
        s, exe = fk.Scope(), fk.Executor()
        exe.run(start, scope=s)
        x = np.ones((64, 5), "float32")
        return [exe.run(main, feed={"x": x}, fetch_list=[out], scope=s)[0] != 0 for _ in range(2)]
    a, b = masks(), masks()
    assert not np.array_equal(a[0], a[1]), "dropout repeated its mask"
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_only_repeating_generators_are_restored_before_a_run():
    """The hot path: a training program's run restores nothing (its list is empty)."""
    main, start, _ = _net(5)
    s, exe = fk.Scope(), fk.Executor()
    exe.run(start, scope=s)
    assert len(exe._cache[start._id].reseed) == 2  # the two uniform/normal weight initializers
    exe.run(main, feed={"x": np.ones((2, 5), "float32")}, scope=s)
    assert exe._cache[main._id].reseed == []
