"""``fleetkit demo``: a whole distributed CTR job on this host, from data to a served model.

1. writes a deterministic synthetic click log (skewed sparse ids, dense features,
   labels drawn from a hidden model of both) as raw files: 4 training parts and
   a held-out part;
2. launches 2 pservers + 2 trainers (``--mode collective``: 2 all-reduce trainers)
   with ``fleetkit launch``: each trainer reads its parts through the
   ``DataGenerator`` pipe command into an ``InMemoryDataset``, shuffles globally,
   trains the wide&deep model (distributed sparse embeddings) with
   ``train_from_dataset``; the launcher prints a progress line per period;
3. trainer 0 scores the held-out part and saves an inference model, which is then
   loaded and run in a fresh process;
4. prints a summary table and leaves ``metrics.jsonl``, ``metrics.png``,
   ``summary.txt``, ``result.json``, ``model/`` and ``logs/`` in the output directory.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from ..fleet.launch import run_job
from ..fleet.launch_plan import JobSpec
from .ctr_data import CTRData, write_click_log

__all__ = ["add_demo_parser", "run_demo"]

TRAIN_PARTS, TEST_SEED = 4, 999_999
#: seconds the whole launched job may take before it is stopped (``--timeout``)
JOB_TIMEOUT_S = 600.0


def write_data(directory: str, train_examples: int, test_examples: int) -> None:
    """The click log: ``train/part-0000{0..3}`` and ``test/part-00000`` (same bytes every run)."""
    from .job import DATA
    data = CTRData(DATA)
    for sub in ("train", "test"):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    for part in range(TRAIN_PARTS):
        write_click_log(data, os.path.join(directory, "train", f"part-{part:05d}"),
                        train_examples // TRAIN_PARTS, seed=part)
    write_click_log(data, os.path.join(directory, "test", "part-00000"), test_examples, seed=TEST_SEED)


def _records(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot(records: list[dict[str, Any]], path: str) -> bool:
    """Loss and AUC against time, one line per trainer (False when matplotlib is missing)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(10, 4))
    for worker in sorted({r["worker"] for r in records}):
        mine = [r for r in records if r["worker"] == worker]
        ts = [r["t"] for r in mine]
        line, = ax_loss.plot(ts, [r["test_loss"] for r in mine], marker="o", label=f"{worker} held-out")
        ax_auc.plot(ts, [r["test_auc"] for r in mine], marker="o", color=line.get_color(), label=f"{worker} held-out")
        ax_auc.plot(ts, [r["auc"] for r in mine], linestyle="--", color=line.get_color(),
                    label=f"{worker} training (streaming)")
    for ax, what in ((ax_loss, "log loss"), (ax_auc, "AUC")):
        ax.set_xlabel("seconds since launch")
        ax.set_title(f"{what}, after each epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def summary_table(records: list[dict[str, Any]], result: dict[str, Any], served: dict[str, Any],
                  wall: float) -> str:
    """The closing table: each trainer's last epoch, then the held-out and served AUC."""
    rows = [f"{'trainer':<10}{'epochs':>7}{'steps':>8}{'examples':>10}{'ex/s':>9}{'loss':>9}{'train AUC':>11}"
            f"{'held-out AUC':>14}"]
    for worker in sorted({r["worker"] for r in records}):
        last = [r for r in records if r["worker"] == worker][-1]
        rate = last["examples"] / max(last["seconds"], 1e-9)
        rows.append(f"{worker:<10}{last['epoch']:>7}{last['step']:>8}{last['examples']:>10}{rate:>9.0f}"
                    f"{last['loss']:>9.4f}{last['auc']:>11.4f}{last['test_auc']:>14.4f}")
    rows.append(f"held-out AUC (trainer 0, {result.get('test_examples', 0)} examples): "
                f"{result.get('test_auc', float('nan')):.4f}")
    rows.append(f"inference model reloaded in a fresh process: AUC {served.get('auc', float('nan')):.4f}")
    rows.append(f"wall time {wall:.1f} s")
    return "\n".join(rows)


def upload(data_dir: str, url: str, endpoint: str | None) -> str:
    """Copy the training parts to ``url``/train (``s3://bucket/prefix``); returns that URL."""
    import fsspec

    from .job import s3_options
    fs, path = fsspec.core.url_to_fs(url, **s3_options(endpoint))
    for name in sorted(os.listdir(os.path.join(data_dir, "train"))):
        fs.put_file(os.path.join(data_dir, "train", name), f"{path.rstrip('/')}/train/{name}")
    return url.rstrip("/") + "/train"


def run_demo(out: str, mode: str = "ps", dgc: bool = False, epochs: int = 3, train_examples: int = 96_000,
             test_examples: int = 8_000, progress_period: float = 5.0, data_url: str | None = None,
             s3_endpoint: str | None = None, timeout: float = JOB_TIMEOUT_S) -> int:
    """Run the whole demo into ``out``; returns the exit code (0: job and inference succeeded).

    ``data_url`` (``s3://bucket/prefix``): the training parts are uploaded there and the
    trainers read them from it (``s3_endpoint``: a non-AWS endpoint; credentials from the
    usual AWS_* variables)."""
    t0 = time.monotonic()
    out = os.path.abspath(out)
    data_dir = os.path.join(out, "data")
    os.makedirs(out, exist_ok=True)
    write_data(data_dir, train_examples, test_examples)
    metrics = os.path.join(out, "metrics.jsonl")
    for stale in ("result.json", "metrics.jsonl"):
        if os.path.exists(os.path.join(out, stale)):
            os.remove(os.path.join(out, stale))
    script = [sys.executable, "-u", "-m", "fleetkit.demo.job", "--data", data_dir, "--out", out, "--mode", mode,
              "--epochs", str(epochs)] + (["--dgc"] if dgc else [])
    if data_url:
        script += ["--train_url", upload(data_dir, data_url, s3_endpoint)]
        script += ["--s3_endpoint", s3_endpoint] if s3_endpoint else []
        print(f"fleetkit demo: training parts uploaded to {script[script.index('--train_url') + 1]}", flush=True)
    spec = JobSpec(script=script, server_num=2 if mode == "ps" else 0, worker_num=2, collective=mode != "ps",
                   log_dir=os.path.join(out, "logs"), timeout=timeout)
    code = run_job(spec, progress_period=progress_period, metrics_file=metrics)
    if code != 0:
        print(f"fleetkit demo: the job failed (exit code {code}); logs in {spec.log_dir}", file=sys.stderr)
        return code
    with open(os.path.join(out, "result.json")) as f:
        result = json.load(f)
    served = _serve(result["model_dir"], os.path.join(data_dir, "test", "part-00000"))
    records = _records(metrics)
    png = os.path.join(out, "metrics.png")
    if not plot(records, png):
        print("fleetkit demo: matplotlib is not installed (pip install -e '.[demo]'): no plot", file=sys.stderr)
    table = summary_table(records, result, served, time.monotonic() - t0)
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(table + "\n")
    print(table)
    print(f"fleetkit demo: outputs in {out} (metrics.jsonl, metrics.png, summary.txt, model/, logs/)")
    if not abs(served["auc"] - result["test_auc"]) < 1e-6:
        print(f"fleetkit demo: the reloaded model's AUC {served['auc']:.6f} differs from trainer 0's "
              f"{result['test_auc']:.6f}", file=sys.stderr)
        return 1
    return 0


def _serve(model_dir: str, log: str) -> dict[str, Any]:
    """Load and run the inference model in a fresh interpreter."""
    res = subprocess.run([sys.executable, "-m", "fleetkit.demo.infer", model_dir, log], capture_output=True,
                         text=True, timeout=120)
    if res.returncode != 0:
        print(f"fleetkit demo: the saved model did not load and run:\n{res.stderr[-3000:]}", file=sys.stderr)
        return {"auc": float("nan")}
    return json.loads(res.stdout.strip().splitlines()[-1])


def add_demo_parser(sub: Any) -> None:
    """The ``demo`` subcommand of the ``fleetkit`` CLI."""
    p = sub.add_parser("demo", help="run a distributed CTR job on this host (2 pservers + 2 trainers)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="fleetkit-demo", help="output directory (default ./fleetkit-demo)")
    p.add_argument("--mode", choices=("ps", "collective"), default="ps",
                   help="ps: parameter servers, async (default); collective: all-reduce data parallel")
    p.add_argument("--dgc", action="store_true", help="collective mode with Deep Gradient Compression")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train_examples", type=int, default=96_000)
    p.add_argument("--test_examples", type=int, default=8_000)
    p.add_argument("--progress_period", type=float, default=5.0, help="seconds between progress lines")
    p.add_argument("--data", default=None, metavar="URL",
                   help="upload the training parts to URL (s3://bucket/prefix) and have the trainers read them "
                        "from there (credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; pip install -e '.[s3]')")
    p.add_argument("--s3_endpoint", default=None, help="S3 endpoint URL for --data (SeaweedFS, MinIO, ...)")
    p.add_argument("--timeout", type=float, default=JOB_TIMEOUT_S,
                   help=f"stop the job after this many seconds (default {JOB_TIMEOUT_S:g})")
    p.set_defaults(func=lambda a: run_demo(a.out, "collective" if a.dgc else a.mode, a.dgc, a.epochs,
                                           a.train_examples, a.test_examples, a.progress_period, a.data,
                                           a.s3_endpoint, a.timeout))
