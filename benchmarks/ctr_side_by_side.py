"""The CTR job of issue 15 in fleetkit and (optionally) PaddlePaddle 2.6.2, runs interleaved.

Job (``_ctr_job.py``): 26 sparse slots sharing a 1e6 x 10 embedding table, 13 dense
features, fc 256-128-64, Adam, batch 512, ``InMemoryDataset`` (load_into_memory,
local_shuffle) + ``train_from_dataset``, then ``infer_from_dataset`` on a held-out
file; before training, one feed-only pass over the loaded data times the in-memory
batch assembly alone.  Every run is a fresh child process; with ``--paddle-python`` the fleetkit and
Paddle runs alternate (``--repeat`` rounds) so machine load hits both alike.

    python benchmarks/ctr_side_by_side.py [--paddle-python /tmp/paddle-venv/bin/python]
        [--train-lines 200000] [--test-lines 50000] [--repeat 2] [--threads 1 2]

Prints, per framework and thread count, the medians of: training examples/s, the
load / local_shuffle / feed / infer seconds, the examples the auc state counted (must be
every example) and the test AUC; then the ratios: fleetkit thread=2 / thread=1,
fleetkit / Paddle at each thread count, load / shuffle / feed / infer time ratios.
Paddle setup (its own venv, outside the repo):

    python -m venv /tmp/paddle-venv && /tmp/paddle-venv/bin/pip install \\
        "paddlepaddle==2.6.2" "protobuf>=3.20.2,<5" "numpy<2"
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
N_SPARSE, N_DENSE, TABLE = 26, 13, 1_000_000


def write_lines(path: str, n: int, seed: int) -> None:
    """``n`` MultiSlot lines: label, 13 dense floats, 26 one-id slots (ids Zipf-like over
    the 1e6 table, label drawn from a logistic of hidden per-id and dense weights)."""
    w_id = np.random.default_rng(0).normal(0, 0.7, TABLE)
    w_dense = np.random.default_rng(1).normal(0, 1.0, N_DENSE)
    rng = np.random.default_rng(seed)
    ids = np.minimum(rng.zipf(1.3, (n, N_SPARSE)) - 1 + rng.integers(0, 50, (n, N_SPARSE)) * 20000,
                     TABLE - 1)
    dense = rng.random((n, N_DENSE)).astype(np.float32)
    logit = w_id[ids].sum(axis=1) / np.sqrt(N_SPARSE) + (dense - 0.5) @ w_dense
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    with open(path, "w") as f:
        for i in range(n):
            f.write(f"1 {label[i]} {N_DENSE} " + " ".join(f"{v:.4f}" for v in dense[i]) + " "
                    + " ".join(f"1 {v}" for v in ids[i]) + "\n")


def make_data(directory: str, train_lines: int, test_lines: int) -> tuple[list[str], str]:
    """Two training files and one test file, reused while their line counts match."""
    os.makedirs(directory, exist_ok=True)
    stamp = os.path.join(directory, f"stamp-{train_lines}-{test_lines}")
    train = [os.path.join(directory, f"train-{i}") for i in range(2)]
    test = os.path.join(directory, "test")
    if not os.path.exists(stamp):
        for old in Path(directory).glob("stamp-*"):
            old.unlink()  # the files are about to hold other line counts
        for i, p in enumerate(train):
            write_lines(p, train_lines // 2, 10 + i)
        write_lines(test, test_lines, 99)
        Path(stamp).touch()
    return train, test


def run_job(python: str, framework: str, train: list[str], test: str, thread: int, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [python, str(HERE / "_ctr_job.py"), "--framework", framework, "--train", *train, "--test", test,
           "--thread", str(thread)]
    # cwd: Paddle writes <id>_train_desc.prototxt files into its working directory
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=os.path.dirname(test))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{framework} thread={thread} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summarize(runs: dict, train_lines: int, test_lines: int) -> dict:
    """Medians per (framework, thread) and the ratios the issue asks for."""
    s = {}
    for (fw, th), rs in runs.items():
        s[fw, th] = {"train_ex_s": train_lines / _median(rs, "train_s"),
                     "cpu_ms_per_1k": 1e6 * _median(rs, "train_cpu_s") / train_lines,
                     **{k: _median(rs, k) for k in ("load_s", "local_shuffle_s", "feed_s", "infer_s", "train_auc",
                                                    "test_auc")},
                     "train_counted": min(r["train_counted"] for r in rs),
                     "test_counted": min(r["test_counted"] for r in rs)}
    return s


def print_report(s: dict, threads: list[int], train_lines: int, test_lines: int) -> None:
    print(f"{'run':<16}{'train ex/s':>11}{'CPU ms/1k ex':>13}{'load s':>8}{'shuffle s':>10}{'feed s':>8}{'infer s':>9}"
          f"{'counted train':>15}{'counted test':>14}{'test AUC':>9}")
    for (fw, th), m in sorted(s.items()):
        print(f"{fw + ' t=' + str(th):<16}{m['train_ex_s']:>11.0f}{m['cpu_ms_per_1k']:>13.0f}{m['load_s']:>8.2f}"
              f"{m['local_shuffle_s']:>10.3f}{m['feed_s']:>8.2f}"
              f"{m['infer_s']:>9.2f}{m['train_counted']:>9}/{train_lines:<6}{m['test_counted']:>8}/{test_lines:<6}"
              f"{m['test_auc']:>8.4f}")
    fk = {th: s[k] for k in s if k[0] == "fleetkit" for th in [k[1]]}
    if 1 in fk:
        for th in threads:
            if th != 1 and th in fk:
                print(f"fleetkit thread={th} / thread=1 examples/s: {fk[th]['train_ex_s'] / fk[1]['train_ex_s']:.2f}x "
                      f"(CPU per example thread={th} / thread=1: {fk[th]['cpu_ms_per_1k'] / fk[1]['cpu_ms_per_1k']:.2f}: "
                      f"near 1 means the workers add no work, so on {th} idle cores the rate scales ~{th}x); "
                      f"test AUC difference {abs(fk[th]['test_auc'] - fk[1]['test_auc']):.4f}")
    for th in threads:
        pd = s.get(("paddle", th))
        if pd is None or th not in fk:
            continue
        f = fk[th]
        print(f"thread={th}: fleetkit / Paddle training examples/s {f['train_ex_s'] / pd['train_ex_s']:.2f}x; "
              f"time ratios (fleetkit / Paddle, <= 1 is as fast or faster): "
              f"load_into_memory {f['load_s'] / pd['load_s']:.2f}, local_shuffle "
              f"{f['local_shuffle_s'] / pd['local_shuffle_s']:.2f}, in-memory feed {f['feed_s'] / pd['feed_s']:.2f}, "
              f"infer_from_dataset {f['infer_s'] / pd['infer_s']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paddle-python", help="python of a virtualenv with paddlepaddle==2.6.2")
    ap.add_argument("--train-lines", type=int, default=200_000)
    ap.add_argument("--test-lines", type=int, default=50_000)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dir", default="/tmp/fk_ctr_side_by_side")
    ap.add_argument("--timeout", type=float, default=1800)
    a = ap.parse_args()
    train, test = make_data(a.dir, a.train_lines, a.test_lines)
    frameworks = [("fleetkit", sys.executable)] + ([("paddle", a.paddle_python)] if a.paddle_python else [])
    print(f"CTR job: {a.train_lines} training / {a.test_lines} test lines, cores: {os.cpu_count()}, "
          f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    runs: dict = {}
    for rnd in range(a.repeat):
        for th in a.threads:
            for fw, py in frameworks:  # interleaved: fleetkit, Paddle, fleetkit, ...
                r = run_job(py, fw, train, test, th, a.timeout)
                runs.setdefault((fw, th), []).append(r)
                print(f"round {rnd + 1} {fw} thread={th}: train {r['train_s']:.2f} s ({r['train_cpu_s']:.1f} CPU s), "
                      f"feed {r['feed_s']:.2f} s, infer {r['infer_s']:.2f} s, "
                      f"counted {r['train_counted']}/{a.train_lines}", flush=True)
    print_report(summarize(runs, a.train_lines, a.test_lines), a.threads, a.train_lines, a.test_lines)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
