"""Weight decay: L2 (grad += coeff * param) and L1 (grad += coeff * sign(param)).

An optimizer's ``regularization`` applies to every parameter; a parameter's own
``ParamAttr(regularizer=...)`` overrides it.  Each decay is one ``weight_decay``
op writing a new gradient variable ``<grad>@REG``; for a SelectedRows gradient
only the touched rows are decayed (each once, after merging repeated rows).
"""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import InvalidArgumentError
from .framework import ROLE_OPTIMIZE, Block, Parameter, Variable, op_role_guard

__all__ = ["L1Decay", "L1DecayRegularizer", "L2Decay", "L2DecayRegularizer", "WeightDecayRegularizer",
           "append_regularization_ops"]


class WeightDecayRegularizer:
    """Base class: ``regularizer(param, grad, block)`` appends the decay op and returns the new grad."""

    mode = ""

    def __init__(self, regularization_coeff: float = 0.0) -> None:
        if isinstance(regularization_coeff, bool) or not isinstance(regularization_coeff, (int, float)):
            raise InvalidArgumentError(
                f"{type(self).__name__}: regularization_coeff must be a number, got {regularization_coeff!r}")
        if regularization_coeff < 0:
            raise InvalidArgumentError(
                f"{type(self).__name__}: regularization_coeff must be >= 0, got {regularization_coeff}")
        self._regularization_coeff = float(regularization_coeff)

    def __call__(self, param: Parameter, grad: Variable, block: Block) -> Variable:
        out = block.create_var(name=grad.name + "@REG", shape=grad.shape, dtype=grad.dtype,
                               type=grad.type, stop_gradient=True)
        block.append_op("weight_decay", {"Param": [param], "Grad": [grad]}, {"Out": [out]},
                        {"coeff": self._regularization_coeff, "mode": self.mode,
                         "op_role_var": [param.name, grad.name]})
        return out

    def __str__(self) -> str:
        return f"{type(self).__name__}(regularization_coeff={self._regularization_coeff})"

    __repr__ = __str__


class L2DecayRegularizer(WeightDecayRegularizer):
    """grad += regularization_coeff * param."""

    mode = "l2"


class L1DecayRegularizer(WeightDecayRegularizer):
    """grad += regularization_coeff * sign(param)."""

    mode = "l1"


L2Decay = L2DecayRegularizer
L1Decay = L1DecayRegularizer


def check_regularizer(reg: Any, where: str) -> None:
    if reg is not None and not isinstance(reg, WeightDecayRegularizer):
        raise InvalidArgumentError(
            f"{where}: regularization must be an L1Decay/L2Decay regularizer or None, got {reg!r}")


def append_regularization_ops(parameters_and_grads: Sequence[tuple[Parameter, Variable | None]],
                              regularization: WeightDecayRegularizer | None = None
                              ) -> list[tuple[Parameter, Variable | None]]:
    """Decay each gradient by its parameter's regularizer, else by ``regularization``.

    Returns the (param, grad) list with decayed gradients substituted.  The ops
    get ``op_role='optimize'`` and ``op_role_var=[param, grad]``.
    """
    check_regularizer(regularization, "append_regularization_ops")
    out = []
    for param, grad in parameters_and_grads:
        reg = getattr(param, "regularizer", None) or regularization
        if grad is None or reg is None:
            out.append((param, grad))
            continue
        check_regularizer(reg, f"parameter '{param.name}'")
        with op_role_guard(ROLE_OPTIMIZE):
            out.append((param, reg(param, grad, grad.block)))
    return out
