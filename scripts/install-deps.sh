#!/usr/bin/env bash
# Installs what building, running and testing Strata needs on Debian 12, skipping what
# is already there: clang and libclang-dev (RocksDB's bindings), protobuf-compiler
# (protoc, for the gRPC code) with libprotobuf-dev (the google/protobuf/*.proto files
# protoc imports: only a "Recommends", which --no-install-recommends would skip),
# etcd-client and etcd-server (etcdctl, and a real etcd that compatibility tests
# compare against), prometheus (`strata dev --prometheus`), curl (the HTTP/JSON
# gateway tests drive the client port with it).
# Idempotent; run as root (or with sudo available). Also checks for a Rust toolchain.
set -euo pipefail

PACKAGES=(clang libclang-dev protobuf-compiler libprotobuf-dev etcd-client etcd-server prometheus fonts-dejavu-core curl)

log() { echo "install-deps: $*" >&2; }

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    if [[ $(id -u) -eq 0 ]]; then
        sudo=()
    elif command -v sudo >/dev/null 2>&1; then
        sudo=(sudo)
    else
        log "missing packages: ${missing[*]}; run this script as root to install them"
        exit 1
    fi
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q
    # --no-install-recommends keeps e.g. prometheus from pulling in exporters and a
    # web stack; policy-rc.d-free containers simply don't start the services.
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "system packages present: ${PACKAGES[*]}"
fi

# Rust: rustup's usual location, then whatever is on PATH. Nothing is downloaded.
if [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
    log "no Rust toolchain: cargo is not on PATH and $HOME/.cargo/env does not exist."
    log "install a recent stable toolchain with rustup (https://rustup.rs), then rerun."
    exit 1
fi
log "rust toolchain: $(cargo --version)"
