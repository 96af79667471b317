#!/usr/bin/env bash
# Every GPU path in one run, for a machine with a CUDA device and cupy (+ NCCL):
#   1. the tests marked `gpu` (tests/unit/test_gpu.py, PS trainers and data parallelism on
#      CUDAPlace, nccl), 2. the whole unit suite, where check_grad also compares every
#      gradient-checked op on CUDAPlace(0) with CPUPlace.
#
#   scripts/gpu_check.sh [WHEEL_DIR]
#
# WHEEL_DIR (optional): wheels to install first into /tmp/fleetkit-site (for a machine
# without network access whose Python lacks grpcio/protobuf of the versions we need).
# Logs go to ${OUT:-/tmp}/gpu_tests.log and unit_tests.log.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ $# -ge 1 ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/fleetkit-site "$1"/*.whl || exit 1
    export PYTHONPATH="/tmp/fleetkit-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$root/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp}"
nvidia-smi -L || true
python3 -c "
import cupy, numpy, fleetkit
from fleetkit.core.backend import gpu_count
print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'gpus', gpu_count())
try:
    from cupy.cuda import nccl; print('nccl', nccl.get_version())
except Exception as e: print('no nccl:', e)
"
rc=0
timeout 400 python3 -m pytest -q -p no:cacheprovider -W default --timeout 200 -m gpu -rfE \
    tests/unit tests/multiproc 2>&1 | tee "$out/gpu_tests.log" | tail -40 || rc=1
timeout 300 python3 -m pytest -q -p no:cacheprovider -W default --timeout 120 -rfE -m "not gpu" \
    tests/unit 2>&1 | tee "$out/unit_tests.log" | tail -15 || rc=1
exit $rc
