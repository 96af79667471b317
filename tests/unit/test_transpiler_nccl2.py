"""DistributeTranspiler's nccl2 mode: the program rewrite, its argument errors, and the
num_trainers checks of ParallelExecutor / CompiledProgram (runs are in tests/multiproc)."""
from __future__ import annotations

import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.collective import groups
from fleetkit.core import compiler
from fleetkit.errors import InvalidArgumentError

EPS = "127.0.0.1:6170,127.0.0.1:6171"


@pytest.fixture(autouse=True)
def _no_group_factory_left():
    yield
    groups.set_group_factory(None, 0)  # transpile registers one for ring 0 in this process
    compiler._pending_rewrite = None  # ... and, without a main program to rewrite, a rewrite


def _minimized(regularize: bool = False):
    main, startup = fk.Program(), fk.Program()
    with fk.program_guard(main, startup), fk.unique_name.guard():
        x = layers.data("x", [4])
        h = layers.fc(x, 3, act="relu")
        loss = layers.mean(layers.fc(h, 1))
        reg = fk.regularizer.L2Decay(0.01) if regularize else None
        fk.optimizer.Momentum(0.1, 0.9, regularization=reg).minimize(loss)
    return main, startup, loss


def _nccl2(**kwargs):
    return fk.DistributeTranspiler(fk.DistributeTranspilerConfig(mode="nccl2", **kwargs))


def _transpile(main, startup, trainer_id=1, trainers=EPS, current="127.0.0.1:6171"):
    t = _nccl2()
    t.transpile(trainer_id, trainers=trainers, current_endpoint=current, startup_program=startup, program=main)
    return t


@pytest.mark.parametrize("regularize", [False, True])
def test_every_gradient_is_all_reduced_and_averaged_before_the_optimizer(regularize):
    main, startup, loss = _minimized(regularize)
    params = sorted(p.name for p in main.all_parameters())
    t = _transpile(main, startup)
    assert (t.trainer_id, t.trainer_num, t.trainer_endpoints) == (1, 2, EPS.split(","))
    ops = main.global_block().ops
    types = [op.type for op in ops]
    reduced = sorted(n for op in ops if op.type == "c_allreduce_sum" for n in op.inputs["X"])
    assert reduced == sorted(p + "@GRAD" for p in params)
    first_update = min(i for i, op in enumerate(ops) if op.type in ("momentum", "weight_decay"))
    assert types.index("c_sync_comm_stream") < first_update
    assert max(i for i, ty in enumerate(types) if ty == "c_allreduce_sum") < first_update
    seed = loss.name + "@GRAD"
    scales = [op for op in ops if op.type == "scale" and op.outputs["Out"] == [seed]]
    assert len(scales) == 1 and scales[0].attrs["scale"] == pytest.approx(0.5)
    assert types.index("scale") == types.index("fill_any_like") + 1  # right after the seed
    broadcast = [op for op in startup.global_block().ops if op.type == "c_broadcast"]
    assert sorted(op.inputs["X"][0] for op in broadcast) == params
    assert all(op.attrs["root"] == 0 for op in broadcast)
    assert (main.meta.nccl2_trainers, main.meta.nccl2_trainer_id) == (2, 1)
    assert groups._FACTORIES.get(0) is not None


def test_one_trainer_leaves_the_program_alone():
    main, startup, _ = _minimized()
    before = [op.type for op in main.global_block().ops]
    _transpile(main, startup, trainer_id=0, trainers="127.0.0.1:6170", current="127.0.0.1:6170")
    assert [op.type for op in main.global_block().ops] == before
    assert "c_broadcast" not in [op.type for op in startup.global_block().ops]


@pytest.mark.parametrize("kwargs, match", [
    ({"current": "127.0.0.1:9999"}, r"current_endpoint '127.0.0.1:9999' is not one of trainers"),
    ({"trainer_id": 2}, r"trainer_id must be in \[0, 2\).*got 2"),
    ({"trainer_id": -1}, r"trainer_id must be in \[0, 2\)"),
    ({"trainer_id": 0}, r"trainer_id 0 is trainers\[0\] = '127.0.0.1:6170', but current_endpoint is "
                        r"'127.0.0.1:6171'"),
    ({"trainers": 2}, r"trainers is the trainers' endpoints 'ip:port,ip:port,...'"),
    ({"trainers": "127.0.0.1:6170,localhost"}, r"trainer endpoint 'localhost' is not 'ip:port'"),
    ({"trainers": "127.0.0.1:6171,127.0.0.1:6171"}, r"trainer endpoints repeat"),
])
def test_bad_arguments_are_named(kwargs, match):
    main, startup, _ = _minimized()
    with pytest.raises(InvalidArgumentError, match=match):
        _transpile(main, startup, **kwargs)
    assert "c_allreduce_sum" not in [op.type for op in main.global_block().ops]


def test_collective_mode_is_fluid_15s_and_refused():
    with pytest.raises(InvalidArgumentError, match="mode 'collective' is not one of fluid 1.4's 'pserver', 'nccl2'"):
        fk.DistributeTranspiler(fk.DistributeTranspilerConfig(mode="collective")).transpile(
            0, trainers=EPS, current_endpoint="127.0.0.1:6170")


def test_without_a_main_program_parallel_executor_rewrites_its_program():
    """models v1.4 dist_train: transpile(startup_program=...) only, then ParallelExecutor
    (or CompiledProgram) gets the train program."""
    main, startup, loss = _minimized()
    empty = fk.Program()
    _transpile(empty, startup)
    assert empty.global_block().ops == [] and not empty.meta.nccl2_trainers
    broadcast = sorted(op.inputs["X"][0] for op in startup.global_block().ops if op.type == "c_broadcast")
    initialized = {n for op in startup.global_block().ops if op.type != "c_broadcast" for n in op.output_arg_names}
    assert broadcast == sorted(initialized)  # parameters, accumulators, learning rate
    assert "c_allreduce_sum" not in [op.type for op in main.global_block().ops]
    with pytest.raises(InvalidArgumentError, match="num_trainers=3, but the program was not transpiled"):
        fk.ParallelExecutor(False, loss.name, main, num_trainers=3, trainer_id=1)
    fk.ParallelExecutor(False, loss.name, main, num_trainers=2, trainer_id=1)
    reduced = sorted(n for op in main.global_block().ops if op.type == "c_allreduce_sum" for n in op.inputs["X"])
    assert reduced == sorted(p.name + "@GRAD" for p in main.all_parameters())
    assert (main.meta.nccl2_trainers, main.meta.nccl2_trainer_id) == (2, 1)
    assert sorted(op.inputs["X"][0] for op in startup.global_block().ops if op.type == "c_broadcast") == broadcast
    test_program = main.clone(for_test=True)
    test_program.meta.nccl2_trainers = 0
    bs = fk.BuildStrategy()
    bs.num_trainers, bs.trainer_id = 2, 1
    fk.CompiledProgram(test_program).with_data_parallel(build_strategy=bs)  # nothing to all-reduce: only marked
    assert test_program.meta.nccl2_trainers == 2


def test_a_program_transpiled_twice_is_refused():
    main, startup, _ = _minimized()
    _transpile(main, startup)
    with pytest.raises(InvalidArgumentError, match="already transpiled in nccl2 mode"):
        _transpile(main, startup)


def test_there_are_no_get_programs_in_nccl2_mode():
    main, startup, _ = _minimized()
    t = _transpile(main, startup)
    with pytest.raises(InvalidArgumentError, match="rewrites the main and startup programs in place"):
        t.get_trainer_program()


def test_parallel_executor_takes_num_trainers_of_a_transpiled_program():
    main, startup, loss = _minimized()
    with pytest.raises(InvalidArgumentError, match=r"num_trainers=2, but the program was not transpiled.*"
                                                   r"config.mode = 'nccl2'"):
        fk.ParallelExecutor(False, loss.name, main, num_trainers=2, trainer_id=1)
    _transpile(main, startup)
    pe = fk.ParallelExecutor(False, loss.name, main, num_trainers=2, trainer_id=1)
    assert pe.device_count == 1
    with pytest.raises(InvalidArgumentError, match="num_trainers=3, trainer_id=1, but the program was transpiled "
                                                   "in nccl2 mode for trainer 1 of 2"):
        fk.ParallelExecutor(False, loss.name, main, num_trainers=3, trainer_id=1)
    with pytest.raises(InvalidArgumentError, match="trainer_id=0"):
        fk.ParallelExecutor(False, loss.name, main, num_trainers=2, trainer_id=0)


def test_compiled_program_takes_build_strategy_num_trainers_of_a_transpiled_program():
    main, startup, loss = _minimized()
    bs = fk.BuildStrategy()
    bs.num_trainers, bs.trainer_id = 2, 1
    with pytest.raises(InvalidArgumentError, match="build_strategy.num_trainers=2, but the program was not"):
        fk.CompiledProgram(main).with_data_parallel(loss_name=loss.name, build_strategy=bs)
    _transpile(main, startup)
    compiled = fk.CompiledProgram(main).with_data_parallel(loss_name=loss.name, build_strategy=bs)
    assert compiled._is_data_parallel
    bs.trainer_id = 0
    with pytest.raises(InvalidArgumentError, match="for trainer 1 of 2"):
        fk.CompiledProgram(main).with_data_parallel(loss_name=loss.name, build_strategy=bs)
