"""The CTR models of ``ctr_data``'s synthetic clicks.

``build``: wide and deep. The deep part embeds every sparse slot (one table shared by
the slots, sqrt-pooled), concatenates the dense features and runs an MLP; the optional
wide part (``wide=True``) adds a learned per-id weight pair (a 2-wide embedding,
sum-pooled) to the deep logits before the 2-way softmax. It returns the programs and
variables; the same function builds the single-process model and the one the
DistributeTranspiler rewrites.

``build_per_slot``: the small model the dataset and trainer tests train on the per-slot
layout (one table per slot, sum-pooled, each dense column its own input, one hidden layer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import fleetkit as fk
from fleetkit import layers, optimizer

from .ctr_data import CTRConfig

__all__ = ["CTRModel", "build", "build_per_slot"]


@dataclass
class CTRModel:
    main: Any
    startup: Any
    feeds: list          # slot0..slotN-1, dense, label (data vars, feed order)
    loss: Any
    predict: Any         # [batch, 2] softmax; column 1 is the click probability
    test_program: Any    # forward only (clone(for_test) before minimize)
    auc: Any = None      # streaming AUC of the training batches (``with_auc=True``)


def build(cfg: CTRConfig = CTRConfig(), emb_dim: int = 8, hidden: tuple[int, ...] = (64, 32),
          is_sparse: bool = True, is_distributed: bool = False,
          make_optimizer: Callable[[], Any] | None = None, seed: int = 1,
          wrap_optimizer: Callable[[Any], Any] | None = None, wide: bool = False,
          with_auc: bool = False) -> CTRModel:
    """Build the model into fresh programs; ``make_optimizer()`` defaults to Adam(0.005).

    ``wrap_optimizer(opt)`` may return a distributed optimizer (e.g.
    ``lambda o: fleet.distributed_optimizer(o, strategy)``) whose ``minimize`` is used.
    ``wide``: add the wide part (table ``ctr_wide``, also ``is_distributed`` when asked).
    ``with_auc``: a streaming ``layers.auc`` of the training batches (``CTRModel.auc``).
    """
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = seed
    with fk.program_guard(main, startup), fk.unique_name.guard():
        slots = [layers.data(f"slot{s}", shape=[1], dtype="int64", lod_level=1) for s in range(cfg.num_slots)]
        dense = layers.data("dense", shape=[cfg.dense_dim], dtype="float32")
        label = layers.data("label", shape=[1], dtype="int64")
        def table(ids: Any, name: str, dim: int, scale: float) -> Any:
            return layers.embedding(ids, size=[cfg.table_rows, dim], is_sparse=is_sparse,
                                    is_distributed=is_distributed,
                                    param_attr=fk.ParamAttr(name=name,
                                                            initializer=fk.initializer.Uniform(-scale, scale)))
        pooled = [layers.sequence_pool(table(ids, "ctr_emb", emb_dim, 0.05), "sqrt") for ids in slots]
        h = _mlp(layers.concat(pooled + [dense], axis=1), hidden)
        if wide:
            deep = layers.fc(h, 2)
            wide_part = layers.sums([layers.sequence_pool(table(ids, "ctr_wide", 2, 0.01), "sum") for ids in slots])
            predict = layers.softmax(layers.elementwise_add(deep, wide_part))
        else:
            predict = layers.fc(h, 2, act="softmax")
        loss = layers.mean(layers.cross_entropy(predict, label))
        test_program = main.clone(for_test=True)
        auc = layers.auc(predict, label)[0] if with_auc else None
        opt = (make_optimizer or (lambda: optimizer.Adam(0.005)))()
        (wrap_optimizer(opt) if wrap_optimizer else opt).minimize(loss, startup)
    return CTRModel(main, startup, slots + [dense, label], loss, predict, test_program, auc)


def build_per_slot(cfg: CTRConfig, emb_dim: int = 8, hidden: int = 16, lr: float = 0.01,
                   opt: Any = None) -> dict[str, Any]:
    """Build the per-slot model into the current programs (``opt``: the optimizer, default
    Adam(lr)); returns its variables.

    Keys: ``use_vars`` (label, dense_*, sparse_*: the per-slot line order of
    ``CTRData.per_slot_lines``), ``loss``, ``predict``.
    """
    label = layers.data("label", shape=[1], dtype="int64")
    dense = [layers.data(f"dense_{i}", shape=[1], dtype="float32") for i in range(cfg.dense_dim)]
    sparse = [layers.data(f"sparse_{i}", shape=[1], dtype="int64", lod_level=1) for i in range(cfg.num_slots)]
    pooled = []
    for i, ids in enumerate(sparse):
        emb = layers.embedding(ids, size=[cfg.vocab, emb_dim], is_sparse=True, param_attr=f"emb_{i}")
        pooled.append(layers.sequence_pool(emb, "sum"))
    predict = layers.fc(_mlp(layers.concat(pooled + dense, axis=1), (hidden,)), 2, act="softmax")
    loss = layers.mean(layers.cross_entropy(predict, label))
    (opt or optimizer.Adam(lr)).minimize(loss)
    return {"use_vars": [label] + dense + sparse, "loss": loss, "predict": predict}


def _mlp(h: Any, widths: tuple[int, ...]) -> Any:
    for width in widths:
        h = layers.fc(h, width, act="relu")
    return h
