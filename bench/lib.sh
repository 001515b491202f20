# Shared by the bench scripts (sourced).

# proxy_config FILE SECTION...: the config FILE without the named top-level sections (and their subsections),
# e.g. the demo's [control] and [api] when a benchmark measures the proxy alone.
proxy_config() {
    python3 - "$@" <<'PY'
import re, sys
drop = set(sys.argv[2:])
skip = False
for line in open(sys.argv[1]):
    m = re.match(r"^\[+([^\]]+)\]+\s*$", line)
    if m:
        skip = m.group(1).split(".")[0] in drop
    if not skip:
        sys.stdout.write(line)
PY
}

# pgveil_bin: the binary to measure: $PGVEIL_BIN when set (e.g. a build of an earlier commit), else this
# checkout's, built now (absolute path).
pgveil_bin() {
    if [ -n "${PGVEIL_BIN:-}" ]; then
        echo "$PGVEIL_BIN"
    else
        cargo build --release --quiet --bin pgveil
        echo "$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)/pgveil"
    fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_demo BIN WORK: starts `pgveil demo` (a throwaway cluster with the demo tenants; the demo's own proxy
# stays idle), adds its pid to the caller's `pids`, and sets envdir, dbuser, dbpass and dbport (tenant acme).
start_demo() {
    "$1" demo --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 >"$2/demo.out" 2>/dev/null &
    pids+=($!)
    for _ in $(seq 1 120); do grep -q "pgveil demo ready" "$2/demo.out" && break; sleep 0.5; done
    grep -q "pgveil demo ready" "$2/demo.out" || { echo "demo did not start" >&2; exit 1; }
    envdir=$(sed -n 's/.*Environment (config, keys, certs, secrets): //p' "$2/demo.out")
    read -r dbuser dbpass dbport < <(python3 -c "import json; s=json.load(open('$envdir/secrets.json'))['tenants/acme/db']; print(s['username'], s['password'], s['port'])")
}
