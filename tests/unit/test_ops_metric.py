"""top_k, arg_max/arg_min, accuracy and streaming AUC (against sklearn)."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import fleetkit as fk
from fleetkit import layers
from fleetkit.core.ops.metric import roc_auc_from_stats
from fleetkit.errors import FleetkitError, InvalidArgumentError, ShapeError
from fleetkit.testing.gradcheck import check_grad

RNG = np.random.default_rng(1)


def _exe():
    exe = fk.Executor()
    exe.run(fk.default_startup_program())
    return exe


# -------------------------------------------------------------------- top_k
@pytest.mark.parametrize("d,k", [(40, 3), (6, 4)])  # partition path and full-sort path
def test_top_k_forward(d, k):
    x = layers.data("x", [d])
    vals, idx = layers.topk(x, k)
    xv = RNG.permutation(7 * d).reshape(7, d).astype("float32")
    got_v, got_i = _exe().run(feed={"x": xv}, fetch_list=[vals, idx])
    want_i = np.argsort(-xv, axis=1)[:, :k]
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_v, np.take_along_axis(xv, want_i, 1))
    assert got_i.dtype == np.int64 and vals.shape == (-1, k)


def test_top_k_grad():
    check_grad("top_k", {"X": RNG.permutation(24).reshape(4, 6).astype(np.float64)}, {"k": 2},
               outputs=["Out", "Indices"], grad_outputs=["Out"])


def test_top_k_k_too_large():
    x = layers.data("x", [3])
    with pytest.raises(ShapeError, match="k=5 exceeds"):
        layers.topk(x, 5)


# ----------------------------------------------------------- arg_max / arg_min
def test_argmax_argmin():
    x = layers.data("x", [3, 4])
    outs = [layers.argmax(x, axis=0), layers.argmax(x, axis=-1), layers.argmin(x, axis=1)]
    xv = RNG.normal(size=(2, 3, 4)).astype("float32")
    got = _exe().run(feed={"x": xv}, fetch_list=outs)
    for g, w in zip(got, [xv.argmax(0), xv.argmax(-1), xv.argmin(1)]):
        np.testing.assert_array_equal(g, w)
        assert g.dtype == np.int64
    assert outs[1].shape == (-1, 3) and outs[2].shape == (-1, 4)


# ---------------------------------------------------------------- accuracy
@pytest.mark.parametrize("k", [1, 3])
def test_accuracy(k):
    pred = layers.data("pred", [10])
    lab = layers.data("lab", [1], dtype="int64")
    correct = fk.default_main_program().global_block().create_var(name="correct", dtype="int32")
    acc = layers.accuracy(pred, lab, k=k, correct=correct)
    pv = RNG.normal(size=(50, 10)).astype("float32")
    lv = RNG.integers(0, 10, size=(50, 1))
    got, got_c = _exe().run(feed={"pred": pv, "lab": lv}, fetch_list=[acc, correct])
    hits = (np.argsort(-pv, 1)[:, :k] == lv).any(1).sum()
    assert got.dtype == np.float32 and got.shape == (1,)
    np.testing.assert_allclose(got, hits / 50, rtol=1e-6)
    assert got_c.dtype == np.int32 and got_c[0] == hits


def test_accuracy_total_default_int64():
    pred = layers.data("pred", [4])
    lab = layers.data("lab", [1], dtype="int64")
    layers.accuracy(pred, lab)
    op = fk.default_main_program().global_block().ops[-1]
    block = fk.default_main_program().global_block()
    total = block.var(op.output("Total")[0])
    assert total.dtype == "int64"
    (got,) = _exe().run(feed={"pred": np.eye(4, dtype="float32"), "lab": np.array([[0], [1], [0], [3]])},
                        fetch_list=[total])
    assert got.tolist() == [4]


def test_accuracy_label_mismatch():
    pred = layers.data("pred", [4])
    lab = layers.data("lab", [2], dtype="int64")
    with pytest.raises(ShapeError, match=r"Label must be \[N, 1\], got \[-1, 2\]"):
        layers.accuracy(pred, lab)


# --------------------------------------------------------------------- auc
def _auc_program(slide_steps=1, num_thresholds=2 ** 12 - 1):
    pred = layers.data("pred", [2])
    lab = layers.data("lab", [1], dtype="int64")
    return layers.auc(pred, lab, num_thresholds=num_thresholds, slide_steps=slide_steps)


def _batch(n, skill=1.5):
    lab = RNG.integers(0, 2, size=(n, 1))
    score = 1 / (1 + np.exp(-(RNG.normal(size=(n, 1)) + skill * (lab - 0.5))))
    return np.hstack([1 - score, score]).astype("float32"), lab


def test_auc_global_and_batch_match_sklearn():
    auc_out, batch_auc, stats = _auc_program()
    for v in stats:
        assert v.persistable and v.dtype == "int64"
    exe = _exe()
    preds, labels = [], []
    for _ in range(4):
        pv, lv = _batch(300)
        preds.append(pv[:, 1])
        labels.append(lv[:, 0])
        got_all, got_batch = exe.run(feed={"pred": pv, "lab": lv}, fetch_list=[auc_out, batch_auc])
        assert got_all.dtype == np.float64 and got_all.shape == (1,)
        # bucketing to 4096 bins moves the AUC by far less than 1e-3
        assert abs(got_batch[0] - roc_auc_score(lv[:, 0], pv[:, 1])) < 1e-3
        assert abs(got_all[0] - roc_auc_score(np.concatenate(labels), np.concatenate(preds))) < 1e-3


def test_auc_is_exact_when_scores_sit_in_distinct_buckets():
    auc_out, _, stats = _auc_program(num_thresholds=100)
    score = (RNG.permutation(100)[:60] + 0.5) / 100.0  # mid-bucket scores, one per bucket
    lab = RNG.integers(0, 2, size=60)
    pv = np.stack([1 - score, score], 1)
    got_auc, pos, neg = _exe().run(feed={"pred": pv.astype("float32"), "lab": lab[:, None]},
                                   fetch_list=[auc_out, stats[2], stats[3]])
    assert got_auc[0] == pytest.approx(roc_auc_score(lab, score), abs=1e-12)
    bucket = (score.astype("float32") * 100).astype(int)
    np.testing.assert_array_equal(pos[0], np.bincount(bucket[lab == 1], minlength=101))
    np.testing.assert_array_equal(neg[0], np.bincount(bucket[lab == 0], minlength=101))


def test_auc_slide_window():
    _, batch_auc, _ = _auc_program(slide_steps=2)
    exe = _exe()
    batches = [_batch(200, skill) for skill in (0.5, 3.0, 1.0)]
    got = [exe.run(feed={"pred": p, "lab": lab}, fetch_list=[batch_auc])[0][0] for p, lab in batches]
    for step in range(3):
        window = batches[max(0, step - 1):step + 1]
        want = roc_auc_score(np.concatenate([lab[:, 0] for _, lab in window]),
                             np.concatenate([p[:, 1] for p, _ in window]))
        assert abs(got[step] - want) < 1e-3


def test_auc_ties_count_half_and_one_class_gives_zero():
    np.testing.assert_allclose(roc_auc_from_stats(np, np.array([0, 2]), np.array([0, 2])), 0.5)
    assert float(roc_auc_from_stats(np, np.array([0, 0]), np.array([3, 1]))) == 0.0


def test_auc_bad_stat_shape_and_curve():
    pred = layers.data("pred", [2])
    lab = layers.data("lab", [1], dtype="int64")
    with pytest.raises(InvalidArgumentError, match="PR"):
        layers.auc(pred, lab, curve="PR")
    block = fk.default_main_program().global_block()
    sp = block.create_var(name="sp", shape=[1, 5], dtype="int64", persistable=True)
    sn = block.create_var(name="sn", shape=[1, 5], dtype="int64", persistable=True)
    out = block.create_var(name="a", dtype="float64")
    block.append_op("auc", {"Predict": [pred], "Label": [lab], "StatPos": [sp], "StatNeg": [sn]},
                    {"AUC": [out], "StatPosOut": [sp], "StatNegOut": [sn]}, {"num_thresholds": 9})
    scope = fk.global_scope()
    scope.set("sp", np.zeros((1, 5), "int64"))
    scope.set("sn", np.zeros((1, 5), "int64"))
    pv, lv = _batch(4)
    with pytest.raises(FleetkitError, match=r"StatPos 'sp' has shape \[1, 5\].*10"):
        fk.Executor().run(feed={"pred": pv, "lab": lv}, fetch_list=[out])
