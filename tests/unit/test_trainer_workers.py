"""train_from_dataset workers: metric state counts every example once whatever ``thread`` is,
worker processes share the parameters, and thread=1 equals a plain feed loop."""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import sys

import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.core import trainer
from fleetkit.core.framework import ROLE_OPTIMIZE
from fleetkit.core.ops import shared_scalars
from fleetkit.core.scope import LoDTensor
from fleetkit.errors import OpError
from fleetkit.demo.ctr_data import CTRConfig, UniformCTRData
from fleetkit.demo.ctr_model import build_per_slot

SPEC = CTRConfig(num_slots=4, dense_dim=3, vocab=50, max_len=2, seed=5)
DATA = UniformCTRData(SPEC)
FILES, LINES, BATCH, EPOCHS, TEST_LINES = 2, 1500, 25, 3, 2000


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return DATA.write_per_slot_files(str(tmp_path_factory.mktemp("ctr")), FILES, LINES, seed=1)


@pytest.fixture(scope="module")
def test_file(tmp_path_factory):
    return DATA.write_per_slot_files(str(tmp_path_factory.mktemp("ctr_test")), 1, TEST_LINES, seed=7)


def _dataset(paths, like):
    ds = fk.DatasetFactory().create_dataset("InMemoryDataset")
    ds.set_use_var(like._use_vars)
    ds.set_filelist(paths)
    ds.set_batch_size(BATCH)
    ds.load_into_memory()
    return ds


def _zero(scope, stats):
    for s in stats:
        scope.set(s.name, np.zeros_like(scope.numpy(s.name)))


def _job(files, kind="InMemoryDataset"):
    """A fresh CTR model with an auc metric, its scope initialized, and its dataset."""
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = 3
    with fk.program_guard(main, startup), fk.unique_name.guard():
        model = build_per_slot(SPEC, emb_dim=4, hidden=8, lr=0.01)
        auc, _, stats = layers.auc(model["predict"], model["use_vars"][0])
    exe, scope = fk.Executor(fk.CPUPlace()), fk.Scope()
    exe.run(startup, scope=scope)
    ds = fk.DatasetFactory().create_dataset(kind)
    ds.set_use_var(model["use_vars"])
    ds.set_filelist(files)
    ds.set_batch_size(BATCH)
    if kind == "InMemoryDataset":
        ds.load_into_memory()
    return exe, main, scope, ds, model, auc, stats


def _counted(scope, stats):
    pos, neg = scope.numpy(stats[2].name), scope.numpy(stats[3].name)
    return int(pos.sum() + neg.sum())


def _stat_auc(scope, stats):
    from fleetkit.core.ops.metric import roc_auc_from_stats
    return float(roc_auc_from_stats(np, scope.numpy(stats[2].name).ravel(), scope.numpy(stats[3].name).ravel()))


@pytest.mark.parametrize("workers", ["auto", "threads"])
def test_auc_counts_every_example_once_with_two_workers(files, test_file, monkeypatch, workers):
    monkeypatch.setattr(trainer, "WORKERS", workers)
    aucs = {}
    for thread in (1, 2):
        exe, main, scope, ds, _, _, stats = _job(files)
        test_prog = main.clone(for_test=True)
        for epoch in range(EPOCHS):
            run = exe.train_from_dataset(main, ds, scope=scope, thread=thread)
            assert run.workers == ("processes" if thread == 2 and workers == "auto" else "threads")
            assert run.examples == FILES * LINES
            assert _counted(scope, stats) == (epoch + 1) * FILES * LINES  # 100% of the examples, none twice
        window = scope.numpy(stats[0].name).sum() + scope.numpy(stats[1].name).sum()
        assert 0 < window <= thread * BATCH  # the last batch of each worker
        _zero(scope, stats)
        exe.infer_from_dataset(test_prog, _dataset(test_file, ds), scope=scope, thread=thread)
        assert _counted(scope, stats) == TEST_LINES
        aucs[thread] = _stat_auc(scope, stats)
    print(f"held-out AUC thread=1 {aucs[1]:.4f}, thread=2 {aucs[2]:.4f}")
    assert aucs[1] > 0.7
    # Hogwild's update order moves this small model's AUC: over 100 free runs thread=2 - thread=1
    # ranged -0.0058 .. +0.0022 (serial training in other batch orders: -0.001 .. +0.003), so 0.005
    # would fail about 1 run in 30; 0.01 still catches a lost or stale update (those cost 0.05-0.2).
    # Issue 15's 0.005 is measured on the real CTR job by benchmarks/ctr_side_by_side.py.
    assert abs(aucs[2] - aucs[1]) <= 0.01


def test_same_parameters_same_auc_with_one_or_two_workers(files, test_file):
    exe, main, scope, ds, _, _, stats = _job(files)
    exe.train_from_dataset(main, ds, scope=scope, thread=1)
    test_prog = main.clone(for_test=True)
    counts = {}
    for thread in (1, 2):
        _zero(scope, stats)
        run = exe.infer_from_dataset(test_prog, _dataset(test_file, ds), scope=scope, thread=thread)
        assert run.workers == ("processes" if thread == 2 else "threads")
        counts[thread] = [scope.numpy(s.name).copy() for s in stats[2:]]
    for a, b in zip(counts[1], counts[2]):  # exactly the same buckets
        np.testing.assert_array_equal(a, b)
    assert int(sum(c.sum() for c in counts[2])) == TEST_LINES


def test_infer_from_dataset_counts_every_example_and_updates_nothing(files):
    exe, main, scope, ds, model, auc, stats = _job(files)
    test_prog = main.clone(for_test=True)
    before = scope.numpy("emb_0").copy()
    run = exe.infer_from_dataset(test_prog, ds, scope=scope, thread=2, fetch_list=[auc])
    assert run.workers == "processes" and _counted(scope, stats) == FILES * LINES
    np.testing.assert_array_equal(scope.numpy("emb_0"), before)
    assert set(run.fetched) == {auc.name}


def test_worker_processes_share_parameters_and_learn(files):
    exe, main, scope, ds, model, _, stats = _job(files, "QueueDataset")
    before = {n: scope.numpy(n).copy() for n in ("emb_0", "fc_0.w_0")}
    for _ in range(3):  # QueueDataset: each file read by exactly one worker
        run = exe.train_from_dataset(main, ds, scope=scope, thread=2)
        assert run.workers == "processes" and run.examples == FILES * LINES
    for n, b in before.items():  # the parent's scope holds what the workers trained
        assert not np.allclose(scope.numpy(n), b)
    assert _counted(scope, stats) == 3 * FILES * LINES
    assert _stat_auc(scope, stats) > 0.7


def test_thread1_equals_a_feed_loop(files):
    exe, main, scope, ds, model, _, _ = _job(files)
    ref_scope = fk.Scope()
    exe2 = fk.Executor(fk.CPUPlace())
    # the same initial values: copy the persistables of the initialized scope
    for name in scope.local_var_names():
        v = scope.numpy(name) if scope.get(name) is not None else None
        if v is not None:
            ref_scope.set(name, v.copy())
    exe.train_from_dataset(main, ds, scope=scope, thread=1)
    for batch in ds.thread_feeds(1)[0]:
        exe2.run(main, feed=batch, scope=ref_scope)
    np.testing.assert_allclose(scope.numpy("fc_0.w_0"), ref_scope.numpy("fc_0.w_0"), rtol=1e-6, atol=1e-7)


def test_worker_process_error_is_raised_in_the_parent(files):
    exe, main, scope, ds, model, _, _ = _job(files)
    scope.set("fc_0.w_0", np.zeros((3, 3), np.float32))  # wrong shape: the fc op fails in every worker
    with pytest.raises(OpError, match="op #") as info:
        exe.train_from_dataset(main, ds, scope=scope, thread=2)
    assert any("worker process" in note for note in getattr(info.value, "__notes__", []))


@pytest.mark.parametrize("workers", ["auto", "threads"])
def test_skipped_lines_counts_every_workers_bad_lines(files, tmp_path, monkeypatch, workers):
    """QueueDataset parses in the workers: a worker process's skipped lines reach the parent."""
    monkeypatch.setattr(trainer, "WORKERS", workers)
    bad_files = []
    for i, path in enumerate(files):   # 3 + 5 malformed lines, one file per worker
        with open(path) as f:
            lines = f.read().splitlines()
        bad_files.append(str(tmp_path / f"bad{i}.txt"))
        with open(bad_files[-1], "w") as f:
            f.write("\n".join(lines[:10] + ["not a line"] * (3 + 2 * i) + lines[10:]) + "\n")
    exe, main, scope, ds, _, _, _ = _job(bad_files, kind="QueueDataset")
    ds.set_skip_bad_lines(True)
    stats = exe.train_from_dataset(main, ds, scope=scope, thread=2)
    assert stats.workers == ("processes" if workers == "auto" else "threads")
    assert ds.skipped_lines() == 8
    assert stats.examples == FILES * LINES


# ---- Hogwild under load: a worker descheduled in the middle of its update (issue 15) ----
class _MidUpdateLockstep:
    """Worker 1 stops whenever one of its update ops has written part of its outputs and
    not finished (a worker descheduled mid-update); worker 0 then trains one whole batch
    before worker 1 goes on.  Runs in worker 1's first batch, ``limit`` times at most;
    semaphores of the fork context work for worker threads and worker processes alike."""

    def __init__(self, limit: int = 40):
        ctx = mp.get_context("fork")
        self.go, self.done, self.active = ctx.Semaphore(0), ctx.Semaphore(0), ctx.Value("i", 0)
        self.pauses, self.limit, self.made = ctx.Value("i", 0), limit, 0
        self.worker0_waited = self.in_scalar_lock = False

    def arm(self, monkeypatch):
        """Hook the next run's two prepared programs (trainer._prepare: worker 0's, then worker 1's)."""
        self.made, self.active.value = 0, 1
        prepare = trainer._prepare

        def hooked(*args, **kw):
            prep = prepare(*args, **kw)
            self.made += 1
            (self._hook_worker0 if self.made == 1 else self._hook_worker1)(prep.steps)
            return prep
        monkeypatch.setattr(trainer, "_prepare", hooked)
        held = shared_scalars.held

        @contextlib.contextmanager
        def marked():  # no pause while holding the lock worker 0 needs for its beta powers
            self.in_scalar_lock = True  # before the lock: a line event between the two would pause in it
            try:
                with held():
                    yield
            finally:
                self.in_scalar_lock = False
        monkeypatch.setattr(shared_scalars, "held", marked)

    def _wait(self, sem):
        assert sem.acquire(timeout=30), "lockstep: the other worker never came"

    def _hook_worker0(self, steps):
        (first, c0), (last, c1) = steps[0], steps[-1]

        def start(ctx):
            if self.active.value:
                self._wait(self.go)
                self.worker0_waited = True
            first(ctx)

        def end(ctx):
            last(ctx)
            if self.worker0_waited:
                self.worker0_waited = False
                self.done.release()
        steps[0], steps[-1] = (start, c0), (end, c1)

    def _pause(self):
        self.go.release()
        self._wait(self.done)
        self.pauses.value += 1
        if self.pauses.value >= self.limit:
            self._stop()

    def _stop(self):
        if self.active.value:
            self.active.value = 0
            self.go.release()  # worker 0 may be waiting for its next batch

    def _hook_worker1(self, steps):
        for i, (kernel, ctx) in enumerate(steps):
            if ctx.op.attrs.get("op_role") == ROLE_OPTIMIZE:
                steps[i] = (self._traced(kernel), ctx)
        last, c_last = steps[-1]

        def end(ctx):
            last(ctx)
            self._stop()
        steps[-1] = (end, c_last)

    def _traced(self, kernel):
        def run(ctx):
            if not self.active.value:
                return kernel(ctx)
            names = sorted({n for ns in ctx.outs.values() for n in ns})
            before = {n: np.array(_raw(ctx.env[n])) for n in names}

            def line(frame, event, arg):
                if (event == "line" and self.active.value and not self.in_scalar_lock
                        and any(not np.array_equal(_raw(ctx.env[n]), before[n]) for n in names)):
                    self._pause()
                return line
            sys.settrace(lambda frame, event, arg: line)
            try:
                kernel(ctx)
            finally:
                sys.settrace(None)
        return run


def _raw(v):
    return v.values if isinstance(v, LoDTensor) else v


def _held_out_auc(exe, main, scope, ds, stats, test_file):
    _zero(scope, stats)
    exe.infer_from_dataset(main.clone(for_test=True), _dataset(test_file, ds), scope=scope, thread=1)
    return _stat_auc(scope, stats)


@pytest.mark.parametrize("workers", ["auto", "threads"])
def test_worker_descheduled_mid_update_keeps_thread1_auc(files, test_file, monkeypatch, workers):
    """A worker whose Adam update is half-applied (m1 advanced, m2 not yet) when the other
    steps made that one divide by m2 of about 0: weights of 1e3, AUC 0.62-0.76 (issue 15)."""
    monkeypatch.setattr(trainer, "WORKERS", workers)
    aucs, lockstep = {}, _MidUpdateLockstep()
    for thread in (1, 2):
        exe, main, scope, ds, _, _, stats = _job(files)
        for epoch in range(EPOCHS):
            with monkeypatch.context() as m:
                if thread == 2 and epoch == 0:
                    lockstep.arm(m)
                run = exe.train_from_dataset(main, ds, scope=scope, thread=thread)
            assert run.batches == FILES * LINES // BATCH
        biggest = max(float(np.abs(scope.numpy(n)).max()) for n in ("emb_0", "emb_1", "fc_0.w_0", "fc_1.w_0"))
        assert biggest < 10, f"thread={thread}: a weight reached {biggest:.3g}"
        aucs[thread] = _held_out_auc(exe, main, scope, ds, stats, test_file)
    assert lockstep.pauses.value >= 10  # worker 0 trained inside worker 1's updates
    print(f"held-out AUC thread=1 {aucs[1]:.4f}, thread=2 (worker 1 paused mid-update) {aucs[2]:.4f}")
    assert abs(aucs[2] - aucs[1]) <= 0.005


@pytest.mark.parametrize("workers", ["auto", "threads"])
def test_step_counters_advance_once_per_batch_with_two_workers(files, monkeypatch, workers):
    """The learning-rate schedule's step counter and Adam's beta powers count every batch once."""
    monkeypatch.setattr(trainer, "WORKERS", workers)
    main, startup = fk.Program(), fk.Program()
    with fk.program_guard(main, startup), fk.unique_name.guard():
        lr = layers.exponential_decay(0.01, decay_steps=50, decay_rate=0.9)
        model = build_per_slot(SPEC, emb_dim=4, hidden=8, opt=fk.optimizer.Adam(lr))
    exe, scope = fk.Executor(fk.CPUPlace()), fk.Scope()
    exe.run(startup, scope=scope)
    ds = _dataset(files, type("Like", (), {"_use_vars": model["use_vars"]}))
    counter, pow_name = "@LR_DECAY_COUNTER@", "fc_0.w_0_beta1_pow_acc_0"
    start, pow_start = float(scope.numpy(counter)[0]), float(scope.numpy(pow_name)[0])
    run = exe.train_from_dataset(main, ds, scope=scope, thread=2)
    assert run.workers == ("processes" if workers == "auto" else "threads")
    assert run.batches == FILES * LINES // BATCH
    assert float(scope.numpy(counter)[0]) - start == run.batches
    advanced = np.log(float(scope.numpy(pow_name)[0]) / pow_start) / np.log(0.9)
    assert abs(advanced - run.batches) < 0.5, f"beta1 pow advanced {advanced:.2f} times"


@pytest.mark.parametrize("workers", ["auto", "threads"])
def test_paired_adam_passes_decay_every_row_once_per_batch(tmp_path, monkeypatch, workers):
    """Two workers take the zero-gradient passes of a large non-lazy Adam table in pairs
    (``ops/adam_host.py``); by the end every batch decayed every row once: a row no batch
    touched holds m2 * b2^batches, and a worker's step left without a partner (odd batch
    counts: 25 batches each) is taken too."""
    monkeypatch.setattr(trainer, "WORKERS", workers)
    spec = CTRConfig(num_slots=2, dense_dim=2, vocab=70_000, max_len=2, seed=5)  # 70000 x 4: a blocked table
    paths = UniformCTRData(spec).write_per_slot_files(str(tmp_path), 2, 1500, seed=1)
    main, startup = fk.Program(), fk.Program()
    with fk.program_guard(main, startup), fk.unique_name.guard():
        model = build_per_slot(spec, emb_dim=4, hidden=8, lr=0.01)
    exe, scope = fk.Executor(fk.CPUPlace()), fk.Scope()
    exe.run(startup, scope=scope)
    m1_name, m2_name = "emb_0_moment1_0", "emb_0_moment2_0"
    scope.set(m2_name, np.ones_like(scope.numpy(m2_name)))
    before = scope.numpy("emb_0").copy()
    ds = fk.DatasetFactory().create_dataset("InMemoryDataset")
    ds.set_use_var(model["use_vars"])
    ds.set_filelist(paths)
    ds.set_batch_size(60)
    ds.load_into_memory()
    run = exe.train_from_dataset(main, ds, scope=scope, thread=2)
    assert run.workers == ("processes" if workers == "auto" else "threads") and run.batches == 50
    lines = []
    for path in paths:
        with open(path) as f:
            lines += [line.split() for line in f]  # label, 2 dense, then slot 0
    seen = np.unique(np.concatenate([np.array(t[7:7 + int(t[6])], np.int64) for t in lines]))
    untouched = np.setdiff1d(np.arange(spec.vocab), seen)
    assert len(untouched) > 60_000
    m2 = scope.numpy(m2_name)[untouched]
    decays = np.round(np.log(m2) / np.log(0.999)).astype(int)
    # two cores decaying one block at the same instant can lose some of the writes (Hogwild:
    # 0.01-8% of the elements here), never add one; a step not taken would shift them all
    assert decays.max() == 50 and np.median(decays) == 50, np.unique(decays, return_counts=True)
    assert not scope.numpy(m1_name)[untouched].any()
    np.testing.assert_array_equal(scope.numpy("emb_0")[untouched], before[untouched])
