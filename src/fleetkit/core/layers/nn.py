"""Dense layers, elementwise math and activations."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from ..framework import Variable
from ..layer_helper import LayerHelper
from ..param_attr import ParamAttr

__all__ = ["fc", "mul", "matmul", "mean", "scale", "elementwise_add", "elementwise_sub",
           "elementwise_mul", "elementwise_div", "elementwise_max", "elementwise_min", "elementwise_pow",
           "relu", "leaky_relu", "sigmoid", "tanh", "exp", "log", "sqrt", "square", "abs", "softplus",
           "softsign", "relu6", "elu", "reciprocal"]


def fc(input: Variable | list[Variable], size: int, num_flatten_dims: int = 1, param_attr: Any = None,
       bias_attr: Any = None, act: str | None = None, is_test: bool = False, name: str | None = None) -> Variable:
    """Fully connected: act(sum_i flatten(input_i) @ W_i + b)."""
    helper = LayerHelper("fc", input=input, param_attr=param_attr, bias_attr=bias_attr, act=act, name=name)
    inputs = helper.multiple_input("input")
    attrs = param_attr if isinstance(param_attr, (list, tuple)) else [param_attr] * len(inputs)
    if len(attrs) != len(inputs):
        raise InvalidArgumentError(f"fc: {len(inputs)} inputs but {len(attrs)} param_attrs")
    dtype = helper.input_dtype()
    products = []
    for x, attr in zip(inputs, attrs):
        if len(x.shape) <= num_flatten_dims:
            raise InvalidArgumentError(
                f"fc: input '{x.name}' of shape {list(x.shape)} has no dims after num_flatten_dims={num_flatten_dims}")
        tail = x.shape[num_flatten_dims:]
        if any(d <= 0 for d in tail):
            raise InvalidArgumentError(
                f"fc: input '{x.name}' of shape {list(x.shape)} has unknown dims {list(tail)} after "
                f"num_flatten_dims={num_flatten_dims}; the weight shape cannot be derived")
        w = helper.create_parameter(ParamAttr._to_attr(attr), [int(np.prod(tail)), int(size)], dtype)
        out = helper.create_variable_for_type_inference(dtype)
        helper.append_op("mul", {"X": [x], "Y": [w]}, {"Out": [out]},
                         {"x_num_col_dims": num_flatten_dims, "y_num_col_dims": 1})
        products.append(out)
    pre_bias = products[0]
    if len(products) > 1:
        pre_bias = helper.create_variable_for_type_inference(dtype)
        helper.append_op("sum", {"X": products}, {"Out": [pre_bias]})
    pre_act = helper.append_bias_op(pre_bias, dim_start=num_flatten_dims)
    return helper.append_activation(pre_act)


def _simple(op_type: str, inputs: dict, attrs: dict | None = None, name: str | None = None,
            act: str | None = None) -> Variable:
    helper = LayerHelper(op_type, name=name, act=act)
    first = next(iter(inputs.values()))
    out = helper.create_variable_for_type_inference(first.dtype)
    helper.append_op(op_type, {k: [v] for k, v in inputs.items()}, {"Out": [out]}, attrs or {})
    return helper.append_activation(out)


def mul(x: Variable, y: Variable, x_num_col_dims: int = 1, y_num_col_dims: int = 1,
        name: str | None = None) -> Variable:
    return _simple("mul", {"X": x, "Y": y}, {"x_num_col_dims": x_num_col_dims,
                                             "y_num_col_dims": y_num_col_dims}, name)


def matmul(x: Variable, y: Variable, transpose_x: bool = False, transpose_y: bool = False,
           alpha: float = 1.0, name: str | None = None) -> Variable:
    return _simple("matmul", {"X": x, "Y": y},
                   {"transpose_X": transpose_x, "transpose_Y": transpose_y, "alpha": float(alpha)}, name)


def mean(x: Variable, name: str | None = None) -> Variable:
    return _simple("mean", {"X": x}, name=name)


def scale(x: Variable, scale: float = 1.0, bias: float = 0.0, bias_after_scale: bool = True,
          act: str | None = None, name: str | None = None) -> Variable:
    return _simple("scale", {"X": x}, {"scale": float(scale), "bias": float(bias),
                                       "bias_after_scale": bias_after_scale}, name, act)


def _make_elementwise(op_type: str):
    def layer(x: Variable, y: Variable, axis: int = -1, act: str | None = None,
              name: str | None = None) -> Variable:
        return _simple(op_type, {"X": x, "Y": y}, {"axis": axis}, name, act)
    layer.__name__ = op_type
    layer.__doc__ = f"``{op_type}`` with fluid broadcasting: Y matches X's dims from ``axis``."
    return layer


def _make_unary(op_type: str, **defaults: Any):
    def layer(x: Variable, name: str | None = None, **attrs: Any) -> Variable:
        return _simple(op_type, {"X": x}, {**defaults, **attrs}, name)
    layer.__name__ = op_type
    layer.__doc__ = f"``{op_type}`` applied elementwise."
    return layer


elementwise_add = _make_elementwise("elementwise_add")
elementwise_sub = _make_elementwise("elementwise_sub")
elementwise_mul = _make_elementwise("elementwise_mul")
elementwise_div = _make_elementwise("elementwise_div")
elementwise_max = _make_elementwise("elementwise_max")
elementwise_min = _make_elementwise("elementwise_min")
elementwise_pow = _make_elementwise("elementwise_pow")
relu = _make_unary("relu")
sigmoid = _make_unary("sigmoid")
tanh = _make_unary("tanh")
exp = _make_unary("exp")
log = _make_unary("log")
sqrt = _make_unary("sqrt")
square = _make_unary("square")
abs = _make_unary("abs")
softplus = _make_unary("softplus")
softsign = _make_unary("softsign")
reciprocal = _make_unary("reciprocal")


def leaky_relu(x: Variable, alpha: float = 0.02, name: str | None = None) -> Variable:
    return _simple("leaky_relu", {"X": x}, {"alpha": float(alpha)}, name)


def relu6(x: Variable, threshold: float = 6.0, name: str | None = None) -> Variable:
    return _simple("relu6", {"X": x}, {"threshold": float(threshold)}, name)


def elu(x: Variable, alpha: float = 1.0, name: str | None = None) -> Variable:
    return _simple("elu", {"X": x}, {"alpha": float(alpha)}, name)
