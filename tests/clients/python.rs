//! Python drivers through pgveil versus directly: psycopg 3 (libpq underneath) and asyncpg (its own protocol
//! implementation). Each runs a script from `tests/py/` that prints JSON; the two runs must print the same.

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::support::Fixture;
use crate::{Target, client, run_ok, same};

fn script(name: &str) -> String {
    format!("{}/tests/py/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn run_script(target: &Target, name: &str, arg: &str) -> Result<Value> {
    let out = run_ok(
        client(target, "python3", [script(name).as_str(), arg]).env("PYTHONDONTWRITEBYTECODE", "1"),
    )?;
    serde_json::from_str(&out).with_context(|| format!("{name} printed no JSON:\n{out}"))
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("json")
}

/// psycopg with `sslmode=require` through pgveil (backend over TLS) and without TLS directly: parameters,
/// prepared statements, a named cursor read in batches, COPY TO.
pub fn psycopg_matches_direct(fx: &Fixture) -> Result<()> {
    let tenant = "tlsco";
    let t = Target::proxy(fx, tenant, "analyst", "sslmode=require");
    let mut proxy = run_script(&t, "psycopg_client.py", &t.conninfo)?;
    let d = Target::direct(fx, tenant);
    let mut direct = run_script(&d, "psycopg_client.py", &d.conninfo)?;

    ensure!(
        proxy["ssl"] == Value::Bool(true),
        "psycopg through pgveil did not use TLS"
    );
    proxy.as_object_mut().expect("object").remove("ssl");
    direct.as_object_mut().expect("object").remove("ssl");

    let n = |k: &str| direct[k].as_array().map_or(0, Vec::len);
    ensure!(
        n("params") == 7,
        "direct: expected 7 payers, got {}",
        pretty(&direct["params"])
    );
    ensure!(
        n("prepared") == 6 && n("prepared_statements") >= 1,
        "direct: no prepared statements: {}",
        pretty(&direct)
    );
    ensure!(
        n("cursor_rows") == 80 && n("cursor_batches") == 5,
        "direct: cursor: {}",
        pretty(&direct["cursor_batches"])
    );
    ensure!(
        direct["copy"]
            .as_str()
            .is_some_and(|c| c.lines().count() == 40),
        "direct: COPY output"
    );
    ensure!(
        direct["application_name"] == "psycopg-test",
        "direct: SET did not stick"
    );
    same("psycopg", &pretty(&proxy), &pretty(&direct))
}

/// asyncpg through pgveil (plain text from loopback) and directly: parameters, prepare()+fetch, COPY out of a
/// query, binary COPY into a temporary table, and decoding of jsonb, numeric, timestamptz, inet, uuid[] and
/// composite types (which asyncpg introspects from the catalog).
pub fn asyncpg_matches_direct(fx: &Fixture) -> Result<()> {
    let tenant = "globex";
    let dsn = |t: &Target| {
        // key=value pairs from the conninfo, as a URL (asyncpg does not parse libpq conninfo strings).
        let kv: std::collections::HashMap<&str, &str> = t
            .conninfo
            .split_whitespace()
            .filter_map(|p| p.split_once('='))
            .collect();
        format!(
            "postgresql://{}@{}:{}/{}?sslmode={}",
            kv["user"], kv["host"], kv["port"], kv["dbname"], kv["sslmode"]
        )
    };
    let p = Target::proxy(fx, tenant, "analyst", "sslmode=disable");
    let proxy = run_script(&p, "asyncpg_client.py", &dsn(&p))?;
    let d = Target::direct(fx, tenant);
    let direct = run_script(&d, "asyncpg_client.py", &dsn(&d))?;

    let n = |k: &str| direct[k].as_array().map_or(0, Vec::len);
    ensure!(
        n("fetch") == 4 && n("prepared") == 7,
        "direct: unexpected rows: {}",
        pretty(&direct)
    );
    ensure!(
        direct["copy_in_status"] == "COPY 2000",
        "direct: copy in: {}",
        direct["copy_in_status"]
    );
    ensure!(
        direct["copy_out_status"] == "COPY 25",
        "direct: copy out: {}",
        direct["copy_out_status"]
    );
    let types = pretty(&direct["types"]);
    for t in [
        "Decimal(",
        "datetime.datetime(",
        "IPv4Interface(",
        "UUID(",
        "datetime.timedelta(",
    ] {
        ensure!(
            types.contains(t),
            "direct: no {t} among decoded types: {types}"
        );
    }
    ensure!(
        pretty(&direct["composite"]).contains("globex-payer"),
        "direct: composite rows: {}",
        direct["composite"]
    );
    same("asyncpg", &pretty(&proxy), &pretty(&direct))
}
