"""One measurement of the CTR job of ``ctr_side_by_side.py``, in fleetkit or in Paddle 2.6.

Run by ``ctr_side_by_side.py`` as a child process (so each run starts fresh and the
two frameworks never share a process):

    python _ctr_job.py --framework fleetkit|paddle --train FILES --test FILE --thread N

The model: 26 sparse slots sharing one 1e6 x 10 embedding table (sum-pooled), 13 dense
features, fc 256-128-64 (relu), a 2-way softmax, Adam(1e-3), batch 512, fed by an
``InMemoryDataset`` and ``train_from_dataset``; then ``infer_from_dataset`` over the test
file.  Also times the in-memory feed alone: ``infer_from_dataset`` over the loaded training
data with a program that declares every slot and computes only ``mean(dense)``, so the
time is the batch assembly of all 28 slots (the same work in both frameworks' dataset
feeds, which build every ``use_var`` slot whatever the program reads).  Prints one JSON
line of seconds and counts (the parent computes the ratios).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

N_SPARSE, N_DENSE, TABLE, EMB, BATCH = 26, 13, 1_000_000, 10, 512
HIDDEN = (256, 128, 64)


def fleetkit_net(is_distributed: bool = False) -> tuple:
    """The CTR network, built into the current program guard: (feed vars, loss, auc, auc stats).

    Not ``fleetkit.demo.ctr_model``: this net must match ``paddle_net`` below line for line
    (default initializers, sum pooling, one 1e6-row table named ``emb``, feeds in
    ``ctr_side_by_side.write_lines``' order), which is what the side-by-side compares.

    ``is_distributed``: the embedding table lives on the pservers as a hash table (PS jobs)."""
    from fleetkit import layers
    label, dense, *slots = fleetkit_inputs()
    pooled = [layers.sequence_pool(layers.embedding(s, size=[TABLE, EMB], is_sparse=True, param_attr="emb",
                                                    is_distributed=is_distributed), "sum") for s in slots]
    h = layers.concat(pooled + [dense], axis=1)
    for width in HIDDEN:
        h = layers.fc(h, width, act="relu")
    predict = layers.fc(h, 2, act="softmax")
    loss = layers.mean(layers.cross_entropy(predict, label))
    auc, _, stats = layers.auc(predict, label)
    return [label, dense] + slots, loss, auc, stats


def fleetkit_inputs() -> list:
    """The job's feed variables, in ``ctr_side_by_side.write_lines``' order: label, dense, s0..s25."""
    from fleetkit import layers
    return ([layers.data("label", shape=[1], dtype="int64"), layers.data("dense", shape=[N_DENSE], dtype="float32")]
            + [layers.data(f"s{i}", shape=[1], dtype="int64", lod_level=1) for i in range(N_SPARSE)])


def paddle_inputs() -> list:
    """The same feed variables in Paddle 2.6 names."""
    import paddle
    return ([paddle.static.data("label", shape=[-1, 1], dtype="int64"),
             paddle.static.data("dense", shape=[-1, N_DENSE], dtype="float32")]
            + [paddle.static.data(f"s{i}", shape=[-1, 1], dtype="int64", lod_level=1) for i in range(N_SPARSE)])


def paddle_net() -> tuple:
    """The same network in Paddle 2.6 static-graph names (same return values)."""
    import paddle
    label, dense, *slots = paddle_inputs()
    pooled = [paddle.reshape(paddle.static.nn.sequence_lod.sequence_pool(  # [-1, 1, EMB] -> [-1, EMB]
        paddle.static.nn.embedding(s, size=[TABLE, EMB], is_sparse=True, param_attr="emb"), "sum"), [-1, EMB])
        for s in slots]
    h = paddle.concat(pooled + [dense], axis=1)
    for width in HIDDEN:
        h = paddle.static.nn.fc(h, width, activation="relu")
    predict = paddle.static.nn.fc(h, 2, activation="softmax")
    loss = paddle.mean(paddle.nn.functional.cross_entropy(predict, label, use_softmax=False))
    auc, _, stats = paddle.static.auc(predict, label)
    return [label, dense] + slots, loss, auc, stats


def _fleetkit_model():
    import fleetkit as fk
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = 1
    with fk.program_guard(main, startup):
        feeds, loss, auc, stats = fleetkit_net()
        test = main.clone(for_test=True)
        fk.optimizer.Adam(1e-3).minimize(loss)
    feed_only = fk.Program()
    with fk.program_guard(feed_only, fk.Program()):
        feed_out = fk.layers.mean(fleetkit_inputs()[1])
    exe = fk.Executor(fk.CPUPlace())
    exe.run(startup)
    return (fk, exe, main, test, (feed_only, feed_out), feeds, loss, auc, stats,
            fk.DatasetFactory().create_dataset)


def _paddle_model():
    import paddle
    paddle.enable_static()
    main, startup = paddle.static.Program(), paddle.static.Program()
    main.random_seed = startup.random_seed = 1
    with paddle.static.program_guard(main, startup):
        feeds, loss, auc, stats = paddle_net()
        test = main.clone(for_test=True)
        paddle.optimizer.Adam(1e-3).minimize(loss)
    feed_only = paddle.static.Program()
    with paddle.static.program_guard(feed_only, paddle.static.Program()):
        feed_out = paddle.mean(paddle_inputs()[1])
    exe = paddle.static.Executor(paddle.CPUPlace())
    exe.run(startup)
    return paddle, exe, main, test, (feed_only, feed_out), feeds, loss, auc, stats, paddle_dataset


def paddle_dataset(kind):
    import paddle
    return paddle.distributed.InMemoryDataset() if kind == "InMemoryDataset" else paddle.distributed.QueueDataset()


def make_dataset(framework: str, create, use_vars, files, thread):
    ds = create("InMemoryDataset")
    if framework == "paddle":
        ds.init(batch_size=BATCH, thread_num=thread, use_var=use_vars, pipe_command="cat")
    else:
        ds.set_use_var(use_vars)
        ds.set_batch_size(BATCH)
        ds.set_thread(thread)
        ds.set_pipe_command("cat")
    ds.set_filelist(files)
    return ds


def stat_count(fw, scope_get, stats) -> int:
    """Examples the cumulative auc stats counted (positives + negatives of every bucket)."""
    pos, neg = (np.array(scope_get(v.name)) for v in stats[2:4])
    return int(pos.sum() + neg.sum())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--framework", choices=["fleetkit", "paddle"], required=True)
    ap.add_argument("--train", nargs="+", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--thread", type=int, default=1)
    a = ap.parse_args()
    fw = a.framework
    lib, exe, main_prog, test_prog, (feed_prog, feed_out), use_vars, loss, auc, stats, create = (
        _fleetkit_model() if fw == "fleetkit" else _paddle_model())
    scope = lib.global_scope() if fw == "fleetkit" else lib.static.global_scope()

    def scope_get(name):
        return scope.find_var(name).get_tensor()

    out = {"framework": fw, "thread": a.thread}
    ds = make_dataset(fw, create, use_vars, a.train, a.thread)
    t = time.perf_counter()
    ds.load_into_memory()
    out["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ds.local_shuffle()
    out["local_shuffle_s"] = time.perf_counter() - t
    t = time.perf_counter()
    exe.infer_from_dataset(feed_prog, ds, thread=a.thread, fetch_list=[feed_out], fetch_info=["mean"],
                           print_period=10 ** 9)
    out["feed_s"] = time.perf_counter() - t
    t, cpu = time.perf_counter(), _cpu_s()
    exe.train_from_dataset(main_prog, ds, thread=a.thread, fetch_list=[loss], fetch_info=["loss"],
                           print_period=10 ** 9)
    out["train_s"] = time.perf_counter() - t
    out["train_cpu_s"] = _cpu_s() - cpu
    out["train_counted"] = stat_count(fw, scope_get, stats)
    out["train_auc"] = auc_from_stats(scope_get, stats)
    for v in stats:  # zero the auc state: the test pass counts from 0
        scope_get(v.name).set(np.zeros_like(np.array(scope_get(v.name))), lib.CPUPlace())
    test = make_dataset(fw, create, use_vars, [a.test], a.thread)
    test.load_into_memory()
    t = time.perf_counter()
    exe.infer_from_dataset(test_prog, test, thread=a.thread, fetch_list=[auc], fetch_info=["auc"],
                           print_period=10 ** 9)
    out["infer_s"] = time.perf_counter() - t
    out["test_counted"] = stat_count(fw, scope_get, stats)
    out["test_auc"] = auc_from_stats(scope_get, stats)
    print("RESULT " + json.dumps(out), flush=True)


def _cpu_s() -> float:
    """CPU seconds of this process's threads and its finished children (worker processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def auc_from_stats(scope_get, stats) -> float:
    """ROC AUC from the cumulative bucket counts (the same formula in both frameworks)."""
    pos, neg = (np.array(scope_get(v.name)).reshape(-1)[::-1].astype(np.float64) for v in stats[2:4])
    tp, fp = np.cumsum(pos), np.cumsum(neg)
    area = (neg * (2 * tp - pos)).sum() / 2
    return float(area / (tp[-1] * fp[-1])) if tp[-1] * fp[-1] > 0 else 0.0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
