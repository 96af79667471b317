"""Remote prefetch of a sliced is_sparse table, before / after, in one run.

A 1M x 16 float32 embedding (``is_sparse=True, is_distributed=False``, 64 MB) is
sliced over 2 pservers; 2 trainers train async (SGD) for a few batches of a small
model (3 id slots of 8 ids, sum-pooled, fc 16 -> 2, softmax).  The same job runs
twice: ``remote_prefetch=False`` (each step's ``recv`` pulls both table blocks:
the whole table) and ``remote_prefetch=True`` (the default: the lookup asks each
pserver for the rows it needs).

    python benchmarks/ps_remote_prefetch.py [--rows 1000000] [--dim 16] [--steps 14] [--batch 64]

Prints per setting: the slowest trainer's training-loop seconds (start-up and the
initial pull excluded) and the bytes one trainer received during those steps
(parameter gets and prefetch replies).  On a 2-core machine the 4 processes share
the cores: absolute times are noisy, the ratio is what matters.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

import fleetkit as fk
from fleetkit import fleet, layers
from fleetkit.fleet import Role, UserDefinedRoleMaker
from fleetkit.testing import free_ports, run_workers

SLOTS, IDS_PER_SLOT = 3, 8


def _job(rank: int, world: int, eps: list[str], cfg: dict) -> dict:
    n_ps, trainers = len(eps), cfg["trainers"]
    role = Role.SERVER if rank < n_ps else Role.WORKER
    fleet.init(UserDefinedRoleMaker(current_id=rank if rank < n_ps else rank - n_ps, role=role,
                                    worker_num=trainers, server_endpoints=eps))
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = 1
    with fk.program_guard(main, startup), fk.unique_name.guard():
        slots = [layers.data(f"s{i}", shape=[1], dtype="int64", lod_level=1) for i in range(SLOTS)]
        label = layers.data("label", shape=[1], dtype="int64")
        pooled = [layers.sequence_pool(layers.embedding(s, size=[cfg["rows"], cfg["dim"]], is_sparse=True,
                                                        param_attr=fk.ParamAttr(name="big_emb")), "sum")
                  for s in slots]
        predict = layers.fc(layers.concat(pooled, axis=1), 2, act="softmax")
        loss = layers.mean(layers.cross_entropy(predict, label))
        strategy = fleet.DistributeTranspilerConfig(sync_mode=False, remote_prefetch=cfg["remote_prefetch"])
        fleet.distributed_optimizer(fk.optimizer.SGD(0.1), strategy).minimize(loss, startup)
    if fleet.is_server():
        fleet.init_server()
        fleet.run_server()
        return {}
    from fleetkit.pserver.client import get_client
    exe = fk.Executor()
    fleet.init_worker()
    exe.run(fleet.startup_program)
    tid = fleet.worker_index()
    rng = np.random.default_rng(tid)
    client = get_client(tid)
    before = sum(client.fetched_bytes.values())
    t0 = time.perf_counter()
    for _ in range(cfg["steps"]):
        b = cfg["batch"]
        feed = {f"s{i}": fk.create_lod_tensor(rng.integers(0, cfg["rows"], (b * IDS_PER_SLOT, 1)),
                                              [[IDS_PER_SLOT] * b]) for i in range(SLOTS)}
        feed["label"] = rng.integers(0, 2, (b, 1))
        exe.run(fleet.main_program, feed=feed, fetch_list=[loss])
    seconds = time.perf_counter() - t0
    received = sum(client.fetched_bytes.values()) - before
    fleet.stop_worker()
    return {"seconds": seconds, "received": received,
            "prefetched_table": fleet.current()._t().prefetch_tables}


def run(cfg: dict) -> dict:
    eps = [f"127.0.0.1:{p}" for p in free_ports(2)]
    out = run_workers(_job, 2 + cfg["trainers"], (eps, cfg), timeout=600, env={"OMP_NUM_THREADS": "1"})
    trainers = out[2:]
    return {"seconds": max(t["seconds"] for t in trainers), "received": trainers[0]["received"],
            "prefetched": trainers[0]["prefetched_table"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    base = {"rows": args.rows, "dim": args.dim, "steps": args.steps, "batch": args.batch, "trainers": 2}
    print(f"{args.rows} x {args.dim} is_sparse table sliced over 2 pservers, async, 2 trainers, "
          f"{args.steps} batches of {args.batch} x {SLOTS} slots x {IDS_PER_SLOT} ids")
    for flag in (False, True):
        r = run({**base, "remote_prefetch": flag})
        label = "remote prefetch (default)" if flag else "whole-table recv"
        print(f"  {label:26s} {r['seconds']:7.2f} s   {r['received'] / 2**20:9.1f} MiB received by trainer 0 "
              f"(prefetched tables: {r['prefetched'] or 'none'})")


if __name__ == "__main__":
    main()
