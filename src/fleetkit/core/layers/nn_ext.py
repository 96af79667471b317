"""More nn layers (fluid 1.4 names and arguments): ``layer_norm``, ``im2sequence``,
``nce``, ``hsigmoid``, ``sampled_softmax_with_cross_entropy`` and the debugging layer ``Print``."""
from __future__ import annotations

import math
from typing import Any, Sequence

from ...errors import InvalidArgumentError
from ..framework import Variable
from ..initializer import Constant
from ..layer_helper import LayerHelper
from ..ops.nn_ext import PHASES
from ..ops.sampled import SAMPLERS
from .checks import need_var

__all__ = ["layer_norm", "im2sequence", "nce", "hsigmoid", "sampled_softmax_with_cross_entropy", "Print"]


def layer_norm(input: Variable, scale: bool = True, shift: bool = True, begin_norm_axis: int = 1,
               epsilon: float = 1e-05, param_attr: Any = None, bias_attr: Any = None, act: str | None = None,
               name: str | None = None) -> Variable:
    """Normalize over the dims from ``begin_norm_axis`` on, then a learned per-element
    scale (init 1) and shift (init 0)."""
    need_var("layer_norm", "input", input)
    tail = input.shape[begin_norm_axis:]
    if not 0 < begin_norm_axis < len(input.shape) or any(d <= 0 for d in tail):
        raise InvalidArgumentError(
            f"layer_norm: begin_norm_axis={begin_norm_axis} must leave known dims of '{input.name}' "
            f"{list(input.shape)} to normalize")
    helper = LayerHelper("layer_norm", act=act, name=name)
    inputs: dict[str, list] = {"X": [input]}
    shape = [math.prod(tail)]
    if scale:
        inputs["Scale"] = [helper.create_parameter(param_attr, shape, input.dtype,
                                                   default_initializer=Constant(1.0))]
    if shift:
        inputs["Bias"] = [helper.create_parameter(bias_attr, shape, input.dtype, is_bias=True)]
    y = helper.create_variable_for_type_inference(input.dtype)
    mean = helper.create_variable_for_type_inference(input.dtype, stop_gradient=True)
    var = helper.create_variable_for_type_inference(input.dtype, stop_gradient=True)
    helper.append_op("layer_norm", inputs, {"Y": [y], "Mean": [mean], "Variance": [var]},
                     {"epsilon": float(epsilon), "begin_norm_axis": int(begin_norm_axis)})
    return helper.append_activation(y)


def _ints(v: Any, n: int, what: str) -> list[int]:
    vals = [int(v)] * n if isinstance(v, int) else [int(a) for a in v]
    if len(vals) != n:
        raise InvalidArgumentError(f"im2sequence: {what} must be an int or {n} ints, got {v}")
    return vals


def im2sequence(input: Variable, filter_size: Any = 1, stride: Any = 1, padding: Any = 0,
                input_image_size: Variable | None = None, out_stride: Any = 1,
                name: str | None = None) -> Variable:
    """Turn each [C, H, W] image into a sequence with one row per filter position
    (C * kh * kw values).  ``padding``: an int, [height, width] or [up, left, down, right]."""
    need_var("im2sequence", "input", input)
    if input_image_size is not None:
        raise InvalidArgumentError("im2sequence: input_image_size (per-image real sizes) is not supported")
    pad = [int(padding)] * 4 if isinstance(padding, int) else [int(p) for p in padding]
    if len(pad) == 2:
        pad = pad * 2
    if len(pad) != 4:
        raise InvalidArgumentError(f"im2sequence: padding must be an int, 2 or 4 ints, got {padding}")
    helper = LayerHelper("im2sequence", name=name)
    out = helper.create_variable_for_type_inference(input.dtype)
    helper.append_op("im2sequence", {"X": [input]}, {"Out": [out]},
                     {"kernels": _ints(filter_size, 2, "filter_size"), "strides": _ints(stride, 2, "stride"),
                      "paddings": pad, "out_stride": _ints(out_stride, 2, "out_stride")})
    return out


def nce(input: Variable, label: Variable, num_total_classes: int, sample_weight: Variable | None = None,
        param_attr: Any = None, bias_attr: Any = None, num_neg_samples: int | None = None,
        name: str | None = None, sampler: str = "uniform", custom_dist: Sequence[float] | None = None,
        seed: int = 0, is_sparse: bool = False) -> Variable:
    """Noise-contrastive estimation loss [N, 1] of ``input`` [N, D] against int64 ``label``
    [N, num_true], with ``num_neg_samples`` (default 10) negatives per example drawn from
    ``sampler`` ("uniform", "log_uniform" or "custom_dist" with ``custom_dist``).  As in
    fluid 1.4 the cost is divided by num_neg_samples + 1."""
    need_var("nce", "input", input)
    need_var("nce", "label", label)
    if sampler not in SAMPLERS:
        raise InvalidArgumentError(f"nce: sampler {sampler!r} is not one of {list(SAMPLERS)}")
    if (sampler == "custom_dist") != (custom_dist is not None):
        raise InvalidArgumentError("nce: custom_dist goes with sampler='custom_dist' (and only with it)")
    neg = 10 if num_neg_samples is None else int(num_neg_samples)
    helper = LayerHelper("nce", param_attr=param_attr, bias_attr=bias_attr, name=name)
    classes = int(num_total_classes)
    w = helper.create_parameter(param_attr, [classes, input.shape[1]], input.dtype)
    inputs = {"Input": [input], "Label": [label], "Weight": [w]}
    if bias_attr is not False:
        inputs["Bias"] = [helper.create_parameter(bias_attr, [classes, 1], input.dtype, is_bias=True)]
    if sample_weight is not None:
        inputs["SampleWeight"] = [sample_weight]
    cost = helper.create_variable_for_type_inference(input.dtype)
    logits = helper.create_variable_for_type_inference(input.dtype, stop_gradient=True)
    labels = helper.create_variable_for_type_inference("int64", stop_gradient=True)
    helper.append_op("nce", inputs, {"Cost": [cost], "SampleLogits": [logits], "SampleLabels": [labels]},
                     {"num_total_classes": classes, "num_neg_samples": neg, "sampler": sampler,
                      "custom_dist": [float(p) for p in (custom_dist or [])], "seed": int(seed),
                      "is_sparse": bool(is_sparse)})
    out = helper.create_variable_for_type_inference(input.dtype)
    helper.append_op("scale", {"X": [cost]}, {"Out": [out]}, {"scale": 1.0 / (neg + 1), "bias": 0.0})
    return out


def hsigmoid(input: Variable, label: Variable, num_classes: int, param_attr: Any = None, bias_attr: Any = None,
             name: str | None = None, path_table: Variable | None = None, path_code: Variable | None = None,
             is_custom: bool = False, is_sparse: bool = False) -> Variable:
    """Hierarchical sigmoid loss [N, 1]: the label's leaf is reached through binary
    decisions at inner nodes (a complete binary tree over ``num_classes`` leaves, or the
    ``path_table``/``path_code`` of a custom tree with ``is_custom``)."""
    need_var("hsigmoid", "input", input)
    need_var("hsigmoid", "label", label)
    if is_custom != (path_table is not None and path_code is not None):
        raise InvalidArgumentError("hsigmoid: is_custom needs path_table and path_code (and they need is_custom)")
    if int(num_classes) < 2:
        raise InvalidArgumentError(f"hsigmoid: num_classes must be >= 2, got {num_classes}")
    helper = LayerHelper("hierarchical_sigmoid", param_attr=param_attr, bias_attr=bias_attr, name=name)
    nodes = int(num_classes) if is_custom else int(num_classes) - 1
    w = helper.create_parameter(param_attr, [nodes, input.shape[1]], input.dtype)
    inputs = {"X": [input], "W": [w], "Label": [label]}
    if bias_attr is not False:
        inputs["Bias"] = [helper.create_parameter(bias_attr, [nodes, 1], input.dtype, is_bias=True)]
    if is_custom:
        inputs.update(PathTable=[path_table], PathCode=[path_code])
    out = helper.create_variable_for_type_inference(input.dtype)
    pre = helper.create_variable_for_type_inference(input.dtype, stop_gradient=True)
    helper.append_op("hierarchical_sigmoid", inputs, {"Out": [out], "PreOut": [pre]},
                     {"num_classes": int(num_classes), "is_sparse": bool(is_sparse)})
    return out


def sampled_softmax_with_cross_entropy(logits: Variable, label: Variable, num_samples: int, num_true: int = 1,
                                       remove_accidental_hits: bool = True, use_customized_samples: bool = False,
                                       customized_samples: Variable | None = None,
                                       customized_probabilities: Variable | None = None, seed: int = 0) -> Variable:
    """Softmax cross entropy [N, 1] over each row's ``num_true`` labels and ``num_samples``
    shared negatives drawn log-uniformly (unique), with the logQ correction; negatives that
    hit a true label are masked (``remove_accidental_hits``)."""
    from .tensor import concat, fill_constant_batch_size_like
    from .loss import softmax_with_cross_entropy
    from .nn import scale
    need_var("sampled_softmax_with_cross_entropy", "logits", logits)
    need_var("sampled_softmax_with_cross_entropy", "label", label)
    if use_customized_samples or customized_samples is not None or customized_probabilities is not None:
        raise InvalidArgumentError("sampled_softmax_with_cross_entropy: customized samples are not supported")
    nt, s = int(num_true), int(num_samples)
    helper = LayerHelper("sample_logits")
    outs = {slot: helper.create_variable_for_type_inference(dt, stop_gradient=slot != "SampledLogits")
            for slot, dt in (("Samples", "int64"), ("Probabilities", logits.dtype), ("SampledLogits", logits.dtype),
                             ("SampledLabels", "int64"))}
    helper.append_op("sample_logits", {"Logits": [logits], "Labels": [label]}, {k: [v] for k, v in outs.items()},
                     {"num_samples": s, "uniq": True, "remove_accidental_hits": bool(remove_accidental_hits),
                      "seed": int(seed), "use_customized_samples": False})
    # soft label: 1 for each of the num_true label columns (they come first), 0 for the samples
    soft = concat([fill_constant_batch_size_like(logits, [-1, nt], logits.dtype, 1.0),
                   fill_constant_batch_size_like(logits, [-1, s], logits.dtype, 0.0)], axis=1)
    loss = softmax_with_cross_entropy(outs["SampledLogits"], soft, soft_label=True)
    return scale(loss, 1.0 / nt)


def Print(input: Variable, first_n: int = -1, message: str | None = None, summarize: int = -1,
          print_tensor_name: bool = True, print_tensor_type: bool = True, print_tensor_shape: bool = True,
          print_tensor_lod: bool = True, print_phase: str = "both") -> Variable:
    """Print ``input`` to stdout each time the op runs (at most ``first_n`` times; only the
    first ``summarize`` values), in the forward pass, the backward pass (its gradient) or
    both.  Returns a variable equal to ``input``: use it downstream so the backward pass
    goes through the print."""
    need_var("Print", "input", input)
    if str(print_phase).lower() not in PHASES:
        raise InvalidArgumentError(f"Print: print_phase must be one of {list(PHASES)}, got {print_phase!r}")
    helper = LayerHelper("print")
    out = helper.create_variable_for_type_inference(input.dtype)
    helper.append_op("print", {"In": [input]}, {"Out": [out]},
                     {"first_n": int(first_n), "message": message or "", "summarize": int(summarize),
                      "print_tensor_name": bool(print_tensor_name), "print_tensor_type": bool(print_tensor_type),
                      "print_tensor_shape": bool(print_tensor_shape), "print_tensor_lod": bool(print_tensor_lod),
                      "print_phase": str(print_phase).lower()})
    return out
