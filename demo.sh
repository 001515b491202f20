#!/usr/bin/env bash
# pgveil's demo on a fresh Debian 12 machine, in one command: `bash demo.sh [pgveil demo flags]`
# (e.g. `bash demo.sh --listen 127.0.0.1:0 --api-listen 127.0.0.1:0` when ports 6432/8432 are taken).
#
# 1. installs what the demo needs and is missing (scripts/bootstrap.sh, mode "demo": PostgreSQL's server and
#    client, clang/libclang for pg_query's bindgen, build tools, Rust), announcing each install;
# 2. builds the release binary (`cargo build --release --locked`; the first build takes several minutes and
#    says how long it took, later runs start at once);
# 3. runs `target/release/pgveil demo "$@"` in its place (exec), so Ctrl-C reaches pgveil, which stops and
#    removes everything it started.
# On a machine that has the prerequisites this is the same as `cargo run --release -- demo`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

say() { printf 'demo.sh: %s\n' "$*" >&2; }

# shellcheck source=scripts/bootstrap.sh
source scripts/bootstrap.sh
bootstrap demo

bin=target/release/pgveil
quiet=(--quiet)
if [ ! -x "$bin" ]; then
    say "building pgveil (first build: several minutes on a small machine)"
    quiet=()
fi
start=$(date +%s)
cargo build --release --locked "${quiet[@]}" --bin pgveil
took=$(($(date +%s) - start))
if [ "$took" -ge 5 ]; then
    say "built $bin in $((took / 60))m$((took % 60))s"
fi

exec "$bin" demo "$@"
