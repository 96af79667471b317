"""ParamAttr: how a layer's parameter is named, initialized, regularized and trained."""
from __future__ import annotations

from typing import Any

from ..errors import InvalidArgumentError
from .initializer import Initializer


class ParamAttr:
    def __init__(self, name: str | None = None, initializer: Initializer | None = None,
                 learning_rate: float = 1.0, regularizer: Any = None, trainable: bool = True,
                 gradient_clip: Any = None, do_model_average: bool = False) -> None:
        self.name = name
        self.initializer = initializer
        self.learning_rate = float(learning_rate)
        self.regularizer = regularizer
        self.trainable = trainable
        self.gradient_clip = gradient_clip
        self.do_model_average = do_model_average

    @staticmethod
    def _to_attr(arg: Any) -> "ParamAttr | bool":
        """Normalize the many forms layers accept (None, name, initializer, False...)."""
        if arg is None:
            return ParamAttr()
        if isinstance(arg, ParamAttr):
            return arg
        if isinstance(arg, str):
            return ParamAttr(name=arg)
        if isinstance(arg, Initializer):
            return ParamAttr(initializer=arg)
        if arg is False:
            return False
        if arg is True:
            return ParamAttr()
        if isinstance(arg, (list, tuple)):
            raise InvalidArgumentError("a list of ParamAttr is only accepted by layers with several inputs")
        raise InvalidArgumentError(f"cannot use {arg!r} as a ParamAttr")

    def __repr__(self) -> str:
        return f"ParamAttr(name={self.name!r}, lr={self.learning_rate}, trainable={self.trainable})"


class WeightNormParamAttr(ParamAttr):
    def __init__(self, dim: int | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.dim = dim
