from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DT_UNSPECIFIED: _ClassVar[DataType]
    DT_BOOL: _ClassVar[DataType]
    DT_INT8: _ClassVar[DataType]
    DT_UINT8: _ClassVar[DataType]
    DT_INT16: _ClassVar[DataType]
    DT_UINT16: _ClassVar[DataType]
    DT_INT32: _ClassVar[DataType]
    DT_UINT32: _ClassVar[DataType]
    DT_INT64: _ClassVar[DataType]
    DT_UINT64: _ClassVar[DataType]
    DT_FP16: _ClassVar[DataType]
    DT_FP32: _ClassVar[DataType]
    DT_FP64: _ClassVar[DataType]
    DT_COMPLEX64: _ClassVar[DataType]
    DT_COMPLEX128: _ClassVar[DataType]
DT_UNSPECIFIED: DataType
DT_BOOL: DataType
DT_INT8: DataType
DT_UINT8: DataType
DT_INT16: DataType
DT_UINT16: DataType
DT_INT32: DataType
DT_UINT32: DataType
DT_INT64: DataType
DT_UINT64: DataType
DT_FP16: DataType
DT_FP32: DataType
DT_FP64: DataType
DT_COMPLEX64: DataType
DT_COMPLEX128: DataType

class TensorDesc(_message.Message):
    __slots__ = ("dtype", "dims")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    dtype: DataType
    dims: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dtype: _Optional[_Union[DataType, str]] = ..., dims: _Optional[_Iterable[int]] = ...) -> None: ...

class Ints(_message.Message):
    __slots__ = ("v",)
    V_FIELD_NUMBER: _ClassVar[int]
    v: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, v: _Optional[_Iterable[int]] = ...) -> None: ...

class Floats(_message.Message):
    __slots__ = ("v",)
    V_FIELD_NUMBER: _ClassVar[int]
    v: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, v: _Optional[_Iterable[float]] = ...) -> None: ...

class Strings(_message.Message):
    __slots__ = ("v",)
    V_FIELD_NUMBER: _ClassVar[int]
    v: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, v: _Optional[_Iterable[str]] = ...) -> None: ...

class Bools(_message.Message):
    __slots__ = ("v",)
    V_FIELD_NUMBER: _ClassVar[int]
    v: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, v: _Optional[_Iterable[bool]] = ...) -> None: ...

class Null(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AttrList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Attr]
    def __init__(self, items: _Optional[_Iterable[_Union[Attr, _Mapping]]] = ...) -> None: ...

class AttrMap(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Attr]
    def __init__(self, entries: _Optional[_Iterable[_Union[Attr, _Mapping]]] = ...) -> None: ...

class Attr(_message.Message):
    __slots__ = ("name", "i", "f", "s", "b", "ints", "floats", "strings", "bools", "none", "block_idx", "list", "map")
    NAME_FIELD_NUMBER: _ClassVar[int]
    I_FIELD_NUMBER: _ClassVar[int]
    F_FIELD_NUMBER: _ClassVar[int]
    S_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    INTS_FIELD_NUMBER: _ClassVar[int]
    FLOATS_FIELD_NUMBER: _ClassVar[int]
    STRINGS_FIELD_NUMBER: _ClassVar[int]
    BOOLS_FIELD_NUMBER: _ClassVar[int]
    NONE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_IDX_FIELD_NUMBER: _ClassVar[int]
    LIST_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    name: str
    i: int
    f: float
    s: str
    b: bool
    ints: Ints
    floats: Floats
    strings: Strings
    bools: Bools
    none: Null
    block_idx: int
    list: AttrList
    map: AttrMap
    def __init__(self, name: _Optional[str] = ..., i: _Optional[int] = ..., f: _Optional[float] = ..., s: _Optional[str] = ..., b: _Optional[bool] = ..., ints: _Optional[_Union[Ints, _Mapping]] = ..., floats: _Optional[_Union[Floats, _Mapping]] = ..., strings: _Optional[_Union[Strings, _Mapping]] = ..., bools: _Optional[_Union[Bools, _Mapping]] = ..., none: _Optional[_Union[Null, _Mapping]] = ..., block_idx: _Optional[int] = ..., list: _Optional[_Union[AttrList, _Mapping]] = ..., map: _Optional[_Union[AttrMap, _Mapping]] = ...) -> None: ...

class VarDesc(_message.Message):
    __slots__ = ("name", "type", "dtype", "shape", "lod_level", "persistable", "stop_gradient", "is_data", "is_parameter", "trainable", "learning_rate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    LOD_LEVEL_FIELD_NUMBER: _ClassVar[int]
    PERSISTABLE_FIELD_NUMBER: _ClassVar[int]
    STOP_GRADIENT_FIELD_NUMBER: _ClassVar[int]
    IS_DATA_FIELD_NUMBER: _ClassVar[int]
    IS_PARAMETER_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    lod_level: int
    persistable: bool
    stop_gradient: bool
    is_data: bool
    is_parameter: bool
    trainable: bool
    learning_rate: float
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., lod_level: _Optional[int] = ..., persistable: _Optional[bool] = ..., stop_gradient: _Optional[bool] = ..., is_data: _Optional[bool] = ..., is_parameter: _Optional[bool] = ..., trainable: _Optional[bool] = ..., learning_rate: _Optional[float] = ...) -> None: ...

class OpDesc(_message.Message):
    __slots__ = ("type", "inputs", "outputs", "attrs")
    class Slot(_message.Message):
        __slots__ = ("slot", "names")
        SLOT_FIELD_NUMBER: _ClassVar[int]
        NAMES_FIELD_NUMBER: _ClassVar[int]
        slot: str
        names: _containers.RepeatedScalarFieldContainer[str]
        def __init__(self, slot: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ATTRS_FIELD_NUMBER: _ClassVar[int]
    type: str
    inputs: _containers.RepeatedCompositeFieldContainer[OpDesc.Slot]
    outputs: _containers.RepeatedCompositeFieldContainer[OpDesc.Slot]
    attrs: _containers.RepeatedCompositeFieldContainer[Attr]
    def __init__(self, type: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[OpDesc.Slot, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[OpDesc.Slot, _Mapping]]] = ..., attrs: _Optional[_Iterable[_Union[Attr, _Mapping]]] = ...) -> None: ...

class BlockDesc(_message.Message):
    __slots__ = ("idx", "parent_idx", "vars", "ops")
    IDX_FIELD_NUMBER: _ClassVar[int]
    PARENT_IDX_FIELD_NUMBER: _ClassVar[int]
    VARS_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    idx: int
    parent_idx: int
    vars: _containers.RepeatedCompositeFieldContainer[VarDesc]
    ops: _containers.RepeatedCompositeFieldContainer[OpDesc]
    def __init__(self, idx: _Optional[int] = ..., parent_idx: _Optional[int] = ..., vars: _Optional[_Iterable[_Union[VarDesc, _Mapping]]] = ..., ops: _Optional[_Iterable[_Union[OpDesc, _Mapping]]] = ...) -> None: ...

class ProgramDesc(_message.Message):
    __slots__ = ("version", "blocks", "random_seed", "is_test", "feed_target_names", "fetch_target_names", "meta")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    RANDOM_SEED_FIELD_NUMBER: _ClassVar[int]
    IS_TEST_FIELD_NUMBER: _ClassVar[int]
    FEED_TARGET_NAMES_FIELD_NUMBER: _ClassVar[int]
    FETCH_TARGET_NAMES_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    version: int
    blocks: _containers.RepeatedCompositeFieldContainer[BlockDesc]
    random_seed: int
    is_test: bool
    feed_target_names: _containers.RepeatedScalarFieldContainer[str]
    fetch_target_names: _containers.RepeatedScalarFieldContainer[str]
    meta: _containers.RepeatedCompositeFieldContainer[Attr]
    def __init__(self, version: _Optional[int] = ..., blocks: _Optional[_Iterable[_Union[BlockDesc, _Mapping]]] = ..., random_seed: _Optional[int] = ..., is_test: _Optional[bool] = ..., feed_target_names: _Optional[_Iterable[str]] = ..., fetch_target_names: _Optional[_Iterable[str]] = ..., meta: _Optional[_Iterable[_Union[Attr, _Mapping]]] = ...) -> None: ...
