"""Training pieces of the CTR example: single process, or one role of a parameter-server job.

``train_local``, ``evaluate`` and ``run_ps_role`` are what ``examples/ctr/train.py``,
``tests/multiproc/test_ps_training.py`` and ``benchmarks/ps_ctr.py`` run in each process.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

import numpy as np

import fleetkit as fk
from fleetkit import fleet

from . import ctr_model
from .ctr_data import CTRConfig, CTRData, auc

__all__ = ["TEST_SEED", "evaluate", "global_batch", "pull_table", "run_ps_role", "train_local", "trainer_batch"]

TEST_SEED = 999_999


def trainer_batch(data: CTRData, step: int, trainer: int, batch_size: int, seed: int = 0) -> dict:
    """Examples of trainer ``trainer`` at ``step`` (the global batch is all trainers' batches)."""
    return data.examples(batch_size, seed * 7_919_777 + step * 1_009 + trainer)


def global_batch(data: CTRData, step: int, trainers: int, batch_size: int, seed: int = 0) -> dict:
    return CTRData.concat([trainer_batch(data, step, t, batch_size, seed) for t in range(trainers)])


def train_local(model: ctr_model.CTRModel, data: CTRData, steps: int, trainers: int, batch_size: int,
                scope: fk.Scope, seed: int = 0, init: dict | None = None) -> list[float]:
    """Single-process training on the global batches (``init``: starting param values)."""
    exe = fk.Executor()
    exe.run(model.startup, scope=scope)
    for name, value in (init or {}).items():
        scope.set(name, np.array(value, copy=True))
    losses = []
    for step in range(steps):
        feed = data.feed(global_batch(data, step, trainers, batch_size, seed))
        (loss,) = exe.run(model.main, feed=feed, fetch_list=[model.loss], scope=scope)
        losses.append(float(np.asarray(loss).reshape(-1)[0]))
    return losses


def evaluate(program: fk.Program, predict: Any, data: CTRData, n: int, scope: fk.Scope) -> float:
    """Test AUC of ``program`` on ``n`` fresh examples."""
    ex = data.examples(n, TEST_SEED)
    (prob,) = fk.Executor().run(program, feed=data.feed(ex), fetch_list=[predict], scope=scope)
    return auc(ex["label"], prob[:, 1])


def run_ps_role(role_maker: Any, cfg: dict, on_trained: Callable[[], None] | None = None,
                on_step: Callable[[int], None] | None = None) -> dict:
    """Build the model, transpile for this role and run it.

    ``cfg``: sync (bool), steps, batch_size, trainers, seed, is_distributed, optimizer
    ("sgd" | "adam"), lr, test_examples (0: no eval), checkpoint_dir, checkpoint_interval_s,
    model_dir, server_wait_s, step_sleep_s.  A trainer returns its losses, timing, the
    parameters after the startup pull and at the end, and the test AUC (trainer 0).
    ``on_trained`` runs on a trainer after its last step and before stop_worker;
    ``on_step(step)`` after each step.
    """
    fleet.init(role_maker)
    data = CTRData(CTRConfig(**cfg.get("data", {})))
    strategy = fleet.DistributeTranspilerConfig(sync_mode=cfg["sync"], enable_dc_asgd=cfg.get("dc_asgd", False))
    make_opt = {"sgd": lambda: fk.optimizer.SGD(cfg.get("lr", 0.1)),
                "adam": lambda: fk.optimizer.Adam(cfg.get("lr", 0.005), epsilon=cfg.get("adam_epsilon", 1e-8)),
                "adagrad": lambda: fk.optimizer.Adagrad(cfg.get("lr", 0.05)),
                # an LR schedule: runs on the pservers, once per round / trainer step
                "sgd_decay": lambda: fk.optimizer.SGD(fk.layers.exponential_decay(cfg.get("lr", 0.1), 2, 0.5)),
                }[cfg.get("optimizer", "adam")]
    model = ctr_model.build(data.cfg, hidden=tuple(cfg.get("hidden", (64, 32))), is_sparse=cfg.get("is_sparse", True),
                            is_distributed=cfg.get("is_distributed", False), make_optimizer=make_opt,
                            wrap_optimizer=lambda o: fleet.distributed_optimizer(o, strategy))
    if fleet.is_server():
        fleet.init_server(cfg.get("model_dir"), checkpoint_dir=cfg.get("checkpoint_dir"),
                          checkpoint_interval_s=cfg.get("checkpoint_interval_s", 0.0),
                          barrier_timeout_s=cfg.get("barrier_timeout_s"))
        fleet.run_server()
        return {"role": "server"}
    exe = fk.Executor(fk.CUDAPlace(0) if cfg.get("use_cuda") else fk.CPUPlace())  # pservers: CPU
    fleet.init_worker(timeout=cfg.get("server_wait_s"))
    exe.run(fleet.startup_program)
    scope = fk.global_scope()
    params = [p.name for p in model.main.all_parameters() if p.name not in fleet.current()._t().tables]
    # a sliced is_sparse table is prefetched row by row, never pulled into the trainer's
    # scope: read it from the pservers (no barrier: no round can finish before we train)
    remote = fleet.current()._t().prefetch_tables
    start = _param_values(params, remote, scope)
    tid = fleet.worker_index()
    from fleetkit.pserver.api import get_client
    client = get_client(tid)
    fetched_before = dict(client.fetched)
    losses, t0 = [], time.perf_counter()
    for step in range(cfg["steps"]):
        feed = data.feed(trainer_batch(data, step, tid, cfg["batch_size"], cfg.get("seed", 0)))
        (loss,) = exe.run(fleet.main_program, feed=feed, fetch_list=[model.loss])
        losses.append(float(np.asarray(loss).reshape(-1)[0]))
        if cfg.get("step_sleep_s"):
            time.sleep(cfg["step_sleep_s"])
        if on_step is not None:
            on_step(step)
    elapsed = time.perf_counter() - t0
    # what the training steps pulled (var/block name -> calls): shows which tables are
    # prefetched instead of received whole
    fetched = {k: v - fetched_before.get(k, 0) for k, v in client.fetched.items()
               if v - fetched_before.get(k, 0)}
    if on_trained is not None:
        on_trained()
    out = {"role": "trainer", "id": tid, "losses": losses, "seconds": elapsed, "start": start,
           "fetched": fetched, "remote_tables": list(remote)}
    if tid == 0 and cfg.get("test_examples"):
        test = fleet.current()._t().get_trainer_test_program(model.test_program)
        out["auc"] = evaluate(test, model.predict, data, cfg["test_examples"], scope)
    out["final"] = _param_values(params, remote, scope)
    if tid == 0 and cfg.get("fetch_table_rows"):
        out["table"] = pull_table(cfg["fetch_table_rows"])
    if tid == 0 and cfg.get("report_sparse_memory"):
        from fleetkit.pserver.api import get_client
        out["sparse_memory"] = [get_client(tid).sparse_memory(ep) for ep in fleet.server_endpoints()]
    if cfg.get("save_dir"):  # the chief writes; the other trainers' calls do nothing
        fleet.save_persistables(exe, cfg["save_dir"])
        if not cfg.get("is_distributed"):
            fleet.save_inference_model(exe, os.path.join(cfg["save_dir"], "inference"),
                                       [v.name for v in model.feeds[:-1]], [model.predict])
    fleet.stop_worker()
    return out


def _param_values(params: list[str], remote: list[str], scope: fk.Scope) -> dict[str, np.ndarray]:
    """Trainer-side parameter values; remotely prefetched tables are read from the pservers."""
    out = {n: scope.numpy(n).copy() for n in params if n not in remote}
    wanted = [n for n in params if n in remote]
    if wanted:
        out.update(fleet.current()._pull_params(wanted))
    return out


def pull_table(rows: int, name: str | None = None) -> np.ndarray:
    """Rows 0..rows-1 of a distributed table (the only one when ``name`` is None), prefetched
    from the pservers."""
    from fleetkit.pserver.ops import distributed_lookup_table  # noqa: F401  (registered op)
    prog = fk.Program()
    with fk.program_guard(prog, fk.Program()):
        ids = fk.layers.data("all_ids", shape=[1], dtype="int64")
        t = fleet.current()._t()
        if name is None:
            (name,) = t.tables
        out = prog.global_block().create_var(name="table_rows", dtype="float32")
        w = prog.global_block().create_var(name=name, shape=t.tables[name].param.shape, dtype="float32")
        prog.global_block().append_op("distributed_lookup_table", {"Ids": [ids], "W": [w]}, {"Out": [out]},
                                      {"epmap": t.pserver_endpoints, "table_name": name,
                                       "table_height": int(w.shape[0]), "table_dim": int(w.shape[1]),
                                       "trainer_id": t.trainer_id})
    (vals,) = fk.Executor().run(prog, feed={"all_ids": np.arange(rows, dtype=np.int64).reshape(-1, 1)},
                                fetch_list=[out], scope=fk.Scope())
    return vals
