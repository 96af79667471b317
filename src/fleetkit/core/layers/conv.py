"""Convolution, pooling, batch normalization and dropout layers (fluid 1.4 names and arguments)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError, ShapeError
from ..framework import Variable
from ..initializer import Constant, Normal
from ..layer_helper import LayerHelper
from ..param_attr import ParamAttr
from .checks import need_var

__all__ = ["conv2d", "pool2d", "batch_norm", "dropout"]


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _to_pair(value: Any, layer: str, arg: str) -> list[int]:
    """An int or a 2-element list of ints, as [h, w]."""
    if _is_int(value):
        return [int(value), int(value)]
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) for v in value):
        return [int(v) for v in value]
    raise InvalidArgumentError(f"{layer}: {arg} must be an int or a list of 2 ints, got {value!r}")


def _require_4d(layer: str, input: Variable) -> None:
    if len(input.shape) != 4:
        raise ShapeError(f"{layer}: input '{input.name}' must be 4-D [N, C, H, W], got shape {list(input.shape)}")


def conv2d(input: Variable, num_filters: int, filter_size: Any, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int | None = None, param_attr: Any = None, bias_attr: Any = None,
           use_cudnn: bool = True, act: str | None = None, name: str | None = None) -> Variable:
    """2-D convolution (cross-correlation) of an NCHW input, plus a per-filter bias and ``act``.

    The filter is [num_filters, C/groups, kh, kw], initialized (unless
    ``param_attr`` says otherwise) from Normal(0, sqrt(2 / (kh * kw * C))).
    ``bias_attr=False`` drops the bias.
    """
    need_var("conv2d", "input", input)
    _require_4d("conv2d", input)
    helper = LayerHelper("conv2d", input=input, param_attr=param_attr, bias_attr=bias_attr, act=act, name=name)
    num_channels = input.shape[1]
    if num_channels <= 0:
        raise ShapeError(f"conv2d: the channel dim of input '{input.name}' {list(input.shape)} must be known")
    groups = 1 if groups is None else int(groups)
    if groups < 1 or num_channels % groups or num_filters % groups:
        raise ShapeError(f"conv2d: groups={groups} must divide both the input channels ({num_channels}, input "
                         f"'{input.name}' {list(input.shape)}) and num_filters ({num_filters})")
    fsize = _to_pair(filter_size, "conv2d", "filter_size")
    attrs = {"strides": _to_pair(stride, "conv2d", "stride"),
             "paddings": _to_pair(padding, "conv2d", "padding"),
             "dilations": _to_pair(dilation, "conv2d", "dilation"),
             "groups": groups, "use_cudnn": bool(use_cudnn), "use_mkldnn": False}
    # He-style default, as fluid: std = sqrt(2 / (kh * kw * input channels))
    std = (2.0 / (fsize[0] * fsize[1] * num_channels)) ** 0.5
    w = helper.create_parameter(param_attr, [int(num_filters), num_channels // groups] + fsize, input.dtype,
                                default_initializer=Normal(0.0, std, 0))
    pre_bias = helper.create_variable_for_type_inference(input.dtype)
    helper.append_op("conv2d", {"Input": [input], "Filter": [w]}, {"Output": [pre_bias]}, attrs)
    pre_act = helper.append_bias_op(pre_bias, dim_start=1)
    return helper.append_activation(pre_act)


def pool2d(input: Variable, pool_size: Any = -1, pool_type: str = "max", pool_stride: Any = 1,
           pool_padding: Any = 0, global_pooling: bool = False, use_cudnn: bool = True,
           ceil_mode: bool = False, name: str | None = None, exclusive: bool = True) -> Variable:
    """Max or average pooling of an NCHW input over ``pool_size`` windows.

    ``global_pooling`` pools each whole map to 1x1; ``ceil_mode`` rounds the
    output size up; with ``exclusive`` (default) average pooling divides by the
    window cells inside the input, not counting padding.
    """
    need_var("pool2d", "input", input)
    if pool_type not in ("max", "avg"):
        raise InvalidArgumentError(f"pool2d: unknown pool_type {pool_type!r}; it can only be 'max' or 'avg'")
    if not global_pooling and pool_size == -1:
        raise InvalidArgumentError("pool2d: pool_size must be given (an int or [h, w]) unless global_pooling=True")
    _require_4d("pool2d", input)
    helper = LayerHelper("pool2d", name=name)
    ksize = [-1, -1] if pool_size == -1 else _to_pair(pool_size, "pool2d", "pool_size")
    attrs = {"pooling_type": pool_type, "ksize": ksize, "global_pooling": bool(global_pooling),
             "strides": _to_pair(pool_stride, "pool2d", "pool_stride"),
             "paddings": _to_pair(pool_padding, "pool2d", "pool_padding"),
             "use_cudnn": bool(use_cudnn), "ceil_mode": bool(ceil_mode), "use_mkldnn": False,
             "exclusive": bool(exclusive)}
    out = helper.create_variable_for_type_inference(input.dtype)
    helper.append_op("pool2d", {"X": [input]}, {"Out": [out]}, attrs)
    return out


def batch_norm(input: Variable, act: str | None = None, is_test: bool = False, momentum: float = 0.9,
               epsilon: float = 1e-05, param_attr: Any = None, bias_attr: Any = None,
               data_layout: str = "NCHW", in_place: bool = False, name: str | None = None,
               moving_mean_name: str | None = None, moving_variance_name: str | None = None,
               do_model_average_for_mean_and_var: bool = False, fuse_with_relu: bool = False,
               use_global_stats: bool = False) -> Variable:
    """Batch normalization over every dim but the channel one (dim 1, or the last for NHWC).

    Creates a trainable scale (init 1) and bias (init 0) and the running mean
    (init 0) and variance (init 1) as persistable non-trainable parameters
    (named by ``moving_mean_name`` / ``moving_variance_name`` when given),
    which training updates as ``momentum * running + (1 - momentum) * batch``.
    ``Program.clone(for_test=True)`` switches the op to the running statistics.
    ``in_place`` is accepted for compatibility but the output is always a new
    variable: the gradient needs the unnormalized input.
    """
    need_var("batch_norm", "input", input)
    if data_layout not in ("NCHW", "NHWC"):
        raise InvalidArgumentError(f"batch_norm: data_layout must be 'NCHW' or 'NHWC', got {data_layout!r}")
    if not 2 <= len(input.shape) <= 5:
        raise ShapeError(f"batch_norm: input '{input.name}' must have 2 to 5 dims, got shape {list(input.shape)}")
    helper = LayerHelper("batch_norm", input=input, act=act, name=name, param_attr=param_attr,
                         bias_attr=bias_attr)
    dtype = input.dtype
    channels = input.shape[-1] if data_layout == "NHWC" and len(input.shape) > 2 else input.shape[1]
    if channels <= 0:
        raise ShapeError(f"batch_norm: the channel dim of input '{input.name}' {list(input.shape)} must be known")
    shape = [channels]
    scale = helper.create_parameter(param_attr, shape, dtype, default_initializer=Constant(1.0))
    bias = helper.create_parameter(bias_attr, shape, dtype, is_bias=True)
    mean = helper.create_parameter(
        ParamAttr(name=moving_mean_name, initializer=Constant(0.0), trainable=False,
                  do_model_average=do_model_average_for_mean_and_var), shape, dtype)
    variance = helper.create_parameter(
        ParamAttr(name=moving_variance_name, initializer=Constant(1.0), trainable=False,
                  do_model_average=do_model_average_for_mean_and_var), shape, dtype)
    mean.stop_gradient = variance.stop_gradient = True
    saved_mean = helper.create_variable_for_type_inference(dtype, stop_gradient=True)
    saved_variance = helper.create_variable_for_type_inference(dtype, stop_gradient=True)
    y = helper.create_variable_for_type_inference(dtype)
    helper.append_op(
        "batch_norm",
        {"X": [input], "Scale": [scale], "Bias": [bias], "Mean": [mean], "Variance": [variance]},
        {"Y": [y], "MeanOut": [mean], "VarianceOut": [variance], "SavedMean": [saved_mean],
         "SavedVariance": [saved_variance]},
        {"momentum": float(momentum), "epsilon": float(epsilon), "is_test": bool(is_test),
         "data_layout": data_layout, "use_mkldnn": False, "fuse_with_relu": bool(fuse_with_relu),
         "use_global_stats": bool(use_global_stats)})
    return helper.append_activation(y)


def dropout(x: Variable, dropout_prob: float, is_test: bool = False, seed: int | None = None,
            name: str | None = None, dropout_implementation: str = "downgrade_in_infer") -> Variable:
    """Randomly zero units with probability ``dropout_prob`` while training.

    ``downgrade_in_infer``: train ``x * mask``, infer ``x * (1 - p)``.
    ``upscale_in_train``: train ``x * mask / (1 - p)``, infer ``x``.
    A ``seed`` fixes the mask (the same one every run).
    """
    need_var("dropout", "x", x)
    if not 0.0 <= float(dropout_prob) <= 1.0:
        raise InvalidArgumentError(f"dropout: dropout_prob must be in [0, 1], got {dropout_prob}")
    if dropout_implementation not in ("downgrade_in_infer", "upscale_in_train"):
        raise InvalidArgumentError(
            f"dropout: dropout_implementation must be 'downgrade_in_infer' or 'upscale_in_train', "
            f"got {dropout_implementation!r}")
    helper = LayerHelper("dropout", name=name)
    out = helper.create_variable_for_type_inference(x.dtype)
    mask = helper.create_variable_for_type_inference(x.dtype, stop_gradient=True)
    helper.append_op("dropout", {"X": [x]}, {"Out": [out], "Mask": [mask]},
                     {"dropout_prob": float(dropout_prob), "is_test": bool(is_test),
                      "fix_seed": seed is not None, "seed": int(seed) if seed is not None else 0,
                      "dropout_implementation": dropout_implementation})
    return out
