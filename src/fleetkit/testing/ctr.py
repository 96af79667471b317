"""A small CTR-style model and synthetic click data with a learnable signal.

Used by the dataset tests and ``benchmarks/data_pipeline.py``: sparse id slots
(one embedding table per slot, sum-pooled), dense float slots, a label; each id
and each dense feature has a hidden weight and the label is drawn from the
logistic of their sum, so a model can learn it and AUC measures how well.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CtrSpec", "build_ctr_model", "ctr_lines", "write_ctr_files"]


@dataclass(frozen=True)
class CtrSpec:
    """Shape of the synthetic data: slot order in a line is label, dense_0.., sparse_0.."""

    n_sparse: int = 8
    n_dense: int = 4
    vocab: int = 100  # ids of a slot are 0..vocab-1
    max_ids: int = 3  # ids per sparse slot per instance: 1..max_ids
    seed: int = 7


def _hidden(spec: CtrSpec) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(spec.seed)
    return rng.normal(0, 1.0, (spec.n_sparse, spec.vocab)), rng.normal(0, 1.0, spec.n_dense)


def ctr_arrays(spec: CtrSpec, n: int, seed: int) -> dict[str, Any]:
    """``n`` instances as arrays: label (n,), dense (n, n_dense), per slot ids and lengths."""
    w_ids, w_dense = _hidden(spec)
    rng = np.random.default_rng(seed)
    dense = rng.random((n, spec.n_dense)).astype(np.float32)
    logit = (dense - 0.5) @ w_dense
    ids, lens = [], []
    for s in range(spec.n_sparse):
        ln = rng.integers(1, spec.max_ids + 1, n)
        v = rng.integers(0, spec.vocab, int(ln.sum()))
        owner = np.repeat(np.arange(n), ln)
        logit += np.bincount(owner, weights=w_ids[s, v], minlength=n) / np.sqrt(ln)
        ids.append(v)
        lens.append(ln)
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return {"label": label, "dense": dense, "ids": ids, "lens": lens}


def ctr_lines(spec: CtrSpec, n: int, seed: int) -> list[str]:
    """The instances of ``ctr_arrays`` as MultiSlot lines (a plain loop: test data only)."""
    d = ctr_arrays(spec, n, seed)
    offs = [np.concatenate([[0], np.cumsum(ln)]) for ln in d["lens"]]
    lines = []
    for i in range(n):
        parts = [f"1 {d['label'][i]}"] + [f"1 {x:.6f}" for x in d["dense"][i]]
        for s in range(spec.n_sparse):
            v = d["ids"][s][offs[s][i]:offs[s][i + 1]]
            parts.append(f"{len(v)} " + " ".join(map(str, v.tolist())))
        lines.append(" ".join(parts))
    return lines


def write_ctr_files(directory: str, spec: CtrSpec, n_files: int, lines_per_file: int, seed: int = 0) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    paths = []
    for f in range(n_files):
        path = os.path.join(directory, f"part-{f:05d}")
        with open(path, "w") as out:
            out.write("\n".join(ctr_lines(spec, lines_per_file, seed * 1000 + f)) + "\n")
        paths.append(path)
    return paths


def build_ctr_model(spec: CtrSpec, emb_dim: int = 8, hidden: int = 16, lr: float = 0.01,
                    opt: Any = None) -> dict[str, Any]:
    """Build the model into the default programs (``opt``: the optimizer, default Adam(lr));
    returns its variables.

    Keys: ``use_vars`` (label, dense_*, sparse_* in line order), ``loss``, ``predict``.
    """
    from .. import layers, optimizer
    label = layers.data("label", shape=[1], dtype="int64")
    dense = [layers.data(f"dense_{i}", shape=[1], dtype="float32") for i in range(spec.n_dense)]
    sparse = [layers.data(f"sparse_{i}", shape=[1], dtype="int64", lod_level=1) for i in range(spec.n_sparse)]
    pooled = []
    for i, ids in enumerate(sparse):
        emb = layers.embedding(ids, size=[spec.vocab, emb_dim], is_sparse=True, param_attr=f"emb_{i}")
        pooled.append(layers.sequence_pool(emb, "sum"))
    feats = layers.concat(pooled + dense, axis=1)
    h = layers.fc(feats, hidden, act="relu")
    predict = layers.fc(h, 2, act="softmax")
    loss = layers.mean(layers.cross_entropy(predict, label))
    (opt or optimizer.Adam(lr)).minimize(loss)
    return {"use_vars": [label] + dense + sparse, "loss": loss, "predict": predict}
