"""Global shuffle as an all-to-all: bytes each trainer receives, against total / N.

For N = 2, 3, 4 trainers (real processes on 127.0.0.1, the tcp rendezvous and the
shuffle mesh of ``fleetkit.dataset``), each trainer holds ``--per-trainer`` CTR-like
instances (label, 13 dense floats, 26 sparse slots of 1-3 ids) and runs
``global_shuffle``; every trainer reports the bytes its sockets received (frame headers
included, counted by the mesh) and the instances it ends with.  Prints, per N, the
largest bytes received / (total / N) over the trainers (the old all-gather design
received (N - 1) / N of the total, i.e. N - 1 times total / N), the seconds, and
checks that no instance was lost or duplicated.

    python benchmarks/global_shuffle.py [--per-trainer 200000] [--send-batch 20000]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from fleetkit.testing import free_ports, run_workers  # noqa: E402


def _store(rank: int, n: int):
    from fleetkit.dataset.instances import InstanceStore
    from fleetkit.dataset.multislot import Slot
    rng = np.random.default_rng(rank)
    slots = [Slot("label", "uint64"), Slot("dense", "float", True, True, (-1, 13))]
    slots += [Slot(f"s{i}", "uint64") for i in range(26)]
    values = [rank * 10 ** 9 + np.arange(n, dtype=np.int64),  # unique label ids: conservation check
              rng.random(13 * n).astype(np.float32)]
    offsets = [np.arange(n + 1, dtype=np.int64), np.arange(n + 1, dtype=np.int64) * 13]
    for _ in range(26):
        lens = rng.integers(1, 4, n)
        off = np.zeros(n + 1, np.int64)
        np.cumsum(lens, out=off[1:])
        values.append(rng.integers(0, 10 ** 6, int(off[-1])))
        offsets.append(off)
    return InstanceStore(slots, values, offsets)


def _trainer(rank: int, world: int, endpoints: list[str], n: int, send_batch: int) -> dict:
    from fleetkit.dataset.shuffle import ShuffleStats, global_shuffle
    from fleetkit.fleet.base import FleetBase
    from fleetkit.fleet.role_maker import Role, UserDefinedRoleMaker

    fleet = FleetBase()
    fleet.init(UserDefinedRoleMaker(current_id=rank, role=Role.WORKER, worker_num=world,
                                    worker_endpoints=endpoints))
    store = _store(rank, n)
    backend = fleet.data_exchange_backend(120.0)
    try:
        stats = ShuffleStats()
        backend.barrier()
        t = time.perf_counter()
        mine = global_shuffle(store, backend, seed=1, send_batch_size=send_batch, stats=stats)
        backend.barrier()
        seconds = time.perf_counter() - t
    finally:
        backend.close()
    payload = sum(v.nbytes for v in store.values) + sum(8 * len(store) for _ in store.values)  # lengths + values
    return {"received": stats.bytes_received, "sent": stats.bytes_sent, "payload": payload,
            "ids": mine.values[0].copy(), "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-trainer", type=int, default=200_000)
    ap.add_argument("--send-batch", type=int, default=20_000)
    ap.add_argument("--trainers", type=int, nargs="+", default=[2, 3, 4])
    a = ap.parse_args()
    print(f"global_shuffle, {a.per_trainer} instances per trainer, cores: {os.cpu_count()}, "
          f"load average: {os.getloadavg()[0]:.2f}")
    print(f"{'N':>3}{'total MB':>10}{'total/N MB':>12}{'max recv MB':>13}{'recv/(total/N)':>16}"
          f"{'old design':>12}{'seconds':>9}  conserved")
    for n in a.trainers:
        res = run_workers(_trainer, n, ([f"127.0.0.1:{p}" for p in free_ports(n)], a.per_trainer,
                                        a.send_batch), timeout=600)
        total = sum(r["payload"] for r in res)
        worst = max(r["received"] for r in res)
        ids = np.concatenate([r["ids"] for r in res])
        conserved = len(ids) == n * a.per_trainer and len(np.unique(ids)) == len(ids)
        print(f"{n:>3}{total / 1e6:>10.1f}{total / n / 1e6:>12.1f}{worst / 1e6:>13.1f}{worst / (total / n):>16.3f}"
              f"{(n - 1):>12.2f}{max(r['seconds'] for r in res):>9.2f}  {conserved}")


if __name__ == "__main__":
    main()
