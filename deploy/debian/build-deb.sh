#!/usr/bin/env bash
# Builds pgveil's Debian package: `bash deploy/debian/build-deb.sh [OUT_DIR]` (default target/debian); prints
# the path of the .deb. Uses dpkg-deb directly (no packaging tool to install); PGVEIL_BIN=path packages that
# binary instead of building target/release/pgveil.
#
# The package holds: /usr/bin/pgveil; /etc/pgveil/pgveil.toml (a commented config, conffile) and
# /etc/pgveil/policies/payments.toml (the example policy, conffile), both root:pgveil 0640; the hardened
# systemd unit /lib/systemd/system/pgveil.service (not enabled on install); README.md under
# /usr/share/doc/pgveil. postinst creates the `pgveil` system user.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out=${1:-$root/target/debian}
bin=${PGVEIL_BIN:-}
if [ -z "$bin" ]; then
    (cd "$root" && cargo build --release --locked --quiet --bin pgveil)
    bin=$root/target/release/pgveil
fi
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)
arch=$(dpkg --print-architecture)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -D -m 0755 "$bin" "$stage/usr/bin/pgveil"
# Line tables stay out of the package (the build keeps them for profiling).
strip --strip-debug "$stage/usr/bin/pgveil"
install -D -m 0640 "$here/pgveil.toml" "$stage/etc/pgveil/pgveil.toml"
install -D -m 0640 "$root/policies/payments.toml" "$stage/etc/pgveil/policies/payments.toml"
install -D -m 0644 "$here/pgveil.service" "$stage/lib/systemd/system/pgveil.service"
install -D -m 0644 "$root/README.md" "$stage/usr/share/doc/pgveil/README.md"
install -d -m 0755 "$stage/DEBIAN"
install -m 0755 "$here/postinst" "$here/prerm" "$here/postrm" "$stage/DEBIAN/"
printf '%s\n' /etc/pgveil/pgveil.toml /etc/pgveil/policies/payments.toml >"$stage/DEBIAN/conffiles"
cat >"$stage/DEBIAN/control" <<CONTROL
Package: pgveil
Version: $version
Architecture: $arch
Maintainer: pgveil maintainers <pgveil@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Depends: libc6 (>= 2.34), libgcc-s1, adduser
Recommends: ca-certificates
Section: database
Priority: optional
Description: PostgreSQL wire-protocol proxy with MFA tokens, tenant routing and PII masking
 pgveil admits only sessions that present a pgveil token (issued after a TOTP
 second factor), routes each session to its tenant's database with credentials
 fetched from a secret store, and rewrites SQL so that roles which must not see
 PII get masked values.
CONTROL
mkdir -p "$out"
deb="$out/pgveil_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
