"""``nccl``: GPU collectives through cupy's NCCL bindings, one GPU per process.

Rank 0 creates the NCCL unique id and publishes it in the rendezvous store
(the store replaces Paddle's ``gen_nccl_id`` gRPC exchange); every rank then
joins the communicator.  Without an explicit store, rank 0 hosts a
``TCPStore`` on the first ``PADDLE_TRAINER_ENDPOINTS`` entry.

This module is the one place of the collective package that imports cupy
(lazily, on first use), so the package imports and its CPU backends work on
machines without CUDA.  Arrays are cupy arrays; numpy arrays are accepted and
copied to the device and back.

Timeouts: operations are queued on a private stream, which is then polled
until the deadline; on a timeout the communicator is aborted (``ncclCommAbort``)
so the group fails instead of hanging.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from ...env import selected_gpu
from ...errors import (CollectiveTimeoutError, DTypeError, GPUUnavailableError, InvalidArgumentError,
                       seconds_text)
from .._arrays import row_bounds
from ..api import Backend, Deadline
from ..header import HEADER_BYTES, Header, check_headers, make_header
from ..store import Store, TCPStore

__all__ = ["NcclBackend"]

_UID_KEY = "uid"


def _cupy() -> tuple[Any, Any]:
    try:
        import cupy
        from cupy.cuda import nccl
    except ImportError as exc:
        raise GPUUnavailableError("the nccl backend needs cupy: pip install 'fleetkit[gpu]'") from exc
    if not getattr(nccl, "available", True):
        raise GPUUnavailableError("cupy cannot load the NCCL library: "
                                  "pip install 'nvidia-nccl-cu12>=2.18.1,<3'")
    return cupy, nccl


class NcclBackend(Backend):
    """NCCL communicator over ``world_size`` processes (one GPU each).

    Args:
        rank, world_size: from ``PADDLE_TRAINER_ID``/``PADDLE_TRAINER_ENDPOINTS`` when None.
        store: rendezvous store for the NCCL unique id.
        device: CUDA device ordinal (default: the first of ``FLAGS_selected_gpus``,
            else ``rank % device_count``).
        timeout: default seconds per collective.
        prefix: store key prefix (distinct per group on a shared store).
    """

    name = "nccl"
    device_arrays = True

    def __init__(self, rank: int | None = None, world_size: int | None = None, *,
                 store: Store | None = None, device: int | None = None,
                 timeout: float | None = None, prefix: str = "fleetkit/nccl/"):
        cupy, nccl = _cupy()
        own_store = None
        if store is None:
            store, rank, world_size = own_store = _store_from_env(timeout)
        if rank is None or world_size is None:
            raise InvalidArgumentError("NcclBackend with a store needs rank and world_size")
        super().__init__(rank, world_size, timeout)
        self._cp, self._nccl = cupy, nccl
        self._device = cupy.cuda.Device(_pick_device(cupy, self._rank) if device is None else device)
        uid = self._exchange_uid(store, prefix)
        with self._device:
            self._comm = nccl.NcclCommunicator(self._world_size, uid, self._rank)
            self._stream = cupy.cuda.Stream(non_blocking=True)
        self._own_store = own_store[0] if own_store else None
        self._types = {np.dtype(k): getattr(nccl, v) for k, v in _NCCL_TYPES.items()}
        self._ops = {"sum": nccl.NCCL_SUM, "max": nccl.NCCL_MAX, "min": nccl.NCCL_MIN,
                     "prod": nccl.NCCL_PROD}

    @classmethod
    def is_available(cls) -> bool:
        """True when cupy, NCCL and at least one GPU are usable."""
        try:
            cupy, _ = _cupy()
            return cupy.cuda.runtime.getDeviceCount() > 0
        except Exception:  # noqa: BLE001 - ImportError, CUDA driver errors
            return False

    def _validate(self, array: Any, coll: str, op: str = "") -> None:
        super()._validate(array, coll, op)
        if np.dtype(array.dtype) not in self._types:
            raise DTypeError(f"nccl backend: {coll} does not support {array.dtype} "
                             f"(supported: {', '.join(sorted(str(t) for t in self._types))})")

    # ---- collectives -----------------------------------------------------------------------

    def _all_reduce(self, array: Any, op: str, deadline: Deadline) -> Any:
        """See base class."""
        self._exchange_headers(make_header(self._next_seq(), "all_reduce", array, op=op), deadline)
        with self._device:
            work = self._to_device(array)
            if work.size:
                self._comm.allReduce(work.data.ptr, work.data.ptr, work.size, self._type(work),
                                     self._ops[op], self._stream.ptr)
            self._wait(deadline, "all_reduce")
            return self._deliver(array, work)

    def _all_gather(self, array: Any, deadline: Deadline) -> list[Any]:
        """See base class."""
        headers = self._exchange_headers(make_header(self._next_seq(), "all_gather", array), deadline)
        counts = [int(np.prod(h.shape, dtype=np.int64)) for h in headers]
        widest = max(counts)
        with self._device:
            src = self._cp.zeros(widest, dtype=array.dtype)
            src[:counts[self._rank]] = self._to_device(array).reshape(-1)
            out = self._cp.empty(widest * self._world_size, dtype=array.dtype)
            if widest:
                # NCCL gathers equal counts only: pad every rank to the widest.
                self._comm.allGather(src.data.ptr, out.data.ptr, widest, self._type(src), self._stream.ptr)
            self._wait(deadline, "all_gather")
            parts = [out[i * widest:i * widest + c].reshape(h.shape) for i, (c, h) in enumerate(zip(counts, headers))]
            return [self._host_if(array, p) for p in parts]

    def _broadcast(self, array: Any, root: int, deadline: Deadline) -> Any:
        """See base class."""
        self._exchange_headers(make_header(self._next_seq(), "broadcast", array, root=root), deadline)
        with self._device:
            work = self._to_device(array)
            if work.size:
                self._comm.broadcast(work.data.ptr, work.data.ptr, work.size, self._type(work), root,
                                     self._stream.ptr)
            self._wait(deadline, "broadcast")
            return self._deliver(array, work)

    def _reduce_scatter(self, array: Any, op: str, deadline: Deadline) -> Any:
        """See base class."""
        self._exchange_headers(make_header(self._next_seq(), "reduce_scatter", array, op=op), deadline)
        with self._device:
            rows = self._to_device(array)
            rows = rows.reshape(1) if rows.ndim == 0 else rows
            row_size = int(np.prod(rows.shape[1:], dtype=np.int64))
            bounds = row_bounds(rows.shape[0], self._world_size)
            widest = max(b - a for a, b in bounds) * row_size
            # Equal blocks for NCCL: block i holds rank i's rows, padded.
            padded = self._cp.zeros(widest * self._world_size, dtype=rows.dtype)
            flat = rows.reshape(-1)
            for i, (a, b) in enumerate(bounds):
                padded[i * widest:i * widest + (b - a) * row_size] = flat[a * row_size:b * row_size]
            out = self._cp.empty(widest, dtype=rows.dtype)
            if widest:
                self._comm.reduceScatter(padded.data.ptr, out.data.ptr, widest, self._type(out),
                                         self._ops[op], self._stream.ptr)
            self._wait(deadline, "reduce_scatter")
            start, end = bounds[self._rank]
            result = out[:(end - start) * row_size].reshape((end - start,) + rows.shape[1:])
            return self._host_if(array, result)

    def _barrier(self, deadline: Deadline) -> None:
        """See base class."""
        self._exchange_headers(make_header(self._next_seq(), "barrier"), deadline)

    def _on_broken(self, error: BaseException) -> None:
        try:
            self._comm.abort()
        except Exception:  # noqa: BLE001 - already torn down
            pass

    def _close(self) -> None:
        if self._broken is None:
            self._comm.destroy()
        if self._own_store is not None:
            self._own_store.close()

    # ---- helpers ---------------------------------------------------------------------------

    def _exchange_uid(self, store: Store, prefix: str) -> Any:
        # cupy >= 14 gives the id as 128 bytes, older cupy as a tuple of 128 C chars (ints,
        # signed or not with the platform: int16 keeps either).  A one-byte tag says which
        # form rank 0's cupy uses, and every rank rebuilds that form.
        if self._rank == 0:
            uid = self._nccl.get_unique_id()
            if isinstance(uid, (bytes, bytearray)):
                raw = b"B" + bytes(uid)
            else:
                raw = b"T" + np.asarray(uid, dtype=np.int16).tobytes()
            store.set(prefix + _UID_KEY, raw)
        raw = store.get(prefix + _UID_KEY, self._timeout)
        if raw[:1] == b"B":
            return bytes(raw[1:])
        return tuple(int(v) for v in np.frombuffer(raw[1:], dtype=np.int16))

    def _exchange_headers(self, header: Header, deadline: Deadline) -> list[Header]:
        with self._device:
            mine = self._cp.asarray(np.frombuffer(header.pack(), dtype=np.uint8))
            everyone = self._cp.empty(HEADER_BYTES * self._world_size, dtype=np.uint8)
            self._comm.allGather(mine.data.ptr, everyone.data.ptr, HEADER_BYTES, self._nccl.NCCL_UINT8,
                                 self._stream.ptr)
            self._wait(deadline, f"{header.coll} #{header.seq} (header exchange)")
            raw = self._cp.asnumpy(everyone).reshape(self._world_size, HEADER_BYTES)
        headers = [Header.unpack(row.tobytes(), source=f"rank {r}") for r, row in enumerate(raw)]
        check_headers(headers)
        return headers

    def _wait(self, deadline: Deadline, what: str) -> None:
        """Poll the stream until it drains; abort the communicator at the deadline."""
        delay = 1e-5
        while not self._stream.done:
            if deadline.expired():
                raise CollectiveTimeoutError(
                    f"rank {self._rank}: nccl {what} did not finish within {seconds_text(deadline.seconds)} s "
                    "(a peer is missing or stuck)")
            time.sleep(delay)
            delay = min(delay * 2, 1e-3)

    def _to_device(self, array: Any) -> Any:
        """A C-contiguous device array: ``array`` itself when it already is one."""
        if isinstance(array, self._cp.ndarray):
            return self._cp.ascontiguousarray(array)
        return self._cp.asarray(np.ascontiguousarray(array))

    def _deliver(self, array: Any, result: Any) -> Any:
        if isinstance(array, self._cp.ndarray):
            if result is not array and array.flags.c_contiguous:
                array[...] = result
                return array
            return result
        host = self._cp.asnumpy(result)
        if isinstance(array, np.ndarray) and array.flags.writeable and array.flags.c_contiguous:
            array[...] = host
            return array
        return host

    def _host_if(self, array: Any, result: Any) -> Any:
        return result if isinstance(array, self._cp.ndarray) else self._cp.asnumpy(result)

    def _type(self, array: Any) -> int:
        return self._types[np.dtype(array.dtype)]


_NCCL_TYPES = {"int8": "NCCL_INT8", "uint8": "NCCL_UINT8", "int32": "NCCL_INT32",
               "uint32": "NCCL_UINT32", "int64": "NCCL_INT64", "uint64": "NCCL_UINT64",
               "float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64"}


def _pick_device(cupy: Any, rank: int) -> int:
    selected = selected_gpu()
    if selected is not None:
        return selected
    count = cupy.cuda.runtime.getDeviceCount()
    if count < 1:
        raise GPUUnavailableError("the nccl backend found no CUDA device")
    return rank % count


def _store_from_env(timeout: float | None) -> tuple[TCPStore, int, int]:
    """Rank 0 hosts the id store on the first trainer endpoint (like gen_nccl_id)."""
    from .tcp import endpoints_from_role  # the collective role: one parser of the env contract
    endpoints, rank = endpoints_from_role()
    host, _, port = endpoints[0].rpartition(":")
    store = TCPStore(host, int(port), is_server=rank == 0, timeout=timeout)
    return store, rank, len(endpoints)
