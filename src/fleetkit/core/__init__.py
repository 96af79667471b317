"""The static-graph executor: programs, ops, autodiff, optimizers, save/load."""
from . import clip, initializer, io, layers, optimizer, regularizer, unique_name  # noqa: F401
from .backend import CPUPlace, CUDAPlace, get_array_module, gpu_count, is_compiled_with_cuda
from .backward import append_backward, gradients
from .executor import Executor
from .framework import (Block, Operator, Parameter, Program, Variable, default_main_program,
                        default_startup_program, program_guard)
from .param_attr import ParamAttr, WeightNormParamAttr
from .scope import LoDTensor, Scope, SelectedRows, create_lod_tensor, global_scope, scope_guard
from .data_feeder import DataFeeder
from .pyreader import EOFException

Tensor = LoDTensor  # fluid 1.4's fluid.Tensor is its LoDTensor (PaddleRec word2vec builds feeds with it)

__all__ = [
    "Block", "CPUPlace", "CUDAPlace", "DataFeeder", "EOFException", "Executor", "LoDTensor", "Operator", "ParamAttr", "Parameter",
    "Program", "Scope", "SelectedRows", "Tensor", "Variable", "WeightNormParamAttr", "append_backward", "clip",
    "create_lod_tensor", "default_main_program", "default_startup_program", "get_array_module",
    "global_scope", "gpu_count", "gradients", "initializer", "io", "is_compiled_with_cuda", "layers",
    "optimizer", "program_guard", "regularizer", "scope_guard", "unique_name",
]
