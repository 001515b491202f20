#!/usr/bin/env bash
# The Debian package end to end: `bash tests/deb.sh` (as root, like CI; tests/run.sh calls it after cargo
# test). Builds the package (deploy/debian/build-deb.sh, from target/release/pgveil), installs it with
# dpkg, checks the files, the `pgveil` user and the unit's hardening, then runs the unit's ExecStartPre and
# ExecStart command lines, as the unit's User= and with its Environment=, against a test config (file secret
# store, one tenant whose database is down, the installed example policy): the proxy accepts a minted token and
# answers 08006 for the unreachable tenant, serves /metrics, survives SIGHUP (ExecReload: policies re-read)
# and exits 0 on SIGTERM. Finally purges the package. Refuses to run where a pgveil package is already
# installed (it would replace and purge it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'deb.sh: %s\n' "$*" >&2; }
fail() {
    say "FAIL: $*"
    exit 1
}
[ "$(id -u)" -eq 0 ] || fail "run as root (it installs a package and runs a service as its user)"
if dpkg-query -W -f='${Status}' pgveil 2>/dev/null | grep -q 'ok installed'; then
    fail "a pgveil package is installed on this machine; this test installs and purges its own"
fi

work=$(mktemp -d /tmp/pgveil-deb-XXXXXX)
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" || true; fi
    dpkg --purge pgveil >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# ---- build and install ---------------------------------------------------------------------------
deb=$(bash deploy/debian/build-deb.sh "$work/out")
contents=$(dpkg-deb --contents "$deb")
for f in ./usr/bin/pgveil ./etc/pgveil/pgveil.toml ./etc/pgveil/policies/payments.toml \
    ./lib/systemd/system/pgveil.service ./usr/share/doc/pgveil/README.md; do
    grep -q " $f\$" <<<"$contents" || fail "$f is not in the package"
done
dpkg -i "$deb" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -i"; }

# ---- what the package installed ------------------------------------------------------------------
/usr/bin/pgveil --version >/dev/null || fail "/usr/bin/pgveil does not run"
getent passwd pgveil | grep -q ':/usr/sbin/nologin$' || fail "no pgveil system user with a nologin shell"
[ "$(stat -c '%U:%G %a' /etc/pgveil)" = "root:pgveil 750" ] || fail "/etc/pgveil: $(stat -c '%U:%G %a' /etc/pgveil)"
for f in /etc/pgveil/pgveil.toml /etc/pgveil/policies/payments.toml; do
    [ "$(stat -c '%U:%G %a' "$f")" = "root:pgveil 640" ] || fail "$f: $(stat -c '%U:%G %a' "$f")"
done
unit=/lib/systemd/system/pgveil.service
for line in User=pgveil Group=pgveil NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes PrivateTmp=yes \
    'CapabilityBoundingSet=' 'ExecReload=/bin/kill -HUP $MAINPID'; do
    grep -qxF "$line" "$unit" || fail "the unit has no '$line'"
done
if grep -q '^ReadWritePaths=' "$unit"; then fail "pgveil writes no file: the unit needs no ReadWritePaths"; fi
if command -v systemd-analyze >/dev/null 2>&1; then
    systemd-analyze verify "$unit" >"$work/verify.log" 2>&1 || { cat "$work/verify.log" >&2; fail "systemd-analyze verify"; }
fi

# ---- a test config the pgveil user can read -------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
metrics=$(free_port)
down=$(free_port) # nothing listens there: the tenant's database is down
cfg=$work/etc
mkdir -p "$cfg"
pgveil certs dev --out "$cfg/certs" >/dev/null
pgveil token keygen --out "$cfg/keys" >/dev/null
python3 - "$cfg" "$down" <<'PY'
import base64, json, os, sys
cfg, down = sys.argv[1], int(sys.argv[2])
read = lambda p: open(os.path.join(cfg, p)).read()
json.dump({
    "pgveil/token-signing": read("keys/token_signing.pem"),
    "pgveil/token-verifying": read("keys/token_verifying.pem"),
    "tenants/acme/db": {"username": "acme_app", "password": "not-used", "host": "127.0.0.1", "port": down,
                        "dbname": "acme"},
    "tenants/acme/pseudonym": base64.b64encode(os.urandom(32)).decode(),
}, open(os.path.join(cfg, "secrets.json"), "w"))
PY
rm -rf "$cfg/keys"
cat >"$cfg/pgveil.toml" <<TOML
roles = ["admin", "analyst"]
[listen]
addr = "127.0.0.1:$port"
[tls]
cert = "certs/server.pem"
key = "certs/server.key"
[auth]
issuer = "pgveil"
verifying_key_secrets = ["pgveil/token-verifying"]
signing_key_secret = "pgveil/token-signing"
[secrets]
backend = "file"
path = "secrets.json"
[pool]
connect_timeout = "2s"
[[tenant]]
id = "acme"
secret = "tenants/acme/db"
[policy]
dir = "/etc/pgveil/policies"
[policy.pseudonym_keys]
acme = "tenants/acme/pseudonym"
[metrics]
addr = "127.0.0.1:$metrics"
TOML
chown -R root:pgveil "$work"
chmod -R g+rX,o-rwx "$work"
chmod o+x "$work" # the path to the config, like /etc/pgveil's parent

# ---- the unit's command lines, as its user, with its environment -----------------------------------
unit_value() { sed -n "s/^$1=//p" "$unit"; }
for_test() { sed "s#/etc/pgveil/pgveil.toml#$cfg/pgveil.toml#g"; }
pre=$(unit_value ExecStartPre | for_test)
start=$(unit_value ExecStart | for_test)
envs=$(unit_value Environment)
user=$(unit_value User)
[ -n "$start" ] && [ "$start" != "$(unit_value ExecStart)" ] || fail "ExecStart does not name /etc/pgveil/pgveil.toml"
as_unit=(setpriv --reuid "$user" --regid "$user" --init-groups --no-new-privs -- env)
# The unit's command lines and environment hold no quotes: word splitting is how systemd splits them.
# shellcheck disable=SC2086
"${as_unit[@]}" $envs $pre >"$work/pre.log" 2>&1 || { cat "$work/pre.log" >&2; fail "ExecStartPre: $pre"; }
# shellcheck disable=SC2086
"${as_unit[@]}" $envs $start >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
    if curl -fsS "http://127.0.0.1:$metrics/metrics" >/dev/null 2>&1; then break; fi
    kill -0 "$pid" 2>/dev/null || { cat "$work/serve.log" >&2; fail "ExecStart exited: $start"; }
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$metrics/metrics" >/dev/null || { cat "$work/serve.log" >&2; fail "no /metrics"; }
[ "$(ps -o user= -p "$pid")" = pgveil ] || fail "the server does not run as pgveil: $(ps -o user= -p "$pid")"

token=$(pgveil token mint --config "$cfg/pgveil.toml" --user deb-test --tenant acme --role analyst --ttl 5m --mfa)
if PGPASSWORD=$token PGCONNECT_TIMEOUT=10 psql -X -c 'SELECT 1' \
    "host=127.0.0.1 port=$port dbname=acme user=deb-test sslmode=require" >"$work/psql.log" 2>&1; then
    fail "a session reached a tenant whose database is down"
fi
# 08006's message (psql shows no SQLSTATE for a refused connection).
grep -q 'FATAL:  could not connect to the tenant database' "$work/psql.log" ||
    { cat "$work/psql.log" >&2; fail "expected 08006 (tenant database unreachable)"; }
if PGPASSWORD=not-a-token PGCONNECT_TIMEOUT=10 psql -X -c 'SELECT 1' \
    "host=127.0.0.1 port=$port dbname=acme user=deb-test sslmode=require" >"$work/psql.log" 2>&1; then
    fail "a session without a token was admitted"
fi
grep -q 'FATAL:  invalid pgveil token' "$work/psql.log" || { cat "$work/psql.log" >&2; fail "expected 28P01 (invalid token)"; }

# ExecReload: SIGHUP re-reads the policies; the server stays up and keeps answering.
kill -HUP "$pid"
sleep 1
kill -0 "$pid" 2>/dev/null || { cat "$work/serve.log" >&2; fail "SIGHUP (ExecReload) stopped the server"; }
curl -fsS "http://127.0.0.1:$metrics/metrics" >/dev/null || fail "no /metrics after SIGHUP"

# SIGTERM (KillSignal): drain and exit 0.
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=
[ "$status" -eq 0 ] || { cat "$work/serve.log" >&2; fail "exit status $status after SIGTERM"; }
if grep -qF "$token" "$work/serve.log"; then fail "a token reached the log"; fi

dpkg --purge pgveil >/dev/null
[ ! -e /usr/bin/pgveil ] && [ ! -e /etc/pgveil ] || fail "purge left /usr/bin/pgveil or /etc/pgveil behind"
say "ok: package built, installed, served, reloaded, stopped and purged"
