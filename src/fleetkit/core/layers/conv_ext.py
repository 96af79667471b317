"""Image layers beyond conv2d/pool2d (fluid 1.4 names, arguments and defaults):
conv2d_transpose, lrn, pad2d, pixel_shuffle, shuffle_channel, image_resize,
resize_bilinear, resize_nearest."""
from __future__ import annotations

from typing import Any, Sequence

from ...errors import InvalidArgumentError
from ..framework import Variable
from ..layer_helper import LayerHelper
from ..ops.conv_ext import PAD_MODES
from .checks import need_var
from .conv import _require_4d, _to_pair

__all__ = ["conv2d_transpose", "lrn", "pad2d", "pixel_shuffle", "shuffle_channel", "image_resize",
           "resize_bilinear", "resize_nearest"]


def conv2d_transpose(input: Variable, num_filters: int, output_size: Any = None, filter_size: Any = None,
                     padding: Any = 0, stride: Any = 1, dilation: Any = 1, groups: int | None = None,
                     param_attr: Any = None, bias_attr: Any = None, use_cudnn: bool = True, act: str | None = None,
                     name: str | None = None) -> Variable:
    """Transposed 2-D convolution of an NCHW input (the gradient of conv2d run forwards):
    H_out = (H - 1) * stride - 2 * padding + dilation * (k - 1) + 1.  Give ``filter_size``,
    or ``output_size`` to derive it."""
    need_var("conv2d_transpose", "input", input)
    _require_4d("conv2d_transpose", input)
    c = input.shape[1]
    groups = 1 if groups is None else int(groups)
    if c <= 0 or c % groups or num_filters % groups:
        raise InvalidArgumentError(f"conv2d_transpose: groups={groups} must divide the input channels ({c}) and "
                                   f"num_filters ({num_filters})")
    stride_, pad, dil = (_to_pair(v, "conv2d_transpose", a) for v, a in
                         ((stride, "stride"), (padding, "padding"), (dilation, "dilation")))
    if filter_size is None:
        if output_size is None:
            raise InvalidArgumentError("conv2d_transpose: give filter_size or output_size")
        out = _to_pair(output_size, "conv2d_transpose", "output_size")
        if any(d <= 0 for d in input.shape[2:]):
            raise InvalidArgumentError("conv2d_transpose: output_size needs the input's H and W known")
        fsize = [(out[i] - (input.shape[2 + i] - 1) * stride_[i] + 2 * pad[i] - 1) // dil[i] + 1 for i in range(2)]
    else:
        fsize = _to_pair(filter_size, "conv2d_transpose", "filter_size")
    helper = LayerHelper("conv2d_transpose", param_attr=param_attr, bias_attr=bias_attr, act=act, name=name)
    w = helper.create_parameter(param_attr, [c, int(num_filters) // groups] + fsize, input.dtype)
    pre_bias = helper.create_variable_for_type_inference(input.dtype)
    out_size = [] if output_size is None else _to_pair(output_size, "conv2d_transpose", "output_size")
    helper.append_op("conv2d_transpose", {"Input": [input], "Filter": [w]}, {"Output": [pre_bias]},
                     {"strides": stride_, "paddings": pad, "dilations": dil, "groups": groups,
                      "use_cudnn": bool(use_cudnn), "output_size": out_size})
    return helper.append_activation(helper.append_bias_op(pre_bias, dim_start=1))


def _one(op_type: str, x: Variable, attrs: dict, name: str | None = None, extra: Sequence[str] = ()) -> Variable:
    need_var(op_type, "input", x)
    helper = LayerHelper(op_type, name=name)
    out = helper.create_variable_for_type_inference(x.dtype)
    outs = {"Out": [out], **{s: [helper.create_variable_for_type_inference(x.dtype, True)] for s in extra}}
    helper.append_op(op_type, {"X": [x]}, outs, attrs)
    return out


def lrn(input: Variable, n: int = 5, k: float = 1.0, alpha: float = 1e-4, beta: float = 0.75,
        name: str | None = None) -> Variable:
    """Local response normalization across ``n`` neighbouring channels:
    x / (k + alpha * sum(x^2)) ** beta."""
    _require_4d("lrn", input)
    return _one("lrn", input, {"n": int(n), "k": float(k), "alpha": float(alpha), "beta": float(beta)}, name,
                extra=("MidOut",))


def pad2d(input: Variable, paddings: Sequence[int] = (0, 0, 0, 0), mode: str = "constant", pad_value: float = 0.0,
          data_format: str = "NCHW", name: str | None = None) -> Variable:
    """Pad H and W by [top, bottom, left, right]: "constant", "reflect" or "edge"."""
    if mode not in PAD_MODES:
        raise InvalidArgumentError(f"pad2d: mode {mode!r} is not one of {list(PAD_MODES)}")
    return _one("pad2d", input, {"paddings": [int(p) for p in paddings], "mode": mode, "pad_value": float(pad_value),
                                 "data_format": data_format}, name)


def pixel_shuffle(x: Variable, upscale_factor: int) -> Variable:
    """[N, C*r*r, H, W] -> [N, C, H*r, W*r] (sub-pixel upsampling)."""
    return _one("pixel_shuffle", x, {"upscale_factor": int(upscale_factor)})


def shuffle_channel(x: Variable, group: int, name: str | None = None) -> Variable:
    """Interleave the channels of ``group`` groups."""
    return _one("shuffle_channel", x, {"group": int(group)}, name)


def image_resize(input: Variable, out_shape: Sequence[int] | None = None, scale: float | None = None,
                 name: str | None = None, resample: str = "BILINEAR", actual_shape: Variable | None = None,
                 align_corners: bool = True, align_mode: int = 1) -> Variable:
    """Resize the H and W of an NCHW input to ``out_shape`` [h, w] (or by ``scale``) with
    "BILINEAR" or "NEAREST" interpolation."""
    need_var("image_resize", "input", input)
    _require_4d("image_resize", input)
    if resample not in ("BILINEAR", "NEAREST"):
        raise InvalidArgumentError(f"image_resize: resample must be 'BILINEAR' or 'NEAREST', got {resample!r}")
    if actual_shape is not None:
        raise InvalidArgumentError("image_resize: actual_shape (a run-time output size) is not supported")
    if out_shape is None:
        if scale is None or any(d <= 0 for d in input.shape[2:]):
            raise InvalidArgumentError("image_resize: give out_shape, or scale with the input's H and W known")
        out_shape = [int(input.shape[2] * scale), int(input.shape[3] * scale)]
    oh, ow = (int(v) for v in out_shape)
    op = "bilinear_interp" if resample == "BILINEAR" else "nearest_interp"
    return _one(op, input, {"out_h": oh, "out_w": ow, "interp_method": resample.lower(),
                            "align_corners": bool(align_corners), "align_mode": int(align_mode)}, name)


def resize_bilinear(input: Variable, out_shape: Sequence[int] | None = None, scale: float | None = None,
                    name: str | None = None, actual_shape: Variable | None = None, align_corners: bool = True,
                    align_mode: int = 1) -> Variable:
    """Bilinear ``image_resize``."""
    return image_resize(input, out_shape, scale, name, "BILINEAR", actual_shape, align_corners, align_mode)


def resize_nearest(input: Variable, out_shape: Sequence[int] | None = None, scale: float | None = None,
                   name: str | None = None, actual_shape: Variable | None = None,
                   align_corners: bool = True) -> Variable:
    """Nearest-neighbour ``image_resize``."""
    return image_resize(input, out_shape, scale, name, "NEAREST", actual_shape, align_corners)
