"""PS-mode CTR training run by the operator's pods (2 pservers, 2 trainers in the e2e).

Reads its role from the PaddleCloud env the operator sets (PaddleCloudRoleMaker)
and the pservers' auth token from FLEETKIT_AUTH_TOKEN.  Each trainer streams
fresh synthetic click data (fleetkit.testing.ctr, a learnable signal); the AUC
is progressive validation: every batch of the second half is scored before the
model trains on it, so no score is on seen data.  Prints ``AUC <value>``.
"""
from __future__ import annotations

import time

T0 = time.monotonic()

import numpy as np  # noqa: E402

import fleetkit as fk  # noqa: E402
from fleetkit import fleet, layers  # noqa: E402
from fleetkit.fleet import PaddleCloudRoleMaker  # noqa: E402
from fleetkit.testing.ctr import CtrSpec, ctr_arrays  # noqa: E402

STEPS, BATCH, SPEC = 80, 64, CtrSpec(n_sparse=4, n_dense=4, vocab=50)


def build(spec: CtrSpec):
    label = layers.data("label", shape=[1], dtype="int64")
    dense = layers.data("dense", shape=[spec.n_dense], dtype="float32")
    slots = [layers.data(f"slot{i}", shape=[1], dtype="int64", lod_level=1) for i in range(spec.n_sparse)]
    pooled = [layers.sequence_pool(layers.embedding(s, size=[spec.vocab, 8], param_attr=f"emb{i}"), "sum")
              for i, s in enumerate(slots)]
    h = layers.fc(layers.concat(pooled + [dense], axis=1), 16, act="relu")
    predict = layers.fc(h, 2, act="softmax")
    loss = layers.mean(layers.cross_entropy(predict, label))
    strategy = fleet.DistributeTranspilerConfig(sync_mode=False)
    fleet.distributed_optimizer(fk.optimizer.Adagrad(0.1), strategy).minimize(loss)
    return loss, predict


def batch(step: int, trainer: int) -> dict:
    d = ctr_arrays(SPEC, BATCH, seed=1000 * trainer + step)
    feed = {"label": d["label"].reshape(-1, 1), "dense": d["dense"]}
    for i, (ids, lens) in enumerate(zip(d["ids"], d["lens"])):
        feed[f"slot{i}"] = (ids.reshape(-1, 1), [lens.tolist()])
    return feed


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by ranks (Mann-Whitney U)."""
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="mergesort")] = np.arange(1, len(scores) + 1)
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def main() -> None:
    fleet.init(PaddleCloudRoleMaker())
    loss, predict = build(SPEC)
    if fleet.is_server():
        fleet.init_server()
        print(f"pserver {fleet.server_index()} serving", flush=True)
        fleet.run_server()
        print("pserver done", flush=True)
        return
    exe = fk.Executor(fk.CPUPlace())
    print(f"trainer {fleet.worker_index()} built at {time.monotonic() - T0:.1f} s", flush=True)
    fleet.init_worker()
    exe.run(fleet.startup_program)
    tid, labels, scores = fleet.worker_index(), [], []
    for step in range(STEPS):
        feed = batch(step, tid)
        loss_v, prob = exe.run(fleet.main_program, feed=feed, fetch_list=[loss, predict])
        if step >= STEPS // 2:
            labels.append(feed["label"].reshape(-1))
            scores.append(np.asarray(prob)[:, 1])
        if step % 20 == 0:
            print(f"trainer {tid} step {step} loss {float(np.asarray(loss_v).reshape(-1)[0]):.4f} "
                  f"at {time.monotonic() - T0:.1f} s", flush=True)
    print(f"trainer {tid} AUC {auc(np.concatenate(labels), np.concatenate(scores)):.4f}", flush=True)
    fleet.stop_worker()


if __name__ == "__main__":
    main()
