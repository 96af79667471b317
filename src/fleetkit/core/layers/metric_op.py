"""Metric layers: accuracy, streaming AUC, and the top-k / arg-max helpers they use."""
from __future__ import annotations

from ...errors import InvalidArgumentError
from ..framework import Variable
from ..layer_helper import LayerHelper
from .checks import need_var

__all__ = ["accuracy", "auc", "topk", "argmax", "argmin"]


def topk(input: Variable, k: int, name: str | None = None) -> tuple[Variable, Variable]:
    """The ``k`` largest values along the last dim and their int64 indices, largest first."""
    need_var("topk", "input", input)
    if int(k) < 1:
        raise InvalidArgumentError(f"topk: k must be >= 1, got {k}")
    helper = LayerHelper("top_k", name=name)
    values = helper.create_variable_for_type_inference(input.dtype)
    indices = helper.create_variable_for_type_inference("int64", stop_gradient=True)
    helper.append_op("top_k", {"X": [input]}, {"Out": [values], "Indices": [indices]}, {"k": int(k)})
    return values, indices


def _arg(op_type: str, x: Variable, axis: int) -> Variable:
    need_var(op_type, "x", x)
    helper = LayerHelper(op_type)
    out = helper.create_variable_for_type_inference("int64", stop_gradient=True)
    helper.append_op(op_type, {"X": [x]}, {"Out": [out]}, {"axis": int(axis)})
    return out


def argmax(x: Variable, axis: int = 0) -> Variable:
    """Index (int64) of the largest element along ``axis``; that axis is removed."""
    return _arg("arg_max", x, axis)


def argmin(x: Variable, axis: int = 0) -> Variable:
    """Index (int64) of the smallest element along ``axis``; that axis is removed."""
    return _arg("arg_min", x, axis)


def accuracy(input: Variable, label: Variable, k: int = 1, correct: Variable | None = None,
             total: Variable | None = None) -> Variable:
    """Top-k accuracy of predictions ``input`` [N, D] against int64 ``label`` [N, 1].

    ``correct`` / ``total`` (optional variables) receive this batch's counts.
    """
    need_var("accuracy", "label", label)
    helper = LayerHelper("accuracy")
    values, indices = topk(input, k=k)
    acc = helper.create_variable_for_type_inference("float32", stop_gradient=True)
    correct = correct if correct is not None else helper.create_variable_for_type_inference("int64", True)
    total = total if total is not None else helper.create_variable_for_type_inference("int64", True)
    helper.append_op("accuracy", {"Out": [values], "Indices": [indices], "Label": [label]},
                     {"Accuracy": [acc], "Correct": [correct], "Total": [total]})
    return acc


def auc(input: Variable, label: Variable, curve: str = "ROC", num_thresholds: int = 2 ** 12 - 1,
        topk: int = 1, slide_steps: int = 1) -> tuple[Variable, Variable, list[Variable]]:
    """Streaming ROC AUC of ``input`` [N, 2] (positive-class probability in column 1).

    Scores are bucketed into ``num_thresholds + 1`` bins whose positive and
    negative counts live in persistable int64 variables, zeroed by the startup
    program.  Returns ``(auc, batch_auc, [batch_stat_pos, batch_stat_neg,
    stat_pos, stat_neg])``: ``auc`` covers every batch since the start,
    ``batch_auc`` the last ``slide_steps`` batches.  ``topk`` is accepted for
    compatibility and unused.
    """
    need_var("auc", "input", input)
    need_var("auc", "label", label)
    if curve != "ROC":
        raise InvalidArgumentError(f"auc: curve {curve!r} is not supported (only 'ROC')")
    if int(num_thresholds) < 1 or int(slide_steps) < 0:
        raise InvalidArgumentError(f"auc: num_thresholds ({num_thresholds}) must be >= 1 and slide_steps "
                                   f"({slide_steps}) >= 0")
    helper = LayerHelper("auc")
    buckets = int(num_thresholds) + 1
    window = max(int(slide_steps), 1)

    def stat(rows: int) -> Variable:
        return helper.create_global_variable([rows, buckets], "int64", persistable=True, value=0)

    batch_stat_pos, batch_stat_neg = stat(window), stat(window)
    stat_pos, stat_neg = stat(1), stat(1)
    auc_out = helper.create_variable_for_type_inference("float64", stop_gradient=True)
    batch_auc_out = helper.create_variable_for_type_inference("float64", stop_gradient=True)
    for out, pos, neg, steps in ((batch_auc_out, batch_stat_pos, batch_stat_neg, int(slide_steps)),
                                 (auc_out, stat_pos, stat_neg, 0)):
        helper.append_op("auc", {"Predict": [input], "Label": [label], "StatPos": [pos], "StatNeg": [neg]},
                         {"AUC": [out], "StatPosOut": [pos], "StatNegOut": [neg]},
                         {"curve": curve, "num_thresholds": int(num_thresholds), "slide_steps": steps})
    return auc_out, batch_auc_out, [batch_stat_pos, batch_stat_neg, stat_pos, stat_neg]
