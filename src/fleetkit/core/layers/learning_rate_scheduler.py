"""Learning-rate schedules (fluid 1.4 names).  Each returns a float32 [1] Variable to
pass as an optimizer's ``learning_rate``.

All schedules read one global step counter, ``@LR_DECAY_COUNTER@``: a
persistable float32 [1] variable set to ``begin - 1`` by the startup program and
incremented by an ``increment`` op placed first in the main program, so the
first run sees step ``begin`` (0, or 1 for ``noam_decay``).  The rate itself is
one ``lr_schedule`` op computing the formula from the step.  Both ops have
``op_role='lrsched'``.  (float32 counts exactly up to 2**24 steps.)
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from ...errors import InvalidArgumentError
from ..framework import ROLE_LRSCHED, Variable, default_main_program, default_startup_program, op_role_guard
from ..layer_helper import LayerHelper

__all__ = ["exponential_decay", "natural_exp_decay", "inverse_time_decay", "polynomial_decay",
           "piecewise_decay", "noam_decay", "cosine_decay", "linear_lr_warmup"]

LR_DECAY_COUNTER = "@LR_DECAY_COUNTER@"


def _num(value: Any, what: str, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise InvalidArgumentError(f"{what} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise InvalidArgumentError(f"{what} must be > 0, got {value!r}")
    if nonneg and value < 0:
        raise InvalidArgumentError(f"{what} must be >= 0, got {value!r}")
    return float(value)


def _decay_step_counter(begin: int = 0) -> Variable:
    """The global step counter of the main program (created on first use)."""
    block = default_main_program().global_block()
    if block.has_var(LR_DECAY_COUNTER):
        return block.var(LR_DECAY_COUNTER)
    counter = block.create_var(name=LR_DECAY_COUNTER, shape=[1], dtype="float32", persistable=True,
                               stop_gradient=True)
    sblock = default_startup_program().global_block()
    sblock.create_var(name=LR_DECAY_COUNTER, shape=[1], dtype="float32", persistable=True)
    sblock.append_op("fill_constant", {}, {"Out": [LR_DECAY_COUNTER]},
                     {"shape": [1], "dtype": "float32", "value": float(begin - 1)})
    with op_role_guard(ROLE_LRSCHED):
        block._prepend_op("increment", {"X": [counter]}, {"Out": [counter]}, {"step": 1.0})
    return counter


def _schedule(kind: str, learning_rate: Any, begin: int = 0, **attrs: Any) -> Variable:
    """Append the ``lr_schedule`` op of ``kind``; ``learning_rate`` is a float or a Variable."""
    inputs: dict[str, list[Variable]] = {}
    if isinstance(learning_rate, Variable):
        inputs["LearningRate"] = [learning_rate]
    else:
        attrs["learning_rate"] = _num(learning_rate, f"{kind} decay: learning_rate", nonneg=True)
    with op_role_guard(ROLE_LRSCHED):
        inputs["Step"] = [_decay_step_counter(begin)]
        helper = LayerHelper(f"{kind}_decay")
        out = helper.create_variable_for_type_inference("float32", stop_gradient=True)
        helper.append_op("lr_schedule", inputs, {"Out": [out]}, {"kind": kind, **attrs})
    return out


def exponential_decay(learning_rate: float | Variable, decay_steps: int, decay_rate: float,
                      staircase: bool = False) -> Variable:
    """lr * decay_rate ^ (step / decay_steps)  (exponent floored when ``staircase``)."""
    return _schedule("exponential", learning_rate, decay_steps=_num(decay_steps, "decay_steps", positive=True),
                     decay_rate=_num(decay_rate, "decay_rate"), staircase=bool(staircase))


def natural_exp_decay(learning_rate: float | Variable, decay_steps: int, decay_rate: float,
                      staircase: bool = False) -> Variable:
    """lr * exp(-decay_rate * step / decay_steps)  (ratio floored when ``staircase``)."""
    return _schedule("natural_exp", learning_rate, decay_steps=_num(decay_steps, "decay_steps", positive=True),
                     decay_rate=_num(decay_rate, "decay_rate"), staircase=bool(staircase))


def inverse_time_decay(learning_rate: float | Variable, decay_steps: int, decay_rate: float,
                       staircase: bool = False) -> Variable:
    """lr / (1 + decay_rate * step / decay_steps)  (ratio floored when ``staircase``)."""
    return _schedule("inverse_time", learning_rate, decay_steps=_num(decay_steps, "decay_steps", positive=True),
                     decay_rate=_num(decay_rate, "decay_rate"), staircase=bool(staircase))


def polynomial_decay(learning_rate: float | Variable, decay_steps: int, end_learning_rate: float = 0.0001,
                     power: float = 1.0, cycle: bool = False) -> Variable:
    """(lr - end) * (1 - step / decay_steps) ^ power + end, with step capped at decay_steps,
    or (``cycle``) decay_steps stretched to the next multiple of itself above step."""
    return _schedule("polynomial", learning_rate, decay_steps=_num(decay_steps, "decay_steps", positive=True),
                     end_learning_rate=_num(end_learning_rate, "end_learning_rate"),
                     power=_num(power, "power"), cycle=bool(cycle))


def piecewise_decay(boundaries: Sequence[float], values: Sequence[float]) -> Variable:
    """values[i] while step < boundaries[i]; values[-1] after the last boundary."""
    bounds = [_num(b, "piecewise_decay: boundary") for b in boundaries]
    vals = [_num(v, "piecewise_decay: value") for v in values]
    if len(vals) != len(bounds) + 1:
        raise InvalidArgumentError(
            f"piecewise_decay: needs len(values) == len(boundaries) + 1, got {len(vals)} values for "
            f"{len(bounds)} boundaries")
    if any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise InvalidArgumentError(f"piecewise_decay: boundaries must be increasing, got {list(boundaries)}")
    return _schedule("piecewise", 1.0, boundaries=bounds, values=vals)


def noam_decay(d_model: float, warmup_steps: int, learning_rate: float | Variable = 1.0) -> Variable:
    """lr * d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)  (steps counted from 1)."""
    return _schedule("noam", learning_rate, begin=1, d_model=_num(d_model, "noam_decay: d_model", positive=True),
                     warmup_steps=_num(warmup_steps, "noam_decay: warmup_steps", positive=True))


def cosine_decay(learning_rate: float | Variable, step_each_epoch: int, epochs: int) -> Variable:
    """lr * 0.5 * (cos(floor(step / step_each_epoch) * pi / epochs) + 1)."""
    return _schedule("cosine", learning_rate,
                     step_each_epoch=_num(step_each_epoch, "cosine_decay: step_each_epoch", positive=True),
                     epochs=_num(epochs, "cosine_decay: epochs", positive=True))


def linear_lr_warmup(learning_rate: float | Variable, warmup_steps: int, start_lr: float,
                     end_lr: float) -> Variable:
    """start_lr + (end_lr - start_lr) * step / warmup_steps while step < warmup_steps,
    then ``learning_rate`` (a float or another schedule's Variable)."""
    return _schedule("linear_warmup", learning_rate,
                     warmup_steps=_num(warmup_steps, "linear_lr_warmup: warmup_steps", positive=True),
                     start_lr=_num(start_lr, "linear_lr_warmup: start_lr"),
                     end_lr=_num(end_lr, "linear_lr_warmup: end_lr"))
