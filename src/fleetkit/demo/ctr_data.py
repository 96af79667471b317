"""Synthetic click data whose labels depend on the features: the one definition (issue 14)
shared by ``fleetkit demo``, ``examples/ctr``, the tests and the benchmarks.

Each example has ``num_slots`` sparse slots (1..max_len ids each) and ``dense_dim``
dense floats.  A hidden "true" model gives every id a weight and the dense features a
weight vector; the click probability is sigmoid(sum over slots of the slot's id
weights / sqrt(its length) + dense term + bias) and the label is drawn from it.  So a
model that learns the id embeddings can reach a clearly-better-than-chance AUC, and the
best AUC is bounded by the label noise, like real CTR data.  Two hidden models:

- ``CTRData`` (the demo's): ids drawn with a Zipf-like skew, id weights hashed from
  (seed, id) so a huge id space costs no memory, normal dense features, bias -0.3;
- ``UniformCTRData`` (the small test sets'): ids uniform, id weights one drawn table,
  dense features uniform in [0, 1), no bias.

Slot s uses ids [s * vocab, (s + 1) * vocab), the numbering of one table shared by the
slots.  Two MultiSlot line layouts: ``write_multislot`` (slots, dense vector, label: the
shared-table model of ``ctr_model.build``) and the per-slot layout (label, one slot per
dense column, slots numbered from 0 each: ``ctr_model.build_per_slot``, one table per
slot).  Everything is a pure function of the seeds: the same (data seed, example range)
gives the same examples in every process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

__all__ = ["CTRConfig", "CTRData", "UniformCTRData", "auc", "write_click_log"]


@dataclass(frozen=True)
class CTRConfig:
    num_slots: int = 3
    vocab: int = 10_000         # ids per slot; slot s uses ids [s * vocab, (s + 1) * vocab)
    max_len: int = 4            # ids per slot per example: 1..max_len
    dense_dim: int = 4
    seed: int = 2026            # the hidden model

    @property
    def table_rows(self) -> int:
        """Rows of one shared embedding table covering every slot's ids."""
        return self.num_slots * self.vocab


def _pooled(weights: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per example: the sum of its ids' weights over sqrt(its length) (one slot)."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return np.add.reduceat(weights, offsets[:-1]) / np.sqrt(lengths)


def _clicks(rng: np.random.Generator, logit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The click probability of each logit and a label drawn from it, shape (n, 1)."""
    prob = 1.0 / (1.0 + np.exp(-logit))
    return prob, (rng.random(len(logit)) < prob).astype(np.int64).reshape(-1, 1)


def _segments(flat: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return [flat[offsets[i]:offsets[i + 1]] for i in range(len(lengths))]


class CTRData:
    """The demo's hidden model plus a deterministic example generator."""

    def __init__(self, cfg: CTRConfig = CTRConfig()) -> None:
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        self.dense_weight = rng.normal(0.0, 1.0, cfg.dense_dim)
        self.bias = -0.3

    def id_weight(self, ids: np.ndarray) -> np.ndarray:
        """The hidden weight of each id: a standard normal that is a pure function of
        (seed, id), so a 10^9-id space costs no memory."""
        x = np.asarray(ids, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(self.cfg.seed)
        u = []
        for salt in (np.uint64(0x632BE59BD9B4E019), np.uint64(0x85157AF5)):
            z = x ^ salt
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
            u.append(((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53)
        return np.sqrt(-2.0 * np.log(u[0])) * np.cos(2.0 * np.pi * u[1])  # Box-Muller

    def examples(self, n: int, seed: int) -> dict[str, Any]:
        """``n`` examples: {'ids': [slot] -> (flat ids, lengths), 'dense', 'label' (n, 1), 'prob'}."""
        cfg = self.cfg
        rng = np.random.default_rng(seed)
        lengths = rng.integers(1, cfg.max_len + 1, size=(cfg.num_slots, n))
        ids, logit = [], np.full(n, self.bias)
        for s in range(cfg.num_slots):
            total = int(lengths[s].sum())
            # skewed popularity: a few ids are frequent, most are rare (as in click logs)
            raw = np.minimum((rng.pareto(1.2, total) * 50).astype(np.int64), cfg.vocab - 1)
            # popularity rank -> id: a fixed permutation, so popular ids spread over the space
            flat = (raw * 2_654_435_761) % cfg.vocab + s * cfg.vocab
            logit += _pooled(self.id_weight(flat), lengths[s])
            ids.append((flat, lengths[s]))
        dense = rng.normal(0.0, 1.0, (n, cfg.dense_dim)).astype(np.float32)
        logit += dense @ self.dense_weight * 0.5
        prob, label = _clicks(rng, logit)
        return {"ids": ids, "dense": dense, "label": label, "prob": prob}

    def batches(self, n_batches: int, batch_size: int, seed: int) -> Iterator[dict[str, Any]]:
        """Feed dicts for ``ctr_model`` (slot names ``slot0``...); batch i depends on (seed, i) only."""
        for i in range(n_batches):
            yield self.feed(self.examples(batch_size, seed * 1_000_003 + i))

    def feed(self, ex: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for s, (flat, lengths) in enumerate(ex["ids"]):
            out[f"slot{s}"] = (flat.reshape(-1, 1), [lengths.tolist()])
        out["dense"] = ex["dense"]
        out["label"] = ex["label"]
        return out

    @staticmethod
    def concat(parts: list[dict[str, Any]]) -> dict[str, Any]:
        """One set of examples from several (e.g. every trainer's batch = the global batch)."""
        ids = [(np.concatenate([p["ids"][s][0] for p in parts]), np.concatenate([p["ids"][s][1] for p in parts]))
               for s in range(len(parts[0]["ids"]))]
        return {"ids": ids, **{k: np.concatenate([p[k] for p in parts]) for k in ("dense", "label", "prob")}}

    def write_multislot(self, path: str, n: int, seed: int) -> None:
        """``n`` examples in the MultiSlot text format (slots, then dense, then label)."""
        ex = self.examples(n, seed)
        cols = [_segments(flat, lengths) for flat, lengths in ex["ids"]]
        with open(path, "w") as f:
            for i in range(n):
                parts = [f"{len(c[i])} " + " ".join(map(str, c[i])) for c in cols]
                parts.append(f"{self.cfg.dense_dim} " + " ".join(f"{v:.6g}" for v in ex["dense"][i]))
                parts.append(f"1 {int(ex['label'][i, 0])}")
                f.write(" ".join(parts) + "\n")

    def per_slot_columns(self, n: int, seed: int) -> dict[str, Any]:
        """``n`` examples as the per-slot layout holds them: 'label' (n,), 'dense' (n, dense_dim),
        per slot 'ids' (numbered from 0 in each slot) and 'lens'."""
        ex = self.examples(n, seed)
        return {"label": ex["label"].reshape(-1), "dense": ex["dense"],
                "ids": [flat - s * self.cfg.vocab for s, (flat, _) in enumerate(ex["ids"])],
                "lens": [lengths for _, lengths in ex["ids"]]}

    def per_slot_lines(self, n: int, seed: int) -> list[str]:
        """``n`` examples as MultiSlot lines of the per-slot layout: label, one slot per dense
        column, then the sparse slots (a plain loop: test-sized data)."""
        d = self.per_slot_columns(n, seed)
        cols = [_segments(ids, lens) for ids, lens in zip(d["ids"], d["lens"])]
        lines = []
        for i in range(n):
            parts = [f"1 {d['label'][i]}"] + [f"1 {x:.6f}" for x in d["dense"][i]]
            parts += [f"{len(c[i])} " + " ".join(map(str, c[i].tolist())) for c in cols]
            lines.append(" ".join(parts))
        return lines

    def write_per_slot_files(self, directory: str, n_files: int, lines_per_file: int, seed: int = 0) -> list[str]:
        """``directory/part-0000k`` files of per-slot lines; file k holds examples of seed ``seed * 1000 + k``."""
        os.makedirs(directory, exist_ok=True)
        paths = []
        for k in range(n_files):
            path = os.path.join(directory, f"part-{k:05d}")
            with open(path, "w") as out:
                out.write("\n".join(self.per_slot_lines(lines_per_file, seed * 1000 + k)) + "\n")
            paths.append(path)
        return paths


class UniformCTRData(CTRData):
    """The small test sets' hidden model: each slot's ids are uniform over its vocab, their
    weights one table drawn from the seed, the dense features uniform in [0, 1) (centred
    in the logit), no bias.  Same examples, feeds and files as ``CTRData``."""

    def __init__(self, cfg: CTRConfig = CTRConfig()) -> None:
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        self.table = rng.normal(0, 1.0, (cfg.num_slots, cfg.vocab))  # [slot, id within the slot]
        self.dense_weight = rng.normal(0, 1.0, cfg.dense_dim)
        self.bias = 0.0

    def id_weight(self, ids: np.ndarray) -> np.ndarray:
        return self.table.reshape(-1)[np.asarray(ids)]

    def examples(self, n: int, seed: int) -> dict[str, Any]:
        cfg = self.cfg
        rng = np.random.default_rng(seed)
        dense = rng.random((n, cfg.dense_dim)).astype(np.float32)
        logit = (dense - 0.5) @ self.dense_weight
        ids = []
        for s in range(cfg.num_slots):
            lengths = rng.integers(1, cfg.max_len + 1, n)
            flat = rng.integers(0, cfg.vocab, int(lengths.sum())) + s * cfg.vocab
            logit += _pooled(self.id_weight(flat), lengths)
            ids.append((flat, lengths))
        prob, label = _clicks(rng, logit)
        return {"ids": ids, "dense": dense, "label": label, "prob": prob}


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic, ties averaged)."""
    labels = np.asarray(labels).reshape(-1).astype(bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    uniq, start = np.unique(sorted_scores, return_index=True)
    ends = np.append(start[1:], len(scores))
    avg = (start + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - start)
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return 0.5
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def write_click_log(data: CTRData, path: str, n: int, seed: int) -> None:
    """``n`` examples as a raw click log, one tab-separated line each:
    ``click, dense floats (comma list), then one space-separated id list per slot``.
    ``fleetkit.demo.reader`` (a ``DataGenerator``) turns it into MultiSlot lines."""
    ex = data.examples(n, seed)
    cols = [[" ".join(map(str, ids.tolist())) for ids in _segments(flat, lengths)] for flat, lengths in ex["ids"]]
    with open(path, "w") as f:
        for i in range(n):
            dense = ",".join(f"{v:.6g}" for v in ex["dense"][i])
            f.write("\t".join([str(int(ex["label"][i, 0])), dense] + [c[i] for c in cols]) + "\n")
