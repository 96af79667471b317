"""The public API under the names and signatures fluid 1.4 scripts use (issues 2-5, DESIGN.md,
the 1.4 spec): a ported script changes only its imports."""
import importlib
import inspect

import numpy as np
import pytest

import fleetkit as fk
from fleetkit import fleet, layers
from fleetkit.fleet import role_maker


def _params(fn):
    return list(inspect.signature(fn).parameters)


def _defaults(fn):
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


@pytest.fixture
def fresh_fleet(monkeypatch):
    """fleet.init replaces a module global; give it back after the test."""
    monkeypatch.setattr(fleet, "_fleet", None)
    yield


def _ps_worker_role():
    return role_maker.UserDefinedRoleMaker(current_id=0, role=role_maker.Role.WORKER, worker_num=2,
                                           server_endpoints=["127.0.0.1:6174", "127.0.0.1:6175"])


# ---- where names live -----------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "fleetkit.layers", "fleetkit.optimizer", "fleetkit.initializer", "fleetkit.io", "fleetkit.regularizer",
    "fleetkit.clip", "fleetkit.fleet", "fleetkit.fleet.role_maker", "fleetkit.collective", "fleetkit.dataset",
    "fleetkit.install_check", "fleetkit.transpiler", "fleetkit.compiler"])
def test_module_paths_import(path):
    importlib.import_module(path)


def test_transpiler_exposed_where_fluid_has_it():
    from fleetkit.fleet import transpiler as impl
    for name in ("DistributeTranspiler", "DistributeTranspilerConfig"):
        assert getattr(fk, name) is getattr(impl, name)          # fluid.DistributeTranspiler
        assert getattr(fleet, name) is getattr(impl, name)
        assert getattr(fk.transpiler, name) is getattr(impl, name)  # fluid.transpiler.DistributeTranspiler
        assert name in fk.__all__
    assert fk.transpiler.RoundRobin is impl.RoundRobin and fk.transpiler.HashName is impl.HashName


def test_top_level_names():
    for name in ("Executor", "CPUPlace", "CUDAPlace", "Program", "program_guard", "default_main_program",
                 "default_startup_program", "ParamAttr", "Scope", "global_scope", "scope_guard", "LoDTensor",
                 "create_lod_tensor", "append_backward", "DatasetFactory", "InMemoryDataset", "QueueDataset",
                 "CompiledProgram", "BuildStrategy", "ExecutionStrategy"):
        assert hasattr(fk, name), name
    assert callable(fk.install_check.run_check)
    assert fk.optimizer.DGCMomentumOptimizer is fk.collective.DGCMomentumOptimizer
    for name in ("Constant", "Uniform", "Normal", "Xavier", "MSRA", "ConstantInitializer", "XavierInitializer"):
        assert hasattr(fk.initializer, name), name
    for name in ("SGD", "Momentum", "Adam", "Adagrad", "SGDOptimizer", "AdamOptimizer"):
        assert hasattr(fk.optimizer, name), name
    for name in ("PaddleCloudRoleMaker", "UserDefinedRoleMaker", "UserDefinedCollectiveRoleMaker",
                 "MPISymetricRoleMaker", "Role", "RoleMakerBase"):
        assert hasattr(role_maker, name), name
    assert hasattr(fleet, "DistributedStrategy")


# ---- signatures ---------------------------------------------------------------------------


def test_signatures_follow_fluid():
    run_from = ["self", "program", "dataset", "scope", "thread", "debug", "fetch_list", "fetch_info", "print_period"]
    assert _params(fk.Executor.train_from_dataset) == run_from
    assert _params(fk.Executor.infer_from_dataset) == run_from
    assert _defaults(fk.Executor.train_from_dataset) == {
        "program": None, "dataset": None, "scope": None, "thread": 0, "debug": False, "fetch_list": None,
        "fetch_info": None, "print_period": 100}
    assert _params(fk.Executor.run)[:8] == ["self", "program", "feed", "fetch_list", "feed_var_name",
                                             "fetch_var_name", "scope", "return_numpy"]
    assert _params(layers.embedding)[:6] == ["input", "size", "is_sparse", "is_distributed", "padding_idx",
                                             "param_attr"]
    assert _params(layers.fc)[:6] == ["input", "size", "num_flatten_dims", "param_attr", "bias_attr", "act"]
    assert _params(layers.data)[:5] == ["name", "shape", "append_batch_size", "dtype", "lod_level"]
    assert _params(fk.ParamAttr.__init__)[1:6] == ["name", "initializer", "learning_rate", "regularizer",
                                                   "trainable"]
    assert _params(fk.io.save_inference_model)[:5] == ["dirname", "feeded_var_names", "target_vars", "executor",
                                                       "main_program"]
    assert _defaults(fk.DatasetFactory.create_dataset) == {"datafeed_class": "QueueDataset"}
    dgc = fk.optimizer.DGCMomentumOptimizer.__init__
    assert _params(dgc)[1:9] == ["learning_rate", "momentum", "rampup_begin_step", "rampup_step", "sparsity",
                                 "use_nesterov", "local_grad_clip_norm", "num_trainers"]
    d = _defaults(dgc)
    assert (d["rampup_step"], list(d["sparsity"]), d["use_nesterov"]) == (1, [0.999], False)
    assert _params(fk.DistributeTranspiler.transpile)[1:7] == ["trainer_id", "program", "pservers", "trainers",
                                                               "sync_mode", "startup_program"]
    assert _params(fk.collective.all_reduce)[:2] == ["array", "op"]
    assert _defaults(role_maker.PaddleCloudRoleMaker.__init__) == {"is_collective": False}


# ---- fleet.init: both fluid signatures ---------------------------------------------------------


@pytest.mark.parametrize("call", ["rm", "kw", "exe_rm", "exe_kw", "all_kw"])
def test_fleet_init_accepts_1_4_and_1_5_signatures(fresh_fleet, call):
    rm, exe = _ps_worker_role(), fk.Executor(fk.CPUPlace())
    {"rm": lambda: fleet.init(rm), "kw": lambda: fleet.init(role_maker=rm),
     "exe_rm": lambda: fleet.init(exe, rm), "exe_kw": lambda: fleet.init(exe, role_maker=rm),
     "all_kw": lambda: fleet.init(executor=exe, role_maker=rm)}[call]()
    assert (fleet.is_worker(), fleet.worker_index(), fleet.worker_num(), fleet.server_num()) == (True, 0, 2, 2)
    if call.startswith("exe") or call == "all_kw":
        assert fleet.current()._executor is exe


def test_fleet_init_rejects_bad_arguments(fresh_fleet):
    exe = fk.Executor(fk.CPUPlace())
    with pytest.raises(ValueError, match="RoleMakerBase"):
        fleet.init("not a role maker")
    with pytest.raises(TypeError):
        fleet.init(exe, _ps_worker_role(), _ps_worker_role())
    with pytest.raises(ValueError, match="Executor"):
        fleet.init(executor="exe", role_maker=_ps_worker_role())


# ---- CompiledProgram ------------------------------------------------------------------------


def _tiny():
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = 1
    with fk.program_guard(main, startup):
        x = layers.data("x", [4])
        loss = layers.mean(layers.fc(x, 2, param_attr=fk.ParamAttr(initializer=fk.initializer.Constant(0.1))))
        fk.optimizer.SGD(0.5).minimize(loss)
    return main, startup, loss


def test_compiled_program_runs_like_the_program():
    feed = {"x": np.arange(8, dtype="float32").reshape(2, 4)}
    results = []
    for compiled in (False, True):
        main, startup, loss = _tiny()
        exe, scope = fk.Executor(fk.CPUPlace()), fk.Scope()
        exe.run(startup, scope=scope)
        prog = main
        if compiled:
            bs, es = fk.BuildStrategy(), fk.ExecutionStrategy()
            bs.reduce_strategy = fk.BuildStrategy.ReduceStrategy.AllReduce
            prog = fk.CompiledProgram(main).with_data_parallel(loss_name=loss.name, build_strategy=bs,
                                                               exec_strategy=es)
        results.append([exe.run(prog, feed=feed, fetch_list=[loss], scope=scope)[0] for _ in range(3)])
    np.testing.assert_array_equal(np.array(results[0]), np.array(results[1]))


def test_compiled_program_refuses_multi_trainer():
    main, _, loss = _tiny()
    bs = fk.BuildStrategy()
    bs.num_trainers = 2
    with pytest.raises(ValueError, match="collective"):
        fk.CompiledProgram(main).with_data_parallel(loss_name=loss.name, build_strategy=bs)
    with pytest.raises(ValueError, match="Program"):
        fk.CompiledProgram("main")


# ---- train_from_dataset argument errors -------------------------------------------------------


def test_train_from_dataset_without_dataset_is_runtime_error():
    # fluid raises RuntimeError; fleetkit's own callers catch ValueError: both work
    with pytest.raises(RuntimeError, match="dataset is None"):
        fk.Executor(fk.CPUPlace()).train_from_dataset(fk.Program(), None)
    with pytest.raises(ValueError):
        fk.Executor(fk.CPUPlace()).infer_from_dataset(program=fk.Program(), dataset=None)


# ---- the DESIGN.md flow's global_shuffle(fleet) needs trainer endpoints in PS mode too ---------


def test_ps_env_reads_optional_trainer_endpoints(fresh_fleet, monkeypatch):
    env = {"TRAINING_ROLE": "TRAINER", "PADDLE_PSERVERS_IP_PORT_LIST": "127.0.0.1:6174",
           "PADDLE_TRAINERS_NUM": "2", "PADDLE_TRAINER_ID": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("PADDLE_TRAINER_ENDPOINTS", raising=False)
    fleet.init(role_maker.PaddleCloudRoleMaker())
    assert fleet.worker_endpoints() == []          # optional: PS training itself does not need them
    monkeypatch.setenv("PADDLE_TRAINER_ENDPOINTS", "127.0.0.1:7000,127.0.0.1:7001")
    fleet.init(role_maker.PaddleCloudRoleMaker())
    assert fleet.worker_endpoints(to_string=True) == "127.0.0.1:7000,127.0.0.1:7001"
    assert (fleet.worker_index(), fleet.worker_num()) == (1, 2)
    monkeypatch.setenv("PADDLE_TRAINER_ENDPOINTS", "127.0.0.1:7000")
    with pytest.raises(ValueError, match="PADDLE_TRAINER_ENDPOINTS has 1 endpoints but PADDLE_TRAINERS_NUM=2"):
        fleet.init(role_maker.PaddleCloudRoleMaker())


FLEET_API = ["is_first_worker", "worker_index", "worker_num", "is_worker", "worker_endpoints", "server_num",
             "server_index", "server_endpoints", "is_server", "split_files", "init_worker", "run_worker",
             "init_server", "run_server", "stop_worker", "stop", "distributed_optimizer",
             "save_inference_model", "save_persistables"]


@pytest.mark.parametrize("mode", ["PSFleet", "CollectiveFleet"])
def test_both_fleet_modes_have_the_fluid_fleet_methods(mode):
    cls = getattr(fleet, mode)
    missing = [m for m in FLEET_API + ["main_program", "startup_program"] if not hasattr(cls, m)]
    assert not missing, f"{mode} lacks {missing}"


def test_collective_fleet_stop_and_run_worker(fresh_fleet):
    fleet.init(role_maker.UserDefinedCollectiveRoleMaker(current_id=0, worker_endpoints=["127.0.0.1:1"]))
    fleet.run_worker()
    fleet.stop()  # no group was created: nothing to close


def test_random_layers():
    main, startup = fk.Program(), fk.Program()
    main.random_seed = 3
    with fk.program_guard(main, startup):
        u = layers.uniform_random([3, 4], min=2.0, max=3.0, seed=5)
        g = layers.gaussian_random(shape=[4000], mean=1.0, std=2.0)
        g64 = layers.gaussian_random([2], 0.0, 1.0, 0, "float64")
    assert _params(layers.uniform_random) == ["shape", "dtype", "min", "max", "seed"]
    assert _params(layers.gaussian_random) == ["shape", "mean", "std", "seed", "dtype"]
    a, b, c = fk.Executor(fk.CPUPlace()).run(main, fetch_list=[u, g, g64], scope=fk.Scope())
    assert a.shape == (3, 4) and a.dtype == np.float32 and a.min() >= 2.0 and a.max() < 3.0
    assert abs(b.mean() - 1.0) < 0.2 and abs(b.std() - 2.0) < 0.2
    assert c.dtype == np.float64
    with pytest.raises(ValueError, match="max"):
        layers.uniform_random([2], min=1.0, max=0.0)


def test_data_generator_error_names_the_offending_line():
    from fleetkit.dataset import MultiSlotDataGenerator
    from fleetkit.errors import DataFormatError
    rows = {"first\n": [("a", [1]), ("b", [2])], "second\n": [("b", [1]), ("a", [2])]}

    class Gen(MultiSlotDataGenerator):
        def generate_sample(self, line):
            def samples():
                yield rows[line]
            return samples

    gen = Gen()
    gen.set_batch(2)
    with pytest.raises(DataFormatError, match=r"slot #1 is 'b' but was 'a'.*input line 'second\\n'"):
        gen.run_to_lines(["first\n", "second\n"])
    assert Gen().run_to_lines(["first\n"]) == ["1 1 1 2\n"]


def test_python_dash_m_fleetkit():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "fleetkit", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "check" in out.stdout
    bare = subprocess.run([sys.executable, "-m", "fleetkit"], capture_output=True, text=True, timeout=60)
    assert bare.returncode == 0 and "COMMAND" in bare.stdout
    bad = subprocess.run([sys.executable, "-m", "fleetkit", "nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_user_defined_role_maker_both_fluid_orders():
    Role = role_maker.Role
    r14 = role_maker.UserDefinedRoleMaker(0, "127.0.0.1:7000", Role.WORKER, ["127.0.0.1:7000", "127.0.0.1:7001"],
                                          ["127.0.0.1:6174"])
    assert (r14.worker_index(), r14.worker_num(), r14.server_num()) == (0, 2, 1)
    r15 = role_maker.UserDefinedRoleMaker(1, Role.SERVER, 2, ["127.0.0.1:6174", "127.0.0.1:6175"])  # 1.5 order
    assert (r15.is_server(), r15.server_index(), r15.worker_num(), r15.server_num()) == (True, 1, 2, 2)
    r15w = role_maker.UserDefinedRoleMaker(1, Role.WORKER, 3)
    assert (r15w.worker_index(), r15w.worker_num()) == (1, 3)
    assert role_maker.UserDefinedRoleMaker(0, Role.SERVER).is_server()
    kw = role_maker.UserDefinedRoleMaker(current_id=0, role=Role.WORKER, worker_num=2, server_endpoints=["a:1"])
    assert kw.worker_num() == 2
    with pytest.raises(ValueError, match="worker_num"):
        role_maker.UserDefinedRoleMaker(0, Role.WORKER, "2")


def test_star_imports_resolve():
    for mod in ("fleetkit", "fleetkit.fleet", "fleetkit.layers", "fleetkit.collective", "fleetkit.dataset",
                "fleetkit.transpiler"):
        ns: dict = {}
        exec(f"from {mod} import *", ns)  # every __all__ name resolves (lazy ones included)
        names = getattr(importlib.import_module(mod), "__all__", None)
        assert names is None or all(name in ns for name in names), mod
    ns = {}
    exec("from fleetkit.layers import *", ns)
    assert {"fc", "embedding", "data", "sequence_pool", "uniform_random"} <= set(ns)


def test_executor_close_runs_registered_hooks(monkeypatch):
    from fleetkit.core import executor as exmod
    monkeypatch.setattr(exmod, "_CLOSE_HOOKS", [])
    seen = []
    hook = exmod.register_close_hook(seen.append)
    exmod.register_close_hook(hook)  # registered once
    exe = fk.Executor(fk.CPUPlace())
    exe.close()
    assert seen == [exe]
