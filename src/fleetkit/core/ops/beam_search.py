"""fluid 1.4's beam-search ops: ``beam_search`` (one step) and ``beam_search_decode``
(the steps back into sentences).  Forward only, as in fluid: decoding is not trained.

The LoD that ties the steps together, as fluid 1.4 defines it: a step's ``selected_ids``
has two levels, level 0 saying which rows of this step's input (prefixes) belong to each
source sentence, level 1 which selected candidates extend each of those prefixes.  The
next step's input rows are this step's candidates, so candidate row ``c`` of step ``t`` is
prefix row ``c`` of step ``t + 1``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from ..registry import KernelContext, ShapeContext, register_op
from ..scope import LoDTensor


def _abs_level(lod: list[list[int]], level: int) -> list[int]:
    """LoD level ``level`` as row offsets (fluid's ToAbsOffset): the levels below map it down to rows."""
    off = list(lod[level])
    for finer in lod[level + 1:]:
        off = [finer[o] for o in off]
    return off


def select_candidates(pre_ids: np.ndarray, pre_scores: np.ndarray, ids: np.ndarray | None,
                      scores: np.ndarray, sources: list[int], beam_size: int, end_id: int,
                      is_accumulated: bool) -> list[list[tuple[float, int, int]]]:
    """Per prefix row: the (score, row, id) candidates kept, best first.

    Each source keeps its best ``beam_size`` over all its prefixes' candidates; a finished
    prefix (its last id is ``end_id``) offers only itself, with its score unchanged.  Ties
    go to the later row, as fluid's Item ordering (score, then offset)."""
    width = scores.shape[1] if scores.ndim > 1 else 1
    flat_scores = scores.reshape(scores.shape[0], width)
    flat_ids = ids.reshape(ids.shape[0], width) if ids is not None else None
    kept: list[list[tuple[float, int, int]]] = [[] for _ in range(pre_ids.shape[0])]
    for s in range(len(sources) - 1):
        pool = []
        for row in range(sources[s], sources[s + 1]):
            pre_id, pre_score = int(pre_ids[row]), float(pre_scores[row])
            if pre_id == end_id:
                pool.append((pre_score, row, end_id))
                continue
            for d in range(width):
                cand = int(flat_ids[row, d]) if flat_ids is not None else d
                sc = float(flat_scores[row, d]) if is_accumulated else pre_score + float(np.log(flat_scores[row, d]))
                pool.append((sc, row, cand))
        pool.sort(key=lambda it: (it[0], it[1]), reverse=True)
        top = pool[:beam_size]
        # a source all of whose kept candidates are finished prefixes carrying end_id on is
        # done: fluid prunes it one step after it finished (so the end tokens were written)
        if top and all(cand == end_id and int(pre_ids[row]) == end_id for _, row, cand in top):
            continue
        for item in top:
            kept[item[1]].append(item)
    return kept


def _beam_search_infer(ctx: ShapeContext) -> None:
    ctx.set("selected_ids", (-1, 1), "int64", 2)
    ctx.set("selected_scores", (-1, 1), ctx.dtype("scores"), 2)
    if ctx.has("parent_idx"):
        ctx.set("parent_idx", (-1,), "int32", 0)


@register_op("beam_search", _beam_search_infer, attrs={"level": 0, "beam_size": 1, "end_id": 0,
                                                       "is_accumulated": True})
def beam_search(ctx: KernelContext) -> None:
    lod = ctx.lod("scores") or ctx.lod("pre_ids")
    level = int(ctx.attr("level"))
    if not lod or len(lod) < 2 or not 0 <= level < len(lod):
        raise InvalidArgumentError(
            f"beam_search: 'scores' ('{ctx.ins['scores'][0]}') has LoD {lod}; it needs 2 levels (source -> "
            f"prefixes, prefixes -> rows: lod_reset it to pre_scores, as fluid 1.4's decoders do) and level "
            f"{level} among them")
    beam_size, end_id = int(ctx.attr("beam_size")), int(ctx.attr("end_id"))
    if beam_size < 1:
        raise InvalidArgumentError(f"beam_search: beam_size must be >= 1, got {beam_size}")
    pre_ids = np.asarray(ctx.x("pre_ids")).reshape(-1)
    pre_scores = np.asarray(ctx.x("pre_scores")).reshape(-1)
    scores = np.asarray(ctx.x("scores"))
    ids = np.asarray(ctx.x("ids")) if ctx.has("ids") else None
    sources = _abs_level(lod, level)
    if sources[-1] != pre_ids.shape[0] or scores.shape[0] != pre_ids.shape[0]:
        raise InvalidArgumentError(
            f"beam_search: 'pre_ids' has {pre_ids.shape[0]} rows, 'scores' {scores.shape[0]} and its LoD level "
            f"{level} covers {sources[-1]}: one row per prefix is expected in each")
    kept = select_candidates(pre_ids, pre_scores, ids, scores, sources, beam_size, end_id,
                             bool(ctx.attr("is_accumulated")))
    flat = [item for items in kept for item in items]
    counts = np.cumsum([0] + [len(items) for items in kept]).tolist()
    out_lod = [sources, counts]
    xp = ctx.xp
    ctx.out("selected_ids", xp.asarray(np.asarray([c for _, _, c in flat], np.int64).reshape(-1, 1)), out_lod)
    score_dtype = scores.dtype if scores.dtype.kind == "f" else np.float32
    ctx.out("selected_scores", xp.asarray(np.asarray([s for s, _, _ in flat], score_dtype).reshape(-1, 1)),
            out_lod)
    ctx.out("parent_idx", xp.asarray(np.asarray([r for _, r, _ in flat], np.int32)))


# ------------------------------------------------------------------------ decode
def backtrace(steps: list[tuple[np.ndarray, np.ndarray, list[list[int]]]], beam_size: int,
              end_id: int) -> list[list[tuple[list[int], list[float]]]]:
    """Per source: its sentences as (ids, scores), first word first, best final score first.

    Walks back from each source's last step that has candidates; an end_id after a
    sentence already ended is not repeated (fluid skips the redundant end tokens)."""
    n_src = len(steps[0][2][0]) - 1
    words: list[list[list[tuple[int, float]]]] = [[] for _ in range(n_src)]
    rows: list[list[int]] = [[] for _ in range(n_src)]  # per source sentence: its candidate row this step
    for ids, scores, lod in reversed(steps):
        src_level, cand_level = lod
        for s in range(n_src):
            if not rows[s]:  # the last step (or the last one before this source was pruned)
                first, last = cand_level[src_level[s]], cand_level[src_level[s + 1]]
                rows[s] = list(range(first, last))[:beam_size]
                words[s] = [[] for _ in rows[s]]
            for k, c in enumerate(rows[s]):
                wid, sc = int(ids[c]), float(scores[c])
                if wid != end_id or not words[s][k]:
                    words[s][k].append((wid, sc))
                # the prefix this candidate extends is a candidate row of the step before
                rows[s][k] = int(np.searchsorted(cand_level, c, side="right")) - 1
    out = []
    for s in range(n_src):
        sentences = [([w for w, _ in reversed(ws)], [sc for _, sc in reversed(ws)]) for ws in words[s] if ws]
        sentences.sort(key=lambda sent: -sent[1][-1])  # stable: equal scores keep their beam order
        out.append(sentences)
    return out


def _decode_infer(ctx: ShapeContext) -> None:
    ctx.set("SentenceIds", (-1,), "int64", 2)
    ctx.set("SentenceScores", (-1,), "float32", 2)


def _step_list(ctx: KernelContext, slot: str) -> list[Any]:
    arr = ctx.raw(slot)
    if not isinstance(arr, list) or not arr:
        raise InvalidArgumentError(f"beam_search_decode: '{ctx.ins[slot][0]}' ({slot}) must be a non-empty tensor "
                                   f"array of the steps' beam_search outputs, got {type(arr).__name__}")
    return arr


@register_op("beam_search_decode", _decode_infer, attrs={"beam_size": 1, "end_id": 0})
def beam_search_decode(ctx: KernelContext) -> None:
    ids_steps, score_steps = _step_list(ctx, "Ids"), _step_list(ctx, "Scores")
    if len(ids_steps) != len(score_steps):
        raise InvalidArgumentError(f"beam_search_decode: {len(ids_steps)} steps of Ids, {len(score_steps)} of "
                                   f"Scores; write both arrays at every step")
    steps = []
    for t, (i, s) in enumerate(zip(ids_steps, score_steps)):
        lod = i.lod() if isinstance(i, LoDTensor) else None
        if not lod or len(lod) != 2:
            raise InvalidArgumentError(f"beam_search_decode: step {t} of '{ctx.ins['Ids'][0]}' has LoD {lod}; "
                                       f"each step needs beam_search's 2-level LoD (source -> prefixes -> ids)")
        vals = [np.asarray(v.values if isinstance(v, LoDTensor) else v).reshape(-1) for v in (i, s)]
        steps.append((vals[0], vals[1], [list(lv) for lv in lod]))
    result = backtrace(steps, int(ctx.attr("beam_size")), int(ctx.attr("end_id")))
    src_off, sent_off, all_ids, all_scores = [0], [0], [], []
    for sentences in result:
        for wids, scs in sentences:
            all_ids.extend(wids)
            all_scores.extend(scs)
            sent_off.append(sent_off[-1] + len(wids))
        src_off.append(src_off[-1] + len(sentences))
    lod = [src_off, sent_off]
    score_dtype = steps[0][1].dtype if steps[0][1].dtype.kind == "f" else np.float32
    ctx.out("SentenceIds", ctx.xp.asarray(np.asarray(all_ids, np.int64)), lod)
    ctx.out("SentenceScores", ctx.xp.asarray(np.asarray(all_scores, score_dtype)), lod)
