"""What later stages need to know about how a program was rewritten, as typed fields.

Each field has one writer and at least one reader; a program saved with
``with_meta=True`` carries the fields that differ from their defaults (one desc
attribute each, named as the field), so a saved pserver program still knows
where its variables come from.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any, Iterable, Iterator


@dataclass
class ProgramMeta:
    #: pserver programs (``pserver/program_builder.py``): hosted variable -> [origin variable,
    #: first row, rows (-1: the whole variable), optimize block]; None on every other program
    origin_of: dict[str, list] | None = None
    #: ``DistributedStrategy.check_nan_inf``: this program runs as under ``FLAGS_check_nan_inf``
    check_nan_inf: bool = False
    #: ``memory_optimize`` / ``release_memory``: free intermediates after their last use ...
    eager_delete: bool = False
    #: ... except these variables
    eager_delete_skip: tuple[str, ...] = ()
    #: ``DistributeTranspiler`` in nccl2 mode (``fleet/transpiler_nccl2.py``): the gradients are
    #: all-reduced over this many trainers (0: not transpiled); ParallelExecutor and
    #: ``CompiledProgram.with_data_parallel`` accept ``num_trainers`` > 1 only when it matches
    nccl2_trainers: int = 0
    #: ... and this process is that trainer
    nccl2_trainer_id: int = 0

    def items(self) -> Iterator[tuple[str, Any]]:
        """(field, value) for each field not at its default: what a saved program stores."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                yield f.name, list(value) if isinstance(value, tuple) else value

    @classmethod
    def from_items(cls, items: Iterable[tuple[str, Any]]) -> "ProgramMeta":
        """The meta of a loaded program; keys this version does not know are dropped (programs
        saved by older versions also recorded facts that nothing read)."""
        known = {f.name for f in fields(cls)}
        meta = cls()
        for name, value in items:
            if name in known:
                setattr(meta, name, tuple(value) if name == "eager_delete_skip" else value)
        return meta

    def copy(self) -> "ProgramMeta":
        return copy.deepcopy(self)
