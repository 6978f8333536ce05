#!/usr/bin/env bash
# Installs what is missing, builds `strata` (release) and starts a local cluster:
# placement, 3 storage nodes and a router serving etcd's v3 API on 127.0.0.1:2379.
# Arguments are passed to `strata dev` (see `strata dev --help`); relative paths in
# them, and the default data dir ./strata-data, are relative to the current directory.
# Stop with Ctrl-C.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

"$root/scripts/install-deps.sh"
if [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/strata-target}
cargo build --release --manifest-path "$root/Cargo.toml" --bin strata
exec "$CARGO_TARGET_DIR/release/strata" dev "$@"
