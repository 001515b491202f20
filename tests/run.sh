#!/usr/bin/env bash
# Run pgveil's whole test suite: `bash tests/run.sh [extra cargo test args]`.
#
# Meant for a fresh Debian 12 machine, as root or as a user with sudo. Installs whatever is missing first,
# quietly and idempotently, with scripts/bootstrap.sh's "tests" mode (the same logic demo.sh uses in its
# "demo" mode; that file lists what each mode installs): PostgreSQL's server and client, clang/libclang,
# build tools, pgbouncer, chromium and chromium-driver, node/npm, python3/pip, the Python and npm packages
# the client tests use, and Rust (rustup) when no cargo is found;
# then, for a whole run (no arguments), checks formatting (`cargo fmt --check`) and lints (`cargo clippy --release
# --workspace --all-targets -- -D warnings`, the [workspace.lints] of Cargo.toml and clippy.toml included), runs
# `cargo test --locked --release --workspace --all-targets --no-fail-fast "$@"` (pgveil and the workspace's
# crates/pgcluster) and, again for a whole run, the Debian package test tests/deb.sh; exits non-zero when any
# of them failed (each counts as one test in the summary).
#
# The tests start their own throwaway PostgreSQL clusters on free ports. Neither script ever starts or
# stops the system PostgreSQL service.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=../scripts/bootstrap.sh
source scripts/bootstrap.sh
bootstrap tests

log_file=$(mktemp)
status=0

# Runs a check ("$1" names it, the rest is the command) and counts it as one test in the summary.
check() {
    local name=$1 started=$SECONDS
    shift
    echo "==> $name: $*"
    if "$@"; then
        echo "test result: ok. 1 passed; 0 failed ($name, $((SECONDS - started)) s)" | tee -a "$log_file"
    else
        echo "test result: FAILED. 0 passed; 1 failed ($name)" | tee -a "$log_file"
        status=1
    fi
}

# ---- formatting and lints (a whole run; before the tests, which still run when these fail) -----------
# clippy in release mode shares the test build's build scripts and proc macros.
if [ "$#" -eq 0 ]; then
    check rustfmt cargo fmt --all --check
    check rustfmt-fuzz rustfmt --edition 2024 --check fuzz/main.rs
    check clippy cargo clippy --locked --release --workspace --all-targets -- -D warnings
fi

# ---- the test suite -------------------------------------------------------------------------------
# --workspace: pgveil and crates/pgcluster; --all-targets: unit and end-to-end tests (there are no doc tests); a
# summary line closes the output.
if cargo test --locked --release --workspace --all-targets --no-fail-fast "$@" 2>&1 | tee -a "$log_file"; then
    :
else
    status=${PIPESTATUS[0]}
fi
# The Debian package (build, dpkg -i, the unit's command lines, purge; about a minute), counted as one
# test in the summary. Only for a whole run: extra arguments select cargo tests.
if [ "$#" -eq 0 ]; then
    if bash tests/deb.sh; then
        echo "test result: ok. 1 passed; 0 failed (tests/deb.sh)" >>"$log_file"
    else
        echo "test result: FAILED. 0 passed; 1 failed (tests/deb.sh)" >>"$log_file"
        [ "$status" -ne 0 ] || status=1
    fi
fi
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\nsummary: %d passed, %d failed\n", p, f }' "$log_file"
rm -f "$log_file"
exit "$status"
