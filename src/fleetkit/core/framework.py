"""The static graph: Program -> Block -> Variable / Operator.

Building a program only records descriptions; nothing runs until an Executor
prepares it.  ``Block.append_op`` runs the op's shape inference at once, so an
incompatible layer input is reported where the user wrote it.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..errors import InvalidArgumentError, NotFoundError
from . import unique_name
from .program_meta import ProgramMeta

GRAD_SUFFIX = "@GRAD"
EMPTY_VAR = "@EMPTY@"

# op roles (the transpilers and clone(for_test) look at these)
ROLE_FORWARD, ROLE_BACKWARD, ROLE_OPTIMIZE, ROLE_LOSS, ROLE_LRSCHED, ROLE_RPC = (
    "forward", "backward", "optimize", "loss", "lrsched", "rpc")

_DTYPE_ALIASES = {"float": "float32", "double": "float64", "int": "int32", "long": "int64",
                  "fp32": "float32", "fp64": "float64", "fp16": "float16"}


def convert_dtype(dtype: Any) -> str:
    """Canonical dtype name ('float32', 'int64', ...) from a string or numpy dtype."""
    if isinstance(dtype, str):
        dtype = _DTYPE_ALIASES.get(dtype.lower(), dtype.lower())
    try:
        return np.dtype(dtype).name
    except TypeError as e:
        raise InvalidArgumentError(f"unknown dtype {dtype!r}") from e


def grad_var_name(name: str) -> str:
    return name + GRAD_SUFFIX


class Variable:
    """A named slot of a block.  ``shape`` uses -1 for the batch dimension."""

    def __init__(self, block: "Block", name: str, shape: Sequence[int] | None = None,
                 dtype: Any = "float32", lod_level: int = 0, persistable: bool = False,
                 stop_gradient: bool = False, type: str = "lod_tensor", is_data: bool = False) -> None:
        self.block = block
        self.name = name
        self.shape: tuple[int, ...] = tuple(int(d) for d in shape) if shape is not None else ()
        self.dtype = convert_dtype(dtype)
        self.lod_level = int(lod_level)
        self.persistable = persistable
        self.stop_gradient = stop_gradient
        self.type = type
        self.is_data = is_data

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name}, shape={list(self.shape)}, dtype={self.dtype}"
                f"{', lod_level=%d' % self.lod_level if self.lod_level else ''}"
                f"{', persistable' if self.persistable else ''})")

    __str__ = __repr__

    @property
    def program(self) -> "Program":
        return self.block.program

    @property
    def grad_name(self) -> str:
        return grad_var_name(self.name)

    def astype(self, dtype: Any) -> "Variable":
        from .layers.tensor import cast
        return cast(self, dtype)

    # operator overloads build elementwise / scale ops (as fluid's monkey patch does)
    def _binary(self, other: Any, op: str, reverse: bool = False) -> "Variable":
        from .layers.math_op_patch import binary_op
        return binary_op(self, other, op, reverse)

    def __add__(self, o: Any) -> "Variable": return self._binary(o, "add")
    def __radd__(self, o: Any) -> "Variable": return self._binary(o, "add", True)
    def __sub__(self, o: Any) -> "Variable": return self._binary(o, "sub")
    def __rsub__(self, o: Any) -> "Variable": return self._binary(o, "sub", True)
    def __mul__(self, o: Any) -> "Variable": return self._binary(o, "mul")
    def __rmul__(self, o: Any) -> "Variable": return self._binary(o, "mul", True)
    def __truediv__(self, o: Any) -> "Variable": return self._binary(o, "div")
    def __rtruediv__(self, o: Any) -> "Variable": return self._binary(o, "div", True)
    def __neg__(self) -> "Variable": return self._binary(-1.0, "mul")

    __hash__ = object.__hash__


class Parameter(Variable):
    """A persistable, trainable variable created in main with its init op in startup."""

    def __init__(self, block: "Block", name: str, shape: Sequence[int], dtype: Any = "float32",
                 trainable: bool = True, optimize_attr: dict | None = None, regularizer: Any = None,
                 gradient_clip_attr: Any = None, initializer: Any = None, **kw: Any) -> None:
        bad = [d for d in shape if int(d) <= 0]
        if bad:
            raise InvalidArgumentError(f"parameter '{name}' must have a fully known positive shape, got {list(shape)}")
        super().__init__(block, name, shape, dtype, persistable=True, stop_gradient=not trainable, **kw)
        self.trainable = trainable
        self.optimize_attr = optimize_attr or {"learning_rate": 1.0}
        self.regularizer = regularizer
        self.gradient_clip_attr = gradient_clip_attr
        self.initializer = initializer


class Operator:
    """One op: ``type``, inputs/outputs as {slot: [var names]}, and attributes."""

    def __init__(self, block: "Block", type: str, inputs: dict | None = None,
                 outputs: dict | None = None, attrs: dict | None = None) -> None:
        self.block = block
        self.type = type
        self.inputs: dict[str, list[str]] = {k: _names(v) for k, v in (inputs or {}).items()}
        self.outputs: dict[str, list[str]] = {k: _names(v) for k, v in (outputs or {}).items()}
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.attrs.setdefault("op_role", _current_role)

    def input(self, slot: str) -> list[str]:
        return self.inputs.get(slot, [])

    def output(self, slot: str) -> list[str]:
        return self.outputs.get(slot, [])

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self.outputs)

    @property
    def input_arg_names(self) -> list[str]:
        return [n for ns in self.inputs.values() for n in ns]

    @property
    def output_arg_names(self) -> list[str]:
        return [n for ns in self.outputs.values() for n in ns]

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def has_attr(self, name: str) -> bool:
        return name in self.attrs

    def _set_attr(self, name: str, value: Any) -> None:
        self.attrs[name] = value
        self.block.program._bump()

    set_attr = _set_attr

    def _rename_input(self, old: str, new: str) -> None:
        for ns in self.inputs.values():
            ns[:] = [new if n == old else n for n in ns]
        self.block.program._bump()

    def _rename_output(self, old: str, new: str) -> None:
        for ns in self.outputs.values():
            ns[:] = [new if n == old else n for n in ns]
        self.block.program._bump()

    @property
    def role(self) -> str:
        return self.attrs.get("op_role", ROLE_FORWARD)

    def __repr__(self) -> str:
        ins = ", ".join(f"{k}={v}" for k, v in self.inputs.items())
        outs = ", ".join(f"{k}={v}" for k, v in self.outputs.items())
        attrs = {k: v for k, v in self.attrs.items() if k != "op_role"}
        return f"{{{outs}}} = {self.type}({ins}) {attrs if attrs else ''}".rstrip()

    __str__ = __repr__


def _names(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return [x.name if isinstance(x, Variable) else str(x) for x in v]
    return [v.name if isinstance(v, Variable) else str(v)]


class Block:
    def __init__(self, program: "Program", idx: int, parent_idx: int = -1) -> None:
        self.program = program
        self.idx = idx
        self.parent_idx = parent_idx
        self.vars: dict[str, Variable] = {}
        self.ops: list[Operator] = []

    def create_var(self, name: str | None = None, **kw: Any) -> Variable:
        name = name or unique_name.generate("_generated_var")
        if name in self.vars:  # re-declaring an existing var returns it (fluid behaviour)
            return self.vars[name]
        v = Variable(self, name, **kw)
        self.vars[name] = v
        self.program._bump()
        return v

    def create_parameter(self, name: str, shape: Sequence[int], dtype: Any = "float32", **kw: Any) -> Parameter:
        if name in self.vars and isinstance(self.vars[name], Parameter):
            p = self.vars[name]
            if tuple(p.shape) != tuple(shape):
                raise InvalidArgumentError(
                    f"parameter '{name}' already exists with shape {list(p.shape)}, requested {list(shape)}")
            return p
        p = Parameter(self, name, shape, dtype, **kw)
        self.vars[name] = p
        self.program._bump()
        return p

    def var(self, name: str) -> Variable:
        v = self._find_var_recursive(name)
        if v is None:
            raise NotFoundError(f"variable '{name}' is not in block {self.idx} of the program")
        return v

    def has_var(self, name: str) -> bool:
        return name in self.vars

    def _find_var_recursive(self, name: str) -> Variable | None:
        b: Block | None = self
        while b is not None:
            if name in b.vars:
                return b.vars[name]
            b = self.program.blocks[b.parent_idx] if b.parent_idx >= 0 else None
        return None

    def all_parameters(self) -> list[Parameter]:
        return [v for v in self.vars.values() if isinstance(v, Parameter)]

    def iter_parameters(self) -> Iterator[Parameter]:
        return iter(self.all_parameters())

    def append_op(self, type: str, inputs: dict | None = None, outputs: dict | None = None,
                  attrs: dict | None = None, infer: bool = True) -> Operator:
        return self._insert_op(len(self.ops), type, inputs, outputs, attrs, infer)

    def _prepend_op(self, type: str, inputs: dict | None = None, outputs: dict | None = None,
                    attrs: dict | None = None, infer: bool = True) -> Operator:
        return self._insert_op(0, type, inputs, outputs, attrs, infer)

    def _insert_op(self, index: int, type: str, inputs: dict | None = None, outputs: dict | None = None,
                   attrs: dict | None = None, infer: bool = True) -> Operator:
        from .registry import get_op_def, infer_shape
        opdef = get_op_def(type)  # unknown op types fail here, not at run time
        op = Operator(self, type, inputs, outputs, {**opdef.default_attrs, **(attrs or {})})
        for n in op.input_arg_names + op.output_arg_names:
            if n != EMPTY_VAR and self._find_var_recursive(n) is None:
                self.create_var(name=n)
        if infer:
            infer_shape(op)
        self.ops.insert(index, op)
        self.program._bump()
        return op

    def _remove_op(self, index: int) -> None:
        del self.ops[index]
        self.program._bump()

    def _remove_var(self, name: str) -> None:
        self.vars.pop(name, None)
        self.program._bump()

    def __repr__(self) -> str:
        lines = [f"block {self.idx} {{"]
        lines += [f"  var {v!r}" for v in self.vars.values()]
        lines += [f"  {op!r}" for op in self.ops]
        return "\n".join(lines + ["}"])


_program_ids = itertools.count()


class Program:
    """A list of blocks; block 0 is the global block."""

    def __init__(self) -> None:
        self.blocks = [Block(self, 0)]
        self.random_seed = 0
        self._id = next(_program_ids)
        self._version = 0
        self._is_test = False
        #: the block layers append to (``create_block`` enters a sub-block, ``rollback`` leaves it)
        self._current_block_idx = 0
        #: what transpilers and fleet recorded about this program (travels with it)
        self.meta = ProgramMeta()

    def _bump(self) -> None:
        self._version += 1

    def global_block(self) -> Block:
        return self.blocks[0]

    def block(self, idx: int) -> Block:
        return self.blocks[idx]

    def current_block(self) -> Block:
        return self.blocks[getattr(self, "_current_block_idx", 0)]

    def create_block(self, parent_idx: int | None = None) -> Block:
        """Append a sub-block of the current block (or of ``parent_idx``) and make it current."""
        parent = self.current_block().idx if parent_idx is None else int(parent_idx)
        b = self._create_block(parent)
        self._current_block_idx = b.idx
        return b

    def rollback(self) -> None:
        """Make the current block's parent current again (closes ``create_block``)."""
        parent = self.current_block().parent_idx
        self._current_block_idx = parent if parent >= 0 else 0

    def _create_block(self, parent_idx: int = 0) -> Block:
        """Append an empty block (e.g. a pserver optimize block) and return it."""
        b = Block(self, len(self.blocks), parent_idx)
        self.blocks.append(b)
        self._bump()
        return b

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def list_vars(self) -> Iterator[Variable]:
        for b in self.blocks:
            yield from b.vars.values()

    def all_parameters(self) -> list[Parameter]:
        return [p for b in self.blocks for p in b.all_parameters()]

    def clone(self, for_test: bool = False) -> "Program":
        """A deep copy.  ``for_test`` drops backward/optimize ops and sets ``is_test``."""
        new = copy.deepcopy(self)  # deep copy keeps blocks/vars/ops consistent with each other
        new._id = next(_program_ids)
        if for_test:
            new._is_test = True
            for b in new.blocks:
                b.ops = [op for op in b.ops if op.role in (ROLE_FORWARD, ROLE_LOSS)
                         and not op.type.endswith("_grad")]
                for op in b.ops:
                    if "is_test" in op.attrs:
                        op.attrs["is_test"] = True
        return new

    def __deepcopy__(self, memo: dict) -> "Program":
        cls = type(self)
        new = cls.__new__(cls)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            setattr(new, k, copy.deepcopy(v, memo))
        return new

    def to_string(self, throw_on_error: bool = False, with_details: bool = False) -> str:
        return "\n".join(repr(b) for b in self.blocks)

    @staticmethod
    def parse_from_string(binary_str: bytes) -> "Program":
        """The Program in serialized ``ProgramDesc`` bytes (e.g. a ``__model__`` file)."""
        from .program_desc import deserialize_program  # noqa: PLC0415  (program_desc imports this module)
        return deserialize_program(binary_str, "Program.parse_from_string")

    __str__ = to_string

    def __repr__(self) -> str:
        return f"<Program id={self._id} ops={len(self.global_block().ops)}>"


_main_program = Program()
_startup_program = Program()
_current_role = ROLE_FORWARD


def default_main_program() -> Program:
    return _main_program


def default_startup_program() -> Program:
    return _startup_program


def switch_main_program(p: Program) -> Program:
    global _main_program
    old, _main_program = _main_program, p
    return old


def switch_startup_program(p: Program) -> Program:
    global _startup_program
    old, _startup_program = _startup_program, p
    return old


@contextlib.contextmanager
def program_guard(main_program: Program, startup_program: Program | None = None) -> Iterator[None]:
    """Build into ``main_program`` (and ``startup_program``) inside the block."""
    if not isinstance(main_program, Program):
        raise InvalidArgumentError(f"program_guard: main_program must be a Program, got {type(main_program).__name__}")
    old_main = switch_main_program(main_program)
    old_start = switch_startup_program(startup_program) if startup_program is not None else None
    try:
        yield
    finally:
        switch_main_program(old_main)
        if old_start is not None:
            switch_startup_program(old_start)


@contextlib.contextmanager
def op_role_guard(role: str) -> Iterator[None]:
    """Ops appended inside the block get ``op_role=role``."""
    global _current_role
    old, _current_role = _current_role, role
    try:
        yield
    finally:
        _current_role = old


def as_names(vs: Iterable[Any]) -> list[str]:
    return [v.name if isinstance(v, Variable) else str(v) for v in vs]
