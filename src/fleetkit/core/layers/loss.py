"""Softmax and loss layers (fluid 1.4 names and arguments)."""
from __future__ import annotations


from ..framework import Variable
from ..layer_helper import LayerHelper
from .checks import need_vars

__all__ = ["softmax", "cross_entropy", "softmax_with_cross_entropy", "sigmoid_cross_entropy_with_logits",
           "square_error_cost", "log_loss"]

_IGNORE_INDEX = -100


def softmax(input: Variable, use_cudnn: bool = False, name: str | None = None, axis: int = -1) -> Variable:
    """exp(x) / sum(exp(x)) along ``axis`` (computed with the max subtracted)."""
    need_vars("softmax", input=input)
    helper = LayerHelper("softmax", name=name)
    out = helper.create_variable_for_type_inference(input.dtype)
    helper.append_op("softmax", {"X": [input]}, {"Out": [out]}, {"axis": int(axis), "use_cudnn": use_cudnn})
    return out


def cross_entropy(input: Variable, label: Variable, soft_label: bool = False,
                  ignore_index: int = _IGNORE_INDEX) -> Variable:
    """Cross entropy of probabilities ``input`` [N, D] against ``label``.

    Hard labels are int64 [N, 1] class ids (rows equal to ``ignore_index`` give
    0); soft labels are float [N, D] distributions.  Returns [N, 1].
    """
    need_vars("cross_entropy", input=input, label=label)
    helper = LayerHelper("cross_entropy")
    out = helper.create_variable_for_type_inference(input.dtype)
    helper.append_op("cross_entropy", {"X": [input], "Label": [label]}, {"Y": [out]},
                     {"soft_label": soft_label, "ignore_index": int(ignore_index)})
    return out


def softmax_with_cross_entropy(logits: Variable, label: Variable, soft_label: bool = False,
                               ignore_index: int = _IGNORE_INDEX, numeric_stable_mode: bool = True,
                               return_softmax: bool = False) -> Variable | tuple[Variable, Variable]:
    """Softmax of ``logits`` followed by cross entropy, fused for stability.

    Returns the loss [N, 1], or (loss, softmax) when ``return_softmax``.
    """
    need_vars("softmax_with_cross_entropy", logits=logits, label=label)
    helper = LayerHelper("softmax_with_cross_entropy")
    sm = helper.create_variable_for_type_inference(logits.dtype)
    loss = helper.create_variable_for_type_inference(logits.dtype)
    helper.append_op("softmax_with_cross_entropy", {"Logits": [logits], "Label": [label]},
                     {"Softmax": [sm], "Loss": [loss]},
                     {"soft_label": soft_label, "ignore_index": int(ignore_index),
                      "numeric_stable_mode": numeric_stable_mode})
    return (loss, sm) if return_softmax else loss


def sigmoid_cross_entropy_with_logits(x: Variable, label: Variable, ignore_index: int = _IGNORE_INDEX,
                                      name: str | None = None, normalize: bool = False) -> Variable:
    """Elementwise logistic loss of logits ``x`` against 0/1 (or soft) ``label``.

    Elements whose label is ``ignore_index`` give 0; ``normalize`` divides by
    the number of the other elements.
    """
    need_vars("sigmoid_cross_entropy_with_logits", x=x, label=label)
    helper = LayerHelper("sigmoid_cross_entropy_with_logits", name=name)
    out = helper.create_variable_for_type_inference(x.dtype)
    helper.append_op("sigmoid_cross_entropy_with_logits", {"X": [x], "Label": [label]}, {"Out": [out]},
                     {"ignore_index": int(ignore_index), "normalize": normalize})
    return out


def square_error_cost(input: Variable, label: Variable) -> Variable:
    """(input - label) ** 2, built from ``elementwise_sub`` and ``square`` as fluid does."""
    need_vars("square_error_cost", input=input, label=label)
    helper = LayerHelper("square_error_cost")
    diff = helper.create_variable_for_type_inference(input.dtype)
    helper.append_op("elementwise_sub", {"X": [input], "Y": [label]}, {"Out": [diff]})
    out = helper.create_variable_for_type_inference(input.dtype)
    helper.append_op("square", {"X": [diff]}, {"Out": [out]})
    return out


def log_loss(input: Variable, label: Variable, epsilon: float = 1e-4, name: str | None = None) -> Variable:
    """-label * log(input + eps) - (1 - label) * log(1 - input + eps), elementwise."""
    need_vars("log_loss", input=input, label=label)
    helper = LayerHelper("log_loss", name=name)
    out = helper.create_variable_for_type_inference(input.dtype)
    helper.append_op("log_loss", {"Predicted": [input], "Labels": [label]}, {"Loss": [out]},
                     {"epsilon": float(epsilon)})
    return out
