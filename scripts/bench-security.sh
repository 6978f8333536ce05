#!/usr/bin/env bash
# What TLS and auth cost: put, 1000 clients / 100 conns (etcd's benchmark flags),
# against Strata (3-node `strata dev`) and etcd (3 members), each in three modes on a
# fresh cluster:
#   plain  no TLS, no auth
#   tls    TLS on the client port with client certificates, and mutual TLS between
#          the components / members
#   auth   auth enabled; the load runs as a non-root user whose role grants
#          readwrite on the benchmark's key prefix (so every request is checked)
#
#   scripts/bench-security.sh [--rounds N] [--total N] [--out DIR] [--only strata|etcd]
#
# Binaries from $STRATA_BIN_DIR (default: $CARGO_TARGET_DIR/release, built with
# `cargo build --release -p strata -p strata-bench --bins`), etcd from $ETCD_BIN
# (default /usr/bin/etcd), etcdctl from PATH. Each mode runs one uncounted warm-up
# round, then --rounds measured ones; prints a Markdown table of their medians.
set -euo pipefail
rounds=3 total=30000 out="" only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --total) total="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-security: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
bin_dir="${STRATA_BIN_DIR:-${CARGO_TARGET_DIR:-/var/tmp/strata-target}/release}"
etcd_bin="${ETCD_BIN:-/usr/bin/etcd}"
for b in "$bin_dir/strata" "$bin_dir/strata-bench" "$etcd_bin"; do
  [ -x "$b" ] || { echo "bench-security: $b missing (cargo build --release -p strata -p strata-bench --bins)" >&2; exit 1; }
done
for t in jq etcdctl; do
  command -v "$t" >/dev/null || { echo "bench-security: $t missing" >&2; exit 1; }
done
[ -n "$out" ] || out=$(mktemp -d /tmp/strata-security.XXXXXX)
mkdir -p "$out"
export ETCDCTL_API=3
port=32379
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  sleep 2
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  pids=()
}
trap stop_all EXIT

# Certificates for etcd (strata dev --tls writes its own under its data dir).
"$bin_dir/strata" certs --dir "$out/certs" >/dev/null

# start SYSTEM MODE: starts a fresh cluster; sets `tls_flags` (etcdctl/bench TLS
# flags) and `scheme`.
start() {
  local system=$1 mode=$2 dir="$out/$1-$2"
  rm -rf "$dir"; mkdir -p "$dir"
  tls_flags=() scheme=http
  if [ "$system" = strata ]; then
    local extra=()
    [ "$mode" = tls ] && extra=(--tls)
    setsid "$bin_dir/strata" dev --data-dir "$dir/data" --listen-client "127.0.0.1:$port" \
      --base-port $((port + 100)) "${extra[@]}" > "$dir/dev.log" 2>&1 &
    pids+=($!)
    if [ "$mode" = tls ]; then
      local t="$dir/data/tls"
      tls_flags=(--cacert "$t/ca.pem" --cert "$t/client.pem" --key "$t/client-key.pem")
      scheme=https
    fi
  else
    local t="$out/certs" cluster="" i
    [ "$mode" = tls ] && scheme=https
    for i in 1 2 3; do
      cluster+="${cluster:+,}m$i=$scheme://127.0.0.1:$((port + 10 + i))"
    done
    for i in 1 2 3; do
      local c=$((port + i - 1)) p=$((port + 10 + i)) sec=()
      if [ "$mode" = tls ]; then
        sec=(--cert-file "$t/server.pem" --key-file "$t/server-key.pem" --trusted-ca-file "$t/ca.pem"
          --client-cert-auth --peer-cert-file "$t/peer.pem" --peer-key-file "$t/peer-key.pem"
          --peer-trusted-ca-file "$t/ca.pem" --peer-client-cert-auth)
      fi
      setsid "$etcd_bin" --name "m$i" --data-dir "$dir/m$i" \
        --listen-client-urls "$scheme://127.0.0.1:$c" --advertise-client-urls "$scheme://127.0.0.1:$c" \
        --listen-peer-urls "$scheme://127.0.0.1:$p" --initial-advertise-peer-urls "$scheme://127.0.0.1:$p" \
        --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench \
        "${sec[@]}" > "$dir/m$i.log" 2>&1 &
      pids+=($!)
    done
    [ "$mode" = tls ] && tls_flags=(--cacert "$t/ca.pem" --cert "$t/client.pem" --key "$t/client-key.pem")
  fi
  local i
  for i in $(seq 1 120); do
    if ctl endpoint health >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "bench-security: $system $mode did not become healthy (logs in $dir)" >&2
  exit 1
}

ctl() { etcdctl --endpoints "$scheme://127.0.0.1:$port" "${tls_flags[@]}" --command-timeout=20s "$@"; }

enable_auth() {
  ctl user add root:rootpw >/dev/null
  ctl role add bench >/dev/null
  ctl role grant-permission bench readwrite --prefix=true bench/ >/dev/null
  ctl user add bench:benchpw >/dev/null
  ctl user grant-role bench bench >/dev/null
  ctl auth enable >/dev/null
}

table="$out/table.md"
{
  echo "| system | mode | put req/s | vs plain | p50 / p99 ms |"
  echo "|---|---|---:|---:|---:|"
} > "$table"
for system in strata etcd; do
  if [ -n "$only" ] && [ "$only" != "$system" ]; then continue; fi
  plain_rate=""
  for mode in plain tls auth; do
    echo "== $system $mode ($rounds rounds of $total puts)" >&2
    start "$system" "$mode"
    user=()
    if [ "$mode" = auth ]; then enable_auth; user=(--user bench:benchpw); fi
    # Round 0 warms up (Strata starts as one range and splits by load) and is
    # not counted.
    for r in $(seq 0 "$rounds"); do
      "$bin_dir/strata-bench" --no-progress --endpoints "127.0.0.1:$port" "${tls_flags[@]}" "${user[@]}" \
        --conns 100 --clients 1000 --json "$out/$system-$mode-$r.json" \
        put --total "$total" --key-space-size 100000 --val-size 256 --prefix bench/ >&2
    done
    stop_all
    # Medians over the rounds.
    read -r rate p50 p99 < <(jq -s -r '
      def med: sort | .[(length / 2 | floor)];
      def pct(p): .results[0].percentiles[] | select(.percentile == p) | .secs * 1000;
      [ (map(.results[0].requests_per_sec) | med), (map(pct(50)) | med), (map(pct(99)) | med) ]
      | map(. * 100 | round / 100 | tostring) | join(" ")' \
      $(seq -f "$out/$system-$mode-%g.json" 1 "$rounds"))
    [ "$mode" = plain ] && plain_rate=$rate
    ratio=$(awk -v a="$rate" -v b="$plain_rate" 'BEGIN {printf "%.2f", a / b}')
    echo "| $system | $mode | $rate | $ratio | $p50 / $p99 |" >> "$table"
  done
done
echo
echo "put, 1000 clients / 100 conns, $total puts of 256-byte values, medians of $rounds rounds; one machine with $(nproc) CPUs:"
echo
cat "$table"
