#!/usr/bin/env bash
# Cross-range transactions and the single-range fast path, on a 3-node `strata dev`
# whose keyspace is pre-split into ~40 ranges (--range-split-keys 1000, 40,000 keys
# loaded first):
#   put       1 client, and 1000 clients / 100 conns (the fast path)
#   txn-put   --txn-ops 1 (one range: the fast path), 2, 5 and 20 (keys drawn at
#             random over the 40,000: about that many ranges touched, 20 keys touch
#             ~16), with 1 client (latency) and 32 clients (throughput)
#
#   scripts/bench-xtxn.sh [--rounds N] [--out DIR]
#
# Binaries from $STRATA_BIN_DIR (default $CARGO_TARGET_DIR/release, built with
# `cargo build --release -p strata -p strata-bench --bins`). With $BASE_BIN_DIR set
# (another build, e.g. of the commit before cross-range txns), the fast-path rows are
# run again on it, on a fresh cluster loaded the same way, and printed below. Medians
# of --rounds (default 3).
set -euo pipefail
rounds=3 out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-xtxn: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
bin_dir="${STRATA_BIN_DIR:-${CARGO_TARGET_DIR:-/var/tmp/strata-target}/release}"
base_dir="${BASE_BIN_DIR:-}"
for d in "$bin_dir" ${base_dir:+"$base_dir"}; do
  for b in "$d/strata" "$d/strata-bench"; do
    [ -x "$b" ] || { echo "bench-xtxn: $b missing" >&2; exit 1; }
  done
done
command -v jq >/dev/null || { echo "bench-xtxn: jq missing" >&2; exit 1; }
[ -n "$out" ] || out=$(mktemp -d /tmp/strata-xtxn.XXXXXX)
mkdir -p "$out"
port=33379
pid=""
stop() {
  [ -n "$pid" ] || return 0
  kill -TERM -- "-$pid" 2>/dev/null || true; sleep 2; kill -KILL -- "-$pid" 2>/dev/null || true
  pid=""
}
trap stop EXIT

# start BIN_DIR NAME: a fresh cluster, loaded and split.
start() {
  local bins=$1 dir="$out/$2"
  rm -rf "$dir"; mkdir -p "$dir"
  setsid "$bins/strata" dev --data-dir "$dir/data" --listen-client "127.0.0.1:$port" \
    --base-port $((port + 100)) --range-split-keys 1000 > "$dir/dev.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 120); do
    grep -q ready "$dir/dev.log" 2>/dev/null && break
    sleep 0.5
  done
  "$bins/strata-bench" --no-progress --endpoints "127.0.0.1:$port" --conns 10 --clients 100 \
    put --total 40000 --key-space-size 40000 --sequential-keys --val-size 256 --prefix x/ >/dev/null
  local n=0
  for _ in $(seq 1 60); do
    n=$("$bins/strata" ctl --data-dir "$dir/data" ranges --json 2>/dev/null | wc -l)
    [ "$n" -ge 30 ] && break
    sleep 1
  done
  echo "== $2: $n ranges" >&2
}

# run BIN_DIR TAG CLIENTS CONNS WORKLOAD ARGS...: --rounds runs into $out/TAG-N.json.
run() {
  local bins=$1 tag=$2 clients=$3 conns=$4; shift 4
  for r in $(seq 1 "$rounds"); do
    "$bins/strata-bench" --no-progress --endpoints "127.0.0.1:$port" --conns "$conns" \
      --clients "$clients" --json "$out/$tag-$r.json" "$@" >/dev/null
  done
}

# row TAG LABEL: a Markdown row of the medians of TAG's rounds.
row() {
  jq -s -r --arg name "$2" '
    def med: sort | .[(length / 2 | floor)];
    def pct(p): .results[0].percentiles[] | select(.percentile == p) | .secs * 1000;
    [ (map(.results[0].requests_per_sec) | med | round),
      (map(pct(50)) | med * 100 | round / 100), (map(pct(99)) | med * 100 | round / 100) ]
    | "| \($name) | \(.[0]) | \(.[1]) | \(.[2]) |"' $(seq -f "$out/$1-%g.json" 1 "$rounds")
}

fast_path() {
  local bins=$1 name=$2
  run "$bins" "$name-put1" 1 1 put --total 2000 --key-space-size 40000 --val-size 256 --prefix x/
  run "$bins" "$name-put1000" 1000 100 put --total 30000 --key-space-size 40000 --val-size 256 --prefix x/
  run "$bins" "$name-txn1" 100 10 txn-put --txn-ops 1 --total 10000 --key-space-size 40000 --val-size 256 --prefix x/
}

table="$out/table.md"
echo "| workload | req/s | p50 ms | p99 ms |" > "$table"
echo "|---|---:|---:|---:|" >> "$table"
start "$bin_dir" new
fast_path "$bin_dir" new
for ops in 2 5 20; do
  run "$bin_dir" "new-x$ops-c1" 1 1 txn-put --txn-ops "$ops" --total 300 --key-space-size 40000 --val-size 256 --prefix x/
  run "$bin_dir" "new-x$ops-c32" 32 8 txn-put --txn-ops "$ops" --total 2000 --key-space-size 40000 --val-size 256 --prefix x/
done
stop
if [ -n "$base_dir" ]; then
  start "$base_dir" base
  fast_path "$base_dir" base
  stop
fi
{
  row new-put1 "put, 1 client"
  row new-put1000 "put, 1000 clients / 100 conns"
  row new-txn1 "txn-put, 1 op (one range), 100 clients"
  for ops in 2 5 20; do
    row "new-x$ops-c1" "txn-put, $ops ops (cross-range), 1 client"
    row "new-x$ops-c32" "txn-put, $ops ops (cross-range), 32 clients"
  done
  if [ -n "$base_dir" ]; then
    row base-put1 "before: put, 1 client"
    row base-put1000 "before: put, 1000 clients / 100 conns"
    row base-txn1 "before: txn-put, 1 op (one range), 100 clients"
  fi
} >> "$table"
echo
echo "3-node strata dev, ~40 ranges, 256-byte values, medians of $rounds rounds; $(nproc) CPUs:"
echo
cat "$table"
