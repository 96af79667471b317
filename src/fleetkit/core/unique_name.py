"""Unique name generation (``fc_0.w_0`` style), with a guard for fresh namespaces."""
from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Iterator


class UniqueNameGenerator:
    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.ids: defaultdict[str, int] = defaultdict(int)

    def __call__(self, key: str) -> str:
        n = self.ids[key]
        self.ids[key] += 1
        return f"{self.prefix}{key}_{n}"


_generator = UniqueNameGenerator()


def generate(key: str) -> str:
    """Return ``key_N`` with N unique in the current namespace."""
    return _generator(key)


def switch(new: UniqueNameGenerator | None = None) -> UniqueNameGenerator:
    global _generator
    old, _generator = _generator, (new or UniqueNameGenerator())
    return old


@contextlib.contextmanager
def guard(prefix: str | UniqueNameGenerator | None = None) -> Iterator[None]:
    """Use a fresh name namespace inside the block (same names in two builds)."""
    gen = prefix if isinstance(prefix, UniqueNameGenerator) else UniqueNameGenerator(prefix or "")
    old = switch(gen)
    try:
        yield
    finally:
        switch(old)
