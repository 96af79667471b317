"""Executor.train_from_dataset / infer_from_dataset on a CTR-style model."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import fleetkit as fk
from fleetkit.errors import DataFormatError, InvalidArgumentError
from fleetkit.demo.ctr_data import CTRConfig, UniformCTRData
from fleetkit.demo.ctr_model import build_per_slot

SPEC = CTRConfig(num_slots=6, dense_dim=4, vocab=60, max_len=3, seed=11)
DATA = UniformCTRData(SPEC)
FILES, LINES, BATCH, EPOCHS = 2, 3000, 32, 2


def _feeds(d, lo, hi):
    """A feed dict built straight from the generating arrays (independent of the parser)."""
    feed = {"label": d["label"][lo:hi].reshape(-1, 1)}
    for k in range(SPEC.dense_dim):
        feed[f"dense_{k}"] = d["dense"][lo:hi, k:k + 1]
    for s in range(SPEC.num_slots):
        off = np.concatenate([[0], np.cumsum(d["lens"][s])])
        ids = d["ids"][s][off[lo]:off[hi]].reshape(-1, 1).astype(np.int64)
        feed[f"sparse_{s}"] = fk.create_lod_tensor(ids, [d["lens"][s][lo:hi].tolist()])
    return feed


def _auc(exe, test_prog, predict, scope, test):
    n = len(test["label"])
    with fk.scope_guard(scope):
        (p,) = exe.run(test_prog, feed=_feeds(test, 0, n), fetch_list=[predict])
    return roc_auc_score(test["label"], p[:, 1])


@pytest.fixture(scope="module")
def ctr_files(tmp_path_factory):
    return DATA.write_per_slot_files(str(tmp_path_factory.mktemp("ctr")), FILES, LINES, seed=0)


def test_train_from_dataset_thread2_matches_feed_loop_auc(ctr_files, capsys):
    main, startup = fk.default_main_program(), fk.default_startup_program()
    startup.random_seed = main.random_seed = 5
    model = build_per_slot(SPEC, emb_dim=8, hidden=16, lr=0.01)
    test_prog = main.clone(for_test=True)
    exe = fk.Executor(fk.CPUPlace())
    loop_scope, ds_scope = fk.Scope(), fk.Scope()
    for s in (loop_scope, ds_scope):
        exe.run(startup, scope=s)
    parts = [DATA.per_slot_columns(LINES, f) for f in range(FILES)]  # what write_per_slot_files wrote
    test = DATA.per_slot_columns(4000, 999)

    for _ in range(EPOCHS):  # the reference: a plain feed loop, one thread
        for d in parts:
            for lo in range(0, LINES, BATCH):
                exe.run(main, feed=_feeds(d, lo, min(lo + BATCH, LINES)), scope=loop_scope)

    ds = fk.DatasetFactory().create_dataset("InMemoryDataset")
    ds.set_use_var(model["use_vars"])
    ds.set_filelist(ctr_files)
    ds.set_batch_size(BATCH)
    ds.set_thread(2)
    ds.load_into_memory()
    ds.local_shuffle(seed=1)
    for _ in range(EPOCHS):
        stats = exe.train_from_dataset(main, ds, scope=ds_scope, thread=2, fetch_list=[model["loss"]],
                                       fetch_info=["loss"], print_period=40)
    assert stats.threads == 2 and stats.examples == FILES * LINES
    out = capsys.readouterr().out
    assert "loss: " in out and "examples/s: " in out

    auc_loop = _auc(exe, test_prog, model["predict"], loop_scope, test)
    auc_ds = _auc(exe, test_prog, model["predict"], ds_scope, test)
    print(f"AUC feed loop {auc_loop:.4f}, train_from_dataset(thread=2) {auc_ds:.4f}")
    assert auc_loop > 0.75  # the model learned the signal
    assert abs(auc_ds - auc_loop) <= 0.01


def test_infer_from_dataset_updates_nothing_and_queue_dataset_streams(ctr_files, capsys):
    model = build_per_slot(SPEC)
    exe = fk.Executor(fk.CPUPlace())
    exe.run(fk.default_startup_program())
    params = {p.name: fk.global_scope().numpy(p.name).copy() for p in fk.default_main_program().all_parameters()}
    ds = fk.DatasetFactory().create_dataset("QueueDataset")
    ds.set_use_var(model["use_vars"])
    ds.set_filelist(ctr_files)
    ds.set_batch_size(100)
    stats = exe.infer_from_dataset(fk.default_main_program(), ds, thread=2, fetch_list=[model["predict"]],
                                   debug=True)
    assert "[debug] op lookup_table" in capsys.readouterr().out  # per-op time table of thread 0
    assert stats.examples == FILES * LINES and stats.batches == FILES * LINES // 100
    assert stats.fetched["" + model["predict"].name].shape[1] == 2
    for name, before in params.items():
        np.testing.assert_array_equal(fk.global_scope().numpy(name), before)


def test_bad_arguments_and_slot_mismatch_fail_before_any_op_runs(tmp_path, ctr_files):
    model = build_per_slot(SPEC)
    exe = fk.Executor(fk.CPUPlace())
    exe.run(fk.default_startup_program())
    main = fk.default_main_program()
    w = [p.name for p in main.all_parameters()][0]
    before = fk.global_scope().numpy(w).copy()
    ds = fk.DatasetFactory().create_dataset("QueueDataset")
    ds.set_use_var(model["use_vars"][:-1])  # one slot fewer than the lines have
    ds.set_filelist(ctr_files)
    with pytest.raises(DataFormatError, match=r"part-00000:1: .* after the last of the 10 slots"):
        exe.train_from_dataset(main, ds, thread=2)
    np.testing.assert_array_equal(fk.global_scope().numpy(w), before)
    with pytest.raises(InvalidArgumentError, match="dataset is None"):
        exe.train_from_dataset(main, None)
    ds.set_use_var(model["use_vars"])
    with pytest.raises(InvalidArgumentError, match="thread must be > 0"):
        exe.train_from_dataset(main, ds)
    with pytest.raises(InvalidArgumentError, match="fetch_info has 2"):
        exe.train_from_dataset(main, ds, thread=1, fetch_list=[model["loss"]], fetch_info=["a", "b"])
    mem = fk.DatasetFactory().create_dataset("InMemoryDataset")
    mem.set_use_var(model["use_vars"])
    with pytest.raises(InvalidArgumentError, match="load_into_memory"):
        exe.train_from_dataset(main, mem, thread=1)
    mem.set_filelist(ctr_files[:1])
    mem.load_into_memory()
    assert mem.get_memory_data_size() == LINES
    mem.release_memory()
    assert mem.get_memory_data_size() == 0


def test_collective_program_needs_one_thread(ctr_files):
    import fleetkit.collective.ops  # noqa: F401  (registers c_allreduce_sum)
    model = build_per_slot(SPEC)
    main = fk.default_main_program()
    grad = [v.name for v in main.list_vars() if v.name.endswith("@GRAD")][0]
    main.global_block().append_op("c_allreduce_sum", {"X": [grad]}, {"Out": [grad]})
    ds = fk.DatasetFactory().create_dataset("QueueDataset")
    ds.set_use_var(model["use_vars"])
    ds.set_filelist(ctr_files)
    with pytest.raises(InvalidArgumentError, match=r"collective ops \(c_allreduce_sum\): use thread=1"):
        fk.Executor().train_from_dataset(main, ds, thread=2)


def test_both_datasets_are_dataset_sources_and_anything_else_is_named():
    from fleetkit.core.dataset_source import DatasetSource
    for kind in ("QueueDataset", "InMemoryDataset"):
        assert isinstance(fk.DatasetFactory().create_dataset(kind), DatasetSource), kind

    class LooksLikeOne:  # thread_num and a feed method, but not the rest of the protocol
        thread_num = 1

        def thread_feeds(self, n):
            return [iter(())]

    x = fk.layers.data("x", [1])
    fk.layers.mean(x)
    with pytest.raises(InvalidArgumentError, match=r"LooksLikeOne is not a dataset \(it lacks process_safe_feeds, "
                                                   r"used_slots, prepare_to_run, finish_run, skip_counts"):
        fk.Executor().train_from_dataset(fk.default_main_program(), LooksLikeOne())


@pytest.mark.parametrize("thread", [1, 2])
def test_seeded_random_op_draws_the_same_numbers_every_batch_as_in_executor_run(tmp_path, thread):
    """An op with its own ``seed`` draws the same numbers on every run of Executor.run (fluid's
    fixed seed); train_from_dataset's batches are runs too, so its last batch's draws are
    the first's, and Executor.run's."""
    path = tmp_path / "ones.txt"
    path.write_text("".join("16 " + " ".join(["1"] * 16) + "\n" for _ in range(24)))
    main, startup = fk.Program(), fk.Program()
    with fk.program_guard(main, startup):
        x = fk.layers.data("x", shape=[16], dtype="float32")
        y = x + fk.layers.uniform_random_batch_size_like(x, shape=[-1, 16], seed=7)
    exe = fk.Executor(fk.CPUPlace())
    scope = fk.Scope()
    exe.run(startup, scope=scope)
    ds = fk.DatasetFactory().create_dataset("QueueDataset")
    ds.set_use_var([x])
    ds.set_filelist([str(path)])
    ds.set_batch_size(4)
    stats = exe.train_from_dataset(main, ds, scope=scope, thread=thread, fetch_list=[y], print_period=100)
    assert stats.batches == 6
    (want,) = exe.run(main, feed={"x": np.ones((4, 16), np.float32)}, fetch_list=[y], scope=scope)
    assert len(np.unique(want)) == want.size  # real draws
    np.testing.assert_array_equal(np.asarray(stats.fetched[y.name]), want)
