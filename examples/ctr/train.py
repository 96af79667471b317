"""Train the CTR example single-process or as one role of a parameter-server job.

    python examples/ctr/train.py --steps 200                      # single process
    fleetkit launch --server_num 2 --worker_num 2 examples/ctr/train.py --steps 200 --async

The model, data and training functions are ``fleetkit.demo`` (``ctr_model``,
``ctr_data``, ``ctr_train``), shared with ``fleetkit demo`` (the full pipeline:
click log files, DataGenerator, InMemoryDataset, global shuffle, AUC, inference
model), the tests and the benchmarks.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import fleetkit as fk
from fleetkit import fleet
from fleetkit.demo import ctr_model
from fleetkit.demo.ctr_data import CTRData
from fleetkit.demo.ctr_train import *  # noqa: F401,F403  (run_ps_role, train_local, ...: benchmarks load this file)
from fleetkit.demo.ctr_train import evaluate, run_ps_role, train_local


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch_size", type=int, default=128)
    ap.add_argument("--async", dest="sync", action="store_false")
    ap.add_argument("--distributed", action="store_true", help="is_distributed embedding table")
    args = ap.parse_args()
    cfg = {"sync": args.sync, "steps": args.steps, "batch_size": args.batch_size, "test_examples": 20000,
           "is_distributed": args.distributed}
    if os.environ.get("TRAINING_ROLE"):
        out = run_ps_role(fleet.PaddleCloudRoleMaker(), cfg)
        if out["role"] == "trainer":
            print(f"trainer {out['id']}: final loss {np.mean(out['losses'][-20:]):.4f}, "
                  f"{len(out['losses']) * args.batch_size / out['seconds']:.0f} examples/s"
                  + (f", test AUC {out['auc']:.4f}" if "auc" in out else ""))
        return
    data = CTRData()
    model = ctr_model.build(data.cfg)
    scope = fk.Scope()
    t0 = time.perf_counter()
    losses = train_local(model, data, args.steps, 1, args.batch_size, scope)
    dt = time.perf_counter() - t0
    print(f"single process: final loss {np.mean(losses[-20:]):.4f}, {args.steps * args.batch_size / dt:.0f} "
          f"examples/s, test AUC {evaluate(model.test_program, model.predict, data, 20000, scope):.4f}")


if __name__ == "__main__":
    main()
