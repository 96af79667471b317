"""beam_search and beam_search_decode (fluid 1.4) against a brute-force numpy beam search.

The "model" is a table of next-word log-probabilities keyed by (source, whole prefix), so
every prefix of the search tree scores differently and a wrong parent shows up."""
import zlib

import numpy as np
import pytest

import fleetkit as fk
from fleetkit import layers
from fleetkit.errors import InvalidArgumentError

START, END = 0, 1


def _logp(src, prefix, vocab, end_bias):
    """Deterministic log-softmax over the vocabulary for one (source, prefix)."""
    seed = zlib.crc32(repr((src, tuple(prefix))).encode())
    z = np.random.default_rng(seed).normal(size=vocab) * 2.0
    z[END] += end_bias * len(prefix)  # ending gets likelier as the sentence grows
    return z - np.log(np.exp(z).sum())


def reference(n_src, vocab, beam, max_steps, end_bias):
    """Per source, the sentences (ids incl. START, final score) of a textbook beam search:
    finished hypotheses stay in the beam with their score; a source stops when its whole
    beam has finished; best score first."""
    out = []
    for s in range(n_src):
        beams = [([START], 0.0)]
        for _ in range(max_steps):
            if all(p[-1] == END and len(p) > 1 for p, _ in beams):
                break
            cands = []
            for p, sc in beams:
                if p[-1] == END and len(p) > 1:
                    cands.append((p, sc))
                    continue
                lp = _logp(s, p, vocab, end_bias)
                cands += [(p + [w], sc + lp[w]) for w in range(vocab)]
            beams = sorted(cands, key=lambda c: -c[1])[:beam]
        out.append(sorted(beams, key=lambda c: -c[1]))
    return out


def _step_program(beam, accumulated, vocab=4):
    main, startup = fk.Program(), fk.Program()
    with fk.program_guard(main, startup):
        pre_ids = layers.data("pre_ids", [1], dtype="int64", lod_level=2)
        pre_scores = layers.data("pre_scores", [1], dtype="float32", lod_level=2)
        scores = layers.data("scores", [vocab], dtype="float32", lod_level=2)
        outs = layers.beam_search(pre_ids, pre_scores, None, scores, beam_size=beam, end_id=END,
                                  is_accumulated=accumulated, return_parent_idx=True)
    return main, list(outs)


def _decode_program(n_steps, beam):
    main, startup = fk.Program(), fk.Program()
    with fk.program_guard(main, startup):
        ids_arr, scores_arr = layers.create_array("int64"), layers.create_array("float32")
        for t in range(n_steps):
            i = layers.fill_constant([1], "int64", t)
            layers.array_write(layers.data(f"ids{t}", [1], dtype="int64", lod_level=2), i, ids_arr)
            layers.array_write(layers.data(f"scores{t}", [1], dtype="float32", lod_level=2), i, scores_arr)
        outs = layers.beam_search_decode(ids_arr, scores_arr, beam_size=beam, end_id=END)
    return main, list(outs)


def run_search(n_src, vocab, beam, max_steps, end_bias, accumulated=True):
    """The book's decode loop, one Executor.run per step; returns the decoded sentences per source."""
    exe = fk.Executor(fk.CPUPlace())
    step, step_outs = _step_program(beam, accumulated, vocab)
    # step 0: one prefix (START, score 0) per source
    lod = [list(range(n_src + 1)), list(range(n_src + 1))]
    ids = fk.LoDTensor(np.full((n_src, 1), START, np.int64), lod)
    scores = fk.LoDTensor(np.zeros((n_src, 1), np.float32), lod)
    prefixes = [(s, [START]) for s in range(n_src)]  # the (source, prefix) of each row
    steps = [(ids, scores)]
    for _ in range(max_steps):
        rows = []
        for (s, p), sc in zip(prefixes, np.asarray(scores.values).reshape(-1)):
            probs = np.exp(_logp(s, p, vocab, end_bias))
            rows.append(sc + np.log(probs) if accumulated else probs)
        feed = {"pre_ids": ids, "pre_scores": scores,
                "scores": fk.LoDTensor(np.asarray(rows, np.float32).reshape(len(rows), vocab), scores.lod())}
        ids, scores, parent = exe.run(step, feed=feed, fetch_list=step_outs, return_numpy=False)
        if np.asarray(ids.values).size == 0:  # every source finished: the book's is_empty stop
            break
        steps.append((ids, scores))
        prefixes = [(prefixes[r][0], prefixes[r][1] + [int(w)])
                    for r, w in zip(np.asarray(parent).reshape(-1), np.asarray(ids.values).reshape(-1))]
    dec, dec_outs = _decode_program(len(steps), beam)
    feed = {}
    for t, (i, sc) in enumerate(steps):
        feed[f"ids{t}"], feed[f"scores{t}"] = i, sc
    sent_ids, sent_scores = exe.run(dec, feed=feed, fetch_list=dec_outs, return_numpy=False)
    src_off, sent_off = sent_ids.lod()
    words, finals = np.asarray(sent_ids.values), np.asarray(sent_scores.values)
    got = []
    for s in range(n_src):
        got.append([(words[sent_off[k]:sent_off[k + 1]].tolist(), float(finals[sent_off[k + 1] - 1]))
                    for k in range(src_off[s], src_off[s + 1])])
    return got


@pytest.mark.parametrize("n_src,vocab,beam,end_bias", [(3, 5, 2, 0.0), (3, 4, 3, 0.8), (4, 6, 3, 2.0),
                                                        (2, 3, 2, 0.3)])
@pytest.mark.parametrize("accumulated", [True, False])
def test_decoded_sentences_equal_brute_force(n_src, vocab, beam, end_bias, accumulated):
    max_steps = 5
    want = reference(n_src, vocab, beam, max_steps, end_bias)
    got = run_search(n_src, vocab, beam, max_steps, end_bias, accumulated)
    assert [[w for w, _ in src] for src in got] == [[p for p, _ in src] for src in want]
    for g_src, w_src in zip(got, want):
        np.testing.assert_allclose([sc for _, sc in g_src], [sc for _, sc in w_src], rtol=1e-5, atol=1e-5)
    # sentences that end early stop with one END (the redundant carried-over END ids are dropped)
    assert any(w[-1] == END and len(w) < max_steps + 1 for src in got for w, _ in src) or end_bias == 0.0


def test_all_sources_end_at_the_first_step():
    # beam 1 and END overwhelming: every source ends at step 1, step 2 selects nothing
    exe = fk.Executor(fk.CPUPlace())
    step, outs = _step_program(1, True)
    lod = [[0, 1, 2, 3], [0, 1, 2, 3]]
    ids = fk.LoDTensor(np.zeros((3, 1), np.int64), lod)
    scores = fk.LoDTensor(np.zeros((3, 1), np.float32), lod)
    table = np.log(np.full((3, 4), 0.01, np.float32))
    table[:, END] = np.log(0.97)
    ids1, scores1, _ = exe.run(step, feed={"pre_ids": ids, "pre_scores": scores,
                                           "scores": fk.LoDTensor(table, lod)}, fetch_list=outs, return_numpy=False)
    assert np.asarray(ids1.values).reshape(-1).tolist() == [END] * 3
    assert ids1.lod() == lod
    # a finished prefix is carried with its score and not extended; a source all of whose
    # beams ended and stayed ended is pruned: no rows at all
    ids2, scores2, _ = exe.run(step, feed={"pre_ids": ids1, "pre_scores": scores1,
                                           "scores": fk.LoDTensor(table + 5.0, lod)}, fetch_list=outs,
                               return_numpy=False)
    assert np.asarray(ids2.values).size == 0
    assert ids2.lod() == [[0, 1, 2, 3], [0, 0, 0, 0]]
    dec, dec_outs = _decode_program(2, 1)
    sent_ids, sent_scores = exe.run(dec, feed={"ids0": ids, "scores0": scores, "ids1": ids1, "scores1": scores1},
                                    fetch_list=dec_outs, return_numpy=False)
    assert np.asarray(sent_ids.values).tolist() == [START, END] * 3
    assert sent_ids.lod() == [[0, 1, 2, 3], [0, 2, 4, 6]]
    np.testing.assert_allclose(np.asarray(sent_scores.values), [0, np.log(0.97)] * 3, rtol=1e-6)


def test_selected_lod_says_which_source_and_prefix():
    exe = fk.Executor(fk.CPUPlace())
    step, outs = _step_program(2, True)
    # source 0 has prefix rows 0, 1; source 1 rows 2 (already finished) and 3
    lod = [[0, 2, 4], [0, 1, 2, 3, 4]]
    pre_ids = fk.LoDTensor(np.asarray([[3], [4], [END], [2]], np.int64), lod)
    pre_scores = fk.LoDTensor(np.asarray([[-1.0], [-2.0], [-0.5], [-1.0]], np.float32), lod)
    sc = np.asarray([[-9, -9, -1.5, -1.2], [-9, -9, -2.1, -9], [-0.1, -0.1, -0.1, -0.1], [-9, -9, -9, -1.3]],
                    np.float32)
    ids, scores, parent = exe.run(step, feed={"pre_ids": pre_ids, "pre_scores": pre_scores,
                                              "scores": fk.LoDTensor(sc, lod)}, fetch_list=outs,
                                  return_numpy=False)
    # source 0: (-1.2, row 0, id 3), (-1.5, row 0, id 2); source 1: its finished prefix with its
    # score kept (its row's scores ignored), then (-1.3, row 3, id 3)
    assert np.asarray(ids.values).reshape(-1).tolist() == [3, 2, END, 3]
    np.testing.assert_allclose(np.asarray(scores.values).reshape(-1), [-1.2, -1.5, -0.5, -1.3])
    assert np.asarray(parent).tolist() == [0, 0, 2, 3]
    assert ids.lod() == [[0, 2, 4], [0, 2, 2, 3, 4]]
    # a source whose kept candidates are all finished prefixes is pruned (one step after it ended)
    both_ended = fk.LoDTensor(np.asarray([[3], [4], [END], [END]], np.int64), lod)
    ids, _, _ = exe.run(step, feed={"pre_ids": both_ended, "pre_scores": pre_scores, "scores": fk.LoDTensor(sc, lod)},
                        fetch_list=outs, return_numpy=False)
    assert ids.lod() == [[0, 2, 4], [0, 2, 2, 2, 2]]


def test_scores_without_two_lod_levels_are_refused_by_name():
    exe = fk.Executor(fk.CPUPlace())
    step, outs = _step_program(2, True)
    lod = [[0, 1]]
    feed = {"pre_ids": fk.LoDTensor(np.zeros((1, 1), np.int64), lod),
            "pre_scores": fk.LoDTensor(np.zeros((1, 1), np.float32), lod),
            "scores": fk.LoDTensor(np.zeros((1, 4), np.float32), lod)}
    with pytest.raises(InvalidArgumentError, match="beam_search: 'scores' .* needs 2 levels"):
        exe.run(step, feed=feed, fetch_list=outs)
    with pytest.raises(InvalidArgumentError, match="beam_size must be >= 1"):
        layers.beam_search(step.global_block().var("pre_ids"), step.global_block().var("pre_scores"), None,
                           step.global_block().var("scores"), beam_size=0, end_id=END)
