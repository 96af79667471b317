"""More LoD sequence layers (fluid 1.4 names and arguments): ``sequence_conv``,
``sequence_softmax``, ``sequence_expand``, ``sequence_reshape``, ``lod_reset``,
``sequence_pad``/``sequence_unpad``, ``sequence_reverse``, ``sequence_concat``."""
from __future__ import annotations

from typing import Any, Sequence

from ...errors import InvalidArgumentError
from ..framework import Variable
from ..layer_helper import LayerHelper
from .checks import need_var

__all__ = ["sequence_conv", "sequence_softmax", "sequence_expand", "sequence_reshape", "lod_reset", "sequence_pad",
           "sequence_unpad", "sequence_reverse", "sequence_concat"]


def sequence_conv(input: Variable, num_filters: int, filter_size: int = 3, filter_stride: int = 1,
                  padding: Any = None, bias_attr: Any = None, param_attr: Any = None, act: str | None = None,
                  name: str | None = None) -> Variable:
    """Convolution over the rows of each sequence: row t sees rows t - filter_size//2 ...
    (zeros past the sequence's ends), projected by a [filter_size * D, num_filters] filter."""
    need_var("sequence_conv", "input", input)
    if len(input.shape) != 2 or input.shape[1] <= 0:
        raise InvalidArgumentError(
            f"sequence_conv: input '{input.name}' must be [T, D] with D known, got {list(input.shape)}")
    if int(filter_stride) != 1:
        raise InvalidArgumentError(f"sequence_conv: filter_stride must be 1, got {filter_stride}")
    helper = LayerHelper("sequence_conv", param_attr=param_attr, bias_attr=bias_attr, act=act, name=name)
    w = helper.create_parameter(param_attr, [int(filter_size) * input.shape[1], int(num_filters)], input.dtype)
    pre_bias = helper.create_variable_for_type_inference(input.dtype)
    helper.append_op("sequence_conv", {"X": [input], "Filter": [w]}, {"Out": [pre_bias]},
                     {"contextStride": 1, "contextStart": -(int(filter_size) // 2),
                      "contextLength": int(filter_size)})
    return helper.append_activation(helper.append_bias_op(pre_bias))


def _one_out(op_type: str, inputs: dict, attrs: dict | None = None, name: str | None = None) -> Variable:
    helper = LayerHelper(op_type, name=name)
    x = inputs["X"]
    out = helper.create_variable_for_type_inference(x.dtype)
    helper.append_op(op_type, {k: [v] for k, v in inputs.items()}, {"Out": [out]}, attrs or {})
    return out


def sequence_softmax(input: Variable, use_cudnn: bool = False, name: str | None = None) -> Variable:
    """Softmax over the rows of each sequence of a [T, 1] LoD tensor."""
    need_var("sequence_softmax", "input", input)
    return _one_out("sequence_softmax", {"X": input}, {"use_cudnn": bool(use_cudnn)}, name)


def sequence_expand(x: Variable, y: Variable, ref_level: int = -1, name: str | None = None) -> Variable:
    """Repeat each sequence of ``x`` (each row, when ``x`` has no LoD) as many times as the
    matching sequence of ``y``'s LoD level ``ref_level`` (-1: the last) has elements."""
    need_var("sequence_expand", "x", x)
    need_var("sequence_expand", "y", y)
    return _one_out("sequence_expand", {"X": x, "Y": y}, {"ref_level": int(ref_level)}, name)


def sequence_reshape(input: Variable, new_dim: int) -> Variable:
    """Re-cut each sequence of a [T, D] LoD tensor into rows of width ``new_dim``."""
    need_var("sequence_reshape", "input", input)
    return _one_out("sequence_reshape", {"X": input}, {"new_dim": int(new_dim)})


def lod_reset(x: Variable, y: Variable | None = None, target_lod: Sequence[int] | None = None) -> Variable:
    """``x`` with a new LoD: ``y``'s LoD (or ``y``'s int values as offsets), else ``target_lod``."""
    need_var("lod_reset", "x", x)
    if y is not None:
        need_var("lod_reset", "y", y)
        return _one_out("lod_reset", {"X": x, "Y": y})
    if not target_lod:
        raise InvalidArgumentError("lod_reset: give y or target_lod")
    return _one_out("lod_reset", {"X": x}, {"target_lod": [int(v) for v in target_lod]})


def sequence_pad(x: Variable, pad_value: Variable, maxlen: int | None = None,
                 name: str | None = None) -> tuple[Variable, Variable]:
    """Pad each sequence to ``maxlen`` rows (default: the longest) with ``pad_value``;
    returns (padded [num_seqs, maxlen, ...], lengths [num_seqs] int64)."""
    need_var("sequence_pad", "x", x)
    need_var("sequence_pad", "pad_value", pad_value)
    helper = LayerHelper("sequence_pad", name=name)
    out = helper.create_variable_for_type_inference(x.dtype)
    length = helper.create_variable_for_type_inference("int64", stop_gradient=True)
    helper.append_op("sequence_pad", {"X": [x], "PadValue": [pad_value]}, {"Out": [out], "Length": [length]},
                     {"padded_length": -1 if maxlen is None else int(maxlen)})
    return out, length


def sequence_unpad(x: Variable, length: Variable, name: str | None = None) -> Variable:
    """The first length[i] rows of each padded sequence x[i], as a LoD tensor."""
    need_var("sequence_unpad", "x", x)
    need_var("sequence_unpad", "length", length)
    return _one_out("sequence_unpad", {"X": x, "Length": length}, name=name)


def sequence_reverse(x: Variable, name: str | None = None) -> Variable:
    """Each sequence's rows in reverse order."""
    need_var("sequence_reverse", "x", x)
    helper = LayerHelper("sequence_reverse", name=name)
    out = helper.create_variable_for_type_inference(x.dtype)
    helper.append_op("sequence_reverse", {"X": [x]}, {"Y": [out]})
    return out


def sequence_concat(input: Sequence[Variable], name: str | None = None) -> Variable:
    """Sequence i of the result is sequence i of every input, one after the other."""
    xs = list(input)
    for v in xs:
        need_var("sequence_concat", "input", v)
    helper = LayerHelper("sequence_concat", name=name)
    out = helper.create_variable_for_type_inference(xs[0].dtype)
    helper.append_op("sequence_concat", {"X": xs}, {"Out": [out]})
    return out
