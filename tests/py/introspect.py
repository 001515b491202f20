"""Catalog introspection the way real clients do it; prints what the client saw as JSON (tests/masking_live.rs).

Usage: python3 introspect.py sqlalchemy|asyncpg|psycopg <libpq conninfo without password>   (password in PGPASSWORD)

- sqlalchemy: SQLAlchemy 2 reflection (Inspector and MetaData.reflect) over psycopg 3;
- asyncpg: asyncpg's type introspection (enums, domains, composites, ranges and arrays of them are looked up
  in pg_type/pg_attribute/pg_range the first time a statement uses them) and its codecs;
- psycopg: psycopg 3's TypeInfo/EnumInfo/CompositeInfo lookups.
Everything is printed with repr() so the decoded Python types are compared too. Errors are recorded, not raised,
so a refusal shows up as a difference.
"""
import asyncio
import json
import os
import sys


def record(out, name, fn):
    try:
        out[name] = fn()
    except Exception as e:  # noqa: BLE001 - a refusal is a result here
        out[name] = "ERROR %s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")


def with_password(conninfo):
    return conninfo + " password=%s" % os.environ["PGPASSWORD"]


def sqlalchemy_main(conninfo):
    import psycopg
    import sqlalchemy as sa

    engine = sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(with_password(conninfo)),
                              poolclass=sa.pool.NullPool)
    out = {}
    insp = sa.inspect(engine)
    record(out, "schemas", lambda: sorted(insp.get_schema_names()))
    tables = sorted(insp.get_table_names())
    out["tables"] = tables
    record(out, "views", lambda: sorted(insp.get_view_names()))
    record(out, "matviews", lambda: sorted(insp.get_materialized_view_names()))
    record(out, "sequences", lambda: sorted(insp.get_sequence_names()))
    record(out, "enums", lambda: repr(insp.get_enums()))
    record(out, "domains", lambda: repr(insp.get_domains()))
    for t in tables + ["intro_view"]:
        record(out, t + ".columns", lambda: [repr(sorted(c.items())) for c in insp.get_columns(t)])
        record(out, t + ".pk", lambda: repr(insp.get_pk_constraint(t)))
        record(out, t + ".fks", lambda: repr(insp.get_foreign_keys(t)))
        record(out, t + ".indexes", lambda: repr(insp.get_indexes(t)))
        record(out, t + ".unique", lambda: repr(insp.get_unique_constraints(t)))
        record(out, t + ".checks", lambda: repr(insp.get_check_constraints(t)))
        record(out, t + ".comment", lambda: repr(insp.get_table_comment(t)))
    def reflect():
        md = sa.MetaData()
        md.reflect(engine, views=True)
        return [repr(md.tables[k].columns.keys()) + " " + repr([str(c.type) for c in md.tables[k].columns])
                for k in sorted(md.tables)]
    record(out, "reflect", reflect)
    def orm_query():
        md = sa.MetaData()
        merchants = sa.Table("merchants", md, autoload_with=engine)
        with engine.connect() as c:
            return [repr(r) for r in c.execute(sa.select(merchants).order_by(merchants.c.id).limit(5))]
    record(out, "orm_query", orm_query)
    return out


async def asyncpg_main(conninfo):
    import asyncpg

    parts = dict(p.split("=", 1) for p in conninfo.split())
    conn = await asyncpg.connect(host=parts["host"], port=int(parts["port"]), user=parts["user"],
                                 database=parts["dbname"], password=os.environ["PGPASSWORD"], ssl=False)
    out = {}

    async def rec(name, coro):
        try:
            out[name] = await coro
        except Exception as e:  # noqa: BLE001
            out[name] = "ERROR %s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")

    def rows(rs):
        return [[repr(v) for v in r.values()] for r in rs]

    async def fetch(sql, *args):
        return rows(await conn.fetch(sql, *args))

    try:
        await rec("enum", fetch("SELECT state, states FROM intro_cases ORDER BY id"))
        await rec("enum_param", fetch("SELECT $1::intro_state AS s, $2::intro_state[] AS a", "open", ["won", "lost"]))
        await rec("domain", fetch("SELECT amount FROM intro_cases ORDER BY id"))
        await rec("composite", fetch("SELECT addr, addrs FROM intro_cases ORDER BY id"))
        await rec("range", fetch("SELECT period FROM intro_cases ORDER BY id"))
        await rec("composite_param", fetch("SELECT ($1::intro_addr).city AS city", ("Lyon", "69001")))
        await rec("merchants", fetch("SELECT * FROM merchants ORDER BY id LIMIT 3"))
        async def attributes():
            stmt = await conn.prepare("SELECT * FROM intro_cases")
            return [(a.name, a.type.name, a.type.kind, a.type.schema) for a in stmt.get_attributes()]
        await rec("attributes", attributes())
        async def settings():
            s = conn.get_settings()
            return [s.server_encoding, s.client_encoding, s.DateStyle, s.integer_datetimes]
        await rec("settings", settings())
    finally:
        await conn.close()
    return out


def psycopg_main(conninfo):
    import psycopg
    from psycopg.types.composite import CompositeInfo
    from psycopg.types.enum import EnumInfo
    from psycopg.types.range import RangeInfo
    from psycopg.types import TypeInfo

    out = {}
    with psycopg.connect(with_password(conninfo)) as conn:
        record(out, "typeinfo", lambda: repr(TypeInfo.fetch(conn, "intro_amount")))
        record(out, "enuminfo", lambda: repr(EnumInfo.fetch(conn, "intro_state").labels))
        record(out, "compositeinfo", lambda: repr(CompositeInfo.fetch(conn, "intro_addr").field_names))
        record(out, "rangeinfo", lambda: repr(RangeInfo.fetch(conn, "intro_period").subtype_oid is not None))
        record(out, "server", lambda: [conn.info.server_version // 10000, conn.info.encoding])
    return out


def main():
    kind, conninfo = sys.argv[1], sys.argv[2]
    if kind == "sqlalchemy":
        out = sqlalchemy_main(conninfo)
    elif kind == "asyncpg":
        out = asyncio.run(asyncpg_main(conninfo))
    elif kind == "psycopg":
        out = psycopg_main(conninfo)
    else:
        raise SystemExit("unknown client " + kind)
    json.dump(out, sys.stdout, indent=1, sort_keys=True, default=repr)


if __name__ == "__main__":
    main()
