"""fleetkit.demo.ctr_data, the one synthetic CTR data module (issue 14): both hidden models
keep their id spaces, the per-slot lines say what the per-slot columns hold, and the
labels carry the signal the models are asked to learn."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetkit.demo.ctr_data import CTRConfig, CTRData, UniformCTRData, auc, write_click_log

CFG = CTRConfig(num_slots=3, vocab=40, max_len=3, dense_dim=2, seed=5)
MODELS = [CTRData, UniformCTRData]


@pytest.mark.parametrize("model", MODELS)
def test_slot_s_uses_its_own_id_range_and_lengths(model):
    ex = model(CFG).examples(500, seed=1)
    assert ex["label"].shape == (500, 1) and ex["dense"].shape == (500, CFG.dense_dim)
    for s, (flat, lengths) in enumerate(ex["ids"]):
        assert lengths.min() >= 1 and lengths.max() <= CFG.max_len and len(flat) == lengths.sum()
        assert flat.min() >= s * CFG.vocab and flat.max() < (s + 1) * CFG.vocab, s


@pytest.mark.parametrize("model", MODELS)
def test_examples_are_a_function_of_the_seeds(model):
    a, b, c = model(CFG).examples(50, 3), model(CFG).examples(50, 3), model(CFG).examples(50, 4)
    np.testing.assert_array_equal(a["dense"], b["dense"])
    np.testing.assert_array_equal(a["ids"][0][0], b["ids"][0][0])
    assert not np.array_equal(a["dense"], c["dense"])


@pytest.mark.parametrize("model", MODELS)
def test_labels_follow_the_hidden_click_probability(model):
    ex = model(CTRConfig(vocab=500)).examples(4000, seed=2)
    assert auc(ex["label"], ex["prob"]) > 0.75  # the best a model can learn: well above chance
    assert auc(ex["label"], np.random.default_rng(0).random(4000)) == pytest.approx(0.5, abs=0.05)


def test_per_slot_lines_hold_the_per_slot_columns():
    data = UniformCTRData(CFG)
    cols, lines = data.per_slot_columns(20, seed=7), data.per_slot_lines(20, seed=7)
    for i, line in enumerate(lines):
        v = line.split()
        assert v[:2] == ["1", str(cols["label"][i])]
        pos = 2
        for k in range(CFG.dense_dim):  # one 1-wide slot per dense column
            assert v[pos] == "1" and float(v[pos + 1]) == pytest.approx(cols["dense"][i, k], abs=1e-6)
            pos += 2
        for s in range(CFG.num_slots):  # slot-local ids, 0..vocab-1
            lo = int(cols["lens"][s][:i].sum())
            want = cols["ids"][s][lo:lo + cols["lens"][s][i]]
            assert int(v[pos]) == len(want) and [int(x) for x in v[pos + 1:pos + 1 + len(want)]] == want.tolist()
            assert want.max() < CFG.vocab
            pos += 1 + len(want)
        assert pos == len(v)


def test_per_slot_files_and_click_log(tmp_path):
    data = UniformCTRData(CFG)
    paths = data.write_per_slot_files(str(tmp_path / "parts"), 2, 5, seed=3)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["part-00000", "part-00001"]
    assert Path(paths[1]).read_text().splitlines() == data.per_slot_lines(5, 3001)  # file k: seed * 1000 + k
    write_click_log(data, str(tmp_path / "log"), 4, seed=1)
    ex = data.examples(4, seed=1)
    first = (tmp_path / "log").read_text().splitlines()[0].split("\t")
    assert first[0] == str(ex["label"][0, 0]) and len(first) == 2 + CFG.num_slots


def test_uniform_id_weights_are_its_table():
    data = UniformCTRData(CFG)
    np.testing.assert_array_equal(data.id_weight(np.array([0, CFG.vocab + 3])), [data.table[0, 0], data.table[1, 3]])
