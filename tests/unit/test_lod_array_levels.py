"""LoD levels held as int64 arrays (as the dataset's batches carry them) give every sequence
op the same outputs, output LoDs and gradients as the same LoD held as Python lists."""
from __future__ import annotations

import numpy as np

import fleetkit as fk
from fleetkit import layers
from fleetkit.core.scope import LoDTensor

IDS_LENGTHS, X_LENGTHS = [1, 2, 3, 2], [2, 3, 1, 4]


def _lod(lengths):
    return [np.concatenate([[0], np.cumsum(lengths)]).tolist()]


def _feed(arrays: bool) -> dict:
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 20, (sum(IDS_LENGTHS), 1))
    x = rng.normal(size=(sum(X_LENGTHS), 4)).astype("float32")
    feed = {"ids": LoDTensor(ids, _lod(IDS_LENGTHS)), "x": LoDTensor(x, _lod(X_LENGTHS))}
    if arrays:
        for t in feed.values():
            t._lod = [np.asarray(lv, np.int64) for lv in t._lod]
            assert t.lod() == [t._lod[0].tolist()]
    return feed


def _program():
    main, startup = fk.Program(), fk.Program()
    main.random_seed = startup.random_seed = 3
    with fk.program_guard(main, startup), fk.unique_name.guard():  # the same names in both builds
        ids = layers.data("ids", [1], dtype="int64", lod_level=1)
        x = layers.data("x", [4], dtype="float32", lod_level=1)
        emb = layers.embedding(ids, size=[20, 4], is_sparse=True)
        outs = [layers.sequence_pool(emb, pt) for pt in ("sum", "average", "sqrt", "max", "first", "last")]
        outs += [layers.sequence_first_step(x), layers.sequence_last_step(x), layers.sequence_reverse(x),
                 layers.sequence_conv(x, num_filters=3, filter_size=3),
                 layers.sequence_softmax(layers.fc(x, 1)),
                 layers.sequence_expand(layers.sequence_pool(emb, "sum"), x),
                 layers.sequence_concat([emb, x]),
                 layers.lod_reset(layers.fc(emb, 2), ids),
                 layers.concat([emb, x], axis=0)]
        hidden, _ = layers.dynamic_lstm(layers.fc(x, 8), size=8)
        outs += [hidden, layers.dynamic_gru(layers.fc(emb, 6), size=2)]
        padded, length = layers.sequence_pad(x, layers.fill_constant([1], "float32", 0.0))
        outs += [padded, layers.sequence_unpad(padded, length)]
        windows = layers.sequence_enumerate(ids, win_size=2)
        loss = layers.sum([layers.mean(o) for o in outs])
        fk.optimizer.SGD(0.1).minimize(loss, startup_program=startup)
    return main, startup, outs + [windows], loss


def _run(arrays: bool):
    main, startup, outs, loss = _program()
    with fk.scope_guard(fk.Scope()):
        exe = fk.Executor(fk.CPUPlace())
        exe.run(startup)
        fetched = exe.run(main, feed=_feed(arrays), fetch_list=outs + [loss], return_numpy=False)
        params = {p.name: fk.global_scope().numpy(p.name) for p in main.all_parameters()}
    return fetched, params


def test_array_lod_levels_give_the_list_levels_results():
    lists, lists_params = _run(arrays=False)
    arrays, arrays_params = _run(arrays=True)
    for a, b in zip(lists, arrays):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        lod_a = a.lod() if isinstance(a, LoDTensor) else []
        lod_b = b.lod() if isinstance(b, LoDTensor) else []
        assert lod_a == lod_b and all(type(o) is int for lv in lod_b for o in lv)
    assert lists_params.keys() == arrays_params.keys() and len(lists_params) > 5
    for name, value in lists_params.items():
        np.testing.assert_array_equal(value, arrays_params[name], err_msg=name)
