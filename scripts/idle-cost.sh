#!/usr/bin/env bash
# Measures what idle ranges cost: starts a local cluster (release build) with a low
# --range-split-keys, writes KEYS distinct keys so the keyspace splits into about
# KEYS / (SPLIT_KEYS / 2) ranges, waits until splitting and balancing have settled,
# then samples, over WINDOW seconds with no client traffic, the CPU time each process
# used (/proc/PID/stat) and the raft messages each node sent (its /metrics).
#
#   scripts/idle-cost.sh [--keys N] [--split-keys K] [--window S] [--nodes N]
#                        [--quiesce-after-ticks T] [--put N] [--keep]
#
# Defaults: 3 nodes, 40000 keys, split at 16 keys (so ~5000 ranges, ~5000 replicas
# per node), 30 s window. --quiesce-after-ticks 0 turns quiescence off for a
# comparison; --keys 0 measures a cluster with its single initial range.
# Prints one line per process (CPU, raft messages, resident memory now and peak)
# and a summary. --put N then runs N puts over the whole keyspace (1000 clients,
# 100 conns) and prints each process's memory again. --keep leaves it running.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

keys=40000 split_keys=16 window=30 nodes=3 quiesce="" keep=0 load=0
while (($#)); do
    case $1 in
    --keys) keys=$2; shift 2 ;;
    --split-keys) split_keys=$2; shift 2 ;;
    --window) window=$2; shift 2 ;;
    --nodes) nodes=$2; shift 2 ;;
    --quiesce-after-ticks) quiesce=$2; shift 2 ;;
    --put) load=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "idle-cost: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/strata-target}
# STRATA_BIN_DIR: use the strata and strata-bench binaries there instead of building.
if [[ -n ${STRATA_BIN_DIR:-} ]]; then
    bin=$STRATA_BIN_DIR
else
    cargo build -q --release --manifest-path "$root/Cargo.toml" -p strata -p strata-bench
    bin=$CARGO_TARGET_DIR/release
fi

data=$(mktemp -d /tmp/strata-idle.XXXXXX)
port=$((24000 + RANDOM % 2000))
endpoint=127.0.0.1:$port
dev_args=(dev --data-dir "$data" --nodes "$nodes" --listen-client "$endpoint"
    --base-port $((port + 100)) --range-split-keys "$split_keys")
[[ -n $quiesce ]] && dev_args+=(--quiesce-after-ticks "$quiesce")
"$bin/strata" "${dev_args[@]}" >"$data/dev.out" 2>&1 &
dev_pid=$!
stop() {
    if ((keep)); then
        echo "idle-cost: cluster left running (strata dev pid $dev_pid, data $data)"
    else
        kill -INT "$dev_pid" 2>/dev/null && wait "$dev_pid" 2>/dev/null || true
        rm -rf "$data"
    fi
}
trap stop EXIT

for _ in $(seq 1 120); do
    [[ -s $data/dev.json ]] && break
    sleep 0.5
done
[[ -s $data/dev.json ]] || { echo "idle-cost: cluster did not start:" >&2; cat "$data/dev.out" >&2; exit 1; }

ranges() { "$bin/strata" ctl ranges --data-dir "$data" --json 2>/dev/null | wc -l; }

if ((keys > 0)); then
    echo "idle-cost: writing $keys keys (split at $split_keys keys per range)"
    "$bin/strata-bench" --endpoints "$endpoint" --conns 4 --clients 32 put \
        --total "$keys" --key-space-size "$keys" --sequential-keys --val-size 16 \
        >"$data/bench.out" 2>&1 || { cat "$data/bench.out" >&2; exit 1; }
fi

# Settled: the range count and every node's replica and leader counts unchanged
# for 20 s (splits done, scheduler idle).
echo "idle-cost: waiting for splits and balancing to settle"
last="" same=0 start=$SECONDS
while ((same < 20)); do
    sleep 5
    now="$(ranges) $("$bin/strata" ctl nodes --data-dir "$data" --json 2>/dev/null | tr -d ' \n')"
    if [[ $now == "$last" ]]; then same=$((same + 5)); else same=0; last=$now; fi
    printf '\ridle-cost: %s ranges after %ss ' "${now%% *}" $((SECONDS - start))
    ((SECONDS - start < 1800)) || { echo; echo "idle-cost: not settled after 30 min" >&2; exit 1; }
done
echo
"$bin/strata" ctl nodes --data-dir "$data"

# pid, name and metrics URL of every component, from dev.json.
mapfile -t comps < <(python3 -c '
import json, sys
for c in json.load(open(sys.argv[1]))["components"]:
    print(c["pid"], c["name"], c["metrics_url"])' "$data/dev.json")

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
sent() {
    curl -s "$2" | awk '/^strata_node_raft_messages_sent_total/ {s += $2} END {printf "%d", s}'
}
declare -A c0 m0
for c in "${comps[@]}"; do
    read -r pid name url <<<"$c"
    c0[$name]=$(cpu_ticks "$pid")
    m0[$name]=$(sent "$pid" "$url")
done
sleep "$window"
hz=$(getconf CLK_TCK)
total=0
# Resident memory now / peak, MiB.
rss() { awk '/^VmRSS/ {r = $2} /^VmHWM/ {h = $2} END {printf "%d / %d", r / 1024, h / 1024}' "/proc/$1/status"; }
printf '%-10s %12s %14s %16s %18s\n' process "cpu ms/s" "% of a core" "raft msgs/s" "RSS/peak MiB"
for c in "${comps[@]}"; do
    read -r pid name url <<<"$c"
    ticks=$(($(cpu_ticks "$pid") - c0[$name]))
    msgs=$(($(sent "$pid" "$url") - m0[$name]))
    total=$((total + ticks))
    awk -v t="$ticks" -v hz="$hz" -v w="$window" -v m="$msgs" -v n="$name" -v r="$(rss "$pid")" \
        'BEGIN {ms = t * 1000 / hz / w; printf "%-10s %12.1f %13.2f%% %16.1f %18s\n", n, ms, ms / 10, m / w, r}'
done
n=$(ranges)
awk -v t="$total" -v hz="$hz" -v w="$window" -v n="$n" -v k="$nodes" 'BEGIN {
    ms = t * 1000 / hz / w
    printf "idle-cost: %d ranges (%d replicas), all processes together %.1f ms CPU per second (%.2f%% of one core); %.2f us per replica per second\n",
        n, n * 3, ms, ms / 10, ms * 1000 / (n * 3)
}'

if ((load > 0)); then
    echo "idle-cost: $load puts over the $keys keys (1000 clients, 100 conns)"
    "$bin/strata-bench" --endpoints "$endpoint" --conns 100 --clients 1000 --no-progress \
        --json "$data/put.json" put --total "$load" --key-space-size "$((keys > 0 ? keys : 100000))" \
        --val-size 256 >"$data/put.out" 2>&1 || { cat "$data/put.out" >&2; exit 1; }
    jq -r '.results[0] | "idle-cost: \(.requests_per_sec | round) puts/s, \(.errors) errors"' "$data/put.json"
    printf '%-10s %18s\n' process "RSS/peak MiB"
    for c in "${comps[@]}"; do
        read -r pid name _ <<<"$c"
        printf '%-10s %18s\n' "$name" "$(rss "$pid")"
    done
fi
