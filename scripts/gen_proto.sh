#!/usr/bin/env bash
# Regenerate the Python modules of every .proto in src/fleetkit/proto
# (message modules, .pyi stubs, and gRPC stubs for protos that declare a service).
#
#   scripts/gen_proto.sh            # writes next to the .proto files (commit the result)
#   scripts/gen_proto.sh OUT_ROOT   # writes OUT_ROOT/fleetkit/proto/... (tests/unit/test_proto_fresh.py)
#
# Needs grpcio-tools (pip install -e ".[test]"); PYTHON picks the interpreter.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/src}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$root/src"
protos=(fleetkit/proto/*.proto)
"${PYTHON:-python}" -m grpc_tools.protoc -I . --python_out="$out" --pyi_out="$out" \
    --grpc_python_out="$out" "${protos[@]}"
# A proto without a service would get a _grpc module holding nothing but a grpcio
# version check; leave it out so importing messages never depends on grpcio's version.
for p in "${protos[@]}"; do
    if ! grep -Eq '^[[:space:]]*service[[:space:]]' "$p"; then
        rm -f "$out/${p%.proto}_pb2_grpc.py"
    fi
done
