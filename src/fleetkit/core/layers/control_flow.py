"""fluid 1.4 control flow: ``While``, ``Switch`` and tensor arrays (``create_array``,
``array_write``, ``array_read``, ``array_length``).

A body is built into a sub-block (``Program.create_block``); leaving it appends the
op that runs it (``while`` / ``conditional_block``, core/ops/control_flow.py) to the
parent block, with every outer variable the body reads or writes as its inputs and
outputs, so pruning and serialization see them.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from ...errors import InvalidArgumentError
from .. import unique_name
from ..framework import Block, Variable, default_main_program
from ..layer_helper import LayerHelper
from ..step_backward import body_backward_attrs, version_loop_carried
from .tensor import fill_constant
from .checks import need_var

__all__ = ["While", "Switch", "IfElse", "create_array", "array_write", "array_read", "array_length"]


def create_array(dtype: Any) -> Variable:
    """An empty tensor array (a ``lod_tensor_array`` variable)."""
    helper = LayerHelper("array")
    return helper.create_variable(name=f"{helper.name}.out", dtype=dtype, type="lod_tensor_array")


def array_write(x: Variable, i: Variable, array: Variable | None = None) -> Variable:
    """array[i] = x (a new array if ``array`` is None); ``i`` is a one-element int64 tensor."""
    need_var("array_write", "x", x)
    need_var("array_write", "i", i)
    if array is None:
        array = create_array(x.dtype)
    LayerHelper("array_write").append_op("write_to_array", {"X": [x], "I": [i]}, {"Out": [array]})
    return array


def array_read(array: Variable, i: Variable) -> Variable:
    """array[i]."""
    need_var("array_read", "array", array)
    need_var("array_read", "i", i)
    helper = LayerHelper("array_read")
    out = helper.create_variable_for_type_inference(array.dtype)
    helper.append_op("read_from_array", {"X": [array], "I": [i]}, {"Out": [out]})
    return out


def array_length(array: Variable) -> Variable:
    """The number of elements of ``array`` as a one-element int64 tensor."""
    need_var("array_length", "array", array)
    helper = LayerHelper("array_length")
    out = helper.create_variable_for_type_inference("int64", stop_gradient=True)
    helper.append_op("lod_array_length", {"X": [array]}, {"Out": [out]})
    return out


def _outer_names(block: Block) -> tuple[list[str], list[str]]:
    """Variables of enclosing blocks that ``block``'s ops read / write (in first-use order)."""
    reads: list[str] = []
    writes: list[str] = []
    for op in block.ops:
        for names, seen in ((op.input_arg_names, reads), (op.output_arg_names, writes)):
            for n in names:
                if n not in block.vars and n not in seen and block._find_var_recursive(n) is not None:
                    seen.append(n)
    return reads, writes


@contextlib.contextmanager
def _sub_block(op_type: str, inputs: dict, attrs: dict | None = None) -> Iterator[Block]:
    """Build a body in a new sub-block, then append the ``op_type`` op that runs it to the parent.

    The body's writes to outer tensors are versioned (step_backward.version_loop_carried):
    a ``while`` body and a ``conditional_block`` body (a loop taken at most once) both keep
    the values each run began with, so their gradient ops (core/ops/control_flow_grad.py) run
    the body's gradient block, built here, against what that run saw."""
    program = default_main_program()
    block = program.create_block()
    try:
        yield block
    finally:
        program.rollback()
    carried, last = version_loop_carried(block)
    reads, writes = _outer_names(block)
    parent = program.current_block()
    seeds = last + [n for n in writes if n not in carried]  # versioned writes are seeded at their last version
    grad_attrs = body_backward_attrs(block, seeds, reads)
    scopes = parent.create_var(name=unique_name.generate(f"{op_type}.step_scopes"), type="step_scopes",
                               stop_gradient=True)
    parent.append_op(op_type, {**inputs, "X": reads}, {"Out": writes, "StepScopes": [scopes]},
                     {"is_test": False, **(attrs or {}), "sub_block": block, "carried_vars": carried,
                      "carried_last": last, **grad_attrs}, infer=False)


class While:
    """``with While(cond).block(): ...`` runs the body while the one-element bool ``cond`` is
    true; the body must update ``cond`` (e.g. ``layers.less_than(i, n, cond=cond)``)."""

    def __init__(self, cond: Variable, is_test: bool = False, name: str | None = None) -> None:
        need_var("While", "cond", cond)
        if cond.dtype != "bool":
            raise InvalidArgumentError(f"While: condition '{cond.name}' must be bool, got {cond.dtype}")
        self.cond_var = cond
        self.is_test = bool(is_test)

    def block(self) -> Any:
        return _sub_block("while", {"Condition": [self.cond_var]}, {"is_test": self.is_test})


class Switch:
    """``with Switch() as s: with s.case(cond): ...; with s.default(): ...``: runs the body of
    the first case whose one-element bool condition is true, else the default's."""

    def __init__(self, name: str | None = None) -> None:
        self._taken: Variable | None = None  # bool: some earlier case matched
        self._inside = False

    def __enter__(self) -> "Switch":
        self._inside = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self._inside = False

    def _check(self, what: str) -> None:
        if not self._inside:
            raise InvalidArgumentError(f"Switch.{what}() must be used inside 'with Switch() as switch:'")

    def case(self, condition: Variable) -> Any:
        self._check("case")
        need_var("Switch.case", "condition", condition)
        from .tensor_ext import logical_and, logical_not, logical_or
        if self._taken is None:
            run, self._taken = condition, condition
        else:
            run = logical_and(logical_not(self._taken), condition)
            self._taken = logical_or(self._taken, condition)
        return _sub_block("conditional_block", {"Cond": [run]})

    def default(self) -> Any:
        self._check("default")
        from .tensor_ext import logical_not
        run = fill_constant([1], "bool", True) if self._taken is None else logical_not(self._taken)
        return _sub_block("conditional_block", {"Cond": [run]})


class IfElse:
    """fluid's row-wise if/else: ``ie.input(x)`` inside ``ie.true_block()`` is the rows of ``x``
    where the [N, 1] bool ``cond`` is true (in ``false_block()`` the others); each block's
    ``ie.output(...)`` values are merged back into N rows, in the original order, by ``ie()``."""

    def __init__(self, cond: Variable, name: str | None = None) -> None:
        need_var("IfElse", "cond", cond)
        if cond.dtype != "bool":
            raise InvalidArgumentError(f"IfElse: condition '{cond.name}' must be bool, got {cond.dtype}")
        self.cond = cond
        self._splits: dict[str, tuple[Variable, Variable]] = {}  # input name -> (true rows, false rows)
        self._outputs: dict[bool, list[Variable]] = {True: [], False: []}
        self._branch: bool | None = None
        self._branch_inputs: dict | None = None
        self._first_input: Variable | None = None

    def _block(self, branch: bool) -> Any:
        if self._branch is not None:
            raise InvalidArgumentError("IfElse: true_block() and false_block() cannot be nested")
        if self._outputs[branch]:
            raise InvalidArgumentError(f"IfElse: {'true' if branch else 'false'}_block() used twice")
        inputs: dict = {"Cond": []}

        @contextlib.contextmanager
        def body() -> Iterator[Block]:
            self._branch, self._branch_inputs = branch, inputs
            try:
                with _sub_block("conditional_block", inputs, {"is_scalar_condition": False}) as block:
                    yield block
            finally:
                self._branch, self._branch_inputs = None, None
        return body()

    def true_block(self) -> Any:
        return self._block(True)

    def false_block(self) -> Any:
        return self._block(False)

    def input(self, x: Variable) -> Variable:
        """The rows of ``x`` this branch gets (split once per input, in the enclosing block)."""
        need_var("IfElse.input", "x", x)
        if self._branch is None or self._branch_inputs is None:
            raise InvalidArgumentError("IfElse.input() must be called inside true_block() or false_block()")
        if x.name not in self._splits:
            program = default_main_program()
            parent = program.block(program.current_block().parent_idx)
            parts = tuple(parent.create_var(name=f"{x.name}.ifelse_{side}_{id(self):x}", dtype=x.dtype)
                          for side in ("true", "false"))
            parent.append_op("split_lod_tensor", {"X": [x], "Mask": [self.cond]},
                             {"OutTrue": [parts[0]], "OutFalse": [parts[1]]})
            self._splits[x.name] = parts  # type: ignore[assignment]
            self._first_input = self._first_input or x
        part = self._splits[x.name][0 if self._branch else 1]
        if part.name not in self._branch_inputs["Cond"]:
            self._branch_inputs["Cond"].append(part.name)
        return part

    def output(self, *outs: Variable) -> None:
        """This branch's results (the same number, in the same order, in both branches)."""
        if self._branch is None:
            raise InvalidArgumentError("IfElse.output() must be called inside true_block() or false_block()")
        program = default_main_program()
        block = program.current_block()
        parent = program.block(block.parent_idx)
        for o in outs:
            need_var("IfElse.output", "out", o)
            # copied to a variable of the enclosing block, so the branch op lists it as an output
            outer = parent.create_var(name=f"{o.name}.ifelse_out", shape=o.shape, dtype=o.dtype)
            block.append_op("assign", {"X": [o]}, {"Out": [outer]})
            self._outputs[self._branch].append(outer)

    def __call__(self) -> list[Variable]:
        trues, falses = self._outputs[True], self._outputs[False]
        if len(trues) != len(falses) or not trues or self._first_input is None:
            raise InvalidArgumentError(f"IfElse: the true block has {len(trues)} outputs and the false block "
                                       f"{len(falses)}; both need the same number, at least one, and an input")
        helper = LayerHelper("ifelse")
        merged = []
        for t, f in zip(trues, falses):
            out = helper.create_variable_for_type_inference(t.dtype)
            helper.append_op("merge_lod_tensor", {"X": [self._first_input], "Mask": [self.cond],
                                                  "InTrue": [t], "InFalse": [f]}, {"Out": [out]})
            merged.append(out)
        return merged
