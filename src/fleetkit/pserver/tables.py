"""Sparse embedding tables for huge id spaces (pure numpy, no transport).

A :class:`SparseTable` creates a row the first time an id is looked up or updated,
so its memory is proportional to the rows touched: a 10^9-id table costs nothing
until used.  Ids map to row slots through :class:`IdIndex`, an open-addressing hash
table whose lookups and inserts are vectorized over a whole batch of ids (a Python
dict would cost a Python call per id).

New rows are initialised as a pure function of (seed, id, column) with a counter-based
generator, so every process (and a test building the expected table locally) gets the
same initial row for an id, whatever order ids were first touched in.  Each row keeps
its own optimizer state (SGD, Adagrad, lazy Adam); the rules match the dense update
kernels in ``fleetkit.core.ops.optimizer`` row for row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.backend import sum_by_index
from ..core.scope import SelectedRows
from ..errors import InvalidArgumentError

__all__ = ["IdIndex", "Initializer", "RowOptimizer", "SparseTable", "initial_rows"]

_EMPTY = np.int64(np.iinfo(np.int64).min)   # never a valid id: ids are >= 0
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class IdIndex:
    """id -> dense slot (0, 1, 2... in order of first insertion), vectorized."""

    def __init__(self, capacity: int = 1024) -> None:
        cap = 1 << max(4, int(capacity - 1).bit_length())
        self._keys = np.full(cap, _EMPTY, dtype=np.int64)
        self._slots = np.zeros(cap, dtype=np.int64)
        self.size = 0

    @property
    def nbytes(self) -> int:
        return self._keys.nbytes + self._slots.nbytes

    def _home(self, ids: np.ndarray) -> np.ndarray:
        bits = np.uint64(64 - (len(self._keys).bit_length() - 1))
        return ((ids.astype(np.uint64) * _GOLDEN) >> bits).astype(np.int64)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each id, -1 where absent."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.full(len(ids), -1, dtype=np.int64)
        mask = len(self._keys) - 1
        pos, todo = self._home(ids), np.arange(len(ids))
        while len(todo):
            keys = self._keys[pos]
            hit = keys == ids[todo]
            out[todo[hit]] = self._slots[pos[hit]]
            go_on = ~hit & (keys != _EMPTY)           # occupied by another id: probe on
            todo, pos = todo[go_on], (pos[go_on] + 1) & mask
        return out

    def insert(self, new_ids: np.ndarray) -> np.ndarray:
        """Insert ids known to be absent and distinct; returns their new slots."""
        new_ids = np.asarray(new_ids, dtype=np.int64).reshape(-1)
        if (self.size + len(new_ids)) * 2 > len(self._keys):
            self._grow(self.size + len(new_ids))
        slots = np.arange(self.size, self.size + len(new_ids), dtype=np.int64)
        self._place(new_ids, slots)
        self.size += len(new_ids)
        return slots

    def _place(self, ids: np.ndarray, slots: np.ndarray) -> None:
        mask = len(self._keys) - 1
        pos = self._home(ids)
        while len(ids):
            free = np.flatnonzero(self._keys[pos] == _EMPTY)
            # ids aiming at the same free cell all write it; one value survives, and
            # since ids are distinct exactly that id reads itself back: it won the cell
            self._keys[pos[free]] = ids[free]
            won = np.zeros(len(ids), dtype=bool)
            won[free] = self._keys[pos[free]] == ids[free]
            self._slots[pos[won]] = slots[won]
            lost = ~won
            ids, slots, pos = ids[lost], slots[lost], (pos[lost] + 1) & mask

    def _grow(self, need: int) -> None:
        live = self._keys != _EMPTY
        ids, slots = self._keys[live], self._slots[live]
        cap = len(self._keys)
        while need * 2 > cap:
            cap *= 2
        self._keys = np.full(cap, _EMPTY, dtype=np.int64)
        self._slots = np.zeros(cap, dtype=np.int64)
        self._place(ids, slots)

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, slots) of every entry, ordered by slot."""
        live = self._keys != _EMPTY
        ids, slots = self._keys[live], self._slots[live]
        order = np.argsort(slots, kind="stable")
        return ids[order], slots[order]


@dataclass(frozen=True)
class Initializer:
    """How new rows are filled: ``kind`` is "uniform" [low, high), "normal"
    (mean, std) or "constant" (value); ``seed`` makes rows differ between tables."""

    kind: str = "uniform"
    low: float = -0.05
    high: float = 0.05
    mean: float = 0.0
    std: float = 0.01
    value: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("uniform", "normal", "constant"):
            raise InvalidArgumentError(f"Initializer.kind={self.kind!r}: use uniform, normal or constant")


def initial_rows(ids: np.ndarray, dim: int, init: Initializer, dtype: Any = np.float32) -> np.ndarray:
    """The initial values of rows ``ids`` (shape [len(ids), dim]); a pure function of
    (init.seed, id, column), so any process can rebuild them."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if init.kind == "constant":
        return np.full((len(ids), dim), init.value, dtype=dtype)
    # 1-element arrays, not scalars: numpy warns on wrapping scalar uint64 math, not on arrays
    seed = _mix64(np.array([init.seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) + _GOLDEN)
    counter = ids.astype(np.uint64)[:, None] * np.uint64(dim) + np.arange(dim, dtype=np.uint64)[None, :]
    u1 = ((_mix64(counter ^ seed) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53
    if init.kind == "uniform":
        return (init.low + (init.high - init.low) * u1).astype(dtype)
    u2 = ((_mix64(counter ^ _mix64(seed + _GOLDEN)) >> np.uint64(11)).astype(np.float64)) * 2.0 ** -53
    normal = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)   # Box-Muller
    return (init.mean + init.std * normal).astype(dtype)


@dataclass(frozen=True)
class RowOptimizer:
    """Per-row update rule: "sgd", "adagrad" or "adam" (lazy: only touched rows move;
    the beta powers are per table and advance once per ``apply``, like one adam op)."""

    kind: str = "sgd"
    learning_rate: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float | None = None      # None: 1e-8 for adam, 1e-6 for adagrad (the op defaults)
    initial_accumulator: float = 0.0  # adagrad's starting Moment

    def __post_init__(self) -> None:
        if self.kind not in ("sgd", "adagrad", "adam"):
            raise InvalidArgumentError(f"RowOptimizer.kind={self.kind!r}: use sgd, adagrad or adam")

    @property
    def slots(self) -> tuple[str, ...]:
        return {"sgd": (), "adagrad": ("Moment",), "adam": ("Moment1", "Moment2")}[self.kind]

    @property
    def eps(self) -> float:
        return self.epsilon if self.epsilon is not None else (1e-8 if self.kind == "adam" else 1e-6)


class SparseTable:
    """Rows of a ``dim``-wide embedding created on first touch, with per-row optimizer state."""

    def __init__(self, name: str, dim: int, initializer: Initializer | None = None,
                 optimizer: RowOptimizer | None = None, dtype: Any = np.float32) -> None:
        if dim < 1:
            raise InvalidArgumentError(f"SparseTable '{name}': dim must be >= 1, got {dim}")
        self.name, self.dim, self.dtype = name, int(dim), np.dtype(dtype)
        self.init = initializer or Initializer()
        self.opt = optimizer or RowOptimizer()
        self._index = IdIndex()
        self._values = np.empty((0, self.dim), dtype=self.dtype)
        self._acc: dict[str, np.ndarray] = {s: np.empty((0, self.dim), self.dtype) for s in self.opt.slots}
        self._seen = np.empty(0, dtype=np.int64)   # scratch of _distinct, one entry per row slot
        self.beta_pows = np.array([self.opt.beta1, self.opt.beta2], dtype=np.float32)

    def __len__(self) -> int:
        return self._index.size

    def memory_bytes(self) -> int:
        """Bytes held by rows, optimizer state, the id index and its scratch (grows with touched rows only)."""
        return (self._index.nbytes + self._values.nbytes + self._seen.nbytes
                + sum(a.nbytes for a in self._acc.values()))

    def initial_rows(self, ids: np.ndarray) -> np.ndarray:
        """What rows ``ids`` hold before any update (see module docstring)."""
        return initial_rows(ids, self.dim, self.init, self.dtype)

    def _check_ids(self, ids: Any) -> np.ndarray:
        ids = np.asarray(ids).reshape(-1)
        if ids.dtype.kind not in "iu":
            raise InvalidArgumentError(f"table '{self.name}': ids must be integers, got {ids.dtype}")
        ids = ids.astype(np.int64, copy=False)
        if len(ids) and ids.min() < 0:
            raise InvalidArgumentError(f"table '{self.name}': negative id {int(ids.min())}")
        return ids

    def slots_of(self, ids: Any, create: bool = True) -> np.ndarray:
        """Row slots of ``ids``; absent ids get new rows (or -1 when ``create`` is False)."""
        ids = self._check_ids(ids)
        slots = self._index.lookup(ids)
        missing = slots < 0
        if create and missing.any():
            new_ids, inv = np.unique(ids[missing], return_inverse=True)
            new_slots = self._index.insert(new_ids)
            self._reserve(self._index.size)
            self._values[new_slots] = self.initial_rows(new_ids)
            for name, acc in self._acc.items():
                acc[new_slots] = self.opt.initial_accumulator if name == "Moment" else 0
            slots[missing] = new_slots[inv]
        return slots

    def _reserve(self, n: int) -> None:
        cap = len(self._values)
        if n <= cap:
            return
        cap = max(n, 2 * cap, 64)
        self._values = _resized(self._values, cap)
        self._acc = {k: _resized(a, cap) for k, a in self._acc.items()}
        self._seen = np.empty(cap, dtype=np.int64)

    def _distinct(self, slots: np.ndarray, grads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distinct slots, each one's summed gradient rows).  A trainer sends each id once
        (it merges its gradient rows first), so the sum is usually a no-op: that is checked
        with one scatter and one gather through ``_seen`` (one int per row slot, reused)
        instead of a sort; repeated slots are summed in their original order."""
        n = len(slots)
        if n > 1:
            order = np.arange(n)
            self._seen[slots] = order            # a repeated slot keeps its last position
            if not np.array_equal(self._seen[slots], order):
                return sum_by_index(slots, grads)
        return slots, grads

    def lookup(self, ids: Any) -> np.ndarray:
        """Rows of ``ids`` (a copy, shape [len(ids), dim]); creates untouched rows."""
        slots = self.slots_of(ids)   # first: it may reallocate self._values
        return self._values[slots]

    def apply_gradient(self, ids: Any, grads: Any = None, learning_rate: float | None = None) -> None:
        """One optimizer step on the rows in ``ids`` (repeated ids are summed first).

        ``ids`` may be a SelectedRows (then ``grads`` is omitted); ``learning_rate``
        overrides the configured one (e.g. from a schedule).
        """
        if isinstance(ids, SelectedRows):
            ids, grads = ids.rows, ids.values
        ids = self._check_ids(ids)
        grads = np.asarray(grads).reshape(len(ids), self.dim).astype(self.dtype, copy=False)
        slots, g = self._distinct(self.slots_of(ids), grads)
        lr = self.opt.learning_rate if learning_rate is None else float(learning_rate)
        p = self._values[slots]
        kind = self.opt.kind
        if kind == "sgd":
            p -= lr * g
        elif kind == "adagrad":
            m = self._acc["Moment"][slots]
            m += g * g
            p -= lr * g / (np.sqrt(m) + self.opt.eps)
            self._acc["Moment"][slots] = m
        else:
            b1, b2 = self.opt.beta1, self.opt.beta2
            m1, m2 = self._acc["Moment1"][slots], self._acc["Moment2"][slots]
            m1 *= b1
            m1 += (1 - b1) * g
            m2 *= b2
            m2 += (1 - b2) * (g * g)
            # float32 like the dense adam op, so sync PS matches local training bit for bit-ish
            lr_t = np.float32(lr) * np.sqrt(1 - self.beta_pows[1]) / (1 - self.beta_pows[0])
            p -= (lr_t * (m1 / (np.sqrt(m2) + self.opt.eps))).astype(self.dtype)
            self._acc["Moment1"][slots], self._acc["Moment2"][slots] = m1, m2
            self.beta_pows *= np.array((b1, b2), dtype=np.float32)
        self._values[slots] = p

    # ------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, np.ndarray]:
        """Arrays that fully describe the table: ``<name>@ids``, ``<name>`` rows, state."""
        ids, slots = self._index.items()
        out = {f"{self.name}@ids": ids, self.name: self._values[slots]}
        out.update({f"{self.name}@{k}": a[slots] for k, a in self._acc.items()})
        out[f"{self.name}@beta_pows"] = self.beta_pows.copy()
        return out

    def load_state(self, state: dict[str, Any]) -> None:
        """Replace the table's contents with ``state()`` output."""
        ids = self._check_ids(state[f"{self.name}@ids"])
        values = np.asarray(state[self.name], dtype=self.dtype).reshape(len(ids), self.dim)
        self._index = IdIndex(max(1024, 2 * len(ids)))
        self._values = np.empty((0, self.dim), self.dtype)
        self._acc = {k: np.empty((0, self.dim), self.dtype) for k in self.opt.slots}
        slots = self._index.insert(ids)
        self._reserve(len(ids))
        self._values[slots] = values
        for k, a in self._acc.items():
            saved = state.get(f"{self.name}@{k}")
            a[slots] = 0 if saved is None else np.asarray(saved).reshape(len(ids), self.dim)
        pows = state.get(f"{self.name}@beta_pows")
        self.beta_pows = np.array(pows if pows is not None else (self.opt.beta1, self.opt.beta2),
                                  dtype=np.float32).reshape(2)


def _resized(a: np.ndarray, rows: int) -> np.ndarray:
    out = np.empty((rows,) + a.shape[1:], dtype=a.dtype)
    out[:len(a)] = a
    return out
