"""fluid.transpiler.InferenceTranspiler (core/inference_transpiler.py): conv + batch_norm folding
on a trained, saved and reloaded model gives the untransposed program's outputs."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.errors import InvalidArgumentError
from fleetkit.transpiler import InferenceTranspiler

IMAGE = [3, 8, 8]


def _images(n, seed=0):
    return np.random.default_rng(seed).normal(0.0, 1.0, [n] + IMAGE).astype("float32")


def _train_and_save(dirname, build):
    """Train ``build``'s net a few steps (so the batch_norm statistics, scales and shifts are not
    their initial values) and save it with save_inference_model."""
    main, start = fk.Program(), fk.Program()
    main.random_seed = start.random_seed = 3
    with fk.program_guard(main, start), fk.unique_name.guard():
        image = layers.data("image", IMAGE)
        label = layers.data("label", [1], dtype="int64")
        predict = build(image)
        loss = layers.mean(layers.cross_entropy(predict, label))
        fk.optimizer.Adam(learning_rate=0.05).minimize(loss)
    scope, exe = fk.Scope(), fk.Executor()
    exe.run(start, scope=scope)
    labels = np.random.default_rng(1).integers(0, 4, (16, 1)).astype("int64")
    for step in range(5):
        exe.run(main, feed={"image": _images(16, step) * (1 + step), "label": labels}, scope=scope)
    fk.io.save_inference_model(dirname, ["image"], [predict], exe, main_program=main, scope=scope)


def _conv_bn_net(image):
    """conv (no bias) -> bn -> relu, then conv (with bias) -> bn (its own epsilon) -> relu -> fc."""
    h = layers.conv2d(image, 4, 3, bias_attr=False)
    h = layers.batch_norm(h, act="relu")
    h = layers.conv2d(h, 5, 3, padding=1)
    h = layers.batch_norm(h, act="relu", epsilon=1e-3)
    return layers.fc(h, 4, act="softmax")


def _load(dirname):
    scope, exe = fk.Scope(), fk.Executor()
    program, feeds, fetches = fk.io.load_inference_model(dirname, exe, scope=scope)
    return program, feeds, fetches, scope, exe


def _op_types(program):
    return [op.type for op in program.global_block().ops]


def test_conv_bn_folded_outputs_unchanged(tmp_path):
    _train_and_save(str(tmp_path), _conv_bn_net)
    program, feeds, fetches, scope, exe = _load(str(tmp_path))
    fused = program.clone()
    InferenceTranspiler().transpile(fused, fk.CPUPlace(), scope)
    x = _images(6, 42)
    want, = exe.run(program, feed={feeds[0]: x}, fetch_list=fetches, scope=scope)
    got, = exe.run(fused, feed={feeds[0]: x}, fetch_list=fetches, scope=scope)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert "batch_norm" in _op_types(program) and "batch_norm" not in _op_types(fused)
    assert _op_types(fused).count("elementwise_add") == 3  # conv 0's new bias, conv 1's, the fc's
    block = fused.global_block()
    for name, shape in (("conv2d_0.w_0_fuse_bn", (4, 3, 3, 3)), ("batch_norm_0.b_0_fuse_bn", (4,)),
                        ("conv2d_1.w_0_fuse_bn", (5, 4, 3, 3)), ("conv2d_1.b_0_fuse_bn", (5,))):
        assert scope.numpy(name).shape == shape, name
        assert block.has_var(name) and block.var(name).persistable, name
    convs = [op for op in block.ops if op.type == "conv2d"]
    assert [op.input("Filter") for op in convs] == [["conv2d_0.w_0_fuse_bn"], ["conv2d_1.w_0_fuse_bn"]]
    # the folded statistics and the replaced filters are gone from the program, not from the scope
    params = {n for n, v in block.vars.items() if v.persistable}
    assert not [n for n in params if n.startswith("batch_norm_1.") or n in ("conv2d_0.w_0", "conv2d_1.b_0")]
    assert [op.type for op in block.ops if "batch_norm_1.tmp_2" in op.output_arg_names] == ["elementwise_add"]
    assert scope.find_var("conv2d_0.w_0") is not None


def test_folded_program_saves_and_reloads(tmp_path):
    _train_and_save(str(tmp_path / "a"), _conv_bn_net)
    program, feeds, fetches, scope, exe = _load(str(tmp_path / "a"))
    InferenceTranspiler().transpile(program, fk.CPUPlace(), scope)
    fk.io.save_inference_model(str(tmp_path / "b"), feeds, fetches, exe, main_program=program, scope=scope)
    x = _images(3, 7)
    want, = exe.run(program, feed={feeds[0]: x}, fetch_list=fetches, scope=scope)
    again, feeds2, fetches2, scope2, exe2 = _load(str(tmp_path / "b"))
    got, = exe2.run(again, feed={feeds2[0]: x}, fetch_list=fetches2, scope=scope2)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert "batch_norm" not in _op_types(again)


def test_nothing_to_fold_leaves_the_program_unchanged(tmp_path):
    def no_bn(image):
        return layers.fc(layers.pool2d(layers.conv2d(image, 4, 3, act="relu"), 2), 4, act="softmax")
    _train_and_save(str(tmp_path), no_bn)
    program, _, _, scope, _ = _load(str(tmp_path))
    before, version = program.to_string(), program._version
    names = sorted(scope.local_var_names())
    InferenceTranspiler().transpile(program, fk.CPUPlace(), scope)
    assert program.to_string() == before and program._version == version
    assert sorted(scope.local_var_names()) == names


def _other_reader_of_conv_output(image):
    c = layers.conv2d(image, 4, 3, bias_attr=False)
    return layers.fc(layers.batch_norm(c) + layers.scale(c, 0.5), 4, act="softmax")


def _other_reader_of_pre_bias_output(image):
    h = layers.conv2d(image, 4, 3)  # conv2d -> elementwise_add (its bias) -> batch_norm
    conv = next(op for op in h.block.ops if op.type == "conv2d")
    pre_bias = h.block.var(conv.output("Output")[0])
    return layers.fc(layers.batch_norm(h) + layers.scale(pre_bias, 0.5), 4, act="softmax")


@pytest.mark.parametrize("build", [_other_reader_of_conv_output, _other_reader_of_pre_bias_output])
def test_conv_output_read_elsewhere_is_not_folded(tmp_path, build):
    """Folding would change a value of the chain that another op reads too."""
    _train_and_save(str(tmp_path), build)
    program, feeds, fetches, scope, exe = _load(str(tmp_path))
    fused = program.clone()
    InferenceTranspiler().transpile(fused, fk.CPUPlace(), scope)
    assert "batch_norm" in _op_types(fused) and _op_types(fused) == _op_types(program)
    x = _images(2, 5)
    np.testing.assert_array_equal(exe.run(fused, feed={feeds[0]: x}, fetch_list=fetches, scope=scope)[0],
                                  exe.run(program, feed={feeds[0]: x}, fetch_list=fetches, scope=scope)[0])


def test_training_mode_ops_are_put_in_test_mode():
    main, start = fk.Program(), fk.Program()
    with fk.program_guard(main, start), fk.unique_name.guard():
        out = layers.dropout(layers.fc(layers.data("x", [4]), 3), 0.5)
    scope = fk.Scope()
    fk.Executor().run(start, scope=scope)
    InferenceTranspiler().transpile(main, fk.CPUPlace(), scope)
    assert [op.attrs["is_test"] for op in main.global_block().ops if op.type == "dropout"] == [True]
    x = np.ones((8, 4), "float32")
    a, = fk.Executor().run(main, feed={"x": x}, fetch_list=[out], scope=scope)
    b, = fk.Executor().run(main, feed={"x": x}, fetch_list=[out], scope=scope)
    np.testing.assert_array_equal(a, b)


def test_bad_arguments_are_named():
    with pytest.raises(InvalidArgumentError, match="program must be a Program, got str"):
        InferenceTranspiler().transpile("prog", fk.CPUPlace())
    with pytest.raises(InvalidArgumentError, match="place must be a CPUPlace or CUDAPlace, got int"):
        InferenceTranspiler().transpile(fk.Program(), 0)
    with pytest.raises(InvalidArgumentError, match="scope must be a Scope or None, got dict"):
        InferenceTranspiler().transpile(fk.Program(), fk.CPUPlace(), {})


def test_fluid_import_path():
    import fleetkit.transpiler as transpiler
    from fleetkit.core.inference_transpiler import InferenceTranspiler as impl
    assert transpiler.InferenceTranspiler is impl and "InferenceTranspiler" in transpiler.__all__
