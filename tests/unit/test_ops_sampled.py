"""nce and hierarchical_sigmoid: costs against per-example numpy loops, finite-difference
gradients, SelectedRows weight gradients, samplers, and a word2vec-style model that trains."""
import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.core.scope import SelectedRows
from fleetkit.errors import InvalidArgumentError
from fleetkit.testing.gradcheck import check_grad

RNG = np.random.default_rng(3)


def sig(v):
    return 1 / (1 + np.exp(-v))


def _run_op(op, inputs, attrs, outs):
    prog = fk.Program()
    block = prog.global_block()
    feed, ins = {}, {}
    for slot, arr in inputs.items():
        block.create_var(name=slot.lower(), shape=arr.shape, dtype=arr.dtype)
        ins[slot], feed[slot.lower()] = [slot.lower()], arr
    block.append_op(op, ins, {o: [o.lower()] for o in outs}, attrs)
    return fk.Executor().run(prog, feed=feed, fetch_list=[o.lower() for o in outs], return_numpy=False)


# --------------------------------------------------------------------- nce
NCE = {"num_total_classes": 6, "num_neg_samples": 3, "custom_neg_classes": [1, 4, 4], "sampler": "uniform"}


def _nce_inputs():
    return {"Input": RNG.normal(size=(4, 3)), "Label": np.array([[0, 2], [5, 1], [3, 3], [2, 0]]),
            "Weight": RNG.normal(size=(6, 3)), "Bias": RNG.normal(size=(6, 1)),
            "SampleWeight": np.array([[1.0], [0.5], [2.0], [1.0]])}


def test_nce_cost_matches_reference_and_grad():
    ins = _nce_inputs()
    cost, labels = _run_op("nce", ins, NCE, ["Cost", "SampleLogits", "SampleLabels"])[::2]
    want = []
    for i in range(4):
        cls = list(ins["Label"][i]) + NCE["custom_neg_classes"]
        c = 0.0
        for j, k in enumerate(cls):
            s, b = sig(ins["Input"][i] @ ins["Weight"][k] + ins["Bias"][k, 0]), 3 / 6
            c -= np.log(s / (s + b)) if j < 2 else np.log(b / (s + b))
        want.append(c * ins["SampleWeight"][i, 0])
    np.testing.assert_allclose(np.asarray(cost).ravel(), want, rtol=1e-12)
    assert np.asarray(labels)[:, 2:].tolist() == [[1, 4, 4]] * 4
    check_grad("nce", ins, NCE, outputs=("Cost", "SampleLogits", "SampleLabels"), grad_outputs=("Cost",),
               wrt=["Input", "Weight", "Bias"])


@pytest.mark.parametrize("sampler", ["log_uniform", "custom_dist"])
def test_nce_grad_other_samplers(sampler):
    attrs = dict(NCE, sampler=sampler, custom_dist=[0.1, 0.3, 0.1, 0.2, 0.2, 0.1])
    check_grad("nce", _nce_inputs(), attrs, outputs=("Cost", "SampleLogits", "SampleLabels"),
               grad_outputs=("Cost",), wrt=["Input", "Weight", "Bias"])


def test_nce_samplers_draw_from_their_distribution():
    ins = _nce_inputs()
    ins = {"Input": np.zeros((2000, 3)), "Label": np.zeros((2000, 1), dtype=np.int64), "Weight": ins["Weight"]}
    for sampler, want in [("uniform", np.full(6, 1 / 6)),
                          ("log_uniform", np.log((np.arange(6) + 2) / (np.arange(6) + 1)) / np.log(7))]:
        attrs = {"num_total_classes": 6, "num_neg_samples": 5, "sampler": sampler, "seed": 1}
        (labels,) = _run_op("nce", ins, attrs, ["SampleLabels"])
        freq = np.bincount(np.asarray(labels)[:, 1:].ravel(), minlength=6) / 10000
        np.testing.assert_allclose(freq, want / want.sum(), atol=0.015)


def test_nce_sparse_weight_grad_equals_dense():
    ins = _nce_inputs()
    grads = {}
    for sparse in (False, True):
        prog = fk.Program()
        block = prog.global_block()
        for slot, arr in ins.items():
            block.create_var(name=slot.lower(), shape=arr.shape, dtype=arr.dtype)
        block.create_var(name="g", dtype="float64")
        names = {s: [s.lower()] for s in ins}
        fwd = {"Cost": ["c"], "SampleLogits": ["sl"], "SampleLabels": ["lab"]}
        block.append_op("nce", names, fwd, dict(NCE, is_sparse=sparse))
        block.append_op("nce_grad", {**names, **fwd, "Cost@GRAD": ["g"]}, {"Weight@GRAD": ["dw"]},
                        dict(NCE, is_sparse=sparse), infer=False)
        (grads[sparse],) = fk.Executor().run(prog, feed={**{k.lower(): v for k, v in ins.items()},
                                                          "g": np.ones((4, 1))},
                                             fetch_list=["dw"], return_numpy=False)
    assert isinstance(grads[True], SelectedRows)
    np.testing.assert_allclose(grads[True].to_dense(), np.asarray(grads[False]), rtol=1e-12)


def test_nce_label_out_of_range():
    ins = _nce_inputs()
    ins["Label"] = np.array([[0, 6], [1, 1], [1, 1], [1, 1]])
    with pytest.raises(InvalidArgumentError, match="holds 6, outside"):
        _run_op("nce", ins, NCE, ["Cost"])


# ------------------------------------------------------- hierarchical_sigmoid
def _ref_hsig(x, w, b, labels, classes):
    out = []
    for i, c in enumerate(labels):
        code, total = c + classes, 0.0
        for j in range(int(np.floor(np.log2(code)))):
            node, bit = (code >> (j + 1)) - 1, (code >> j) & 1
            pre = x[i] @ w[node] + b[node, 0]
            total += np.log1p(np.exp(pre)) - bit * pre
        out.append(total)
    return np.array(out)


@pytest.mark.parametrize("classes", [2, 6, 8])
def test_hsigmoid_default_tree(classes):
    x, w, b = RNG.normal(size=(5, 3)), RNG.normal(size=(classes - 1, 3)), RNG.normal(size=(classes - 1, 1))
    labels = RNG.integers(0, classes, size=(5, 1))
    ins = {"X": x, "W": w, "Label": labels, "Bias": b}
    (out,) = _run_op("hierarchical_sigmoid", ins, {"num_classes": classes}, ["Out"])
    np.testing.assert_allclose(np.asarray(out).ravel(), _ref_hsig(x, w, b, labels.ravel(), classes), rtol=1e-12)
    check_grad("hierarchical_sigmoid", ins, {"num_classes": classes}, outputs=("Out", "PreOut"),
               grad_outputs=("Out",))


def test_hsigmoid_probabilities_sum_to_one():
    """exp(-Out) is the probability of the label: over every label it sums to 1."""
    classes = 7
    x, w, b = RNG.normal(size=(1, 3)), RNG.normal(size=(classes - 1, 3)), RNG.normal(size=(classes - 1, 1))
    ins = {"X": np.repeat(x, classes, 0), "W": w, "Label": np.arange(classes).reshape(-1, 1), "Bias": b}
    (out,) = _run_op("hierarchical_sigmoid", ins, {"num_classes": classes}, ["Out"])
    assert np.exp(-np.asarray(out)).sum() == pytest.approx(1.0)


def test_hsigmoid_custom_tree_grad():
    table = np.array([[0, 2, -1], [0, 1, 3], [1, -1, -1]])
    code = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0]])
    ins = {"X": RNG.normal(size=(3, 2)), "W": RNG.normal(size=(4, 2)), "Label": np.zeros((3, 1), dtype=np.int64),
           "PathTable": table, "PathCode": code, "Bias": RNG.normal(size=(4, 1))}
    check_grad("hierarchical_sigmoid", ins, {"num_classes": 4}, outputs=("Out", "PreOut"), grad_outputs=("Out",),
               wrt=["X", "W", "Bias"])


def test_word2vec_style_models_train_with_nce_and_hsigmoid():
    word = layers.data("word", [1], dtype="int64")
    nxt = layers.data("next", [1], dtype="int64")
    emb = layers.embedding(word, size=[12, 8], is_sparse=True)
    loss_nce = layers.mean(layers.nce(emb, nxt, num_total_classes=12, num_neg_samples=4, seed=3, is_sparse=True))
    loss_hs = layers.mean(layers.hsigmoid(emb, nxt, num_classes=12, is_sparse=True))
    loss = layers.elementwise_add(loss_nce, loss_hs)
    fk.optimizer.SGD(0.5).minimize(loss)
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    w = np.arange(24).reshape(-1, 1) % 12
    feed = {"word": w, "next": (w + 1) % 12}  # the next word is always word + 1
    first = exe.run(feed=feed, fetch_list=[loss_hs])[0][0]
    for _ in range(60):
        exe.run(feed=feed)
    assert exe.run(feed=feed, fetch_list=[loss_hs])[0][0] < 0.5 * first


def test_layers_check_arguments():
    x, lab = layers.data("x", [3]), layers.data("l", [1], dtype="int64")
    with pytest.raises(InvalidArgumentError, match="sampler 'zipf'"):
        layers.nce(x, lab, 10, sampler="zipf")
    with pytest.raises(InvalidArgumentError, match="custom_dist goes with"):
        layers.nce(x, lab, 10, custom_dist=[0.1] * 10)
    with pytest.raises(InvalidArgumentError, match="is_custom needs"):
        layers.hsigmoid(x, lab, 10, is_custom=True)


# ------------------------------------------------------------- sample_logits
def test_sample_logits_forward_grad_and_hits():
    logits = RNG.normal(size=(3, 8))
    labels = np.array([[2], [5], [0]])
    attrs = {"num_samples": 4, "seed": 5}
    samples, probs, sampled, slab = [np.asarray(v) for v in _run_op(
        "sample_logits", {"Logits": logits, "Labels": labels}, attrs,
        ["Samples", "Probabilities", "SampledLogits", "SampledLabels"])]
    assert samples[:, 0].tolist() == [2, 5, 0] and slab.ravel().tolist() == [0, 0, 0]
    neg = samples[0, 1:]
    assert len(set(neg.tolist())) == 4 and (samples[:, 1:] == neg).all()  # unique, shared by every row
    for i in range(3):
        for j in range(5):
            want = logits[i, samples[i, j]] - np.log(probs[i, j])
            if j and samples[i, j] == labels[i, 0]:
                want -= 1e20  # an accidental hit is masked
            assert sampled[i, j] == pytest.approx(want)
    # (the -1e20 of a masked hit swamps any finite difference: check the gradient without masking)
    check_grad("sample_logits", {"Logits": logits, "Labels": labels}, dict(attrs, remove_accidental_hits=False),
               outputs=("Samples", "Probabilities", "SampledLogits", "SampledLabels"), grad_outputs=("SampledLogits",),
               wrt=["Logits"])


def test_sampled_softmax_trains_a_language_model():
    word, nxt = layers.data("w", [1], dtype="int64"), layers.data("n", [1], dtype="int64")
    logits = layers.fc(layers.embedding(word, size=[50, 16]), 50)
    loss = layers.mean(layers.sampled_softmax_with_cross_entropy(logits, nxt, num_samples=10, seed=2))
    full = layers.mean(layers.softmax_with_cross_entropy(logits, nxt))
    fk.optimizer.Adam(0.05).minimize(loss)
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    w = np.arange(50).reshape(-1, 1)
    feed = {"w": w, "n": (w * 7 + 3) % 50}
    before = float(exe.run(feed=feed, fetch_list=[full])[0][0])
    for _ in range(60):
        exe.run(feed=feed)
    assert float(exe.run(feed=feed, fetch_list=[full])[0][0]) < 0.5 * before  # the full softmax loss falls too
