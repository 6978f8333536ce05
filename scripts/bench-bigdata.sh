#!/usr/bin/env bash
# Put throughput on a big store, and how long a lost node takes to re-replicate.
#
# Starts a fresh `strata dev --nodes 4` (3 replicas per range, so each node
# holds about three quarters of the data), then:
#   1. measures put on the (nearly) EMPTY store: --measure puts of --val-size
#      values (random keys, 100 clients / 10 conns), after as many unmeasured;
#   2. fills it with --gib GiB of such values (random keys, 256 clients / 32
#      conns, not measured; under 5 % may fail (leader changes while ranges
#      split and move), none may hit the quota);
#   3. measures the same put again on the FULL store;
#   4. kill -9s the node holding the most replicas and deletes its data (a
#      replaced machine), then times, from the kill, until every range has 3
#      voting replicas on live nodes again (placement declares the node down
#      after --down-after, then adds learners, streams snapshots and promotes
#      them); polls `strata ctl ranges --json`.
# Prints a table (throughput full vs empty, data on disk, re-replication time).
#
#   scripts/bench-bigdata.sh [--gib G] [--val-size B] [--measure N]
#                            [--down-after D] [--dir DIR] [--keep]
#
# Defaults: --gib 10, --val-size 65536, --measure 3000, --down-after 10s; data
# under a new /tmp/strata-bigdata.XXXXXX (needs about 3.5x --gib free; the
# script refuses to start with less, and stops when under 3 GiB remain).
# Binaries: $STRATA_BIN_DIR (default the release build in $CARGO_TARGET_DIR,
# else target/). Ports: client 32379, base 32790. Everything started is
# stopped on exit (--keep leaves the data). A figure, not a test.
set -euo pipefail

gib=10 val=65536 measure=3000 down_after=10s dir="" keep=0 fill_errors=0
while [ $# -gt 0 ]; do
  case "$1" in
    --gib) gib="$2"; shift 2 ;;
    --val-size) val="$2"; shift 2 ;;
    --measure) measure="$2"; shift 2 ;;
    --down-after) down_after="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-bigdata: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$gib" =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "bench-bigdata: --gib $gib is not a number" >&2; exit 2; }
for n in "$val" "$measure"; do
  [[ "$n" =~ ^[1-9][0-9]{0,8}$ ]] || { echo "bench-bigdata: $n is not a count" >&2; exit 2; }
done
((val <= 1048576)) || { echo "bench-bigdata: --val-size over 1 MiB (etcd's request limit is 1.5 MiB)" >&2; exit 2; }

target_dir="${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target}"
bin="${STRATA_BIN_DIR:-$target_dir/release}"
for b in "$bin/strata" "$bin/strata-bench"; do
  [ -x "$b" ] || { echo "bench-bigdata: $b missing (cargo build --release -p strata -p strata-bench --bins)" >&2; exit 1; }
done
command -v jq >/dev/null || { echo "bench-bigdata: jq missing (apt-get install jq)" >&2; exit 1; }

[ -n "$dir" ] || dir=$(mktemp -d /tmp/strata-bigdata.XXXXXX)
mkdir -p "$dir"
data="$dir/cluster"
free_kib() { df -Pk "$dir" | awk 'NR == 2 {print $4}'; }
need_kib=$(awk -v g="$gib" 'BEGIN {printf "%d", g * 3.5 * 1048576}')
(($(free_kib) > need_kib)) || {
  echo "bench-bigdata: $(($(free_kib) / 1048576)) GiB free under $dir, about $((need_kib / 1048576)) GiB needed" >&2
  exit 1
}

endpoint=127.0.0.1:32379
dev_pid=""
cleanup() {
  if [ -n "$dev_pid" ]; then
    kill -INT "$dev_pid" 2>/dev/null && wait "$dev_pid" 2>/dev/null || true
  fi
  if ((keep)); then echo "bench-bigdata: data kept in $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT

# etcd's default space quota (2 GiB) would stop the fill: allow twice the data.
# (%.0f: mawk's %d stops at 2^31 - 1.)
quota=$(awk -v g="$gib" 'BEGIN {printf "%.0f", (g * 2 + 1) * 1073741824}')
"$bin/strata" dev --data-dir "$data" --nodes 4 --listen-client "$endpoint" \
  --base-port 32790 --node-down-after "$down_after" --quota-backend-bytes "$quota" \
  >"$dir/dev.out" 2>&1 &
dev_pid=$!
for _ in $(seq 1 240); do
  [ -s "$data/dev.json" ] && break
  kill -0 "$dev_pid" 2>/dev/null || { cat "$dir/dev.out" >&2; exit 1; }
  sleep 0.5
done
[ -s "$data/dev.json" ] || { echo "bench-bigdata: cluster did not start" >&2; cat "$dir/dev.out" >&2; exit 1; }

ctl() { "$bin/strata" ctl --data-dir "$data" "$@"; }
# put COUNT PREFIX CLIENTS CONNS JSON [MAX_ERRORS]: random keys in a 2^32 key
# space (every phase writes over the whole of it, as a real load would, so
# the ~164k keys of 10 GiB hardly ever collide); fails past MAX_ERRORS
# (default 0) errors or on any quota refusal.
put() {
  "$bin/strata-bench" --endpoints "$endpoint" --conns "$4" --clients "$3" --json "$5" "${progress[@]}" \
    put --total "$1" --prefix "$2" --key-size 8 --key-space-size 4294967296 --val-size "$val" \
    >"$5.out" 2>&1 || { cat "$5.out" >&2; exit 1; }
  local errors
  errors=$(jq '.results[0].errors' "$5")
  if ((errors > ${6:-0})) || grep -q 'space exceeded' "$5.out"; then
    echo "bench-bigdata: $errors of $1 puts failed:" >&2
    jq '.results[0].error_distribution' "$5" >&2
    exit 1
  fi
  if ((errors > 0)); then
    # Allowed, but said: what failed, for the run's log.
    echo "bench-bigdata: $errors of $1 puts failed (allowed):" \
      "$(jq -c '.results[0].error_distribution' "$5")" >&2
  fi
  fill_errors=$((fill_errors + errors))
}
progress=(--no-progress)
[ -t 2 ] && progress=()
rate() { jq -r '.results[0] | "\(.requests_per_sec | round) \(.percentiles[] | select(.percentile == 50) | .secs * 1000 | round) \(.percentiles[] | select(.percentile == 99) | .secs * 1000 | round) \(.errors)"' "$1"; }
disk_gib() { du -sk "$data"/node-* 2>/dev/null | awk '{s += $1} END {printf "%.1f", s / 1048576}'; }

echo "bench-bigdata: warming up, then measuring put on the empty store ($measure x $val B)" >&2
put "$measure" d/ 100 10 "$dir/warmup.json"
put "$measure" d/ 100 10 "$dir/empty.json"
read -r empty_rps empty_p50 empty_p99 empty_err < <(rate "$dir/empty.json")


fill=$(awk -v g="$gib" -v v="$val" 'BEGIN {printf "%d", g * 1073741824 / v}')
echo "bench-bigdata: filling with $fill x $val B ($gib GiB)" >&2
start=$SECONDS
chunk=$(( fill / 20 > 0 ? fill / 20 : 1 ))
done_n=0
while ((done_n < fill)); do
  n=$(( fill - done_n < chunk ? fill - done_n : chunk ))
  put "$n" d/ 256 32 "$dir/fill.json" $((n / 20))
  done_n=$((done_n + n))
  ((($(free_kib) > 3 * 1048576))) || { echo "bench-bigdata: under 3 GiB free, stopping" >&2; exit 1; }
  printf 'bench-bigdata: %d of %d written in %ds, %s GiB on disk, %s ranges\n' \
    "$done_n" "$fill" $((SECONDS - start)) "$(disk_gib)" "$(ctl ranges --json | wc -l)" >&2
done
fill_secs=$((SECONDS - start))

# Let splits and balancing finish before measuring (range count steady 20 s).
last="" same=0
while ((same < 20)); do
  sleep 5
  now=$(ctl ranges --json | jq -c '[.range_id, .leader_node]' | sort | md5sum)
  if [[ $now == "$last" ]]; then same=$((same + 5)); else same=0; last=$now; fi
done
ranges_full=$(ctl ranges --json | wc -l)
echo "bench-bigdata: measuring put on the full store ($ranges_full ranges)" >&2
put "$measure" d/ 100 10 "$dir/full.json"
read -r full_rps full_p50 full_p99 full_err < <(rate "$dir/full.json")
disk_full=$(disk_gib)

# The node holding the most replicas.
victim=$(ctl ranges --json | jq -r '.replicas[]' | sort | uniq -c | sort -rn | awk 'NR == 1 {print $2}')
held=$(ctl ranges --json | jq -r --argjson v "$victim" 'select(.replicas | index($v)) | .range_id' | wc -l)
# Node ids are placement's; the component's name names its data directory.
read -r pid name < <(jq -r --argjson v "$victim" \
  '.components[] | select(.role == "node" and .id == $v) | "\(.pid) \(.name)"' "$data/dev.json")
[[ "$pid" =~ ^[0-9]+$ ]] || { echo "bench-bigdata: node $victim is not in dev.json" >&2; exit 1; }
vdir=$(du -sk "$data/$name" | awk '{printf "%.1f", $1 / 1048576}')
echo "bench-bigdata: kill -9 node $victim ($name, pid $pid, $held replicas, $vdir GiB)" >&2
kill -9 "$pid"
t0=$(date +%s.%N)
sleep 1
rm -rf "${data:?}/$name"
while :; do
  sleep 2
  rows=$(ctl ranges --json 2>/dev/null) || continue
  left=$(jq -r --argjson v "$victim" \
    'select((.replicas | index($v)) or (.replicas | length) != 3 or (.learners | length) > 0) | .range_id' \
    <<<"$rows" | wc -l)
  t=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.0f", b - a}')
  printf '\rbench-bigdata: %ds after the kill, %d ranges still to re-replicate  ' "$t" "$left" >&2
  ((left == 0)) && break
  ((t < 3600)) || { echo; echo "bench-bigdata: not re-replicated after an hour" >&2; exit 1; }
done
echo >&2
rerep=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.0f", b - a}')

echo
echo "Strata, 4-node strata dev, 3 replicas, $gib GiB of $val-byte values, one machine with $(nproc) CPUs:"
echo
echo "| measure | value |"
echo "|---|---:|"
echo "| put, empty store ($measure puts, 100 clients) | $empty_rps req/s, p50 / p99 $empty_p50 / $empty_p99 ms, $empty_err errors |"
echo "| fill: $fill puts, 256 clients ($fill_errors failed, under 5 %) | ${fill_secs} s ($(awk -v n="$fill" -v s="$fill_secs" 'BEGIN {printf "%.0f", n / (s > 0 ? s : 1)}') puts/s) |"
echo "| put, full store ($ranges_full ranges) | $full_rps req/s, p50 / p99 $full_p50 / $full_p99 ms, $full_err errors |"
echo "| full / empty | $(awk -v a="$full_rps" -v b="$empty_rps" 'BEGIN {printf "%.2f", a / b}') |"
echo "| on disk, all nodes | $disk_full GiB |"
echo "| node killed | node $victim: $held replicas, $vdir GiB |"
echo "| re-replicated (every range 3 voters on live nodes), from the kill | $rerep s (of which $down_after until placement declares the node down) |"
