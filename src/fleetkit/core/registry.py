"""Op registry: each op type has a forward kernel, shape inference and, if
differentiable, a gradient kernel.

Kernels are written once for numpy and cupy through ``ctx.xp``.  The gradient of
op ``T`` is the op ``T_grad`` whose inputs are T's inputs, T's outputs and
``<OutSlot>@GRAD``, and whose outputs are ``<InSlot>@GRAD``; its kernel asks
``ctx.wants("X@GRAD")`` before computing a gradient nobody needs.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import NotFoundError, ShapeError
from .framework import EMPTY_VAR, Operator, Variable
from .scope import LoDTensor, SelectedRows

Kernel = Callable[["KernelContext"], None]
InferFn = Callable[["ShapeContext"], None]


@dataclass
class OpDef:
    type: str
    forward: Kernel
    infer_shape: InferFn | None = None
    grad: Kernel | None = None
    #: input slots that never receive a gradient (labels, indices, running stats)
    no_grad_inputs: frozenset[str] = frozenset()
    #: output slots whose gradients flow back; None means all outputs
    grad_outputs: frozenset[str] | None = None
    default_attrs: dict[str, Any] = field(default_factory=dict)
    #: slots whose gradient is SelectedRows for this op instance (e.g. sparse lookup_table W)
    sparse_grad: Callable[[Operator], set[str]] | None = None
    #: the op draws random numbers (gets ``ctx.rng``)
    random: bool = False


_OPS: dict[str, OpDef] = {}

#: op type -> the module whose import registers it, for op families defined above core
#: (pserver, collective, fleet).  Core must not import upward, yet a program loaded from
#: disk may hold any op; the top-level package fills this table (``fleetkit/_op_providers.py``)
#: and ``get_op_def`` imports the module the first time one of its ops is looked up.
_PROVIDERS: dict[str, str] = {}


def register_op(type: str, infer_shape: InferFn | None = None, no_grad_inputs: tuple = (),
                grad_outputs: tuple | None = None, attrs: dict | None = None,
                sparse_grad: Callable[[Operator], set[str]] | None = None,
                random: bool = False) -> Callable[[Kernel], Kernel]:
    """Decorator registering ``fn`` as the forward kernel of op ``type``."""
    def deco(fn: Kernel) -> Kernel:
        if type in _OPS:
            raise ValueError(f"op '{type}' registered twice")
        _OPS[type] = OpDef(type, fn, infer_shape, None, frozenset(no_grad_inputs),
                           None if grad_outputs is None else frozenset(grad_outputs),
                           dict(attrs or {}), sparse_grad, random)
        return fn
    return deco


def register_grad(type: str) -> Callable[[Kernel], Kernel]:
    """Decorator registering ``fn`` as the kernel of ``<type>_grad``."""
    def deco(fn: Kernel) -> Kernel:
        fwd = _OPS[type]
        fwd.grad = fn
        _OPS[type + "_grad"] = OpDef(type + "_grad", fn, None)
        return fn
    return deco


def register_op_provider(module: str, types: Iterable[str]) -> None:
    """Declare that importing ``module`` registers op ``types`` (and their ``_grad`` ops)."""
    for t in types:
        _PROVIDERS[t] = module


def get_op_def(type: str) -> OpDef:
    try:
        return _OPS[type]
    except KeyError:
        from . import ops  # noqa: F401  (registration happens on import)
        if type in _OPS:
            return _OPS[type]
        provider = _PROVIDERS.get(type) or _PROVIDERS.get(type.removesuffix("_grad"))
        if provider is not None:
            importlib.import_module(provider)
            if type in _OPS:
                return _OPS[type]
        raise NotFoundError(f"unknown op type '{type}'") from None


def registered_ops() -> list[str]:
    from . import ops  # noqa: F401
    return sorted(_OPS)


# --------------------------------------------------------------------- run time
class KernelContext:
    """What a kernel sees: its op's inputs, attributes and where to put outputs.

    Built once per op when a program is prepared; ``env`` is the scope's dict.
    The first name of each non-empty slot is looked up once here (``_in0`` /
    ``_out0``), so the per-call accessors are one dict lookup each: kernels run
    every step and their Python overhead is a large share of a small model's
    step time.  A program edit bumps its version, which re-prepares (and
    rebuilds these tables).
    """

    __slots__ = ("op", "ins", "outs", "attrs", "env", "xp", "rng", "place", "_in0", "_out0")

    def __init__(self, op: Operator, xp: Any, rng: np.random.Generator | None, place: Any) -> None:
        self.op = op
        self.ins = op.inputs
        self.outs = op.outputs
        self.attrs = op.attrs
        self.env: dict[str, Any] = {}
        self.xp = xp
        self.rng = rng
        self.place = place
        self._in0 = {s: ns[0] for s, ns in op.inputs.items() if ns and ns[0] != EMPTY_VAR}
        self._out0 = {s: ns[0] for s, ns in op.outputs.items() if ns and ns[0] != EMPTY_VAR}

    def _get(self, name: str) -> Any:
        try:
            return self.env[name]
        except KeyError:
            raise self._missing(name) from None

    def _missing(self, name: str) -> NotFoundError:
        return NotFoundError(
            f"op '{self.op.type}' needs variable '{name}', which has no value "
            f"(not fed, or not initialized: did you run the startup program?)")

    def has(self, slot: str) -> bool:
        return slot in self._in0

    def x(self, slot: str) -> Any:
        """First input of ``slot`` as an array (LoD stripped), or None if the slot is empty."""
        name = self._in0.get(slot)
        if name is None:
            return None
        try:
            v = self.env[name]
        except KeyError:
            raise self._missing(name) from None
        return v.values if v.__class__ is LoDTensor else v

    def xs(self, slot: str) -> list[Any]:
        out = []
        for n in self.ins.get(slot, ()):
            v = self._get(n)
            out.append(v.values if v.__class__ is LoDTensor else v)
        return out

    def lod(self, slot: str, i: int = 0) -> list[list[int]] | None:
        if i == 0:
            name = self._in0.get(slot)
            if name is None:
                return None
        else:
            names = self.ins.get(slot)
            if not names:
                return None
            name = names[i]
        v = self.env.get(name)
        return v._lod if v.__class__ is LoDTensor and v._lod else None

    def raw(self, slot: str, i: int = 0) -> Any:
        """The input value as stored (LoDTensor / SelectedRows kept)."""
        return self._get(self.ins[slot][i])

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def wants(self, slot: str) -> bool:
        return slot in self._out0

    def out(self, slot: str, value: Any, lod: list[list[int]] | None = None) -> None:
        name = self._out0.get(slot)
        if name is not None:
            self.env[name] = LoDTensor._of(value, _levels(lod)) if lod else value

    def outs_list(self, slot: str, values: list[Any], lods: list | None = None) -> None:
        for i, (n, v) in enumerate(zip(self.outs.get(slot, ()), values)):
            if n != EMPTY_VAR:
                lod = lods[i] if lods else None
                self.env[n] = LoDTensor._of(v, _levels(lod)) if lod else v

    def same_var(self, in_slot: str, out_slot: str) -> bool:
        """Whether output ``out_slot`` names the same variable as input ``in_slot`` (in-place ops)."""
        name = self._in0.get(in_slot)
        return name is not None and self._out0.get(out_slot) == name

    def out_value(self, slot: str) -> Any:
        """Current value of an output var (for in-place updates such as optimizer accumulators)."""
        names = self.outs.get(slot)
        return self.env.get(names[0]) if names else None


# ----------------------------------------------------------------- build time
class ShapeContext:
    """Shape inference view of one op at build time."""

    def __init__(self, op: Operator) -> None:
        self.op = op
        self.block = op.block

    def var(self, slot: str, i: int = 0, out: bool = False) -> Variable:
        names = (self.op.outputs if out else self.op.inputs).get(slot)
        if not names or len(names) <= i:
            raise ShapeError(f"op '{self.op.type}': {'output' if out else 'input'} slot '{slot}' is missing")
        return self.block.var(names[i])

    def has(self, slot: str) -> bool:
        names = self.op.inputs.get(slot)
        return bool(names) and names[0] != EMPTY_VAR

    def vars(self, slot: str) -> list[Variable]:
        return [self.block.var(n) for n in self.op.inputs.get(slot, [])]

    def shape(self, slot: str, i: int = 0) -> tuple[int, ...]:
        return self.var(slot, i).shape

    def dtype(self, slot: str, i: int = 0) -> str:
        return self.var(slot, i).dtype

    def attr(self, name: str, default: Any = None) -> Any:
        return self.op.attrs.get(name, default)

    def set(self, slot: str, shape: Any, dtype: str | None = None, lod_level: int | None = None,
            i: int = 0) -> None:
        names = self.op.outputs.get(slot)
        if not names or len(names) <= i or names[i] == EMPTY_VAR:
            return
        v = self.block.var(names[i])
        v.shape = tuple(int(d) for d in shape)
        if dtype is not None:
            v.dtype = dtype
        if lod_level is not None:
            v.lod_level = lod_level

    def share(self, src_slot: str = "X", dst_slot: str = "Out", lod: bool = True) -> None:
        """Output gets the input's shape, dtype (and lod level)."""
        v = self.var(src_slot)
        self.set(dst_slot, v.shape, v.dtype, v.lod_level if lod else 0)

    def fail(self, why: str) -> ShapeError:
        """An error naming the op and the shapes of its inputs."""
        desc = []
        for slot, names in self.op.inputs.items():
            for n in names:
                v = self.block._find_var_recursive(n)
                if v is not None:
                    desc.append(f"{slot}='{n}' shape={list(v.shape)} dtype={v.dtype}")
        return ShapeError(f"op '{self.op.type}': {why} (inputs: {'; '.join(desc)})")


def infer_shape(op: Operator) -> None:
    fn = get_op_def(op.type).infer_shape
    if fn is not None:
        fn(ShapeContext(op))


def same_shape_infer(ctx: ShapeContext) -> None:
    """Out has X's shape/dtype/lod (activations and other unary maps)."""
    ctx.share("X", "Out")


def is_selected_rows(v: Any) -> bool:
    return v.__class__ is SelectedRows


def _levels(lod: Any) -> list:
    """A kernel's output LoD as a list of levels: lists and 1-D int64 arrays are kept as they
    are (kernels pass on their inputs' checked offsets, or build fresh lists), anything else
    becomes ints; the constructor's per-offset ``int()`` was a quarter of a CTR forward pass."""
    return [lv if type(lv) is list or _offset_array(lv) else [int(x) for x in lv] for lv in lod]


def _offset_array(lv: Any) -> bool:
    return lv.__class__ is np.ndarray and lv.dtype == np.int64 and lv.ndim == 1
