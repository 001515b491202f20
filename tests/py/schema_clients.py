"""An asyncpg pool on the extension schema (citext payers.email, pgcrypto, the tenant type money_amount);
prints what the client saw as JSON (tests/masking_clients.rs).

Usage: python3 schema_clients.py asyncpg_pool <libpq conninfo without password>   (password in PGPASSWORD)

The pool has two connections and runs ten acquire/release cycles: every release runs asyncpg's reset
(`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;`), so a refused reset breaks the pool.
Errors are recorded, not raised, so a refusal shows up as a difference. Keys starting with `masked_` read
masked columns.
"""
import asyncio
import json
import os
import sys

QUERIES = [
    ("masked_emails", "SELECT id, email FROM payers ORDER BY id LIMIT 3", ()),
    ("masked_email_param", "SELECT email, pg_typeof(email)::text AS t FROM payers WHERE id = $1", (2,)),
    ("citext_compare",
     "SELECT count(*) AS n FROM payers WHERE email LIKE '%@%' AND email = email AND email <> 'x'", ()),
    ("citext_values",
     "SELECT 'AbC'::citext = 'abc' AS eq, lower('ABC'::citext)::text AS l, strpos('Hello'::citext, 'L') AS p,"
     " $1::text::citext::text AS c", ("MiXeD",)),
    ("pgcrypto", "SELECT encode(digest('abc', 'sha256'), 'hex') AS d, length(gen_random_bytes(8)) AS n", ()),
    ("tenant_type", "SELECT id, quote, (quote).currency AS cur, digest FROM fx_quotes ORDER BY id", ()),
    ("tenant_type_param", "SELECT ($1::money_amount).amount AS a", (("1.50", "EUR"),)),
    ("merchants", "SELECT id, name FROM merchants WHERE id = ANY ($1::bigint[]) ORDER BY id", ([1, 2, 3],)),
]


async def asyncpg_pool(conninfo):
    import asyncpg

    parts = dict(p.split("=", 1) for p in conninfo.split())

    async def init(conn):
        # citext has no stable OID and no binary codec in asyncpg: declared wire-compatible with text, as
        # asyncpg's documentation says to.
        await conn.set_builtin_type_codec("citext", schema="public", codec_name="text")

    out = {}
    pool = await asyncpg.create_pool(host=parts["host"], port=int(parts["port"]), user=parts["user"],
                                     database=parts["dbname"], password=os.environ["PGPASSWORD"], ssl=False,
                                     min_size=2, max_size=2, init=init, timeout=10)
    try:
        # One query per acquire/release cycle, every query at least once.
        for cycle in range(max(10, len(QUERIES))):
            name, sql, args = QUERIES[cycle % len(QUERIES)]
            async with pool.acquire() as conn:
                try:
                    rows = await conn.fetch(sql, *args)
                    out[name] = [[repr(v) for v in r.values()] for r in rows]
                except Exception as e:  # noqa: BLE001 - a refusal is a result here
                    out[name] = "ERROR %s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        # A transaction and a prepared statement on a pooled connection.
        async with pool.acquire() as conn:
            try:
                async with conn.transaction():
                    stmt = await conn.prepare("SELECT email FROM payers WHERE id = $1")
                    out["masked_prepared"] = [await stmt.fetchval(i) for i in (1, 2)]
            except Exception as e:  # noqa: BLE001
                out["masked_prepared"] = "ERROR %s: %s" % (type(e).__name__, str(e).splitlines()[0])
    finally:
        await asyncio.wait_for(pool.close(), 10)
    return out


def main():
    kind, conninfo = sys.argv[1], sys.argv[2]
    if kind != "asyncpg_pool":
        raise SystemExit("unknown client " + kind)
    out = asyncio.run(asyncpg_pool(conninfo))
    json.dump(out, sys.stdout, indent=1, sort_keys=True, default=repr)


if __name__ == "__main__":
    main()
