"""Sequence metric layers (fluid 1.4 names and arguments): ``edit_distance``, ``chunk_eval``."""
from __future__ import annotations

from typing import Sequence

from ...errors import InvalidArgumentError
from ..framework import Variable
from ..layer_helper import LayerHelper
from ..ops.metric_ext import SCHEMES
from .checks import need_var

__all__ = ["edit_distance", "chunk_eval"]


def _erase(helper: LayerHelper, x: Variable, tokens: Sequence[int]) -> Variable:
    out = helper.create_variable_for_type_inference(x.dtype, stop_gradient=True)
    helper.append_op("sequence_erase", {"X": [x]}, {"Out": [out]}, {"tokens": [int(t) for t in tokens]})
    return out


def edit_distance(input: Variable, label: Variable, normalized: bool = True,
                  ignored_tokens: Sequence[int] | None = None) -> tuple[Variable, Variable]:
    """Levenshtein distance [N, 1] between each hypothesis sequence of ``input`` and the
    reference sequence of ``label`` (int64 LoD tensors), divided by the reference length
    when ``normalized``; tokens in ``ignored_tokens`` are removed first.  Returns
    (distances, number of sequences)."""
    need_var("edit_distance", "input", input)
    need_var("edit_distance", "label", label)
    helper = LayerHelper("edit_distance")
    if ignored_tokens:
        input, label = _erase(helper, input, ignored_tokens), _erase(helper, label, ignored_tokens)
    out = helper.create_variable_for_type_inference("float32", stop_gradient=True)
    num = helper.create_variable_for_type_inference("int64", stop_gradient=True)
    helper.append_op("edit_distance", {"Hyps": [input], "Refs": [label]}, {"Out": [out], "SequenceNum": [num]},
                     {"normalized": bool(normalized)})
    return out, num


def chunk_eval(input: Variable, label: Variable, chunk_scheme: str, num_chunk_types: int,
               excluded_chunk_types: Sequence[int] | None = None) -> tuple[Variable, ...]:
    """Chunk-level precision, recall and F1 of predicted tags ``input`` against ``label``
    (int64 LoD tensors of tag ids in ``chunk_scheme`` "IOB", "IOE", "IOBES" or "plain").
    Returns (precision, recall, f1_score, num_infer_chunks, num_label_chunks,
    num_correct_chunks)."""
    need_var("chunk_eval", "input", input)
    need_var("chunk_eval", "label", label)
    if chunk_scheme not in SCHEMES:
        raise InvalidArgumentError(f"chunk_eval: chunk_scheme {chunk_scheme!r} is not one of {list(SCHEMES)}")
    helper = LayerHelper("chunk_eval")
    outs = {slot: helper.create_variable_for_type_inference(dt, stop_gradient=True) for slot, dt in (
        ("Precision", "float32"), ("Recall", "float32"), ("F1-Score", "float32"), ("NumInferChunks", "int64"),
        ("NumLabelChunks", "int64"), ("NumCorrectChunks", "int64"))}
    helper.append_op("chunk_eval", {"Inference": [input], "Label": [label]}, {k: [v] for k, v in outs.items()},
                     {"num_chunk_types": int(num_chunk_types), "chunk_scheme": chunk_scheme,
                      "excluded_chunk_types": [int(t) for t in (excluded_chunk_types or [])]})
    return tuple(outs.values())
