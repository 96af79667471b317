"""The softmax + cross_entropy fusions (core/fusion.py) and the executor's feed fast path:
bit-identical values, every member's outputs written, member kernels off the fast path,
errors naming the op that failed."""
import logging

import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.core import fusion
from fleetkit.errors import InvalidArgumentError, OpError

FETCH = ["fc_0.tmp_2", "cross_entropy_0.tmp_0", "fc_0.tmp_2@GRAD", "fc_0.tmp_1@GRAD", "fc_0.w_0@GRAD"]


def _classifier(ignore_index=-100):
    main, startup = fk.Program(), fk.Program()
    startup.random_seed = 5
    with fk.program_guard(main, startup), fk.unique_name.guard():
        x = layers.data("x", [6])
        y = layers.data("y", [1], dtype="int64")
        p = layers.fc(x, 4, act="softmax")
        loss = layers.mean(layers.cross_entropy(p, y, ignore_index=ignore_index))
        fk.optimizer.SGD(0.1).minimize(loss)
    return main, startup, loss


def _train(enabled, monkeypatch, labels, ignore_index=-100):
    monkeypatch.setattr(fusion, "ENABLED", enabled)
    main, startup, loss = _classifier(ignore_index)
    scope = fk.Scope()
    exe = fk.Executor(fk.CPUPlace())
    exe.run(startup, scope=scope)
    rng = np.random.default_rng(1)
    out = [exe.run(main, feed={"x": rng.standard_normal((len(yb), 6)).astype("float32"), "y": yb},
                   fetch_list=[loss] + FETCH, scope=scope) for yb in labels]
    return out, scope.numpy("fc_0.w_0").copy(), fusion.describe(exe._prepare(main, True).steps)


@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_fused_loss_head_is_bit_identical(ignore_index, monkeypatch):
    rng = np.random.default_rng(2)
    labels = [rng.integers(0, 4, (7, 1)) for _ in range(3)]
    fused, w_fused, kinds = _train(True, monkeypatch, labels, ignore_index)
    plain, w_plain, _ = _train(False, monkeypatch, labels, ignore_index)
    assert "softmax+cross_entropy" in kinds and "cross_entropy_grad+softmax_grad" in kinds
    for a, b in zip(fused, plain):
        for u, v in zip(a, b):
            assert u.dtype == v.dtype and np.array_equal(u, v)
    assert np.array_equal(w_fused, w_plain)


def test_errors_in_the_fused_step_name_the_member(monkeypatch):
    main, startup, loss = _classifier()
    scope = fk.Scope()
    exe = fk.Executor(fk.CPUPlace())
    exe.run(startup, scope=scope)
    x = np.zeros((2, 6), "float32")
    with pytest.raises(InvalidArgumentError, match=r"op 'cross_entropy': label 'y' holds class 9"):
        exe.run(main, feed={"x": x, "y": np.array([[1], [9]])}, fetch_list=[loss], scope=scope)

    def broken(*args):
        raise ValueError("boom")
    for name, op in (("cross_entropy_value", "cross_entropy"), ("softmax_grad_value", "softmax_grad")):
        with monkeypatch.context() as m:
            m.setattr(fusion, name, broken)
            with pytest.raises(OpError, match=rf"op #\d+ {op} failed: ValueError: boom"):
                exe.run(main, feed={"x": x, "y": np.array([[1], [2]])}, fetch_list=[loss], scope=scope)


def test_lod_input_runs_the_member_kernels(monkeypatch):
    """A LoDTensor off the fast path: the members run and the LoD reaches the loss."""
    main = fk.Program()
    with fk.program_guard(main, fk.Program()), fk.unique_name.guard():
        x = layers.data("x", [3], lod_level=1)
        y = layers.data("y", [1], dtype="int64", lod_level=1)
        ce = layers.cross_entropy(layers.softmax(x), y)
    exe = fk.Executor(fk.CPUPlace())
    assert "softmax+cross_entropy" in fusion.describe(exe._prepare(main, True).steps)
    xv = np.arange(9, dtype="float32").reshape(3, 3) / 9
    out, = exe.run(main, feed={"x": fk.create_lod_tensor(xv, [[1, 2]], fk.CPUPlace()),
                               "y": fk.create_lod_tensor(np.array([[0], [1], [2]]), [[1, 2]], fk.CPUPlace())},
                   fetch_list=[ce], return_numpy=False)
    e = np.exp(xv - xv.max(1, keepdims=True))
    want = -np.log((e / e.sum(1, keepdims=True))[[0, 1, 2], [0, 1, 2]])
    assert out.lod() == [[0, 1, 3]]
    np.testing.assert_allclose(np.asarray(out.values).ravel(), want, rtol=1e-6)


def _doubling_program():
    """out = 2 * x for a [-1, 3] float32 x: (program, x, out)."""
    main = fk.Program()
    with fk.program_guard(main, fk.Program()), fk.unique_name.guard():
        x = layers.data("x", [3])
        out = layers.scale(x, 2.0)
    return main, x, out


def test_feed_fast_path_rechecks_after_the_variable_changes(caplog):
    """A value of the shape/dtype that passed before skips the checks; a changed variable or a
    value needing a cast goes through convert_feed again."""
    main, x, out = _doubling_program()
    exe = fk.Executor(fk.CPUPlace())
    a = np.ones((2, 3), "float32")
    for _ in range(2):
        assert np.array_equal(exe.run(main, feed={"x": a}, fetch_list=[out])[0], 2 * a)
    got, = exe.run(main, feed={"x": np.ones((2, 3), "float64")}, fetch_list=[out])
    assert got.dtype == np.float32  # cast to the declared dtype, as before
    x.shape = (-1, 4)  # a script editing the declared shape: the fed [2, 3] now warns
    with caplog.at_level(logging.WARNING, logger="fleetkit.core.executor"):
        exe.run(main, feed={"x": a}, fetch_list=[out])
    assert "fed [2, 3]" in caplog.text


@pytest.mark.parametrize("enabled", [True, False])
def test_read_only_parameter_in_a_fused_sgd_run_behaves_as_unfused(enabled, monkeypatch):
    """The fused run tries the in-place rule first; a read-only parameter falls back to the
    sgd kernel, so fused and unfused runs end the same (whatever the kernel does with it)."""
    monkeypatch.setattr(fusion, "ENABLED", enabled)
    main, startup, loss = _classifier()
    scope = fk.Scope()
    exe = fk.Executor(fk.CPUPlace())
    exe.run(startup, scope=scope)
    w = scope.numpy("fc_0.w_0")
    w.flags.writeable = False
    feed = {"x": np.ones((3, 6), "float32"), "y": np.array([[0], [1], [2]])}
    try:
        exe.run(main, feed=feed, fetch_list=[loss], scope=scope)
        outcome = ("ran", scope.numpy("fc_0.w_0").copy())
    except Exception as e:  # noqa: BLE001  (recorded: the two runs must agree)
        outcome = (type(e).__name__, None)
    monkeypatch.setattr(fusion, "ENABLED", not enabled)
    scope2 = fk.Scope()
    exe2 = fk.Executor(fk.CPUPlace())
    exe2.run(startup, scope=scope2)
    scope2.numpy("fc_0.w_0").flags.writeable = False
    try:
        exe2.run(main, feed=feed, fetch_list=[loss], scope=scope2)
        other = ("ran", scope2.numpy("fc_0.w_0").copy())
    except Exception as e:  # noqa: BLE001
        other = (type(e).__name__, None)
    assert outcome[0] == other[0]
    if outcome[1] is not None:
        assert np.array_equal(outcome[1], other[1]) and not np.array_equal(outcome[1], w)


def test_feed_as_a_list_of_one_dict_per_place():
    """DataFeeder / PyReader style: a list holding one feed dict; any other length is refused."""
    main, x, out = _doubling_program()
    exe = fk.Executor(fk.CPUPlace())
    a = np.ones((2, 3), "float32")
    assert np.array_equal(exe.run(main, feed=[{"x": a}], fetch_list=[out])[0], 2 * a)
    for bad in ([], ({"x": a}, {"x": a})):
        with pytest.raises(InvalidArgumentError, match=f"feed is a list of {len(bad)} feed dicts"):
            exe.run(main, feed=bad, fetch_list=[out])


def test_label_that_is_the_softmax_output_is_not_fused_early(monkeypatch):
    """cross_entropy(p, p, soft_label=True) (the entropy of p): the fused step would read the
    label before softmax wrote it (last run's p), so these two ops stay separate steps."""
    def run(enabled):
        monkeypatch.setattr(fusion, "ENABLED", enabled)
        main = fk.Program()
        with fk.program_guard(main, fk.Program()), fk.unique_name.guard():
            x = layers.data("x", [4])
            p = layers.softmax(x)
            ent = layers.cross_entropy(p, p, soft_label=True)
        exe = fk.Executor(fk.CPUPlace())
        rng = np.random.default_rng(3)
        outs = [exe.run(main, feed={"x": rng.standard_normal((3, 4)).astype("float32")}, fetch_list=[ent])[0]
                for _ in range(2)]
        return outs, fusion.describe(exe._prepare(main, True).steps)
    fused, kinds = run(True)
    plain, _ = run(False)
    assert "softmax+cross_entropy" not in kinds
    for a, b in zip(fused, plain):
        assert np.array_equal(a, b)
