"""The mpi backend under a real ``mpiexec`` (MPICH from PyPI), against the local oracle.

pytest starts ``mpiexec -n N python <this file>``; run as a script, the file is
the SPMD program each MPI rank executes.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest


def _mpiexec() -> str | None:
    # The mpich wheel installs mpiexec next to the interpreter; prefer that one.
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.path.exists(beside) else shutil.which("mpiexec")


def _have_mpi4py() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not _have_mpi4py() or _mpiexec() is None,
                       reason="needs mpi4py and mpiexec: pip install 'fleetkit[mpi]'"),
]


@pytest.mark.parametrize("ranks", [2, 3])
def test_mpi_backend_under_mpiexec(ranks):
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="268435456",
               MALLOC_TRIM_THRESHOLD_="1073741824")
    proc = subprocess.run([_mpiexec(), "-n", str(ranks), sys.executable, __file__], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # mpiexec forwards the ranks' lines unordered and may glue them together.
    done = re.findall(r"MPI-OK rank=(\d+) checks=(\d+)", proc.stdout)
    assert sorted(int(rank) for rank, _ in done) == list(range(ranks)), output
    assert len({checks for _, checks in done}) == 1, output


def _spmd_main() -> None:
    import numpy as np

    from fleetkit.collective import CollectiveMismatchError, get_backend
    from fleetkit.testing.collective_oracle import check_against_oracle, check_large_all_reduce

    backend = get_backend("mpi", timeout=120)
    checks = check_against_oracle(backend)
    for dtype in (np.float32, np.float64, np.int64):  # 64 MiB each, on 2 and on 3 ranks
        checks += check_large_all_reduce(backend, 64 << 20, dtype)
    try:
        backend.all_reduce(np.ones(3 + (backend.rank == 1)))
        raise AssertionError("a size mismatch went unnoticed")
    except CollectiveMismatchError as exc:
        assert "float64[3]" in str(exc) and "float64[4]" in str(exc), exc
        checks += 1
    backend.close()
    print(f"MPI-OK rank={backend.rank} checks={checks}", flush=True)


if __name__ == "__main__":
    _spmd_main()
