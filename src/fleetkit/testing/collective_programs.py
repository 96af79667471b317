"""Small programs of collective ops that several tests run (CPU and GPU, tcp and nccl)."""
from __future__ import annotations

from typing import Any

from ..core import layers
from ..core.framework import Program, Variable, program_guard

__all__ = ["collective_ops_program", "dgc_op_program"]


def collective_ops_program(root: int, nranks: int) -> tuple[Program, dict[str, Variable]]:
    """A program over ring 0 applying every c_* op to a [2, 3] float32 input "x".

    Returns the program and its outputs: "sum", "max", "min", "prod" (all-reduces),
    "bcast" (from ``root``), "gather" (all-gather of ``nranks`` ranks, after a barrier)
    and "async" (an all-reduce started early and completed by c_sync_comm_stream).
    """
    main = Program()
    block = main.global_block()
    with program_guard(main, Program()):
        x = layers.data("x", [2, 3], append_batch_size=False)
    outs = {}
    for kind in ("sum", "max", "min", "prod"):
        outs[kind] = block.create_var(name=f"r_{kind}")
        block.append_op(f"c_allreduce_{kind}", {"X": [x]}, {"Out": [outs[kind]]}, {"ring_id": 0})
    outs["bcast"] = block.create_var(name="b")
    block.append_op("c_broadcast", {"X": [x]}, {"Out": [outs["bcast"]]}, {"root": root})
    outs["gather"] = block.create_var(name="g")
    block.append_op("c_allgather", {"X": [x]}, {"Out": [outs["gather"]]}, {"nranks": nranks})
    block.append_op("c_barrier", {}, {})
    outs["async"] = block.create_var(name="a")
    block.append_op("c_allreduce_sum", {"X": [x]}, {"Out": [outs["async"]]}, {"use_calc_stream": False})
    block.append_op("c_sync_comm_stream", {"X": [outs["async"]]}, {"Out": [outs["async"]]})
    return main, outs


def dgc_op_program(n: int, **attrs: Any) -> Program:
    """One dgc op updating float32 vars "u", "v" (accumulators) and "g" (the gradient) of
    ``n`` elements in place, at step "step" ([1]); ``attrs`` are the op's attributes."""
    main = Program()
    block = main.global_block()
    for name, shape in (("u", [n]), ("v", [n]), ("g", [n]), ("step", [1])):
        block.create_var(name=name, shape=shape, dtype="float32")
    block.append_op("dgc", {"U": ["u"], "V": ["v"], "Grad": ["g"], "CurrentStep": ["step"]},
                    {"U_out": ["u"], "V_out": ["v"], "Grad_out": ["g"]}, attrs)
    return main
