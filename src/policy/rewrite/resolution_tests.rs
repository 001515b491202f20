//! Resolution by argument types, trusted extensions, names PostgreSQL accepts, session-reset idioms and
//! side effects of read-only roles, over the fixture catalog (tenant operators `public.=` on the composite
//! `money_amount` and `public.<=` on text; citext and pgcrypto trusted, dblink not).

use std::path::PathBuf;

use super::*;
use crate::ids::TenantId;
use crate::policy::catalog::fixture;
use crate::policy::file::Policy;

fn run_as(role: &str, sql: &str) -> Outcome {
    let texts = vec![
        (
            PathBuf::from("payments.toml"),
            include_str!("../../../policies/payments.toml").to_owned(),
        ),
        (
            PathBuf::from("extra.toml"),
            r#"
            [roles.writer]
            statements = ["read", "write"]
            [roles.minimal]
            statements = ["select"]
            [roles.opuser]
            allow_operators = ["public.="]
            [roles.fnuser]
            allow_functions = ["public.length"]
            [roles.orduser]
            allow_operators = ["public.<", "public.="]
            allow_functions = ["public.money_amount_cmp"]
            [roles.notifier]
            statements = ["read", "listen"]
            "#
            .to_owned(),
        ),
    ];
    let p = Policy::from_texts(&texts).expect("valid policy");
    let cat = fixture::catalog();
    let key = PseudonymKey::new(b"unit-test-key");
    let role = RoleName::new(role);
    let eff = p
        .effective(&TenantId::new("acme"), &role)
        .expect("role defined");
    let ctx = Context {
        policy: &eff,
        catalog: Some(&cat),
        key: Some(&key),
        role: &role,
    };
    rewrite(sql, &ctx)
}

#[track_caller]
fn passes(role: &str, sql: &str) {
    let o = run_as(role, sql);
    assert!(!matches!(o, Outcome::Refuse(_)), "{sql}: {o:?}");
}

#[track_caller]
fn refused(role: &str, sql: &str, rule: &str) {
    match run_as(role, sql) {
        Outcome::Refuse(r) => assert_eq!(r.rule, rule, "{sql}: {r:?}"),
        other => panic!("expected refusal ({rule}) of {sql:?}, got {other:?}"),
    }
}

#[test]
fn operators_resolve_by_argument_types() {
    for sql in [
        "SELECT 1 = 1",
        "SELECT * FROM merchants WHERE id = 5 AND name = 'x' AND name <> 'y'",
        "SELECT relname FROM pg_catalog.pg_class WHERE relname = $1 AND relkind = ANY (ARRAY['r', 'v'])",
        "SELECT 1 WHERE 2 IN (1, 2, 3) AND 2 BETWEEN 1 AND 3 AND 1 IS DISTINCT FROM 2",
        "SELECT NULLIF(1, 2), CASE 1 WHEN 1 THEN 'a' END",
        "SELECT id FROM merchants WHERE id = ANY (SELECT id FROM merchants) ORDER BY id USING <",
        "SELECT * FROM merchants m JOIN payments p USING (id)",
        "SELECT 'a'::text LIKE 'b' OR 'a'::text ILIKE 'c' OR 'a'::text SIMILAR TO 'd'",
        "SELECT 1 OPERATOR(pg_catalog.=) 1",
        "SELECT * FROM wallets WHERE id = 3",
        // pgjdbc getColumns: the outer alias `c` is a subquery, the inner `c` is pg_class.
        "SELECT * FROM (SELECT c.relname, c.relkind FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n \
         ON (c.relnamespace = n.oid) WHERE c.relkind IN ('r', 'p') AND n.nspname LIKE 'public') c \
         WHERE true AND c.relname LIKE '%' ORDER BY c.relname",
    ] {
        passes("analyst", sql);
    }
    for sql in [
        "SELECT $1 = $2",
        "SELECT * FROM wallets WHERE balance = balance",
        "SELECT * FROM wallets w WHERE w = w",
        "SELECT 1 FROM wallets WHERE balance IN (balance)",
        "SELECT 1 FROM wallets WHERE NULLIF(balance, balance) IS NULL",
        "SELECT 1 FROM wallets WHERE balance IS DISTINCT FROM balance",
        "SELECT CASE balance WHEN balance THEN 1 END FROM wallets",
        "SELECT 1 FROM wallets WHERE balance = ANY (SELECT balance FROM wallets)",
        "SELECT 1 FROM wallets ORDER BY balance USING =",
        "SELECT * FROM wallets a NATURAL JOIN wallets b",
        "SELECT 1 FROM merchants WHERE name BETWEEN 'a' AND 'b'",
        "SELECT 1 FROM merchants WHERE name <= 'b'",
        "SELECT * FROM (SELECT balance AS id FROM wallets) s WHERE s.id = s.id",
        "SELECT * FROM (SELECT balance AS relkind FROM wallets) c WHERE c.relkind = c.relkind",
        "WITH c AS (SELECT balance AS id FROM wallets) SELECT 1 FROM c WHERE c.id = c.id",
        "SELECT 1 FROM wallets w(a, b) WHERE w.b = w.b",
        "SELECT 1 OPERATOR(public.=) 1",
        "SELECT 1 OPERATOR(public.-|-) 1",
        "SELECT 1 -|- 1",
    ] {
        refused("analyst", sql, "denied-operator");
    }
    passes("opuser", "SELECT * FROM wallets WHERE balance = balance");
    passes("opuser", "SELECT 1 OPERATOR(public.=) 1");
    passes(
        "analyst",
        "SELECT 'a'::text <> 'b' AND 'a' OPERATOR(public.~~) 'b'",
    );
}

#[test]
fn trusted_extension_and_information_schema_functions_are_built_ins() {
    for sql in [
        "SELECT strpos('abc', 'b'), regexp_replace('a', 'b', 'c')",
        "SELECT public.gen_random_bytes(4)",
        "SELECT * FROM information_schema._pg_expandarray(ARRAY[1, 2])",
        "SELECT acme.public.strpos('a', 'b')",
    ] {
        passes("analyst", sql);
    }
    refused(
        "analyst",
        "SELECT public.dblink_get_result('x')",
        "denied-function",
    );
    refused("analyst", "SELECT lookup_email(1)", "denied-function");
    refused(
        "analyst",
        "SELECT other.public.strpos('a', 'b')",
        "denied-function",
    );
}

#[test]
fn subquery_cte_and_values_columns_are_typed() {
    for sql in [
        "SELECT * FROM (SELECT id AS x FROM merchants) s WHERE s.x = 1",
        "SELECT * FROM (SELECT id FROM merchants) s WHERE id = 1",
        "WITH c(a) AS (SELECT relname FROM pg_catalog.pg_class) SELECT 1 FROM c WHERE c.a = 'x'",
        "SELECT 1 FROM (VALUES (1, 'a'), (2, 'b')) v(n, t) WHERE v.n = 1 AND v.t = 'x'",
        "SELECT 1 FROM (VALUES (1)) v WHERE column1 = 2",
        "SELECT * FROM (SELECT 'a' AS k UNION SELECT relname FROM pg_catalog.pg_class) s WHERE s.k = 'b'",
        "SELECT * FROM (SELECT * FROM (SELECT oid AS o FROM pg_catalog.pg_class) a) b WHERE b.o = 1",
        // pgjdbc's type lookup: `USING (nspname)` between pg_namespace and a subquery of unknown type.
        "SELECT pg_type.oid, typname FROM pg_catalog.pg_type LEFT JOIN (select ns.oid as nspoid, ns.nspname, r.r \
         from pg_namespace as ns join (select s.r, (current_schemas(false))[s.r] as nspname \
         from generate_series(1, array_upper(current_schemas(false), 1)) as s(r)) as r using (nspname)) as sp \
         ON sp.nspoid = typnamespace WHERE typname = 'citext' ORDER BY sp.r, pg_type.oid DESC LIMIT 1",
    ] {
        passes("analyst", sql);
    }
    for sql in [
        "SELECT 1 FROM (VALUES (ROW(1, 'EUR')::money_amount)) v(m) WHERE v.m = v.m",
        "SELECT * FROM (SELECT balance AS x FROM wallets UNION ALL SELECT balance FROM wallets) s WHERE s.x = s.x",
        "SELECT * FROM (SELECT now() AS x) s WHERE s.x = s.x",
        "SELECT * FROM (SELECT * FROM wallets) s JOIN (SELECT * FROM wallets) t USING (balance)",
        "SELECT * FROM wallets JOIN (SELECT balance FROM wallets) t USING (balance)",
    ] {
        refused("analyst", sql, "denied-operator");
    }
}

#[test]
fn implicit_comparisons_on_tenant_ordered_types() {
    // The fixture's `money_amount` has a tenant btree operator class (`wallets.balance`).
    for sql in [
        "SELECT id FROM wallets ORDER BY id",
        "SELECT DISTINCT id FROM wallets GROUP BY id",
        "SELECT balance FROM wallets UNION ALL SELECT balance FROM wallets",
        "SELECT name FROM merchants ORDER BY 1",
        "SELECT relname FROM pg_catalog.pg_class ORDER BY relname",
        "SELECT x FROM (SELECT 1 AS x) s ORDER BY x",
        "SELECT now() ORDER BY 1",
        "SELECT id FROM merchants UNION SELECT id FROM wallets",
    ] {
        passes("analyst", sql);
    }
    for sql in [
        "SELECT balance FROM wallets ORDER BY balance",
        "SELECT balance FROM wallets ORDER BY 1",
        "SELECT balance AS b FROM wallets ORDER BY b",
        "SELECT DISTINCT balance FROM wallets",
        "SELECT DISTINCT ON (balance) id FROM wallets",
        "SELECT balance FROM wallets GROUP BY balance",
        "SELECT 1 FROM wallets GROUP BY ROLLUP (balance)",
        "SELECT balance FROM wallets UNION SELECT balance FROM wallets",
        "SELECT * FROM wallets INTERSECT SELECT * FROM wallets",
        "SELECT count(DISTINCT balance) FROM wallets",
        "SELECT array_agg(balance ORDER BY balance) FROM wallets",
        "SELECT max(balance) FROM wallets",
        "SELECT GREATEST(balance, balance) FROM wallets",
        "SELECT row_number() OVER (PARTITION BY balance) FROM wallets",
        "SELECT row_number() OVER w FROM wallets WINDOW w AS (PARTITION BY balance)",
        "SELECT w FROM wallets w ORDER BY w",
        "SELECT wallets <> wallets FROM wallets",
        "SELECT x FROM (SELECT balance AS x FROM wallets) s ORDER BY x",
        "SELECT $1 ORDER BY 1",
    ] {
        refused("analyst", sql, "implicit-operator");
    }
    passes(
        "orduser",
        "SELECT DISTINCT balance FROM wallets ORDER BY balance",
    );
}

#[test]
fn overloaded_functions_resolve_by_argument_types() {
    // The fixture's tenant `public.length(money_amount)` overloads the built-in on its own type.
    for sql in [
        "SELECT length('x'), length(NULL)",
        "SELECT length(email) FROM payers",
        "SELECT length(name), length(name::bytea) FROM merchants",
        "SELECT length(id::text) FROM wallets",
    ] {
        passes("analyst", sql);
    }
    for sql in [
        "SELECT length(balance) FROM wallets",
        "SELECT length(ROW(1, 'EUR')::money_amount)",
        "SELECT length($1)",
        "SELECT length(s.b) FROM (SELECT balance AS b FROM wallets) s",
        "SELECT public.length(NULL::money_amount)",
        "SELECT length(VARIADIC ARRAY['x'])",
        "SELECT length(x => 'a')",
        // The tenant's `lower(text)` has the built-in's own signature: kept a candidate.
        "SELECT lower('X')",
        "SELECT lower(email) FROM payers",
    ] {
        refused("analyst", sql, "denied-function");
    }
    passes("fnuser", "SELECT length(balance) FROM wallets");
}

#[test]
fn names_and_errors_as_postgresql() {
    passes("analyst", "SELECT * FROM acme.public.merchants");
    match run_as("analyst", "SELECT email FROM acme.public.payers") {
        Outcome::Rewrite { sql, .. } => assert!(sql.contains("\"public\".\"payers\""), "{sql}"),
        other => panic!("{other:?}"),
    }
    match run_as("analyst", "SELECT * FROM nosuchtable") {
        Outcome::Refuse(r) => {
            let e = r.to_pg_error();
            assert_eq!(
                (e.code(), e.message()),
                ("42P01", "relation \"nosuchtable\" does not exist")
            );
        }
        other => panic!("{other:?}"),
    }
    match run_as("analyst", "SELECT * FROM other.public.payers") {
        Outcome::Refuse(r) => assert_eq!(r.to_pg_error().code(), "0A000"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn session_reset_idioms_are_allowed_for_every_role() {
    for sql in [
        "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;",
        "DISCARD ALL",
        "DISCARD PLANS",
        "DISCARD SEQUENCES",
        "DISCARD TEMP",
        "DEALLOCATE ALL",
    ] {
        passes("minimal", sql);
    }
    refused("minimal", "LISTEN c", "statement-kind");
    refused("minimal", "UNLISTEN c", "statement-kind");
    refused("minimal", "CLOSE c", "statement-kind");
    refused("minimal", "DEALLOCATE s", "statement-kind");
    refused("minimal", "RESET application_name", "statement-kind");
}

#[test]
fn read_only_roles_have_no_side_effects() {
    for sql in [
        "SELECT nextval('payments_id_seq')",
        "SELECT pg_catalog.setval('payments_id_seq', 1)",
        "SELECT * FROM merchants FOR UPDATE",
        "SELECT * FROM merchants FOR NO KEY UPDATE",
        "SELECT * FROM merchants FOR SHARE",
        "SELECT * FROM merchants FOR KEY SHARE",
        "SELECT * FROM (SELECT * FROM merchants FOR UPDATE) s",
        "SELECT pg_advisory_lock(1)",
        "SELECT pg_advisory_xact_lock_shared(1)",
        "SELECT pg_try_advisory_lock(1, 2)",
        "SELECT pg_notify('c', 'x')",
    ] {
        refused("analyst", sql, "side-effect");
    }
    passes(
        "analyst",
        "SELECT currval('payments_id_seq'), pg_advisory_unlock(1)",
    );
    passes("writer", "SELECT nextval('payments_id_seq')");
    passes("writer", "SELECT * FROM merchants FOR UPDATE");
    passes("writer", "SELECT pg_advisory_lock(1)");
    passes("notifier", "SELECT pg_notify('c', 'x')");
    refused("notifier", "SELECT nextval('s')", "side-effect");
}

#[test]
fn deep_statements_are_decided_not_refused() {
    let concat = format!("SELECT {} FROM payers", vec!["email"; 50].join(" || "));
    let unions = vec!["SELECT email FROM payers"; 100].join(" UNION ALL ");
    let mut nested = "SELECT email FROM payers".to_owned();
    for _ in 0..40 {
        nested = format!("SELECT * FROM ({nested}) s");
    }
    for sql in [&concat, &unions, &nested] {
        match run_as("analyst", sql) {
            Outcome::Rewrite { masked, .. } => assert!(!masked.is_empty(), "{sql}"),
            other => panic!("{} bytes: {other:?}", sql.len()),
        }
    }
    // As deep as fits in the inline limit (two bytes per level) on a 2 MiB test thread, and far deeper
    // (decided on a large stack or refused by the parser's own stack check, never a crash).
    for levels in [1000, 20_000, 200_000] {
        let sql = format!("SELECT {}1", "- ".repeat(levels));
        let o = run_as("analyst", &sql);
        assert!(
            matches!(o, Outcome::Allow) || matches!(&o, Outcome::Refuse(r) if r.rule == "parse"),
            "{levels}: {o:?}"
        );
    }
    // One byte per level (`+` needs no space), on both sides of the inline limit and past bison's depth: a
    // stack overflow here would abort the process.
    for levels in [500, 1040, 2040, 4395, 9_000, 50_000] {
        let sql = format!("SELECT {}1", "+".repeat(levels));
        let o = run_as("analyst", &sql);
        assert!(
            matches!(o, Outcome::Allow) || matches!(&o, Outcome::Refuse(r) if r.rule == "parse"),
            "{levels}: {o:?}"
        );
    }
    let chain = format!("SELECT {}", vec!["1"; 100_000].join(" || "));
    let o = run_as("analyst", &chain);
    assert!(
        matches!(o, Outcome::Allow) || matches!(&o, Outcome::Refuse(r) if r.rule == "parse"),
        "{o:?}"
    );
}

#[test]
fn uescape_and_comments_between_name_parts() {
    for sql in [
        "SELECT email FROM U&\"p!0061yers\" UESCAPE '!'",
        "SELECT email FROM public/**/./**/payers",
        "SELECT email FROM public /* a */ . -- b\n payers p",
        "SELECT email FROM ONLY /**/ payers",
        "TABLE /**/ payers",
    ] {
        match run_as("analyst", sql) {
            Outcome::Rewrite { sql: out, .. } => {
                assert!(out.contains("\"public\".\"payers\")"), "{out}");
                assert!(!out.contains("UESCAPE"), "{out}");
                pg_query::parse(&out, 0).unwrap_or_else(|e| panic!("{out}: {e}"));
            }
            other => panic!("{sql}: {other:?}"),
        }
    }
}

#[test]
fn pgjdbc_get_columns() {
    let sql = "SELECT * FROM (SELECT n.nspname,c.relname,a.attname,a.atttypid,a.attnotnull OR (t.typtype = 'd' AND t.typnotnull) AS attnotnull,a.atttypmod,a.attlen,t.typtypmod,row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum) AS attnum, nullif(a.attidentity, '') as attidentity,nullif(a.attgenerated, '') as attgenerated,pg_catalog.pg_get_expr(def.adbin, def.adrelid) AS adsrc,dsc.description,t.typbasetype,t.typtype  FROM pg_catalog.pg_namespace n  JOIN pg_catalog.pg_class c ON (c.relnamespace = n.oid)  JOIN pg_catalog.pg_attribute a ON (a.attrelid=c.oid)  JOIN pg_catalog.pg_type t ON (a.atttypid = t.oid)  LEFT JOIN pg_catalog.pg_attrdef def ON (a.attrelid=def.adrelid AND a.attnum = def.adnum)  LEFT JOIN pg_catalog.pg_description dsc ON (c.oid=dsc.objoid AND a.attnum = dsc.objsubid)  LEFT JOIN pg_catalog.pg_class dc ON (dc.oid=dsc.classoid AND dc.relname='pg_class')  LEFT JOIN pg_catalog.pg_namespace dn ON (dc.relnamespace=dn.oid AND dn.nspname='pg_catalog')  WHERE c.relkind in ('r','p','v','f','m') and a.attnum > 0 AND NOT a.attisdropped  AND n.nspname LIKE 'public' AND c.relname LIKE 'payers') c WHERE true  AND attname LIKE '%' ORDER BY nspname,c.relname,attnum ";
    let texts = vec![(
        PathBuf::from("payments.toml"),
        include_str!("../../../policies/payments.toml").to_owned(),
    )];
    let p = Policy::from_texts(&texts).expect("valid policy");
    let mut cat = fixture::catalog();
    for (n, t) in [
        ("typtype", "char"),
        ("relnamespace", "oid"),
        ("attrelid", "oid"),
        ("atttypid", "oid"),
        ("adrelid", "oid"),
        ("attnum", "int2"),
        ("adnum", "int2"),
        ("objoid", "oid"),
        ("objsubid", "int4"),
        ("classoid", "oid"),
        ("attidentity", "char"),
        ("attgenerated", "char"),
    ] {
        cat.resolution
            .column_types
            .entry(n.into())
            .or_default()
            .insert(t.into());
    }
    for r in ["pg_attrdef", "pg_description"] {
        cat.system_relations.insert(("pg_catalog".into(), r.into()));
    }
    let role = RoleName::new("analyst");
    let eff = p.effective(&TenantId::new("acme"), &role).expect("role");
    let ctx = Context {
        policy: &eff,
        catalog: Some(&cat),
        key: None,
        role: &role,
    };
    let o = rewrite(sql, &ctx);
    assert!(!matches!(o, Outcome::Refuse(_)), "{o:?}");
}
