"""Async parameter-server CTR training, 2 pservers x 2 trainers, in fleetkit and (optionally)
PaddlePaddle 2.6.2 on the same job, runs interleaved (issue 15).

Job (``_ps_ctr_job.py``, model and data from ``_ctr_job.py`` / ``ctr_side_by_side.py``): 26
sparse slots sharing a 1e6 x 10 table held by the pservers (rows created on first touch,
updated there per row), 13 dense features, fc 256-128-64, batch 512, Adam 1e-3 (or
``--optimizer sgd``), each trainer ``train_from_dataset`` over its own ``InMemoryDataset``
file with ``--thread`` workers (``--fleetkit-table sliced``: fleetkit's table as dense
blocks sliced over the pservers instead, rows prefetched).  Every process is fresh, on 127.0.0.1, given its role
through PaddleCloudRoleMaker's environment variables; fleetkit uses
``DistributeTranspilerConfig(sync_mode=False)``, Paddle ``strategy.a_sync = True``.

    python benchmarks/ps_side_by_side.py [--paddle-python /tmp/paddle-venv/bin/python]
        [--train-lines 100000] [--test-lines 20000] [--repeat 3] [--thread 1]

Prints per run and, at the end, per framework (medians over ``--repeat`` rounds):
training examples/s (both trainers' lines / the slowest trainer's ``train_from_dataset``
time: process start-up, model build, data loading and the test pass excluded), the examples
each trainer's auc state counted, train and test AUC (trainer 0, after training, pservers
still up), then fleetkit / Paddle.  On 2 cores the 4 processes of a job share the cores,
and other load on the machine moves every figure: read the ratio, measured in the same run.
Paddle setup: see ``ctr_side_by_side.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ctr_side_by_side import make_data  # noqa: E402

N_PSERVERS, N_TRAINERS = 2, 2


def free_ports(n: int) -> list[int]:
    from fleetkit.testing import free_ports as fk_free_ports
    return fk_free_ports(n)


def role_envs(ports: list[int], pservers: int) -> list[tuple[str, dict]]:
    """(name, environment) of each process, one port each: the pservers first, then the trainers
    (Paddle's role maker wants POD_IP and PADDLE_PORT of trainers too)."""
    eps = ",".join(f"127.0.0.1:{p}" for p in ports[:pservers])
    common = {"PADDLE_PSERVERS_IP_PORT_LIST": eps, "PADDLE_TRAINERS_NUM": str(len(ports) - pservers),
              "POD_IP": "127.0.0.1"}
    envs = [(f"pserver.{i}", dict(common, TRAINING_ROLE="PSERVER", PADDLE_PORT=str(p)))
            for i, p in enumerate(ports[:pservers])]
    envs += [(f"trainer.{i}", dict(common, TRAINING_ROLE="TRAINER", PADDLE_TRAINER_ID=str(i), PADDLE_PORT=str(p)))
             for i, p in enumerate(ports[pservers:])]
    return envs


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


def run_ps_job(python: str, framework: str, train: list[str], test: str, a, log_dir: Path) -> list[dict]:
    """One 2x2 job; returns each trainer's RESULT.  Logs in ``log_dir/<framework>-<role>.log``."""
    base = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    procs = []
    try:
        for name, role_env in role_envs(free_ports(N_PSERVERS + N_TRAINERS), N_PSERVERS):
            tid = int(role_env.get("PADDLE_TRAINER_ID", 0))
            cmd = [python, str(HERE / "_ps_ctr_job.py"), "--framework", framework, "--train", train[tid],
                   "--test", test, "--thread", str(a.thread), "--optimizer", a.optimizer, "--lr", str(a.lr),
                   "--fleetkit-table", a.fleetkit_table]
            log = log_dir / f"{framework}-{name}.log"
            with open(log, "w") as out:
                # cwd: Paddle writes <id>_train_desc.prototxt files into its working directory;
                # own session: a hung job is stopped whole (Paddle's pservers start threads)
                procs.append((name, log, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                                          env=dict(base, **role_env), cwd=log_dir,
                                                          start_new_session=True)))
        deadline = time.monotonic() + a.timeout
        results = []
        for name, log, p in procs[N_PSERVERS:]:
            rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("RESULT ")]
            if rc != 0 or not lines:
                raise RuntimeError(f"{framework} {name} failed (rc {rc}, log {log}):\n{_tail(log)}")
            results.append(json.loads(lines[-1][len("RESULT "):]))
        if framework == "fleetkit":  # the trainers' stop_worker ends fleetkit's pservers
            for name, log, p in procs[:N_PSERVERS]:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    print(f"note: fleetkit {name} still running 15 s after the trainers ended; stopped it",
                          flush=True)
        # Paddle 2.6's pservers serve until stopped (its launcher stops them when the trainers
        # are done): the finally below does
        return results
    finally:
        for _name, _log, p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)  # its own session: only this job's processes
                p.wait()


def job_figures(results: list[dict], train_lines: int) -> dict:
    """One run: examples/s over the slowest trainer, counted examples, AUCs of trainer 0."""
    t0 = next(r for r in results if r["trainer"] == 0)
    return {"ex_s": train_lines / max(r["train_s"] for r in results),
            "counted": sum(r["train_counted"] for r in results), "train_auc": t0["train_auc"],
            "test_auc": t0["test_auc"], "test_counted": t0["test_counted"]}


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Medians per framework; counts as the minimum (every run must count every example)."""
    return {fw: {"ex_s": statistics.median(r["ex_s"] for r in rs),
                 "train_auc": statistics.median(r["train_auc"] for r in rs),
                 "test_auc": statistics.median(r["test_auc"] for r in rs),
                 "counted": min(r["counted"] for r in rs), "test_counted": min(r["test_counted"] for r in rs),
                 "runs": len(rs)} for fw, rs in runs.items()}


def report_lines(s: dict[str, dict], train_lines: int, test_lines: int) -> list[str]:
    out = [f"{'framework':<10}{'runs':>5}{'train ex/s':>12}{'counted train':>16}{'train AUC':>10}"
           f"{'counted test':>15}{'test AUC':>9}"]
    for fw in sorted(s):
        m = s[fw]
        out.append(f"{fw:<10}{m['runs']:>5}{m['ex_s']:>12.0f}{m['counted']:>9}/{train_lines:<6}"
                   f"{m['train_auc']:>10.4f}{m['test_counted']:>8}/{test_lines:<6}{m['test_auc']:>9.4f}")
    if "fleetkit" in s and "paddle" in s:
        fk, pd = s["fleetkit"], s["paddle"]
        out.append(f"async PS 2x2: fleetkit / Paddle training examples/s {fk['ex_s'] / pd['ex_s']:.2f}x "
                   f"(test AUC fleetkit - Paddle {fk['test_auc'] - pd['test_auc']:+.4f})")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paddle-python", help="python of a virtualenv with paddlepaddle==2.6.2")
    ap.add_argument("--train-lines", type=int, default=100_000, help="both trainers' lines (half each)")
    ap.add_argument("--test-lines", type=int, default=20_000)
    ap.add_argument("--thread", type=int, default=1, help="train_from_dataset threads per trainer")
    ap.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--fleetkit-table", choices=["distributed", "sliced"], default="distributed",
                    help="fleetkit's table: a pserver hash table as Paddle's (default), or sliced dense blocks")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; each runs fleetkit then Paddle")
    ap.add_argument("--dir", default="/tmp/fk_ps_side_by_side", help="data files and per-process logs")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per job")
    a = ap.parse_args(argv)
    if a.repeat < 1 or a.thread < 1 or a.train_lines < 2 * N_TRAINERS or a.test_lines < 1:
        ap.error(f"--repeat and --thread must be >= 1 and the line counts positive "
                 f"(got repeat {a.repeat}, thread {a.thread}, train {a.train_lines}, test {a.test_lines})")
    if a.paddle_python and not os.access(a.paddle_python, os.X_OK):
        ap.error(f"--paddle-python {a.paddle_python}: not an executable")
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    train, test = make_data(a.dir, a.train_lines, a.test_lines)
    log_dir = Path(a.dir) / "logs"
    log_dir.mkdir(exist_ok=True)
    frameworks = [("fleetkit", sys.executable)] + ([("paddle", a.paddle_python)] if a.paddle_python else [])
    print(f"async PS CTR job, {N_PSERVERS} pservers x {N_TRAINERS} trainers: {a.train_lines} training / "
          f"{a.test_lines} test lines, {a.optimizer} {a.lr}, thread={a.thread}, fleetkit table {a.fleetkit_table}, "
          f"cores: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    runs: dict[str, list[dict]] = {}
    for rnd in range(a.repeat):
        for fw, py in frameworks:  # interleaved: fleetkit, Paddle, fleetkit, ...
            results = run_ps_job(py, fw, train, test, a, log_dir)
            f = job_figures(results, a.train_lines)
            runs.setdefault(fw, []).append(f)
            print(f"round {rnd + 1} {fw}: {f['ex_s']:.0f} examples/s (trainers "
                  + ", ".join(f"{r['train_s']:.2f} s" for r in sorted(results, key=lambda r: r["trainer"]))
                  + f"), test AUC {f['test_auc']:.4f}", flush=True)
    for line in report_lines(summarize(runs), a.train_lines, a.test_lines):
        print(line)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
