#!/usr/bin/env bash
# The router's memory during one LIST of every key: loads --keys small keys
# (8-byte keys and values under list/) into a fresh 3-node `strata dev` split
# into many ranges (--split-keys), then reads them all once with
# `strata-bench range --stream` (etcd 3.7's RangeStream: bounded chunks) and
# once with a plain Range (one message), sampling the router's resident
# memory (VmRSS, every 20 ms) before and during each.
#
#   scripts/list-rss.sh [--keys N] [--split-keys K]
#
# Defaults: --keys 1000000, --split-keys 20000 (about 70 ranges). Binaries:
# $STRATA_BIN_DIR (default the release build in $CARGO_TARGET_DIR or
# target/). Ports: base 30790 / client 30379. Everything started is stopped
# on exit. A figure, not a test.
set -euo pipefail

keys=1000000 split=20000
while [ $# -gt 0 ]; do
  case "$1" in
    --keys) keys="$2"; shift 2 ;;
    --split-keys) split="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "list-rss: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for n in "$keys" "$split"; do
  [[ "$n" =~ ^[1-9][0-9]{0,8}$ ]] || { echo "list-rss: $n is not a count" >&2; exit 2; }
done

target_dir="${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target}"
bin_dir="${STRATA_BIN_DIR:-$target_dir/release}"
for b in "$bin_dir/strata" "$bin_dir/strata-bench"; do
  [ -x "$b" ] || { echo "list-rss: $b missing (cargo build --release -p strata -p strata-bench --bins)" >&2; exit 1; }
done
command -v jq >/dev/null || { echo "list-rss: jq missing (apt-get install jq)" >&2; exit 1; }
tmp=$(mktemp -d /tmp/strata-list-rss.XXXXXX)
dev_pid="" sampler=""
cleanup() {
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null || true
  if [ -n "$dev_pid" ]; then
    kill -TERM "$dev_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$dev_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$dev_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

rss_mib() { awk '$1 == "VmRSS:" {printf "%.0f\n", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo 0; }
# Samples $1's VmRSS into $2 (one line per sample) until killed.
sample() { while :; do rss_mib "$1" >> "$2"; sleep 0.02; done; }
peak() { sort -n "$1" | tail -1; }

dir="$tmp/data"
"$bin_dir/strata" dev --data-dir "$dir" --base-port 30790 --listen-client 127.0.0.1:30379 \
  --range-split-write-rate 0 --range-split-keys "$split" > "$tmp/dev.log" 2>&1 &
dev_pid=$!
for _ in $(seq 300); do grep -q "strata dev ready" "$tmp/dev.log" 2>/dev/null && break; sleep 0.2; done
grep -q "strata dev ready" "$tmp/dev.log" || { echo "list-rss: strata dev did not start (see $tmp/dev.log)" >&2; exit 1; }
ep=127.0.0.1:30379
"$bin_dir/strata-bench" --endpoints "$ep" --conns 10 --clients 200 --no-progress \
  put --total "$keys" --key-space-size "$keys" --sequential-keys --prefix list/ > /dev/null
ranges=$("$bin_dir/strata" ctl --data-dir "$dir" --json ranges | wc -l)
router=$(jq -r '.components[] | select(.role == "router") | .pid' "$dir/dev.json")

echo "| $keys keys, $ranges ranges | router RSS before MiB | peak during MiB | seconds |"
echo "|---|---:|---:|---:|"
for mode in stream plain; do
  flag=()
  [ "$mode" = stream ] && flag=(--stream)
  sleep 2
  before=$(rss_mib "$router")
  : > "$tmp/$mode.rss"
  sample "$router" "$tmp/$mode.rss" &
  sampler=$!
  start=$(date +%s.%N)
  "$bin_dir/strata-bench" --endpoints "$ep" --no-progress range --prefix list/ --total 1 \
    "${flag[@]}" > "$tmp/$mode.out" 2>&1 || { cat "$tmp/$mode.out" >&2; exit 1; }
  end=$(date +%s.%N)
  kill "$sampler"; wait "$sampler" 2>/dev/null || true; sampler=""
  printf '| %s | %s | %s | %.1f |\n' "$([ "$mode" = stream ] && echo RangeStream || echo Range)" \
    "$before" "$(peak "$tmp/$mode.rss")" "$(echo "$end - $start" | bc)"
done
