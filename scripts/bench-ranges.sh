#!/usr/bin/env bash
# Write throughput and memory against the number of ranges, on one 3-node
# `strata dev`: for each key-count split threshold, a fresh cluster is loaded
# with --keys distinct keys (so it splits into about keys / (threshold * 0.75)
# ranges; load-based splits off), left to settle, then measured with
# `strata-bench put` (1000 clients over 100 connections). Prints ranges,
# requests/s, p50/p99, and the router's and the nodes' resident memory (now
# and peak, from /proc/PID/status) after the run.
#
#   scripts/bench-ranges.sh [--split-keys K,K,...] [--keys N] [--total N]
#
# Defaults: --split-keys 0,4000 (0: never split by keys, one range; 4000:
# about 32 ranges), --keys 100000, --total 100000. Binaries as in
# bench-vs-etcd.sh ($STRATA_BIN_DIR, default the release build). Ports: strata
# dev's defaults moved to base 31790 / client 31379. Everything started is
# stopped on exit. A figure, not a test.
set -euo pipefail

split_keys="0,4000" keys=100000 total=100000
while [ $# -gt 0 ]; do
  case "$1" in
    --split-keys) split_keys="$2"; shift 2 ;;
    --keys) keys="$2"; shift 2 ;;
    --total) total="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-ranges: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for n in "$keys" "$total"; do
  [[ "$n" =~ ^[1-9][0-9]{0,8}$ ]] || { echo "bench-ranges: $n is not a count" >&2; exit 2; }
done
[[ "$split_keys" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "bench-ranges: --split-keys takes counts" >&2; exit 2; }

target_dir="${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target}"
bin_dir="${STRATA_BIN_DIR:-$target_dir/release}"
for b in "$bin_dir/strata" "$bin_dir/strata-bench"; do
  [ -x "$b" ] || { echo "bench-ranges: $b missing (cargo build --release -p strata -p strata-bench --bins)" >&2; exit 1; }
done
command -v jq >/dev/null || { echo "bench-ranges: jq missing (apt-get install jq)" >&2; exit 1; }
tmp=$(mktemp -d /tmp/strata-ranges.XXXXXX)
dev_pid=""
stop_dev() {
  if [ -n "$dev_pid" ]; then
    kill -TERM "$dev_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$dev_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$dev_pid" 2>/dev/null || true
    dev_pid=""
  fi
}
trap 'stop_dev; rm -rf "$tmp"' EXIT

rss() { awk -v k="$2" '$1 == k":" {printf "%.0f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }
ranges() { "$bin_dir/strata" ctl --data-dir "$1" --json ranges 2>/dev/null | wc -l; }

echo "| split at keys | ranges | put req/s | p50 / p99 ms | router RSS now / peak MiB | node RSS now / peak MiB (each) |"
echo "|---:|---:|---:|---:|---:|---:|"
IFS=',' read -ra thresholds <<< "$split_keys"
for k in "${thresholds[@]}"; do
  dir="$tmp/k$k"
  split_flag=()
  [ "$k" -gt 0 ] && split_flag=(--range-split-keys "$k")
  "$bin_dir/strata" dev --data-dir "$dir" --base-port 31790 --listen-client 127.0.0.1:31379 \
    --range-split-write-rate 0 "${split_flag[@]}" > "$tmp/dev-$k.log" 2>&1 &
  dev_pid=$!
  for _ in $(seq 150); do grep -q ready "$tmp/dev-$k.log" 2>/dev/null && break; sleep 0.2; done
  grep -q ready "$tmp/dev-$k.log" || { echo "bench-ranges: strata dev did not start (see $tmp/dev-$k.log)" >&2; exit 1; }
  ep=127.0.0.1:31379
  "$bin_dir/strata-bench" --endpoints "$ep" --conns 10 --clients 100 --no-progress \
    put --total "$keys" --key-space-size "$keys" --sequential-keys > /dev/null
  # Settle: the range count stops changing for 3 s (at most 60 s).
  last=-1 same=0
  for _ in $(seq 60); do
    now=$(ranges "$dir")
    if [ "$now" = "$last" ]; then same=$((same + 1)); else same=0; fi
    last=$now
    [ "$same" -ge 3 ] && break
    sleep 1
  done
  out=$("$bin_dir/strata-bench" --endpoints "$ep" --conns 100 --clients 1000 --no-progress \
    put --total "$total" --key-space-size "$keys" 2>&1)
  rate=$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')
  p50=$(echo "$out" | awk '/ 50% in/ {printf "%.1f", $3 * 1000}')
  p99=$(echo "$out" | awk '/ 99% in/ {printf "%.1f", $3 * 1000}')
  router=$(jq -r '.components[] | select(.role == "router") | .pid' "$dir/dev.json")
  nodes=$(jq -r '.components[] | select(.role == "node") | .pid' "$dir/dev.json")
  node_rss=""
  for p in $nodes; do node_rss+="$(rss "$p" VmRSS) / $(rss "$p" VmHWM), "; done
  echo "| $k | $(ranges "$dir") | $rate | $p50 / $p99 | $(rss "$router" VmRSS) / $(rss "$router" VmHWM) | ${node_rss%, } |"
  stop_dev
done
