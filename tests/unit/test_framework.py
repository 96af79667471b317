"""Program / Block / Variable / Operator construction, naming and cloning."""
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.errors import NotFoundError, ShapeError, InvalidArgumentError


def test_data_layer_prepends_batch_dim():
    x = layers.data("x", shape=[3, 4])
    assert x.shape == (-1, 3, 4)
    assert x.stop_gradient and x.is_data
    y = layers.data("y", shape=[-1, 7], append_batch_size=True)
    assert y.shape == (-1, 7)


def test_program_guard_and_defaults():
    main, start = fk.Program(), fk.Program()
    with fk.program_guard(main, start):
        x = layers.data("x", [4])
        layers.fc(x, 3)
        assert fk.default_main_program() is main
    assert fk.default_main_program() is not main
    assert [op.type for op in main.global_block().ops] == ["mul", "elementwise_add"]
    # parameters are created in main, initialized in startup
    params = main.all_parameters()
    assert sorted(p.name for p in params) == ["fc_0.b_0", "fc_0.w_0"]
    assert {op.output("Out")[0] for op in start.global_block().ops} == {"fc_0.b_0", "fc_0.w_0"}
    assert main.global_block().var("fc_0.w_0").shape == (4, 3)


def test_unique_names_and_guard():
    a = fk.unique_name.generate("fc")
    b = fk.unique_name.generate("fc")
    assert a != b
    with fk.unique_name.guard():
        assert fk.unique_name.generate("fc") == "fc_0"


def test_unknown_var_and_op_errors_name_them():
    block = fk.default_main_program().global_block()
    with pytest.raises(NotFoundError, match="'nope'"):
        block.var("nope")
    with pytest.raises(NotFoundError, match="no_such_op"):
        block.append_op("no_such_op", {}, {})


def test_layer_shape_error_names_shapes():
    x = layers.data("x", [4])
    y = layers.data("y", [5])
    with pytest.raises(ShapeError, match=r"\[-1, 4\].*\[-1, 5\]|\[-1, 5\].*\[-1, 4\]"):
        layers.elementwise_add(x, y)
    w = layers.data("w", [3, 6], append_batch_size=False)
    with pytest.raises(ShapeError, match=r"4 columns but Y has 3 rows"):
        layers.mul(x, w)


def test_fc_rejects_unknown_feature_dims():
    x = layers.data("x", [-1, -1], append_batch_size=False)
    with pytest.raises(InvalidArgumentError, match="unknown dims"):
        layers.fc(x, 3)


def test_clone_for_test_drops_backward_and_sets_is_test():
    x = layers.data("x", [4])
    loss = layers.mean(layers.fc(x, 2))
    prog = fk.default_main_program()
    test_prog = prog.clone(for_test=True)
    fk.append_backward(loss)
    assert any(op.type.endswith("_grad") for op in prog.global_block().ops)
    assert not any(op.type.endswith("_grad") for op in test_prog.global_block().ops)
    again = prog.clone(for_test=True)
    assert [op.type for op in again.global_block().ops] == [op.type for op in test_prog.global_block().ops]
    # a clone is independent of its source
    again.global_block().create_var(name="extra")
    assert not prog.global_block().has_var("extra")


def test_variable_operator_overloads_build_ops():
    x = layers.data("x", [2])
    y = layers.data("y", [2])
    z = (x + y) * 2.0 - 1.0
    w = 1.0 / x
    exe = fk.Executor(fk.CPUPlace())
    import numpy as np
    xv = np.array([[1.0, 2.0]], "float32")
    yv = np.array([[3.0, 5.0]], "float32")
    zv, wv = exe.run(feed={"x": xv, "y": yv}, fetch_list=[z, w])
    np.testing.assert_allclose(zv, (xv + yv) * 2 - 1)
    np.testing.assert_allclose(wv, 1 / xv)
