"""pserver logic without transport: sparse tables (first-touch rows, deterministic init,
per-row SGD/Adagrad/Adam equal to the dense update ops), the id index, sharding, atomic
checkpoints, and sync-round bookkeeping (averaging, COMPLETE, barrier timeout)."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from fleetkit.core.scope import SelectedRows
from fleetkit.errors import BarrierTimeoutError, CheckpointError, InvalidArgumentError
from fleetkit.pserver import checkpoint, sharding
from fleetkit.pserver.rounds import AppliedSends, SyncRounds, average
from fleetkit.pserver.tables import IdIndex, Initializer, RowOptimizer, SparseTable, initial_rows


# ------------------------------------------------------------------ tables
def test_id_index_matches_a_dict_under_growth_and_collisions():
    rng = np.random.RandomState(0)
    idx, ref = IdIndex(16), {}
    for _ in range(30):
        batch = rng.randint(0, 5000, size=rng.randint(1, 400))
        got = idx.lookup(batch)
        want = np.array([ref.get(int(i), -1) for i in batch])
        assert np.array_equal(got, want)
        new = np.unique(batch[got < 0])
        for i, s in zip(new.tolist(), idx.insert(new).tolist()):
            ref[i] = s
    ids, slots = idx.items()
    assert dict(zip(ids.tolist(), slots.tolist())) == ref and idx.size == len(ref)


def test_billion_id_table_holds_only_touched_rows():
    t = SparseTable("emb", 16)
    empty = t.memory_bytes()
    assert len(t) == 0 and empty < 64 << 10
    ids = np.array([0, 10**9 - 1, 123456789, 10**9 - 1, 5])
    rows = t.lookup(ids)
    assert rows.shape == (5, 16) and len(t) == 4
    assert np.array_equal(rows[1], rows[3])
    assert t.memory_bytes() < 1 << 20   # rows for 4 ids, not 10^9 * 64 bytes


def test_initial_rows_are_a_pure_function_of_seed_and_id():
    init = Initializer("uniform", low=-0.5, high=0.5, seed=7)
    a, b = SparseTable("a", 8, init), SparseTable("b", 8, init)
    a.lookup([1, 2, 3])
    b.lookup([3, 99, 2, 1])  # different order, different neighbours
    assert np.array_equal(a.lookup([1, 2, 3]), b.lookup([1, 2, 3]))
    assert np.array_equal(a.lookup([2]), initial_rows([2], 8, init))
    rows = initial_rows(np.arange(20000), 8, init)
    assert rows.min() >= -0.5 and rows.max() < 0.5 and abs(rows.mean()) < 0.01
    assert not np.array_equal(rows, initial_rows(np.arange(20000), 8, Initializer("uniform", -0.5, 0.5, seed=8)))
    normal = initial_rows(np.arange(20000), 8, Initializer("normal", mean=1.0, std=2.0))
    assert abs(normal.mean() - 1.0) < 0.03 and abs(normal.std() - 2.0) < 0.03
    assert np.all(initial_rows([4], 3, Initializer("constant", value=0.25)) == 0.25)


def _dense_reference(kind, table, ids_steps, grads_steps, lr, **opt):
    """The dense update rules of fleetkit.core.ops.optimizer, applied to touched rows only."""
    from fleetkit.core.ops import optimizer as ops

    touched = np.unique(np.concatenate(ids_steps))
    p = table.initial_rows(touched).copy()
    acc = {"Moment": np.zeros_like(p), "Moment1": np.zeros_like(p), "Moment2": np.zeros_like(p)}
    pows = {"Beta1Pow": np.float32(opt.get("beta1", 0.9)), "Beta2Pow": np.float32(opt.get("beta2", 0.999))}
    attrs = {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8 if kind == "adam" else 1e-6}
    for ids, g in zip(ids_steps, grads_steps):
        sr = SelectedRows(ids, g, 10**9).merged()
        pos = np.searchsorted(touched, sr.rows)
        prow = p[pos]
        accr = {k: v[pos] for k, v in acc.items()}
        fn = {"sgd": ops._sgd, "adagrad": ops._adagrad, "adam": ops._adam}[kind]
        fn(np, attrs, np.float32(lr), prow, sr.values, accr, pows)
        p[pos] = prow
        for k in acc:
            acc[k][pos] = accr[k]
        pows = {"Beta1Pow": pows["Beta1Pow"] * np.float32(0.9), "Beta2Pow": pows["Beta2Pow"] * np.float32(0.999)}
    return touched, p


@pytest.mark.parametrize("kind", ["sgd", "adagrad", "adam"])
def test_row_optimizers_equal_the_dense_update_ops(kind):
    rng = np.random.RandomState(3)
    table = SparseTable("emb", 4, Initializer(seed=1), RowOptimizer(kind, learning_rate=0.1))
    ids_steps = [rng.randint(0, 10**9, size=6) for _ in range(4)]
    ids_steps[1][:3] = ids_steps[0][:3]          # repeated rows across and within steps
    ids_steps[2][1] = ids_steps[2][0]
    grads_steps = [rng.randn(6, 4).astype(np.float32) for _ in range(4)]
    for ids, g in zip(ids_steps, grads_steps):
        table.apply_gradient(SelectedRows(ids, g, 10**9))
    touched, want = _dense_reference(kind, table, ids_steps, grads_steps, 0.1)
    np.testing.assert_allclose(table.lookup(touched), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("ids", [[3, 4, 3], [9, 9, 9], [1, 2, 3, 4], [4, 8, 4, 8, 6], [5]])
def test_repeated_rows_of_one_gradient_are_summed_first(ids):
    """One step on rows sent with repeats equals one step on each distinct row with its
    rows' sum (the distinct case skips the sum: both paths must agree)."""
    rng = np.random.RandomState(len(ids))
    g = rng.randn(len(ids), 3).astype(np.float32)
    uniq = sorted(set(ids))
    summed = np.stack([g[[i for i, x in enumerate(ids) if x == u]].sum(axis=0) for u in uniq])
    a = SparseTable("emb", 3, optimizer=RowOptimizer("adam", 0.1))
    b = SparseTable("emb", 3, optimizer=RowOptimizer("adam", 0.1))
    a.lookup([100, 200])   # other rows first: the ids' slots are not 0, 1, 2...
    b.lookup([100, 200])
    a.apply_gradient(ids, g)
    b.apply_gradient(uniq[::-1], summed[::-1])
    np.testing.assert_allclose(a.lookup(uniq), b.lookup(uniq), rtol=1e-6)
    assert not np.array_equal(a.lookup(uniq), a.initial_rows(np.array(uniq)))


def test_table_state_round_trips_through_a_checkpoint(tmp_path):
    t = SparseTable("emb", 3, optimizer=RowOptimizer("adam", 0.05))
    t.apply_gradient([5, 7, 5], np.ones((3, 3)))
    path = checkpoint.save(str(tmp_path / "t.fkckpt"), t.state())
    u = SparseTable("emb", 3, optimizer=RowOptimizer("adam", 0.05))
    u.load_state(checkpoint.load(path))
    assert len(u) == 2 and np.array_equal(u.lookup([5, 7]), t.lookup([5, 7]))
    t.apply_gradient([7], np.ones((1, 3)))
    u.apply_gradient([7], np.ones((1, 3)))
    assert np.array_equal(u.lookup([7]), t.lookup([7]))


def test_table_rejects_bad_ids():
    t = SparseTable("emb", 2)
    with pytest.raises(InvalidArgumentError, match="negative id"):
        t.lookup([-1])
    with pytest.raises(InvalidArgumentError, match="integers"):
        t.lookup(np.array([0.5]))


# ---------------------------------------------------------------- sharding
def test_sharding_helpers():
    import zlib
    assert sharding.stable_hash("fc_0.w_0@GRAD") == zlib.crc32(b"fc_0.w_0@GRAD")
    assert sharding.hash_name("w", 3) == sharding.stable_hash("w") % 3
    ids = np.array([7, 2, 9, 4, 2, 11])
    parts = sharding.split_ids(ids, 2)
    assert [p[1].tolist() for p in parts] == [[2, 4, 2], [7, 9, 11]]
    back = sharding.merge_rows([(pos, sub[:, None] * 10) for pos, sub in parts], len(ids))
    assert back[:, 0].tolist() == (ids * 10).tolist()
    assert sharding.slice_sizes([1000, 100], 3, 8192) == [33400, 33400, 33200]
    assert sharding.block_row_sections([1000, 100], 3, 8192) == [334, 334, 332]
    assert sharding.slice_sizes([10, 10], 4, 8192) == [100]
    blocks = sharding.split_rows(np.arange(20).reshape(10, 2), [3, 7])
    assert [b.shape for b in blocks] == [(3, 2), (7, 2)]


def test_stable_hash_is_the_same_in_another_process():
    import subprocess
    import sys
    code = "from fleetkit.pserver.sharding import stable_hash; print(stable_hash('emb@GRAD'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONHASHSEED": "123"})
    assert int(out.stdout) == sharding.stable_hash("emb@GRAD")


# -------------------------------------------------------------- checkpoints
def test_checkpoint_is_atomic_and_refuses_incomplete_files(tmp_path):
    d = str(tmp_path)
    values = {"w": np.arange(6, dtype=np.float32).reshape(2, 3),
              "s": SelectedRows([1, 4], np.ones((2, 2)), 8)}
    first = checkpoint.save_numbered(d, values)
    time.sleep(0.002)
    values["w"] = values["w"] + 1
    second = checkpoint.save_numbered(d, values)
    got = checkpoint.load_latest(d)
    assert np.array_equal(got["w"], values["w"]) and got["w"].flags.writeable
    assert got["s"].rows.tolist() == [1, 4]
    assert not [n for n in os.listdir(d) if n.startswith(".tmp-")]
    # a torn newest file (crash mid-write without the rename) falls back to the previous one
    with open(second, "r+b") as f:
        f.truncate(os.path.getsize(second) - 3)
    with pytest.raises(CheckpointError, match="incomplete"):
        checkpoint.load(second)
    assert np.array_equal(checkpoint.load_latest(d)["w"], np.arange(6).reshape(2, 3))
    for _ in range(3):
        checkpoint.save_numbered(d, values, keep=2)
    assert len([n for n in os.listdir(d) if n.endswith(".fkckpt")]) == 2
    assert first not in os.listdir(d)
    assert checkpoint.load_latest(str(tmp_path / "none")) is None


# ------------------------------------------------------------------ rounds
def test_average_dense_and_selected_rows():
    assert np.array_equal(average([np.ones(3, np.float32), 3 * np.ones(3, np.float32)]), 2 * np.ones(3))
    sr = average([SelectedRows([1], np.ones((1, 2), np.float32), 5), SelectedRows([1, 3], np.ones((2, 2), np.float32), 5)])
    assert sr.rows.tolist() == [1, 1, 3] and np.allclose(sr.values, 0.5)


def test_sync_round_applies_once_after_all_barriers_and_complete_lowers_the_count():
    applied = []
    r = SyncRounds(3, 10.0, applied.append)
    r.add_grad(0, "g", np.ones(2))
    r.add_grad(1, "g", 3 * np.ones(2))
    r.add_grad(1, "g", 5 * np.ones(2))   # a retried duplicate replaces, never double-counts
    r.batch_barrier(0)
    r.batch_barrier(1)
    assert applied == []
    r.complete(2)                        # trainer 2 finished: the round completes without it
    assert len(applied) == 1 and np.allclose(applied[0]["g"], 3.0)
    r.wait_applied(0)
    assert not r.add_grad(0, "g", np.ones(2), round_=0)  # stale: round 0 closed by its barrier
    r.batch_barrier(0, 1)
    r.batch_barrier(1, 1)
    assert len(applied) == 2 and applied[1] == {}
    # trainer 1 restarts: its round count begins at 0 again, and its gradients still count
    r.batch_barrier(0, 2)
    assert r.add_grad(1, "g", np.ones(2), round_=0)
    r.batch_barrier(1, 0)
    assert len(applied) == 3 and np.allclose(applied[2]["g"], 1.0)


def test_barrier_timeout_names_the_missing_trainer_and_state_recovers():
    applied = []
    r = SyncRounds(2, 0.3, applied.append, endpoint="127.0.0.1:1")
    r.add_grad(0, "g", np.ones(1))
    r.batch_barrier(0)
    t0 = time.monotonic()
    with pytest.raises(BarrierTimeoutError, match=r"trainer\(s\) 1 did not send BATCH_BARRIER") as e:
        r.wait_applied(0)
    assert e.value.missing_trainers == (1,) and time.monotonic() - t0 < 2
    assert applied == []
    # the server goes on: a full next round applies normally
    for t in (0, 1):
        r.add_grad(t, "g", np.ones(1) * (t + 1), 1)
    done = threading.Thread(target=r.wait_applied, args=(0,))
    r.batch_barrier(0, 1)
    done.start()
    r.batch_barrier(1, 1)
    done.join(5)
    assert not done.is_alive() and np.allclose(applied[0]["g"], 1.5)


def test_applied_sends_recognise_a_repeated_number_per_trainer():
    sends = AppliedSends(keep=3)
    assert sends.claim(0, 10) and not sends.claim(0, 10)       # a retry of send 10
    assert sends.claim(1, 10)                                   # another trainer's numbers are its own
    sends.release(0, 10)                                        # its apply failed: a retry must apply
    assert sends.claim(0, 10)
    for seq in (11, 12, 13):                                    # only the last 3 are kept
        assert sends.claim(0, seq)
    assert sends.claim(0, 10) and not sends.claim(0, 13)


def test_a_restarted_pserver_keeps_trainers_in_step_when_one_lost_its_barrier():
    """The pserver restarted after trainer 0's barrier of round 5 and before trainer 1's:
    trainer 0's gets were answered at once and it sends round 6, trainer 1 still sends 5.
    Pairing them would leave the trainers a round apart until the last round waited forever."""
    applied = []
    r = SyncRounds(2, 10.0, applied.append)          # the new process: no state
    r.add_grad(0, "g", np.ones(1), round_=6)
    r.batch_barrier(0, 6)
    assert applied == []
    r.add_grad(1, "g", 3 * np.ones(1), round_=5)
    r.batch_barrier(1, 5)                            # round 5: trainer 0 is past it
    assert len(applied) == 1 and np.allclose(applied[0]["g"], 3.0)
    r.wait_applied(1)
    waiter = threading.Thread(target=r.wait_applied, args=(0,))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()                         # round 6 needs trainer 1's barrier
    r.add_grad(1, "g", 5 * np.ones(1), round_=6)
    r.batch_barrier(1, 6)
    waiter.join(5)
    assert not waiter.is_alive() and len(applied) == 2 and np.allclose(applied[1]["g"], 3.0)
    for t in (0, 1):                                 # from now on one round each, together
        r.batch_barrier(t, 7)
    assert len(applied) == 3
    r.batch_barrier(0, 7)                            # a repeated barrier is not a new round
    r.batch_barrier(1, 8)
    assert len(applied) == 3
