"""More layers (fluid 1.4 names, arguments and defaults): sequence_expand_as, sequence_slice,
sequence_enumerate, row_conv, range, linspace, diag, rank, pad_constant_like, crop,
add_position_encoding, bilinear_tensor_product, affine_channel, group_norm, gru_unit,
lstm_unit, dice_loss, npair_loss, spectral_norm."""
from __future__ import annotations

import builtins
from typing import Any, Sequence

from ...errors import InvalidArgumentError
from ..framework import Variable, convert_dtype
from ..initializer import Constant, Normal
from ..layer_helper import LayerHelper
from . import nn as _nn
from . import tensor as _tensor
from .checks import need_vars

__all__ = ["sequence_expand_as", "sequence_slice", "sequence_enumerate", "row_conv", "range", "linspace", "diag",
           "rank", "pad_constant_like", "crop", "add_position_encoding", "bilinear_tensor_product", "affine_channel",
           "group_norm", "gru_unit", "lstm_unit", "dice_loss", "npair_loss", "spectral_norm"]


def _op(op_type: str, inputs: dict, attrs: dict | None = None, out_slot: str = "Out", dtype: str | None = None,
        name: str | None = None, act: str | None = None) -> Variable:
    helper = LayerHelper(op_type, name=name, act=act)
    first = next(v for v in inputs.values() if v is not None)
    out = helper.create_variable_for_type_inference(dtype or first.dtype)
    helper.append_op(op_type, {k: [v] for k, v in inputs.items() if v is not None}, {out_slot: [out]}, attrs or {})
    return helper.append_activation(out)


def sequence_expand_as(x: Variable, y: Variable, name: str | None = None) -> Variable:
    """Row i of ``x`` repeated as many times as sequence i of ``y`` is long."""
    need_vars("sequence_expand_as", x=x, y=y)
    return _op("sequence_expand_as", {"X": x, "Y": y}, name=name)


def sequence_slice(input: Variable, offset: Variable, length: Variable, name: str | None = None) -> Variable:
    """Rows offset[i] ... offset[i] + length[i] - 1 of each sequence i."""
    need_vars("sequence_slice", input=input, offset=offset, length=length)
    return _op("sequence_slice", {"X": input, "Offset": offset, "Length": length}, name=name)


def sequence_enumerate(input: Variable, win_size: int, pad_value: int = 0, name: str | None = None) -> Variable:
    """For each id, the ``win_size`` ids starting there in its sequence (``pad_value`` past the end)."""
    need_vars("sequence_enumerate", input=input)
    return _op("sequence_enumerate", {"X": input}, {"win_size": int(win_size), "pad_value": int(pad_value)},
               name=name)


def row_conv(input: Variable, future_context_size: int, param_attr: Any = None, act: str | None = None) -> Variable:
    """Lookahead convolution: out[t] = sum_k w[k] * x[t + k], k = 0 ... future_context_size."""
    need_vars("row_conv", input=input)
    helper = LayerHelper("row_conv", act=act)
    w = helper.create_parameter(param_attr, [int(future_context_size) + 1, input.shape[1]], input.dtype)
    out = helper.create_variable_for_type_inference(input.dtype)
    helper.append_op("row_conv", {"X": [input], "Filter": [w]}, {"Out": [out]})
    return helper.append_activation(out)


def _scalar_var(v: Any, dtype: str) -> Variable:
    return v if isinstance(v, Variable) else _tensor.fill_constant([1], dtype, float(v))


def range(start: Any, end: Any, step: Any, dtype: str) -> Variable:
    """[start, end) in steps of ``step`` (numbers or one-element Variables)."""
    dt = convert_dtype(dtype)
    return _op("range", {"Start": _scalar_var(start, dt), "End": _scalar_var(end, dt), "Step": _scalar_var(step, dt)})


def linspace(start: Any, stop: Any, num: Any, dtype: str) -> Variable:
    """``num`` evenly spaced values from ``start`` to ``stop``, both included."""
    dt = convert_dtype(dtype)
    return _op("linspace", {"Start": _scalar_var(start, dt), "Stop": _scalar_var(stop, dt),
                            "Num": _scalar_var(num, "int32")})


def diag(diagonal: Variable) -> Variable:
    """A square matrix with ``diagonal`` on its diagonal."""
    need_vars("diag", diagonal=diagonal)
    return _op("diag", {"Diagonal": diagonal})


def rank(input: Variable) -> Variable:
    """The rank of ``input`` as an int32 [1] constant."""
    need_vars("rank", input=input)
    return _tensor.fill_constant([1], "int32", len(input.shape))


def pad_constant_like(x: Variable, y: Variable, pad_value: float = 0.0, name: str | None = None) -> Variable:
    """``y`` padded at the end of every dim to ``x``'s shape."""
    need_vars("pad_constant_like", x=x, y=y)
    helper = LayerHelper("pad_constant_like", name=name)
    out = helper.create_variable_for_type_inference(y.dtype)
    helper.append_op("pad_constant_like", {"X": [x], "Y": [y]}, {"Out": [out]}, {"pad_value": float(pad_value)})
    return out


def crop(x: Variable, shape: Any = None, offsets: Sequence[int] | None = None, name: str | None = None) -> Variable:
    """The box of ``x`` at ``offsets`` (default 0) sized ``shape`` (a list, or a Variable whose
    shape is used)."""
    need_vars("crop", x=x)
    if shape is None:
        raise InvalidArgumentError("crop: give shape (a list or a Variable)")
    inputs = {"X": x, "Y": shape if isinstance(shape, Variable) else None}
    attrs = {"offsets": [int(o) for o in (offsets or [])],
             "shape": [] if isinstance(shape, Variable) else [int(d) for d in shape]}
    return _op("crop", inputs, attrs, name=name)


def add_position_encoding(input: Variable, alpha: float, beta: float, name: str | None = None) -> Variable:
    """alpha * input + beta * the sinusoid position encoding (Transformer)."""
    need_vars("add_position_encoding", input=input)
    return _op("add_position_encoding", {"X": input}, {"alpha": float(alpha), "beta": float(beta)}, name=name)


def bilinear_tensor_product(x: Variable, y: Variable, size: int, act: str | None = None, name: str | None = None,
                            param_attr: Any = None, bias_attr: Any = None) -> Variable:
    """out[n, k] = x[n] . W[k] . y[n] + b[k] with W [size, dim(x), dim(y)]."""
    need_vars("bilinear_tensor_product", x=x, y=y)
    helper = LayerHelper("bilinear_tensor_product", act=act, name=name)
    w = helper.create_parameter(param_attr, [int(size), x.shape[1], y.shape[1]], x.dtype)
    inputs = {"X": [x], "Y": [y], "Weight": [w]}
    if bias_attr is not False:
        inputs["Bias"] = [helper.create_parameter(bias_attr, [1, int(size)], x.dtype, is_bias=True)]
    out = helper.create_variable_for_type_inference(x.dtype)
    helper.append_op("bilinear_tensor_product", inputs, {"Out": [out]})
    return helper.append_activation(out)


def affine_channel(x: Variable, scale: Variable | None = None, bias: Variable | None = None,
                   data_layout: str = "NCHW", name: str | None = None, act: str | None = None) -> Variable:
    """x * scale[c] + bias[c] per channel (scale and bias are [C] Variables)."""
    need_vars("affine_channel", x=x, scale=scale, bias=bias)
    return _op("affine_channel", {"X": x, "Scale": scale, "Bias": bias}, {"data_layout": data_layout}, name=name,
               act=act)


def group_norm(input: Variable, groups: int, epsilon: float = 1e-05, param_attr: Any = None, bias_attr: Any = None,
               act: str | None = None, data_layout: str = "NCHW", name: str | None = None) -> Variable:
    """Normalize each group of channels per sample; learned per-channel scale (1) and bias (0)."""
    need_vars("group_norm", input=input)
    if data_layout != "NCHW":
        raise InvalidArgumentError("group_norm: only data_layout='NCHW' is supported")
    c = input.shape[1]
    helper = LayerHelper("group_norm", act=act, name=name)
    inputs: dict[str, list] = {"X": [input]}
    if param_attr is not False:
        inputs["Scale"] = [helper.create_parameter(param_attr, [c], input.dtype, default_initializer=Constant(1.0))]
    if bias_attr is not False:
        inputs["Bias"] = [helper.create_parameter(bias_attr, [c], input.dtype, is_bias=True)]
    y = helper.create_variable_for_type_inference(input.dtype)
    mean = helper.create_variable_for_type_inference(input.dtype, True)
    var = helper.create_variable_for_type_inference(input.dtype, True)
    helper.append_op("group_norm", inputs, {"Y": [y], "Mean": [mean], "Variance": [var]},
                     {"groups": int(groups), "epsilon": float(epsilon)})
    return helper.append_activation(y)


def gru_unit(input: Variable, hidden: Variable, size: int, param_attr: Any = None, bias_attr: Any = None,
             activation: str = "tanh", gate_activation: str = "sigmoid",
             origin_mode: bool = False) -> tuple[Variable, Variable, Variable]:
    """One GRU step: ``input`` [N, size] (= 3 * hidden size, already projected), ``hidden``
    the previous state.  Returns (new hidden, reset hidden, gates)."""
    need_vars("gru_unit", input=input, hidden=hidden)
    d = int(size) // 3
    helper = LayerHelper("gru_unit")
    w = helper.create_parameter(param_attr, [d, 3 * d], input.dtype)
    inputs = {"Input": [input], "HiddenPrev": [hidden], "Weight": [w]}
    if bias_attr is not False:
        inputs["Bias"] = [helper.create_parameter(bias_attr, [1, 3 * d], input.dtype, is_bias=True)]
    outs = {s: helper.create_variable_for_type_inference(input.dtype) for s in ("Hidden", "ResetHiddenPrev", "Gate")}
    helper.append_op("gru_unit", inputs, {k: [v] for k, v in outs.items()},
                     {"activation": activation, "gate_activation": gate_activation, "origin_mode": bool(origin_mode)})
    return outs["Hidden"], outs["ResetHiddenPrev"], outs["Gate"]


def lstm_unit(x_t: Variable, hidden_t_prev: Variable, cell_t_prev: Variable, forget_bias: float = 0.0,
              param_attr: Any = None, bias_attr: Any = None, name: str | None = None) -> tuple[Variable, Variable]:
    """One LSTM step: an fc of [x_t, hidden_t_prev] to the 4 gates, then the cell update.
    Returns (hidden, cell)."""
    need_vars("lstm_unit", x_t=x_t, hidden_t_prev=hidden_t_prev, cell_t_prev=cell_t_prev)
    d = cell_t_prev.shape[1]
    gates = _nn.fc(_tensor.concat([x_t, hidden_t_prev], axis=1), 4 * d, param_attr=param_attr, bias_attr=bias_attr)
    helper = LayerHelper("lstm_unit", name=name)
    c = helper.create_variable_for_type_inference(x_t.dtype)
    h = helper.create_variable_for_type_inference(x_t.dtype)
    helper.append_op("lstm_unit", {"X": [gates], "C_prev": [cell_t_prev]}, {"C": [c], "H": [h]},
                     {"forget_bias": float(forget_bias)})
    return h, c


def dice_loss(input: Variable, label: Variable, epsilon: float = 1e-05) -> Variable:
    """1 - 2 |X . Y| / (|X| + |Y|) averaged over the batch; ``label`` holds class ids [..., 1]."""
    from .nn import elementwise_add, elementwise_div, elementwise_mul, scale
    from .tensor import one_hot, reduce_mean, reduce_sum
    need_vars("dice_loss", input=input, label=label)
    onehot = one_hot(label, depth=input.shape[-1])
    dims = list(builtins.range(1, len(input.shape)))  # this module's ``range`` is the layer
    inter = reduce_sum(elementwise_mul(input, onehot), dim=dims)
    denom = elementwise_add(reduce_sum(input, dim=dims), reduce_sum(onehot, dim=dims))
    dice = scale(elementwise_div(scale(inter, 2.0), scale(denom, 1.0, bias=float(epsilon))), -1.0, bias=1.0)
    return reduce_mean(dice)


def npair_loss(anchor: Variable, positive: Variable, labels: Variable, l2_reg: float = 0.002) -> Variable:
    """N-pair loss: softmax cross entropy of anchor . positive^T against same-label targets,
    plus l2_reg / 4 times the mean squared norms of the embeddings."""
    from .loss import softmax_with_cross_entropy
    from .nn import elementwise_add, elementwise_div, elementwise_mul, matmul, scale, square
    from .tensor import cast, expand, reduce_mean, reduce_sum, reshape, transpose
    from .tensor_ext import equal
    need_vars("npair_loss", anchor=anchor, positive=positive, labels=labels)
    n = labels.shape[0]
    if n <= 0:
        raise InvalidArgumentError("npair_loss: labels need a known batch size (append_batch_size=False)")
    lab = expand(reshape(labels, [n, 1]), [1, n])
    same = cast(equal(lab, transpose(lab, [1, 0])), anchor.dtype)
    target = elementwise_div(same, reduce_sum(same, dim=1, keep_dim=True), axis=0)
    l2 = elementwise_add(reduce_mean(reduce_sum(square(anchor), dim=1)),
                         reduce_mean(reduce_sum(square(positive), dim=1)))
    sim = matmul(anchor, positive, transpose_y=True)
    ce = softmax_with_cross_entropy(sim, target, soft_label=True)
    celoss = reduce_mean(reduce_sum(elementwise_mul(target, ce), dim=0))
    return elementwise_add(scale(l2, 0.25 * float(l2_reg)), celoss)


def spectral_norm(weight: Variable, dim: int = 0, power_iters: int = 1, eps: float = 1e-12,
                  name: str | None = None) -> Variable:
    """``weight`` divided by its largest singular value (of the matrix with ``dim`` as rows),
    estimated with ``power_iters`` power iterations from fixed random vectors u and v."""
    need_vars("spectral_norm", weight=weight)
    if not 0 <= dim < len(weight.shape) or any(d <= 0 for d in weight.shape):
        raise InvalidArgumentError(f"spectral_norm: weight '{weight.name}' {list(weight.shape)} needs known dims "
                                   f"and dim in [0, {len(weight.shape)})")
    h = weight.shape[dim]
    w = 1
    for i, d in enumerate(weight.shape):
        w = w * d if i != dim else w
    helper = LayerHelper("spectral_norm", name=name)
    from ..param_attr import ParamAttr
    u = helper.create_parameter(ParamAttr(trainable=False), [h], weight.dtype, default_initializer=Normal(0.0, 1.0))
    v = helper.create_parameter(ParamAttr(trainable=False), [w], weight.dtype, default_initializer=Normal(0.0, 1.0))
    out = helper.create_variable_for_type_inference(weight.dtype)
    helper.append_op("spectral_norm", {"Weight": [weight], "U": [u], "V": [v]}, {"Out": [out]},
                     {"dim": int(dim), "power_iters": int(power_iters), "epsilon": float(eps)})
    return out
