"""Linear-chain CRF layers (fluid 1.4 names and arguments)."""
from __future__ import annotations

from typing import Any

from ...errors import InvalidArgumentError, NotFoundError
from ..framework import Parameter, Variable
from ..layer_helper import LayerHelper
from ..param_attr import ParamAttr
from .checks import need_var

__all__ = ["linear_chain_crf", "crf_decoding"]


def linear_chain_crf(input: Variable, label: Variable, param_attr: Any = None) -> Variable:
    """Negative log-likelihood [N, 1] of each label sequence under a linear-chain CRF over
    the emission scores ``input`` [T, D] (a LoD tensor).  The transition parameter is
    [D + 2, D]: start weights, end weights, then tag-to-tag weights; name it with
    ``param_attr`` to decode with ``crf_decoding``."""
    need_var("linear_chain_crf", "input", input)
    need_var("linear_chain_crf", "label", label)
    if len(input.shape) != 2 or input.shape[1] <= 0:
        raise InvalidArgumentError(f"linear_chain_crf: input '{input.name}' must be [T, num_tags], "
                                   f"got {list(input.shape)}")
    helper = LayerHelper("linear_chain_crf", param_attr=param_attr)
    d = input.shape[1]
    w = helper.create_parameter(param_attr, [d + 2, d], input.dtype)
    out = helper.create_variable_for_type_inference(input.dtype)
    helper.append_op("linear_chain_crf", {"Emission": [input], "Transition": [w], "Label": [label]},
                     {"LogLikelihood": [out]})
    return out


def crf_decoding(input: Variable, param_attr: Any, label: Variable | None = None) -> Variable:
    """The Viterbi tag path [T, 1] (int64, the input's LoD) under the transition parameter
    named by ``param_attr`` (the one ``linear_chain_crf`` trained); with ``label``, 1 where
    the path agrees with it and 0 elsewhere."""
    need_var("crf_decoding", "input", input)
    attr = ParamAttr._to_attr(param_attr)
    name = getattr(attr, "name", None)
    helper = LayerHelper("crf_decoding")
    w = helper.block.vars.get(name) if name else None
    if not isinstance(w, Parameter):
        raise NotFoundError(f"crf_decoding: no transition parameter named {name!r}; pass the param_attr "
                            f"(with a name) that linear_chain_crf used")
    path = helper.create_variable_for_type_inference("int64", stop_gradient=True)
    inputs = {"Emission": [input], "Transition": [w]}
    if label is not None:
        inputs["Label"] = [label]
    helper.append_op("crf_decoding", inputs, {"ViterbiPath": [path]})
    return path
