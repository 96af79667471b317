"""Prepare-time fusion (core/fusion.py): fused steps compute bit-identical values, write
every member's outputs, fall back to the member kernels off the fast path, and errors
still name the op that failed."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.core import fusion
from fleetkit.errors import OpError


def _mlp(act="relu", optimizer=None):
    main, startup = fk.Program(), fk.Program()
    startup.random_seed = 3
    with fk.program_guard(main, startup), fk.unique_name.guard():
        x = layers.data("x", [8])
        y = layers.data("y", [1], dtype="int64")
        h = layers.fc(x, 16, act=act)
        h = layers.fc(h, 12, act=act)
        p = layers.fc(h, 4, act="softmax")
        loss = layers.mean(layers.cross_entropy(p, y))
        (optimizer or fk.optimizer.SGD(0.1)).minimize(loss)
    return main, startup, loss


def _train(enabled, monkeypatch, steps=4, act="relu", optimizer=None, dtype="float32"):
    monkeypatch.setattr(fusion, "ENABLED", enabled)
    main, startup, loss = _mlp(act, optimizer)
    scope = fk.Scope()
    exe = fk.Executor(fk.CPUPlace())
    exe.run(startup, scope=scope)
    rng = np.random.default_rng(0)
    fetch = [loss, "fc_0.tmp_0", "fc_0.tmp_1", "fc_0.tmp_2", "fc_1.tmp_2@GRAD", "fc_0.tmp_1@GRAD",
             "fc_0.tmp_0@GRAD", "fc_0.b_0@GRAD", "fc_0.w_0@GRAD"]
    out = []
    for _ in range(steps):
        xb = rng.standard_normal((5, 8)).astype(dtype)
        yb = rng.integers(0, 4, (5, 1))
        out.append(exe.run(main, feed={"x": xb, "y": yb}, fetch_list=fetch, scope=scope))
    params = {n: scope.numpy(n).copy() for n in ("fc_0.w_0", "fc_0.b_0", "fc_1.w_0", "fc_2.b_0")}
    kinds = fusion.describe(exe._prepare(main, True).steps)
    return out, params, kinds


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_fused_training_is_bit_identical(act, monkeypatch):
    fused, p_fused, kinds = _train(True, monkeypatch, act=act)
    plain, p_plain, plain_kinds = _train(False, monkeypatch, act=act)
    assert f"mul+elementwise_add+{act}" in kinds
    assert f"{act}_grad+elementwise_add_grad+mul_grad" in kinds
    assert "sgd+sgd+sgd+sgd+sgd+sgd" in kinds
    assert "mean+fill_any_like+mean_grad" in kinds
    assert all("+" not in k for k in plain_kinds)
    for a, b in zip(fused, plain):
        for u, v in zip(a, b):
            assert u.dtype == v.dtype and np.array_equal(u, v)
    for n in p_plain:
        assert np.array_equal(p_fused[n], p_plain[n]), n


def test_float64_and_momentum_still_match(monkeypatch):
    def opt():  # not an sgd run: only the fc groups fuse
        return fk.optimizer.Momentum(0.1, 0.9)

    fused, p_fused, kinds = _train(True, monkeypatch, optimizer=opt(), dtype="float64")
    plain, p_plain, _ = _train(False, monkeypatch, optimizer=opt(), dtype="float64")
    assert not any(k.startswith("sgd") for k in kinds)
    for a, b in zip(fused, plain):
        for u, v in zip(a, b):
            assert np.array_equal(u, v)
    for n in p_plain:
        assert np.array_equal(p_fused[n], p_plain[n])


def test_lod_input_takes_the_member_path(monkeypatch):
    """A LoDTensor input is off the fast path: the members run and the LoD propagates."""
    main = fk.Program()
    with fk.program_guard(main, fk.Program()), fk.unique_name.guard():
        x = layers.data("x", [3], lod_level=1)
        h = layers.fc(x, 2, act="relu")
    kinds = fusion.describe(fusion.fuse_steps(fk.Executor()._prepare(main, False).steps))
    assert "mul+elementwise_add+relu" in kinds
    scope = fk.Scope()
    scope.set("fc_0.w_0", np.ones((3, 2), "float32"))
    scope.set("fc_0.b_0", np.zeros(2, "float32"))
    vals = np.arange(12, dtype="float32").reshape(4, 3)
    out, = fk.Executor().run(main, feed={"x": fk.create_lod_tensor(vals, [[1, 3]], fk.CPUPlace())},
                             fetch_list=[h], scope=scope, return_numpy=False)
    assert out.lod() == [[0, 1, 4]]
    assert np.array_equal(np.asarray(out.values), np.maximum(vals @ np.ones((3, 2), "float32"), 0))


def test_error_inside_a_fused_step_names_the_member(monkeypatch):
    main, startup, loss = _mlp()
    scope = fk.Scope()
    exe = fk.Executor(fk.CPUPlace())
    exe.run(startup, scope=scope)
    scope.set("fc_1.b_0", np.zeros(5, "float32"))  # wrong bias length: the add member fails
    feed = {"x": np.ones((2, 8), "float32"), "y": np.zeros((2, 1), "int64")}
    messages = []
    for enabled in (True, False):
        monkeypatch.setattr(fusion, "ENABLED", enabled)
        with pytest.raises(OpError) as err:
            fk.Executor(fk.CPUPlace()).run(main, feed=feed, fetch_list=[loss], scope=scope)
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert "op #4 elementwise_add failed" in messages[0] and "fc_1.b_0[5]" in messages[0]


def test_error_in_a_fused_sgd_run_names_that_update(monkeypatch):
    """An int parameter cannot take a float update in place: that sgd op (the 4th) is named."""
    main, startup, loss = _mlp()
    scope = fk.Scope()
    fk.Executor(fk.CPUPlace()).run(startup, scope=scope)
    sgd_ops = [k for k, op in enumerate(main.global_block().ops) if op.type == "sgd"]
    assert main.global_block().ops[sgd_ops[3]].input("Param") == ["fc_1.w_0"]
    feed = {"x": np.ones((2, 8), "float32"), "y": np.zeros((2, 1), "int64")}
    messages = []
    for enabled in (True, False):
        monkeypatch.setattr(fusion, "ENABLED", enabled)
        s = fk.Scope()
        for n in ("fc_0.w_0", "fc_0.b_0", "fc_1.b_0", "fc_2.w_0", "fc_2.b_0", "learning_rate_0"):
            s.set(n, scope.numpy(n).copy())
        s.set("fc_1.w_0", np.ones((16, 12), "int32"))
        with pytest.raises(OpError) as err:
            fk.Executor(fk.CPUPlace()).run(main, feed=feed, fetch_list=[loss], scope=s)
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith(f"op #{sgd_ops[3]} sgd failed")


def test_a_replaced_kernel_is_never_fused_away(monkeypatch):
    from fleetkit.core.registry import get_op_def
    opdef = get_op_def("relu")
    calls = []

    def counting_relu(ctx):
        calls.append(1)
        return fusion._STOCK["relu"](ctx)
    monkeypatch.setattr(opdef, "forward", counting_relu)
    main, startup, loss = _mlp()
    scope = fk.Scope()
    exe = fk.Executor(fk.CPUPlace())
    exe.run(startup, scope=scope)
    exe.run(main, feed={"x": np.ones((2, 8), "float32"), "y": np.zeros((2, 1), "int64")},
            fetch_list=[loss], scope=scope)
    assert len(calls) == 2
    kinds = fusion.describe(exe._prepare(main, True).steps)
    assert "mul+elementwise_add+relu" not in kinds and "mul+elementwise_add" in kinds
