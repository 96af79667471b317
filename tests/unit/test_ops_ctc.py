"""warpctc: the loss against brute-force enumeration of every alignment, finite-difference
gradients (also with norm_by_times), repeated labels, empty labels, and a model that learns."""
import itertools

import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.core.scope import lengths_to_offsets
from fleetkit.errors import InvalidArgumentError
from fleetkit.testing.gradcheck import check_grad

RNG = np.random.default_rng(16)


def collapse(path, blank):
    out = [k for i, k in enumerate(path) if k != blank and (i == 0 or path[i - 1] != k)]
    return tuple(out)


def brute_ctc(logits, label, blank=0):
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    total = 0.0
    for path in itertools.product(range(logits.shape[1]), repeat=logits.shape[0]):
        if collapse(path, blank) == tuple(label):
            total += np.exp(sum(logp[t, k] for t, k in enumerate(path)))
    return -np.log(total)


CASES = [  # (time steps, labels) per sequence; includes a repeated label and an empty one
    [(4, [1, 2]), (3, [2, 2]), (2, []), (3, [1])],
]


def _batch(spec, c=3):
    xs = [RNG.normal(size=(t, c)) for t, _ in spec]
    labels = [lab for _, lab in spec]
    lab_rows = np.array([k for lab in labels for k in lab], dtype=np.int64).reshape(-1, 1)
    return xs, labels, (np.concatenate(xs), [[t for t, _ in spec]]), (lab_rows, [[len(lab) for lab in labels]])


def _run_op(x, lab, attrs):
    prog = fk.Program()
    b = prog.global_block()
    b.create_var(name="x", shape=x[0].shape, dtype="float64", lod_level=1)
    b.create_var(name="l", shape=lab[0].shape, dtype="int64", lod_level=1)
    b.append_op("warpctc", {"Logits": ["x"], "Label": ["l"]}, {"Loss": ["loss"], "WarpCTCGrad": ["g"]}, attrs)
    feed = {"x": fk.LoDTensor(x[0], [lengths_to_offsets(x[1][0])]),
            "l": fk.LoDTensor(lab[0], [lengths_to_offsets(lab[1][0])])}
    return fk.Executor().run(prog, feed=feed, fetch_list=["loss"])[0]


def test_warpctc_loss_matches_brute_force():
    xs, labels, x, lab = _batch(CASES[0])
    got = _run_op(x, lab, {"blank": 0})
    want = [brute_ctc(xi, li) for xi, li in zip(xs, labels)]
    np.testing.assert_allclose(got.ravel(), want, rtol=1e-10)


def test_warpctc_grad():
    _, _, (xv, xl), (lv, ll) = _batch(CASES[0])
    check_grad("warpctc", {"Logits": (xv, [lengths_to_offsets(xl[0])]), "Label": (lv, [lengths_to_offsets(ll[0])])},
               {"blank": 0}, outputs=("Loss", "WarpCTCGrad"), grad_outputs=("Loss",), wrt=["Logits"])


def test_norm_by_times_divides_the_gradient_by_the_sequence_length():
    _, _, (xv, xl), (lv, ll) = _batch(CASES[0])
    prog = fk.Program()
    b = prog.global_block()
    for n, dt, lod in (("x", "float64", 1), ("l", "int64", 1), ("g", "float64", 0), ("loss", "float64", 0)):
        b.create_var(name=n, dtype=dt, lod_level=lod)
    ins = {"Logits": ["x"], "Label": ["l"], "Loss": ["loss"], "Loss@GRAD": ["g"]}
    for out, norm in (("d0", False), ("d1", True)):
        b.append_op("warpctc_grad", ins, {"Logits@GRAD": [out]}, {"blank": 0, "norm_by_times": norm}, infer=False)
    feed = {"x": fk.LoDTensor(xv, [lengths_to_offsets(xl[0])]), "l": fk.LoDTensor(lv, [lengths_to_offsets(ll[0])]),
            "g": np.ones((4, 1)), "loss": np.zeros((4, 1))}
    d0, d1 = fk.Executor().run(prog, feed=feed, fetch_list=["d0", "d1"])
    np.testing.assert_allclose(d1, d0 / np.repeat(xl[0], xl[0])[:, None])


def test_warpctc_bad_labels():
    _, _, x, lab = _batch([(3, [0, 1])])  # 0 is the blank
    with pytest.raises(InvalidArgumentError, match="other than blank=0"):
        _run_op(x, lab, {"blank": 0})


def test_ctc_model_learns_and_decodes():
    feats = layers.data("f", [4], lod_level=1)
    label = layers.data("l", [1], dtype="int64", lod_level=1)
    logits = layers.fc(feats, 3)
    loss = layers.mean(layers.warpctc(logits, label, blank=0))
    decoded = layers.ctc_greedy_decoder(layers.softmax(logits), blank=0)
    fk.optimizer.Adam(0.1).minimize(loss)
    # seeded: from about 1 initialization in 40, Adam settles in a local minimum (loss 0.81, one extra symbol)
    fk.default_main_program().random_seed = fk.default_startup_program().random_seed = 11
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    # each frame's one-hot feature says which class it shows; label = the classes with repeats merged
    frames = np.array([1, 1, 0, 2, 2, 2, 0, 1, 2, 0, 0])
    x = np.eye(4)[frames].astype("float32")
    feed = {"f": (x, [[6, 5]]), "l": (np.array([[1], [2], [1], [2]]), [[2, 2]])}
    first = float(exe.run(feed=feed, fetch_list=[loss])[0][0])
    for _ in range(80):
        exe.run(feed=feed)
    last, path = exe.run(feed=feed, fetch_list=[loss, decoded], return_numpy=False)
    assert float(np.asarray(last)[0]) < 0.2 * first
    assert np.asarray(path).ravel().tolist() == [1, 2, 1, 2]
