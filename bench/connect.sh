#!/usr/bin/env bash
# Connection setup rate: new connection + `SELECT 1` + disconnect, with pgbench -C, against
#   - PostgreSQL directly (SCRAM-SHA-256 login),
#   - pgveil with token auth (plain text on loopback, and TLS),
# in one run on the `pgveil demo` environment. Also reports pgveil's CPU time per connection.
# Usage: bash bench/connect.sh [seconds per run, default 10] [clients, default 4]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs=${1:-10}
clients=${2:-4}
cargo build --release --quiet --bin pgveil
bin=target/release/pgveil
out=$(mktemp)
"$bin" demo --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 >"$out" 2>/dev/null &
demo=$!
trap 'kill -INT $demo 2>/dev/null; wait $demo 2>/dev/null; rm -f "$out" "$script"' EXIT
for _ in $(seq 1 120); do grep -q "pgveil demo ready" "$out" && break; sleep 0.5; done
grep -q "pgveil demo ready" "$out" || { echo "demo did not start" >&2; exit 1; }
port=$(grep -o 'running on [0-9.]*:[0-9]*' "$out" | sed 's/.*://')
token=$(grep -A1 'bob, acme' "$out" | tail -1 | sed "s/.*PGPASSWORD='\([^']*\)'.*/\1/")
envdir=$(sed -n 's/.*Environment (config, keys, certs, secrets): //p' "$out")
read -r dbuser dbpass dbport < <(python3 -c "import json,sys; s=json.load(open('$envdir/secrets.json'))['tenants/acme/db']; print(s['username'], s['password'], s['port'])")
proxy_pid=$demo
script=$(mktemp)
echo 'SELECT 1;' >"$script"

cpu() { awk '{print $14 + $15}' "/proc/$proxy_pid/stat"; }
run() { # name, password, conn string
    local name=$1 pw=$2 conn=$3 before after tps
    before=$(cpu)
    tps=$(PGPASSWORD=$pw pgbench -n -C -c "$clients" -j 2 -T "$secs" -f "$script" "$conn" 2>&1 |
        sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    after=$(cpu)
    local conns
    conns=$(python3 -c "print(int(float('$tps') * $secs))")
    local us
    us=$(python3 -c "print(round(($after - $before) / $(getconf CLK_TCK) / max($conns, 1) * 1e6, 1))")
    printf '%-34s %10s conn/s   pgveil CPU %8s us/conn\n' "$name" "$tps" "$us"
}
echo "pgbench -C, $clients clients, ${secs}s each, $(nproc) cores, $(date -u +%F)"
run "direct PostgreSQL (SCRAM)" "$dbpass" "host=127.0.0.1 port=$dbport dbname=acme user=$dbuser sslmode=disable"
run "pgveil token, plain loopback" "$token" "host=127.0.0.1 port=$port dbname=acme user=bob sslmode=disable"
run "pgveil token, TLS" "$token" "host=127.0.0.1 port=$port dbname=acme user=bob sslmode=require"
