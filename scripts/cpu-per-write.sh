#!/usr/bin/env bash
# Where a put's CPU goes: runs one put load against a `strata dev` cluster and
# against a 3-member etcd on this machine, reads every process's CPU time
# (utime + stime in /proc/PID/stat) before and after, and prints the CPU each
# component spent per acknowledged write, in µs, side by side.
#
#   scripts/cpu-per-write.sh [--total N] [--conns C] [--clients K] [--only strata|etcd]
#                            [--split-keys K] [--rate R]
#
# --split-keys K: Strata's ranges split at K keys, and the 100,000-key space is
# written once first, so the load runs over ~100000/(K/2) ranges (4000: ~32).
# --rate R: offer R puts/s (below both systems' capacity) instead of as many
# as they take; the CPU per write then compares the same batching, since a
# faster run also batches more writes per raft round and per fsync.
#
# Binaries: strata and strata-bench from $STRATA_BIN_DIR (default: the release
# build in $CARGO_TARGET_DIR or ./target), etcd from $ETCD_BIN (default
# /usr/bin/etcd). Ports: 127.0.0.1:31379.. for etcd, strata dev's defaults
# moved to base 31790 / client 31379 (strata and etcd never run at once).
# Everything started is stopped on exit. A figure, not a test: the machine's
# other load moves it.
set -euo pipefail

total=20000 conns=10 clients=100 only="" split_keys=0 rate=0
while [ $# -gt 0 ]; do
  case "$1" in
    --total) total="$2"; shift 2 ;;
    --conns) conns="$2"; shift 2 ;;
    --clients) clients="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --split-keys) split_keys="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "cpu-per-write: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$split_keys" =~ ^[0-9]{1,9}$ ]] || { echo "cpu-per-write: --split-keys takes a count" >&2; exit 2; }
[[ "$rate" =~ ^[0-9]{1,9}$ ]] || { echo "cpu-per-write: --rate takes puts per second" >&2; exit 2; }
for n in "$total" "$conns" "$clients"; do
  [[ "$n" =~ ^[1-9][0-9]{0,7}$ ]] || { echo "cpu-per-write: $n is not a count" >&2; exit 2; }
done

target_dir="${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target}"
bin_dir="${STRATA_BIN_DIR:-$target_dir/release}"
etcd_bin="${ETCD_BIN:-/usr/bin/etcd}"
for b in "$bin_dir/strata" "$bin_dir/strata-bench"; do
  [ -x "$b" ] || { echo "cpu-per-write: $b missing: cargo build --release -p strata -p strata-bench --bins" >&2; exit 1; }
done
clk=$(getconf CLK_TCK)
tmp=$(mktemp -d /tmp/strata-cpu.XXXXXX)
pids_to_stop=()
cleanup() {
  for p in "${pids_to_stop[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids_to_stop[@]:-}"; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# measure NAME=PID... -- ENDPOINTS: runs the load and prints one row per component.
measure() {
  local system="$1" endpoints="$2"; shift 2
  local -A before
  local name pid
  for np in "$@"; do before[$np]=$(ticks "${np#*=}"); done
  local out
  out=$("$bin_dir/strata-bench" --endpoints "$endpoints" --conns "$conns" --clients "$clients" \
    put --total "$total" --key-space-size 100000 --rate "$rate" 2>&1)
  local got errs
  got=$(echo "$out" | awk '/Requests\/sec/ {print $2; exit}')
  errs=$(echo "$out" | awk '/^ *\[[0-9]+\]\t/ {gsub(/[][]/, "", $1); e += $1} END {print e + 0}')
  local sum=0
  for np in "$@"; do
    name="${np%%=*}"; pid="${np#*=}"
    local d=$(( $(ticks "$pid") - before[$np] ))
    sum=$(( sum + d ))
    awk -v s="$system" -v n="$name" -v d="$d" -v c="$clk" -v t="$total" \
      'BEGIN {printf "| %s | %s | %.2f | %.0f |\n", s, n, d / c, d / c / t * 1e6}'
  done
  awk -v s="$system" -v d="$sum" -v c="$clk" -v t="$total" -v r="${got:-?}" -v e="${errs:-?}" \
    'BEGIN {printf "| %s | **all servers** (%.0f puts/s, errors %s) | %.2f | %.0f |\n", s, r, e, d / c, d / c / t * 1e6}'
}

echo "put --total $total --conns $conns --clients $clients --rate $rate (0: unlimited), 256-byte values; CPU = utime + stime"
echo
echo "| system | component | CPU s | CPU µs per write |"
echo "|---|---|---:|---:|"

if [ "$only" != "etcd" ]; then
  split_flag=()
  [ "$split_keys" -gt 0 ] && split_flag=(--range-split-keys "$split_keys")
  "$bin_dir/strata" dev --data-dir "$tmp/strata" --base-port 31790 --listen-client 127.0.0.1:31379 \
    "${split_flag[@]}" >"$tmp/strata.log" 2>&1 &
  pids_to_stop+=($!)
  for _ in $(seq 1 120); do grep -q "ready" "$tmp/strata.log" && break; sleep 0.5; done
  grep -q "ready" "$tmp/strata.log" || { echo "cpu-per-write: strata dev did not start:" >&2; cat "$tmp/strata.log" >&2; exit 1; }
  # Warm up (splits, leaders settle), then find who leads.
  "$bin_dir/strata-bench" --endpoints 127.0.0.1:31379 put --total 2000 >/dev/null 2>&1 || true
  if [ "$split_keys" -gt 0 ]; then
    "$bin_dir/strata-bench" --endpoints 127.0.0.1:31379 --conns 10 --clients 100 --no-progress \
      put --total 100000 --key-space-size 100000 --sequential-keys >/dev/null
    last=-1 same=0
    for _ in $(seq 60); do # until the range count holds for 3 s
      now=$("$bin_dir/strata" ctl ranges --json --data-dir "$tmp/strata" | wc -l)
      if [ "$now" = "$last" ]; then same=$((same + 1)); else same=0; fi
      last=$now
      [ "$same" -ge 3 ] && break
      sleep 1
    done
  fi
  leader_node=$("$bin_dir/strata" ctl ranges --json --data-dir "$tmp/strata" | jq -s '[.[] | .leader_node] | group_by(.) | max_by(length) | .[0]')
  placement_leader=$("$bin_dir/strata" ctl placement members --json --data-dir "$tmp/strata" | jq -s '.[] | select(.leader) | .id')
  ranges=$("$bin_dir/strata" ctl ranges --json --data-dir "$tmp/strata" | wc -l)
  comps=()
  # By id: a node's is placement's node id (dev.json learns it), not the
  # number in its name.
  while read -r name pid role id; do
    label="$name"
    [ "$role" = node ] && [ "$id" = "$leader_node" ] && label="$name (leads most ranges)"
    [ "$role" = placement ] && [ "$id" = "$placement_leader" ] && label="$name (leader)"
    comps+=("$label=$pid")
  done < <(jq -r '.components[] | "\(.name) \(.pid) \(.role) \(.id)"' "$tmp/strata/dev.json")
  # Raft messages the nodes received, summed over them: each range's appends
  # and acks, so per write they grow with the ranges a load spreads over.
  msgs() {
    local n=0 url m
    for url in $(jq -r '.components[] | select(.role == "node") | .metrics_url' "$tmp/strata/dev.json"); do
      m=$(curl -s "$url" | awk '/^strata_node_raft_messages_received_total / {printf "%d", $2}' || true)
      n=$(( n + ${m:-0} ))
    done
    echo "$n"
  }
  msgs_before=$(msgs)
  measure "strata ($ranges range(s))" 127.0.0.1:31379 "${comps[@]}"
  awk -v d="$(( $(msgs) - msgs_before ))" -v t="$total" \
    'BEGIN {printf "| strata | raft messages received per write, all nodes | | %.2f |\n", d / t}'
  kill -TERM "${pids_to_stop[0]}" 2>/dev/null || true
  wait "${pids_to_stop[0]}" 2>/dev/null || true
  pids_to_stop=()
fi

if [ "$only" != "strata" ]; then
  [ -x "$etcd_bin" ] || { echo "cpu-per-write: $etcd_bin missing (apt-get install etcd-server)" >&2; exit 1; }
  initial="m1=http://127.0.0.1:31480,m2=http://127.0.0.1:31482,m3=http://127.0.0.1:31484"
  comps=()
  for i in 1 2 3; do
    cport=$((31379 + 2 * (i - 1))) pport=$((31480 + 2 * (i - 1)))
    "$etcd_bin" --name "m$i" --data-dir "$tmp/etcd-$i" \
      --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
      --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
      --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token cpu-per-write \
      >"$tmp/etcd-$i.log" 2>&1 &
    pids_to_stop+=($!)
    disown $!
    comps+=("etcd m$i=$!")
  done
  eps=127.0.0.1:31379,127.0.0.1:31381,127.0.0.1:31383
  for _ in $(seq 1 60); do
    ETCDCTL_API=3 etcdctl --endpoints="$eps" endpoint health >/dev/null 2>&1 && break; sleep 0.5
  done
  leader=$(ETCDCTL_API=3 etcdctl --endpoints="$eps" endpoint status -w json | jq -r '.[] | select(.Status.leader == .Status.header.member_id) | .Endpoint')
  for k in "${!comps[@]}"; do
    port=$((31379 + 2 * k))
    [ "$leader" = "127.0.0.1:$port" ] && comps[$k]="${comps[$k]%%=*} (leader)=${comps[$k]#*=}"
  done
  "$bin_dir/strata-bench" --endpoints "$eps" put --total 2000 >/dev/null 2>&1 || true
  measure "etcd 3 members" "$eps" "${comps[@]}"
fi
