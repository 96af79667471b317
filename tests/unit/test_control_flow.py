"""Sub-blocks (Program.create_block / rollback), While, Switch and tensor arrays, against numpy."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.core.framework import Program, program_guard
from fleetkit.core.layers.control_flow import Switch, While, array_length, array_read, array_write, create_array
from fleetkit.core.program_desc import deserialize_program, serialize_program
from fleetkit.core.scope import Scope
from fleetkit.errors import InvalidArgumentError


def _run(main, startup, feed, fetch):
    exe = fk.Executor(fk.CPUPlace())
    scope = Scope()
    exe.run(startup, scope=scope)
    return exe.run(main, feed=feed, fetch_list=fetch, scope=scope)


def test_create_block_and_rollback_track_the_current_block():
    p = Program()
    b1 = p.create_block()
    assert (b1.idx, b1.parent_idx, p.current_block() is b1) == (1, 0, True)
    b2 = p.create_block()
    assert b2.parent_idx == 1
    p.rollback()
    assert p.current_block() is b1
    p.rollback()
    assert p.current_block() is p.global_block()


def _sum_loop_program(n_steps):
    """acc = x; while i < n: acc = acc + x; arr[i] = acc; i += 1."""
    main, startup = Program(), Program()
    with program_guard(main, startup):
        x = layers.data("x", [3])
        i = layers.fill_constant([1], "int64", 0)
        n = layers.fill_constant([1], "int64", n_steps)
        acc = layers.scale(x, 1.0)
        arr = create_array("float32")
        cond = layers.less_than(i, n)
        with While(cond).block():
            layers.assign(layers.elementwise_add(acc, x), acc)
            array_write(acc, i, arr)
            layers.increment(i, 1, in_place=True)
            layers.less_than(i, n, cond=cond)
        last = array_read(arr, layers.fill_constant([1], "int64", n_steps - 1))
        length = array_length(arr)
    return main, startup, acc, last, length


def test_while_sums_and_writes_an_array_like_numpy():
    main, startup, acc, last, length = _sum_loop_program(4)
    # the body, and its gradient block beside it (core/step_backward.py)
    assert main.num_blocks == 3 and main.block(1).parent_idx == 0 and main.block(2).parent_idx == 1
    x = np.arange(6, dtype="float32").reshape(2, 3)
    got_acc, got_last, got_len = _run(main, startup, {"x": x}, [acc, last, length])
    np.testing.assert_allclose(got_acc, 5 * x)
    np.testing.assert_allclose(got_last, 5 * x)
    assert got_len.tolist() == [4]


def test_while_program_survives_a_serialization_round_trip():
    main, startup, acc, _, length = _sum_loop_program(3)
    loaded = deserialize_program(serialize_program(main))
    assert loaded.num_blocks == 3  # the body and its gradient block
    while_op = next(op for op in loaded.global_block().ops if op.type == "while")
    assert while_op.attr("sub_block") is loaded.block(1)
    x = np.ones((1, 3), "float32")
    got_acc, got_len = _run(loaded, startup, {"x": x}, [acc.name, length.name])
    np.testing.assert_allclose(got_acc, 4 * x)
    assert got_len.tolist() == [3]


def test_while_needs_a_bool_condition():
    main = Program()
    with program_guard(main, Program()):
        i = layers.fill_constant([1], "int64", 0)
        with pytest.raises(InvalidArgumentError, match="must be bool"):
            While(i)


def test_array_read_of_an_unwritten_index_names_the_array():
    main, startup = Program(), Program()
    with program_guard(main, startup):
        x = layers.data("x", [2])
        arr = array_write(x, layers.fill_constant([1], "int64", 0))
        out = array_read(arr, layers.fill_constant([1], "int64", 2))
    with pytest.raises(Exception, match=f"index 2 of '{arr.name}' was never written"):
        _run(main, startup, {"x": np.ones((1, 2), "float32")}, [out])


@pytest.mark.parametrize("value, expected", [(0.5, 10.0), (1.5, 20.0), (3.0, 30.0)])
def test_switch_runs_the_first_true_case_else_the_default(value, expected):
    main, startup = Program(), Program()
    with program_guard(main, startup):
        v = layers.data("v", [1], append_batch_size=False)
        out = layers.fill_constant([1], "float32", -1.0)
        one = layers.fill_constant([1], "float32", 1.0)
        two = layers.fill_constant([1], "float32", 2.0)
        with Switch() as switch:
            with switch.case(layers.less_than(v, one)):
                layers.assign(layers.fill_constant([1], "float32", 10.0), out)
            with switch.case(layers.less_than(v, two)):
                layers.assign(layers.fill_constant([1], "float32", 20.0), out)
            with switch.default():
                layers.assign(layers.fill_constant([1], "float32", 30.0), out)
    got, = _run(main, startup, {"v": np.array([value], "float32")}, [out])
    assert got.tolist() == [expected]


def test_while_program_saved_as_an_inference_model_reloads_and_runs(tmp_path):
    from fleetkit.core import io
    main, startup, acc, _, _ = _sum_loop_program(2)
    exe = fk.Executor(fk.CPUPlace())
    scope = Scope()
    exe.run(startup, scope=scope)
    with fk.scope_guard(scope):
        io.save_inference_model(str(tmp_path), ["x"], [acc], exe, main_program=main)
        program, feeds, fetches = io.load_inference_model(str(tmp_path), exe)
        assert program.num_blocks == 3 and any(op.type == "while" for op in program.global_block().ops)
        x = np.full((2, 3), 2.0, "float32")
        got, = exe.run(program, feed={feeds[0]: x}, fetch_list=fetches)
    np.testing.assert_allclose(got, 3 * x)


def _ifelse_program():
    """rows with x[:, 0] < 0: -x * 2; the others: x + 1 (fluid's IfElse)."""
    from fleetkit.core.layers.control_flow import IfElse
    main, startup = Program(), Program()
    with program_guard(main, startup):
        x = layers.data("x", [3])
        zero = layers.fill_constant_batch_size_like(x, [-1, 1], "float32", 0.0)
        cond = layers.less_than(layers.slice(x, axes=[1], starts=[0], ends=[1]), zero)
        ie = IfElse(cond)
        with ie.true_block():
            ie.output(layers.scale(ie.input(x), -2.0))
        with ie.false_block():
            ie.output(layers.scale(ie.input(x), 1.0, bias=1.0))
        out, = ie()
    return main, startup, out


@pytest.mark.parametrize("signs", [[-1, 1, -1, 1], [1, 1, 1, 1], [-1, -1, -1, -1]])
def test_ifelse_splits_rows_by_the_condition_and_merges_them_back(signs):
    main, startup, out = _ifelse_program()
    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(size=(4, 3))).astype("float32") + 0.1
    x[:, 0] *= np.array(signs, "float32")
    want = np.where(x[:, :1] < 0, -2.0 * x, x + 1.0)
    got, = _run(main, startup, {"x": x}, [out])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_ifelse_ignores_a_branch_that_selects_no_rows_on_a_later_run():
    main, startup, out = _ifelse_program()
    exe, scope = fk.Executor(fk.CPUPlace()), Scope()
    exe.run(startup, scope=scope)
    for sign in (-1.0, 1.0):  # the second run's true branch is empty: its old output must not be merged
        x = np.full((2, 3), sign, "float32")
        got, = exe.run(main, feed={"x": x}, fetch_list=[out], scope=scope)
        np.testing.assert_allclose(got, np.where(x < 0, -2.0 * x, x + 1.0))
