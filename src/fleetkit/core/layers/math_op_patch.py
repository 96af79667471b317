"""Operator overloads on Variable (``a + b``, ``x * 2``...) as fluid's monkey patch provides."""
from __future__ import annotations

from typing import Any

from ..framework import Variable
from ..layer_helper import LayerHelper

_OPS = {"add": "elementwise_add", "sub": "elementwise_sub", "mul": "elementwise_mul",
        "div": "elementwise_div"}


def _scalar_op(x: Variable, s: float, op: str, reverse: bool) -> Variable:
    # x+s, x-s, s-x, x*s, x/s via scale; s/x via reciprocal then scale
    helper = LayerHelper("scale")
    out = helper.create_variable_for_type_inference(x.dtype)
    if op == "div" and reverse:
        tmp = helper.create_variable_for_type_inference(x.dtype)
        helper.append_op("reciprocal", {"X": [x]}, {"Out": [tmp]})
        helper.append_op("scale", {"X": [tmp]}, {"Out": [out]}, {"scale": s, "bias": 0.0})
        return out
    scale, bias = {"add": (1.0, s), "sub": (-1.0, s) if reverse else (1.0, -s),
                   "mul": (s, 0.0), "div": (1.0 / s, 0.0)}[op]
    helper.append_op("scale", {"X": [x]}, {"Out": [out]}, {"scale": scale, "bias": bias})
    return out


def binary_op(x: Variable, other: Any, op: str, reverse: bool = False) -> Variable:
    if isinstance(other, (int, float)):
        return _scalar_op(x, float(other), op, reverse)
    if not isinstance(other, Variable):
        return NotImplemented
    a, b = (other, x) if reverse else (x, other)
    helper = LayerHelper(_OPS[op])
    out = helper.create_variable_for_type_inference(a.dtype)
    helper.append_op(_OPS[op], {"X": [a], "Y": [b]}, {"Out": [out]}, {"axis": -1})
    return out
