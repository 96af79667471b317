"""fluid 1.4's beam-search layers (ops in core/ops/beam_search.py): ``beam_search`` selects
one step's candidates, ``beam_search_decode`` walks the steps' tensor arrays back into
sentences.  Both run forward only, as in fluid (decoding is not trained)."""
from __future__ import annotations

from typing import Any

from ...errors import InvalidArgumentError
from ..framework import Variable
from ..layer_helper import LayerHelper
from .checks import need_var

__all__ = ["beam_search", "beam_search_decode"]


def beam_search(pre_ids: Variable, pre_scores: Variable, ids: Variable | None, scores: Variable, beam_size: int,
                end_id: int, level: int = 0, is_accumulated: bool = True, name: str | None = None,
                return_parent_idx: bool = False) -> Any:
    """One beam-search step: per source sentence, the ``beam_size`` best extensions of its
    prefixes (``scores`` accumulated, or probabilities when ``is_accumulated=False``, then
    ``pre_scores + log(scores)``); a prefix that ended with ``end_id`` is kept with its score
    and not extended.  ``ids`` None: the candidate of column d is word d.  Returns
    ``(selected_ids, selected_scores)`` (plus ``parent_idx``, the prefix row of each, with
    ``return_parent_idx``), LoD [source -> prefixes, prefix -> selected]; a source whose beams
    have all ended gets no rows (so ``selected_ids`` empties when every source is done)."""
    for arg, v in (("pre_ids", pre_ids), ("pre_scores", pre_scores), ("scores", scores)):
        need_var("beam_search", arg, v)
    if ids is not None:
        need_var("beam_search", "ids", ids)
    if int(beam_size) < 1:
        raise InvalidArgumentError(f"beam_search: beam_size must be >= 1, got {beam_size}")
    helper = LayerHelper("beam_search", name=name)
    selected_ids = helper.create_variable_for_type_inference("int64", stop_gradient=True)
    selected_scores = helper.create_variable_for_type_inference(scores.dtype, stop_gradient=True)
    parent_idx = helper.create_variable_for_type_inference("int32", stop_gradient=True)
    inputs = {"pre_ids": [pre_ids], "pre_scores": [pre_scores], "scores": [scores]}
    if ids is not None:
        inputs["ids"] = [ids]
    helper.append_op("beam_search", inputs,
                     {"selected_ids": [selected_ids], "selected_scores": [selected_scores],
                      "parent_idx": [parent_idx]},
                     {"level": int(level), "beam_size": int(beam_size), "end_id": int(end_id),
                      "is_accumulated": bool(is_accumulated)})
    if return_parent_idx:
        return selected_ids, selected_scores, parent_idx
    return selected_ids, selected_scores


def beam_search_decode(ids: Variable, scores: Variable, beam_size: int, end_id: int,
                       name: str | None = None) -> tuple[Variable, Variable]:
    """The sentences of a beam search: ``ids`` / ``scores`` are the tensor arrays of every
    step's ``beam_search`` outputs (step 0: the initial ids and scores).  Returns
    ``(sentence_ids, sentence_scores)``, 1-D with LoD [source -> sentences, sentence -> words],
    each source's sentences best final score first."""
    need_var("beam_search_decode", "ids", ids)
    need_var("beam_search_decode", "scores", scores)
    helper = LayerHelper("beam_search_decode", name=name)
    sentence_ids = helper.create_variable_for_type_inference("int64", stop_gradient=True)
    sentence_scores = helper.create_variable_for_type_inference(scores.dtype, stop_gradient=True)
    helper.append_op("beam_search_decode", {"Ids": [ids], "Scores": [scores]},
                     {"SentenceIds": [sentence_ids], "SentenceScores": [sentence_scores]},
                     {"beam_size": int(beam_size), "end_id": int(end_id)})
    return sentence_ids, sentence_scores
