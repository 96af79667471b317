"""``fluid.transpiler.InferenceTranspiler``: rewrite an inference program in place so it runs
faster and computes the same outputs.

What fluid 1.4's does on a CPU (its other passes need MKL-DNN, which fleetkit has not):

- a ``batch_norm`` that normalizes a convolution's output is folded into the convolution:
  the filter is scaled per output channel and the shift becomes the bias of one
  ``elementwise_add`` (the conv's own bias add when it has one, else one put where the
  ``batch_norm`` was). With ``k = Scale / sqrt(Variance + epsilon)``:
  ``Filter' = Filter * k`` and ``Bias' = (Bias - Mean) * k + BN_Bias``;
- every op with an ``is_test`` attribute is put in test mode.

The folded values go to new parameters, ``<filter>_fuse_bn`` and ``<bias>_fuse_bn``, written
into the scope; the originals are left as they are (another op may share them). Unlike
fluid's, which folds only a conv whose next op in the block is the ``batch_norm`` and always
uses epsilon 1e-5, this one follows the data (a conv anywhere before its ``batch_norm``), uses
the op's own ``epsilon``, and leaves a chain alone when something else reads a value it would
change (the conv's output, the bias add's output, the statistics the ``batch_norm`` writes).
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidArgumentError, NotFoundError
from .backend import Place, to_numpy
from .framework import Block, Operator, Program
from .scope import Scope, global_scope, raw_values

__all__ = ["InferenceTranspiler"]

_CONVS = ("conv2d", "depthwise_conv2d")
#: batch_norm outputs besides Y: folding drops them, so nothing may read them
_BN_SIDE_OUTPUTS = ("MeanOut", "VarianceOut", "SavedMean", "SavedVariance")


class InferenceTranspiler:
    """``InferenceTranspiler().transpile(program, place, scope=None)``, after
    ``load_inference_model``: folds conv + batch_norm and sets test mode (module docstring)."""

    def transpile(self, program: Program, place: Place, scope: Scope | None = None) -> None:
        """Rewrite ``program`` in place, reading and writing parameters in ``scope``
        (the global scope when None) on ``place``."""
        if not isinstance(program, Program):
            raise InvalidArgumentError(f"InferenceTranspiler.transpile: program must be a Program, "
                                       f"got {type(program).__name__}")
        if not isinstance(place, Place):
            raise InvalidArgumentError(f"InferenceTranspiler.transpile: place must be a CPUPlace or CUDAPlace, "
                                       f"got {type(place).__name__}")
        scope = global_scope() if scope is None else scope
        if not isinstance(scope, Scope):
            raise InvalidArgumentError(f"InferenceTranspiler.transpile: scope must be a Scope or None, "
                                       f"got {type(scope).__name__}")
        _BatchNormFolder(program, place, scope).run()
        _set_test_mode(program)


def _set_test_mode(program: Program) -> None:
    """``is_test = True`` on every op that has the attribute (left alone when it already is, so
    a program with nothing to change keeps its version and its prepared runs)."""
    for block in program.blocks:
        for op in block.ops:
            if "is_test" in op.attrs and op.attrs["is_test"] is not True:
                op._set_attr("is_test", True)


class _BatchNormFolder:
    """Finds each foldable conv [+ bias add] + batch_norm chain of block 0 and folds it."""

    def __init__(self, program: Program, place: Place, scope: Scope) -> None:
        self.program, self.place, self.scope = program, place, scope
        self.block: Block = program.global_block()

    def run(self) -> None:
        touched: set[str] = set()
        for bn in [op for op in self.block.ops if op.type == "batch_norm"]:
            chain = self._chain(bn)
            if chain is not None:
                idx = next(k for k, op in enumerate(self.block.ops) if op is bn)
                touched.update(self._fold(idx, *chain))
        self._remove_unused(touched)

    # ------------------------------------------------------------------ matching
    def _readers(self) -> dict[str, int]:
        """Variable name -> how many ops of any block read it."""
        counts: dict[str, int] = {}
        for block in self.program.blocks:
            for op in block.ops:
                for n in set(op.input_arg_names):
                    counts[n] = counts.get(n, 0) + 1
        return counts

    def _writer(self, name: str) -> Operator | None:
        writers = [op for op in self.block.ops if name in op.output_arg_names]
        return writers[0] if len(writers) == 1 else None

    def _chain(self, bn: Operator) -> tuple[Operator, Operator | None, Operator] | None:
        """(conv, its bias add or None, bn) when ``bn`` can be folded, else None."""
        if bn.attrs.get("data_layout", "NCHW") != "NCHW" or bn.attrs.get("fuse_with_relu"):
            return None
        readers = self._readers()
        if any(readers.get(n, 0) for slot in _BN_SIDE_OUTPUTS for n in bn.output(slot)
               if n not in bn.input_arg_names):
            return None
        x = bn.input("X")[0]
        producer = self._writer(x)
        if producer is None or readers.get(x, 0) != 1:
            return None
        add = None
        if producer.type == "elementwise_add":
            add, bias = producer, producer.input("Y")
            if int(add.attrs.get("axis", -1)) != 1 or len(bias) != 1 or not self._is_param(bias[0]):
                return None
            conv_out = add.input("X")[0]
            producer = self._writer(conv_out)
            if producer is None or readers.get(conv_out, 0) != 1:
                return None
        if producer.type not in _CONVS or not self._is_param(producer.input("Filter")[0]):
            return None
        if not all(self._is_param(bn.input(s)[0]) for s in ("Scale", "Bias", "Mean", "Variance")):
            return None
        return producer, add, bn

    def _is_param(self, name: str) -> bool:
        v = self.block._find_var_recursive(name)
        return v is not None and bool(v.persistable) and self.scope.find_var(name) is not None

    # ------------------------------------------------------------------- folding
    def _value(self, name: str) -> np.ndarray:
        v = self.scope.find_var(name).value()
        if v is None:
            raise NotFoundError(f"InferenceTranspiler: parameter '{name}' has no value in the scope "
                                f"(was the model loaded into this scope?)")
        return np.asarray(to_numpy(raw_values(v)))

    def _fold(self, bn_idx: int, conv: Operator, add: Operator | None, bn: Operator) -> set[str]:
        """Fold ``bn`` into ``conv`` (and ``add``); returns the names that may now be unused."""
        filt_name = conv.input("Filter")[0]
        filt = self._value(filt_name)
        mean, var = (self._value(bn.input(s)[0]).astype(np.float64) for s in ("Mean", "Variance"))
        scale, shift = (self._value(bn.input(s)[0]).astype(np.float64) for s in ("Scale", "Bias"))
        if filt.shape[0] != mean.shape[0]:
            raise InvalidArgumentError(f"InferenceTranspiler: batch_norm over '{bn.input('X')[0]}' has "
                                       f"{mean.shape[0]} channels, the filter '{filt_name}' {filt.shape[0]}")
        k = scale / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
        old_bias_name = add.input("Y")[0] if add is not None else bn.input("Bias")[0]
        old_bias = self._value(old_bias_name).astype(np.float64) if add is not None else np.zeros_like(k)
        new_filt = self._new_param(filt_name, (filt * k.reshape(-1, 1, 1, 1)).astype(filt.dtype))
        new_bias = self._new_param(old_bias_name, ((old_bias - mean) * k + shift).astype(filt.dtype))
        conv._rename_input(filt_name, new_filt)
        y, x = bn.output("Y")[0], bn.input("X")[0]
        if add is not None:  # conv -> add -> bn: the add takes the folded bias and writes bn's output
            add._rename_input(old_bias_name, new_bias)
            add._rename_output(x, y)
            self.block._remove_op(bn_idx)
        else:  # conv -> bn: an add of the folded bias takes the bn's place
            self.block._remove_op(bn_idx)
            self.block._insert_op(bn_idx, "elementwise_add", {"X": [x], "Y": [new_bias]}, {"Out": [y]},
                                  {"axis": 1, "op_role": bn.attrs.get("op_role", "forward")})
        return {filt_name, old_bias_name, x, *bn.input_arg_names, *bn.output_arg_names} - {y}

    def _new_param(self, base: str, value: np.ndarray) -> str:
        """A new parameter holding ``value`` in the block and the scope; its name is fluid's
        ``<base>_fuse_bn``, numbered when a shared parameter is folded more than once."""
        name, k = f"{base}_fuse_bn", 1
        while self.block.has_var(name) or self.scope.find_var(name) is not None:
            name, k = f"{base}_fuse_bn_{k}", k + 1
        self.block.create_parameter(name, list(value.shape), value.dtype.name, trainable=False)
        self.scope.set(name, self.place.to_device(np.ascontiguousarray(value)))
        return name

    def _remove_unused(self, names: set[str]) -> None:
        """Drop from block 0 the variables of folded chains that no op reads or writes now."""
        used = {n for b in self.program.blocks for op in b.ops for n in op.input_arg_names + op.output_arg_names}
        for n in sorted(names - used):
            if self.block.has_var(n):
                self.block._remove_var(n)
