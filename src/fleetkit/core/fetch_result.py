"""Fetched values that behave like fluid 1.4's under today's numpy.

fluid 1.4 ran on numpy 1.x, where ``float(a)``, ``int(a)`` and ``"%.3f" % a`` worked
on any array of one element, and 1.4 scripts rely on it for fetched losses
(``float(avg_loss_np)``, ``"%.3f" % loss`` with ``loss`` of shape ``[1]``). numpy
2.x only converts 0-d arrays. ``FetchArray`` is a plain ndarray (a view, no copy)
that converts to a Python scalar when it has exactly one element, as numpy 1.x did;
larger arrays refuse exactly as ndarray does.
"""
from __future__ import annotations

from typing import Any

import numpy as np


class FetchArray(np.ndarray):
    """An ndarray whose size-1 instances support ``float``, ``int``, ``complex`` and
    scalar format specs (``f"{loss:.3f}"``); everything else is ndarray's behaviour.

    Arrays computed from it (``loss * 2``, ``loss[:1]``) stay ``FetchArray``, so an
    expression on a fetched value converts the same way; ``np.asarray`` gives the
    plain ndarray back."""

    def _one(self, what: str) -> Any:
        if self.size != 1:
            # the same words numpy uses, plus the shape (a fetched batch, not a scalar)
            raise TypeError(f"only arrays of one element can be converted to Python scalars "
                            f"({what} of an array of shape {self.shape})")
        return self.reshape(()).view(np.ndarray)[()]

    def __float__(self) -> float:
        return float(self._one("float()"))

    def __int__(self) -> int:
        return int(self._one("int()"))

    def __complex__(self) -> complex:
        return complex(self._one("complex()"))

    def __array_wrap__(self, arr: np.ndarray, context: Any = None, return_scalar: bool = False) -> Any:
        # a reduction to one value gives a numpy scalar, as on ndarray (np.float64 is a float: json takes it)
        if return_scalar:
            return arr.view(np.ndarray)[()]
        return super().__array_wrap__(arr, context, return_scalar)

    def __repr__(self) -> str:
        return repr(self.view(np.ndarray))  # prints as fluid's plain ndarray did

    def __format__(self, spec: str) -> str:
        if spec and self.size == 1:
            return format(self._one("format()"), spec)
        return np.ndarray.__format__(self.view(np.ndarray), spec)


def as_fetch_result(a: np.ndarray) -> FetchArray:
    """``a`` viewed as a ``FetchArray`` (shares its memory)."""
    return a.view(FetchArray)
