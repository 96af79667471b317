"""Program <-> ``ProgramDesc`` (the ``__model__`` protobuf): conversion and (de)serialization.

Used by ``io`` (inference models), transpilers and RPC; ``fleetkit.io`` re-exports every name.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from google.protobuf.message import DecodeError

from ..errors import InvalidArgumentError, NotFoundError
from ..proto.codec import decode_value, dtype_from_proto, dtype_to_proto, encode_value
from ..proto.framework_pb2 import OpDesc, ProgramDesc, VarDesc
from .framework import Block, Operator, Parameter, Program, Variable
from .program_meta import ProgramMeta
from .registry import get_op_def

__all__ = ["PROGRAM_DESC_VERSION", "deserialize_program", "parse_program_desc", "program_from_desc",
           "program_to_desc", "serialize_program"]

#: ProgramDesc.version written by this module; newer versions are refused on load
PROGRAM_DESC_VERSION = 1


def program_to_desc(program: Program, feed_target_names: Sequence[str] = (),
                    fetch_target_names: Sequence[str] = (), with_meta: bool = False) -> ProgramDesc:
    """Describe ``program`` (every block, var, op and attribute) as a ``ProgramDesc``.

    Python-only parameter settings (initializer, regularizer, gradient clip) are not
    stored.  ``Program._meta`` is stored only with ``with_meta`` (its values must then be
    attribute-like: numbers, strings, lists, dicts).
    """
    desc = ProgramDesc(version=PROGRAM_DESC_VERSION, random_seed=int(program.random_seed or 0),
                       is_test=bool(program._is_test), feed_target_names=list(feed_target_names),
                       fetch_target_names=list(fetch_target_names))

    def block_index_of(v: Any) -> int | None:
        return v.idx if isinstance(v, Block) and v.program is program else None

    for block in program.blocks:
        bd = desc.blocks.add(idx=block.idx, parent_idx=block.parent_idx)
        for var in block.vars.values():
            _var_to_desc(var, bd.vars.add())
        for i, op in enumerate(block.ops):
            try:
                _op_to_desc(op, bd.ops.add(), block_index_of)
            except InvalidArgumentError as e:
                raise type(e)(f"op #{i} '{op.type}' of block {block.idx}: {e}") from None
    if with_meta:
        for key, value in program.meta.items():
            encode_value(value, desc.meta.add(name=key), block_index_of)
    return desc


def _var_to_desc(var: Variable, d: VarDesc) -> None:
    d.name, d.type = var.name, var.type
    d.dtype = dtype_to_proto(var.dtype, f"variable '{var.name}'")
    d.shape.extend(int(s) for s in var.shape)
    d.lod_level = int(var.lod_level)
    d.persistable, d.stop_gradient, d.is_data = bool(var.persistable), bool(var.stop_gradient), bool(var.is_data)
    if isinstance(var, Parameter):
        d.is_parameter, d.trainable = True, bool(var.trainable)
        d.learning_rate = float((var.optimize_attr or {}).get("learning_rate", 1.0))


def _op_to_desc(op: Operator, d: OpDesc, block_index_of: Callable[[Any], int | None]) -> None:
    d.type = op.type
    for slot, names in op.inputs.items():
        d.inputs.add(slot=slot, names=names)
    for slot, names in op.outputs.items():
        d.outputs.add(slot=slot, names=names)
    for name, value in op.attrs.items():
        encode_value(value, d.attrs.add(name=name), block_index_of)


def program_from_desc(desc: ProgramDesc, where: str = "ProgramDesc") -> Program:
    """Rebuild a Program from ``desc`` (inverse of ``program_to_desc``); ``where`` names the source in errors."""
    if desc.version == 0 or not desc.blocks:
        raise InvalidArgumentError(f"{where}: not a fleetkit program (version {desc.version}, "
                                   f"{len(desc.blocks)} blocks)")
    if desc.version > PROGRAM_DESC_VERSION:
        raise InvalidArgumentError(f"{where}: program format version {desc.version} is newer than this "
                                   f"fleetkit reads ({PROGRAM_DESC_VERSION}); upgrade fleetkit")
    program = Program()
    program.random_seed = int(desc.random_seed)
    program._is_test = bool(desc.is_test)
    program.blocks = []
    for i, bd in enumerate(desc.blocks):
        if bd.idx != i or not -1 <= bd.parent_idx < len(desc.blocks):
            raise InvalidArgumentError(f"{where}: block #{i} has idx {bd.idx} and parent {bd.parent_idx}")
        program.blocks.append(Block(program, bd.idx, bd.parent_idx))

    def resolve_block(idx: int) -> Block:
        if not 0 <= idx < len(program.blocks):
            raise InvalidArgumentError(f"{where}: an attribute refers to block {idx}, the program has "
                                       f"{len(program.blocks)}")
        return program.blocks[idx]

    for bd, block in zip(desc.blocks, program.blocks):
        for vd in bd.vars:
            if vd.name in block.vars:
                raise InvalidArgumentError(f"{where}: variable '{vd.name}' appears twice in block {block.idx}")
            block.vars[vd.name] = _var_from_desc(vd, block, where)
        for od in bd.ops:
            block.ops.append(_op_from_desc(od, block, resolve_block, where))
    program.meta = ProgramMeta.from_items((a.name, decode_value(a, resolve_block)) for a in desc.meta)
    program._bump()
    return program


def _var_from_desc(d: VarDesc, block: Block, where: str) -> Variable:
    dtype = dtype_from_proto(d.dtype)
    if dtype is None:
        raise InvalidArgumentError(f"{where}: variable '{d.name}' has unknown dtype code {d.dtype}")
    common = dict(lod_level=d.lod_level, type=d.type or "lod_tensor", is_data=d.is_data)
    if d.is_parameter:
        var: Variable = Parameter(block, d.name, list(d.shape), dtype.name, trainable=d.trainable,
                                  optimize_attr={"learning_rate": d.learning_rate}, **common)
    else:
        var = Variable(block, d.name, list(d.shape), dtype.name, **common)
    var.persistable, var.stop_gradient = d.persistable, d.stop_gradient
    return var


def _op_from_desc(d: OpDesc, block: Block, resolve_block: Callable[[int], Block], where: str) -> Operator:
    try:
        get_op_def(d.type)
    except NotFoundError:
        raise NotFoundError(f"{where}: the program uses op type '{d.type}', which this fleetkit does "
                            f"not have") from None
    attrs = {a.name: decode_value(a, resolve_block) for a in d.attrs}
    return Operator(block, d.type, {s.slot: list(s.names) for s in d.inputs},
                    {s.slot: list(s.names) for s in d.outputs}, attrs)


def serialize_program(program: Program, feed_target_names: Sequence[str] = (),
                      fetch_target_names: Sequence[str] = (), with_meta: bool = False) -> bytes:
    """``program_to_desc(...)`` as bytes."""
    return program_to_desc(program, feed_target_names, fetch_target_names, with_meta).SerializeToString()


def parse_program_desc(data: bytes, where: str = "ProgramDesc") -> ProgramDesc:
    desc = ProgramDesc()
    try:
        desc.ParseFromString(data)
    except DecodeError as e:
        raise InvalidArgumentError(f"{where}: not a valid ProgramDesc ({e})") from None
    return desc


def deserialize_program(data: bytes, where: str = "ProgramDesc") -> Program:
    """Program from ``serialize_program`` bytes."""
    return program_from_desc(parse_program_desc(data, where), where)
