"""Wire and disk formats: protobuf messages (package ``fleetkit.proto``) and codecs.

- ``framework_pb2``: ``ProgramDesc``/``BlockDesc``/``VarDesc``/``OpDesc``/``Attr``/``TensorDesc``,
  generated from ``framework.proto`` by ``scripts/gen_proto.sh`` (never edit it by hand).
- ``codec``: Python attribute values <-> ``Attr``, dtype names <-> ``DataType``, and the
  binary tensor layout of parameter files (``docs/formats.md``).

Nothing here imports ``fleetkit.core``; program <-> ``ProgramDesc`` conversion lives in
``fleetkit.core.io``.
"""
from . import codec, framework_pb2  # noqa: F401

__all__ = ["codec", "framework_pb2"]
