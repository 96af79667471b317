"""edit_distance (against a plain dynamic-programming reference, ignored tokens) and
chunk_eval (IOB / IOE / IOBES / plain against hand-counted chunks)."""
import itertools

import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.core.ops.metric_ext import chunks, levenshtein
from fleetkit.errors import InvalidArgumentError


def ref_levenshtein(a, b):
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i, j in itertools.product(range(1, len(a) + 1), range(1, len(b) + 1)):
        d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return d[-1][-1]


def test_levenshtein_matches_the_textbook_table():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = rng.integers(0, 4, size=rng.integers(0, 8)), rng.integers(0, 4, size=rng.integers(0, 8))
        assert levenshtein(a, b) == ref_levenshtein(list(a), list(b))


def _lod(seqs):
    return (np.concatenate(seqs).reshape(-1, 1).astype(np.int64), [[len(s) for s in seqs]])


def test_edit_distance_layer():
    hyp = [np.array([1, 2, 3]), np.array([4, 0, 5, 0]), np.array([7])]
    ref = [np.array([1, 3]), np.array([4, 5, 6]), np.array([7])]
    h, r = layers.data("h", [1], dtype="int64", lod_level=1), layers.data("r", [1], dtype="int64", lod_level=1)
    d, n = layers.edit_distance(h, r)
    d_raw, _ = layers.edit_distance(h, r, normalized=False, ignored_tokens=[0])
    got = fk.Executor().run(feed={"h": _lod(hyp), "r": _lod(ref)}, fetch_list=[d, n, d_raw])
    np.testing.assert_allclose(got[0].ravel(), [1 / 2, 2 / 3, 0.0], rtol=1e-6)
    assert got[1].tolist() == [3]
    np.testing.assert_array_equal(got[2].ravel(), [1, 1, 0])  # zeros erased: [4, 5] vs [4, 5, 6]


def test_edit_distance_needs_matching_counts():
    h, r = layers.data("h", [1], dtype="int64", lod_level=1), layers.data("r", [1], dtype="int64", lod_level=1)
    d, _ = layers.edit_distance(h, r)
    with pytest.raises(InvalidArgumentError, match="2 hypotheses.*but 1 references"):
        fk.Executor().run(feed={"h": _lod([np.array([1]), np.array([2])]), "r": _lod([np.array([1])])},
                          fetch_list=[d])


# IOB with 2 chunk types: B-0=0 I-0=1 B-1=2 I-1=3 O=4
@pytest.mark.parametrize("scheme,tags,want", [
    ("IOB", [0, 1, 4, 2, 3, 3, 0], {(0, 1, 0), (3, 5, 1), (6, 6, 0)}),
    ("IOB", [1, 1, 2, 0, 4], {(0, 1, 0), (2, 2, 1), (3, 3, 0)}),           # a chunk may start with I
    ("IOE", [0, 1, 0, 0, 1, 4, 3], {(0, 1, 0), (2, 4, 0), (6, 6, 1)}),     # I-0=0 E-0=1 I-1=2 E-1=3
    ("IOBES", [0, 1, 2, 3, 8, 4, 6], {(0, 2, 0), (3, 3, 0), (4, 4, 2), (5, 6, 1)}),
    ("plain", [0, 0, 1, 2, 0], {(0, 1, 0), (2, 2, 1), (4, 4, 0)}),         # O = 2
])
def test_chunk_extraction(scheme, tags, want):
    n_types = 3 if scheme == "IOBES" else 2
    assert chunks(np.array(tags), scheme, n_types) == want


def test_chunk_eval_layer_counts_and_scores():
    label = [np.array([0, 1, 4, 2, 3]), np.array([2, 4, 0])]
    infer = [np.array([0, 1, 4, 2, 4]), np.array([2, 4, 4])]
    i, l = layers.data("i", [1], dtype="int64", lod_level=1), layers.data("l", [1], dtype="int64", lod_level=1)
    outs = layers.chunk_eval(i, l, "IOB", num_chunk_types=2)
    p, r, f1, ni, nl, nc = fk.Executor().run(feed={"i": _lod(infer), "l": _lod(label)}, fetch_list=list(outs))
    # label chunks: (0,1,0) (3,4,1) | (0,0,1) (2,2,0); inferred: (0,1,0) (3,3,1) | (0,0,1)
    assert (ni[0], nl[0], nc[0]) == (3, 4, 2)
    np.testing.assert_allclose([p[0], r[0], f1[0]], [2 / 3, 1 / 2, 2 * (2 / 3) * 0.5 / (2 / 3 + 0.5)], rtol=1e-6)
    outs = layers.chunk_eval(i, l, "IOB", num_chunk_types=2, excluded_chunk_types=[1])
    _, _, _, ni, nl, nc = fk.Executor().run(feed={"i": _lod(infer), "l": _lod(label)}, fetch_list=list(outs))
    assert (ni[0], nl[0], nc[0]) == (1, 2, 1)


def test_chunk_eval_bad_tag_and_scheme():
    i, l = layers.data("i", [1], dtype="int64", lod_level=1), layers.data("l", [1], dtype="int64", lod_level=1)
    with pytest.raises(InvalidArgumentError, match="chunk_scheme 'BIO'"):
        layers.chunk_eval(i, l, "BIO", 2)
    outs = layers.chunk_eval(i, l, "IOB", 2)
    with pytest.raises(InvalidArgumentError, match="holds tag 5, outside \\[0, 4\\]"):
        fk.Executor().run(feed={"i": _lod([np.array([5])]), "l": _lod([np.array([1])])}, fetch_list=[outs[0]])
