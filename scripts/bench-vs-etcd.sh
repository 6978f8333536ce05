#!/usr/bin/env bash
# Strata against etcd on this machine, side by side in one run: every row is one
# `strata-bench compare` (a fresh 3-node `strata dev` and a fresh 3-member etcd,
# rounds interleaved A B A B), and the table at the end has the medians.
#
#   scripts/bench-vs-etcd.sh [--rounds N] [--scale F] [--out DIR] [--only ROW,ROW]
#
# Rows (etcd's benchmark workloads, 8-byte keys, 256-byte values):
#   put-1000   put, 1000 clients over 100 connections
#   put-1      put, 1 client
#   txn-put    txn-put, 100 clients over 10 connections
#   range-l    linearizable range of one key, 1000 clients over 100 connections
#   range-s    serializable range of one key, 1000 clients over 100 connections
# --scale multiplies every row's request count (default 1: about 10 s per run).
# Binaries: strata and strata-bench from $STRATA_BIN_DIR (default: the release
# build in $CARGO_TARGET_DIR or ./target; build them with
# `cargo build --release -p strata -p strata-bench --bins`), etcd from $ETCD_BIN
# (default /usr/bin/etcd). Outputs (per-row JSON and Markdown, the table) go to
# --out (default: a new directory under /tmp), with each row's latency CDF and
# throughput over time as PNG. etcd's own `benchmark` tool is not
# needed: strata-bench takes its subcommands and flags. A figure, not a test.
set -euo pipefail

rounds=3 scale=1 out="" only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --scale) scale="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-vs-etcd: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$rounds" =~ ^[1-9][0-9]?$ ]] || { echo "bench-vs-etcd: --rounds $rounds is not 1..99" >&2; exit 2; }
[[ "$scale" =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "bench-vs-etcd: --scale $scale is not a number" >&2; exit 2; }

target_dir="${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target}"
bin_dir="${STRATA_BIN_DIR:-$target_dir/release}"
etcd_bin="${ETCD_BIN:-/usr/bin/etcd}"
for b in "$bin_dir/strata" "$bin_dir/strata-bench" "$etcd_bin"; do
  [ -x "$b" ] || { echo "bench-vs-etcd: $b missing (cargo build --release -p strata -p strata-bench --bins)" >&2; exit 1; }
done
command -v jq >/dev/null || { echo "bench-vs-etcd: jq missing (apt-get install jq)" >&2; exit 1; }
[ -n "$out" ] || out=$(mktemp -d /tmp/strata-vs-etcd.XXXXXX)
mkdir -p "$out"

n() { awk -v a="$1" -v s="$scale" 'BEGIN {printf "%d", a * s}'; }
# name | description | workload (after `--`)
rows=(
  "put-1000|put, 1000 clients / 100 conns|--conns 100 --clients 1000 put --total $(n 100000) --key-space-size 100000"
  "put-1|put, 1 client|--conns 1 --clients 1 put --total $(n 5000) --key-space-size 100000"
  "txn-put|txn-put, 100 clients / 10 conns|--conns 10 --clients 100 txn-put --total $(n 30000) --key-space-size 100000"
  "range-l|linearizable range, 1000 clients|--conns 100 --clients 1000 range foo --consistency l --total $(n 100000)"
  "range-s|serializable range, 1000 clients|--conns 100 --clients 1000 range foo --consistency s --total $(n 100000)"
)

table="$out/table.md"
{
  echo "| workload | Strata req/s | etcd req/s | ratio | Strata p50 / p99 ms | etcd p50 / p99 ms |"
  echo "|---|---:|---:|---:|---:|---:|"
} > "$table"
for row in "${rows[@]}"; do
  IFS='|' read -r name desc workload <<< "$row"
  if [ -n "$only" ] && [[ ",$only," != *",$name,"* ]]; then continue; fi
  echo "== $name: $desc ($rounds rounds)" >&2
  # shellcheck disable=SC2086 # the workload is a word list
  STRATA_BIN="$bin_dir/strata" "$bin_dir/strata-bench" --no-progress --json "$out/$name.json" \
    compare --a strata --b etcd --rounds "$rounds" --etcd-bin "$etcd_bin" \
    --markdown "$out/$name.md" --plot "$out/$name.png" -- $workload >&2
  jq -r --arg d "$desc" '
    def m(k): .table[] | select(.metric == k);
    def f0: . * 1 | round | tostring;
    def f2: (. * 100 | round) / 100 | tostring;
    "| \($d) | \(m("requests/sec").a_median | f0) | \(m("requests/sec").b_median | f0) | \(m("requests/sec").ratio_a_over_b | f2) | \(m("p50 (ms)").a_median | f2) / \(m("p99 (ms)").a_median | f2) | \(m("p50 (ms)").b_median | f2) / \(m("p99 (ms)").b_median | f2) |"
  ' "$out/$name.json" >> "$table"
done
echo
echo "Strata (3-node strata dev) vs etcd $("$etcd_bin" --version 2>/dev/null | awk '/etcd Version/ {print $3}') (3 members), medians of $rounds rounds, one machine with $(nproc) CPUs:"
echo
cat "$table"
echo
echo "(per-row JSON and Markdown in $out)"
