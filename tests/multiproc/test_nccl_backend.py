"""The nccl backend against the local oracle: one GPU per rank, so it needs as many GPUs as
ranks.  Marked ``gpu`` (skipped without CUDA); never run on the CPU-only development machines."""
from __future__ import annotations

import numpy as np
import pytest

from fleetkit.collective import TCPStore, TCPStoreServer, get_backend
from fleetkit.core.backend import gpu_count
from fleetkit.testing import run_workers
from fleetkit.testing.collective_oracle import check_against_oracle, check_large_all_reduce

pytestmark = pytest.mark.gpu


def _nccl_battery(rank, world_size, port):
    store = TCPStore("127.0.0.1", port, timeout=60)
    with get_backend("nccl", rank=rank, world_size=world_size, store=store, device=rank, timeout=60) as backend:
        checks = check_against_oracle(backend)
        for dtype in (np.float32, np.float64, np.int64):
            checks += check_large_all_reduce(backend, 64 << 20, dtype)
        return checks


@pytest.mark.parametrize("world_size", [2, 3])
def test_nccl_equals_local_oracle(world_size):
    if gpu_count() < world_size:
        pytest.skip(f"needs {world_size} GPUs (NCCL puts one rank on each), found {gpu_count()}")
    server = TCPStoreServer("127.0.0.1", 0)
    try:
        counts = run_workers(_nccl_battery, world_size, (server.port,), timeout=300)
    finally:
        server.close()
    assert len(set(counts)) == 1 and counts[0] > 100
