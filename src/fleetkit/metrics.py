"""``fluid.metrics``: metrics accumulated in Python over the batches of a pass.

Each metric keeps running state; ``update`` adds one batch (numpy values, usually
fetched from ``Executor.run``), ``eval`` returns the value so far, ``reset`` starts over::

    acc = fluid.metrics.Accuracy()
    for batch in reader():
        a, = exe.run(feed=..., fetch_list=[batch_acc])
        acc.update(value=a, weight=len(batch))
    print(acc.eval())
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np

from .errors import InvalidArgumentError

__all__ = ["MetricBase", "CompositeMetric", "Precision", "Recall", "Accuracy", "ChunkEvaluator", "EditDistance",
           "Auc"]


def _array(value: Any, what: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise InvalidArgumentError(f"{what} must be numeric, got dtype {arr.dtype}")
    return arr


def _scalar(value: Any, what: str) -> float:
    arr = _array(value, what)
    if arr.size != 1:
        raise InvalidArgumentError(f"{what} must be a single number, got shape {list(arr.shape)}")
    return float(arr.reshape(()))


class MetricBase:
    """Base of the metrics: state lives in public attributes not starting with ``_``."""

    def __init__(self, name: str | None = None) -> None:
        self._name = str(name) if name is not None else type(self).__name__

    def reset(self) -> None:
        """Set every state attribute back to zero (of its own type)."""
        for attr, value in self.__dict__.items():
            if attr.startswith("_"):
                continue
            if isinstance(value, np.ndarray):
                setattr(self, attr, np.zeros_like(value))
            elif isinstance(value, (int, float, np.number)):
                setattr(self, attr, type(value)(0))
            else:
                setattr(self, attr, None)

    def get_config(self) -> dict[str, Any]:
        """Name and a copy of the state."""
        states = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if not k.startswith("_")}
        return {"name": self._name, "states": states}

    def update(self, preds: Any, labels: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__}.update")

    def eval(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.eval")


class CompositeMetric(MetricBase):
    """Several metrics updated with the same ``(preds, labels)``; ``eval`` returns their values."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self._metrics: list[MetricBase] = []

    def add_metric(self, metric: MetricBase) -> None:
        if not isinstance(metric, MetricBase):
            raise InvalidArgumentError(f"CompositeMetric.add_metric: expected a MetricBase, got {metric!r}")
        self._metrics.append(metric)

    def update(self, preds: Any, labels: Any) -> None:
        for m in self._metrics:
            m.update(preds, labels)

    def reset(self) -> None:
        for m in self._metrics:
            m.reset()

    def eval(self) -> list[Any]:
        return [m.eval() for m in self._metrics]


def _binary(preds: Any, labels: Any, who: str) -> tuple[np.ndarray, np.ndarray]:
    p = _array(preds, f"{who}.update: preds").reshape(-1)
    y = _array(labels, f"{who}.update: labels").reshape(-1)
    if p.shape != y.shape:
        raise InvalidArgumentError(f"{who}.update: {p.size} predictions but {y.size} labels")
    return (p + 0.5).astype(np.int64) >= 1, y.astype(np.int64) == 1  # predictions rounded, as in fluid


class Precision(MetricBase):
    """Binary precision: true positives / predicted positives (predictions rounded at 0.5)."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.tp = 0
        self.fp = 0

    def update(self, preds: Any, labels: Any) -> None:
        p, y = _binary(preds, labels, "Precision")
        self.tp += int(np.sum(p & y))
        self.fp += int(np.sum(p & ~y))

    def eval(self) -> float:
        ap = self.tp + self.fp
        return float(self.tp) / ap if ap else 0.0


class Recall(MetricBase):
    """Binary recall: true positives / actual positives (predictions rounded at 0.5)."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.tp = 0
        self.fn = 0

    def update(self, preds: Any, labels: Any) -> None:
        p, y = _binary(preds, labels, "Recall")
        self.tp += int(np.sum(p & y))
        self.fn += int(np.sum(~p & y))

    def eval(self) -> float:
        pos = self.tp + self.fn
        return float(self.tp) / pos if pos else 0.0


class Accuracy(MetricBase):
    """Weighted mean of per-batch accuracies: ``update(value=batch_acc, weight=batch_size)``."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.value = 0.0
        self.weight = 0.0

    def update(self, value: Any, weight: Any) -> None:
        w = _scalar(weight, "Accuracy.update: weight")
        if w < 0:
            raise InvalidArgumentError(f"Accuracy.update: weight must be >= 0, got {w}")
        self.value += _scalar(value, "Accuracy.update: value") * w
        self.weight += w

    def eval(self) -> float:
        if self.weight == 0:
            raise InvalidArgumentError("Accuracy.eval: no batch was added (update) since the last reset")
        return self.value / self.weight


class ChunkEvaluator(MetricBase):
    """Precision, recall and F1 over chunks, from the counts ``layers.chunk_eval`` returns."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.num_infer_chunks = 0
        self.num_label_chunks = 0
        self.num_correct_chunks = 0

    def update(self, num_infer_chunks: Any, num_label_chunks: Any, num_correct_chunks: Any) -> None:
        counts = [_scalar(v, f"ChunkEvaluator.update: {n}") for n, v in (
            ("num_infer_chunks", num_infer_chunks), ("num_label_chunks", num_label_chunks),
            ("num_correct_chunks", num_correct_chunks))]
        if any(c < 0 for c in counts):
            raise InvalidArgumentError(f"ChunkEvaluator.update: counts must be >= 0, got {counts}")
        self.num_infer_chunks += int(counts[0])
        self.num_label_chunks += int(counts[1])
        self.num_correct_chunks += int(counts[2])

    def eval(self) -> tuple[float, float, float]:
        precision = self.num_correct_chunks / self.num_infer_chunks if self.num_infer_chunks else 0.0
        recall = self.num_correct_chunks / self.num_label_chunks if self.num_label_chunks else 0.0
        f1 = 2 * precision * recall / (precision + recall) if self.num_correct_chunks else 0.0
        return float(precision), float(recall), float(f1)


class EditDistance(MetricBase):
    """Average edit distance and the fraction of sequences with a nonzero distance."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.total_distance = 0.0
        self.seq_num = 0
        self.instance_error = 0

    def update(self, distances: Any, seq_num: Any) -> None:
        d = _array(distances, "EditDistance.update: distances").reshape(-1)
        n = int(_scalar(seq_num, "EditDistance.update: seq_num"))
        if n != d.size:
            raise InvalidArgumentError(f"EditDistance.update: seq_num={n} but {d.size} distances")
        self.total_distance += float(d.sum())
        self.seq_num += n
        self.instance_error += int(np.count_nonzero(d))

    def eval(self) -> tuple[float, float]:
        if self.seq_num == 0:
            raise InvalidArgumentError("EditDistance.eval: no sequence was added (update) since the last reset")
        return self.total_distance / self.seq_num, self.instance_error / self.seq_num


class Auc(MetricBase):
    """Area under the ROC curve from bucketed positive/negative counts.

    ``update(preds, labels)`` takes ``preds`` of shape [N, 2] (column 1 is the positive
    class probability, the softmax output of a binary classifier) or [N] / [N, 1].
    """

    def __init__(self, name: str | None = None, curve: str = "ROC", num_thresholds: int = 4095) -> None:
        super().__init__(name)
        if curve != "ROC":
            raise InvalidArgumentError(f"Auc: curve={curve!r}; only 'ROC' is supported")
        if int(num_thresholds) < 1:
            raise InvalidArgumentError(f"Auc: num_thresholds must be >= 1, got {num_thresholds}")
        self._curve = curve
        self._num_thresholds = int(num_thresholds)
        self._stat_pos = np.zeros(self._num_thresholds + 1, np.int64)
        self._stat_neg = np.zeros(self._num_thresholds + 1, np.int64)

    def reset(self) -> None:
        self._stat_pos[:] = 0
        self._stat_neg[:] = 0

    def update(self, preds: Any, labels: Any) -> None:
        p = _array(preds, "Auc.update: preds")
        p = p[:, 1] if p.ndim == 2 and p.shape[1] == 2 else p.reshape(-1)
        y = _array(labels, "Auc.update: labels").reshape(-1)
        if p.size != y.size:
            raise InvalidArgumentError(f"Auc.update: {p.size} predictions but {y.size} labels")
        if p.size and (p.min() < 0 or p.max() > 1):
            raise InvalidArgumentError("Auc.update: predictions must be probabilities in [0, 1]")
        bins = (p * self._num_thresholds).astype(np.int64)
        pos = y.astype(np.int64) == 1
        self._stat_pos += np.bincount(bins[pos], minlength=self._num_thresholds + 1)
        self._stat_neg += np.bincount(bins[~pos], minlength=self._num_thresholds + 1)

    def eval(self) -> float:
        # walk the buckets from the highest score down: each adds a trapezoid to the ROC area
        pos = self._stat_pos[::-1].astype(np.float64)
        neg = self._stat_neg[::-1].astype(np.float64)
        tp = np.cumsum(pos)
        fp = np.cumsum(neg)
        tp_prev = np.concatenate([[0.0], tp[:-1]])
        fp_prev = np.concatenate([[0.0], fp[:-1]])
        area = float(np.sum((fp - fp_prev) * (tp + tp_prev) / 2.0))
        total = tp[-1] * fp[-1]
        return area / total if total > 0 else 0.0
