"""Drives one connection with psycopg 3 and prints what it saw as JSON (used by tests/clients/python.rs).

Usage: python3 psycopg_client.py '<libpq conninfo without password>'   (password in PGPASSWORD)
The output must not depend on the path taken (through pgveil or directly), except the "ssl" key.
"""
import json
import sys

import psycopg


def main(conninfo):
    out = {}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        out["ssl"] = bool(conn.pgconn.ssl_in_use)
        cur = conn.cursor()

        # Client-side parameter binding (server-side with psycopg 3: extended protocol, unnamed statement).
        cur.execute(
            "SELECT id, email, ip_address, date_of_birth FROM payers WHERE id BETWEEN %s AND %s AND email LIKE %s"
            " ORDER BY id",
            (3, 9, "%payer%"),
        )
        out["params"] = cur.fetchall()

        # Named prepared statements, reused.
        prepared = []
        for payer in (1, 2, 3, 4, 5, 6):
            cur.execute(
                "SELECT payer_id, count(*), sum(amount), max(created_at) FROM payments WHERE payer_id = %s"
                " GROUP BY payer_id",
                (payer,),
                prepare=True,
            )
            prepared.append(cur.fetchall())
        out["prepared"] = prepared
        cur.execute("SELECT name, statement, parameter_types::text FROM pg_prepared_statements ORDER BY name")
        out["prepared_statements"] = cur.fetchall()

        # A server-side (named) cursor fetched in batches, inside a transaction.
        batches, rows = [], []
        with conn.transaction():
            with conn.cursor(name="pgveil_batches") as named:
                named.execute("SELECT id, payer_id, amount, status, card_pan FROM payments ORDER BY id")
                while True:
                    batch = named.fetchmany(17)
                    if not batch:
                        break
                    batches.append(len(batch))
                    rows.extend(batch)
        out["cursor_batches"] = batches
        out["cursor_rows"] = rows

        # COPY TO STDOUT.
        chunks = []
        with cur.copy("COPY (SELECT id, full_name, email, card_pan FROM payers ORDER BY id) TO STDOUT") as copy:
            for data in copy:
                chunks.append(bytes(data))
        out["copy"] = b"".join(chunks).decode()

        # libpq pipeline mode: several extended-protocol statements in flight before one Sync.
        with conn.pipeline():
            curs = [conn.cursor() for _ in range(5)]
            for i, c in enumerate(curs):
                c.execute("SELECT %s::int AS i, count(*) FROM payments WHERE payer_id <= %s", (i, i * 3))
        out["pipeline"] = [c.fetchall() for c in curs]

        # Session state survives between statements (session pool mode).
        cur.execute("SET application_name = 'psycopg-test'")
        cur.execute("SHOW application_name")
        out["application_name"] = cur.fetchone()[0]
    print(json.dumps(out, default=str, indent=1, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1])
