"""DGC pieces without sockets: top-k selection, the sparse exchange over the local backend,
the sparsity schedule, argument checks and the fluid name."""
from __future__ import annotations

import numpy as np
import pytest

import fleetkit as fk
from fleetkit.collective import LocalGroup
from fleetkit.collective.dgc import (DGCMomentumOptimizer, select_top_k, sparse_exchange, sparsity_at)
from fleetkit.errors import InvalidArgumentError
from fleetkit.testing.collective_programs import dgc_op_program


def test_fluid_name_resolves_lazily():
    assert fk.optimizer.DGCMomentumOptimizer is DGCMomentumOptimizer


@pytest.mark.parametrize("n,k", [(10, 3), (5000, 50), (1_000_003, 1000), (200_000, 200_000)])
def test_select_top_k_picks_large_entries_never_more_than_k(n, k):
    v = np.random.default_rng(n).standard_normal(n).astype("float32")
    idx = select_top_k(v, k)
    assert len(set(idx.tolist())) == idx.size <= k
    assert idx.size >= 0.5 * k  # the sampled threshold may let fewer through, not many fewer
    kth = np.sort(np.abs(v))[-k]
    # everything selected is at least the true k-th value, or close to it (threshold estimate)
    assert np.abs(v[idx]).min() >= 0.8 * kth


def test_sparse_exchange_sums_selected_entries_and_masks_them():
    n, world = 50_000, 3
    rng = np.random.default_rng(0)
    vs = [rng.standard_normal(n).astype("float32") for _ in range(world)]
    us = [np.ones(n, "float32") for _ in range(world)]
    originals = [v.copy() for v in vs]
    group = LocalGroup(world, timeout=30)
    try:
        outs = group.run(lambda b: sparse_exchange(b, us[b.rank], vs[b.rank], 100))
    finally:
        group.close()
    want = np.zeros(n, "float32")
    for r in range(world):
        sent = vs[r] == 0  # masked: what was sent
        assert 50 <= sent.sum() <= 100
        np.testing.assert_array_equal(us[r][sent], 0)
        np.testing.assert_array_equal(us[r][~sent], 1)
        np.testing.assert_array_equal(vs[r][~sent], originals[r][~sent])  # the rest stays as residual
        want[sent] += originals[r][sent]
    for out in outs:
        np.testing.assert_array_equal(out, want)


def test_sparsity_schedule_counts_from_rampup_begin():
    attrs = {"rampup_begin_step": 10, "rampup_step": 4, "sparsity": [0.5, 0.9]}
    assert [sparsity_at(s, attrs) for s in (0, 9, 10, 11, 12, 13, 100)] == [0, 0, 0.5, 0.5, 0.9, 0.9, 0.9]


@pytest.mark.parametrize("kwargs,match", [
    ({"rampup_begin_step": -1}, "rampup_begin_step"),
    ({"rampup_begin_step": 0, "rampup_step": 0}, "rampup_step"),
    ({"rampup_begin_step": 0, "sparsity": [1.0]}, "sparsity"),
    ({"rampup_begin_step": 0, "local_grad_clip_norm": 1.0}, "num_trainers"),
    ({"rampup_begin_step": 0, "exchange": "fast"}, "exchange"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        DGCMomentumOptimizer(0.1, 0.9, **kwargs)


def test_single_process_minimize_is_plain_momentum():
    # One trainer: nothing to compress or exchange; the program has no collective ops.
    x = fk.layers.data("x", [200])
    loss = fk.layers.mean(fk.layers.fc(x, 100))
    DGCMomentumOptimizer(0.1, 0.9, rampup_begin_step=0, num_trainers=1).minimize(loss)
    types = [op.type for op in fk.default_main_program().global_block().ops]
    assert "dgc" not in types and not any(t.startswith("c_") for t in types) and "momentum" in types


@pytest.mark.parametrize("nesterov", [False, True])
def test_dgc_op_momentum_correction_clipping_and_masking(nesterov):
    # A one-rank local group: the exchange returns this rank's own selection.
    from fleetkit import collective

    group = collective.LocalGroup(1, timeout=10)
    collective.set_group(group[0], ring_id=5)
    try:
        n, k_frac, m, clip = 100, 0.7, 0.9, 0.5
        rng = np.random.default_rng(1)
        u0, v0, g = (rng.standard_normal(n).astype("float32") for _ in range(3))
        main = dgc_op_program(n, m=m, use_nesterov=nesterov, ring_id=5, clip_norm=clip, exchange="sparse",
                              rampup_begin_step=1, rampup_step=1, sparsity=[1 - k_frac])
        scope = fk.Scope()
        out_u, out_v, out_g = fk.Executor().run(
            main, feed={"u": u0.copy(), "v": v0.copy(), "g": g.copy(), "step": np.array([3.0], "float32")},
            fetch_list=["u", "v", "g"], scope=scope)
        gc = g * np.float32(clip / np.linalg.norm(g))  # the clipped gradient
        if nesterov:
            u = (u0 + gc) * np.float32(m)
            v = v0 + u + gc
        else:
            u = u0 * np.float32(m) + gc
            v = v0 + u
        k = int(n * k_frac)
        sent = np.zeros(n, bool)
        sent[np.argsort(-np.abs(v))[:k]] = True
        np.testing.assert_allclose(out_g, np.where(sent, v, 0), rtol=1e-6)
        np.testing.assert_allclose(out_u, np.where(sent, 0, u), rtol=1e-6)
        np.testing.assert_allclose(out_v, np.where(sent, 0, v), rtol=1e-6)
    finally:
        collective.destroy_group(5)
