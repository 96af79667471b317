#!/usr/bin/env bash
# CI: install the Kubernetes e2e toolchain and build the control plane into the
# cache (a warm cache makes this a few seconds). Fails loudly on any error, so
# the k8s e2e tier can never be skipped silently.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
"$here/cluster.sh" install
"$here/cluster.sh" build
"$here/cluster.sh" bin
