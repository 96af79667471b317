"""Executor overhead benchmark.

(a) Training examples/s of the digits MLP (64-128-64-10, softmax + cross_entropy,
    SGD) at batch 128 through the executor, and through a hand-written numpy loop
    doing the same math, in the same run; prints their ratio (goal: executor at
    most 15% slower).
(b) Per-op dispatch overhead on tiny tensors: a chain of `scale` ops through the
    executor vs the same numpy expression called directly.

    python benchmarks/executor.py [--steps 300] [--rounds 5]

How (a) is measured (the machine is shared, so wall time swings by 30% or more
between runs): the two loops run *interleaved step by step* (executor step,
numpy step, then numpy first on the next step, ...), each step timed with
``time.thread_time()`` (CPU time of this thread, so time spent descheduled by
other processes does not count).  The per-step times are pooled over
``--rounds`` fresh trainings; the headline figures are medians, and the ratio
is the median executor step over the median numpy step.  The spread line gives
the per-round ratios (min / median / max) so a noisy run is visible; the
examples/s figures are the batch size over the median step time.  Both loops
do the same math on the same batches from the same initial parameters (the
numpy loop is the same code as before this measurement change).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny matmuls: threads only add noise

import numpy as np  # noqa: E402

import fleetkit as fk  # noqa: E402
from fleetkit import layers  # noqa: E402

SIZES = (64, 128, 64, 10)
LR = 0.05


def make_batches(steps: int, batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [(rng.random((batch, SIZES[0]), dtype=np.float32),
             rng.integers(0, SIZES[-1], size=(batch, 1)).astype(np.int64)) for _ in range(steps)]


def executor_step() -> tuple[Callable, dict]:
    """A fresh digits MLP in the executor: (step(xb, yb) -> None, initial parameters)."""
    main, startup = fk.Program(), fk.Program()
    startup.random_seed = 1
    with fk.program_guard(main, startup), fk.unique_name.guard():
        x = layers.data("x", [SIZES[0]])
        y = layers.data("y", [1], dtype="int64")
        h = layers.fc(x, SIZES[1], act="relu")
        h = layers.fc(h, SIZES[2], act="relu")
        p = layers.fc(h, SIZES[3], act="softmax")
        loss = layers.mean(layers.cross_entropy(p, y))
        fk.optimizer.SGD(LR).minimize(loss)
    scope = fk.Scope()
    exe = fk.Executor(fk.CPUPlace())
    exe.run(startup, scope=scope)
    params = {n: scope.numpy(n).copy() for n in ("fc_0.w_0", "fc_0.b_0", "fc_1.w_0", "fc_1.b_0",
                                                   "fc_2.w_0", "fc_2.b_0")}

    def step(xb: np.ndarray, yb: np.ndarray) -> None:
        exe.run(main, feed={"x": xb, "y": yb}, fetch_list=[loss], scope=scope)
    return step, params


def numpy_step(params: dict) -> Callable:
    """The same math by hand: fc+relu, fc+relu, fc+softmax, cross_entropy, mean, SGD."""
    w = [params[f"fc_{i}.w_0"].copy() for i in range(3)]
    b = [params[f"fc_{i}.b_0"].copy() for i in range(3)]

    def step(xb: np.ndarray, yb: np.ndarray) -> float:
        n = len(xb)
        h1 = np.maximum(xb @ w[0] + b[0], 0)
        h2 = np.maximum(h1 @ w[1] + b[1], 0)
        z = h2 @ w[2] + b[2]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        picked = np.take_along_axis(p, yb, axis=1)
        loss = float(np.mean(-np.log(picked)))
        # backward, op by op as the executor does it
        dpicked = np.full_like(picked, -1.0 / n) / picked
        dp = np.zeros_like(p)
        np.put_along_axis(dp, yb, dpicked, axis=1)
        dz = p * (dp - (dp * p).sum(axis=1, keepdims=True))
        dw2, db2 = h2.T @ dz, dz.sum(0)
        dh2 = (dz @ w[2].T) * (h2 > 0)
        dw1, db1 = h1.T @ dh2, dh2.sum(0)
        dh1 = (dh2 @ w[1].T) * (h1 > 0)
        dw0, db0 = xb.T @ dh1, dh1.sum(0)
        for arr, g in ((w[0], dw0), (b[0], db0), (w[1], dw1), (b[1], db1), (w[2], dw2), (b[2], db2)):
            arr -= LR * g
        return loss
    return step


def interleaved(batches: list, warmup: int) -> tuple[list[float], list[float]]:
    """Per-step thread CPU seconds of the executor and the numpy loop, run alternately."""
    exe, params = executor_step()
    ref = numpy_step(params)
    for xb, yb in batches[:warmup]:
        exe(xb, yb)
        ref(xb, yb)
    clock = time.thread_time
    t_exe, t_np = [], []
    for i, (xb, yb) in enumerate(batches[warmup:]):
        first, second, t_first, t_second = (exe, ref, t_exe, t_np) if i % 2 == 0 else (ref, exe, t_np, t_exe)
        t0 = clock()
        first(xb, yb)
        t1 = clock()
        second(xb, yb)
        t2 = clock()
        t_first.append(t1 - t0)
        t_second.append(t2 - t1)
    return t_exe, t_np


def dispatch_overhead(n_ops: int = 2000, reps: int = 20) -> tuple[float, float]:
    """Microseconds per op: executor running `scale` ops on a [1] tensor, and numpy alone."""
    main = fk.Program()
    with fk.program_guard(main, fk.Program()), fk.unique_name.guard():
        v = layers.data("v", [1], append_batch_size=False)
        for _ in range(n_ops):
            v = layers.scale(v, 1.0001, 0.0)
    exe = fk.Executor(fk.CPUPlace())
    feed = {"v": np.ones(1, np.float32)}
    exe.run(main, feed=feed, fetch_list=[v])
    t0 = time.perf_counter()
    for _ in range(reps):
        exe.run(main, feed=feed, fetch_list=[v])
    t_exe = (time.perf_counter() - t0) / (reps * n_ops)
    a = np.ones(1, np.float32)
    t0 = time.perf_counter()
    for _ in range(reps):
        x = a
        for _ in range(n_ops):
            x = (x * 1.0001 + 0.0).astype(np.float32, copy=False)
    t_np = (time.perf_counter() - t0) / (reps * n_ops)
    return t_exe * 1e6, t_np * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description="executor overhead benchmark")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5, help="fresh trainings whose step times are pooled")
    args = ap.parse_args()
    warmup = 20
    batches = make_batches(args.steps + warmup, args.batch)
    all_exe, all_np, ratios = [], [], []
    for _ in range(args.rounds):
        t_exe, t_np = interleaved(batches, warmup)
        all_exe += t_exe
        all_np += t_np
        ratios.append(statistics.median(t_exe) / statistics.median(t_np))
    med_exe, med_np = statistics.median(all_exe), statistics.median(all_np)
    print(f"(a) digits MLP {'-'.join(map(str, SIZES))}, batch {args.batch}, SGD, {args.steps} steps x "
          f"{args.rounds} rounds, interleaved, median thread CPU time per step")
    print(f"    executor:           {args.batch / med_exe:10.0f} examples/s  ({med_exe * 1e6:7.1f} us/step)")
    print(f"    hand-written numpy: {args.batch / med_np:10.0f} examples/s  ({med_np * 1e6:7.1f} us/step)")
    print(f"    executor time / numpy time = {med_exe / med_np:.3f}  (goal <= 1.15)")
    ratios.sort()
    print(f"    per-round ratio min / median / max: {ratios[0]:.3f} / {statistics.median(ratios):.3f} / "
          f"{ratios[-1]:.3f}")
    us_exe, us_np = dispatch_overhead()
    print("(b) per-op cost on a [1] float32 tensor (scale op)")
    print(f"    executor {us_exe:.2f} us/op, numpy alone {us_np:.2f} us/op, "
          f"dispatch overhead {us_exe - us_np:.2f} us/op")


if __name__ == "__main__":
    main()
