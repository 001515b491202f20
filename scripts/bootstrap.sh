#!/usr/bin/env bash
# Installs what pgveil needs on a fresh Debian 12 machine, quietly and idempotently: a package is installed
# only when it is missing (apt-get update only when an apt package is missing), and each install is announced
# on stderr. Shared by demo.sh (mode "demo") and tests/run.sh (mode "tests"), so both stay in step.
#
#   bash scripts/bootstrap.sh demo|tests     or, to keep the PATH of a fresh Rust install:
#   source scripts/bootstrap.sh && bootstrap demo|tests
#
# demo:  apt: postgresql (server binaries under /usr/lib/postgresql/*/bin: the demo's throwaway cluster),
#             postgresql-client (psql, for the printed commands), clang and libclang-dev (pg_query runs
#             bindgen), build-essential, pkg-config, ca-certificates, curl (only to fetch rustup);
#        Rust: rustup's stable toolchain (minimal profile), only when no cargo is found.
# tests: everything of "demo", and
#        apt: pgbouncer (benchmark comparisons), chromium and chromium-driver (Debian's browser, for the
#             security page test), nodejs and npm, python3 and python3-pip, curl and systemd
#             (systemd-analyze; tests/deb.sh; the service is never started);
#        pip: psycopg[binary], asyncpg, pyotp, sqlalchemy, moto[server] and pyyaml (tests/deploy.rs reads
#             the Kubernetes manifests) (each only when its import fails);
#        npm: playwright-core in tests/browser (drives Debian's chromium; no browser is downloaded) and
#             node-postgres (pg) and postgres.js (postgres) in tests/node (npm ci: the lock file's versions).
#        Rust: the clippy and rustfmt components (tests/run.sh checks lints and formatting), when missing.
#
# Runs as root, or as a user with sudo. It never starts or stops the system PostgreSQL service: while it
# installs packages it asks Debian not to auto-start services (policy-rc.d), and a cluster the package starts
# anyway on port 5432 is simply never used (the demo and the tests start their own clusters).

# Whether a Debian package is installed.
bootstrap_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

bootstrap_log() { printf 'bootstrap: %s\n' "$*" >&2; }

# Prints the apt packages `mode` needs that are missing, one a line.
bootstrap_missing_apt() {
    local mode=$1
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then echo postgresql; fi
    command -v psql >/dev/null 2>&1 || echo postgresql-client
    command -v clang >/dev/null 2>&1 || echo clang
    if ! bootstrap_installed libclang-dev && ! ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1; then
        echo libclang-dev
    fi
    bootstrap_installed ca-certificates || echo ca-certificates
    command -v cc >/dev/null 2>&1 || echo build-essential
    command -v pkg-config >/dev/null 2>&1 || echo pkg-config
    if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
        command -v curl >/dev/null 2>&1 || echo curl
    fi
    if [ "$mode" = tests ]; then
        command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || echo pgbouncer
        [ -x /usr/bin/chromium ] || echo chromium
        command -v chromedriver >/dev/null 2>&1 || echo chromium-driver
        command -v node >/dev/null 2>&1 || echo nodejs
        command -v npm >/dev/null 2>&1 || echo npm
        command -v python3 >/dev/null 2>&1 || echo python3
        python3 -m pip --version >/dev/null 2>&1 || echo python3-pip
        # tests/deb.sh: fetches /metrics; checks the unit file.
        command -v curl >/dev/null 2>&1 || echo curl
        command -v systemd-analyze >/dev/null 2>&1 || echo systemd
        # tests/masking_schemas.rs: pgjdbc (with a Java runtime) and psqlODBC through unixODBC's isql.
        [ -e /usr/share/java/postgresql.jar ] || echo libpostgresql-jdbc-java
        command -v java >/dev/null 2>&1 || echo default-jre-headless
        command -v isql >/dev/null 2>&1 || echo unixodbc
        ls /usr/lib/*/odbc/psqlodbcw.so >/dev/null 2>&1 || echo odbc-postgresql
    fi
    return 0
}

# apt-get install of the missing packages, with services kept from starting; its output is shown only on
# failure.
bootstrap_apt() {
    local missing=() sudo=() pkg
    while read -r pkg; do missing+=("$pkg"); done < <(bootstrap_missing_apt "$1")
    [ "${#missing[@]}" -gt 0 ] || return 0
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            bootstrap_log "missing packages: ${missing[*]}; run as root or install sudo"
            return 1
        fi
        sudo=(sudo)
    fi
    bootstrap_log "installing ${missing[*]} (apt)"
    # Keep installed services (the system PostgreSQL, PgBouncer) from being started, unless the machine
    # already has its own policy.
    local policy=/usr/sbin/policy-rc.d own_policy=0 apt_log status=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null || return
        "${sudo[@]}" chmod 755 "$policy" || return
        own_policy=1
    fi
    apt_log=$(mktemp)
    {
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                -o Dpkg::Use-Pty=0 "${missing[@]}"
    } >"$apt_log" 2>&1 || status=$?
    if [ "$own_policy" -eq 1 ]; then "${sudo[@]}" rm -f "$policy"; fi
    if [ "$status" -ne 0 ]; then
        cat "$apt_log" >&2
        rm -f "$apt_log"
        bootstrap_log "apt-get failed (status $status)"
        return "$status"
    fi
    rm -f "$apt_log"
}

# Python packages the tests use: client libraries and the local AWS Secrets Manager endpoint (moto).
bootstrap_pip() {
    local pip_missing=() pip_args pip_help
    python3 -c 'import psycopg' >/dev/null 2>&1 || pip_missing+=('psycopg[binary]')
    python3 -c 'import asyncpg' >/dev/null 2>&1 || pip_missing+=(asyncpg)
    python3 -c 'import pyotp' >/dev/null 2>&1 || pip_missing+=(pyotp)
    # tests/masking_live.rs compares SQLAlchemy reflection through pgveil with a direct connection.
    python3 -c 'import sqlalchemy' >/dev/null 2>&1 || pip_missing+=(sqlalchemy)
    # tests/secrets.rs starts `moto_server` (or `python3 -m moto.server`) on a free loopback port.
    python3 -c 'import moto.server, flask, werkzeug' >/dev/null 2>&1 || pip_missing+=('moto[server]')
    # tests/deploy.rs parses deploy/kubernetes/*.yaml.
    python3 -c 'import yaml' >/dev/null 2>&1 || pip_missing+=(pyyaml)
    [ "${#pip_missing[@]}" -gt 0 ] || return 0
    bootstrap_log "installing ${pip_missing[*]} (pip)"
    pip_args=(install --quiet --disable-pip-version-check)
    # Debian 12 marks the system Python as externally managed (PEP 668).
    pip_help=$(python3 -m pip install --help 2>/dev/null || true)
    if grep -q -- '--break-system-packages' <<<"$pip_help"; then pip_args+=(--break-system-packages); fi
    if grep -q -- '--root-user-action' <<<"$pip_help"; then pip_args+=(--root-user-action=ignore); fi
    if [ "$(id -u)" -ne 0 ]; then pip_args+=(--user); fi
    python3 -m pip "${pip_args[@]}" "${pip_missing[@]}" || return
    python3 -c 'import psycopg, asyncpg, pyotp, sqlalchemy, moto.server, yaml'
}

# npm packages of the browser, node-postgres and postgres.js tests (relative to the repository root).
bootstrap_npm() {
    local root=$1
    if [ ! -d "$root/tests/browser/node_modules/playwright-core" ]; then
        bootstrap_log "installing playwright-core (npm, tests/browser)"
        (cd "$root/tests/browser" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --silent) || return
    fi
    if [ ! -d "$root/tests/node/node_modules/pg" ] || [ ! -d "$root/tests/node/node_modules/postgres" ]; then
        bootstrap_log "installing node-postgres and postgres.js (npm ci, tests/node)"
        (cd "$root/tests/node" && npm ci --no-audit --no-fund --silent) || return
    fi
}

# rustup's stable toolchain when no cargo is found; puts ~/.cargo/bin on PATH either way.
bootstrap_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        if [ ! -x "$HOME/.cargo/bin/cargo" ]; then
            bootstrap_log "installing the Rust toolchain (rustup, stable, minimal profile)"
            curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
                sh -s -- -y --quiet --profile minimal --default-toolchain stable || return
        fi
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
}

# The clippy and rustfmt components (tests/run.sh runs `cargo clippy` and `cargo fmt --check`), when missing.
bootstrap_rust_components() {
    local missing=()
    cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
    cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
    [ "${#missing[@]}" -gt 0 ] || return 0
    if ! command -v rustup >/dev/null 2>&1; then
        bootstrap_log "missing Rust components ${missing[*]}, and no rustup to install them"
        return 1
    fi
    bootstrap_log "installing ${missing[*]} (rustup component)"
    rustup component add "${missing[@]}" >&2 || return
}

# bootstrap demo|tests
bootstrap() {
    local mode=${1:-}
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    case "$mode" in
    demo | tests) ;;
    *)
        bootstrap_log "usage: bootstrap demo|tests"
        return 2
        ;;
    esac
    bootstrap_apt "$mode" || return
    if [ "$mode" = tests ]; then
        bootstrap_pip || return
        bootstrap_npm "$root" || return
    fi
    bootstrap_rust
    if [ "$mode" = tests ]; then
        bootstrap_rust_components || return
    fi
}

# Run directly (not sourced): bootstrap the given mode.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    bootstrap "$@"
fi
