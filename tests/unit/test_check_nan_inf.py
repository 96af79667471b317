"""FLAGS_check_nan_inf (issue 11, defect 10): the first op that writes NaN/inf is named, and
fed data holding them is named as data; off by default, and then nothing is wrapped."""
from __future__ import annotations

import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.errors import InvalidArgumentError, NanInfError


def _program(build):
    main, startup = fk.Program(), fk.Program()
    with fk.program_guard(main, startup):
        out = build()
    return main, startup, out


def _run(exe, main, startup, feed, fetch):
    scope = fk.Scope()
    exe.run(startup, scope=scope)
    with np.errstate(all="ignore"):  # numpy's own warnings are not what is tested here
        return exe.run(main, feed=feed, fetch_list=[fetch], scope=scope)


def _log_net():
    x = layers.data("x", [3])
    return layers.mean(layers.log(x))


def test_off_by_default_and_nothing_is_wrapped(monkeypatch):
    monkeypatch.delenv("FLAGS_check_nan_inf", raising=False)
    monkeypatch.setattr("fleetkit.core.prepared.checked_steps", lambda steps: pytest.fail("wrapped"))
    main, startup, loss = _program(_log_net)
    exe = fk.Executor(fk.CPUPlace())
    assert exe.check_nan_inf is False
    value, = _run(exe, main, startup, {"x": np.array([[1, 2, -1]], np.float32)}, loss)
    assert np.isnan(value).all()  # poisoned silently: what the flag is for


@pytest.mark.parametrize("how", ["env", "option", "program"])
def test_the_op_that_first_wrote_nan_is_named(monkeypatch, how):
    monkeypatch.delenv("FLAGS_check_nan_inf", raising=False)
    if how == "env":
        monkeypatch.setenv("FLAGS_check_nan_inf", "1")
    main, startup, loss = _program(_log_net)
    if how == "program":
        main.meta.check_nan_inf = True
    exe = fk.Executor(fk.CPUPlace(), check_nan_inf=True if how == "option" else None)
    with pytest.raises(NanInfError) as e:
        _run(exe, main, startup, {"x": np.array([[1, 2, -1], [1, 1, 1]], np.float32)}, loss)
    err = e.value
    log_op = next(k for k, op in enumerate(main.global_block().ops) if op.type == "log")
    assert (err.op_type, err.block, err.op_index) == ("log", 0, log_op)
    assert err.var == main.global_block().ops[log_op].outputs["Out"][0]
    assert f"op 'log' (block 0, op #{log_op}) wrote NaN/inf into its output Out='{err.var}'" in str(err)
    assert "1 NaN and 0 inf among 6 value(s) (shape [2, 3], first at index [0, 2])" in str(err)
    # finite data runs as usual with the check on
    value, = _run(exe, main, startup, {"x": np.ones((2, 3), np.float32)}, loss)
    assert value == 0.0


def test_a_gradient_op_is_named():
    def build():
        x = layers.data("x", [2])
        h = layers.fc(x, 2, act="sqrt", param_attr=fk.ParamAttr(initializer=fk.initializer.Constant(0.0)),
                      bias_attr=fk.ParamAttr(initializer=fk.initializer.Constant(0.0)))
        loss = layers.mean(h)
        fk.optimizer.SGD(0.1).minimize(loss)
        return loss
    main, startup, loss = _program(build)  # sqrt(0) = 0 forward; its gradient 0.5 / 0 = inf
    with pytest.raises(NanInfError) as e:
        _run(fk.Executor(check_nan_inf=True), main, startup, {"x": np.ones((4, 2), np.float32)}, loss)
    assert e.value.op_type == "sqrt_grad" and "inf among" in str(e.value)


def test_member_of_a_fused_step_is_named():
    """fc forward (mul + elementwise_add + act) runs as one fused step; the member that overflowed
    is named, not the step."""
    def build():
        x = layers.data("x", [2])
        return layers.mean(layers.fc(x, 2, act="relu", param_attr=fk.ParamAttr(
            initializer=fk.initializer.Constant(1e30))))
    main, startup, loss = _program(build)
    exe = fk.Executor(check_nan_inf=True)
    with pytest.raises(NanInfError) as e:
        _run(exe, main, startup, {"x": np.full((2, 2), 1e10, np.float32)}, loss)
    assert (e.value.op_type, e.value.op_index) == ("mul", 0)
    first_step = exe._prepare(main, True).steps[0][0]
    assert [c.op.type for _, c in first_step.members] == ["mul", "elementwise_add", "relu"]


def test_fed_nan_is_named_as_data():
    main, startup, loss = _program(_log_net)
    with pytest.raises(NanInfError) as e:
        _run(fk.Executor(check_nan_inf=True), main, startup,
             {"x": np.array([[1, np.inf, 1], [np.nan, 1, 1]], np.float32)}, loss)
    assert e.value.var == "x" and e.value.op_type is None
    assert "fed variable 'x' holds NaN/inf: 1 NaN and 1 inf among 6 value(s)" in str(e.value)


def test_dataset_with_nan_loads_and_the_flag_names_the_feed(tmp_path):
    """The MultiSlot grammar accepts nan/inf; with the flag on, training names the fed slot."""
    path = tmp_path / "part-0"
    path.write_text("2 0.5 1.5 1 1\n2 nan 1.0 1 0\n")

    def build():
        w = layers.data("w", [2])
        y = layers.data("y", [1], dtype="int64")
        loss = layers.mean(layers.fc(w, 1))
        fk.optimizer.SGD(0.1).minimize(loss)
        return w, y, loss
    main, startup, (w, y, loss) = _program(build)
    ds = fk.DatasetFactory().create_dataset("InMemoryDataset")
    ds.set_use_var([w, y])
    ds.set_batch_size(1)
    ds.set_filelist([str(path)])
    ds.load_into_memory()
    assert ds.get_memory_data_size() == 2
    scope = fk.Scope()
    exe = fk.Executor(check_nan_inf=True)
    exe.run(startup, scope=scope)
    with pytest.raises(NanInfError, match="fed variable 'w' holds NaN/inf: 1 NaN and 0 inf"):
        exe.train_from_dataset(main, ds, scope=scope, thread=1)


def test_distributed_strategy_field_marks_the_program():
    from fleetkit.fleet.collective_mode import CollectiveFleet, DistributedStrategy
    from fleetkit.fleet.role_maker import UserDefinedCollectiveRoleMaker
    strategy = DistributedStrategy()
    assert strategy.check_nan_inf is False
    strategy.check_nan_inf = "yes"
    with pytest.raises(InvalidArgumentError, match="check_nan_inf='yes' must be True or False"):
        strategy.check()
    strategy.check_nan_inf = True
    main, startup = fk.Program(), fk.Program()
    with fk.program_guard(main, startup):
        loss = layers.mean(layers.fc(layers.data("x", [2]), 1))
        f = CollectiveFleet()
        f.init(UserDefinedCollectiveRoleMaker(current_id=0, worker_endpoints=["127.0.0.1:1"]))
        f.distributed_optimizer(fk.optimizer.SGD(0.1), strategy).minimize(loss)
    assert f.main_program is main and main.meta.check_nan_inf is True


@pytest.mark.gpu
def test_cuda_place_names_the_op_too():
    """On a GPU the finite check is one device reduction; the op is named as on the host."""
    main, startup, loss = _program(_log_net)
    with pytest.raises(NanInfError) as e:
        _run(fk.Executor(fk.CUDAPlace(0), check_nan_inf=True), main, startup,
             {"x": np.array([[1, 2, -1]], np.float32)}, loss)
    assert e.value.op_type == "log" and "1 NaN and 0 inf among 3 value(s)" in str(e.value)
