#!/usr/bin/env bash
# A real Kubernetes control plane on 127.0.0.1 for fleetkit's e2e tests:
# kube-apiserver + kube-controller-manager 1.20.2 built offline from Debian's
# `kubernetes` source package, etcd from Debian's etcd-server.
#
#   cluster.sh install          apt-get the toolchain and etcd (root, no stdin)
#   cluster.sh build            build the binaries into the cache (skipped when warm)
#   cluster.sh start STATE_DIR  start etcd, apiserver, controller-manager; write
#                               STATE_DIR/kubeconfig; returns once /readyz says ok
#   cluster.sh start-apiserver STATE_DIR, start-kcm STATE_DIR: the two halves of start
#   cluster.sh stop STATE_DIR   stop what `start` started (SIGTERM, then SIGKILL)
#   cluster.sh bin              print the cache's bin directory (fails when cold)
#
# Env: FLEETKIT_K8S_CACHE (default /var/cache/fleetkit-k8s), ETCD_PORT,
# ETCD_PEER_PORT, APISERVER_PORT (defaults 12379, 12380, 16443),
# FLEETKIT_K8S_PARENT_PID (stop the cluster when that process is gone).
set -euo pipefail

K8S_VERSION=1.20.2
DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1
ORIG_SHA256=b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc
CACHE=${FLEETKIT_K8S_CACHE:-/var/cache/fleetkit-k8s}/$K8S_VERSION
BIN=$CACHE/bin
PACKAGES="golang-go etcd-server rsync jq golang-github-modern-go-reflect2-dev openssl curl iproute2"

log() { echo "cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

cmd_install() {
    local missing=()
    for p in $PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && { log "toolchain present"; return; }
    [ "$(id -u)" = 0 ] || die "installing ${missing[*]} needs root"
    # etcd-server's maintainer scripts would start a system etcd on 2379:
    # a temporary policy-rc.d forbids service starts during the install.
    local policy=/usr/sbin/policy-rc.d added=0
    if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' > $policy; chmod +x $policy; added=1; fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q < /dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" < /dev/null
    [ $added = 1 ] && rm -f $policy
    return 0
}

fetch_source() {  # -> $CACHE/src/kubernetes-$K8S_VERSION
    local aptd=$CACHE/aptsrc
    mkdir -p "$aptd/lists/partial" "$aptd/cache/archives/partial" "$CACHE/src"
    # A private apt config for deb-src, derived from the machine's own sources
    # (no host name written here, /etc/apt untouched).
    awk 'BEGIN{RS="";ORS="\n\n"} /Suites: bookworm bookworm-updates/' /etc/apt/sources.list.d/debian.sources \
        | sed -e 's/^Types: deb$/Types: deb-src/' -e 's/^Suites: .*/Suites: bookworm/' > "$aptd/src.sources"
    local o="-o Dir::Etc::SourceList=$aptd/src.sources -o Dir::Etc::SourceParts=/nonexistent"
    o="$o -o Dir::State::Lists=$aptd/lists -o Dir::Cache=$aptd/cache"
    local tarball=kubernetes_${DEB_VERSION%%-*}.orig.tar.gz
    cd "$CACHE/src"
    if [ ! -f "$tarball" ]; then
        apt-get $o update -q < /dev/null
        apt-get $o source --download-only "kubernetes=$DEB_VERSION" < /dev/null
    fi
    echo "$ORIG_SHA256  $tarball" | sha256sum -c - >&2 || die "$tarball: checksum mismatch"
    if [ ! -d kubernetes-$K8S_VERSION ]; then
        tar xzf "$tarball"
        patch_reflect2 "kubernetes-$K8S_VERSION"
    fi
}

patch_reflect2() {
    # Vendored reflect2 1.0.1 crashes under Go >= 1.18 on the first custom
    # resource write; Debian ships 1.0.2.
    local v=$1/vendor/github.com/modern-go/reflect2 d=/usr/share/gocode/src/github.com/modern-go/reflect2
    rm -f "$v"/*.go "$v"/*.s
    cp "$d"/*.go "$d"/*.s "$v"/
}

cmd_build() {
    if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ]; then
        log "cache warm: $BIN"; return
    fi
    command -v go > /dev/null || die "go not found: run '$0 install' first"
    fetch_source
    local tree=$CACHE/src/kubernetes-$K8S_VERSION
    cd "$tree"
    mkdir -p .go/src/k8s.io && ln -sfn ../../.. .go/src/k8s.io/kubernetes
    local t0=$SECONDS
    env GOPATH="$tree/.go" CGO_ENABLED=0 GOFLAGS=-mod=vendor GOPROXY=off HOME="$tree/.home" \
        make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" < /dev/null
    mkdir -p "$BIN.tmp"
    cp _output/bin/kube-apiserver _output/bin/kube-controller-manager "$BIN.tmp/"
    rm -rf "$BIN"; mv "$BIN.tmp" "$BIN"
    log "built in $((SECONDS - t0)) s: $BIN"
    # The tree and Go cache (~2 GB) are only needed to rebuild.
    rm -rf "$CACHE/src/kubernetes-$K8S_VERSION"
}

cmd_bin() {
    [ -x "$BIN/kube-apiserver" ] || die "no kube-apiserver in $BIN: run '$0 install && $0 build'"
    echo "$BIN"
}

wait_ready() {  # url token seconds
    local i
    for ((i = 0; i < $3 * 4; i++)); do
        curl -sk -m 2 -H "Authorization: Bearer $2" "$1/readyz" 2>/dev/null | grep -qx ok && return 0
        sleep 0.25
    done
    return 1
}

cmd_start_apiserver() {
    local run=${1:?usage: cluster.sh start-apiserver STATE_DIR}
    cmd_bin > /dev/null
    command -v etcd > /dev/null || die "etcd not found: run '$0 install'"
    local ep=${ETCD_PORT:-12379} pp=${ETCD_PEER_PORT:-12380} ap=${APISERVER_PORT:-16443}
    mkdir -p "$run"; run=$(cd "$run" && pwd)
    local token; token=$(openssl rand -hex 16)
    openssl genrsa -out "$run/sa.key" 2048 2> /dev/null
    openssl rsa -in "$run/sa.key" -pubout -out "$run/sa.pub" 2> /dev/null
    echo "$token,admin,admin,\"system:masters\"" > "$run/tokens.csv"
    setsid etcd --name fleetkit --data-dir "$run/etcd-data" \
        --listen-client-urls "http://127.0.0.1:$ep" --advertise-client-urls "http://127.0.0.1:$ep" \
        --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
        --initial-cluster "fleetkit=http://127.0.0.1:$pp" > "$run/etcd.log" 2>&1 < /dev/null &
    echo $! > "$run/etcd.pid"
    setsid "$BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$ep" \
        --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$ap" --cert-dir="$run/certs" \
        --token-auth-file="$run/tokens.csv" --authorization-mode=RBAC \
        --service-cluster-ip-range=10.96.0.0/24 \
        --service-account-issuer=https://kubernetes.default.svc \
        --service-account-key-file="$run/sa.pub" --service-account-signing-key-file="$run/sa.key" \
        --disable-admission-plugins=ServiceAccount > "$run/apiserver.log" 2>&1 < /dev/null &
    echo $! > "$run/apiserver.pid"
    if ! wait_ready "https://127.0.0.1:$ap" "$token" 60; then
        tail -n 20 "$run/etcd.log" "$run/apiserver.log" >&2
        cmd_stop "$run"; die "apiserver on 127.0.0.1:$ap not ready in 60 s (logs in $run)"
    fi
    # the serving certificate the apiserver generated (self-signed, SAN 127.0.0.1) is the CA
    cat > "$run/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: fleetkit-test
  cluster: {server: "https://127.0.0.1:$ap", certificate-authority: "$run/certs/apiserver.crt"}
users:
- name: admin
  user: {token: "$token"}
contexts:
- name: fleetkit-test
  context: {cluster: fleetkit-test, user: admin, namespace: default}
current-context: fleetkit-test
KC
    if [ -n "${FLEETKIT_K8S_PARENT_PID:-}" ]; then
        # a test run killed before its teardown must not leave the cluster behind
        setsid bash -c "while kill -0 $FLEETKIT_K8S_PARENT_PID 2>/dev/null; do sleep 2; done; '$0' stop '$run'" \
            > /dev/null 2>&1 < /dev/null &
    fi
    log "up: KUBECONFIG=$run/kubeconfig"
}

cmd_start_kcm() {
    # Start it after the CRDs are installed: its garbage collector discovers new
    # resource kinds only every ~30 s.
    local run=${1:?usage: cluster.sh start-kcm STATE_DIR}
    run=$(cd "$run" && pwd)
    setsid "$BIN/kube-controller-manager" --kubeconfig="$run/kubeconfig" --leader-elect=false \
        --port=0 --secure-port=0 --service-account-private-key-file="$run/sa.key" \
        --root-ca-file="$run/certs/apiserver.crt" --controllers='*' > "$run/kcm.log" 2>&1 < /dev/null &
    echo $! > "$run/kcm.pid"
    log "kube-controller-manager started (log: $run/kcm.log)"
}

stop_pid() {  # pidfile
    [ -f "$1" ] || return 0
    local pid; pid=$(cat "$1"); rm -f "$1"
    kill -TERM "$pid" 2> /dev/null || return 0
    local i
    for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2> /dev/null || return 0; sleep 0.25; done
    kill -KILL "$pid" 2> /dev/null || true
}

cmd_stop() {
    local run=${1:?usage: cluster.sh stop STATE_DIR}
    stop_pid "$run/kcm.pid"; stop_pid "$run/apiserver.pid"; stop_pid "$run/etcd.pid"
}

case "${1:-}" in
    install) cmd_install ;;
    build) cmd_build ;;
    bin) cmd_bin ;;
    start) shift; cmd_start_apiserver "$@"; cmd_start_kcm "$@" ;;
    start-apiserver) shift; cmd_start_apiserver "$@" ;;
    start-kcm) shift; cmd_start_kcm "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    *) sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
