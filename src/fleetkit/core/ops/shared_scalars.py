"""The lock around one-value optimizer state (Adam's beta powers, step counters) that
Hogwild worker *processes* update together.

Worker processes (``core/trainer_procs.py``) share these values in memory and update
them in place; two cores multiplying or incrementing one float at the same instant
can lose one of the writes (a step counted once for two).  The held section is one
tiny ufunc, so the lock costs nothing measurable.  Threads need none: the
interpreter lock is held through a one-element ufunc, and outside a Hogwild
process run this is a no-op context.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["held", "use"]

_lock: Any = contextlib.nullcontext()


def held() -> Any:
    """The context to update a shared one-value state in."""
    return _lock


@contextlib.contextmanager
def use(lock: Any) -> Iterator[None]:
    """Make ``lock`` (a multiprocessing lock made before the fork) the one ``held`` returns."""
    global _lock
    previous, _lock = _lock, lock
    try:
        yield
    finally:
        _lock = previous
