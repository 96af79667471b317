"""Gradient clipping, fluid 1.4 style: ``set_gradient_clip`` marks parameters
(``param.gradient_clip_attr``; ``ParamAttr(gradient_clip=...)`` does the same) and
the optimizer's ``minimize`` appends the clip ops before regularization.

- ``GradientClipByValue(max, min)``: elementwise clip of each gradient.
- ``GradientClipByNorm(clip_norm)``: each gradient scaled so its L2 norm <= clip_norm.
- ``GradientClipByGlobalNorm(clip_norm, group_name)``: every gradient of a group
  scaled by clip_norm / max(global_norm, clip_norm), global_norm over the group.

Each clipped gradient is a new variable ``<grad>@CLIP``.  SelectedRows gradients
are merged (repeated rows summed) before clipping.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

from ..errors import InvalidArgumentError
from .framework import ROLE_OPTIMIZE, Block, Parameter, Program, Variable, default_main_program, op_role_guard

__all__ = ["BaseGradientClipAttr", "GradientClipByValue", "GradientClipByNorm", "GradientClipByGlobalNorm",
           "set_gradient_clip", "append_gradient_clip_ops"]


def _positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InvalidArgumentError(f"{what} must be a positive number, got {value!r}")
    return float(value)


def _clip_out(block: Block, grad: Variable) -> Variable:
    return block.create_var(name=grad.name + "@CLIP", shape=grad.shape, dtype=grad.dtype, type=grad.type,
                            stop_gradient=True)


class BaseGradientClipAttr:
    """A clip rule for one parameter's gradient."""

    def _append_clip_op(self, block: Block, param: Parameter, grad: Variable) -> Variable:
        raise NotImplementedError


class GradientClipByValue(BaseGradientClipAttr):
    """Clip every gradient element into [min, max]; ``min`` defaults to ``-max``."""

    def __init__(self, max: float, min: float | None = None) -> None:
        for what, v in (("max", max), ("min", min)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise InvalidArgumentError(f"GradientClipByValue: {what} must be a number, got {v!r}")
        max = float(max)
        min = -max if min is None else float(min)
        if min >= max:
            raise InvalidArgumentError(f"GradientClipByValue: min ({min}) must be less than max ({max})")
        self.max, self.min = max, min

    def _append_clip_op(self, block: Block, param: Parameter, grad: Variable) -> Variable:
        out = _clip_out(block, grad)
        block.append_op("gradient_clip_by_value", {"X": [grad]}, {"Out": [out]},
                        {"min": self.min, "max": self.max, "op_role_var": [param.name, grad.name]})
        return out

    def __str__(self) -> str:
        return f"GradientClipByValue(min={self.min}, max={self.max})"


class GradientClipByNorm(BaseGradientClipAttr):
    """Scale each gradient so that its L2 norm is at most ``clip_norm``."""

    def __init__(self, clip_norm: float) -> None:
        self.clip_norm = _positive(clip_norm, "GradientClipByNorm: clip_norm")

    def _append_clip_op(self, block: Block, param: Parameter, grad: Variable) -> Variable:
        out = _clip_out(block, grad)
        block.append_op("gradient_clip_by_norm", {"X": [grad]}, {"Out": [out]},
                        {"max_norm": self.clip_norm, "op_role_var": [param.name, grad.name]})
        return out

    def __str__(self) -> str:
        return f"GradientClipByNorm(clip_norm={self.clip_norm})"


class GradientClipByGlobalNorm(BaseGradientClipAttr):
    """Scale all gradients of ``group_name`` by clip_norm / max(global_norm, clip_norm)."""

    def __init__(self, clip_norm: float, group_name: str = "default_group") -> None:
        self.clip_norm = _positive(clip_norm, "GradientClipByGlobalNorm: clip_norm")
        if not isinstance(group_name, str):
            raise InvalidArgumentError(f"GradientClipByGlobalNorm: group_name must be a str, got {group_name!r}")
        self.group_name = group_name

    def __str__(self) -> str:
        return f"GradientClipByGlobalNorm(clip_norm={self.clip_norm}, group_name={self.group_name!r})"


def set_gradient_clip(clip: BaseGradientClipAttr, param_list: Sequence[Any] | None = None,
                      program: Program | None = None) -> None:
    """Attach ``clip`` to the parameters in ``param_list`` (names or Parameters; default: all of
    ``program``).  The optimizer applies it in ``minimize``."""
    if not isinstance(clip, BaseGradientClipAttr):
        raise InvalidArgumentError(
            f"set_gradient_clip: clip must be a GradientClipByValue/ByNorm/ByGlobalNorm, got {clip!r}")
    program = default_main_program() if program is None else program
    if param_list is None:
        params = program.all_parameters()
    else:
        block = program.global_block()
        params = []
        for p in param_list:
            v = block.var(p) if isinstance(p, str) else p
            if not isinstance(v, Parameter):
                raise InvalidArgumentError(f"set_gradient_clip: '{getattr(v, 'name', v)}' is not a parameter")
            params.append(v)
    for p in params:
        p.gradient_clip_attr = copy.deepcopy(clip)


def append_gradient_clip_ops(params_grads: Sequence[tuple[Parameter, Variable | None]]
                             ) -> list[tuple[Parameter, Variable | None]]:
    """Clip each gradient by its parameter's ``gradient_clip_attr``; return the new pairs.

    Global-norm groups get one op each (inputs: every gradient of the group).
    The ops get ``op_role='optimize'`` and ``op_role_var=[param, grad, ...]``.
    """
    out = list(params_grads)
    groups: dict[str, list[int]] = {}
    norms: dict[str, float] = {}
    with op_role_guard(ROLE_OPTIMIZE):
        for i, (p, g) in enumerate(params_grads):
            clip = getattr(p, "gradient_clip_attr", None)
            if g is None or clip is None:
                continue
            if not isinstance(clip, BaseGradientClipAttr):
                raise InvalidArgumentError(f"parameter '{p.name}': gradient_clip {clip!r} is not a clip attribute")
            if isinstance(clip, GradientClipByGlobalNorm):
                if norms.setdefault(clip.group_name, clip.clip_norm) != clip.clip_norm:
                    raise InvalidArgumentError(
                        f"GradientClipByGlobalNorm: parameters of group '{clip.group_name}' have different "
                        f"clip_norm values ({norms[clip.group_name]} and {clip.clip_norm} for '{p.name}')")
                groups.setdefault(clip.group_name, []).append(i)
            else:
                out[i] = (p, clip._append_clip_op(g.block, p, g))
        for name, idxs in groups.items():
            pairs = [params_grads[i] for i in idxs]
            block = pairs[0][1].block
            outs = [_clip_out(block, g) for _, g in pairs]
            block.append_op("gradient_clip_by_global_norm", {"X": [g for _, g in pairs]}, {"Out": outs},
                            {"clip_norm": norms[name],
                             "op_role_var": [n for p, g in pairs for n in (p.name, g.name)]})
            for i, o in zip(idxs, outs):
                out[i] = (params_grads[i][0], o)
    return out
