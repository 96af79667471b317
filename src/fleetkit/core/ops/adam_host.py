"""Adam on large host tables: the blocked update pass, non-lazy sparse Adam without a
dense gradient, and the paired zero-gradient passes of Hogwild workers.

Non-lazy Adam (fluid's default) moves every row of a table each step, touched or not,
so on a 1e6 x 10 embedding the pass over the parameter and its two moments is most of
a CTR step.  Three things keep that pass cheap:

- it runs block by block, every temporary in the CPU cache (``blocks``);
- a sparse gradient needs no dense zero-filled copy: Adam's moments are linear in the
  gradient, b * m + (1 - b) * g = b * (m + (1 - b) / b * g), so the touched rows add
  their gradient's part divided by the decay and one zero-gradient pass then takes
  every row's step, the touched rows' real one included (``sparse_dense``);
- a Hogwild worker (``paired_steps``) takes its zero-gradient passes two at a time:
  one read and one write of the table for two steps, instead of two.  With two
  workers on two cores the pass is bound by memory traffic (the same pass ran 15-20%
  slower in each of two concurrent workers than alone), so this halves what limits
  them.  The gradient of the k-th step of a pair is added divided by b^k, so after the
  pair's two decays every moment holds what the serial rule's would; the first step's
  parameter move lands with the second's, and already sees the second gradient (one
  step of extra staleness, of the kind Hogwild workers have anyway).  ``thread=1``
  never pairs: its results are the serial rule's.

Hogwild (``optimizer``'s module docstring): the divisor is written before the
numerator and the numerator read before the divisor, and every step's m1 / sqrt(m2)
is clipped to the bound that moments grown serially from zero satisfy.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..scope import SelectedRows

__all__ = ["blockable", "blocks", "clip_ratio", "paired_steps", "ratio_bound", "sparse_dense"]

#: elements per block: its temporaries stay in the CPU cache (two 256 KiB blocks;
#: 1 << 15 took 12% longer over a 1e7-element table, 1 << 17 no less)
BLOCK = 1 << 16

#: the clip ufunc: ``np.clip``'s Python wrapper costs about 1 us a call, a third of the
#: clip of one block
_np_clip = (np._core if hasattr(np, "_core") else np.core).umath.clip

#: zero-gradient steps per pass of a Hogwild worker
PAIR = 2


def ratio_bound(b1: float, b2: float) -> float:
    """The largest |m1| / sqrt(m2) of Adam moments grown from zero: by Cauchy-Schwarz over the
    gradients' weights, (1 - b1) / sqrt((1 - b2) * (1 - b1^2 / b2)); unbounded when b1^2 >= b2.
    With 1% to spare for float rounding and Hogwild's reordered decays."""
    if b1 * b1 >= b2:
        return float("inf")
    return 1.01 * (1 - b1) / float(np.sqrt((1 - b2) * (1 - b1 * b1 / b2)))


def clip_ratio(xp: Any, a: dict, r: Any) -> Any:
    """``r`` (m1 / (sqrt(m2) + eps)) clipped in place to ``ratio_bound``."""
    return _clip(xp, ratio_bound(a["beta1"], a["beta2"]), r)


def _clip(xp: Any, k: float, r: Any) -> Any:
    return r if k == float("inf") else (_np_clip if xp is np else xp.clip)(r, -k, k, out=r)


def blockable(xp: Any, p: Any, *others: Any) -> bool:
    """A large host update whose arrays are contiguous and alike (flat views are free)."""
    return (xp is np and p.size > 4 * BLOCK and p.flags.c_contiguous and p.dtype.kind == "f"
            and all(o is None or (o.__class__ is np.ndarray and o.flags.c_contiguous and o.shape == p.shape
                                  and o.dtype == p.dtype) for o in others))


def blocks(a: dict, lr_ts: list, p: np.ndarray, g: np.ndarray | None, m1: np.ndarray, m2: np.ndarray) -> None:
    """Adam steps on flat host arrays, block by block, in place, with one scratch block.

    The whole-array rule's float32 operations (so its results), one step per rate of
    ``lr_ts`` in order, but every temporary lives in the cache: p, m1, m2 (and g) are
    read and written once each for all the steps, instead of about ten passes per step
    over a table that does not fit the cache.  ``g`` None is a zero gradient (the rows
    a sparse gradient does not touch); a gradient goes with one step."""
    assert g is None or len(lr_ts) == 1
    b1, b2, eps = a["beta1"], a["beta2"], a["epsilon"]
    k = ratio_bound(b1, b2)  # once, not per block
    rates = [p.dtype.type(r) for r in lr_ts]
    t = np.empty((2, min(BLOCK, p.size)), p.dtype)
    for s in range(0, p.size, BLOCK):
        e = min(s + BLOCK, p.size)
        w, n1, c1, c2, cp = t[0, :e - s], t[1, :e - s], m1[s:e], m2[s:e], p[s:e]
        gc = None if g is None else g[s:e]
        for lr_t in rates:
            c2 *= b2  # the divisor first, the numerator read first (Hogwild: module docstring)
            if gc is not None:
                np.multiply(gc, gc, out=w)
                w *= 1 - b2
                c2 += w
            c1 *= b1
            if gc is not None:
                np.multiply(gc, 1 - b1, out=w)
                c1 += w
            n1[...] = c1
            np.sqrt(c2, out=w)
            w += eps
            _clip(np, k, np.divide(n1, w, out=w))
            w *= lr_t
            cp -= w


def prescalable(a: dict) -> bool:
    """Betas for which a gradient part divided by the decay (twice, when paired) stays as exact
    as the rule's own (a decay near 0 would scale it up toward float32's overflow)."""
    return a["beta1"] >= 0.5 and a["beta2"] >= 0.5


@dataclass
class _Pass:
    """A zero-gradient pass a Hogwild worker holds back for its partner step."""
    a: dict
    p: np.ndarray
    m1: np.ndarray
    m2: np.ndarray
    rates: list = field(default_factory=list)

    def run(self) -> None:
        blocks(self.a, self.rates, self.p.reshape(-1), None, self.m1.reshape(-1), self.m2.reshape(-1))


_worker = threading.local()  # .pending: {table address: _Pass} inside paired_steps, else None


def sparse_dense(a: dict, lr: Any, p: np.ndarray, g: SelectedRows, acc: dict, sc: dict) -> None:
    """Non-lazy Adam with a merged sparse gradient, without a dense zero-filled gradient
    (module docstring); needs ``prescalable`` betas.  The rows are merged (unique) and take
    ``a[idx] += d``, the divisor first, which keeps what concurrent Hogwild workers wrote
    to them meanwhile."""
    m1, m2, b1, b2 = acc["Moment1"], acc["Moment2"], a["beta1"], a["beta2"]
    lr_t = lr * np.sqrt(1 - sc["Beta2Pow"]) / (1 - sc["Beta1Pow"])
    pending, key = getattr(_worker, "pending", None), p.ctypes.data
    held = (pending.pop(key, None) if pending is not None else None) or _Pass(a, p, m1, m2)
    held.rates.append(lr_t)
    k = len(held.rates)  # this step's place in its pass: its own decay and the k - 1 steps' before it
    idx, gv = g.rows, g.values
    m2[idx] += (gv * gv) * ((1 - b2) / b2 ** k)
    m1[idx] += gv * ((1 - b1) / b1 ** k)
    if pending is not None and k < PAIR:
        pending[key] = held  # waits for its partner step
    else:
        held.run()


@contextlib.contextmanager
def paired_steps() -> Iterator[None]:
    """This thread (a Hogwild worker) takes its zero-gradient passes in pairs; a step left
    without a partner runs on the way out, so every step is taken by the end."""
    _worker.pending = {}
    try:
        yield
    finally:
        pending, _worker.pending = _worker.pending, None
        for held in pending.values():
            held.run()
