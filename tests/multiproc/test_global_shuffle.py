"""InMemoryDataset.global_shuffle across 3 real trainer processes over the tcp transport."""
from __future__ import annotations

from collections import Counter

import numpy as np

from fleetkit.testing import free_ports, run_workers

WORLD = 3




def _lines(rank):
    """Rank r's file: 40 + 25 r instances, each unique: ids (r, i, ...), a dense pair, a label."""
    out = []
    for i in range(40 + 25 * rank):
        ids = [rank * 1000 + i] + [7] * (i % 3)
        out.append(f"{len(ids)} {' '.join(map(str, ids))} 2 {i * 0.5} {-rank * 1.0} 1 {i % 2}\n")
    return "".join(out)


def _instances(ds):
    """Every instance in memory as a hashable tuple, in memory order."""
    store = ds._store
    out = []
    for i in range(len(store)):
        ids = tuple(store.values[0][store.offsets[0][i]:store.offsets[0][i + 1]].tolist())
        dense = tuple(store.values[1][2 * i:2 * i + 2].tolist())
        out.append((ids, dense, int(store.values[2][i])))
    return out


def _trainer(rank, world, endpoints, data_dir, send_batch):
    import fleetkit as fk
    from fleetkit import layers
    from fleetkit.fleet.base import FleetBase
    from fleetkit.fleet.role_maker import Role, UserDefinedRoleMaker

    fleet = FleetBase()
    fleet.init(UserDefinedRoleMaker(current_id=rank, role=Role.WORKER, worker_endpoints=endpoints))
    use = [layers.data("ids", [1], dtype="int64", lod_level=1), layers.data("x", [2]),
           layers.data("y", [1], dtype="int64")]
    path = f"{data_dir}/part-{rank}"
    with open(path, "w") as f:
        f.write(_lines(rank))
    results = {}
    for run, seed in (("a", 42), ("b", 42), ("c", 7)):
        ds = fk.DatasetFactory().create_dataset("InMemoryDataset")
        ds.set_use_var(use)
        ds.set_filelist([path])
        ds.set_fleet_send_batch_size(send_batch)  # several exchange rounds
        ds.load_into_memory()
        before = _instances(ds)
        total = ds.get_memory_data_size(fleet)
        ds.global_shuffle(fleet, seed=seed)
        results[run] = {"before": before, "after": _instances(ds), "total": total,
                        "shuffled_total": ds.get_shuffle_data_size(fleet),
                        "batches": sum(1 for _ in ds.thread_feeds(2)[0])}
    return results


def test_global_shuffle_three_trainers(tmp_path):
    endpoints = [f"127.0.0.1:{p}" for p in free_ports(WORLD)]
    res = run_workers(_trainer, WORLD, (endpoints, str(tmp_path), 16), timeout=120)
    n_all = sum(40 + 25 * r for r in range(WORLD))
    for run in ("a", "b", "c"):
        before = Counter(x for r in res for x in r[run]["before"])
        after = Counter(x for r in res for x in r[run]["after"])
        assert sum(before.values()) == n_all and after == before  # nothing lost, nothing duplicated
        assert all(len(r[run]["after"]) > 0 for r in res)  # every trainer gets a share
        assert all(r[run]["total"] == n_all and r[run]["shuffled_total"] == n_all for r in res)
        # instances really moved between trainers
        assert any(x[0][0] // 1000 != rank for rank, r in enumerate(res) for x in r[run]["after"])
    for r in res:  # same seed: the same assignment and order; another seed: another one
        assert r["a"]["after"] == r["b"]["after"]
    assert any(r["a"]["after"] != r["c"]["after"] for r in res)
    assert np.isfinite([x[1][0] for r in res for x in r["a"]["after"]]).all()
