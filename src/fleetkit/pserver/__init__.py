"""Parameter-server runtime: wire codec, sharding, sparse tables, checkpoints, the gRPC
client (trainer side) and server (pserver side).  See docs/ps_design.md.

Layering: ``codec``, ``sharding``, ``tables``, ``checkpoint`` and ``rounds`` are plain
numpy/logic (no gRPC); ``rpc``, ``client`` and ``server`` are the thin transport.
Other packages import from ``fleetkit.pserver.api`` (the interface file: the plan,
sharding, program builder, server, client, checkpoints); its gRPC names load on first
use, so importing the package or building programs does not load gRPC.
"""
__all__ = ["api", "checkpoint", "client", "codec", "plan", "program_builder", "rounds", "rpc", "server",
           "sharding", "tables"]
