"""A CTR model in the wide-and-deep spirit: one embedding per sparse slot (sum-pooled),
concatenated with the dense features, then an MLP and a 2-way softmax.

``build`` returns the programs and variables; the same function builds the
single-process model and the one the DistributeTranspiler rewrites.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import fleetkit as fk
from fleetkit import layers, optimizer

from ctr_data import CTRConfig


@dataclass
class CTRModel:
    main: Any
    startup: Any
    feeds: list          # slot0..slotN-1, dense, label (data vars, feed order)
    loss: Any
    predict: Any         # [batch, 2] softmax; column 1 is the click probability
    test_program: Any    # forward only (clone(for_test) before minimize)


def build(cfg: CTRConfig = CTRConfig(), emb_dim: int = 8, hidden: tuple[int, ...] = (64, 32),
          is_sparse: bool = True, is_distributed: bool = False,
          make_optimizer: Callable[[], Any] | None = None, seed: int = 1,
          wrap_optimizer: Callable[[Any], Any] | None = None) -> CTRModel:
    """Build the model into fresh programs; ``make_optimizer()`` defaults to Adam(0.005).

    ``wrap_optimizer(opt)`` may return a distributed optimizer (e.g.
    ``lambda o: fleet.distributed_optimizer(o, strategy)``) whose ``minimize`` is used.
    """
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = seed
    with fk.program_guard(main, startup), fk.unique_name.guard():
        slots = [layers.data(f"slot{s}", shape=[1], dtype="int64", lod_level=1) for s in range(cfg.num_slots)]
        dense = layers.data("dense", shape=[cfg.dense_dim], dtype="float32")
        label = layers.data("label", shape=[1], dtype="int64")
        pooled = []
        for s, ids in enumerate(slots):
            emb = layers.embedding(ids, size=[cfg.table_rows if is_distributed else cfg.vocab * cfg.num_slots,
                                              emb_dim],
                                   is_sparse=is_sparse, is_distributed=is_distributed,
                                   param_attr=fk.ParamAttr(name="ctr_emb",
                                                           initializer=fk.initializer.Uniform(-0.05, 0.05)))
            pooled.append(layers.sequence_pool(emb, "sqrt"))
        h = layers.concat(pooled + [dense], axis=1)
        for width in hidden:
            h = layers.fc(h, width, act="relu")
        predict = layers.fc(h, 2, act="softmax")
        loss = layers.mean(layers.cross_entropy(predict, label))
        test_program = main.clone(for_test=True)
        opt = (make_optimizer or (lambda: optimizer.Adam(0.005)))()
        (wrap_optimizer(opt) if wrap_optimizer else opt).minimize(loss, startup)
    return CTRModel(main, startup, slots + [dense, label], loss, predict, test_program)
