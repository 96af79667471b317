"""Collective (all-reduce) training run by the operator's pods; ``--dgc`` uses DGCMomentum.

Role from PaddleCloudRoleMaker(is_collective=True): PADDLE_TRAINER_ENDPOINTS are
the pods' stable DNS names.  Each worker trains on its own shard; at the end it
prints ``params <checksum>``: equal on every worker only if the all-reduces ran.
"""
from __future__ import annotations

import hashlib
import sys

import numpy as np

import fleetkit as fk
from fleetkit import fleet, layers
from fleetkit.fleet import DistributedStrategy, PaddleCloudRoleMaker

STEPS, BATCH = 10, 16


def main() -> None:
    fleet.init(PaddleCloudRoleMaker(is_collective=True))
    x = layers.data("x", [12])
    label = layers.data("label", [1], dtype="int64")
    predict = layers.fc(layers.fc(x, 16, act="tanh"), 5, act="softmax")
    loss = layers.mean(layers.cross_entropy(predict, label))
    opt = fk.optimizer.DGCMomentumOptimizer(0.1, momentum=0.9, rampup_begin_step=0) if "--dgc" in sys.argv \
        else fk.optimizer.SGD(0.5)
    fleet.distributed_optimizer(opt, DistributedStrategy()).minimize(loss)
    exe = fk.Executor(fk.CPUPlace())
    fleet.init_worker()
    exe.run(fleet.startup_program)
    rank = fleet.worker_index()
    rng = np.random.default_rng(rank)
    for step in range(STEPS):
        xs = rng.standard_normal((BATCH, 12)).astype("float32")
        (lv,) = exe.run(fleet.main_program, feed={"x": xs, "label": (xs[:, :1] > 0).astype("int64")},
                        fetch_list=[loss])
        print(f"worker {rank} step {step} loss {float(np.asarray(lv).reshape(-1)[0]):.4f}", flush=True)
    scope = fk.global_scope()
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(scope.numpy(p.name)).tobytes()
                                     for p in fleet.main_program.all_parameters())).hexdigest()[:16]
    print(f"worker {rank} params {digest}", flush=True)
    fleet.stop_worker()


if __name__ == "__main__":
    main()
