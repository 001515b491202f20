#!/usr/bin/env bash
# Run pgveil's whole test suite: `bash tests/run.sh [extra cargo test args]`.
#
# Meant for a fresh Debian 12 machine, as root or as a user with sudo. Installs whatever is missing,
# quietly and idempotently (apt-get update only when an apt package is missing):
#   apt:  postgresql (server binaries under /usr/lib/postgresql/*/bin), postgresql-client, clang,
#         libclang-dev, pgbouncer, and the basics to build Rust code and install Python packages;
#         chromium and chromium-driver (Debian's browser, for the security page test);
#   pip:  psycopg[binary], asyncpg, pyotp, sqlalchemy and moto[server] (each only when its import fails);
#   npm:  playwright-core in tests/browser (drives Debian's chromium; no browser is downloaded) and
#         node-postgres (pg) in tests/node;
#   Rust: rustup's stable toolchain, only when no cargo is found.
# then runs `cargo test --locked --release --all-targets "$@"` and exits with its status.
#
# The tests start their own throwaway PostgreSQL clusters on free ports. This script never starts or
# stops the system PostgreSQL service; while it installs packages it asks Debian not to auto-start
# services (policy-rc.d), and a cluster the package starts anyway on port 5432 is simply never used.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'run.sh: %s\n' "$*" >&2; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    fi
fi

# Whether a Debian package is installed.
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# ---- apt packages -------------------------------------------------------------------------------
missing=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then missing+=(postgresql); fi
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
command -v clang >/dev/null 2>&1 || missing+=(clang)
if ! installed libclang-dev && ! ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1; then
    missing+=(libclang-dev)
fi
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# tests/masking_schemas.rs: pgjdbc (java is a dependency of it) and psqlODBC through unixODBC's isql.
[ -e /usr/share/java/postgresql.jar ] || missing+=(libpostgresql-jdbc-java)
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
command -v isql >/dev/null 2>&1 || missing+=(unixodbc)
ls /usr/lib/*/odbc/psqlodbcw.so >/dev/null 2>&1 || missing+=(odbc-postgresql)
installed ca-certificates || missing+=(ca-certificates)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    command -v curl >/dev/null 2>&1 || missing+=(curl)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then
        log "missing packages: ${missing[*]}; run as root or install sudo"
        exit 1
    fi
    log "installing ${missing[*]}"
    # Keep installed services (the system PostgreSQL, PgBouncer) from being started, unless the machine
    # already has its own policy.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        own_policy=1
    fi
    apt_log=$(mktemp)
    status=0
    {
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                -o Dpkg::Use-Pty=0 "${missing[@]}"
    } >"$apt_log" 2>&1 || status=$?
    if [ "$own_policy" -eq 1 ]; then "${SUDO[@]}" rm -f "$policy"; fi
    if [ "$status" -ne 0 ]; then
        cat "$apt_log" >&2
        log "apt-get failed (status $status)"
        exit "$status"
    fi
    rm -f "$apt_log"
fi

# ---- Python packages: client libraries and the local AWS Secrets Manager endpoint (moto) ------------
pip_missing=()
python3 -c 'import psycopg' >/dev/null 2>&1 || pip_missing+=('psycopg[binary]')
python3 -c 'import asyncpg' >/dev/null 2>&1 || pip_missing+=(asyncpg)
python3 -c 'import pyotp' >/dev/null 2>&1 || pip_missing+=(pyotp)
# tests/masking_live.rs compares SQLAlchemy reflection through pgveil with a direct connection.
python3 -c 'import sqlalchemy' >/dev/null 2>&1 || pip_missing+=(sqlalchemy)
# tests/secrets.rs starts `moto_server` (or `python3 -m moto.server`) on a free loopback port.
python3 -c 'import moto.server, flask, werkzeug' >/dev/null 2>&1 || pip_missing+=('moto[server]')
if [ "${#pip_missing[@]}" -gt 0 ]; then
    log "installing ${pip_missing[*]} with pip"
    pip_args=(install --quiet --disable-pip-version-check)
    # Debian 12 marks the system Python as externally managed (PEP 668).
    pip_help=$(python3 -m pip install --help 2>/dev/null || true)
    if grep -q -- '--break-system-packages' <<<"$pip_help"; then pip_args+=(--break-system-packages); fi
    if grep -q -- '--root-user-action' <<<"$pip_help"; then pip_args+=(--root-user-action=ignore); fi
    if [ "$(id -u)" -ne 0 ]; then pip_args+=(--user); fi
    python3 -m pip "${pip_args[@]}" "${pip_missing[@]}"
    python3 -c 'import psycopg, asyncpg, pyotp, sqlalchemy, moto.server'
fi

# ---- playwright-core for the browser test (uses /usr/bin/chromium; never downloads a browser) ---------
if [ ! -d tests/browser/node_modules/playwright-core ]; then
    log "installing playwright-core with npm (tests/browser)"
    (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --silent)
fi

# ---- node-postgres for the transaction-pooling driver test --------------------------------------------
if [ ! -d tests/node/node_modules/pg ]; then
    log "installing node-postgres with npm (tests/node)"
    (cd tests/node && npm install --no-audit --no-fund --silent)
fi

# ---- Rust toolchain -------------------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
    if [ ! -x "$HOME/.cargo/bin/cargo" ]; then
        log "installing the Rust toolchain with rustup"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
            sh -s -- -y --quiet --profile minimal --default-toolchain stable
    fi
    export PATH="$HOME/.cargo/bin:$PATH"
fi

# ---- the test suite -------------------------------------------------------------------------------
# --all-targets: unit and end-to-end tests (there are no doc tests); a summary line closes the output.
log_file=$(mktemp)
if cargo test --locked --release --all-targets "$@" 2>&1 | tee "$log_file"; then
    status=0
else
    status=${PIPESTATUS[0]}
fi
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\nsummary: %d passed, %d failed\n", p, f }' "$log_file"
rm -f "$log_file"
exit "$status"
