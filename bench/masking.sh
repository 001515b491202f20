#!/usr/bin/env bash
# Cost of masking, measured through one pgveil: pgbench select-only (-S) as a masked role (`analyst`, whose
# reads of pgbench_accounts are rewritten: `filler` is classified `pii.address` for this run) against an
# unrestricted role (`admin`: statements are not even parsed), in the same run, interleaved, on the
# `pgveil demo` environment (whose schema, like real ones, has citext for payers.email, pgcrypto and a tenant
# type with its own operator, so every decision runs with extension and tenant objects present); -M simple (a new literal in every statement: the literal-normalized plan cache
# serves it), extended and prepared; transaction mode, the default event loops (one per core). Reports TPS, the ratio masked/privileged
# and pgveil's CPU time per transaction (utime+stime from /proc; far less noisy than TPS on shared cores).
# Usage: bash bench/masking.sh [seconds per run, default 10] [clients, default 8] [scale, default 10]
# (PGVEIL_LOG="info,pgveil::audit=off" in the environment: audit records not written; PGVEIL_AUDIT_FILE=1:
# written to a file instead of the log)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs=${1:-10}
clients=${2:-8}
scale=${3:-10}
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
fail() { echo "$1" >&2; [ -f "$work/pgveil.log" ] && tail -5 "$work/pgveil.log" >&2; exit 1; }

start_demo "$bin" "$work"
echo "initialising pgbench tables, scale $scale..." >&2
PGPASSWORD=$dbpass pgbench -i -q -s "$scale" -h 127.0.0.1 -p "$dbport" -U "$dbuser" acme >/dev/null 2>&1

# The demo's policy plus one rule, in a folder of our own.
mkdir "$work/policies"
cp "$envdir"/policies/*.toml "$work/policies/"
cat >>"$work/policies/payments.toml" <<'EOF'

[[column]]
match = "pgbench_accounts.filler"
class = "pii.address"
EOF
vport=$(free_port)
sed -e "s/^addr = .*/addr = \"127.0.0.1:$vport\"/" -e "s/^size = .*/size = 16\nmode = \"transaction\"\nmax_prepared_statements = 200/" \
    -e "s|^dir = \"policies\"|dir = \"$work/policies\"|" <(proxy_config "$envdir/pgveil.toml" control api) >"$work/pgveil.toml"
grep -q "^dir = \"$work/policies\"" "$work/pgveil.toml" || { echo "policy dir not replaced" >&2; exit 1; }
# PGVEIL_AUDIT_FILE=1: audit records to a file ([audit] file, as in production) instead of the log.
if [ -n "${PGVEIL_AUDIT_FILE:-}" ]; then
    printf '\n[audit]\nfile = "%s"\n' "$work/audit.jsonl" >>"$work/pgveil.toml"
fi
"$bin" serve --config "$work/pgveil.toml" >"$work/pgveil.log" 2>&1 &
vpid=$!
pids+=($vpid)
for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/$vport) 2>/dev/null && break; sleep 0.1; done
(echo >/dev/tcp/127.0.0.1/$vport) 2>/dev/null || fail "pgveil did not start"
mint() { "$bin" token mint --config "$envdir/pgveil.toml" --user "bench-$1" --tenant acme --role "$1" --ttl 8h --mfa; }
masked=$(mint analyst)
admin=$(mint admin)
conn="host=127.0.0.1 port=$vport dbname=acme user=bench sslmode=disable"

# The schema the decisions run on has the extension and tenant objects of real schemas.
exts=$(PGPASSWORD=$dbpass psql -X -At -h 127.0.0.1 -p "$dbport" -U "$dbuser" acme -c \
    "SELECT count(*) FROM pg_extension WHERE extname IN ('citext', 'pgcrypto')")
[ "$exts" = 2 ] || { echo "the bench schema lacks citext/pgcrypto ($exts)" >&2; exit 1; }
# Proof that the masked role's reads are rewritten (else the comparison means nothing).
# (Retried while the tenant's catalog is still loading: pgveil refuses masked reads until it is.)
for _ in $(seq 1 60); do
    filler=$(PGPASSWORD=$masked psql -X -At "$conn" -c "SELECT rtrim(filler) FROM pgbench_accounts WHERE aid = 1" 2>/dev/null) && break
    sleep 0.5
done
[ "$filler" = "[address removed]" ] || { echo "masked role read filler as '$filler'" >&2; exit 1; }

tck=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$vpid/stat"; }
run() { # run <token> <mode>: "tps cpu_us_per_txn"
    local before after out tps n threads=2
    [ "$2" = prepared ] && threads=$clients
    before=$(cpu)
    out=$(PGPASSWORD=$1 pgbench -n -S -M "$2" -c "$clients" -j "$threads" -T "$secs" "$conn" 2>&1) || { echo "$out" >&2; echo "0 -"; return; }
    after=$(cpu)
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
    n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
    echo "$tps $(python3 -c "print(round(($after - $before) / $tck / max($n, 1) * 1e6, 1))")"
}

echo
echo "pgbench -S through pgveil, ${secs}s per run, $clients clients, scale $scale, $(nproc) cores, $(date -u +%F)"
echo "| mode | admin TPS | analyst TPS | analyst/admin | admin µs/txn | analyst µs/txn | analyst - admin µs |"
echo "|---|---|---|---|---|---|---|"
for mode in simple extended prepared; do
    read -r ta ca < <(run "$admin" "$mode")
    read -r tm cm < <(run "$masked" "$mode")
    python3 -c "import sys; m, ta, tm, ca, cm = sys.argv[1:]; print(f'| {m} | {float(ta):.0f} | {float(tm):.0f} | {float(tm) / float(ta):.2f} | {ca} | {cm} | {float(cm) - float(ca):+.1f} |')" "$mode" "$ta" "$tm" "$ca" "$cm"
done
