"""The argument check every layer function shares: an argument that must be a Variable.

The message names the layer, the argument and the type it got, so a script that passes a
numpy array or a list where fluid wanted a Variable learns which call and which argument."""
from __future__ import annotations

from typing import Any

from ...errors import InvalidArgumentError
from ..framework import Variable

__all__ = ["need_var", "need_vars"]


def need_var(layer: str, arg: str, v: Any) -> Variable:
    """``v`` itself if it is a Variable, else InvalidArgumentError naming ``layer`` and ``arg``."""
    if not isinstance(v, Variable):
        raise InvalidArgumentError(f"{layer}: '{arg}' must be a Variable, got {type(v).__name__}")
    return v


def need_vars(layer: str, **vs: Any) -> None:
    """``need_var`` for each keyword argument (its name is the argument's)."""
    for arg, v in vs.items():
        need_var(layer, arg, v)
