"""Parameter initializers: each appends one init op to the startup block."""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import numpy as np

from ..errors import InvalidArgumentError
from .framework import Block, Variable


class Initializer:
    """Base: ``init(var, block)`` appends the op that fills ``var`` in ``block``."""

    def __call__(self, var: Variable, block: Block) -> Any:
        return self.init(var, block)

    def init(self, var: Variable, block: Block) -> Any:
        raise NotImplementedError


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """fan_in / fan_out: fc weight [in, out]; conv filter [out, in, kh, kw]."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = int(np.prod(shape[2:]))
    return shape[1] * receptive, shape[0] * receptive


class ConstantInitializer(Initializer):
    def __init__(self, value: float = 0.0, force_cpu: bool = False) -> None:
        self.value = float(value)

    def init(self, var: Variable, block: Block) -> Any:
        return block.append_op("fill_constant", {}, {"Out": [var.name]},
                               {"shape": list(var.shape), "dtype": var.dtype, "value": self.value})


class UniformInitializer(Initializer):
    def __init__(self, low: float = -1.0, high: float = 1.0, seed: int = 0) -> None:
        if high < low:
            raise InvalidArgumentError(f"UniformInitializer: high ({high}) < low ({low})")
        self.low, self.high, self.seed = float(low), float(high), int(seed)

    def init(self, var: Variable, block: Block) -> Any:
        return block.append_op("uniform_random", {}, {"Out": [var.name]},
                               {"shape": list(var.shape), "dtype": var.dtype, "min": self.low,
                                "max": self.high, "seed": self.seed})


class NormalInitializer(Initializer):
    def __init__(self, loc: float = 0.0, scale: float = 1.0, seed: int = 0) -> None:
        self.loc, self.scale, self.seed = float(loc), float(scale), int(seed)

    def init(self, var: Variable, block: Block) -> Any:
        return block.append_op("gaussian_random", {}, {"Out": [var.name]},
                               {"shape": list(var.shape), "dtype": var.dtype, "mean": self.loc,
                                "std": self.scale, "seed": self.seed})


class TruncatedNormalInitializer(NormalInitializer):
    def init(self, var: Variable, block: Block) -> Any:
        return block.append_op("truncated_gaussian_random", {}, {"Out": [var.name]},
                               {"shape": list(var.shape), "dtype": var.dtype, "mean": self.loc,
                                "std": self.scale, "seed": self.seed})


class XavierInitializer(Initializer):
    """Glorot: uniform(+-sqrt(6/(fan_in+fan_out))) or normal(std=sqrt(2/(fan_in+fan_out)))."""

    def __init__(self, uniform: bool = True, fan_in: int | None = None, fan_out: int | None = None,
                 seed: int = 0) -> None:
        self.uniform, self.fan_in, self.fan_out, self.seed = uniform, fan_in, fan_out, seed

    def init(self, var: Variable, block: Block) -> Any:
        fi, fo = _fans(var.shape)
        fi, fo = self.fan_in or fi, self.fan_out or fo
        if self.uniform:
            limit = math.sqrt(6.0 / (fi + fo))
            return UniformInitializer(-limit, limit, self.seed).init(var, block)
        return NormalInitializer(0.0, math.sqrt(2.0 / (fi + fo)), self.seed).init(var, block)


class MSRAInitializer(Initializer):
    """He: uniform(+-sqrt(6/fan_in)) or normal(std=sqrt(2/fan_in))."""

    def __init__(self, uniform: bool = True, fan_in: int | None = None, seed: int = 0) -> None:
        self.uniform, self.fan_in, self.seed = uniform, fan_in, seed

    def init(self, var: Variable, block: Block) -> Any:
        fi = self.fan_in or _fans(var.shape)[0]
        if self.uniform:
            limit = math.sqrt(6.0 / fi)
            return UniformInitializer(-limit, limit, self.seed).init(var, block)
        return NormalInitializer(0.0, math.sqrt(2.0 / fi), self.seed).init(var, block)


class NumpyArrayInitializer(Initializer):
    def __init__(self, value: Any) -> None:
        self.value = np.asarray(value)

    def init(self, var: Variable, block: Block) -> Any:
        if tuple(self.value.shape) != tuple(var.shape):
            raise InvalidArgumentError(
                f"NumpyArrayInitializer: array shape {list(self.value.shape)} != parameter "
                f"'{var.name}' shape {list(var.shape)}")
        return block.append_op("assign_value", {}, {"Out": [var.name]},
                               {"shape": list(var.shape), "dtype": var.dtype,
                                "values": self.value.astype(var.dtype).ravel().tolist()})


class BilinearInitializer(Initializer):
    """Bilinear-interpolation filters for a 4-D ``conv2d_transpose`` weight [C_in, C_out, K, K]:
    every [K, K] slice is the separable triangle kernel that upsamples by ``ceil(K / 2)``."""

    def init(self, var: Variable, block: Block) -> Any:
        shape = tuple(var.shape)
        if len(shape) != 4 or shape[2] != shape[3] or min(shape) <= 0:
            raise InvalidArgumentError(f"BilinearInitializer: parameter '{var.name}' must be 4-D with square "
                                       f"filters [C_in, C_out, K, K], got shape {list(shape)}")
        k = shape[3]
        f = math.ceil(k / 2)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        tri = 1 - np.abs(np.arange(k) / f - c)
        kernel = np.broadcast_to(np.outer(tri, tri), shape)
        return NumpyArrayInitializer(kernel).init(var, block)


# fluid's short names
Constant = ConstantInitializer
Uniform = UniformInitializer
Normal = NormalInitializer
TruncatedNormal = TruncatedNormalInitializer
Xavier = XavierInitializer
MSRA = MSRAInitializer
Bilinear = BilinearInitializer


# fluid 1.4's CPU-placement hints for GPU jobs (``with init_on_cpu(): lr = ...``): a program and
# its initializers run on the executor's one place here, so they only record the request
_force_init_on_cpu = False


def force_init_on_cpu() -> bool:
    """Whether an ``init_on_cpu()`` block is open (initializers still run on the executor's place)."""
    return _force_init_on_cpu


@contextlib.contextmanager
def init_on_cpu() -> Iterator[None]:
    """Accepted: fluid pins the block's initializers to the CPU; here they run where the program runs."""
    global _force_init_on_cpu
    old, _force_init_on_cpu = _force_init_on_cpu, True
    try:
        yield
    finally:
        _force_init_on_cpu = old
