// Queries on the extension schema (citext payers.email, pgcrypto, the tenant type money_amount) the way
// postgres.js and node-postgres send them; prints what the client saw as JSON (tests/masking_clients.rs).
// Usage: node schema_clients.mjs postgres|pg HOST PORT DATABASE USER   (password in PGPASSWORD)
// Errors are recorded, not thrown, so a refusal shows up as a difference. Keys starting with `masked_` read
// masked columns (the test expects them to differ from a direct connection).
import pg from "pg";
import postgres from "postgres";

const [driver, host, port, database, user] = process.argv.slice(2);
const password = process.env.PGPASSWORD;

// [name, sql, params]: every statement runs with parameters (extended protocol) where it has any.
const QUERIES = [
  ["masked_emails", "SELECT id::int AS id, email FROM payers ORDER BY id LIMIT 3", []],
  ["masked_email_param", "SELECT email, pg_typeof(email)::text AS t FROM payers WHERE id = $1", [2]],
  ["citext_compare", "SELECT count(*)::int AS n FROM payers WHERE email LIKE '%@%' AND email = email AND email <> 'x'", []],
  ["citext_values", "SELECT 'AbC'::citext = 'abc' AS eq, lower('ABC'::citext) AS l, strpos('Hello'::citext, 'L') AS p, $1::citext AS c", ["MiXeD"]],
  ["citext_min_max", "SELECT min(lower(email)) IS NOT NULL AS has_min, length(max(email)) > 0 AS has_max FROM payers", []],
  ["pgcrypto", "SELECT encode(digest('abc', 'sha256'), 'hex') AS d, length(gen_random_bytes(8)) AS n, gen_random_uuid() IS NOT NULL AS u", []],
  ["tenant_type", "SELECT id::int AS id, quote::text AS quote, (quote).currency AS cur, encode(digest, 'hex') AS dg FROM fx_quotes ORDER BY id", []],
  ["tenant_type_param", "SELECT (ROW($1::numeric, 'EUR')::money_amount).amount::text AS a", ["1.50"]],
  ["merchants", "SELECT id::int AS id, name FROM merchants WHERE id = ANY ($1::int[]) ORDER BY id", [[1, 2, 3]]],
  ["catalog", "SELECT t.typname::text AS typname, t.typtype::text AS typtype FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = 'public' AND t.typname IN ('citext', 'money_amount') ORDER BY 1", []],
  ["extensions", "SELECT extname::text AS e FROM pg_catalog.pg_extension WHERE extname IN ('citext', 'pgcrypto') ORDER BY 1", []],
];

function describe(e) {
  return `ERROR ${e.code || e.name}: ${String(e.message).split("\n")[0]}`;
}

// Buffers and bigints as plain JSON.
function plain(rows) {
  return JSON.parse(JSON.stringify(Array.from(rows, (r) => ({ ...r })), (_, v) => (typeof v === "bigint" ? v.toString() : v)));
}

async function withPostgresJs(out) {
  // postgres.js looks up array types at connect (fetch_types) and prepares statements by default.
  const sql = postgres({ host, port: Number(port), database, user, password, ssl: false, max: 2, idle_timeout: 5, connect_timeout: 10 });
  try {
    for (const [name, text, params] of QUERIES) {
      try {
        out[name] = plain(await sql.unsafe(text, params, { prepare: true }));
      } catch (e) {
        out[name] = describe(e);
      }
    }
    // A tagged-template query (parameters typed by postgres.js) and a simple-protocol one.
    try {
      const id = 1;
      out["masked_tagged"] = plain(await sql`SELECT email FROM payers WHERE id = ${id}`);
    } catch (e) {
      out["masked_tagged"] = describe(e);
    }
    try {
      out["simple"] = plain(await sql.unsafe("SELECT 1 = 1 AS t, 'a' < 'b' AS lt").simple());
    } catch (e) {
      out["simple"] = describe(e);
    }
  } finally {
    await sql.end({ timeout: 5 });
  }
}

async function withNodePostgres(out) {
  // A pool: clients are released and reused; named (prepared) and unnamed queries.
  const pool = new pg.Pool({ host, port: Number(port), database, user, password, ssl: false, max: 2, connectionTimeoutMillis: 10000 });
  try {
    for (const [name, text, params] of QUERIES) {
      const c = await pool.connect();
      try {
        out[name] = plain((await c.query({ name: `q_${name}`, text, values: params })).rows);
        // The same named statement again (Bind/Execute only).
        await c.query({ name: `q_${name}`, text, values: params });
      } catch (e) {
        out[name] = describe(e);
      } finally {
        c.release();
      }
    }
    try {
      out["masked_tagged"] = plain((await pool.query("SELECT email FROM payers WHERE id = $1", [1])).rows);
    } catch (e) {
      out["masked_tagged"] = describe(e);
    }
    try {
      out["simple"] = plain((await pool.query("SELECT 1 = 1 AS t, 'a' < 'b' AS lt")).rows);
    } catch (e) {
      out["simple"] = describe(e);
    }
  } finally {
    await pool.end();
  }
}

const out = {};
try {
  if (driver === "postgres") await withPostgresJs(out);
  else if (driver === "pg") await withNodePostgres(out);
  else throw new Error(`unknown driver ${driver}`);
} catch (e) {
  out["connect"] = describe(e);
}
const sorted = Object.fromEntries(Object.keys(out).sort().map((k) => [k, out[k]]));
console.log(JSON.stringify(sorted, null, 1));
