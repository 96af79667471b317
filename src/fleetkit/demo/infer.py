"""Load the demo's inference model in a fresh process and score a click log with it.

    python -m fleetkit.demo.infer DIR/model DIR/data/test/part-00000

Prints one JSON object: the AUC and the number of examples.
"""
from __future__ import annotations

import json
import sys

import fleetkit as fk

from .ctr_data import auc
from .job import read_click_log


def score(model_dir: str, log_path: str) -> dict[str, float]:
    """AUC of the saved model on a raw click-log file."""
    exe = fk.Executor(fk.CPUPlace())
    scope = fk.Scope()
    program, feed_names, targets = fk.io.load_inference_model(model_dir, exe, scope=scope)
    feed, labels = read_click_log(log_path)
    (prob,) = exe.run(program, feed={n: feed[n] for n in feed_names}, fetch_list=targets, scope=scope)
    return {"auc": auc(labels, prob[:, 1]), "examples": int(len(labels))}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m fleetkit.demo.infer MODEL_DIR CLICK_LOG")
    print(json.dumps(score(sys.argv[1], sys.argv[2])))
