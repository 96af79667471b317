"""Reverse-mode autodiff over a block: ``append_backward(loss)``.

For each forward op on the path from a trainable parameter to the loss (in
reverse order) a ``<type>_grad`` op is appended.  A variable read by several
ops gets one gradient per reader (``x@GRAD@RENAME@k``) and a ``sum`` op right
before its gradient is first needed.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from ..errors import InvalidArgumentError
from .framework import (EMPTY_VAR, ROLE_BACKWARD, ROLE_LOSS, Block, Operator, Parameter, Variable,
                        grad_var_name, op_role_guard)
from .registry import get_op_def


def make_grad_op(block: Block, op: Operator, out_grads: dict[str, list[str]],
                 in_grads: dict[str, list[str]], index: int | None = None) -> Operator:
    """Append (or insert at ``index``) the grad op of ``op``.

    ``out_grads``: {OutSlot: grad var names}; ``in_grads``: {InSlot: grad var
    names or EMPTY_VAR}.
    """
    inputs = {**op.inputs, **op.outputs}
    inputs.update({f"{s}@GRAD": ns for s, ns in out_grads.items()})
    outputs = {f"{s}@GRAD": ns for s, ns in in_grads.items()}
    attrs = {**op.attrs, "op_role": ROLE_BACKWARD}
    pos = len(block.ops) if index is None else index
    return block._insert_op(pos, op.type + "_grad", inputs, outputs, attrs, infer=False)


def _requires_grad(block: Block, params: set[str], no_grad: set[str]) -> set[str]:
    """Vars whose gradient is meaningful: reachable from a parameter, not blocked."""
    req = set(params) - no_grad
    for op in block.ops:
        opdef = get_op_def(op.type)
        if opdef.grad is None:
            if "sub_block" in op.attrs and any(n in req for n in op.input_arg_names):
                # skipping it would silently drop the body's share of the gradients
                raise InvalidArgumentError(
                    f"op '{op.type}' has no gradient, but its sub-block reads "
                    f"{sorted(n for n in op.input_arg_names if n in req)}, which need one; "
                    f"use StaticRNN (unrolled) or mark them stop_gradient / put them in no_grad_set")
            continue
        if any(n in req for s, ns in op.inputs.items() if s not in opdef.no_grad_inputs for n in ns):
            slots = opdef.grad_outputs if opdef.grad_outputs is not None else op.outputs.keys()
            for s in slots:
                req.update(n for n in op.outputs.get(s, []) if n not in no_grad)
    return req


def _ops_on_path(block: Block, loss_name: str) -> list[Operator]:
    needed, path = {loss_name}, []
    for op in reversed(block.ops):
        if any(n in needed for n in op.output_arg_names):
            path.append(op)
            needed.update(op.input_arg_names)
    return path  # reverse program order


class _GradNames:
    """Names the gradient contributions of each forward var.

    ``expected`` counts, per var, the grad ops that will write a contribution;
    a var with several gets ``x@GRAD@RENAME@k`` names and one ``sum`` op.
    """

    def __init__(self, block: Block, expected: dict[str, int]) -> None:
        self.block = block
        self.expected = expected
        self.parts: dict[str, list[str]] = {}
        self.made: dict[str, int] = {}  # contributions named so far, per var (names never repeat)

    def new(self, var: str, sparse: bool = False) -> str:
        parts = self.parts.setdefault(var, [])
        made = self.made[var] = self.made.get(var, 0) + 1
        base = grad_var_name(var)
        name = base if self.expected.get(var, 0) <= 1 and made == 1 else f"{base}@RENAME@{made - 1}"
        parts.append(name)
        self._declare(var, name, sparse)
        return name

    def _declare(self, var: str, name: str, sparse: bool = False) -> None:
        fv = self.block.var(var)
        self.block.create_var(name=name, shape=fv.shape, dtype=fv.dtype, lod_level=fv.lod_level,
                              type="selected_rows" if sparse else "lod_tensor")

    def finalize(self, var: str) -> str | None:
        """Sum the contributions of ``var`` (if several) and return its grad name."""
        parts = self.parts.get(var)
        if not parts:
            return None
        base = grad_var_name(var)
        if parts != [base]:
            sparse = all(self.block.vars[n].type == "selected_rows" for n in parts)
            self._declare(var, base, sparse)
            self.block.append_op("sum", {"X": parts}, {"Out": [base]}, {"op_role": ROLE_BACKWARD}, infer=False)
            self.parts[var] = [base]
        return base

    def restart(self, var: str) -> None:
        """An op that reads and writes ``var`` (a loop's carried value) took its gradient: the
        contributions that follow are for the value before that op, not to be summed with it."""
        self.parts[var] = []


def _needed_inputs(op: Operator, requires: set[str]) -> dict[str, list[str]]:
    opdef = get_op_def(op.type)
    return {s: [n for n in ns if n in requires] for s, ns in op.inputs.items()
            if s not in opdef.no_grad_inputs}


def _count_contributions(path: list[Operator], requires: set[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in path:
        for ns in _needed_inputs(op, requires).values():
            for n in ns:
                counts[n] = counts.get(n, 0) + 1
    return counts


def append_backward(loss: Variable, parameter_list: Sequence[Any] | None = None,
                    no_grad_set: Iterable[Any] | None = None,
                    callbacks: Any = None) -> list[tuple[Parameter, Variable]]:
    """Append gradient ops for ``loss``; return [(param, grad_var)] for trainable params."""
    if not isinstance(loss, Variable):
        raise InvalidArgumentError(f"append_backward: loss must be a Variable, got {type(loss).__name__}")
    block = loss.block
    program = block.program
    if parameter_list is not None:
        names = [p.name if isinstance(p, Variable) else str(p) for p in parameter_list]
        params = [block.var(n) for n in names]
    else:
        params = [p for p in program.all_parameters() if p.trainable]
    no_grad = {v.name if isinstance(v, Variable) else str(v) for v in (no_grad_set or [])}
    no_grad |= {v.name for v in block.vars.values() if v.stop_gradient and not (
        isinstance(v, Parameter) and v.trainable)}
    requires = _requires_grad(block, {p.name for p in params}, no_grad)
    path = _ops_on_path(block, loss.name)
    for op in block.ops:
        if loss.name in op.output_arg_names:
            op.attrs["op_role"] = ROLE_LOSS

    grads = _GradNames(block, _count_contributions(path, requires))
    with op_role_guard(ROLE_BACKWARD):
        _seed_grad(block, grads, loss)
        for op in path:
            _append_op_grad(block, op, grads, requires)
    result = []
    for p in params:
        g = grads.finalize(p.name)
        if g is not None:
            result.append((p, block.var(g)))
    program._bump()
    return result


def _seed_grad(block: Block, grads: _GradNames, target: Variable) -> None:
    """d target / d target = ones shaped like the target."""
    block.append_op("fill_any_like", {"X": [target.name]}, {"Out": [grads.new(target.name)]},
                    {"value": 1.0, "op_role": ROLE_BACKWARD}, infer=False)


def _append_op_grad(block: Block, op: Operator, grads: _GradNames, requires: set[str]) -> None:
    opdef = get_op_def(op.type)
    need = _needed_inputs(op, requires)
    in_slots = list(need)
    if not any(need.values()):
        return
    out_slots = opdef.grad_outputs if opdef.grad_outputs is not None else list(op.outputs)
    out_grads: dict[str, list[str]] = {}
    have_any = False
    for s in out_slots:
        names = []
        for n in op.outputs.get(s, []):
            g = grads.finalize(n)
            have_any |= g is not None
            names.append(g if g is not None else _zeros_grad(block, n))
        out_grads[s] = names
    if not have_any:
        return
    if opdef.grad is None:
        raise InvalidArgumentError(
            f"op '{op.type}' has no gradient, but {sorted(n for ns in need.values() for n in ns)} need one; "
            f"mark them stop_gradient or put them in no_grad_set")
    sparse_slots = opdef.sparse_grad(op) if opdef.sparse_grad else set()
    for n in set(op.output_arg_names) & set(op.input_arg_names):
        grads.restart(n)
    in_grads = {}
    for s in in_slots:
        names = []
        for n in op.inputs[s]:
            if n in need[s]:
                names.append(grads.new(n, sparse=s in sparse_slots))
            else:
                names.append(EMPTY_VAR)
        in_grads[s] = names
    make_grad_op(block, op, out_grads, in_grads)


def _zeros_grad(block: Block, var: str) -> str:
    """A zero gradient for an output nobody differentiates (e.g. an unused split part)."""
    name = grad_var_name(var) + "@ZERO"
    fv = block.var(var)
    block.create_var(name=name, shape=fv.shape, dtype=fv.dtype)
    block.append_op("fill_zeros_like", {"X": [var]}, {"Out": [name]}, {"op_role": ROLE_BACKWARD}, infer=False)
    return name


def gradients(targets: Sequence[Variable], inputs: Sequence[Variable],
              no_grad_set: Iterable[Any] | None = None) -> list[Variable | None]:
    """Gradients of sum(targets[0]) w.r.t. ``inputs`` (one target supported)."""
    if isinstance(targets, Variable):
        targets = [targets]
    if len(targets) != 1:
        raise InvalidArgumentError("gradients: exactly one target is supported")
    target = targets[0]
    block = target.block
    requires_names = {v.name for v in inputs}
    no_grad = {v.name if isinstance(v, Variable) else str(v) for v in (no_grad_set or [])}
    requires = _requires_grad(block, requires_names, no_grad)
    path = _ops_on_path(block, target.name)
    grads = _GradNames(block, _count_contributions(path, requires))
    with op_role_guard(ROLE_BACKWARD):
        _seed_grad(block, grads, target)
        for op in path:
            _append_op_grad(block, op, grads, requires)
    out = []
    for v in inputs:
        g = grads.finalize(v.name)
        out.append(block.var(g) if g else None)
    return out
