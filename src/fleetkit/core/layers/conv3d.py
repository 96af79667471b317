"""Volumetric layers on NCDHW tensors (fluid 1.4 names, arguments and defaults): conv3d,
conv3d_transpose, pool3d, adaptive_pool3d."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError, ShapeError
from ..framework import Variable
from ..initializer import Normal
from ..layer_helper import LayerHelper
from .checks import need_var

__all__ = ["conv3d", "conv3d_transpose", "pool3d", "adaptive_pool3d"]


def _triple(value: Any, layer: str, arg: str) -> list[int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return [int(value)] * 3
    if isinstance(value, (list, tuple)) and len(value) == 3:
        return [int(v) for v in value]
    raise InvalidArgumentError(f"{layer}: {arg} must be an int or a list of 3 ints, got {value!r}")


def _input5d(layer: str, input: Any) -> None:
    need_var(layer, "input", input)
    if len(input.shape) != 5 or input.shape[1] <= 0:
        raise ShapeError(f"{layer}: input '{input.name}' must be 5-D [N, C, D, H, W] with C known, "
                         f"got {list(input.shape)}")


def _groups(layer: str, groups: int | None, c: int, m: int) -> int:
    g = 1 if groups is None else int(groups)
    if g < 1 or c % g or m % g:
        raise InvalidArgumentError(f"{layer}: groups={g} must divide the input channels ({c}) and num_filters ({m})")
    return g


def conv3d(input: Variable, num_filters: int, filter_size: Any, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int | None = None, param_attr: Any = None, bias_attr: Any = None,
           use_cudnn: bool = True, act: str | None = None, name: str | None = None) -> Variable:
    """3-D convolution of an NCDHW input, plus a per-filter bias and ``act``; filters
    [num_filters, C/groups, kd, kh, kw] start from Normal(0, sqrt(2 / (kd*kh*kw*C)))."""
    _input5d("conv3d", input)
    c = input.shape[1]
    g = _groups("conv3d", groups, c, int(num_filters))
    k = _triple(filter_size, "conv3d", "filter_size")
    helper = LayerHelper("conv3d", param_attr=param_attr, bias_attr=bias_attr, act=act, name=name)
    std = (2.0 / (k[0] * k[1] * k[2] * c)) ** 0.5
    w = helper.create_parameter(param_attr, [int(num_filters), c // g] + k, input.dtype,
                                default_initializer=Normal(0.0, std, 0))
    pre = helper.create_variable_for_type_inference(input.dtype)
    helper.append_op("conv3d", {"Input": [input], "Filter": [w]}, {"Output": [pre]},
                     {"strides": _triple(stride, "conv3d", "stride"), "paddings": _triple(padding, "conv3d", "padding"),
                      "dilations": _triple(dilation, "conv3d", "dilation"), "groups": g, "use_cudnn": bool(use_cudnn)})
    return helper.append_activation(helper.append_bias_op(pre, dim_start=1))


def conv3d_transpose(input: Variable, num_filters: int, output_size: Any = None, filter_size: Any = None,
                     padding: Any = 0, stride: Any = 1, dilation: Any = 1, groups: int | None = None,
                     param_attr: Any = None, bias_attr: Any = None, use_cudnn: bool = True, act: str | None = None,
                     name: str | None = None) -> Variable:
    """Transposed 3-D convolution (the gradient of conv3d run forwards); give
    ``filter_size`` or ``output_size`` to derive it."""
    _input5d("conv3d_transpose", input)
    c = input.shape[1]
    g = _groups("conv3d_transpose", groups, c, int(num_filters))
    s, p, d = (_triple(v, "conv3d_transpose", a) for v, a in ((stride, "stride"), (padding, "padding"),
                                                             (dilation, "dilation")))
    if filter_size is None:
        if output_size is None or any(n <= 0 for n in input.shape[2:]):
            raise InvalidArgumentError("conv3d_transpose: give filter_size, or output_size with the input's D, H, W "
                                       "known")
        out = _triple(output_size, "conv3d_transpose", "output_size")
        k = [(out[i] - (input.shape[2 + i] - 1) * s[i] + 2 * p[i] - 1) // d[i] + 1 for i in range(3)]
    else:
        k = _triple(filter_size, "conv3d_transpose", "filter_size")
    helper = LayerHelper("conv3d_transpose", param_attr=param_attr, bias_attr=bias_attr, act=act, name=name)
    w = helper.create_parameter(param_attr, [c, int(num_filters) // g] + k, input.dtype)
    pre = helper.create_variable_for_type_inference(input.dtype)
    helper.append_op("conv3d_transpose", {"Input": [input], "Filter": [w]}, {"Output": [pre]},
                     {"strides": s, "paddings": p, "dilations": d, "groups": g, "use_cudnn": bool(use_cudnn)})
    return helper.append_activation(helper.append_bias_op(pre, dim_start=1))


def pool3d(input: Variable, pool_size: Any = -1, pool_type: str = "max", pool_stride: Any = 1, pool_padding: Any = 0,
           global_pooling: bool = False, use_cudnn: bool = True, ceil_mode: bool = False, name: str | None = None,
           exclusive: bool = True) -> Variable:
    """Max or average pooling of an NCDHW input over ``pool_size`` windows."""
    _input5d("pool3d", input)
    if pool_type not in ("max", "avg"):
        raise InvalidArgumentError(f"pool3d: pool_type must be 'max' or 'avg', got {pool_type!r}")
    if not global_pooling and pool_size == -1:
        raise InvalidArgumentError("pool3d: pool_size must be given unless global_pooling=True")
    helper = LayerHelper("pool3d", name=name)
    out = helper.create_variable_for_type_inference(input.dtype)
    helper.append_op("pool3d", {"X": [input]}, {"Out": [out]},
                     {"pooling_type": pool_type,
                      "ksize": [1, 1, 1] if pool_size == -1 else _triple(pool_size, "pool3d", "pool_size"),
                      "strides": _triple(pool_stride, "pool3d", "pool_stride"),
                      "paddings": _triple(pool_padding, "pool3d", "pool_padding"), "global_pooling": bool(global_pooling),
                      "use_cudnn": bool(use_cudnn), "ceil_mode": bool(ceil_mode), "exclusive": bool(exclusive)})
    return out


def adaptive_pool3d(input: Variable, pool_size: Any, pool_type: str = "max", require_index: bool = False,
                    name: str | None = None) -> Variable:
    """Max or average pooling to a fixed ``pool_size`` [d, h, w] output grid."""
    _input5d("adaptive_pool3d", input)
    if pool_type not in ("max", "avg") or require_index:
        raise InvalidArgumentError("adaptive_pool3d: pool_type must be 'max' or 'avg' (require_index is not supported)")
    helper = LayerHelper("adaptive_pool3d", name=name)
    out = helper.create_variable_for_type_inference(input.dtype)
    helper.append_op("adaptive_pool3d", {"X": [input]}, {"Out": [out]},
                     {"ksize": _triple(pool_size, "adaptive_pool3d", "pool_size"), "pooling_type": pool_type})
    return out
