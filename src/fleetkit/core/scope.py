"""Runtime values: dense arrays, LoD tensors, SelectedRows, and the Scope holding them.

A scope maps variable names to values.  Plain dense tensors are stored as bare
arrays (numpy or cupy) so kernels pay nothing for wrapping; only values that carry
extra structure use the classes below.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import InvalidArgumentError, NotFoundError
from .backend import get_array_module, scatter_add, sum_by_index, to_numpy


def lengths_to_offsets(lengths: Sequence[int]) -> list[int]:
    out = [0]
    for n in lengths:
        out.append(out[-1] + int(n))
    return out


class LoDTensor:
    """Values plus level-of-detail offsets for variable-length sequences.

    ``lod`` is a list of levels; each level is a list of offsets starting at 0,
    e.g. ``[[0, 2, 5]]`` means two sequences: rows 0-1 and rows 2-4.

    Inside the engine a level may also be a 1-D int64 numpy array: the dataset's batches
    carry their offsets as array views (no per-batch Python list of every offset), and
    kernels pass them on as they are.  Only that code makes array levels (the constructor
    and ``set_lod`` keep lists); ``lod()`` and the other accessors always return lists.
    """

    __slots__ = ("values", "_lod")

    def __init__(self, values: Any = None, lod: Sequence[Sequence[int]] | None = None) -> None:
        self.values = values
        self._lod: list[list[int]] = [list(map(int, lv)) for lv in (lod or [])]

    @classmethod
    def _of(cls, values: Any, lod: list[list[int]]) -> "LoDTensor":
        """A LoDTensor sharing ``lod``, a list of lists of Python ints already checked (the
        constructor's per-offset ``int()`` is most of a feed's cost at CTR batch sizes)."""
        t = cls.__new__(cls)
        t.values, t._lod = values, lod
        return t

    # fluid-compatible accessors
    def lod(self) -> list[list[int]]:
        return lod_lists(self._lod)

    def set_lod(self, lod: Sequence[Sequence[int]]) -> None:
        self._lod = [list(map(int, lv)) for lv in lod]

    def recursive_sequence_lengths(self) -> list[list[int]]:
        return [[b - a for a, b in zip(lv, lv[1:])] for lv in lod_lists(self._lod)]

    def set_recursive_sequence_lengths(self, lengths: Sequence[Sequence[int]]) -> None:
        self._lod = [lengths_to_offsets(lv) for lv in lengths]

    def set(self, array: Any, place: Any = None) -> None:
        self.values = place.to_device(array) if place is not None else np.asarray(array)

    def shape(self) -> list[int]:
        return list(self.values.shape)

    def has_valid_recursive_sequence_lengths(self) -> bool:
        return check_lod(self._lod, len(self.values)) is None

    # fluid 1.4's element accessors (flat index), which its model-zoo scripts use to read
    # a fetched metric: ``acc = fetched[1]._get_float_element(0)``
    def _get_float_element(self, index: int) -> float:
        return float(self.values[self._element(index)])

    def _set_float_element(self, index: int, value: float) -> None:
        self.values[self._element(index)] = value

    _get_double_element = _get_float_element
    _set_double_element = _set_float_element

    def _element(self, index: int) -> tuple[int, ...]:
        size = int(np.prod(self.values.shape)) if self.values is not None else 0
        if not -size <= int(index) < size:
            raise InvalidArgumentError(f"LoDTensor element {index} is out of range: the tensor has {size} "
                                       f"elements (shape {None if self.values is None else list(self.values.shape)})")
        return tuple(int(i) for i in np.unravel_index(int(index) % size, self.values.shape))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = to_numpy(self.values)
        return a.astype(dtype) if dtype is not None else a

    def __repr__(self) -> str:
        return f"LoDTensor(shape={None if self.values is None else tuple(self.values.shape)}, lod={self.lod()})"


def lod_lists(lod: Sequence[Sequence[int]]) -> list[list[int]]:
    """``lod`` with every level a fresh list of Python ints (array levels converted)."""
    return [lv.tolist() if isinstance(lv, np.ndarray) else list(lv) for lv in lod]


def check_lod(lod: Sequence[Sequence[int]], nrows: int) -> str | None:
    """Return why ``lod`` does not fit ``nrows`` rows, or None if it fits."""
    expect = nrows
    for depth in range(len(lod) - 1, -1, -1):
        lv = lod[depth]
        if isinstance(lv, np.ndarray):
            # offsets the dataset built from parsed lengths (never a user's): start and end are
            # checked; their order holds by construction (cumulative sums of non-negative
            # lengths), and checking it would cost 40 us per CTR batch (the sequence kernels
            # still refuse negative lengths)
            if lv.ndim != 1 or not lv.size or lv[0] != 0:
                return f"level {depth} offsets {lv.tolist()} must start at 0"
        else:
            lv = lv if type(lv) is list else list(lv)
            if not lv or lv[0] != 0:
                return f"level {depth} offsets {lv} must start at 0"
            if lv != sorted(lv):  # C-speed on the already sorted lists that are the rule
                return f"level {depth} offsets {lv} must be non-decreasing"
        if lv[-1] != expect:
            what = f"{nrows} rows" if depth == len(lod) - 1 else f"{expect} sequences of level {depth + 1}"
            return f"level {depth} ends at {int(lv[-1])} but the tensor has {what}"
        expect = len(lv) - 1
    return None


class SelectedRows:
    """A sparse row slice of a ``height`` x width tensor: ``values[i]`` is row ``rows[i]``.

    Rows may repeat (gradients of a repeated id); consumers sum duplicates.
    """

    __slots__ = ("rows", "values", "height")

    def __init__(self, rows: Any = None, values: Any = None, height: int = 0) -> None:
        self.rows = np.asarray(rows if rows is not None else [], dtype=np.int64)
        self.values = values
        self.height = int(height)

    def to_dense(self) -> Any:
        xp = get_array_module(self.values)
        out = xp.zeros((self.height,) + tuple(self.values.shape[1:]), dtype=self.values.dtype)
        scatter_add(out, self.rows, self.values)
        return out

    def merged(self) -> "SelectedRows":
        """Equivalent SelectedRows with unique, sorted rows (duplicates summed)."""
        rows = self.rows
        if rows.size < 2 or bool((rows[1:] > rows[:-1]).all()):
            return self
        if isinstance(self.values, np.ndarray):
            uniq, vals = sum_by_index(rows, self.values)
            return SelectedRows(uniq, vals, self.height)
        uniq, inv = np.unique(rows, return_inverse=True)
        xp = get_array_module(self.values)
        vals = xp.zeros((len(uniq),) + tuple(self.values.shape[1:]), dtype=self.values.dtype)
        scatter_add(vals, inv, self.values)
        return SelectedRows(uniq, vals, self.height)

    # fluid-compatible accessors
    def get_tensor(self) -> Any:
        return self.values

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = to_numpy(self.to_dense())
        return a.astype(dtype) if dtype is not None else a

    def __repr__(self) -> str:
        return f"SelectedRows(rows={self.rows.tolist()[:8]}..., height={self.height})"


def raw_values(v: Any) -> Any:
    """The dense array inside a value (LoDTensor unwrapped; arrays as is)."""
    return v.values if isinstance(v, LoDTensor) else v


class ScopeVariable:
    """Handle returned by ``Scope.var``/``find_var`` (fluid's ``Variable`` in a scope)."""

    def __init__(self, scope: "Scope", name: str) -> None:
        self._scope, self.name = scope, name

    def get_tensor(self) -> LoDTensor:
        """The value as a LoDTensor; ``set`` on it writes back into the scope."""
        v = self._scope._vars.get(self.name)
        if isinstance(v, LoDTensor):
            return v
        if isinstance(v, SelectedRows):
            raise InvalidArgumentError(f"variable '{self.name}' holds SelectedRows; use get_selected_rows()")
        t = LoDTensor(v)
        self._scope._vars[self.name] = t  # later writes through t land in the scope
        return t

    def get_selected_rows(self) -> SelectedRows:
        v = self._scope._vars.get(self.name)
        if not isinstance(v, SelectedRows):
            v = SelectedRows()
            self._scope._vars[self.name] = v
        return v

    def value(self) -> Any:
        return self._scope._vars.get(self.name)


class Scope:
    """Names to runtime values.  Child scopes read through to their parent."""

    def __init__(self, parent: "Scope | None" = None) -> None:
        self._vars: dict[str, Any] = {}
        self.parent = parent

    @classmethod
    def over(cls, values: dict[str, Any]) -> "Scope":
        """A scope whose variables are ``values`` itself, not a copy: what runs in the
        scope reads and writes that dict (the pserver serves the dict its startup filled)."""
        scope = cls()
        scope._vars = values
        return scope

    def var(self, name: str) -> ScopeVariable:
        self._vars.setdefault(name, None)
        return ScopeVariable(self, name)

    def find_var(self, name: str) -> ScopeVariable | None:
        s: Scope | None = self
        while s is not None:
            if name in s._vars:
                return ScopeVariable(s, name)
            s = s.parent
        return None

    def new_scope(self) -> "Scope":
        return Scope(self)

    def drop_kids(self) -> None:
        pass

    def local_var_names(self) -> list[str]:
        return list(self._vars)

    # convenience used across fleetkit
    def get(self, name: str) -> Any:
        s: Scope | None = self
        while s is not None:
            if name in s._vars:
                return s._vars[name]
            s = s.parent
        raise NotFoundError(f"variable '{name}' is not in the scope (not fed, not initialized by the startup program?)")

    def set(self, name: str, value: Any) -> None:
        self._vars[name] = value

    def __contains__(self, name: str) -> bool:
        return self.find_var(name) is not None

    def numpy(self, name: str) -> np.ndarray:
        """The value of ``name`` as a host numpy array (dense view of SelectedRows)."""
        v = self.get(name)
        return to_numpy(v.to_dense() if isinstance(v, SelectedRows) else raw_values(v))


_global_scope = Scope()


def global_scope() -> Scope:
    return _global_scope


@contextlib.contextmanager
def scope_guard(scope: Scope) -> Iterator[None]:
    """Make ``scope`` the global scope inside the block."""
    global _global_scope
    old, _global_scope = _global_scope, scope
    try:
        yield
    finally:
        _global_scope = old


def create_lod_tensor(data: Any, recursive_seq_lens: Sequence[Sequence[int]], place: Any = None) -> LoDTensor:
    """Build a LoDTensor from an array (or list of sequences) and sequence lengths.

    ``data`` may be a numpy array whose first dim is the total length, or a list
    of per-sequence lists (which are flattened into a column of int64).
    """
    if isinstance(data, LoDTensor):
        data = data.values
    if isinstance(data, list):
        flat = [x for seq in data for x in (seq if isinstance(seq, (list, tuple)) else [seq])]
        arr = np.asarray(flat, dtype=np.int64).reshape(-1, 1)
    else:
        arr = np.asarray(data)
    offsets = [lengths_to_offsets(lv) for lv in recursive_seq_lens]
    why = check_lod(offsets, len(arr))
    if why:
        raise InvalidArgumentError(
            f"create_lod_tensor: sequence lengths {list(map(list, recursive_seq_lens))} do not match data "
            f"with {len(arr)} rows: {why}")
    t = LoDTensor(arr if place is None else place.to_device(arr), offsets)
    return t
