#!/usr/bin/env bash
# Where pgveil's CPU goes: `perf record` of pgveil (default configuration, transaction mode, no masking) while
# pgbench runs select-only through it, then the top symbols (self time, all threads) and the share of samples
# in the kernel. The setup is bench/pgbench.sh's (a `pgveil demo` cluster, pool 16, plain loopback).
# Usage: bash bench/profile.sh [mode: simple|extended|prepared, default extended] [clients, default 8]
#        [seconds, default 10] [extra `pgveil serve` arguments, e.g. --threads 1]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mode=${1:-extended}
clients=${2:-8}
secs=${3:-10}
shift $(($# < 3 ? $# : 3))
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
# shellcheck source=bench/lib.sh
source bench/lib.sh  # the working directory is the repository root (cd above)
bin=$(pgveil_bin)  # PGVEIL_BIN: measure that binary instead of building this checkout
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

start_demo "$bin" "$work"
PGPASSWORD=$dbpass pgbench -i -q -s 10 -h 127.0.0.1 -p "$dbport" -U "$dbuser" acme >/dev/null 2>&1

vport=$(free_port)
sed -e "s/^addr = .*/addr = \"127.0.0.1:$vport\"/" -e "s/^size = .*/size = 16\nmode = \"transaction\"\nmax_prepared_statements = 200/" \
    <(proxy_config "$envdir/pgveil.toml" control api policy) >"$work/pgveil.toml"
"$bin" serve --config "$work/pgveil.toml" "$@" >"$work/pgveil.log" 2>&1 &
vpid=$!
pids+=($vpid)
for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/$vport) 2>/dev/null && break; sleep 0.1; done
token=$("$bin" token mint --config "$envdir/pgveil.toml" --user bench --tenant acme --role analyst --ttl 8h --mfa)
conn="host=127.0.0.1 port=$vport dbname=acme user=bench sslmode=disable"
threads=2; [ "$mode" = prepared ] && threads=$clients
# Warm the pool, then record.
PGPASSWORD=$token pgbench -n -S -M "$mode" -c "$clients" -j "$threads" -T 2 "$conn" >/dev/null 2>&1
for t in /proc/$vpid/task/*; do echo "$(basename "$t") $(awk '/ctxt_switches/ {s += $2} END {print s}' "$t/status")"; done >"$work/cs.before"
perf record -F 2999 -g -p "$vpid" -o "$work/perf.data" -- sleep "$secs" >/dev/null 2>&1 &
rec=$!
PGPASSWORD=$token pgbench -n -S -M "$mode" -c "$clients" -j "$threads" -T "$secs" "$conn" 2>&1 | grep -E '^(tps|number of transactions actually)'
wait "$rec" || true
echo "== kernel vs user samples"
perf report -i "$work/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -8
echo "== samples per thread"
perf report -i "$work/perf.data" --no-children --sort comm,pid --stdio -g none 2>/dev/null | grep -E "^ +[0-9]" | head -12 || true
echo "== context switches per thread during the run (voluntary+involuntary)"
for t in /proc/$vpid/task/*; do
    before=$(awk -v t="$(basename "$t")" '$1 == t {print $2}' "$work/cs.before")
    printf '%s %s %s\n' "$(cat "$t/comm")" "$(basename "$t")" "$(( $(awk '/ctxt_switches/ {s += $2} END {print s}' "$t/status") - ${before:-0} ))"
done | sort -k3 -n -r | head -8
echo "== top symbols (self)"
perf report -i "$work/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -40
