#!/usr/bin/env bash
# Write throughput and memory against the number of ranges, on 3-node
# `strata dev` clusters: one per key-count split threshold, all running at
# once, each loaded with --keys distinct keys (so it splits into about
# keys / (threshold * 0.75) ranges; load-based splits off) and left to
# settle; then --rounds rounds of `strata-bench put` (1000 clients over 100
# connections), alternating between the clusters so that the machine's drift
# falls on all alike. Prints ranges, the median requests/s (and each round's),
# the ratio to the first threshold's, median p50/p99, and the router's and the
# nodes' resident memory (now and peak, from /proc/PID/status) after the runs.
#
#   scripts/bench-ranges.sh [--split-keys K,K,...] [--keys N] [--total N] [--rounds N]
#
# Defaults: --split-keys 0,4000 (0: never split by keys, one range; 4000:
# about 32 ranges), --keys 100000, --total 100000, --rounds 3. Binaries as in
# bench-vs-etcd.sh ($STRATA_BIN_DIR, default the release build). Ports:
# cluster i (from 0) at base 31790+200i, client 31379+i. Everything started is
# stopped on exit. A figure, not a test.
set -euo pipefail

split_keys="0,4000" keys=100000 total=100000 rounds=3
while [ $# -gt 0 ]; do
  case "$1" in
    --split-keys) split_keys="$2"; shift 2 ;;
    --keys) keys="$2"; shift 2 ;;
    --total) total="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-ranges: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for n in "$keys" "$total" "$rounds"; do
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
dev_pids=()
stop_dev() {
  for pid in "${dev_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${dev_pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  dev_pids=()
}
trap 'stop_dev; rm -rf "$tmp"' EXIT

rss() { awk -v k="$2" '$1 == k":" {printf "%.0f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }
ranges() { "$bin_dir/strata" ctl --data-dir "$1" --json ranges 2>/dev/null | wc -l; }

IFS=',' read -ra thresholds <<< "$split_keys"
# Every configuration runs at once (ports 200 apart), loaded and settled
# first; then the rounds alternate between them, so the machine's drift
# falls on all of them alike.
declare -a dirs=() eps=()
for i in "${!thresholds[@]}"; do
  k=${thresholds[$i]}
  dir="$tmp/k$k-$i" ep="127.0.0.1:$((31379 + i))"
  dirs+=("$dir") eps+=("$ep")
  split_flag=()
  [ "$k" -gt 0 ] && split_flag=(--range-split-keys "$k")
  "$bin_dir/strata" dev --data-dir "$dir" --base-port $((31790 + 200 * i)) --listen-client "$ep" \
    --range-split-write-rate 0 "${split_flag[@]}" > "$tmp/dev-$i.log" 2>&1 &
  dev_pids+=($!)
  for _ in $(seq 150); do grep -q ready "$tmp/dev-$i.log" 2>/dev/null && break; sleep 0.2; done
  grep -q ready "$tmp/dev-$i.log" || { echo "bench-ranges: strata dev did not start (see $tmp/dev-$i.log)" >&2; exit 1; }
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
done

declare -A rates=() p50s=() p99s=()
for r in $(seq "$rounds"); do
  for i in "${!thresholds[@]}"; do
    out=$("$bin_dir/strata-bench" --endpoints "${eps[$i]}" --conns 100 --clients 1000 --no-progress \
      put --total "$total" --key-space-size "$keys" 2>&1)
    rates[$i]+="$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}') "
    p50s[$i]+="$(echo "$out" | awk '/ 50% in/ {printf "%.1f", $3 * 1000}') "
    p99s[$i]+="$(echo "$out" | awk '/ 99% in/ {printf "%.1f", $3 * 1000}') "
    echo "bench-ranges: round $r, split at ${thresholds[$i]} keys: $(echo "${rates[$i]}" | awk '{print $NF}') puts/s" >&2
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
echo "| split at keys | ranges | put req/s (median of $rounds; rounds) | vs first | p50 / p99 ms (medians) | router RSS now / peak MiB | node RSS now / peak MiB (each) |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
first=""
for i in "${!thresholds[@]}"; do
  dir=${dirs[$i]}
  rate=$(echo "${rates[$i]}" | median)
  [ -n "$first" ] || first=$rate
  ratio=$(awk -v a="$rate" -v b="$first" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}')
  router=$(jq -r '.components[] | select(.role == "router") | .pid' "$dir/dev.json")
  nodes=$(jq -r '.components[] | select(.role == "node") | .pid' "$dir/dev.json")
  node_rss=""
  for p in $nodes; do node_rss+="$(rss "$p" VmRSS) / $(rss "$p" VmHWM), "; done
  echo "| ${thresholds[$i]} | $(ranges "$dir") | $rate (${rates[$i]% }) | ${ratio}x | $(echo "${p50s[$i]}" | median) / $(echo "${p99s[$i]}" | median) | $(rss "$router" VmRSS) / $(rss "$router" VmHWM) | ${node_rss%, } |"
done
