"""Shared plumbing for ``layers.*`` builders: naming, parameters, bias, activation."""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import InvalidArgumentError
from . import unique_name
from .framework import Parameter, Variable, default_main_program, default_startup_program
from .initializer import ConstantInitializer, Initializer, XavierInitializer
from .param_attr import ParamAttr


class LayerHelper:
    def __init__(self, layer_type: str, **kwargs: Any) -> None:
        self.layer_type = layer_type
        self.kwargs = kwargs
        name = kwargs.get("name")
        self.name = name if name else unique_name.generate(layer_type)

    @property
    def main_program(self) -> Any:
        return default_main_program()

    @property
    def startup_program(self) -> Any:
        return default_startup_program()

    @property
    def block(self) -> Any:
        return self.main_program.current_block()  # a sub-block inside While / Switch / RNN bodies

    def append_op(self, type: str, inputs: dict | None = None, outputs: dict | None = None,
                  attrs: dict | None = None) -> Any:
        return self.block.append_op(type, inputs, outputs, attrs)

    def create_variable_for_type_inference(self, dtype: Any = "float32", stop_gradient: bool = False) -> Variable:
        return self.block.create_var(name=unique_name.generate(f"{self.name}.tmp"), dtype=dtype,
                                     stop_gradient=stop_gradient)

    create_tmp_variable = create_variable_for_type_inference

    def create_variable(self, **kw: Any) -> Variable:
        return self.block.create_var(**kw)

    def create_global_variable(self, shape: Sequence[int], dtype: Any = "float32", persistable: bool = False,
                               name: str | None = None, value: float | None = None,
                               stop_gradient: bool = True) -> Variable:
        """A persistable non-trainable var (counters, running stats), filled in startup if ``value``."""
        name = name or unique_name.generate(f"{self.name}.global")
        v = self.main_program.global_block().create_var(name=name, shape=shape, dtype=dtype,
                                                        persistable=persistable, stop_gradient=stop_gradient)
        if value is not None:
            sv = self.startup_program.global_block().create_var(
                name=name, shape=shape, dtype=dtype, persistable=persistable)
            ConstantInitializer(value)(sv, self.startup_program.global_block())
        return v

    def create_parameter(self, attr: ParamAttr | Any, shape: Sequence[int], dtype: Any = "float32",
                         is_bias: bool = False, default_initializer: Initializer | None = None) -> Parameter:
        attr = ParamAttr._to_attr(attr)
        if attr is False:
            raise InvalidArgumentError(f"{self.layer_type}: parameter disabled by attr=False")
        shape = [int(d) for d in shape]
        if any(d <= 0 for d in shape):
            raise InvalidArgumentError(
                f"{self.layer_type}: parameter shape {shape} has a non-positive dim "
                f"(is an input dimension unknown (-1) where it must be fixed?)")
        suffix = "b" if is_bias else "w"
        name = attr.name or unique_name.generate(f"{self.name}.{suffix}")
        init = attr.initializer or default_initializer or (
            ConstantInitializer(0.0) if is_bias else XavierInitializer())
        gblock = self.main_program.global_block()  # parameters live in the global block, as in fluid
        existing = gblock.vars.get(name)
        p = gblock.create_parameter(
            name, shape, dtype, trainable=attr.trainable,
            optimize_attr={"learning_rate": attr.learning_rate}, regularizer=attr.regularizer,
            gradient_clip_attr=attr.gradient_clip, initializer=init)
        if existing is None:  # shared parameters (same name) are initialized once
            sblock = self.startup_program.global_block()
            sv = sblock.create_var(name=name, shape=shape, dtype=dtype, persistable=True)
            init(sv, sblock)
        return p

    def input_dtype(self, name: str = "input") -> str:
        inputs = self.multiple_input(name)
        dtypes = {v.dtype for v in inputs}
        if len(dtypes) > 1:
            raise InvalidArgumentError(f"{self.layer_type}: inputs have different dtypes {sorted(dtypes)}")
        return inputs[0].dtype

    def multiple_input(self, name: str = "input") -> list[Variable]:
        v = self.kwargs.get(name)
        vs = list(v) if isinstance(v, (list, tuple)) else [v]
        for x in vs:
            if not isinstance(x, Variable):
                raise InvalidArgumentError(
                    f"{self.layer_type}: '{name}' must be a Variable (or a list of them), got {type(x).__name__}")
        return vs

    def append_bias_op(self, x: Variable, dim_start: int = 1, bias_attr: Any = None) -> Variable:
        attr = self.kwargs.get("bias_attr") if bias_attr is None else bias_attr
        if attr is False:
            return x
        size = list(x.shape[dim_start:dim_start + 1])
        b = self.create_parameter(attr, size, x.dtype, is_bias=True)
        out = self.create_variable_for_type_inference(x.dtype)
        self.append_op("elementwise_add", {"X": [x], "Y": [b]}, {"Out": [out]}, {"axis": dim_start})
        return out

    def append_activation(self, x: Variable, act: Any = None) -> Variable:
        act = self.kwargs.get("act") if act is None else act
        if act is None:
            return x
        if isinstance(act, dict):
            act = dict(act)
            act_type = act.pop("type")
            attrs = act
        else:
            act_type, attrs = act, {}
        out = self.create_variable_for_type_inference(x.dtype)
        self.append_op(act_type, {"X": [x]}, {"Out": [out]}, attrs)
        return out
