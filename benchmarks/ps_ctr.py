"""End-to-end CTR training throughput: async parameter-server training (2 pservers x
2 trainers, real processes on 127.0.0.1) next to single-process training of the same
model (examples/ctr: 3 sparse slots sharing one embedding table, MLP 64-32, Adam),
measured in the same run.

    python benchmarks/ps_ctr.py [--steps 300] [--batch 128] [--distributed]

examples/s of the PS job = all trainers' examples / the slowest trainer's training
loop time (process start-up, model build and the initial pull excluded; the
single-process figure likewise excludes start-up).  Also prints each run's test AUC
so a fast but broken configuration shows.  On a 2-core machine the 4 PS processes
share the cores with each other: the ratio says what PS costs, not what it gains.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import fleetkit as fk  # noqa: E402
from fleetkit.fleet import Role, UserDefinedRoleMaker  # noqa: E402
from fleetkit.testing import free_ports, run_workers  # noqa: E402

from fleetkit.demo import ctr_model, ctr_train  # noqa: E402
from fleetkit.demo.ctr_data import CTRData  # noqa: E402


def _ctr_train():
    return ctr_train


def _role(rank: int, world: int, eps: list[str], cfg: dict) -> dict:
    n_ps = len(eps)
    if rank < n_ps:
        rm = UserDefinedRoleMaker(current_id=rank, role=Role.SERVER, worker_num=cfg["trainers"], server_endpoints=eps)
    else:
        rm = UserDefinedRoleMaker(current_id=rank - n_ps, role=Role.WORKER, worker_num=cfg["trainers"],
                                  server_endpoints=eps)
    return _ctr_train().run_ps_role(rm, cfg)


def single_process(steps: int, batch: int) -> tuple[float, float]:
    ct = _ctr_train()
    data = CTRData()
    model = ctr_model.build(data.cfg)
    scope = fk.Scope()
    ct.train_local(model, data, 5, 1, batch, scope, seed=1)  # warm-up (allocations, caches)
    scope = fk.Scope()
    t0 = time.perf_counter()
    ct.train_local(model, data, steps, 1, batch, scope)
    dt = time.perf_counter() - t0
    return steps * batch / dt, ct.evaluate(model.test_program, model.predict, data, 20000, scope)


def ps_async(steps: int, batch: int, distributed: bool, n_ps: int = 2, trainers: int = 2) -> tuple[float, float]:
    eps = [f"127.0.0.1:{p}" for p in free_ports(n_ps)]
    cfg = {"sync": False, "steps": steps, "batch_size": batch, "trainers": trainers, "optimizer": "adam",
           "lr": 0.005, "is_sparse": True, "is_distributed": distributed, "test_examples": 20000}
    out = run_workers(_role, n_ps + trainers, (eps, cfg), timeout=600,
                      env={"MALLOC_MMAP_THRESHOLD_": "268435456", "MALLOC_TRIM_THRESHOLD_": "1073741824"})
    tr = [r for r in out if r and r.get("role") == "trainer"]
    slowest = max(r["seconds"] for r in tr)
    return sum(len(r["losses"]) for r in tr) * batch / slowest, tr[0]["auc"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="steps per trainer (single process: 2x)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--distributed", action="store_true", help="is_distributed table (prefetch from pservers)")
    args = ap.parse_args()
    local_eps, local_auc = single_process(2 * args.steps, args.batch)
    ps_eps, ps_auc = ps_async(args.steps, args.batch, args.distributed)
    table = "is_distributed table" if args.distributed else "is_sparse table, sliced over the pservers"
    print(f"CTR model, batch {args.batch}, Adam, {table}; {os.cpu_count()} CPU cores")
    print(f"single process          : {local_eps:9.0f} examples/s  test AUC {local_auc:.4f}  "
          f"({2 * args.steps} steps)")
    print(f"async PS 2 pservers x 2 : {ps_eps:9.0f} examples/s  test AUC {ps_auc:.4f}  "
          f"({args.steps} steps per trainer)")
    print(f"ratio PS / single       : {ps_eps / local_eps:9.2f}")


if __name__ == "__main__":
    main()
