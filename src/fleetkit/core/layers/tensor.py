"""Tensor creation and manipulation layers, with fluid 1.4 names and arguments.

Each layer appends one op (shape inference runs at once, so a bad shape is
reported where the layer is called) and returns its output variable(s).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...errors import InvalidArgumentError
from ..framework import Variable, convert_dtype
from ..initializer import Initializer
from ..layer_helper import LayerHelper
from ..param_attr import ParamAttr
from .checks import need_var

__all__ = [
    "create_tensor", "create_parameter", "create_global_var", "cast", "concat", "sums", "assign",
    "fill_constant", "fill_constant_batch_size_like", "ones", "zeros", "zeros_like", "reshape", "transpose",
    "split", "reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod", "clip", "clip_by_norm",
    "squeeze", "unsqueeze", "stack", "expand", "slice", "gather", "one_hot", "flatten", "shape",
    "uniform_random_batch_size_like", "argsort", "has_inf", "has_nan", "isfinite", "sign",
    "elementwise_mod", "elementwise_floordiv", "uniform_random", "gaussian_random",
]


# ------------------------------------------------------------------ helpers
def _int_list(layer: str, arg: str, v: Any) -> list[int]:
    if isinstance(v, (int, np.integer)):
        return [int(v)]
    if not isinstance(v, (list, tuple)) or not all(isinstance(d, (int, np.integer)) for d in v):
        raise InvalidArgumentError(f"{layer}: '{arg}' must be a list of ints, got {v!r}")
    return [int(d) for d in v]


def _unary(op_type: str, x: Variable, attrs: dict | None = None, name: str | None = None,
           arg: str = "x", in_slot: str = "X", out_dtype: str | None = None,
           act: str | None = None, stop_gradient: bool = False) -> Variable:
    """Append ``op_type(in_slot=x) -> Out`` and return Out."""
    need_var(op_type, arg, x)
    helper = LayerHelper(op_type, name=name, act=act)
    out = helper.create_variable_for_type_inference(out_dtype or x.dtype, stop_gradient=stop_gradient)
    helper.append_op(op_type, {in_slot: [x]}, {"Out": [out]}, attrs or {})
    return helper.append_activation(out)


def _var_list(layer: str, arg: str, v: Any) -> list[Variable]:
    vs = list(v) if isinstance(v, (list, tuple)) else [v]
    if not vs:
        raise InvalidArgumentError(f"{layer}: '{arg}' must not be empty")
    for x in vs:
        need_var(layer, arg, x)
    return vs


# ----------------------------------------------------------------- creation
def create_tensor(dtype: Any, name: str | None = None, persistable: bool = False) -> Variable:
    """An empty variable of ``dtype`` (filled later by assign or an op)."""
    helper = LayerHelper("create_tensor", name=name)
    return helper.create_variable(name=helper.name, dtype=convert_dtype(dtype), persistable=persistable)


def create_parameter(shape: Sequence[int], dtype: Any, name: str | None = None, attr: Any = None,
                     is_bias: bool = False, default_initializer: Initializer | None = None) -> Variable:
    """A trainable parameter with its initializer appended to the startup program."""
    helper = LayerHelper("create_parameter", name=name)
    if attr is None:
        attr = ParamAttr(name=name)
    return helper.create_parameter(attr, _int_list("create_parameter", "shape", shape), convert_dtype(dtype),
                                   is_bias, default_initializer)


def create_global_var(shape: Sequence[int], value: float, dtype: Any, persistable: bool = False,
                      force_cpu: bool = False, name: str | None = None) -> Variable:
    """A non-trainable global variable filled with ``value`` by the startup program."""
    helper = LayerHelper("global_var", name=name)
    return helper.create_global_variable(_int_list("create_global_var", "shape", shape), convert_dtype(dtype),
                                         persistable=persistable, name=name, value=float(value),
                                         stop_gradient=True)


def fill_constant(shape: Sequence[int], dtype: Any, value: float, force_cpu: bool = False,
                  out: Variable | None = None) -> Variable:
    """A tensor of ``shape`` filled with ``value`` (written into ``out`` if given)."""
    dtype = convert_dtype(dtype)
    helper = LayerHelper("fill_constant")
    if out is None:
        out = helper.create_variable_for_type_inference(dtype)
    helper.append_op("fill_constant", {}, {"Out": [out]},
                     {"shape": _int_list("fill_constant", "shape", shape), "dtype": dtype,
                      "value": float(value), "force_cpu": bool(force_cpu)})
    out.stop_gradient = True
    return out


def ones(shape: Sequence[int], dtype: Any, force_cpu: bool = False) -> Variable:
    return fill_constant(shape, dtype, 1.0, force_cpu)


def zeros(shape: Sequence[int], dtype: Any, force_cpu: bool = False) -> Variable:
    return fill_constant(shape, dtype, 0.0, force_cpu)


def zeros_like(x: Variable, out: Variable | None = None) -> Variable:
    """Zeros with ``x``'s shape and dtype."""
    need_var("zeros_like", "x", x)
    helper = LayerHelper("zeros_like")
    if out is None:
        out = helper.create_variable_for_type_inference(x.dtype)
    helper.append_op("fill_zeros_like", {"X": [x]}, {"Out": [out]})
    out.stop_gradient = True
    return out


def _batch_like(op_type: str, input: Variable, shape: Sequence[int], dtype: Any, input_dim_idx: int,
                output_dim_idx: int, extra: dict) -> Variable:
    need_var(op_type, "input", input)
    dtype = convert_dtype(dtype)
    helper = LayerHelper(op_type)
    out = helper.create_variable_for_type_inference(dtype, stop_gradient=True)
    helper.append_op(op_type, {"Input": [input]}, {"Out": [out]},
                     {"shape": _int_list(op_type, "shape", shape), "dtype": dtype,
                      "input_dim_idx": int(input_dim_idx), "output_dim_idx": int(output_dim_idx), **extra})
    return out


def fill_constant_batch_size_like(input: Variable, shape: Sequence[int], dtype: Any, value: float,
                                  input_dim_idx: int = 0, output_dim_idx: int = 0) -> Variable:
    """``fill_constant`` whose dim ``output_dim_idx`` is taken from ``input``'s dim ``input_dim_idx``
    at run time (the number of sequences for a LoD input at dim 0)."""
    return _batch_like("fill_constant_batch_size_like", input, shape, dtype, input_dim_idx, output_dim_idx,
                       {"value": float(value)})


def uniform_random_batch_size_like(input: Variable, shape: Sequence[int], dtype: Any = "float32",
                                   input_dim_idx: int = 0, output_dim_idx: int = 0, min: float = -1.0,
                                   max: float = 1.0, seed: int = 0) -> Variable:
    """Uniform [min, max) samples shaped like ``shape`` with the batch dim taken from ``input``."""
    return _batch_like("uniform_random_batch_size_like", input, shape, dtype, input_dim_idx, output_dim_idx,
                       {"min": float(min), "max": float(max), "seed": int(seed)})


def _random(op_type: str, shape: Sequence[int], dtype: Any, attrs: dict) -> Variable:
    dtype = convert_dtype(dtype)
    helper = LayerHelper(op_type)
    out = helper.create_variable_for_type_inference(dtype, stop_gradient=True)
    helper.append_op(op_type, {}, {"Out": [out]},
                     {"shape": _int_list(op_type, "shape", shape), "dtype": dtype, **attrs})
    return out


def uniform_random(shape: Sequence[int], dtype: Any = "float32", min: float = -1.0, max: float = 1.0,
                   seed: int = 0) -> Variable:
    """Uniform [min, max) samples of ``shape`` (seed 0: the program's random seed decides)."""
    if max < min:
        raise InvalidArgumentError(f"uniform_random: max ({max}) < min ({min})")
    return _random("uniform_random", shape, dtype, {"min": float(min), "max": float(max), "seed": int(seed)})


def gaussian_random(shape: Sequence[int], mean: float = 0.0, std: float = 1.0, seed: int = 0,
                    dtype: Any = "float32") -> Variable:
    """Normal(mean, std) samples of ``shape`` (fluid 1.4 argument order: dtype last)."""
    return _random("gaussian_random", shape, dtype, {"mean": float(mean), "std": float(std), "seed": int(seed)})


def assign(input: Any, output: Variable | None = None) -> Variable:
    """Copy a Variable (``assign``) or a numpy array (``assign_value``) into ``output``."""
    helper = LayerHelper("assign")
    if isinstance(input, Variable):
        if output is None:
            output = helper.create_variable_for_type_inference(input.dtype)
        helper.append_op("assign", {"X": [input]}, {"Out": [output]})
        return output
    if not isinstance(input, np.ndarray):
        raise InvalidArgumentError(f"assign: input must be a Variable or a numpy array, got {type(input).__name__}")
    dtype = convert_dtype(input.dtype)
    if output is None:
        output = helper.create_variable_for_type_inference(dtype)
    helper.append_op("assign_value", {}, {"Out": [output]},
                     {"shape": list(input.shape), "dtype": dtype, "values": input.ravel().tolist()})
    return output


# ------------------------------------------------------------ type / values
def cast(x: Variable, dtype: Any) -> Variable:
    """``x`` converted to ``dtype``; the gradient is cast back."""
    need_var("cast", "x", x)
    dtype = convert_dtype(dtype)
    return _unary("cast", x, {"in_dtype": x.dtype, "out_dtype": dtype}, out_dtype=dtype)


def clip(x: Variable, min: float, max: float, name: str | None = None) -> Variable:
    """Elementwise clip into [min, max]."""
    return _unary("clip", x, {"min": float(min), "max": float(max)}, name)


def clip_by_norm(x: Variable, max_norm: float, name: str | None = None) -> Variable:
    """``x`` scaled so its L2 norm is at most ``max_norm``."""
    return _unary("clip_by_norm", x, {"max_norm": float(max_norm)}, name)


def sign(x: Variable) -> Variable:
    return _unary("sign", x)


def has_inf(x: Variable) -> Variable:
    """A [1] bool tensor: does ``x`` hold an inf?"""
    return _unary("isinf", x, out_dtype="bool", stop_gradient=True)


def has_nan(x: Variable) -> Variable:
    """A [1] bool tensor: does ``x`` hold a NaN?"""
    return _unary("isnan", x, out_dtype="bool", stop_gradient=True)


def isfinite(x: Variable) -> Variable:
    """A [1] bool tensor: is every element of ``x`` finite?"""
    return _unary("isfinite", x, out_dtype="bool", stop_gradient=True)


def _make_reduce(op_type: str):
    def layer(input: Variable, dim: int | Sequence[int] | None = None, keep_dim: bool = False,
              name: str | None = None) -> Variable:
        dims = [0] if dim is None else _int_list(op_type, "dim", dim)
        return _unary(op_type, input, {"dim": dims, "keep_dim": bool(keep_dim), "reduce_all": dim is None},
                      name, arg="input")
    layer.__name__ = op_type
    layer.__doc__ = (f"``{op_type}`` over ``dim`` (an int or a list; None reduces every dim to shape [1]); "
                     f"``keep_dim`` keeps reduced dims as 1.")
    return layer


reduce_sum = _make_reduce("reduce_sum")
reduce_mean = _make_reduce("reduce_mean")
reduce_max = _make_reduce("reduce_max")
reduce_min = _make_reduce("reduce_min")
reduce_prod = _make_reduce("reduce_prod")


def _make_elementwise(op_type: str):
    def layer(x: Variable, y: Variable, axis: int = -1, act: str | None = None,
              name: str | None = None) -> Variable:
        need_var(op_type, "x", x)
        need_var(op_type, "y", y)
        helper = LayerHelper(op_type, name=name, act=act)
        out = helper.create_variable_for_type_inference(x.dtype)
        helper.append_op(op_type, {"X": [x], "Y": [y]}, {"Out": [out]}, {"axis": int(axis)})
        return helper.append_activation(out)
    layer.__name__ = op_type
    layer.__doc__ = f"``{op_type}`` (rounding toward zero, as fluid 1.4) with fluid broadcasting from ``axis``."
    return layer


elementwise_mod = _make_elementwise("elementwise_mod")
elementwise_floordiv = _make_elementwise("elementwise_floordiv")


# ------------------------------------------------------------------- shapes
def reshape(x: Variable, shape: Sequence[int], actual_shape: Variable | None = None, act: str | None = None,
            inplace: bool = False, name: str | None = None) -> Variable:
    """``x`` with a new shape: 0 copies the input dim at that index, one -1 is inferred.

    ``actual_shape`` (an int tensor) overrides ``shape`` at run time.
    ``inplace`` is accepted for compatibility; the output is always a new variable
    (it shares memory with ``x`` when the layout allows).
    """
    need_var("reshape", "x", x)
    if not isinstance(shape, (list, tuple)):
        raise InvalidArgumentError(f"reshape: 'shape' must be a list or tuple, got {type(shape).__name__}")
    helper = LayerHelper("reshape", name=name, act=act)
    inputs = {"X": [x]}
    if actual_shape is not None:
        inputs["Shape"] = [need_var("reshape", "actual_shape", actual_shape)]
    out = helper.create_variable_for_type_inference(x.dtype)
    helper.append_op("reshape", inputs, {"Out": [out]}, {"shape": _int_list("reshape", "shape", shape)})
    return helper.append_activation(out)


def transpose(x: Variable, perm: Sequence[int], name: str | None = None) -> Variable:
    """``x`` with its dims permuted by ``perm``."""
    return _unary("transpose", x, {"axis": _int_list("transpose", "perm", perm)}, name)


def squeeze(input: Variable, axes: Sequence[int], name: str | None = None) -> Variable:
    """Drop the size-1 dims listed in ``axes`` (every size-1 dim if empty)."""
    return _unary("squeeze", input, {"axes": _int_list("squeeze", "axes", axes)}, name, arg="input")


def unsqueeze(input: Variable, axes: Sequence[int], name: str | None = None) -> Variable:
    """Insert size-1 dims at ``axes`` (each axis indexes the shape built so far)."""
    return _unary("unsqueeze", input, {"axes": _int_list("unsqueeze", "axes", axes)}, name, arg="input")


def flatten(x: Variable, axis: int = 1, name: str | None = None) -> Variable:
    """``x`` as a matrix [prod(dims[:axis]), prod(dims[axis:])]."""
    if not isinstance(axis, (int, np.integer)) or not 0 <= axis <= len(x.shape):
        raise InvalidArgumentError(f"flatten: axis must be an int in [0, {len(x.shape)}] for '{x.name}' of "
                                   f"shape {list(x.shape)}, got {axis!r}")
    return _unary("flatten", x, {"axis": int(axis)}, name)


def expand(x: Variable, expand_times: Sequence[int], name: str | None = None) -> Variable:
    """``x`` tiled ``expand_times[i]`` times along dim i."""
    return _unary("expand", x, {"expand_times": _int_list("expand", "expand_times", expand_times)}, name)


def slice(input: Variable, axes: Sequence[int], starts: Sequence[int], ends: Sequence[int]) -> Variable:
    """``input[starts[i]:ends[i]]`` along each of ``axes`` (negatives count from the end)."""
    attrs = {"axes": _int_list("slice", "axes", axes), "starts": _int_list("slice", "starts", starts),
             "ends": _int_list("slice", "ends", ends)}
    return _unary("slice", input, attrs, arg="input", in_slot="Input")


def shape(input: Variable) -> Variable:
    """The run-time shape of ``input`` as an int32 tensor."""
    return _unary("shape", input, arg="input", in_slot="Input", out_dtype="int32", stop_gradient=True)


def one_hot(input: Variable, depth: int) -> Variable:
    """float32 one-hot rows for int64 ids of shape [N, 1]."""
    return _unary("one_hot", input, {"depth": int(depth)}, arg="input", out_dtype="float32", stop_gradient=True)


def gather(input: Variable, index: Variable) -> Variable:
    """Rows ``input[index]`` (index: int tensor of shape [N] or [N, 1])."""
    need_var("gather", "input", input)
    need_var("gather", "index", index)
    helper = LayerHelper("gather")
    out = helper.create_variable_for_type_inference(input.dtype)
    helper.append_op("gather", {"X": [input], "Index": [index]}, {"Out": [out]})
    return out


def argsort(input: Variable, axis: int = -1, name: str | None = None) -> tuple[Variable, Variable]:
    """(sorted values, int64 indices) of ``input`` along ``axis``."""
    need_var("argsort", "input", input)
    helper = LayerHelper("argsort", name=name)
    out = helper.create_variable_for_type_inference(input.dtype, stop_gradient=True)
    ids = helper.create_variable_for_type_inference("int64", stop_gradient=True)
    helper.append_op("argsort", {"X": [input]}, {"Out": [out], "Indices": [ids]}, {"axis": int(axis)})
    return out, ids


# ---------------------------------------------------------- many <-> one
def concat(input: Sequence[Variable], axis: int = 0, name: str | None = None) -> Variable:
    """Join ``input`` along ``axis``; every other dim must agree."""
    xs = _var_list("concat", "input", input)
    helper = LayerHelper("concat", name=name)
    out = helper.create_variable_for_type_inference(xs[0].dtype)
    helper.append_op("concat", {"X": xs}, {"Out": [out]}, {"axis": int(axis)})
    return out


def sums(input: Sequence[Variable], out: Variable | None = None) -> Variable:
    """Elementwise sum of same-shaped tensors (into ``out`` if given)."""
    xs = _var_list("sums", "input", input)
    helper = LayerHelper("sum")
    if out is None:
        out = helper.create_variable_for_type_inference(xs[0].dtype)
    helper.append_op("sum", {"X": xs}, {"Out": [out]})
    return out


def stack(x: Variable | Sequence[Variable], axis: int = 0) -> Variable:
    """Stack same-shaped tensors along a new dim ``axis``."""
    xs = _var_list("stack", "x", x)
    helper = LayerHelper("stack")
    out = helper.create_variable_for_type_inference(xs[0].dtype)
    helper.append_op("stack", {"X": xs}, {"Y": [out]}, {"axis": int(axis)})
    return out


def split(input: Variable, num_or_sections: int | Sequence[int], dim: int = -1,
          name: str | None = None) -> list[Variable]:
    """Split ``input`` along ``dim`` into ``num_or_sections`` equal parts, or parts of the listed
    sizes (one size may be -1)."""
    need_var("split", "input", input)
    if isinstance(num_or_sections, (int, np.integer)):
        if num_or_sections < 1:
            raise InvalidArgumentError(f"split: num_or_sections must be positive, got {num_or_sections}")
        num, sections, n = int(num_or_sections), [], int(num_or_sections)
    else:
        num, sections = 0, _int_list("split", "num_or_sections", num_or_sections)
        n = len(sections)
    helper = LayerHelper("split", name=name)
    outs = [helper.create_variable_for_type_inference(input.dtype) for _ in range(n)]
    helper.append_op("split", {"X": [input]}, {"Out": outs}, {"num": num, "sections": sections, "axis": int(dim)})
    return outs
