"""Deep Gradient Compression (Lin et al., ICLR 2018): ``DGCMomentumOptimizer``.

Data-parallel momentum SGD where, after ``rampup_begin_step``, each rank sends
only the largest ``1 - sparsity`` fraction of its accumulated update instead of
the whole gradient:

* momentum correction: ``u = m*u + g; v = v + u`` (Nesterov: ``u = m*(u + g);
  v = v + u + g``); what a rank has not sent yet stays in ``v``;
* selection: the threshold is estimated from a strided 1% sample of ``|v|``
  (the paper's trick: a full top-k sort of millions of values costs more than
  the bytes it saves), entries ``>= threshold`` are taken, trimmed to exactly k
  when the estimate let too many through;
* encode (int32 indices + float32 values in one buffer), ``all_gather``,
  decode-sum into the gradient; the update is then ``param -= lr * sum``;
* momentum factor masking: sent entries are cleared in ``u`` and ``v``;
* local gradient clipping (``local_grad_clip_norm / num_trainers**2``, fluid's
  scaling) before the correction.

Before ``rampup_begin_step`` (and whenever the scheduled sparsity is 0) a
compressed parameter takes exactly the dense path: all-reduce of the gradient
and the ordinary momentum update.  Parameters under 16384 elements, or not
float32, are never compressed.  With ``exchange="auto"`` each parameter times
its first DGC steps both ways (sparse, and a dense all-reduce of ``v``, which
is the same update) and keeps the faster one, agreed by all ranks and logged
once: on a fast link a sparse exchange can lose to a plain all-reduce.
"""
from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core.backend import get_array_module
from ..core.framework import (Block, Operator, Parameter, Program, Variable, default_startup_program,
                              program_guard)
from ..core.optimizer import MomentumOptimizer, checked_number
from ..core.registry import KernelContext, ShapeContext, register_op
from .. import env
from ..errors import InvalidArgumentError
from .data_parallel import OpSpec, data_parallel_rewrite
from .groups import get_group, is_initialized

__all__ = ["DGCMomentumOptimizer", "MIN_COMPRESS_NUMEL", "select_top_k"]

log = logging.getLogger(__name__)

#: Parameters with fewer elements stay dense (their all-reduce is latency-bound anyway).
MIN_COMPRESS_NUMEL = 16384
#: Fraction of |v| sampled to estimate the top-k threshold.
SAMPLE_FRACTION = 0.01
#: Elements per block of the selection scan (1 MiB of float32: stays in cache).
SCAN_BLOCK = 1 << 18
#: DGC steps each parameter spends timing sparse vs dense in ``exchange="auto"``.
TRIAL_STEPS = 4
COUNTER_NAME = "__g_dgc_counter__"
_EXCHANGES = ("auto", "sparse", "dense")


class DGCMomentumOptimizer(MomentumOptimizer):
    """Momentum with Deep Gradient Compression (fluid 1.4 signature).

    Args:
        learning_rate, momentum, use_nesterov: as ``Momentum``.
        rampup_begin_step: steps of plain dense all-reduce before compression starts.
        rampup_step: steps over which ``sparsity`` is walked through.
        sparsity: schedule, e.g. ``[0.75, 0.9375, 0.984375, 0.996, 0.999]``; the last
            value holds afterwards.
        local_grad_clip_norm: clip each rank's gradient to this norm / num_trainers**2.
        num_trainers: number of data-parallel processes (needed with clipping; else
            taken from the fleet or the collective group).
        exchange: "auto" (time both, keep the faster), "sparse" or "dense".
    """

    type = "momentum"

    def __init__(self, learning_rate: float | Variable, momentum: float, rampup_begin_step: int,
                 rampup_step: int = 1, sparsity: Sequence[float] = (0.999,), use_nesterov: bool = False,
                 local_grad_clip_norm: float | None = None, num_trainers: int | None = None,
                 regularization: Any = None, name: str | None = None, exchange: str = "auto") -> None:
        super().__init__(learning_rate, momentum, use_nesterov, regularization, name)
        if isinstance(rampup_begin_step, bool) or not isinstance(rampup_begin_step, int) or rampup_begin_step < 0:
            raise InvalidArgumentError(f"DGCMomentumOptimizer: rampup_begin_step must be an int >= 0, "
                                       f"got {rampup_begin_step!r}")
        if isinstance(rampup_step, bool) or not isinstance(rampup_step, int) or rampup_step < 1:
            raise InvalidArgumentError(f"DGCMomentumOptimizer: rampup_step must be an int >= 1, got {rampup_step!r}")
        sparsity = list(sparsity) if isinstance(sparsity, (list, tuple)) else [sparsity]
        if not sparsity:
            raise InvalidArgumentError("DGCMomentumOptimizer: sparsity must list at least one value")
        self._sparsity = [checked_number(s, "DGCMomentumOptimizer: sparsity", lo=0.0, hi=1.0, hi_open=True)
                          for s in sparsity]
        if num_trainers is not None and (isinstance(num_trainers, bool) or not isinstance(num_trainers, int)
                                         or num_trainers < 1):
            raise InvalidArgumentError(f"DGCMomentumOptimizer: num_trainers must be an int >= 1, got {num_trainers!r}")
        self._clip_norm = -1.0
        if local_grad_clip_norm is not None:
            if num_trainers is None:
                raise InvalidArgumentError("DGCMomentumOptimizer: local_grad_clip_norm needs num_trainers")
            norm = checked_number(local_grad_clip_norm, "DGCMomentumOptimizer: local_grad_clip_norm", lo=0.0, lo_open=True)
            self._clip_norm = norm / (num_trainers * num_trainers)
        if exchange not in _EXCHANGES:
            raise InvalidArgumentError(f"DGCMomentumOptimizer: exchange must be one of {_EXCHANGES}, got {exchange!r}")
        self._rampup_begin_step, self._rampup_step = rampup_begin_step, rampup_step
        self._num_trainers, self._exchange = num_trainers, exchange
        self._compressed: set[str] = set()
        self._counter: Variable | None = None

    # ---- program building -----------------------------------------------------------------

    def _schedule_attrs(self) -> dict[str, Any]:
        return {"rampup_begin_step": self._rampup_begin_step, "rampup_step": self._rampup_step,
                "sparsity": list(self._sparsity)}

    @staticmethod
    def compressible(param: Parameter) -> bool:
        """Whether ``param`` is compressed: float32 and at least MIN_COMPRESS_NUMEL elements."""
        return param.dtype == "float32" and math.prod(param.shape) >= MIN_COMPRESS_NUMEL

    def _data_parallel_hook(self, nranks: int, ring_id: int, startup: Program):
        """The ``comm_hook`` of ``data_parallel_rewrite``: dgc ops for the compressible parameters."""
        def hook(block: Block, pgs: Sequence[tuple[Parameter, Variable]], positions: dict[str, int]
                 ) -> tuple[list[OpSpec], set[str]]:
            chosen = [(p, g) for p, g in pgs if self.compressible(p) and g.type != "selected_rows"]
            if not chosen:
                return [], set()
            with program_guard(block.program, startup):
                counter = self._step_counter(block.program, startup)
                specs = [OpSpec(-1, "increment", {"X": [counter.name]}, {"Out": [counter.name]}, {"step": 1.0})]
                for p, g in chosen:
                    u, v = self._add_accumulator("dgc_u", p), self._add_accumulator("dgc_v", p)
                    attrs = {"m": self._momentum, "use_nesterov": self._use_nesterov, "ring_id": ring_id,
                             "clip_norm": self._clip_norm, "exchange": self._exchange, **self._schedule_attrs()}
                    specs.append(OpSpec(positions[g.name], "dgc",
                                        {"U": [u.name], "V": [v.name], "Grad": [g.name], "CurrentStep": [counter.name]},
                                        {"U_out": [u.name], "V_out": [v.name], "Grad_out": [g.name]}, attrs))
            self._compressed |= {p.name for p, _ in chosen}
            return specs, {p.name for p, _ in chosen}
        return hook

    def _step_counter(self, program: Program, startup: Program) -> Variable:
        block = program.global_block()
        if block.has_var(COUNTER_NAME):
            self._counter = block.var(COUNTER_NAME)
            return self._counter
        self._counter = block.create_var(name=COUNTER_NAME, shape=[1], dtype="float32", persistable=True,
                                         stop_gradient=True)
        sblock = startup.global_block()
        sblock.create_var(name=COUNTER_NAME, shape=[1], dtype="float32", persistable=True)
        # -1, so that the increment at the top of the first step makes it 0
        sblock.append_op("fill_constant", {}, {"Out": [COUNTER_NAME]},
                         {"shape": [1], "dtype": "float32", "value": -1.0})
        return self._counter

    def _append_optimize_op(self, block: Block, param_and_grad: tuple[Parameter, Variable]) -> Operator:
        param, grad = param_and_grad
        if param.name not in self._compressed:
            return super()._append_optimize_op(block, param_and_grad)
        return block.append_op(
            "dgc_momentum",
            {"Param": [param], "Grad": [grad], "Velocity": [self._get_accumulator("velocity", param)],
             "LearningRate": [self._create_param_lr(block, param_and_grad)], "CurrentStep": [self._counter]},
            {"ParamOut": [param], "VelocityOut": [self._get_accumulator("velocity", param)]},
            {"mu": self._momentum, "use_nesterov": self._use_nesterov, **self._schedule_attrs()})

    def minimize(self, loss: Variable, startup_program: Program | None = None,
                 parameter_list: Sequence[Any] | None = None, no_grad_set: Any = None) -> tuple[list, list]:
        """Without fleet: rewrite for data parallelism over ring 0 (num_trainers, else the
        initialized group's size, else ``PADDLE_TRAINERS_NUM``), then update."""
        startup = startup_program or default_startup_program()
        nranks = self._num_trainers or (get_group(0).world_size if is_initialized(0) else env.trainers_num())
        params_grads = self.backward(loss, startup, parameter_list, no_grad_set)
        data_parallel_rewrite(loss, params_grads, nranks, startup_program=startup,
                              comm_hook=self._data_parallel_hook(nranks, 0, startup))
        return self.apply_optimize(loss, startup, params_grads), params_grads


def _writable(ctx: KernelContext, slot: str, out_slot: str) -> np.ndarray:
    """The array of ``slot`` to update in place (copied and re-stored if it is read-only)."""
    a = ctx.x(slot)
    if not getattr(a.flags, "writeable", True):  # cupy arrays are always writable
        a = a.copy()
    ctx.out(out_slot, a)
    return a


# ---- kernels ----------------------------------------------------------------------------------


def sparsity_at(step: float, attrs: dict) -> float:
    """Scheduled sparsity at ``step``; 0 (dense) before rampup_begin_step.

    The schedule counts from rampup_begin_step (the paper's warm-up), not from step 0.
    """
    begin = int(attrs["rampup_begin_step"])
    if step < begin:
        return 0.0
    sp = attrs["sparsity"]
    i = int((step - begin) * len(sp) / max(1, int(attrs["rampup_step"])))
    return float(sp[min(i, len(sp) - 1)])


def select_top_k(v: np.ndarray, k: int, scratch: np.ndarray | None = None, offset: int = 0) -> np.ndarray:
    """Indices of about the k largest ``|v|`` (never more than k), threshold estimated from a sample.

    ``v`` is 1-D, numpy or cupy.  On the CPU the scan runs in cache-sized blocks (abs,
    compare, nonzero per block) so that the whole array is read from memory once, not
    four times; ``scratch`` (float, at least SCAN_BLOCK long) avoids an allocation per
    call.  On the GPU one pass over the whole array is cheaper than many small kernels.
    """
    xp = get_array_module(v)
    n = v.size
    if k >= n:
        return xp.arange(n, dtype=np.int64)
    sample_n = max(min(n, 4096), int(n * SAMPLE_FRACTION))
    if sample_n >= n // 2:
        return xp.argpartition(xp.abs(v), n - k)[n - k:]
    stride = n // sample_n
    sample = xp.abs(v[offset % stride::stride])
    kk = max(1, int(round(k * sample.size / n)))
    threshold = xp.partition(sample, sample.size - kk)[sample.size - kk]
    if xp is not np:
        idx = xp.flatnonzero(xp.abs(v) >= threshold)
        if idx.size > k:
            idx = idx[xp.argpartition(xp.abs(v[idx]), idx.size - k)[idx.size - k:]]
        return idx
    if scratch is None or scratch.size < SCAN_BLOCK:
        scratch = np.empty(SCAN_BLOCK, dtype=v.dtype)
    hits = []
    for start in range(0, n, SCAN_BLOCK):
        block = v[start:start + SCAN_BLOCK]
        mag = np.abs(block, out=scratch[:block.size])
        found = np.flatnonzero(mag >= threshold)
        if found.size:
            hits.append(found + start)
    idx = np.concatenate(hits) if hits else np.empty(0, dtype=np.int64)
    if idx.size > k:  # the estimate let too many through: exact top-k among the candidates
        idx = idx[np.argpartition(np.abs(v[idx]), idx.size - k)[idx.size - k:]]
    return idx


class _ParamState:
    """Per compressed gradient: scratch buffer and the auto sparse/dense decision."""

    def __init__(self) -> None:
        self.scratch: np.ndarray | None = None
        self.out: np.ndarray | None = None
        self.last: list[np.ndarray] | None = None
        self.steps = 0
        self.times: dict[str, list[float]] = {"sparse": [], "dense": []}
        self.choice: str | None = None


# Keyed by the dgc op itself: two programs in one process (same names) keep separate buffers.
_STATES: "weakref.WeakKeyDictionary[Operator, _ParamState]" = weakref.WeakKeyDictionary()


def _dgc_infer(ctx: ShapeContext) -> None:
    for src, dst in (("U", "U_out"), ("V", "V_out"), ("Grad", "Grad_out")):
        ctx.share(src, dst)
    if ctx.var("Grad").dtype != "float32":
        raise ctx.fail("dgc compresses float32 gradients only")


@register_op("dgc", _dgc_infer, attrs={"m": 0.9, "use_nesterov": False, "ring_id": 0, "clip_norm": -1.0,
                                      "exchange": "auto", "rampup_begin_step": 0, "rampup_step": 1,
                                      "sparsity": [0.999]})
def dgc(ctx: KernelContext) -> None:
    """Grad_out = the ranks' compressed updates, summed (dense all-reduce of Grad while dense)."""
    a = ctx.attrs
    step = float(ctx.x("CurrentStep").reshape(-1)[0])
    group = get_group(int(a["ring_id"]))
    g = ctx.x("Grad")
    sparsity = sparsity_at(step, a)
    if sparsity <= 0.0:
        ctx.out("Grad_out", group.all_reduce(g.copy()))
        return
    u, v = _writable(ctx, "U", "U_out"), _writable(ctx, "V", "V_out")  # accumulators, updated in place
    if a["clip_norm"] > 0:
        norm = float(ctx.xp.sqrt(ctx.xp.vdot(g, g)))
        if norm > a["clip_norm"]:
            g = g * np.float32(a["clip_norm"] / norm)
    m = np.float32(a["m"])
    if a["use_nesterov"]:
        u += g
        u *= m
        v += u
        v += g
    else:
        u *= m
        u += g
        v += u
    state = _STATES.setdefault(ctx.op, _ParamState())
    how = _choose(state, a["exchange"], group, ctx.ins["Grad"][0])
    start = time.perf_counter()
    if how == "sparse":
        k = max(1, int(v.size * (1.0 - sparsity)))
        out = sparse_exchange(group, u.reshape(-1), v.reshape(-1), k, state, offset=int(step))
    else:
        out = group.all_reduce(v.reshape(-1).copy())
        v[...] = 0
    if a["exchange"] == "auto" and state.choice is None:  # trial timings only: no per-step growth
        state.times[how].append(time.perf_counter() - start)
    ctx.out("Grad_out", out.reshape(g.shape))


def sparse_exchange(group: Any, u: np.ndarray, v: np.ndarray, k: int, state: _ParamState | None = None,
                    offset: int = 0) -> np.ndarray:
    """Select about k entries of ``v``, all-gather them, return the dense sum; mask ``u``/``v``.

    The wire format is one int32 buffer per rank: ``c`` indices then ``c`` float32
    values (bit-cast), so a single all_gather (unequal sizes allowed) moves both.
    """
    if v.size >= 2 ** 31:
        raise InvalidArgumentError(f"dgc: {v.size} elements do not fit int32 indices")
    xp = get_array_module(v)
    if state is None:
        state = _ParamState()
    if state.out is None or state.out.size != v.size or get_array_module(state.out) is not xp:
        state.scratch = np.empty(SCAN_BLOCK, dtype=v.dtype) if xp is np else None
        state.out, state.last = xp.zeros_like(v), None
    idx = select_top_k(v, k, state.scratch, offset)
    count = idx.size
    message = xp.empty(2 * count, dtype=np.int32)
    message[:count] = idx
    message[count:] = v[idx].view(np.int32)
    u[idx] = 0  # momentum factor masking: what was sent stops accumulating
    v[idx] = 0
    parts = group.all_gather(message)
    # One dense buffer, reused: only last step's entries are cleared (O(k), where a fresh
    # or refilled 100 MB array would cost more than the whole exchange).  It is handed out
    # read-only, so that nobody can write entries this bookkeeping does not know about.
    out = state.out
    if state.last is not None:
        for prev in state.last:
            out[prev] = 0
    state.last = []
    for part in parts:  # indices are unique within a rank, so += per rank is exact
        c = part.size // 2
        out[part[:c]] += part[c:].view(np.float32)
        state.last.append(part[:c])
    view = out.view()
    if xp is np:  # cupy has no read-only arrays
        view.flags.writeable = False
    return view


def _choose(state: _ParamState, exchange: str, group: Any, name: str) -> str:
    """sparse/dense for this step; in "auto", trial both, then agree across ranks once."""
    if exchange != "auto":
        return exchange
    if state.choice is not None:
        return state.choice
    state.steps += 1
    if state.steps <= TRIAL_STEPS:
        return "sparse" if state.steps % 2 else "dense"
    # The slowest rank's timing decides, so every rank makes the same choice.
    mine = np.array([min(state.times["sparse"]), min(state.times["dense"])], dtype=np.float64)
    t_sparse, t_dense = group.all_reduce(mine, op="max")
    state.choice = "sparse" if t_sparse <= t_dense else "dense"
    level = logging.INFO if state.choice == "sparse" else logging.WARNING
    log.log(level, "dgc: %s uses the %s exchange (sparse %.2f ms vs dense all-reduce %.2f ms per step)%s",
            name, state.choice, t_sparse * 1e3, t_dense * 1e3,
            "" if state.choice == "sparse" else ": the link is fast enough that compression does not pay")
    return state.choice


def _dgc_momentum_infer(ctx: ShapeContext) -> None:
    ctx.share("Param", "ParamOut")
    ctx.share("Velocity", "VelocityOut")


@register_op("dgc_momentum", _dgc_momentum_infer,
             attrs={"mu": 0.9, "use_nesterov": False, "rampup_begin_step": 0, "rampup_step": 1,
                    "sparsity": [0.999]})
def dgc_momentum(ctx: KernelContext) -> None:
    """Momentum update while dense; ``param -= lr * grad`` once DGC (momentum is in u) is on."""
    a = ctx.attrs
    p, g = _writable(ctx, "Param", "ParamOut"), ctx.x("Grad")
    lr = ctx.x("LearningRate").reshape(())
    if sparsity_at(float(ctx.x("CurrentStep").reshape(-1)[0]), a) > 0.0:
        p -= lr * g
        return
    vel, mu = _writable(ctx, "Velocity", "VelocityOut"), a["mu"]
    vel *= mu
    vel += g
    p -= lr * (g + mu * vel) if a["use_nesterov"] else lr * vel
