"""Parameter-server runtime: wire codec, sharding, sparse tables, checkpoints, the gRPC
client (trainer side) and server (pserver side).  See docs/ps_design.md.

Layering: ``codec``, ``sharding``, ``tables``, ``checkpoint`` and ``rounds`` are plain
numpy/logic (no gRPC); ``rpc``, ``client`` and ``server`` are the thin transport.
Submodules are imported lazily by callers (``from fleetkit.pserver import client``) so
importing the package does not load gRPC.
"""
__all__ = ["checkpoint", "client", "codec", "rounds", "rpc", "server", "sharding", "tables"]
