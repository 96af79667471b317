"""Which module defines each op family that lives above ``core``.

Ops register themselves when their module is imported; core's own ops load with
``core.ops``, but ``send``/``recv``/``listen_and_serv`` (pserver), the ``c_*``
collectives, DGC and ``checkpoint_notify`` (fleet) are defined in packages core
must not import.  This table tells core's registry where they are, so a saved
program holding them loads in a process that imported only ``fleetkit``; the
module is imported on the first lookup of one of its ops.
tests/unit/test_op_providers.py checks the table against what each module registers.
"""
from .core.registry import register_op_provider

OP_PROVIDERS: dict[str, tuple[str, ...]] = {
    "fleetkit.pserver.ops": ("send", "send_barrier", "recv", "fetch_barrier", "distributed_lookup_table",
                             "listen_and_serv"),
    "fleetkit.collective.ops": ("c_allreduce_sum", "c_allreduce_max", "c_allreduce_min", "c_allreduce_prod",
                                "c_fused_allreduce_sum", "c_sync_comm_stream", "c_broadcast", "c_allgather",
                                "c_reducescatter", "c_barrier"),
    "fleetkit.collective.dgc": ("dgc", "dgc_momentum"),
    "fleetkit.fleet.checkpoint_notify": ("checkpoint_notify",),
}

for _module, _types in OP_PROVIDERS.items():
    register_op_provider(_module, _types)
