"""FLAGS_paddle_num_threads: the host BLAS threads an executor's process uses (fluid's default 1).

Each case runs in a fresh interpreter: the BLAS thread count is state of the whole process."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fleetkit.env import MATH_THREAD_VARIABLES, paddle_num_threads
from fleetkit.errors import ConfigError

PROBE = """
import json
from threadpoolctl import threadpool_info
import fleetkit as fk
before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
fk.Executor(fk.CPUPlace())
after = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
print(json.dumps([before, after]))
"""


def _blas_threads(**env):
    clean = {k: v for k, v in os.environ.items() if k not in MATH_THREAD_VARIABLES + ("FLAGS_paddle_num_threads",)}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_an_executor_gives_blas_one_thread_by_default():
    before, after = _blas_threads()
    if not before or max(before) < 2:
        pytest.skip("numpy's BLAS has one thread here already: nothing to see")
    assert after == [1] * len(after)


def test_the_flag_sets_the_thread_count_and_a_users_own_setting_is_left_alone():
    before, after = _blas_threads(FLAGS_paddle_num_threads="2")
    if not before or max(before) < 2:
        pytest.skip("numpy's BLAS has one thread here: 2 may not be allowed")
    assert after == [2] * len(after)
    before, after = _blas_threads(OPENBLAS_NUM_THREADS="2")
    assert after == before  # the user chose the BLAS threads: the executor keeps them


def test_flag_values():
    assert paddle_num_threads({}) == 1
    assert paddle_num_threads({"FLAGS_paddle_num_threads": " 3 "}) == 3
    assert paddle_num_threads({"OMP_NUM_THREADS": "4"}) is None
    assert paddle_num_threads({"OMP_NUM_THREADS": "4", "FLAGS_paddle_num_threads": "2"}) == 2
    for bad in ("0", "-1", "two"):
        with pytest.raises(ConfigError, match=f"FLAGS_paddle_num_threads={bad!r} is not a positive"):
            paddle_num_threads({"FLAGS_paddle_num_threads": bad})
