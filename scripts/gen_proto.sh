#!/usr/bin/env bash
# Regenerate the Python modules of every .proto in src/fleetkit/proto
# (message modules and .pyi stubs).  No gRPC stubs: the pserver builds its stubs from
# method paths (pserver/rpc.py), so nothing generated depends on grpcio's version.
#
#   scripts/gen_proto.sh            # writes next to the .proto files (commit the result)
#   scripts/gen_proto.sh OUT_ROOT   # writes OUT_ROOT/fleetkit/proto/... (tests/unit/test_proto_fresh.py)
#
# Needs grpcio-tools at the exact version pinned in pyproject.toml's `test` extra (its
# bundled protoc decides the output); PYTHON picks the interpreter.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/src}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$root/src"
protos=(fleetkit/proto/*.proto)
"${PYTHON:-python}" -m grpc_tools.protoc -I . --python_out="$out" --pyi_out="$out" \
    "${protos[@]}"
