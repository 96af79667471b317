"""lstm (dynamic_lstm) and gru (dynamic_gru): forward against a per-sequence, per-row numpy
loop, finite-difference gradients (peepholes, reverse, initial states, origin_mode)."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.errors import InvalidArgumentError, ShapeError
from fleetkit.testing.gradcheck import check_grad

RNG = np.random.default_rng(11)
LENS = [3, 1, 0, 4]  # unsorted lengths, one empty sequence
OFF = [0, 3, 4, 4, 8]
D = 2


def sig(v):
    return 1 / (1 + np.exp(-v))


def ref_lstm(x, w, b, h0, c0, reverse, peep):
    d = w.shape[0]
    b = b.ravel()
    hs, cs = np.zeros((x.shape[0], d)), np.zeros((x.shape[0], d))
    for s, (a, e) in enumerate(zip(OFF, OFF[1:])):
        h, c = h0[s].copy(), c0[s].copy()
        for t in (range(e - 1, a - 1, -1) if reverse else range(a, e)):
            g = x[t] + h @ w + b[:4 * d]
            gc, gi, gf, go = np.split(g, 4)
            if peep:
                gi, gf = gi + b[4 * d:5 * d] * c, gf + b[5 * d:6 * d] * c
            c = sig(gf) * c + sig(gi) * np.tanh(gc)
            h = sig(go + b[6 * d:] * c if peep else go) * np.tanh(c)
            hs[t], cs[t] = h, c
    return hs, cs


def ref_gru(x, w, b, h0, reverse, origin):
    d = w.shape[0]
    flat = w.ravel()
    w_ur, w_c = flat[:2 * d * d].reshape(d, 2 * d), flat[2 * d * d:].reshape(d, d)
    b = b.ravel()
    hs = np.zeros((x.shape[0], d))
    for s, (a, e) in enumerate(zip(OFF, OFF[1:])):
        h = h0[s].copy()
        for t in (range(e - 1, a - 1, -1) if reverse else range(a, e)):
            ur = sig(x[t, :2 * d] + h @ w_ur + b[:2 * d])
            u, r = ur[:d], ur[d:]
            c = np.tanh(x[t, 2 * d:] + (r * h) @ w_c + b[2 * d:])
            h = u * h + (1 - u) * c if origin else (1 - u) * h + u * c
            hs[t] = h
    return hs


def _run_op(op, inputs, attrs, outs):
    prog = fk.Program()
    block = prog.global_block()
    feed, ins = {}, {}
    for slot, v in inputs.items():
        arr, lod = v if isinstance(v, tuple) else (v, None)
        block.create_var(name=slot.lower(), shape=arr.shape, dtype="float64", lod_level=1 if lod else 0)
        ins[slot] = [slot.lower()]
        feed[slot.lower()] = fk.LoDTensor(arr, lod) if lod else arr
    block.append_op(op, ins, {o: [o.lower()] for o in outs}, attrs)
    return fk.Executor().run(prog, feed=feed, fetch_list=[o.lower() for o in outs])


@pytest.mark.parametrize("peep,reverse,init", [(True, False, False), (False, True, True), (True, True, True)])
def test_lstm_forward_and_grad(peep, reverse, init):
    x, w = RNG.normal(size=(8, 4 * D)), RNG.normal(size=(D, 4 * D)) * 0.5
    b = RNG.normal(size=(1, (7 if peep else 4) * D))
    h0, c0 = (RNG.normal(size=(4, D)), RNG.normal(size=(4, D))) if init else (np.zeros((4, D)),) * 2
    inputs = {"Input": (x, [OFF]), "Weight": w, "Bias": b}
    if init:
        inputs.update(H0=h0, C0=c0)
    attrs = {"use_peepholes": peep, "is_reverse": reverse}
    hs, cs = _run_op("lstm", inputs, attrs, ["Hidden", "Cell"])
    want_h, want_c = ref_lstm(x, w, b, h0, c0, reverse, peep)
    np.testing.assert_allclose(hs, want_h, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cs, want_c, rtol=1e-10, atol=1e-12)
    check_grad("lstm", inputs, attrs, outputs=("Hidden", "Cell"))


@pytest.mark.parametrize("origin,reverse,init", [(False, False, False), (True, True, True)])
def test_gru_forward_and_grad(origin, reverse, init):
    x, w, b = RNG.normal(size=(8, 3 * D)), RNG.normal(size=(D, 3 * D)) * 0.5, RNG.normal(size=(1, 3 * D))
    h0 = RNG.normal(size=(4, D)) if init else np.zeros((4, D))
    inputs = {"Input": (x, [OFF]), "Weight": w, "Bias": b}
    if init:
        inputs["H0"] = h0
    attrs = {"origin_mode": origin, "is_reverse": reverse}
    (hs,) = _run_op("gru", inputs, attrs, ["Hidden"])
    np.testing.assert_allclose(hs, ref_gru(x, w, b, h0, reverse, origin), rtol=1e-10, atol=1e-12)
    check_grad("gru", inputs, attrs, outputs=("Hidden",))


def test_dynamic_lstm_and_gru_layers_train_a_classifier():
    words = layers.data("words", [1], dtype="int64", lod_level=1)
    label = layers.data("label", [1], dtype="int64")
    emb = layers.embedding(words, size=[20, 8])
    hidden, cell = layers.dynamic_lstm(layers.fc(emb, 4 * 6), size=4 * 6)
    assert hidden.shape == (-1, 6) and cell.shape == (-1, 6) and hidden.lod_level == 1
    gru = layers.dynamic_gru(layers.fc(emb, 3 * 5), size=5, is_reverse=True)
    assert gru.shape == (-1, 5)
    feat = layers.concat([layers.sequence_last_step(hidden), layers.sequence_first_step(gru)], axis=1)
    loss = layers.mean(layers.cross_entropy(layers.fc(feat, 2, act="softmax"), label))
    fk.optimizer.Adam(0.05).minimize(loss)
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    rng = np.random.default_rng(0)
    lens = rng.integers(1, 6, size=16)
    ids = rng.integers(0, 20, size=(int(lens.sum()), 1))
    # label: whether the sequence's last word is in the upper half of the vocabulary
    y = (ids[np.cumsum(lens) - 1] >= 10).astype("int64")
    losses = [float(exe.run(feed={"words": (ids, [lens.tolist()]), "label": y}, fetch_list=[loss])[0][0])
              for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0]


def test_rnn_layers_check_their_input():
    x = layers.data("x", [10], lod_level=1)
    with pytest.raises(InvalidArgumentError, match=r"must be \[T, 8\].*got \[-1, 10\]"):
        layers.dynamic_lstm(x, size=8)
    with pytest.raises(InvalidArgumentError, match="size must be 4 \\* hidden size"):
        layers.dynamic_lstm(x, size=10)
    with pytest.raises(InvalidArgumentError, match=r"must be \[T, 9\]"):
        layers.dynamic_gru(x, size=3)
    with pytest.raises(ShapeError, match="gate_activation 'swishy'"):
        layers.dynamic_gru(layers.data("y", [9], lod_level=1), size=3, gate_activation="swishy")


def ref_lstmp(x, w, wp, b, h0, c0, reverse, cell_clip=0.0, proj_clip=0.0):
    d, p = w.shape[1] // 4, w.shape[0]
    b = b.ravel()
    rs, cs = np.zeros((x.shape[0], p)), np.zeros((x.shape[0], d))
    for s, (a, e) in enumerate(zip(OFF, OFF[1:])):
        r, c = np.tanh(h0[s] @ wp), c0[s].copy()
        for t in (range(e - 1, a - 1, -1) if reverse else range(a, e)):
            gc, gi, gf, go = np.split(x[t] + r @ w + b[:4 * d], 4)
            gi, gf = gi + b[4 * d:5 * d] * c, gf + b[5 * d:6 * d] * c
            c = sig(gf) * c + sig(gi) * np.tanh(gc)
            c = np.clip(c, -cell_clip, cell_clip) if cell_clip else c
            h = sig(go + b[6 * d:] * c) * np.tanh(c)
            r = np.tanh(h @ wp)
            r = np.clip(r, -proj_clip, proj_clip) if proj_clip else r
            rs[t], cs[t] = r, c
    return rs, cs


@pytest.mark.parametrize("reverse,clip", [(False, 0.0), (True, 0.0), (False, 0.6)])
def test_lstmp_forward_and_grad(reverse, clip):
    p = 3
    x, w, wp = RNG.normal(size=(8, 4 * D)), RNG.normal(size=(p, 4 * D)) * 0.5, RNG.normal(size=(D, p))
    b, h0, c0 = RNG.normal(size=(1, 7 * D)), RNG.normal(size=(4, D)), RNG.normal(size=(4, D))
    inputs = {"Input": (x, [OFF]), "Weight": w, "ProjWeight": wp, "Bias": b, "H0": h0, "C0": c0}
    attrs = {"is_reverse": reverse, "cell_clip": clip, "proj_clip": clip}
    rs, cs = _run_op("lstmp", inputs, attrs, ["Projection", "Cell"])
    want_r, want_c = ref_lstmp(x, w, wp, b, h0, c0, reverse, clip, clip)
    np.testing.assert_allclose(rs, want_r, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cs, want_c, rtol=1e-10, atol=1e-12)
    if not clip:  # finite differences straddle the clip boundary otherwise
        check_grad("lstmp", inputs, attrs, outputs=("Projection", "Cell"))


def test_dynamic_lstmp_layer():
    x = layers.data("x", [8], lod_level=1)
    proj, cell = layers.dynamic_lstmp(layers.fc(x, 16), size=16, proj_size=3)
    assert proj.shape == (-1, 3) and cell.shape == (-1, 4) and proj.lod_level == 1
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    (got,) = exe.run(feed={"x": (RNG.normal(size=(5, 8)).astype("float32"), [[2, 3]])}, fetch_list=[proj])
    assert got.shape == (5, 3) and np.abs(got).max() <= 1


def test_equal_length_lod_grad():
    check_grad("equal_length_lod", {"X": RNG.normal(size=(6, 2))}, {"seq_len": 3})


@pytest.mark.parametrize("bidirec", [False, True])
def test_cudnn_style_lstm_layer(bidirec):
    t, b, d, h, n_layers = 4, 3, 5, 2, 2
    dirs = 2 if bidirec else 1
    x = layers.data("x", [t, -1, d], append_batch_size=False)
    h0 = layers.data("h0", [n_layers * dirs, -1, h], append_batch_size=False)
    c0 = layers.data("c0", [n_layers * dirs, -1, h], append_batch_size=False)
    out, last_h, last_c = layers.lstm(x, h0, c0, max_len=t, hidden_size=h, num_layers=n_layers, is_bidirec=bidirec)
    assert out.shape[0] == t and out.shape[2] == h * dirs
    loss = layers.mean(layers.square(out))
    fk.optimizer.SGD(0.5).minimize(loss)
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    xs = RNG.normal(size=(t, b, d)).astype("float32")
    z = RNG.normal(size=(n_layers * dirs, b, h)).astype("float32")
    test_prog = fk.default_main_program().clone(for_test=True)
    o, lh, lc = exe.run(test_prog, feed={"x": xs, "h0": z, "c0": z}, fetch_list=[out, last_h, last_c])
    assert o.shape == (t, b, h * dirs) and lh.shape == lc.shape == (n_layers * dirs, b, h)
    np.testing.assert_allclose(lh[-dirs], o[-1, :, :h], rtol=1e-6)  # the last layer's forward state ends at t-1
    if bidirec:
        np.testing.assert_allclose(lh[-1], o[0, :, h:], rtol=1e-6)  # the reverse one ends at step 0
    (one,) = exe.run(test_prog, feed={"x": xs[:, 1:2], "h0": z[:, 1:2], "c0": z[:, 1:2]}, fetch_list=[out])
    # batch elements do not mix (atol: a batch of 1 takes other float32 roundings, and the
    # module's RNG draws depend on the tests run before, so some output may be near 0)
    np.testing.assert_allclose(one[:, 0], o[:, 1], rtol=1e-5, atol=1e-7)
    first = float(exe.run(feed={"x": xs, "h0": z, "c0": z}, fetch_list=[loss])[0][0])
    for _ in range(20):
        exe.run(feed={"x": xs, "h0": z, "c0": z})
    assert float(exe.run(feed={"x": xs, "h0": z, "c0": z}, fetch_list=[loss])[0][0]) < first
