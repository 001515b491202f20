"""Drives one connection with asyncpg and prints what it saw as JSON (used by tests/clients/python.rs).

Usage: python3 asyncpg_client.py <dsn without password>   (password in PGPASSWORD)
Values are printed with repr() so the Python types asyncpg decoded them to are compared too.
"""
import asyncio
import decimal
import io
import json
import sys

import asyncpg


def rows(records):
    return [[repr(v) for v in r.values()] for r in records]


async def main(dsn):
    out = {}
    conn = await asyncpg.connect(dsn)
    try:
        # Parameters (asyncpg prepares every statement under a name and caches it).
        out["fetch"] = rows(await conn.fetch(
            "SELECT id, email, date_of_birth, ip_address FROM payers WHERE id = any($1::bigint[]) ORDER BY id",
            [2, 4, 6, 8],
        ))
        out["fetch_again"] = rows(await conn.fetch(
            "SELECT id, email, date_of_birth, ip_address FROM payers WHERE id = any($1::bigint[]) ORDER BY id",
            [1, 3],
        ))

        # An explicit prepared statement run several times.
        stmt = await conn.prepare("SELECT id, amount, currency, status, created_at FROM payments WHERE payer_id = $1"
                                  " ORDER BY id")
        out["prepared_columns"] = [(a.name, a.type.name) for a in stmt.get_attributes()]
        out["prepared"] = [rows(await stmt.fetch(payer)) for payer in range(1, 8)]

        # COPY out of a query, binary-free text format.
        buf = io.BytesIO()
        status = await conn.copy_from_query(
            "SELECT id, email, card_pan FROM payers WHERE id <= $1 ORDER BY id", 25, output=buf)
        out["copy_out_status"] = status
        out["copy_out"] = buf.getvalue().decode()

        # COPY in (binary format) into a temporary table, then read it back.
        await conn.execute("CREATE TEMP TABLE asyncpg_in (id int, note text, amount numeric(12,2), tags text[])")
        records = [(i, "note %d %s" % (i, "x" * (i % 50)), decimal.Decimal(i) / 4, ["a%d" % i, "b"])
                   for i in range(2000)]
        out["copy_in_status"] = await conn.copy_records_to_table("asyncpg_in", records=records)
        out["copy_in"] = rows(await conn.fetch(
            "SELECT count(*), sum(amount), max(note), sum(array_length(tags, 1)) FROM asyncpg_in"))

        # executemany: one prepared statement, many Bind/Execute pairs pipelined before a Sync.
        await conn.executemany("INSERT INTO asyncpg_in (id, note) VALUES ($1, $2)",
                               [(10000 + i, "many %d" % i) for i in range(300)])
        out["executemany"] = rows(await conn.fetch(
            "SELECT count(*), min(note), max(id) FROM asyncpg_in WHERE id >= 10000"))

        # Type decoding, including array and composite types asyncpg must introspect from the catalog.
        out["types"] = rows(await conn.fetch(
            "SELECT jsonb_build_object('a', 1, 'b', ARRAY[1, 2], 'c', NULL) AS j,"
            " 12345678901234567890.123456789::numeric AS n,"
            " timestamptz '2024-02-29 12:34:56.789+02' AS ts,"
            " inet '10.1.2.3/24' AS ip,"
            " ARRAY['00000000-0000-0000-0000-000000000001'::uuid, '1f0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b'::uuid] AS ids,"
            " ARRAY[1.5, 2.25]::numeric[] AS nums,"
            " interval '1 day 02:03:04' AS iv"))
        # payers.email is citext (an extension type without a stable OID): asyncpg decodes composites only in
        # binary, so it is declared wire-compatible with text, as asyncpg's documentation says to.
        await conn.set_builtin_type_codec("citext", schema="public", codec_name="text")
        out["composite"] = rows(await conn.fetch("SELECT p FROM payers p WHERE id <= 3 ORDER BY id"))
        out["composite_array"] = repr(await conn.fetchval(
            "SELECT array_agg(d ORDER BY d.id) FROM disputes d WHERE d.id <= 2"))
    finally:
        await conn.close()
    print(json.dumps(out, indent=1, sort_keys=True))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
