"""One process of the async parameter-server CTR job of ``ps_side_by_side.py``, in fleetkit or Paddle 2.6.

Run by ``ps_side_by_side.py``, 2 pservers + 2 trainers per job, each a fresh process whose
role comes from PaddleCloudRoleMaker's environment variables (TRAINING_ROLE,
PADDLE_PSERVERS_IP_PORT_LIST, PADDLE_TRAINERS_NUM, PADDLE_TRAINER_ID, POD_IP, PADDLE_PORT),
which both frameworks read the same way:

    python _ps_ctr_job.py --framework fleetkit|paddle --train FILE --test FILE [--thread N]

The model and data are ``_ctr_job.py``'s (26 sparse slots sharing a 1e6 x 10 table, 13 dense
features, fc 256-128-64, batch 512); the table lives on the pservers as a hash table whose
rows are created on first touch (fleetkit ``is_distributed=True``; in Paddle 2.6 every
``is_sparse`` embedding of a PS job is such a table), updated there per row;
``--fleetkit-table sliced``: fleetkit's table is a dense 1e6 x 10 block per pserver instead
(``is_sparse`` only, rows prefetched).  Async mode:
fleetkit ``DistributeTranspilerConfig(sync_mode=False)``, Paddle ``strategy.a_sync = True``.
A trainer trains on its own file with ``InMemoryDataset`` + ``train_from_dataset`` and
prints one ``RESULT`` JSON line (training seconds, examples its auc state counted, train
AUC; trainer 0 also the test AUC, from ``infer_from_dataset`` while the pservers still run).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _ctr_job as job  # noqa: E402


def _optimizer(lib, name: str, lr: float):
    opt = lib.optimizer
    return opt.Adam(learning_rate=lr) if name == "adam" else opt.SGD(learning_rate=lr)


def fleetkit_role(a) -> dict | None:
    import fleetkit as fk
    from fleetkit import fleet
    from fleetkit.fleet import role_maker
    fleet.init(role_maker.PaddleCloudRoleMaker())
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = 1
    with fk.program_guard(main, startup):
        feeds, loss, auc, stats = job.fleetkit_net(is_distributed=a.fleetkit_table == "distributed")
        test = main.clone(for_test=True)
        strategy = fleet.DistributeTranspilerConfig(sync_mode=False)
        fleet.distributed_optimizer(_optimizer(fk, a.optimizer, a.lr), strategy).minimize(loss)
    if fleet.is_server():
        fleet.init_server()
        fleet.run_server()  # returns when every trainer called stop_worker
        return None
    exe = fk.Executor(fk.CPUPlace())
    fleet.init_worker()
    exe.run(fleet.startup_program)
    # the test program's lookups must go to the pservers too (as the trainer program's do)
    test = fleet.current()._t().get_trainer_test_program(test)
    out = _train_and_test(fk, exe, fleet.main_program, test, feeds, loss, auc, stats,
                          fk.DatasetFactory().create_dataset, fleet.worker_index(), a)
    fleet.stop_worker()
    return out


def paddle_role(a) -> dict | None:
    import paddle
    from paddle.distributed import fleet
    paddle.enable_static()
    fleet.init(fleet.PaddleCloudRoleMaker())
    main, startup = paddle.static.Program(), paddle.static.Program()
    main.random_seed = startup.random_seed = 1
    with paddle.static.program_guard(main, startup):
        feeds, loss, auc, stats = job.paddle_net()
        test = main.clone(for_test=True)
        strategy = fleet.DistributedStrategy()
        strategy.a_sync = True
        fleet.distributed_optimizer(_optimizer(paddle, a.optimizer, a.lr), strategy).minimize(loss)
        # minimize swaps in this role's programs: the loss's program and the default startup
        main, startup = loss.block.program, paddle.static.default_startup_program()
    if fleet.is_server():
        fleet.init_server()
        fleet.run_server()  # returns when trainer 0's stop_worker stops the servers
        return None
    exe = paddle.static.Executor(paddle.CPUPlace())
    exe.run(startup)
    fleet.init_worker()  # trainer 0 pushes its dense initial values, the others pull them
    from paddle.distributed.fleet.utils.ps_util import DistributedInfer
    # the test clone still holds local lookup_table ops: turn them into pserver lookups
    test = DistributedInfer(main_program=test, startup_program=startup).get_dist_infer_program()
    out = _train_and_test(paddle, exe, main, test, feeds, loss, auc, stats, job.paddle_dataset,
                          fleet.worker_index(), a)
    fleet.stop_worker()
    return out


def _train_and_test(lib, exe, main, test, feeds, loss, auc, stats, create, tid: int, a) -> dict:
    fw = a.framework
    scope = lib.global_scope() if fw == "fleetkit" else lib.static.global_scope()

    def scope_get(name):
        return scope.find_var(name).get_tensor()

    ds = job.make_dataset(fw, create, feeds, [a.train], a.thread)
    ds.load_into_memory()
    t = time.perf_counter()
    exe.train_from_dataset(main, ds, thread=a.thread, fetch_list=[loss], fetch_info=["loss"],
                           print_period=10 ** 9)
    out = {"framework": fw, "trainer": tid, "train_s": time.perf_counter() - t,
           "train_counted": job.stat_count(fw, scope_get, stats),
           "train_auc": job.auc_from_stats(scope_get, stats)}
    if tid == 0:
        for v in stats:  # zero the auc state: the test pass counts from 0
            scope_get(v.name).set(np.zeros_like(np.array(scope_get(v.name))), lib.CPUPlace())
        test_ds = job.make_dataset(fw, create, feeds, [a.test], a.thread)
        test_ds.load_into_memory()
        exe.infer_from_dataset(test, test_ds, thread=a.thread, fetch_list=[auc], fetch_info=["auc"],
                               print_period=10 ** 9)
        out["test_counted"] = job.stat_count(fw, scope_get, stats)
        out["test_auc"] = job.auc_from_stats(scope_get, stats)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--framework", choices=["fleetkit", "paddle"], required=True)
    ap.add_argument("--train", required=True, help="this trainer's training file")
    ap.add_argument("--test", required=True)
    ap.add_argument("--thread", type=int, default=1)
    ap.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--fleetkit-table", choices=["distributed", "sliced"], default="distributed",
                    help="fleetkit: is_distributed hash table, or the dense table sliced over the pservers")
    a = ap.parse_args()
    out = (fleetkit_role if a.framework == "fleetkit" else paddle_role)(a)
    if out is not None:
        print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
