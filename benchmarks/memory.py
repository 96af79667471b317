"""Peak memory of a training step with intermediates freed at their last use vs kept.

Two models, each trained the same way twice from the same seed: once as fluid 1.4
runs by default (every intermediate stays in the scope until the next run overwrites
it), once after ``fluid.memory_optimize(main)`` (the executor frees each intermediate
right after the last op that reads it; ``FLAGS_eager_delete_tensor_gb=0`` does the
same for every program).

- the book's recognize_digits conv net (two conv-pool blocks with batch norm, 28x28
  images, batch 128);
- the PaddleRec CTR DNN (26 sparse slots with 10-wide embeddings sum-pooled, 13
  dense features, three 400-wide fc layers, batch 512).

Peak is ``tracemalloc``'s peak during the steps after a warm-up step, tracing from
before the startup program (numpy allocates through the traced allocator, so this is
the peak of all array memory: parameters, optimizer state, the batch, intermediates);
"held after the step" is the intermediates' memory left in the scope.  The losses of
both runs are compared: they must be identical.

    python benchmarks/memory.py [--steps 3]
"""
from __future__ import annotations

import argparse
import math
import os
import tracemalloc

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import fleetkit as fluid  # noqa: E402


def digits_conv(batch: int):
    img = fluid.layers.data(name="img", shape=[1, 28, 28], dtype="float32")
    label = fluid.layers.data(name="label", shape=[1], dtype="int64")
    c1 = fluid.nets.simple_img_conv_pool(input=img, filter_size=5, num_filters=20, pool_size=2, pool_stride=2,
                                         act="relu")
    c1 = fluid.layers.batch_norm(c1)
    c2 = fluid.nets.simple_img_conv_pool(input=c1, filter_size=5, num_filters=50, pool_size=2, pool_stride=2,
                                         act="relu")
    predict = fluid.layers.fc(input=c2, size=10, act="softmax")
    loss = fluid.layers.mean(fluid.layers.cross_entropy(input=predict, label=label))
    fluid.optimizer.Adam(learning_rate=0.001).minimize(loss)
    rng = np.random.default_rng(0)
    feed = {"img": rng.uniform(-1, 1, (batch, 1, 28, 28)).astype("float32"),
            "label": rng.integers(0, 10, (batch, 1))}
    return loss, feed


def ctr_dnn(batch: int, vocab: int = 100000, emb: int = 10, slots: int = 26):
    dense = fluid.layers.data(name="dense_input", shape=[13], dtype="float32")
    ids = [fluid.layers.data(name=f"C{i}", shape=[1], lod_level=1, dtype="int64") for i in range(1, slots + 1)]
    label = fluid.layers.data(name="label", shape=[1], dtype="int64")
    pooled = [fluid.layers.sequence_pool(fluid.layers.embedding(
        input=x, is_sparse=True, size=[vocab, emb], param_attr=fluid.ParamAttr(name="SparseFeatFactors")),
        pool_type="average") for x in ids]
    h = fluid.layers.concat(pooled + [dense], axis=1)
    for _ in range(3):
        h = fluid.layers.fc(input=h, size=400, act="relu", param_attr=fluid.ParamAttr(
            initializer=fluid.initializer.Normal(scale=1 / math.sqrt(h.shape[1]))))
    predict = fluid.layers.fc(input=h, size=2, act="softmax")
    loss = fluid.layers.reduce_sum(fluid.layers.cross_entropy(input=predict, label=label))
    fluid.optimizer.Adam(learning_rate=1e-4).minimize(loss)
    rng = np.random.default_rng(0)
    feed = {"dense_input": rng.random((batch, 13)).astype("float32"),
            "label": rng.integers(0, 2, (batch, 1))}
    for i in range(1, slots + 1):
        lens = rng.integers(1, 4, batch)
        feed[f"C{i}"] = fluid.create_lod_tensor(rng.integers(0, vocab, (int(lens.sum()), 1)), [lens.tolist()],
                                                fluid.CPUPlace())
    return loss, feed


def _held(scope: fluid.Scope, program: fluid.Program) -> int:
    temp = {v.name for v in program.list_vars() if not v.persistable}
    total = 0
    for name in scope.local_var_names():
        if name in temp:
            v = scope.get(name)
            total += getattr(getattr(v, "values", v), "nbytes", 0)
    return total


def measure(build, free: bool, steps: int) -> tuple[int, int, list[float]]:
    main, start = fluid.Program(), fluid.Program()
    main.random_seed = start.random_seed = 1
    with fluid.program_guard(main, start), fluid.unique_name.guard():
        loss, feed = build()
    if free:
        fluid.memory_optimize(main)
    exe, scope = fluid.Executor(fluid.CPUPlace()), fluid.Scope()
    tracemalloc.start()  # before the startup program: parameters and optimizer state are counted too
    exe.run(start, scope=scope)
    losses = [float(exe.run(main, feed=feed, fetch_list=[loss], scope=scope)[0].reshape(-1)[0])]  # warm-up
    for _ in range(steps):
        tracemalloc.reset_peak()
        losses.append(float(exe.run(main, feed=feed, fetch_list=[loss], scope=scope)[0].reshape(-1)[0]))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, _held(scope, main), losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    os.environ.pop("FLAGS_eager_delete_tensor_gb", None)
    mib = 1 / 2 ** 20
    print(f"{'model':<28} {'peak kept':>10} {'peak freed':>11} {'ratio':>6} {'held kept':>10} {'held freed':>11}")
    for name, build in (("digits conv net (batch 128)", lambda: digits_conv(128)),
                        ("PaddleRec CTR DNN (batch 512)", lambda: ctr_dnn(512))):
        keep = measure(build, False, args.steps)
        free = measure(build, True, args.steps)
        assert keep[2] == free[2], f"{name}: losses differ: {keep[2]} vs {free[2]}"
        print(f"{name:<28} {keep[0] * mib:>8.1f}Mi {free[0] * mib:>9.1f}Mi {free[0] / keep[0]:>6.2f} "
              f"{keep[1] * mib:>8.1f}Mi {free[1] * mib:>9.1f}Mi")
    print("(MiB of numpy arrays, tracemalloc; 'held' = intermediates left in the scope after the step; "
          "losses identical in both runs)")


if __name__ == "__main__":
    main()
