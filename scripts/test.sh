#!/usr/bin/env bash
# Installs what is missing, then runs the whole test suite (every crate, every target),
# and makes sure no process the tests started (etcd, strata components) outlives it.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh -- --test-threads=1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
if [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/strata-target}
# A cache left as a symlink to a directory that no longer exists is dropped.
if [[ -L $CARGO_TARGET_DIR && ! -e $CARGO_TARGET_DIR ]]; then
    rm -f "$CARGO_TARGET_DIR"
fi
mkdir -p "$CARGO_TARGET_DIR"
# Integration tests start whole clusters (up to 6 processes each); on a small
# machine they are steadier one at a time.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-1}

# Every process started by the tests inherits this variable, even those that put
# themselves in another process group or session (strata dev's children do), so
# leftovers are found through /proc/PID/environ. This shell itself does not carry it.
run_id="strata-test-$$-$RANDOM$RANDOM"

# Prints the pids of live processes carrying the marker (pure bash: no subprocess that
# would itself carry it).
marked_pids() {
    local dir pid entry
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        # environ is readable for our own (same uid) processes; others are skipped.
        while IFS= read -r -d '' entry; do
            if [[ $entry == "STRATA_TEST_RUN=$run_id" ]]; then
                echo "$pid"
                break
            fi
        done 2>/dev/null <"$dir/environ" || true
    done
}

cleanup() {
    local pids pid i
    mapfile -t pids < <(marked_pids)
    ((${#pids[@]} == 0)) && return 0
    echo "test.sh: stopping ${#pids[@]} leftover test process(es): ${pids[*]}" >&2
    for pid in "${pids[@]}"; do
        ps -o pid=,args= -p "$pid" >&2 || true
        kill -TERM "$pid" 2>/dev/null || true
    done
    for i in $(seq 1 50); do
        mapfile -t pids < <(marked_pids)
        ((${#pids[@]} == 0)) && return 0
        sleep 0.2
    done
    echo "test.sh: SIGKILL to ${pids[*]}" >&2
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

status=0
# `failpoints`: the fault tests and the robustness suite inject faults into real
# processes through it (the same build serves both, so nothing is built twice).
STRATA_TEST_RUN=$run_id cargo test --workspace --all-targets --no-fail-fast \
    --features strata/failpoints "$@" || status=$?

# The robustness suite: a fixed-seed short run of every nemesis, both traffic
# profiles; any violation fails the build (scripts/robustness.sh --help).
rb_dir=$(mktemp -d /tmp/strata-robustness-ci.XXXXXX)
if STRATA_TEST_RUN=$run_id STRATA_ROBUSTNESS_NO_INSTALL=1 \
    scripts/robustness.sh --ci --dir "$rb_dir"; then
    rm -rf "$rb_dir"
else
    echo "test.sh: the robustness suite failed; histories and logs are in $rb_dir" >&2
    status=1
fi
exit "$status"
