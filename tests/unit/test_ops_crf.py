"""linear_chain_crf (NLL against brute-force enumeration of every tag path, finite-difference
gradients) and crf_decoding (Viterbi against brute force), and a tagger that trains."""
import itertools

import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.errors import InvalidArgumentError, NotFoundError
from fleetkit.testing.gradcheck import check_grad

RNG = np.random.default_rng(8)
OFF = [0, 3, 4, 7, 9]
D = 3


def _score(x, w, path):
    s = w[0, path[0]] + w[1, path[-1]] + sum(x[t, k] for t, k in enumerate(path))
    return s + sum(w[2 + a, b] for a, b in zip(path, path[1:]))


def brute(x, w, lab):
    nll, best = [], []
    for a, b in zip(OFF, OFF[1:]):
        xs = x[a:b]
        scores = {p: _score(xs, w, p) for p in itertools.product(range(D), repeat=b - a)}
        log_z = np.log(sum(np.exp(v) for v in scores.values()))
        nll.append(log_z - _score(xs, w, tuple(lab[a:b])))
        best.extend(max(scores, key=scores.get))
    return np.array(nll), np.array(best)


def _run(op, ins, outs):
    prog = fk.Program()
    block = prog.global_block()
    feed = {}
    for slot, (arr, lod) in ins.items():
        block.create_var(name=slot.lower(), shape=arr.shape, dtype=arr.dtype, lod_level=1 if lod else 0)
        feed[slot.lower()] = fk.LoDTensor(arr, [lod]) if lod else arr
    block.append_op(op, {s: [s.lower()] for s in ins}, {o: [o.lower()] for o in outs})
    return fk.Executor().run(prog, feed=feed, fetch_list=[o.lower() for o in outs])


def test_crf_nll_and_viterbi_match_brute_force():
    x, w = RNG.normal(size=(9, D)), RNG.normal(size=(D + 2, D))
    lab = RNG.integers(0, D, size=(9, 1))
    want_nll, want_path = brute(x, w, lab.ravel())
    (nll,) = _run("linear_chain_crf", {"Emission": (x, OFF), "Transition": (w, None), "Label": (lab, OFF)},
                  ["LogLikelihood"])
    np.testing.assert_allclose(nll.ravel(), want_nll, rtol=1e-10)
    (path,) = _run("crf_decoding", {"Emission": (x, OFF), "Transition": (w, None)}, ["ViterbiPath"])
    np.testing.assert_array_equal(path.ravel(), want_path)
    (hit,) = _run("crf_decoding", {"Emission": (x, OFF), "Transition": (w, None), "Label": (lab, OFF)},
                  ["ViterbiPath"])
    np.testing.assert_array_equal(hit.ravel(), (want_path == lab.ravel()).astype(int))


def test_crf_grad():
    x, w = RNG.normal(size=(9, D)), RNG.normal(size=(D + 2, D))
    check_grad("linear_chain_crf", {"Emission": (x, [OFF]), "Transition": w,
                                    "Label": (RNG.integers(0, D, size=(9, 1)), [OFF])},
               outputs=("LogLikelihood",), wrt=["Emission", "Transition"])


def test_crf_tagger_trains_and_decodes():
    words = layers.data("w", [1], dtype="int64", lod_level=1)
    tags = layers.data("t", [1], dtype="int64", lod_level=1)
    emission = layers.fc(layers.embedding(words, size=[10, 8]), D)
    cost = layers.mean(layers.linear_chain_crf(emission, tags, param_attr=fk.ParamAttr(name="crfw")))
    decoded = layers.crf_decoding(emission, param_attr=fk.ParamAttr(name="crfw"))
    fk.optimizer.Adam(0.1).minimize(cost)
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    ids = RNG.integers(0, 10, size=(30, 1))
    feed = {"w": (ids, [[6, 9, 5, 10]]), "t": (ids % D, [[6, 9, 5, 10]])}  # the tag is the word id mod 3
    for _ in range(60):
        exe.run(feed=feed, fetch_list=[cost])
    (path,) = exe.run(feed=feed, fetch_list=[decoded])
    assert (path == ids % D).mean() > 0.95


def test_crf_errors():
    x = layers.data("x", [D], lod_level=1)
    with pytest.raises(NotFoundError, match="no transition parameter named 'nope'"):
        layers.crf_decoding(x, param_attr=fk.ParamAttr(name="nope"))
    lab = layers.data("l", [1], dtype="int64", lod_level=1)
    nll = layers.linear_chain_crf(x, lab)
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    with pytest.raises(InvalidArgumentError, match="tag outside \\[0, 3\\)"):
        exe.run(feed={"x": (np.zeros((2, D), "float32"), [[2]]), "l": (np.array([[0], [3]]), [[2]])},
                fetch_list=[nll])
