#!/usr/bin/env bash
# The robustness suite: builds `strata` with the `failpoints` feature (the nodes'
# crash, partition and planted-bug points) and runs `strata robustness`, which
# starts a fresh cluster per run, drives recorded traffic under a nemesis, and
# checks the history. Exits non-zero on any violation.
#
#   scripts/robustness.sh --profile etcd --nemesis kill --duration 30s --seed 7
#   scripts/robustness.sh --runs 10 --nemesis all --profile etcd,kubernetes --duration 60s
#   scripts/robustness.sh --ci      # the fixed-seed short run of every nemesis (.ci/run)
#
# `strata robustness --help` explains every option, nemesis and checker.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ${1:-} == --ci ]]; then
    shift
    # Every nemesis once, the profiles taking turns, each run 20 s of faults.
    set -- --nemesis kill,pause,partition,leader-transfer,split,snapshot,failpoint,all \
        --profile etcd,kubernetes --runs 8 --duration 20s --seed 1000 "$@"
fi

if [[ -z ${STRATA_ROBUSTNESS_NO_INSTALL:-} ]]; then
    scripts/install-deps.sh >&2
fi
if [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/strata-target}
cargo build --features strata/failpoints --bin strata >&2
exec "$CARGO_TARGET_DIR/debug/strata" robustness "$@"
