"""Recurrent layers over LoD sequences (fluid 1.4 names and arguments)."""
from __future__ import annotations

from typing import Any

from ...errors import InvalidArgumentError
from ..framework import Variable
from ..layer_helper import LayerHelper
from .checks import need_var

__all__ = ["dynamic_lstm", "dynamic_lstmp", "dynamic_gru", "lstm"]


def _input(layer: str, input: Any, gates: int, size: int) -> None:
    need_var(layer, "input", input)
    if len(input.shape) != 2 or input.shape[1] != gates * size:
        raise InvalidArgumentError(
            f"{layer}: input '{input.name}' must be [T, {gates * size}] (the {gates} gates of hidden size {size}, "
            f"usually an fc of width {gates * size}), got {list(input.shape)}")


def dynamic_lstm(input: Variable, size: int, h_0: Variable | None = None, c_0: Variable | None = None,
                 param_attr: Any = None, bias_attr: Any = None, use_peepholes: bool = True,
                 is_reverse: bool = False, gate_activation: str = "sigmoid", cell_activation: str = "tanh",
                 candidate_activation: str = "tanh", dtype: str = "float32",
                 name: str | None = None) -> tuple[Variable, Variable]:
    """LSTM over each sequence of ``input`` [T, size] (``size`` = 4 * hidden size, the
    input already projected to the gates).  Returns (hidden, cell), each [T, size / 4]
    with the input's LoD.  ``h_0``/``c_0``: [num_sequences, size / 4] initial states."""
    if int(size) % 4:
        raise InvalidArgumentError(f"dynamic_lstm: size must be 4 * hidden size, got {size}")
    d = int(size) // 4
    _input("dynamic_lstm", input, 4, d)
    helper = LayerHelper("lstm", param_attr=param_attr, bias_attr=bias_attr, name=name)
    w = helper.create_parameter(param_attr, [d, 4 * d], dtype)
    b = helper.create_parameter(bias_attr, [1, 7 * d if use_peepholes else 4 * d], dtype, is_bias=True)
    hidden = helper.create_variable_for_type_inference(dtype)
    cell = helper.create_variable_for_type_inference(dtype)
    inputs = {"Input": [input], "Weight": [w], "Bias": [b]}
    if h_0 is not None:
        inputs["H0"] = [h_0]
    if c_0 is not None:
        inputs["C0"] = [c_0]
    helper.append_op("lstm", inputs, {"Hidden": [hidden], "Cell": [cell]},
                     {"use_peepholes": bool(use_peepholes), "is_reverse": bool(is_reverse),
                      "gate_activation": gate_activation, "cell_activation": cell_activation,
                      "candidate_activation": candidate_activation})
    return hidden, cell


def dynamic_lstmp(input: Variable, size: int, proj_size: int, param_attr: Any = None, bias_attr: Any = None,
                  use_peepholes: bool = True, is_reverse: bool = False, gate_activation: str = "sigmoid",
                  cell_activation: str = "tanh", candidate_activation: str = "tanh", proj_activation: str = "tanh",
                  dtype: str = "float32", name: str | None = None, h_0: Variable | None = None,
                  c_0: Variable | None = None, cell_clip: float | None = None,
                  proj_clip: float | None = None) -> tuple[Variable, Variable]:
    """LSTM with a recurrent projection (LSTMP) over each sequence of ``input`` [T, size]
    (``size`` = 4 * hidden size): the state fed back is r = proj_activation(h @ P), P of
    [size / 4, proj_size].  Returns (projection [T, proj_size], cell [T, size / 4])."""
    if int(size) % 4:
        raise InvalidArgumentError(f"dynamic_lstmp: size must be 4 * hidden size, got {size}")
    d, p = int(size) // 4, int(proj_size)
    _input("dynamic_lstmp", input, 4, d)
    helper = LayerHelper("lstmp", param_attr=param_attr, bias_attr=bias_attr, name=name)
    w = helper.create_parameter(param_attr, [p, 4 * d], dtype)
    pw = helper.create_parameter(param_attr, [d, p], dtype)
    b = helper.create_parameter(bias_attr, [1, 7 * d if use_peepholes else 4 * d], dtype, is_bias=True)
    proj = helper.create_variable_for_type_inference(dtype)
    cell = helper.create_variable_for_type_inference(dtype)
    inputs = {"Input": [input], "Weight": [w], "ProjWeight": [pw], "Bias": [b]}
    if h_0 is not None:
        inputs["H0"] = [h_0]
    if c_0 is not None:
        inputs["C0"] = [c_0]
    helper.append_op("lstmp", inputs, {"Projection": [proj], "Cell": [cell]},
                     {"use_peepholes": bool(use_peepholes), "is_reverse": bool(is_reverse),
                      "gate_activation": gate_activation, "cell_activation": cell_activation,
                      "candidate_activation": candidate_activation, "proj_activation": proj_activation,
                      "cell_clip": float(cell_clip or 0.0), "proj_clip": float(proj_clip or 0.0)})
    return proj, cell


def dynamic_gru(input: Variable, size: int, param_attr: Any = None, bias_attr: Any = None,
                is_reverse: bool = False, gate_activation: str = "sigmoid", candidate_activation: str = "tanh",
                h_0: Variable | None = None, origin_mode: bool = False) -> Variable:
    """GRU over each sequence of ``input`` [T, 3 * size] (the update, reset and candidate
    projections); returns the hidden states [T, size] with the input's LoD.

    h = (1 - u) * h_prev + u * candidate, or u * h_prev + (1 - u) * candidate with
    ``origin_mode`` (the original paper's form)."""
    d = int(size)
    _input("dynamic_gru", input, 3, d)
    helper = LayerHelper("gru", param_attr=param_attr, bias_attr=bias_attr)
    w = helper.create_parameter(param_attr, [d, 3 * d], input.dtype)
    inputs = {"Input": [input], "Weight": [w]}
    if bias_attr is not False:
        inputs["Bias"] = [helper.create_parameter(bias_attr, [1, 3 * d], input.dtype, is_bias=True)]
    if h_0 is not None:
        inputs["H0"] = [h_0]
    hidden = helper.create_variable_for_type_inference(input.dtype)
    helper.append_op("gru", inputs, {"Hidden": [hidden]},
                     {"is_reverse": bool(is_reverse), "gate_activation": gate_activation,
                      "activation": candidate_activation, "origin_mode": bool(origin_mode)})
    return hidden


def _equal_lod(x: Variable, seq_len: int) -> Variable:
    helper = LayerHelper("equal_length_lod")
    out = helper.create_variable_for_type_inference(x.dtype)
    helper.append_op("equal_length_lod", {"X": [x]}, {"Out": [out]}, {"seq_len": int(seq_len)})
    return out


def _init_state(state: Variable, k: int, hidden: int) -> Variable:
    from .tensor import reshape, slice
    return reshape(slice(state, axes=[0], starts=[k], ends=[k + 1]), [-1, hidden])


def lstm(input: Variable, init_h: Variable, init_c: Variable, max_len: int, hidden_size: int, num_layers: int,
         dropout_prob: float = 0.0, is_bidirec: bool = False, is_test: bool = False, name: str | None = None,
         default_initializer: Any = None, seed: int = -1) -> tuple[Variable, Variable, Variable]:
    """fluid's cuDNN-style LSTM over a padded, time-major batch ``input`` [max_len, batch, D]
    (every sequence max_len long): ``num_layers`` stacked layers, both directions with
    ``is_bidirec``, dropout between layers.  ``init_h``/``init_c``: [num_layers * dirs, batch,
    hidden_size].  Returns (rnn_out [max_len, batch, hidden_size * dirs], last_h, last_c).

    Built from the gradient-checked ops (fc projection, the LoD ``lstm`` op without peepholes);
    its parameters are per layer and direction, not cuDNN's single flat weight."""
    from ..param_attr import ParamAttr
    from .conv import dropout
    from .nn import fc
    from .tensor import concat, reshape, slice, stack, transpose
    for arg, v in (("input", input), ("init_h", init_h), ("init_c", init_c)):
        need_var("lstm", arg, v)
    t, h = int(max_len), int(hidden_size)
    if len(input.shape) != 3 or input.shape[0] not in (t, -1):
        raise InvalidArgumentError(f"lstm: input '{input.name}' must be [max_len={t}, batch, D], got {list(input.shape)}")
    dirs = 2 if is_bidirec else 1
    attr = ParamAttr(initializer=default_initializer) if default_initializer is not None else None
    x = input
    last_h, last_c = [], []
    for layer in range(int(num_layers)):
        rows = _equal_lod(reshape(transpose(x, [1, 0, 2]), [-1, x.shape[2]]), t)  # [batch * T, D], batch-major
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            hidden, cell = dynamic_lstm(fc(rows, 4 * h, param_attr=attr), 4 * h, h_0=_init_state(init_h, k, h),
                                        c_0=_init_state(init_c, k, h), param_attr=attr, use_peepholes=False,
                                        is_reverse=bool(d))
            outs.append(reshape(hidden, [-1, t, h]))
            end = [0] if d else [t - 1]  # the reverse direction ends at the first step
            for seq, acc in ((hidden, last_h), (cell, last_c)):
                acc.append(reshape(slice(reshape(seq, [-1, t, h]), axes=[1], starts=end, ends=[end[0] + 1]), [-1, h]))
        y = transpose(concat(outs, axis=2) if dirs == 2 else outs[0], [1, 0, 2])  # back to [T, batch, h * dirs]
        if dropout_prob > 0 and layer + 1 < int(num_layers):
            y = dropout(y, dropout_prob, is_test=is_test, seed=None if seed == -1 else seed,
                        dropout_implementation="upscale_in_train")
        x = y
    return x, stack(last_h, axis=0), stack(last_c, axis=0)
