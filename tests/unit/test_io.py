"""fleetkit.io: parameter files, inference models, Program <-> ProgramDesc, and their error messages."""
import math
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fleetkit as fk
from fleetkit import io, layers
from fleetkit.core.framework import ROLE_OPTIMIZE, Block, Parameter, op_role_guard
from fleetkit.errors import DTypeError, InvalidArgumentError, NotFoundError, ShapeError
from fleetkit.proto.codec import TensorFormatError, write_lod_tensor
from fleetkit.proto.framework_pb2 import TensorDesc


# ------------------------------------------------------------------ helpers
def _mlp_with_loss():
    """x -> fc(8, relu) -> fc(2) = out; label branch, loss, backward and SGD update ops."""
    x = layers.data("x", [4])
    y = layers.data("y", [2])
    hidden = layers.fc(x, 8, act="relu")
    out = layers.fc(hidden, 2)
    loss = layers.mean(layers.square(out - y))
    block = fk.default_main_program().global_block()
    params_grads = fk.append_backward(loss)
    with op_role_guard(ROLE_OPTIMIZE):
        for p, g in params_grads:
            step = layers.scale(g, scale=-0.1)
            block.append_op("elementwise_add", {"X": [p], "Y": [step]}, {"Out": [p]}, {"axis": -1})
    return x, y, hidden, out, loss


def _init(program=None):
    exe = fk.Executor(fk.CPUPlace())
    exe.run(fk.default_startup_program() if program is None else program)
    return exe


def _persistable_zoo():
    """A program declaring every kind of persistable value, and a scope holding them."""
    block = fk.default_main_program().global_block()
    rng = np.random.default_rng(0)
    values = {
        "w32": rng.standard_normal((3, 4)).astype("float32"),
        "w64": rng.standard_normal((5,)),
        "step": np.array([7], dtype="int64"),
        "flags": np.array([True, False, True]),
        "half": rng.standard_normal((2, 2)).astype("float16"),
        "scalar": np.array(2.5, dtype="float32"),
        "emb/table": rng.standard_normal((6, 3)).astype("float32"),  # '/' in the name
    }
    for name, v in values.items():
        block.create_var(name=name, shape=v.shape, dtype=v.dtype, persistable=True)
    block.create_var(name="seq", shape=[-1, 2], dtype="float32", lod_level=2, persistable=True)
    block.create_var(name="sparse", shape=[10, 3], dtype="float32", type="selected_rows", persistable=True)
    block.create_var(name="not_saved", shape=[2], dtype="float32")  # not persistable
    scope = fk.global_scope()
    for name, v in values.items():
        scope.set(name, v)
    scope.set("seq", fk.LoDTensor(rng.standard_normal((5, 2)).astype("float32"), [[0, 1, 3], [0, 2, 3, 5]]))
    scope.set("sparse", fk.SelectedRows([7, 2, 7], rng.standard_normal((3, 3)).astype("float32"), 10))
    scope.set("not_saved", np.zeros(2, "float32"))
    return scope


def _assert_same_value(a, b):
    assert type(a) is type(b)
    if isinstance(a, fk.SelectedRows):
        np.testing.assert_array_equal(a.rows, b.rows)
        assert a.height == b.height
        a, b = a.values, b.values
    elif isinstance(a, fk.LoDTensor):
        assert a.lod() == b.lod()
        a, b = a.values, b.values
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------ parameter files
@pytest.mark.parametrize("filename", [None, "all_params"])
def test_persistables_round_trip_into_a_new_scope(tmp_path, filename):
    src = _persistable_zoo()
    exe = fk.Executor(fk.CPUPlace())
    io.save_persistables(exe, str(tmp_path), filename=filename)
    files = sorted(os.listdir(tmp_path))
    if filename:
        assert files == ["all_params"]
    else:
        assert "emb%2Ftable" in files and "not_saved" not in files and len(files) == 9
    dst = fk.Scope()
    with fk.scope_guard(dst):
        io.load_persistables(exe, str(tmp_path), filename=filename)
    assert "not_saved" not in dst
    for v in io.get_program_persistable_vars(fk.default_main_program()):
        _assert_same_value(src.get(v.name), dst.get(v.name))
    # loaded arrays are writable (optimizers update them in place)
    dst.get("w32")[0, 0] = 1.0


def test_save_params_saves_only_parameters(tmp_path):
    _, _, _, out, _ = _mlp_with_loss()
    exe = _init()
    block = fk.default_main_program().global_block()
    block.create_var(name="counter", shape=[1], dtype="int64", persistable=True)
    fk.global_scope().set("counter", np.array([3], "int64"))
    io.save_params(exe, str(tmp_path))
    params = [p.name for p in io.get_program_parameter(fk.default_main_program())]
    assert sorted(os.listdir(tmp_path)) == sorted(params)
    fresh = fk.Scope()
    io.load_params(exe, str(tmp_path), scope=fresh)
    for p in params:
        np.testing.assert_array_equal(fresh.numpy(p), fk.global_scope().numpy(p))


def test_save_vars_with_explicit_vars_and_predicate(tmp_path):
    _persistable_zoo()
    exe = fk.Executor(fk.CPUPlace())
    io.save_vars(exe, str(tmp_path / "a"), vars=["w32", fk.default_main_program().global_block().var("step")])
    assert sorted(os.listdir(tmp_path / "a")) == ["step", "w32"]
    io.save_vars(exe, str(tmp_path / "b"), predicate=lambda v: v.name.startswith("w"))
    assert sorted(os.listdir(tmp_path / "b")) == ["w32", "w64"]


def test_var_filename_escapes_separators_reversibly():
    names = ["a/b", "a%2Fb", "a%b", "..", ".", "plain.w_0"]
    files = [io.var_filename(n) for n in names]
    assert len(set(files)) == len(files)
    assert all("/" not in f and f not in (".", "..") for f in files)
    assert io.var_filename("plain.w_0") == "plain.w_0"


def test_save_reports_a_missing_value(tmp_path):
    fk.default_main_program().global_block().create_var(name="ghost", shape=[2], persistable=True)
    with pytest.raises(NotFoundError, match="'ghost' has no value"):
        io.save_persistables(fk.Executor(), str(tmp_path))


# ------------------------------------------------------------ corrupt files
def _saved_w(tmp_path, filename=None):
    block = fk.default_main_program().global_block()
    block.create_var(name="w", shape=[3, 4], dtype="float32", persistable=True)
    fk.global_scope().set("w", np.arange(12, dtype="float32").reshape(3, 4))
    io.save_persistables(fk.Executor(), str(tmp_path), filename=filename)
    return str(tmp_path / (filename or "w"))


def _load_w(tmp_path, filename=None, scope=None):
    io.load_persistables(fk.Executor(), str(tmp_path), filename=filename, scope=scope or fk.Scope())


@pytest.mark.parametrize("keep", [0, 3, 12, 20, 30, 60])
def test_truncated_file_names_file_and_variable(tmp_path, keep):
    path = _saved_w(tmp_path)
    data = Path(path).read_bytes()
    assert keep < len(data)
    Path(path).write_bytes(data[:keep])
    with pytest.raises(TensorFormatError, match="truncated") as e:
        _load_w(tmp_path)
    assert path in str(e.value) and "variable 'w'" in str(e.value)


def _rewrite(path, arr, desc_dtype=None, version=0, lod=None):
    with open(path, "wb") as f:
        if desc_dtype is None:
            write_lod_tensor(f, arr, lod)
            return
        desc = TensorDesc(dtype=desc_dtype, dims=list(arr.shape)).SerializeToString()
        f.write(struct.pack("<IQ", version, 0) + struct.pack("<Ii", 0, len(desc)) + desc + arr.tobytes())


def test_unknown_dtype_and_version_are_reported(tmp_path):
    path = _saved_w(tmp_path)
    arr = np.zeros((3, 4), "float32")
    _rewrite(path, arr, desc_dtype=99)
    with pytest.raises(TensorFormatError, match="unknown dtype code 99") as e:
        _load_w(tmp_path)
    assert path in str(e.value)
    _rewrite(path, arr, desc_dtype=11, version=5)
    with pytest.raises(TensorFormatError, match="unsupported LoDTensor version 5"):
        _load_w(tmp_path)


def test_shape_and_dtype_mismatch_with_the_program(tmp_path):
    path = _saved_w(tmp_path)
    _rewrite(path, np.zeros((4, 3), "float32"))
    with pytest.raises(ShapeError, match=r"shape \[4, 3\] but the program declares \[3, 4\]") as e:
        _load_w(tmp_path)
    assert path in str(e.value) and "'w'" in str(e.value)
    _rewrite(path, np.zeros((3, 4), "float64"))
    with pytest.raises(DTypeError, match="float64 data but the program declares float32"):
        _load_w(tmp_path)


def test_bad_lod_trailing_bytes_and_missing_files(tmp_path):
    path = _saved_w(tmp_path)
    _rewrite(path, np.zeros((3, 4), "float32"), lod=[[0, 1, 5]])
    with pytest.raises(TensorFormatError, match="LoD"):
        _load_w(tmp_path)
    _rewrite(path, np.zeros((3, 4), "float32"))
    Path(path).write_bytes(Path(path).read_bytes() + b"xx")
    with pytest.raises(TensorFormatError, match="2 unexpected bytes"):
        _load_w(tmp_path)
    os.remove(path)
    with pytest.raises(NotFoundError, match="no file for variable 'w'"):
        _load_w(tmp_path)


def test_single_file_with_extra_variables_is_refused(tmp_path):
    path = _saved_w(tmp_path, "params")
    Path(path).write_bytes(Path(path).read_bytes() * 2)  # as if saved from a bigger program
    with pytest.raises(TensorFormatError, match="bytes left after the 1 variables") as e:
        _load_w(tmp_path, "params")
    assert path in str(e.value)


def test_failed_load_leaves_the_scope_untouched(tmp_path):
    _persistable_zoo()
    io.save_persistables(fk.Executor(), str(tmp_path))
    os.remove(tmp_path / "w64")
    target = fk.Scope()
    with pytest.raises(NotFoundError):
        io.load_persistables(fk.Executor(), str(tmp_path), scope=target)
    assert target.local_var_names() == []


# ------------------------------------------------------------ inference models
def _run_in_fresh_process(script, tmp_path):
    script_path = tmp_path / "infer.py"
    script_path.write_text(textwrap.dedent(script))
    r = subprocess.run([sys.executable, str(script_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.parametrize("model_filename,params_filename", [(None, None), ("model.pb", "params.bin")])
def test_inference_model_in_a_fresh_process_matches(tmp_path, model_filename, params_filename):
    x, y, _, out, loss = _mlp_with_loss()
    exe = _init()
    main = fk.default_main_program()
    xv = np.random.default_rng(1).standard_normal((5, 4)).astype("float32")
    exe.run(main, feed={"x": xv, "y": np.zeros((5, 2), "float32")})  # one SGD step: params change
    (want,) = exe.run(main.clone(for_test=True), feed={"x": xv, "y": np.zeros((5, 2), "float32")},
                      fetch_list=[out])
    model_dir = tmp_path / "model"
    names = io.save_inference_model(str(model_dir), ["x"], [out], exe, model_filename=model_filename,
                                    params_filename=params_filename)
    assert names == [out.name]
    np.save(tmp_path / "x.npy", xv)
    _run_in_fresh_process(f"""
        import numpy as np, fleetkit as fk
        exe = fk.Executor(fk.CPUPlace())
        prog, feeds, fetches = fk.io.load_inference_model({str(model_dir)!r}, exe,
                                                          {model_filename!r}, {params_filename!r})
        assert feeds == ["x"], feeds
        (got,) = exe.run(prog, feed={{"x": np.load({str(tmp_path / "x.npy")!r})}}, fetch_list=fetches)
        np.save({str(tmp_path / "got.npy")!r}, got)
    """, tmp_path)
    np.testing.assert_array_equal(np.load(tmp_path / "got.npy"), want)


def test_pruning_drops_label_loss_backward_and_optimizer(tmp_path):
    x, y, hidden, out, loss = _mlp_with_loss()
    exe = _init()
    # an op with an is_test attribute in the kept part
    scaled = layers.scale(out, 2.0)
    scaled.block.ops[-1].attrs["is_test"] = False
    io.save_inference_model(str(tmp_path), ["x"], [scaled], exe)
    prog, feeds, fetches = io.load_inference_model(str(tmp_path), exe, scope=fk.Scope())
    types = [op.type for op in prog.global_block().ops]
    assert types == ["mul", "elementwise_add", "relu", "mul", "elementwise_add", "scale"]
    assert "y" not in prog.global_block().vars and loss.name not in prog.global_block().vars
    assert not any(n.endswith("@GRAD") for n in prog.global_block().vars)
    assert prog.global_block().ops[-1].attrs["is_test"] is True and prog._is_test
    assert sorted(os.listdir(tmp_path)) == sorted(["__model__"] + [
        p.name for p in io.get_program_parameter(fk.default_main_program())])
    assert [v.name for v in fetches] == [scaled.name]


def test_pruning_cuts_at_fed_intermediate_vars(tmp_path):
    x, y, hidden, out, loss = _mlp_with_loss()
    exe = _init()
    io.save_inference_model(str(tmp_path), [hidden.name], [out], exe)
    prog, feeds, _ = io.load_inference_model(str(tmp_path), exe, scope=fk.Scope())
    assert feeds == [hidden.name]
    assert [op.type for op in prog.global_block().ops] == ["mul", "elementwise_add"]
    assert sorted(os.listdir(tmp_path)) == ["__model__", "fc_1.b_0", "fc_1.w_0"]


def test_target_needing_an_unfed_var_is_refused(tmp_path):
    x, y, _, out, loss = _mlp_with_loss()
    exe = _init()
    with pytest.raises(InvalidArgumentError, match="need variable 'y'"):
        io.save_inference_model(str(tmp_path), ["x"], [loss], exe)
    with pytest.raises(NotFoundError, match="nope"):
        io.save_inference_model(str(tmp_path), ["nope"], [out], exe)


def test_load_inference_model_rejects_garbage(tmp_path):
    (tmp_path / "__model__").write_bytes(b"\xff\xff\xff garbage")
    with pytest.raises(InvalidArgumentError, match="__model__"):
        io.load_inference_model(str(tmp_path), fk.Executor())
    with pytest.raises(NotFoundError, match="does not exist"):
        io.load_inference_model(str(tmp_path / "missing"), fk.Executor())


# ------------------------------------------------------------ Program <-> ProgramDesc
_ATTRS = {
    "i": 3, "neg": -(2 ** 40), "f": 0.1, "whole_float": 2.0, "s": "relu", "empty_s": "", "b": True,
    "ints": [1, -2, 3], "floats": [0.5, 1.0], "strings": ["a", ""], "bools": [False, True],
    "empty": [], "none": None, "mixed": [1, 2.0, "x", None, True], "nested": [[1, 2], [], [0.5]],
    "tuple": (4, 5), "dict": {"type": "relu", "alpha": 0.2, "dims": [1]}, "np_int": np.int64(9),
    "np_float": np.float32(0.25), "np_bool": np.bool_(False), "nan": float("nan"), "inf": float("-inf"),
}


def _same_attr(a, b, prog_b):
    if isinstance(a, Block):
        return b is prog_b.blocks[a.idx]
    if isinstance(a, (tuple, list)):
        return type(b) is list and len(a) == len(b) and all(_same_attr(x, y, prog_b) for x, y in zip(a, b))
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(_same_attr(a[k], b[k], prog_b) for k in a)
    if isinstance(a, np.generic):
        a = a.item()
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def _assert_same_program(p, q):
    assert (p.random_seed, p._is_test, len(p.blocks)) == (q.random_seed, q._is_test, len(q.blocks))
    for b, c in zip(p.blocks, q.blocks):
        assert (b.idx, b.parent_idx, list(b.vars)) == (c.idx, c.parent_idx, list(c.vars))
        for name, v in b.vars.items():
            w = c.vars[name]
            assert type(v) is type(w) and w.block is c
            for f in ("shape", "dtype", "lod_level", "persistable", "stop_gradient", "type", "is_data"):
                assert getattr(v, f) == getattr(w, f), (name, f)
            if isinstance(v, Parameter):
                assert (v.trainable, v.optimize_attr) == (w.trainable, w.optimize_attr)
        assert len(b.ops) == len(c.ops)
        for o, r in zip(b.ops, c.ops):
            assert (o.type, o.inputs, o.outputs) == (r.type, r.inputs, r.outputs)
            assert list(o.attrs) == list(r.attrs)
            for k in o.attrs:
                assert _same_attr(o.attrs[k], r.attrs[k], q), (o.type, k, o.attrs[k], r.attrs[k])


def test_program_round_trip_keeps_every_var_op_and_attr():
    _mlp_with_loss()
    prog = fk.default_main_program()
    prog.random_seed = 42
    block = prog.global_block()
    block.create_var(name="sparse", shape=[10, 3], type="selected_rows", persistable=True, lod_level=1)
    block.create_parameter("frozen", [2, 2], "float64", trainable=False, optimize_attr={"learning_rate": 0.5})
    prog.blocks.append(Block(prog, 1, 0))
    prog.blocks[1].create_var(name="inner", shape=[1], dtype="int32")
    block.append_op("scale", {"X": ["x"]}, {"Out": ["scaled"]}, {**_ATTRS, "sub_block": prog.blocks[1]},
                    infer=False)
    prog.meta.origin_of = {"w.block0": ["w", 0, 2, 1]}
    prog.meta.eager_delete_skip = ("scaled",)
    for startup in (False, True):
        p = fk.default_startup_program() if startup else prog
        q = io.deserialize_program(io.serialize_program(p, with_meta=True))
        _assert_same_program(p, q)
        assert q.meta == p.meta and q._id != p._id
    # the copy runs: same numbers as the original
    exe = _init()
    copy = io.deserialize_program(io.serialize_program(prog))
    feed = {"x": np.ones((2, 4), "float32"), "y": np.ones((2, 2), "float32")}
    (a,) = exe.run(prog.clone(for_test=True), feed=feed, fetch_list=["fc_1.tmp_1"])
    (b,) = exe.run(copy.clone(for_test=True), feed=feed, fetch_list=["fc_1.tmp_1"])
    np.testing.assert_array_equal(a, b)


def test_program_desc_errors_name_the_problem():
    x = layers.data("x", [2])
    block = fk.default_main_program().global_block()
    block.append_op("scale", {"X": [x]}, {"Out": ["o"]}, {"bad": object()}, infer=False)
    with pytest.raises(InvalidArgumentError, match="op #0 'scale'.*attribute 'bad'.*object"):
        io.serialize_program(fk.default_main_program())
    block.ops[0].attrs["bad"] = 2 ** 70
    with pytest.raises(InvalidArgumentError, match="does not fit in int64"):
        io.serialize_program(fk.default_main_program())
    block.ops[0].attrs["bad"] = 1
    desc = io.program_to_desc(fk.default_main_program())
    desc.blocks[0].ops[0].type = "no_such_op"
    with pytest.raises(NotFoundError, match="no_such_op"):
        io.program_from_desc(desc)
    desc.version = 99
    with pytest.raises(InvalidArgumentError, match="version 99 is newer"):
        io.program_from_desc(desc)
    with pytest.raises(InvalidArgumentError, match="not a fleetkit program"):
        io.deserialize_program(b"")
