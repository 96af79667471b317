"""The ``lr_schedule`` op behind ``layers.learning_rate_scheduler``: the learning rate of
each fluid 1.4 schedule at the global step, computed on the device in float64."""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from ..registry import KernelContext, ShapeContext, register_op


# ------------------------------------------------------- learning-rate schedules
LR_SCHEDULES = ("exponential", "natural_exp", "inverse_time", "polynomial", "piecewise", "noam",
                "cosine", "linear_warmup")


def _lr_infer(ctx: ShapeContext) -> None:
    if ctx.attr("kind") not in LR_SCHEDULES:
        raise ctx.fail(f"unknown schedule kind {ctx.attr('kind')!r}; expected one of {LR_SCHEDULES}")
    dtype = ctx.dtype("LearningRate") if ctx.has("LearningRate") else "float32"
    ctx.set("Out", (1,), dtype)


def _decay_div(xp: Any, s: Any, a: dict) -> Any:
    div = s / a["decay_steps"]
    return xp.floor(div) if a["staircase"] else div


def _polynomial(xp: Any, s: Any, base: Any, a: dict) -> Any:
    steps, end = float(a["decay_steps"]), a["end_learning_rate"]
    if a["cycle"]:
        div = xp.ceil(s / steps)
        steps = steps * xp.where(s == 0, 1.0, div)
    else:
        s = xp.minimum(s, steps)
    return (base - end) * (1 - s / steps) ** a["power"] + end


def _piecewise(xp: Any, s: Any, a: dict) -> Any:
    bounds = xp.asarray(np.asarray(a["boundaries"], dtype=np.float64))
    values = xp.asarray(np.asarray(a["values"], dtype=np.float64))
    return values[(s >= bounds).sum()]  # values[i] while step < boundaries[i]


def _noam(xp: Any, s: Any, base: Any, a: dict) -> Any:
    w = float(a["warmup_steps"])
    s_pos = xp.where(s > 0, s, 1.0)  # step 0 (a counter shared with a 0-based schedule) gives 0
    return base * a["d_model"] ** -0.5 * xp.minimum(s_pos ** -0.5, s * w ** -1.5)


def _cosine(xp: Any, s: Any, base: Any, a: dict) -> Any:
    epoch = xp.floor(s / a["step_each_epoch"])
    return base * 0.5 * (xp.cos(epoch * math.pi / a["epochs"]) + 1)


def _warmup(xp: Any, s: Any, base: Any, a: dict) -> Any:
    w, lo, hi = float(a["warmup_steps"]), a["start_lr"], a["end_lr"]
    return xp.where(s < w, lo + (hi - lo) * s / w, base)


_SCHEDULE_FNS: dict[str, Callable[[Any, Any, Any, dict], Any]] = {
    "exponential": lambda xp, s, b, a: b * a["decay_rate"] ** _decay_div(xp, s, a),
    "natural_exp": lambda xp, s, b, a: b * xp.exp(-a["decay_rate"] * _decay_div(xp, s, a)),
    "inverse_time": lambda xp, s, b, a: b / (1 + a["decay_rate"] * _decay_div(xp, s, a)),
    "polynomial": _polynomial,
    "piecewise": lambda xp, s, b, a: _piecewise(xp, s, a),
    "noam": _noam,
    "cosine": _cosine,
    "linear_warmup": _warmup,
}


@register_op("lr_schedule", _lr_infer, no_grad_inputs=("Step", "LearningRate"),
             attrs={"kind": "exponential", "learning_rate": 1.0, "decay_steps": 1, "decay_rate": 1.0,
                    "staircase": False, "end_learning_rate": 1e-4, "power": 1.0, "cycle": False,
                    "boundaries": [], "values": [], "d_model": 1.0, "warmup_steps": 1,
                    "step_each_epoch": 1, "epochs": 1, "start_lr": 0.0, "end_lr": 0.0})
def lr_schedule(ctx: KernelContext) -> None:
    """Out = the learning rate of schedule ``kind`` at step ``Step``.

    The base rate is the ``LearningRate`` input when given (a schedule of a
    schedule), else the ``learning_rate`` attribute.  Computed in float64.
    """
    xp, a = ctx.xp, ctx.attrs
    s = ctx.x("Step").reshape(()).astype(np.float64)
    base_in = ctx.x("LearningRate")
    base = base_in.reshape(()).astype(np.float64) if base_in is not None else a["learning_rate"]
    out = _SCHEDULE_FNS[a["kind"]](xp, s, base, a)
    dtype = base_in.dtype if base_in is not None else np.float32
    ctx.out("Out", xp.asarray(out, dtype=dtype).reshape(1))
