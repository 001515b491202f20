#!/usr/bin/env bash
# pgbench through direct PostgreSQL, PgBouncer 1.18 and pgveil, interleaved in one run, on the `pgveil demo`
# environment (a throwaway PostgreSQL cluster):
#   - select-only (-S) and TPC-B, -M simple / extended / prepared, 8 and 64 clients;
#     PgBouncer in transaction mode for simple/extended and session mode for prepared (1.18 cannot do prepared
#     statements in transaction mode); pgveil in transaction mode for all of them;
#   - per row and target: TPS, mean latency, ratios to direct and to PgBouncer, and for each proxy its CPU time
#     per transaction (utime+stime deltas from /proc/<pid>/stat: far less noisy than TPS on a shared 2-core
#     machine), system calls and context switches per transaction (perf stat over all the proxy's threads:
#     raw_syscalls:sys_enter and context-switches, counted while pgbench runs);
#   - connection setup rate (new connection + SELECT 1): direct SCRAM, PgBouncer SCRAM, pgveil token;
#   - pgveil's resident memory with 5,000 idle client connections.
# pgveil runs twice: in its default configuration (one event loop per core, "thread per core") and with
# --threads 1 (one event loop, like PgBouncer).
# Usage: bash bench/pgbench.sh [seconds per run, default 10] [pool size, default 16] [scale, default 10]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs=${1:-10}
pool=${2:-16}
scale=${3:-10}
ulimit -n 20000
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
# shellcheck source=bench/lib.sh
source bench/lib.sh  # the working directory is the repository root (cd above)
bin=$(pgveil_bin)  # PGVEIL_BIN: measure that binary instead of building this checkout
work=$(mktemp -d)
pids=()
cleanup() {
    # runuser does not pass signals on: stop PgBouncer by its own pid.
    [ -s "$work/pgbouncer.pid" ] && kill "$(cat "$work/pgbouncer.pid")" 2>/dev/null || true
    for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# 1. Throwaway PostgreSQL with the demo tenants (the demo's own proxy stays idle).
start_demo "$bin" "$work"
sockdir=$(dirname "$(ps -o args= -C postgres | sed -n "s/.*-D \(\/tmp\/pgveil-cluster-[^ ]*\)\/data -p $dbport.*/\1/p" | head -1)/x")/sock
superuser() { psql -X -At -h "$sockdir" -p "$dbport" -U postgres -d acme -c "$1"; }
superuser "SELECT 1" >/dev/null
echo "initialising pgbench tables, scale $scale..." >&2
PGPASSWORD=$dbpass pgbench -i -q -s "$scale" -h 127.0.0.1 -p "$dbport" -U "$dbuser" acme >/dev/null 2>&1

# 2. pgveil in transaction mode, without the demo's control database, API and masking policy: this measures
#    the relay and pooling alone (bench/masking.sh measures masking).
vport=$(free_port)
sed -e "s/^addr = .*/addr = \"127.0.0.1:$vport\"/" -e "s/^size = .*/size = $pool\nmode = \"transaction\"\nmax_prepared_statements = 200/" \
    -e 's/^checkout_timeout = .*/checkout_timeout = "60s"/' <(proxy_config "$envdir/pgveil.toml" control api policy) >"$work/pgveil.toml"
"$bin" serve --config "$work/pgveil.toml" >"$work/pgveil.log" 2>&1 &
vpid=$!
pids+=($vpid)
v1port=$(free_port)
sed -e "s/^addr = .*/addr = \"127.0.0.1:$v1port\"/" "$work/pgveil.toml" >"$work/pgveil1.toml"
"$bin" serve --threads 1 --config "$work/pgveil1.toml" >"$work/pgveil1.log" 2>&1 &
v1pid=$!
pids+=($v1pid)
token=$("$bin" token mint --config "$envdir/pgveil.toml" --user bench --tenant acme --role analyst --ttl 8h --mfa)

# 3. PgBouncer 1.18: SCRAM towards clients and the server, with the role's SCRAM secret from pg_authid.
bport=$(free_port)
secret=$(superuser "SELECT rolpassword FROM pg_authid WHERE rolname = '$dbuser'")
printf '"%s" "%s"\n' "$dbuser" "$secret" >"$work/userlist.txt"
# Both proxies serve TLS with the demo's server certificate (clients choose: sslmode=disable or require).
read -r tls_cert tls_key < <(python3 -c "import tomllib; t=tomllib.load(open('$envdir/pgveil.toml','rb'))['tls']; print(t['cert'], t['key'])")
cp "$tls_cert" "$work/server.crt"; cp "$tls_key" "$work/server.key"; chmod 600 "$work/server.key"
cat >"$work/pgbouncer.ini" <<EOF
[databases]
acme_tx = host=127.0.0.1 port=$dbport dbname=acme pool_mode=transaction pool_size=$pool
acme_session = host=127.0.0.1 port=$dbport dbname=acme pool_mode=session pool_size=70
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $work/userlist.txt
max_client_conn = 1000
default_pool_size = $pool
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
client_tls_sslmode = allow
client_tls_cert_file = $work/server.crt
client_tls_key_file = $work/server.key
EOF
chown -R postgres "$work"
runuser -u postgres -- pgbouncer "$work/pgbouncer.ini" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do [ -s "$work/pgbouncer.pid" ] && break; sleep 0.1; done
bpid=$(cat "$work/pgbouncer.pid")
for p in $vport $v1port; do
    for _ in $(seq 1 50); do (echo >/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done

tck=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
usr() { awk '{print $14}' "/proc/$1/stat"; }
# run <target> <pid or -> <mode> <clients> <script flag>: prints
# "tps latency_ms cpu_us_per_txn syscalls_per_txn context_switches_per_txn user_percent" (the last four "-" for
# direct; user_percent: the share of the CPU time spent in user space, the rest is the kernel's)
# $sslmode: "disable" (plain loopback, the main table) or "require" (the TLS table); both proxies alike.
sslmode=disable
run() {
    local target=$1 pid=$2 mode=$3 clients=$4 flag=$5 conn pw before after ubefore uafter out threads=2 perf_pid=
    case $target in
        direct) conn="host=127.0.0.1 port=$dbport dbname=acme user=$dbuser"; pw=$dbpass ;;
        pgbouncer) local db=acme_tx; [ "$mode" = prepared ] && db=acme_session
                   conn="host=127.0.0.1 port=$bport dbname=$db user=$dbuser"; pw=$dbpass ;;
        pgveil) conn="host=127.0.0.1 port=$vport dbname=acme user=bench"; pw=$token ;;
        pgveil1) conn="host=127.0.0.1 port=$v1port dbname=acme user=bench"; pw=$token ;;
    esac
    conn="$conn sslmode=$sslmode"
    # pgbench prepares each command synchronously on first use, blocking its thread: in TPC-B (a multi-
    # statement transaction) that stalls same-thread clients holding pooled backends, so use a thread each.
    [ "$mode" = prepared ] && [ -z "$flag" ] && threads=$clients
    if [ "$pid" != - ]; then
        before=$(cpu "$pid"); ubefore=$(usr "$pid")
        perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$pid" -o "$work/perf.out" 2>/dev/null &
        perf_pid=$!
    fi
    out=$(PGPASSWORD=$pw pgbench -n $flag -M "$mode" -c "$clients" -j "$threads" -T "$secs" "$conn" 2>&1) || {
        echo "$out" >&2; [ -n "$perf_pid" ] && kill -INT "$perf_pid"; echo "0 0 - - -"; return; }
    local tps lat n sys cs
    if [ "$pid" != - ]; then
        after=$(cpu "$pid"); uafter=$(usr "$pid")
        kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
        sys=$(awk -F, '/raw_syscalls:sys_enter/ {print $1}' "$work/perf.out")
        cs=$(awk -F, '/context-switches/ {print $1}' "$work/perf.out")
    fi
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
    lat=$(sed -n 's/^latency average = \([0-9.]*\).*/\1/p' <<<"$out")
    n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
    if [ "$pid" != - ]; then
        python3 -c "n = max($n, 1); print($tps, $lat, round(($after - $before) / $tck / n * 1e6, 1), round(${sys:-0} / n, 2), round(${cs:-0} / n, 2), round(100 * ($uafter - $ubefore) / max($after - $before, 1)))"
    else
        echo "$tps $lat - - - -"
    fi
}

echo
echo "pgbench, ${secs}s per run, scale $scale, pool $pool, $(nproc) cores, $(date -u +%F), $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "PgBouncer $(pgbouncer --version | head -1 | awk '{print $2}'): transaction mode for simple/extended, session mode for prepared; pgveil: transaction mode;"
echo "'pgveil' = default (one event loop per core), 'pgveil -t1' = --threads 1; us, sys, cs = the proxy's CPU µs, system calls, context switches per transaction; usr% = the share of us in user space."
printf '| %-6s | %-8s | %3s | %-10s | %8s | %7s | %6s | %6s | %6s | %4s | %6s | %5s |\n' \
    test mode c target TPS "lat ms" "/direct" "/bouncer" us "usr%" sys cs
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
# row <test> <mode> <clients> <target>...: runs the targets one after the other and prints their table rows.
# PGVEIL_BENCH_ROWS (e.g. "select-simple-8 select-prepared-64"): only those rows of the main table.
row() {
    local test=$1 mode=$2 c=$3 flag="" rows=() target p
    shift 3
    if [ -n "${PGVEIL_BENCH_ROWS:-}" ] && [[ " $PGVEIL_BENCH_ROWS " != *" $test-$mode-$c "* ]]; then return; fi
    [ "$test" = select ] && flag="-S"
    for target in "$@"; do
        case $target in direct) p=- ;; pgbouncer) p=$bpid ;; pgveil) p=$vpid ;; pgveil1) p=$v1pid ;; esac
        rows+=("$target $(run "$target" "$p" "$mode" "$c" "$flag")")
    done
    python3 - "$test" "$mode" "$c" "${rows[@]}" <<'EOF'
import sys
t, m, c, *rows = sys.argv[1:]
rows = [r.split() for r in rows]
tps = {r[0]: float(r[1]) for r in rows}
ratio = lambda a, b: f"{tps[a] / tps[b]:.2f}" if tps.get(b) else "-"
names = {"direct": "direct", "pgbouncer": "pgbouncer", "pgveil": "pgveil", "pgveil1": "pgveil -t1"}
for name, tp, lat, us, sysc, cs, usr in rows:
    d = "" if name == "direct" else ratio(name, "direct")
    b = "" if name in ("direct", "pgbouncer") else ratio(name, "pgbouncer")
    print(f"| {t:<6} | {m:<8} | {c:>3} | {names[name]:<10} | {float(tp):8.0f} | {lat:>7} | {d:>6} | {b:>6} | {us:>6} | {usr:>4} | {sysc:>6} | {cs:>5} |")
EOF
}
for test in select tpcb; do
    for mode in prepared extended simple; do
        for c in 8 64; do
            row "$test" "$mode" "$c" direct pgbouncer pgveil pgveil1
        done
    done
done

# TLS towards the clients (sslmode=require; the proxies' backends stay plain): PgBouncer 1.18 with client TLS
# against pgveil's default configuration, select-only.
echo
echo "TLS between pgbench and the proxy (sslmode=require), the same certificate for both proxies:"
printf '| %-6s | %-8s | %3s | %-10s | %8s | %7s | %6s | %6s | %6s | %4s | %6s | %5s |\n' \
    test mode c target TPS "lat ms" "/direct" "/bouncer" us "usr%" sys cs
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
sslmode=require
for mode in extended simple; do
    for c in 8 64; do
        row select "$mode" "$c" pgbouncer pgveil
    done
done
sslmode=disable

# Connection setup: new connection + SELECT 1 + disconnect (pgbench -C), 4 clients.
echo 'SELECT 1;' >"$work/one.sql"
setup() {
    local name=$1 pw=$2 conn=$3
    local tps
    tps=$(PGPASSWORD=$pw pgbench -n -C -c 4 -j 2 -T "$secs" -f "$work/one.sql" "$conn" 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    printf '| %-32s | %10.0f |\n' "$name" "$tps"
}
echo
echo "| connection setup (new connection + SELECT 1) | conn/s |"
echo "|---|---|"
setup "direct PostgreSQL, SCRAM" "$dbpass" "host=127.0.0.1 port=$dbport dbname=acme user=$dbuser sslmode=disable"
setup "PgBouncer, SCRAM" "$dbpass" "host=127.0.0.1 port=$bport dbname=acme_tx user=$dbuser sslmode=disable"
setup "pgveil, token (plain loopback)" "$token" "host=127.0.0.1 port=$vport dbname=acme user=bench sslmode=disable"

# pgveil's memory with 5,000 idle authenticated clients (transaction mode: they hold no backend).
rss() { awk '/^VmRSS/ {print $2}' "/proc/$vpid/status"; }
before=$(rss)
python3 - "$vport" "$token" 5000 "$before" "$vpid" <<'EOF'
import asyncio, struct, sys
port, token, n, before, pid = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

async def client():
    r, w = await asyncio.open_connection("127.0.0.1", port)
    params = b"user\0idle\0database\0acme\0\0"
    w.write(struct.pack("!ii", 8 + len(params), 196608) + params)
    while True:
        tag = await r.readexactly(1)
        ln = struct.unpack("!i", await r.readexactly(4))[0]
        body = await r.readexactly(ln - 4)
        if tag == b"R" and struct.unpack("!i", body[:4])[0] == 3:
            w.write(b"p" + struct.pack("!i", 4 + len(token) + 1) + token + b"\0")
        elif tag == b"Z":
            return r, w
        elif tag == b"E":
            raise RuntimeError(body)

async def main():
    conns = []
    for i in range(0, n, 250):
        conns += await asyncio.gather(*[client() for _ in range(min(250, n - i))])
    await asyncio.sleep(1)
    after = int(next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")))
    print(f"\npgveil RSS: {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB with {len(conns)} idle clients "
          f"({(after - before) * 1024 / len(conns) / 1024:.1f} KiB per idle client)")
    for _, w in conns:
        w.close()

asyncio.run(main())
EOF
