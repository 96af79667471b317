"""Optimizers with fluid 1.4 names: ``SGD``, ``Momentum``, ``Adagrad``, ``Adam``, ``Adamax``,
``DecayedAdagrad``, ``RMSProp``, ``Adadelta``, ``Ftrl``, ``LarsMomentum`` (and their
``*Optimizer`` aliases), and ``ModelAverage``.

``minimize(loss)`` appends the backward pass, gradient clipping, regularization
(this order, as fluid 1.4) and one update op per parameter, and returns
``(optimize_ops, params_grads)``.

- The learning rate is a persistable float32 [1] variable (``learning_rate_0``...)
  created in the main program and filled in the startup program, or the Variable
  passed in (a schedule from ``layers.learning_rate_scheduler``).  A parameter's
  ``ParamAttr(learning_rate=x)`` multiplies it through a ``scale`` op.
- Accumulators (``<param>_<acc>_<n>``, e.g. ``fc_0.w_0_moment1_0``) are persistable
  variables shaped like the parameter, initialized in the startup program.
- Clip, decay and update ops get ``op_role='optimize'`` and
  ``op_role_var=[param, grad]`` so transpilers can find them.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import InvalidArgumentError, NotFoundError
from . import unique_name
from .backward import append_backward
from .clip import append_gradient_clip_ops
from .framework import (ROLE_LRSCHED, ROLE_OPTIMIZE, Block, Operator, Parameter, Program, Variable,
                        default_main_program, default_startup_program, op_role_guard, program_guard)
from .regularizer import append_regularization_ops, check_regularizer

__all__ = ["SGD", "Momentum", "Adagrad", "Adam", "Adamax", "DecayedAdagrad", "RMSProp", "Adadelta", "Ftrl",
           "LarsMomentum", "LarsMomentumOptimizer", "ModelAverage",
           "SGDOptimizer", "MomentumOptimizer", "AdagradOptimizer", "AdamOptimizer", "AdamaxOptimizer",
           "DecayedAdagradOptimizer", "RMSPropOptimizer", "AdadeltaOptimizer", "FtrlOptimizer", "Optimizer"]

ParamsGrads = list[tuple[Parameter, Variable | None]]


def checked_number(value: Any, what: str, lo: float | None = None, hi: float | None = None,
                   lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a float, checked against [lo, hi] (open ends where asked)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise InvalidArgumentError(f"{what} must be a number, got {value!r}")
    v = float(value)
    bad = not math.isfinite(v)
    bad |= lo is not None and (v <= lo if lo_open else v < lo)
    bad |= hi is not None and (v >= hi if hi_open else v > hi)
    if bad:
        rng = (f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, "
               f"{'inf' if hi is None else hi}{')' if hi_open else ']'}")
        raise InvalidArgumentError(f"{what} must be in {rng}, got {value!r}")
    return v


class Optimizer:
    """Base class.  Subclasses set ``type`` and implement ``_create_accumulators`` and
    ``_append_optimize_op``."""

    type = ""

    def __init__(self, learning_rate: float | Variable, regularization: Any = None,
                 name: str | None = None) -> None:
        cls = type(self).__name__
        if isinstance(learning_rate, Variable):
            if np.dtype(learning_rate.dtype).kind != "f":
                raise InvalidArgumentError(
                    f"{cls}: learning_rate Variable '{learning_rate.name}' must be floating point, "
                    f"got {learning_rate.dtype}")
        else:
            learning_rate = checked_number(learning_rate, f"{cls}: learning_rate", lo=0.0)
        check_regularizer(regularization, cls)
        self._learning_rate = learning_rate
        self.regularization = regularization
        self._name = name
        self._learning_rate_map: dict[Program, Variable] = {}
        self._accumulators: dict[str, dict[str, Variable]] = defaultdict(dict)

    # ------------------------------------------------------------ learning rate
    def _create_global_learning_rate(self, program: Program) -> Variable:
        lr = self._learning_rate_map.get(program)
        if lr is not None:
            return lr
        if isinstance(self._learning_rate, Variable):
            lr = self._learning_rate
            if lr.block.program is not program:
                raise InvalidArgumentError(
                    f"{type(self).__name__}: learning_rate Variable '{lr.name}' belongs to another program "
                    f"than the loss; build the schedule under the same program_guard")
        else:
            name = unique_name.generate("learning_rate")
            lr = program.global_block().create_var(name=name, shape=[1], dtype="float32", persistable=True,
                                                   stop_gradient=True)
            sblock = default_startup_program().global_block()
            sblock.create_var(name=name, shape=[1], dtype="float32", persistable=True)
            sblock.append_op("fill_constant", {}, {"Out": [name]},
                             {"shape": [1], "dtype": "float32", "value": float(self._learning_rate)})
        self._learning_rate_map[program] = lr
        return lr

    def _global_learning_rate(self, program: Program | None = None) -> Variable | None:
        return self._learning_rate_map.get(default_main_program() if program is None else program)

    global_learning_rate = _global_learning_rate

    def _create_param_lr(self, block: Block, param_and_grad: tuple[Parameter, Variable]) -> Variable:
        """The global learning rate, times ``ParamAttr(learning_rate=...)`` when that is not 1."""
        param, grad = param_and_grad
        lr = self._create_global_learning_rate(block.program)
        factor = float((getattr(param, "optimize_attr", None) or {}).get("learning_rate", 1.0))
        if factor == 1.0:
            return lr
        out = block.create_var(name=unique_name.generate(f"{param.name}_learning_rate"), shape=[1],
                               dtype=lr.dtype, stop_gradient=True)
        with op_role_guard(ROLE_LRSCHED):
            block.append_op("scale", {"X": [lr]}, {"Out": [out]},
                            {"scale": factor, "bias": 0.0, "op_role_var": [param.name, grad.name]})
        return out

    # ------------------------------------------------------------ accumulators
    def _add_accumulator(self, name: str, param: Parameter, dtype: Any = None, fill_value: float = 0.0,
                         shape: Sequence[int] | None = None) -> Variable:
        """A persistable var for ``param`` (main program), filled with ``fill_value`` in startup."""
        if param.name in self._accumulators[name]:
            raise InvalidArgumentError(
                f"{type(self).__name__}: accumulator '{name}' already exists for parameter '{param.name}'")
        shape = list(param.shape if shape is None else shape)
        dtype = param.dtype if dtype is None else dtype
        vname = unique_name.generate(f"{param.name}_{name}")
        var = param.block.program.global_block().create_var(
            name=vname, shape=shape, dtype=dtype, persistable=True, stop_gradient=True)
        sblock = default_startup_program().global_block()
        sblock.create_var(name=vname, shape=shape, dtype=dtype, persistable=True)
        sblock.append_op("fill_constant", {}, {"Out": [vname]},
                         {"shape": shape, "dtype": var.dtype, "value": float(fill_value)})
        self._accumulators[name][param.name] = var
        return var

    def _get_accumulator(self, name: str, param: Parameter) -> Variable:
        try:
            return self._accumulators[name][param.name]
        except KeyError:
            raise NotFoundError(
                f"{type(self).__name__}: no accumulator '{name}' for parameter '{param.name}'") from None

    def get_opti_var_name_list(self) -> list[str]:
        """Names of the accumulator variables this optimizer created (fluid 1.4)."""
        return [v.name for per_param in self._accumulators.values() for v in per_param.values()]

    def _create_accumulators(self, block: Block, parameters: list[Parameter]) -> None:
        """Add the accumulators of every parameter (none for plain SGD)."""

    # ------------------------------------------------------------ update ops
    def _update_op(self, block: Block, param_and_grad: tuple[Parameter, Variable],
                   accs: dict[str, str], attrs: dict | None = None, with_lr: bool = True) -> Operator:
        """Append ``self.type`` updating the parameter and the accumulators in place.

        ``accs`` maps an op slot (``Moment1``) to an accumulator name (``moment1``).
        """
        param, grad = param_and_grad
        inputs: dict[str, list[Any]] = {"Param": [param], "Grad": [grad]}
        outputs: dict[str, list[Any]] = {"ParamOut": [param]}
        if with_lr:
            inputs["LearningRate"] = [self._create_param_lr(block, param_and_grad)]
        for slot, acc in accs.items():
            var = self._get_accumulator(acc, param)
            inputs[slot] = [var]
            outputs[slot + "Out"] = [var]
        return block.append_op(self.type, inputs, outputs, dict(attrs or {}))

    def _append_optimize_op(self, block: Block, param_and_grad: tuple[Parameter, Variable]) -> Operator:
        raise NotImplementedError

    def _finish_update(self, block: Block, parameters_and_grads: ParamsGrads) -> None:
        """Ops to run after every parameter's update (none here: beta powers advance inside adam)."""

    def _create_optimization_pass(self, parameters_and_grads: ParamsGrads) -> list[Operator]:
        pgs = [(p, g) for p, g in parameters_and_grads if g is not None and getattr(p, "trainable", True)]
        if not pgs:
            return []
        program = pgs[0][0].block.program
        block = program.global_block()
        start = len(block.ops)
        self._create_global_learning_rate(program)
        self._create_accumulators(block, [p for p, _ in pgs])
        for p, g in pgs:
            with op_role_guard(ROLE_OPTIMIZE):
                op = self._append_optimize_op(block, (p, g))
            op.attrs["op_role_var"] = [p.name, g.name]
        with op_role_guard(ROLE_OPTIMIZE):
            self._finish_update(block, pgs)
        return block.ops[start:]

    # ------------------------------------------------------------ public API
    def backward(self, loss: Variable, startup_program: Program | None = None,
                 parameter_list: Sequence[Any] | None = None, no_grad_set: Iterable[Any] | None = None,
                 callbacks: Any = None) -> ParamsGrads:
        """Append the backward pass of ``loss``; return [(param, grad)]."""
        self._check_loss(loss)
        return append_backward(loss, parameter_list, no_grad_set, callbacks)

    def apply_gradients(self, params_grads: ParamsGrads) -> list[Operator]:
        """Clip, regularize and update; return the ops appended."""
        params_grads = sorted(params_grads, key=lambda pg: pg[0].name)
        if not any(g is not None for _, g in params_grads):
            return []
        block = params_grads[0][0].block.program.global_block()
        start = len(block.ops)
        params_grads = append_gradient_clip_ops(params_grads)
        params_grads = append_regularization_ops(params_grads, self.regularization)
        self._create_optimization_pass(params_grads)
        return block.ops[start:]

    def apply_optimize(self, loss: Variable, startup_program: Program | None,
                       params_grads: ParamsGrads) -> list[Operator]:
        """``apply_gradients`` into ``loss``'s program (and ``startup_program``)."""
        self._check_loss(loss)
        with program_guard(loss.block.program, startup_program):
            return self.apply_gradients(params_grads)

    def minimize(self, loss: Variable, startup_program: Program | None = None,
                 parameter_list: Sequence[Any] | None = None,
                 no_grad_set: Iterable[Any] | None = None) -> tuple[list[Operator], ParamsGrads]:
        """Append backward and update ops minimizing ``loss``.

        Returns ``(optimize_ops, params_grads)``: the ops appended after the
        backward pass (clip, decay, learning-rate scaling and update ops) and the
        (parameter, gradient) pairs from the backward pass.
        """
        params_grads = self.backward(loss, startup_program, parameter_list, no_grad_set)
        optimize_ops = self.apply_optimize(loss, startup_program, params_grads)
        return optimize_ops, params_grads

    def _check_loss(self, loss: Any) -> None:
        if not isinstance(loss, Variable):
            raise InvalidArgumentError(
                f"{type(self).__name__}.minimize: loss must be a Variable (e.g. layers.mean(...)), "
                f"got {type(loss).__name__}")


class SGDOptimizer(Optimizer):
    """param -= lr * grad."""

    type = "sgd"

    def _append_optimize_op(self, block: Block, param_and_grad: tuple[Parameter, Variable]) -> Operator:
        return self._update_op(block, param_and_grad, {})


class MomentumOptimizer(Optimizer):
    """velocity = momentum * velocity + grad; param -= lr * velocity
    (Nesterov: param -= lr * (grad + momentum * velocity))."""

    type = "momentum"

    def __init__(self, learning_rate: float | Variable, momentum: float, use_nesterov: bool = False,
                 regularization: Any = None, name: str | None = None) -> None:
        super().__init__(learning_rate, regularization, name)
        self._momentum = checked_number(momentum, "Momentum: momentum", lo=0.0)
        self._use_nesterov = bool(use_nesterov)

    def _create_accumulators(self, block: Block, parameters: list[Parameter]) -> None:
        for p in parameters:
            self._add_accumulator("velocity", p)

    def _append_optimize_op(self, block: Block, param_and_grad: tuple[Parameter, Variable]) -> Operator:
        return self._update_op(block, param_and_grad, {"Velocity": "velocity"},
                               {"mu": self._momentum, "use_nesterov": self._use_nesterov})


class LarsMomentumOptimizer(Optimizer):
    """Momentum with a layer-wise learning rate (LARS):
    local_lr = lr * lars_coeff * |param| / (|grad| + lars_weight_decay * |param|);
    velocity = momentum * velocity + local_lr * (grad + lars_weight_decay * param); param -= velocity."""

    type = "lars_momentum"

    def __init__(self, learning_rate: float | Variable, momentum: float, lars_coeff: float = 0.001,
                 lars_weight_decay: float = 0.0005, regularization: Any = None, name: str | None = None) -> None:
        super().__init__(learning_rate, regularization, name)
        self._momentum = checked_number(momentum, "LarsMomentum: momentum", lo=0.0)
        self._lars_coeff = checked_number(lars_coeff, "LarsMomentum: lars_coeff", lo=0.0)
        self._lars_weight_decay = checked_number(lars_weight_decay, "LarsMomentum: lars_weight_decay", lo=0.0)

    def _create_accumulators(self, block: Block, parameters: list[Parameter]) -> None:
        for p in parameters:
            self._add_accumulator("velocity", p)

    def _append_optimize_op(self, block: Block, param_and_grad: tuple[Parameter, Variable]) -> Operator:
        return self._update_op(block, param_and_grad, {"Velocity": "velocity"},
                               {"mu": self._momentum, "lars_coeff": self._lars_coeff,
                                "lars_weight_decay": self._lars_weight_decay})


class AdagradOptimizer(Optimizer):
    """moment += grad^2; param -= lr * grad / (sqrt(moment) + epsilon)."""

    type = "adagrad"

    def __init__(self, learning_rate: float | Variable, epsilon: float = 1.0e-6, regularization: Any = None,
                 name: str | None = None, initial_accumulator_value: float = 0.0) -> None:
        super().__init__(learning_rate, regularization, name)
        self._epsilon = checked_number(epsilon, "Adagrad: epsilon", lo=0.0)
        self._initial = checked_number(initial_accumulator_value, "Adagrad: initial_accumulator_value", lo=0.0)

    def _create_accumulators(self, block: Block, parameters: list[Parameter]) -> None:
        for p in parameters:
            self._add_accumulator("moment", p, fill_value=self._initial)

    def _append_optimize_op(self, block: Block, param_and_grad: tuple[Parameter, Variable]) -> Operator:
        return self._update_op(block, param_and_grad, {"Moment": "moment"}, {"epsilon": self._epsilon})


class AdamOptimizer(Optimizer):
    """Adam (fluid 1.4 form): lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t);
    param -= lr_t * m1 / (sqrt(m2) + epsilon).  ``lazy_mode`` updates only the rows
    of a sparse gradient; otherwise untouched rows see a zero gradient."""

    type = "adam"

    def __init__(self, learning_rate: float | Variable = 0.001, beta1: float = 0.9, beta2: float = 0.999,
                 epsilon: float = 1e-8, regularization: Any = None, name: str | None = None,
                 lazy_mode: bool = False) -> None:
        super().__init__(learning_rate, regularization, name)
        self._beta1 = checked_number(beta1, "Adam: beta1", lo=0.0, hi=1.0, hi_open=True)
        self._beta2 = checked_number(beta2, "Adam: beta2", lo=0.0, hi=1.0, hi_open=True)
        self._epsilon = checked_number(epsilon, "Adam: epsilon", lo=0.0)
        self._lazy_mode = bool(lazy_mode)

    def _create_accumulators(self, block: Block, parameters: list[Parameter]) -> None:
        for p in parameters:
            self._add_accumulator("moment1", p)
            self._add_accumulator("moment2", p)
            self._add_accumulator("beta1_pow_acc", p, fill_value=self._beta1, shape=[1])
            self._add_accumulator("beta2_pow_acc", p, fill_value=self._beta2, shape=[1])

    def _append_optimize_op(self, block: Block, param_and_grad: tuple[Parameter, Variable]) -> Operator:
        return self._update_op(
            block, param_and_grad, {"Moment1": "moment1", "Moment2": "moment2", "Beta1Pow": "beta1_pow_acc",
                                    "Beta2Pow": "beta2_pow_acc"},
            {"beta1": self._beta1, "beta2": self._beta2, "epsilon": self._epsilon, "lazy_mode": self._lazy_mode})


class AdamaxOptimizer(Optimizer):
    """moment = b1*moment + (1-b1)*g; inf_norm = max(b2*inf_norm + eps, |g|);
    param -= lr / (1 - beta1^t) * moment / inf_norm."""

    type = "adamax"

    def __init__(self, learning_rate: float | Variable = 0.001, beta1: float = 0.9, beta2: float = 0.999,
                 epsilon: float = 1e-8, regularization: Any = None, name: str | None = None) -> None:
        super().__init__(learning_rate, regularization, name)
        self._beta1 = checked_number(beta1, "Adamax: beta1", lo=0.0, hi=1.0, hi_open=True)
        self._beta2 = checked_number(beta2, "Adamax: beta2", lo=0.0, hi=1.0, hi_open=True)
        self._epsilon = checked_number(epsilon, "Adamax: epsilon", lo=0.0)

    def _create_accumulators(self, block: Block, parameters: list[Parameter]) -> None:
        for p in parameters:
            self._add_accumulator("moment", p)
            self._add_accumulator("inf_norm", p)
            self._add_accumulator("beta1_pow_acc", p, fill_value=self._beta1, shape=[1])

    def _append_optimize_op(self, block: Block, param_and_grad: tuple[Parameter, Variable]) -> Operator:
        return self._update_op(block, param_and_grad,
                               {"Moment": "moment", "InfNorm": "inf_norm", "Beta1Pow": "beta1_pow_acc"},
                               {"beta1": self._beta1, "beta2": self._beta2, "epsilon": self._epsilon})


class DecayedAdagradOptimizer(Optimizer):
    """moment = decay*moment + (1-decay)*g^2; param -= lr * g / (sqrt(moment) + epsilon)."""

    type = "decayed_adagrad"

    def __init__(self, learning_rate: float | Variable, decay: float = 0.95, epsilon: float = 1.0e-6,
                 regularization: Any = None, name: str | None = None) -> None:
        super().__init__(learning_rate, regularization, name)
        self._decay = checked_number(decay, "DecayedAdagrad: decay", lo=0.0, hi=1.0)
        self._epsilon = checked_number(epsilon, "DecayedAdagrad: epsilon", lo=0.0)

    def _create_accumulators(self, block: Block, parameters: list[Parameter]) -> None:
        for p in parameters:
            self._add_accumulator("moment", p)

    def _append_optimize_op(self, block: Block, param_and_grad: tuple[Parameter, Variable]) -> Operator:
        return self._update_op(block, param_and_grad, {"Moment": "moment"},
                               {"decay": self._decay, "epsilon": self._epsilon})


class RMSPropOptimizer(Optimizer):
    """mean_square = rho*ms + (1-rho)*g^2; moment = momentum*moment + lr*g/sqrt(ms + eps)
    (centered: sqrt(ms - mean_grad^2 + eps)); param -= moment."""

    type = "rmsprop"

    def __init__(self, learning_rate: float | Variable, rho: float = 0.95, epsilon: float = 1.0e-6,
                 momentum: float = 0.0, centered: bool = False, regularization: Any = None,
                 name: str | None = None) -> None:
        super().__init__(learning_rate, regularization, name)
        self._rho = checked_number(rho, "RMSProp: rho", lo=0.0, hi=1.0)
        self._epsilon = checked_number(epsilon, "RMSProp: epsilon", lo=0.0)
        self._momentum = checked_number(momentum, "RMSProp: momentum", lo=0.0)
        self._centered = bool(centered)

    def _create_accumulators(self, block: Block, parameters: list[Parameter]) -> None:
        for p in parameters:
            self._add_accumulator("momentum", p)
            self._add_accumulator("mean_square", p)
            if self._centered:
                self._add_accumulator("mean_grad", p)

    def _append_optimize_op(self, block: Block, param_and_grad: tuple[Parameter, Variable]) -> Operator:
        accs = {"Moment": "momentum", "MeanSquare": "mean_square"}
        if self._centered:
            accs["MeanGrad"] = "mean_grad"
        return self._update_op(block, param_and_grad, accs,
                               {"decay": self._rho, "epsilon": self._epsilon, "momentum": self._momentum,
                                "centered": self._centered})


class AdadeltaOptimizer(Optimizer):
    """Adadelta (the learning rate is not used by the update, as in fluid)."""

    type = "adadelta"

    def __init__(self, learning_rate: float | Variable, epsilon: float = 1.0e-6, rho: float = 0.95,
                 regularization: Any = None, name: str | None = None) -> None:
        super().__init__(learning_rate, regularization, name)
        self._epsilon = checked_number(epsilon, "Adadelta: epsilon", lo=0.0)
        self._rho = checked_number(rho, "Adadelta: rho", lo=0.0, hi=1.0)

    def _create_accumulators(self, block: Block, parameters: list[Parameter]) -> None:
        for p in parameters:
            self._add_accumulator("_avg_squared_grad", p)
            self._add_accumulator("_avg_squared_update", p)

    def _append_optimize_op(self, block: Block, param_and_grad: tuple[Parameter, Variable]) -> Operator:
        return self._update_op(block, param_and_grad, {"AvgSquaredGrad": "_avg_squared_grad",
                                                       "AvgSquaredUpdate": "_avg_squared_update"},
                               {"rho": self._rho, "epsilon": self._epsilon}, with_lr=False)


class FtrlOptimizer(Optimizer):
    """FTRL-Proximal with l1/l2 regularization and a learning-rate power (sparse rows only)."""

    type = "ftrl"

    def __init__(self, learning_rate: float | Variable, l1: float = 0.0, l2: float = 0.0,
                 lr_power: float = -0.5, regularization: Any = None, name: str | None = None) -> None:
        super().__init__(learning_rate, regularization, name)
        self._l1 = checked_number(l1, "Ftrl: l1", lo=0.0)
        self._l2 = checked_number(l2, "Ftrl: l2", lo=0.0)
        self._lr_power = checked_number(lr_power, "Ftrl: lr_power", hi=0.0)

    def _create_accumulators(self, block: Block, parameters: list[Parameter]) -> None:
        for p in parameters:
            self._add_accumulator("squared", p)
            self._add_accumulator("linear", p)

    def _append_optimize_op(self, block: Block, param_and_grad: tuple[Parameter, Variable]) -> Operator:
        return self._update_op(block, param_and_grad,
                               {"SquaredAccumulator": "squared", "LinearAccumulator": "linear"},
                               {"l1": self._l1, "l2": self._l2, "lr_power": self._lr_power})


SGD = SGDOptimizer
Momentum = MomentumOptimizer
Adagrad = AdagradOptimizer
Adam = AdamOptimizer
Adamax = AdamaxOptimizer
DecayedAdagrad = DecayedAdagradOptimizer
RMSProp = RMSPropOptimizer
Adadelta = AdadeltaOptimizer
Ftrl = FtrlOptimizer
LarsMomentum = LarsMomentumOptimizer

# ModelAverage builds on Optimizer, so its module imports this one: import it last
from .model_average import ModelAverage  # noqa: E402

