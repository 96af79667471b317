"""Parameter-server training in real processes on 127.0.0.1 (pservers and trainers
spawned by run_workers): sync PS equals single-process training, async PS reaches
single-process AUC, and the hangs Paddle users hit most do not happen here."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fleetkit as fk
from fleetkit.errors import ServerNotReadyError
from fleetkit.fleet import Role, UserDefinedRoleMaker
from fleetkit.demo import ctr_model, ctr_train
from fleetkit.demo.ctr_data import CTRConfig, CTRData
from fleetkit.testing import WorkerFailure, free_ports, run_workers

# small model for the exactness tests: 3 slots x 2000 ids (a 6000 x 8 table: 48000
# floats, so the dense table is split into one block per pserver)
SMALL = {"vocab": 2000}




def _role_maker(rank: int, n_ps: int, eps: list[str], trainers: int) -> UserDefinedRoleMaker:
    if rank < n_ps:
        return UserDefinedRoleMaker(current_id=rank, role=Role.SERVER, worker_num=trainers, server_endpoints=eps)
    return UserDefinedRoleMaker(current_id=rank - n_ps, role=Role.WORKER, worker_num=trainers,
                                server_endpoints=eps)


def _job(rank: int, world: int, n_ps: int, eps: list[str], cfg: dict):
    time.sleep(cfg.get("delays", {}).get(rank, 0.0))
    return ctr_train.run_ps_role(_role_maker(rank, n_ps, eps, cfg["trainers"]), cfg)


def run_job(n_ps: int, cfg: dict, timeout: float = 120.0, env: dict | None = None) -> list:
    for attempt in range(2):
        eps = [f"127.0.0.1:{p}" for p in free_ports(n_ps)]
        try:
            return run_workers(_job, n_ps + cfg["trainers"], (n_ps, eps, cfg), timeout=timeout,
                               env={"OMP_NUM_THREADS": "1", **(env or {})})
        except WorkerFailure as e:
            # a free port taken by another process between our probe and the pserver's
            # bind (other test runs share the machine): try once more with new ports
            if attempt or not any("cannot listen on" in r for r in e.reports.values()):
                raise
    raise AssertionError("unreachable")


# a proxy that does not exist: any RPC routed through it would fail
DEAD_PROXY = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
              "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
              "no_proxy": None, "NO_PROXY": None}


# ------------------------------------------------------------------ sync == local
def _local_reference(cfg: dict, trainer0: dict, lazy_adam: bool) -> tuple[dict, fk.Scope]:
    data = CTRData(CTRConfig(**cfg.get("data", {})))
    make = {"sgd": lambda: fk.optimizer.SGD(cfg["lr"]),
            "sgd_decay": lambda: fk.optimizer.SGD(fk.layers.exponential_decay(cfg["lr"], 2, 0.5)),
            "adam": lambda: fk.optimizer.Adam(cfg["lr"], lazy_mode=lazy_adam,
                                              epsilon=cfg.get("adam_epsilon", 1e-8))}[cfg["optimizer"]]
    model = ctr_model.build(data.cfg, is_sparse=cfg["is_sparse"], make_optimizer=make,
                            hidden=cfg.get("hidden", (64, 32)))
    init = dict(trainer0["start"])
    if cfg.get("is_distributed"):
        from fleetkit.pserver.tables import Initializer, initial_rows
        rows = data.cfg.table_rows
        init["ctr_emb"] = initial_rows(np.arange(rows), 8, Initializer("uniform", -0.05, 0.05, seed=0))
    scope = fk.Scope()
    losses = ctr_train.train_local(model, data, cfg["steps"], cfg["trainers"], cfg["batch_size"], scope,
                                   init=init)
    return {"losses": losses}, scope


CASES = {  # name: (optimizer, is_sparse, is_distributed)
    "sgd-dense": ("sgd", False, False),
    "adam-sparse": ("adam", True, False),
    "sgd-distributed": ("sgd", True, True),
    "adam-distributed": ("adam", True, True),
    "lr-schedule-sparse": ("sgd_decay", True, False),
}


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["sgd-dense", "adam-sparse", "sgd-distributed"])
def test_sync_2x2_with_gpu_trainers_equals_single_process(case):
    """Trainers on CUDAPlace(0), pservers on the CPU: gradients go down to the host for the
    wire, pulled parameters and prefetched rows go up to the GPU; the result is plain
    single-process CPU training (float32 on two devices: rtol 1e-4)."""
    opt, is_sparse, is_dist = CASES[case]
    cfg = {"sync": True, "steps": 6, "batch_size": 32, "trainers": 2, "optimizer": opt,
           "lr": 0.01 if opt == "adam" else 0.1, "is_sparse": is_sparse, "is_distributed": is_dist,
           "data": SMALL, "hidden": (64, 32), "adam_epsilon": 1e-3, "use_cuda": True}
    if is_dist:
        cfg["fetch_table_rows"] = 3 * SMALL["vocab"]
    t0, t1 = run_job(2, cfg)[2:]
    ref, scope = _local_reference(cfg, t0, lazy_adam=is_dist)
    np.testing.assert_allclose((np.array(t0["losses"]) + t1["losses"]) / 2, ref["losses"], rtol=1e-4)
    for name, value in t0["final"].items():
        np.testing.assert_allclose(value, scope.numpy(name), rtol=1e-4, atol=1e-6, err_msg=name)
    if is_dist:
        np.testing.assert_allclose(t0["table"], scope.numpy("ctr_emb"), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("case", list(CASES))
def test_sync_2x2_equals_single_process(case):
    opt, is_sparse, is_dist = CASES[case]
    # Adam's epsilon is 1e-3 here: with 1e-8 a gradient element whose two halves nearly
    # cancel is normalized to about +-lr, so float32 rounding of (g0 + g1) / 2 (PS) vs the
    # local sum decides its sign; with 1e-3 such elements stay in Adam's linear regime and
    # the comparison tests the update rule, not the rounding (same kernels either way).
    cfg = {"sync": True, "steps": 8, "batch_size": 32, "trainers": 2, "optimizer": opt,
           "lr": 0.01 if opt == "adam" else 0.1, "is_sparse": is_sparse, "is_distributed": is_dist,
           "data": SMALL, "hidden": (64, 32), "adam_epsilon": 1e-3}
    if is_dist:
        cfg["fetch_table_rows"] = 3 * SMALL["vocab"]
    results = run_job(2, cfg)
    t0, t1 = results[2], results[3]
    for name in t0["start"]:  # both trainers started from the pservers' values
        np.testing.assert_array_equal(t0["start"][name], t1["start"][name], err_msg=name)
    ref, scope = _local_reference(cfg, t0, lazy_adam=is_dist)
    # each trainer's loss is its half of the global batch: their mean is the local loss
    np.testing.assert_allclose((np.array(t0["losses"]) + t1["losses"]) / 2, ref["losses"], rtol=1e-5)
    atol = 1e-7
    for name, value in t0["final"].items():
        np.testing.assert_allclose(value, scope.numpy(name), rtol=1e-5, atol=atol, err_msg=name)
        np.testing.assert_array_equal(value, t1["final"][name], err_msg=name)
    if is_dist:
        np.testing.assert_allclose(t0["table"], scope.numpy("ctr_emb"), rtol=1e-5, atol=atol)
    elif is_sparse:  # the sliced table: remote prefetch, never received whole by a training step
        assert t0["remote_tables"] == ["ctr_emb"] and "ctr_emb" in t0["final"]
        for t in (t0, t1):
            got = {name for kind, name in t["fetched"] if kind == "get"}
            assert got and not [n for n in got if n.startswith("ctr_emb")], got
            assert t["fetched"][("get", "fc_0.b_0")] == cfg["steps"]  # dense params: pulled every step
            prefetched = {name: n for (kind, name), n in t["fetched"].items() if kind == "prefetch"}
            assert set(prefetched) == {"ctr_emb.block0", "ctr_emb.block1"}, prefetched
            assert all(0 < n <= cfg["steps"] for n in prefetched.values())


def test_trainers_far_apart_more_pservers_than_blocks_behind_a_proxy():
    """Trainer 1 starts 4 s after trainer 0; 5 pservers for 3 parameter blocks (two host
    nothing); http(s)_proxy point at a dead proxy.  Sync training still equals
    single-process training."""
    cfg = {"sync": True, "steps": 4, "batch_size": 32, "trainers": 2, "optimizer": "sgd", "lr": 0.1,
           "is_sparse": True, "is_distributed": False, "data": {"vocab": 100}, "hidden": (),
           "delays": {6: 4.0}}
    results = run_job(5, cfg, env=DEAD_PROXY)
    t0 = results[5]
    assert len(t0["final"]) == 3  # ctr_emb, fc w, fc b
    ref, scope = _local_reference(cfg, t0, lazy_adam=False)
    for name, value in t0["final"].items():
        np.testing.assert_allclose(value, scope.numpy(name), rtol=1e-5, atol=1e-7, err_msg=name)


def test_billion_id_table_holds_only_touched_rows():
    """An is_distributed table of 10^9 x 8 floats (32 GB dense) through the transpiler:
    trainers never materialize it, each pserver holds exactly the rows touched."""
    data_cfg = {"vocab": 333_333_334}  # 3 slots -> 1_000_000_002 ids
    cfg = {"sync": True, "steps": 5, "batch_size": 64, "trainers": 2, "optimizer": "adam", "lr": 0.01,
           "is_sparse": True, "is_distributed": True, "data": data_cfg, "report_sparse_memory": True}
    t0 = run_job(2, cfg)[2]
    data = CTRData(CTRConfig(**data_cfg))
    touched = np.unique(np.concatenate([f for step in range(5) for t in range(2)
                                        for f, _ in ctr_train.trainer_batch(data, step, t, 64)["ids"]]))
    assert touched.max() > 10**8  # ids really spread over the whole space
    for shard, (rows, nbytes) in enumerate(t0["sparse_memory"]):
        assert rows == int(np.sum(touched % 2 == shard))
        assert nbytes < 64 * rows * 8 * 4 + (1 << 20), nbytes  # value + 2 Adam moments + index, not 32 GB


def _dying_job(rank: int, world: int, eps: list[str], cfg: dict):
    if rank == 3:  # trainer 1 dies (no COMPLETE) after 2 steps
        return ctr_train.run_ps_role(_role_maker(rank, 2, eps, 2), {**cfg, "steps": 2},
                                     on_trained=lambda: os._exit(17))
    return ctr_train.run_ps_role(_role_maker(rank, 2, eps, 2), cfg)


def test_sync_trainer_death_fails_the_others_naming_it():
    """Trainer 1 dies (kill -9 style, no COMPLETE): its heartbeat stream drops, so trainer 0
    and both pservers fail naming it within seconds, not after the 300 s barrier timeout."""
    cfg = {"sync": True, "steps": 50, "batch_size": 16, "trainers": 2, "optimizer": "sgd", "lr": 0.1,
           "is_sparse": True, "data": {"vocab": 100}, "hidden": (), "barrier_timeout_s": 300.0}
    eps = [f"127.0.0.1:{p}" for p in free_ports(2)]
    t = time.monotonic()
    with pytest.raises(WorkerFailure) as info:
        run_workers(_dying_job, 4, (eps, cfg), timeout=60, expect_exit={3: 17}, env={"OMP_NUM_THREADS": "1"})
    report = info.value.reports[2]  # trainer 0
    assert "BarrierTimeoutError" in report and "trainer(s) 1 lost without COMPLETE" in report, report
    assert time.monotonic() - t < 30


def _fluid_script(rank: int, world: int, eps: list[str]):
    """A fluid 1.4 style script: DistributeTranspiler directly, default programs, no fleet."""
    from fleetkit import layers
    main, startup = fk.default_main_program(), fk.default_startup_program()
    main.random_seed = startup.random_seed = 3
    x = layers.data("x", shape=[20])
    y = layers.data("y", shape=[1])
    loss = layers.mean(layers.square_error_cost(layers.fc(layers.fc(x, 1024, act="tanh"), 1), y))
    fk.optimizer.Momentum(0.01, 0.9).minimize(loss)
    t = fk.DistributeTranspiler()
    trainer_id = max(rank - 2, 0)
    t.transpile(trainer_id, pservers=",".join(eps), trainers=2)
    exe = fk.Executor(fk.CPUPlace())
    if rank < 2:
        prog = t.get_pserver_program(eps[rank])
        exe.run(t.get_startup_program(eps[rank], prog))
        exe.run(prog)
        return None
    exe.run(startup)  # rewritten by transpile: pulls the parameters
    prog = t.get_trainer_program()
    rng = np.random.default_rng(trainer_id)
    w = np.linspace(-1, 1, 20).astype("float32").reshape(20, 1)
    losses = []
    for _ in range(30 - 10 * trainer_id):  # unequal step counts: COMPLETE must release the sync rounds
        xb = rng.normal(size=(32, 20)).astype("float32")
        (lv,) = exe.run(prog, feed={"x": xb, "y": xb @ w}, fetch_list=[loss])
        losses.append(float(np.asarray(lv).reshape(-1)[0]))
    exe.close()  # fluid 1.4: closing the trainer's executor sends COMPLETE to its pservers
    return losses


def test_fluid_style_transpiler_script():
    """The 20x1024 weight (20480 floats) is split over both pservers; the loss falls; trainers
    that run different step counts and end with ``exe.close()`` let the job finish (pservers exit)."""
    eps = [f"127.0.0.1:{p}" for p in free_ports(2)]
    out = run_workers(_fluid_script, 4, (eps,), timeout=90, env={"OMP_NUM_THREADS": "1"})
    for losses in out[2:]:
        assert losses[-1] < 0.5 * losses[0], losses


# ------------------------------------------------------------------ save and restore
@pytest.mark.parametrize("distributed", [False, True], ids=["sliced-table", "distributed-table"])
def test_save_persistables_then_init_server_from_model_dir(tmp_path, distributed):
    """Job 1 trains and saves (chief gathers dense blocks, each pserver its shard); job 2's
    pservers start from that directory, so its trainers start where job 1 ended."""
    save = str(tmp_path / "model")
    cfg = {"sync": True, "steps": 3, "batch_size": 32, "trainers": 2, "optimizer": "adam", "lr": 0.01,
           "is_sparse": True, "is_distributed": distributed, "data": SMALL, "save_dir": save}
    if distributed:
        cfg["fetch_table_rows"] = 3 * SMALL["vocab"]
    # the pservers may write their shards only into configured directories (docs/security.md)
    first = run_job(2, cfg, env={"FLEETKIT_PS_NOTIFY_DIRS": save})[2]
    assert os.path.isfile(os.path.join(save, "fc_0.w_0"))
    if distributed:
        assert sorted(os.listdir(os.path.join(save, "__lookup_table__"))) == ["pserver_0.fkckpt",
                                                                              "pserver_1.fkckpt"]
    else:  # the saved inference model loads and predicts without any pserver
        exe, sc = fk.Executor(), fk.Scope()
        prog, feeds, fetches = fk.io.load_inference_model(os.path.join(save, "inference"), exe, scope=sc)
        data = CTRData(CTRConfig(**SMALL))
        feed = {k: v for k, v in data.feed(data.examples(16, 5)).items() if k in feeds}
        (prob,) = exe.run(prog, feed=feed, fetch_list=fetches, scope=sc)
        assert prob.shape == (16, 2) and np.allclose(prob.sum(1), 1, atol=1e-5)
    second = run_job(2, {**cfg, "steps": 0, "save_dir": None, "model_dir": save})[2]
    for name, value in first["final"].items():
        np.testing.assert_array_equal(second["start"][name], value, err_msg=name)
    if distributed:
        np.testing.assert_array_equal(second["table"], first["table"])


# ------------------------------------------------------------------ async CTR
ASYNC_CFG = {"sync": False, "steps": 300, "batch_size": 128, "trainers": 2, "optimizer": "adam", "lr": 0.005,
             "is_sparse": True, "is_distributed": True, "test_examples": 20000}


def _single_process_auc(cfg: dict) -> float:
    data = CTRData(CTRConfig(**cfg.get("data", {})))
    model = ctr_model.build(data.cfg, make_optimizer=lambda: fk.optimizer.Adam(cfg["lr"]))
    scope = fk.Scope()
    ctr_train.train_local(model, data, cfg["steps"], cfg["trainers"], cfg["batch_size"], scope)
    return ctr_train.evaluate(model.test_program, model.predict, data, cfg["test_examples"], scope)


@pytest.mark.parametrize("dc_asgd", [False, True], ids=["plain", "dc-asgd"])
def test_async_2x2_ctr_auc_matches_single_process(dc_asgd):
    results = run_job(2, {**ASYNC_CFG, "dc_asgd": dc_asgd}, timeout=150)
    ps_auc = results[2]["auc"]
    local_auc = _single_process_auc(ASYNC_CFG)
    assert local_auc > 0.8
    print(f"async PS AUC {ps_auc:.4f}, single process {local_auc:.4f}")
    assert abs(ps_auc - local_auc) <= 0.01, f"async PS AUC {ps_auc:.4f} vs single process {local_auc:.4f}"


# ------------------------------------------------------------------ kill -9 of a pserver
def _kill_job(rank: int, world: int, eps: list[str], cfg: dict, ckpt: str, flag: str):
    """Ranks: 0 pserver, 1 supervisor of pserver 1 (kill -9, restart), 2-3 trainers."""
    if rank == 0:
        return ctr_train.run_ps_role(_role_maker(0, 2, eps, 2), {**cfg, "checkpoint_dir": ckpt + "/ps0"})
    if rank == 1:
        return _supervise_pserver(eps, cfg, ckpt + "/ps1", flag)
    tid = rank - 2
    marker = f"{flag}.{tid}"

    def done():
        open(marker, "w").close()
        while not all(os.path.exists(f"{flag}.{t}") for t in range(2)):
            time.sleep(0.05)

    def progress(step: int) -> None:  # tells the supervisor when to kill
        if step == cfg["kill_at_step"] and tid == 0:
            open(f"{flag}.progress", "w").close()
    return ctr_train.run_ps_role(_role_maker(rank, 2, eps, 2), cfg, on_trained=done, on_step=progress)


def _die_with_parent() -> None:
    """In the pserver child (Linux): SIGKILL when the supervisor dies, so a supervisor that
    run_workers kills on a failure or timeout leaves no orphaned pserver behind."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


def _supervise_pserver(eps: list[str], cfg: dict, ckpt: str, flag: str) -> dict:
    import json
    code = ("import json,sys,logging; logging.basicConfig(level=logging.INFO);"
            "from fleetkit.demo import ctr_train as m; from fleetkit.fleet import Role, UserDefinedRoleMaker as R;"
            "cfg=json.loads(sys.argv[1]);"
            "m.run_ps_role(R(current_id=1, role=Role.SERVER, worker_num=2, server_endpoints=cfg['eps']), cfg)")
    arg = json.dumps({**cfg, "eps": eps, "checkpoint_dir": ckpt})
    proc = subprocess.Popen([sys.executable, "-c", code, arg], preexec_fn=_die_with_parent)
    deadline = time.monotonic() + 90
    while not os.path.exists(f"{flag}.progress") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(3 * cfg["checkpoint_interval_s"])  # at least one checkpoint with trained values
    assert proc.poll() is None, "pserver 1 died before it was killed"
    mid_training = not any(os.path.exists(f"{flag}.{t}") for t in range(2))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ckpts = sorted(os.listdir(ckpt)) if os.path.isdir(ckpt) else []
    time.sleep(0.5)
    log_path = ckpt + ".restart.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", code, arg], stderr=log,
                                preexec_fn=_die_with_parent)
        try:
            rc = proc.wait(timeout=110)
        finally:
            if proc.poll() is None:
                proc.kill()
    with open(log_path) as f:
        resumed = "resumed from checkpoint" in f.read()
    return {"rc": rc, "checkpoints_at_kill": ckpts, "mid_training": mid_training, "resumed": resumed}


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
def test_kill9_pserver_restarts_from_checkpoint_and_job_completes(tmp_path, sync):
    cfg = {**ASYNC_CFG, "sync": sync, "steps": 150 if sync else 200, "checkpoint_interval_s": 0.3,
           "kill_at_step": 50, "step_sleep_s": 0.02}
    eps = [f"127.0.0.1:{p}" for p in free_ports(2)]
    results = run_workers(_kill_job, 4, (eps, cfg, str(tmp_path), str(tmp_path / "trained")), timeout=150,
                          env={"OMP_NUM_THREADS": "1"})
    sup, t0 = results[1], results[2]
    assert sup["rc"] == 0 and sup["checkpoints_at_kill"] and sup["mid_training"] and sup["resumed"], sup
    print(f"after kill -9 + restart: AUC {t0['auc']:.4f}, checkpoints {sup['checkpoints_at_kill']}")
    assert t0["auc"] > 0.75, t0["auc"]
    assert len(t0["losses"]) == cfg["steps"] and len(results[3]["losses"]) == cfg["steps"]


# ------------------------------------------------------------------ pserver down
def test_pserver_down_at_trainer_start_names_the_endpoint():
    from fleetkit import fleet
    (port,) = free_ports(1)
    ep = f"127.0.0.1:{port}"
    fleet.init(UserDefinedRoleMaker(current_id=0, role=Role.WORKER, worker_num=1, server_endpoints=[ep]))
    t = time.monotonic()
    with pytest.raises(ServerNotReadyError, match=ep.replace(".", r"\.")):
        fleet.init_worker(timeout=1.5)
    assert time.monotonic() - t < 10
