//! Rewriter and firewall over the fixed catalog with the shipped example policy: one test per construct of
//! the threat model and per firewall rule.

use std::path::PathBuf;
use std::time::Instant;

use super::*;
use crate::ids::TenantId;
use crate::policy::catalog::fixture;
use crate::policy::file::Policy;

fn policy() -> Policy {
    let mut texts = vec![(
        PathBuf::from("payments.toml"),
        include_str!("../../../policies/payments.toml").to_owned(),
    )];
    texts.push((
        PathBuf::from("test-extra.toml"),
        r#"
        [[column]]
        match = "events.email"
        class = "pii.email"
        [[column]]
        match = "contacts.email"
        class = "pii.email"
        [classes."pii.meta"]
        mask = "jsonb"
        keys = ["card", "payer.email"]
        [[column]]
        match = "events.meta"
        class = "pii.meta"
        [roles.writer]
        statements = ["read", "write"]
        [roles.fnuser]
        allow_functions = ["public.lookup_email"]
        [roles.strict]
        unclassified = "deny"
        "#
        .to_owned(),
    ));
    Policy::from_texts(&texts).expect("example policy is valid")
}

fn run_as(role: &str, sql: &str) -> Outcome {
    let p = policy();
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

fn run(sql: &str) -> Outcome {
    run_as("analyst", sql)
}

#[track_caller]
fn rewritten(sql: &str) -> String {
    match run(sql) {
        Outcome::Rewrite { sql: out, .. } => {
            assert!(
                !out.contains("FROM payers") || out.contains("FROM \"public\".\"payers\""),
                "{out}"
            );
            out
        }
        other => panic!("expected a rewrite of {sql:?}, got {other:?}"),
    }
}

#[track_caller]
fn refused(sql: &str, rule: &str) {
    refused_as("analyst", sql, rule)
}

#[track_caller]
fn refused_as(role: &str, sql: &str, rule: &str) {
    match run_as(role, sql) {
        Outcome::Refuse(r) => assert_eq!(r.rule, rule, "{sql}: {r:?}"),
        other => panic!("expected refusal ({rule}) of {sql:?}, got {other:?}"),
    }
}

#[track_caller]
fn allowed(sql: &str) {
    assert_eq!(run(sql), Outcome::Allow, "{sql}");
}

const MASKED_PAYERS: &str = "(SELECT \"id\", ";

#[test]
fn star_and_projection_are_substituted() {
    let out = rewritten("SELECT * FROM payers");
    assert!(
        out.starts_with(&format!("SELECT * FROM {MASKED_PAYERS}")),
        "{out}"
    );
    assert!(out.ends_with(") AS \"payers\""), "{out}");
    assert!(
        out.contains("pg_catalog.regexp_replace(\"card_pan\"::pg_catalog.text"),
        "{out}"
    );
    assert!(out.contains("AS \"email\""), "{out}");
    // Unmasked columns are passed through by name.
    let out = rewritten("select p.email, p.id from public.payers p where p.email like '%x%'");
    assert!(out.contains(") p where p.email like '%x%'"), "{out}");
}

#[test]
fn whole_row_references_see_the_subquery() {
    for sql in [
        "SELECT p FROM payers p",
        "SELECT row_to_json(p) FROM payers p",
        "SELECT p::text FROM payers AS p",
        "SELECT payers FROM payers",
        "SELECT t.* FROM payers t",
    ] {
        let out = rewritten(sql);
        assert!(out.contains(MASKED_PAYERS), "{out}");
    }
}

#[test]
fn table_shorthand_and_only_and_star() {
    let out = rewritten("TABLE payers");
    assert!(out.starts_with("SELECT * FROM (SELECT"), "{out}");
    let out = rewritten("SELECT * FROM ONLY payers");
    assert!(out.contains("FROM ONLY \"public\".\"payers\")"), "{out}");
    assert!(!out.contains("ONLY (SELECT"), "{out}");
    let out = rewritten("SELECT * FROM ONLY (payers) x");
    assert!(out.contains("FROM ONLY \"public\".\"payers\") x"), "{out}");
    let out = rewritten("TABLE ONLY payers");
    assert!(out.starts_with("SELECT * FROM (SELECT"), "{out}");
    rewritten("SELECT * FROM payers *");
}

#[test]
fn identifier_spellings() {
    for sql in [
        "SELECT * FROM \"payers\"",
        "SELECT * FROM PUBLIC.PAYERS",
        "SELECT * FROM \"public\" . \"payers\"",
        "SELECT * FROM U&\"\\0070ayers\"",
        "SELECT * FROM /* comment */ payers -- trailing",
        "SELECT $$payers$$, * FROM payers",
    ] {
        rewritten(sql);
    }
    // `audit.payers` is another table without PII.
    allowed("SELECT * FROM audit.payers");
    // A case-distinct quoted name is a different (unknown) relation: refused.
    refused("SELECT * FROM \"Payers\"", "unknown-relation");
}

#[test]
fn expressions_casts_aggregates() {
    for sql in [
        "SELECT upper(email), email::bytea, length(card_pan) FROM payers",
        "SELECT count(DISTINCT email), string_agg(full_name, ',') FROM payers",
        "SELECT * FROM payers WHERE email = 'a@b.c'",
        "SELECT CASE WHEN email LIKE 'a%' THEN 1 END FROM payers ORDER BY email",
    ] {
        rewritten(sql);
    }
}

#[test]
fn subqueries_ctes_lateral_setops() {
    let out =
        rewritten("SELECT (SELECT email FROM payers LIMIT 1), x.* FROM (SELECT * FROM payers) x");
    assert_eq!(out.matches(MASKED_PAYERS).count(), 2, "{out}");
    let out = rewritten("WITH c AS (SELECT email FROM payers) SELECT * FROM c");
    assert_eq!(out.matches(MASKED_PAYERS).count(), 1, "{out}");
    // A CTE named like the table shadows it only where it is in scope.
    allowed("WITH payers AS (SELECT 1 AS email) SELECT * FROM payers");
    let out = rewritten(
        "SELECT * FROM (WITH payers AS (SELECT 1 AS email) SELECT * FROM payers) a, payers",
    );
    assert_eq!(out.matches(MASKED_PAYERS).count(), 1, "{out}");
    let out = rewritten("WITH a AS (SELECT * FROM payers), payers AS (SELECT 1) SELECT * FROM a");
    assert_eq!(
        out.matches(MASKED_PAYERS).count(),
        1,
        "non-recursive CTE sees only earlier names: {out}"
    );
    rewritten(
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r, payers",
    );
    let out = rewritten(
        "SELECT m.name, l.email FROM merchants m, LATERAL (SELECT email FROM payers WHERE id = m.id) l",
    );
    assert_eq!(out.matches(MASKED_PAYERS).count(), 1, "{out}");
    let out = rewritten(
        "SELECT email FROM payers UNION SELECT card_pan FROM payments EXCEPT TABLE payers",
    );
    assert_eq!(
        out.matches("FROM \"public\".\"payers\")").count(),
        2,
        "{out}"
    );
    assert!(out.contains("\"payments\""), "{out}");
    rewritten("SELECT * FROM payers JOIN payments ON payments.payer_id = payers.id");
    rewritten("VALUES ((SELECT max(email) FROM payers))");
}

#[test]
fn copy_cursor_prepare_explain_multi() {
    let out = rewritten("COPY payers TO STDOUT");
    assert!(out.starts_with("COPY (SELECT * FROM (SELECT"), "{out}");
    assert!(out.ends_with(") TO STDOUT"), "{out}");
    let out = rewritten("COPY public.payers (email, id) TO STDOUT WITH (FORMAT csv)");
    assert!(
        out.starts_with("COPY (SELECT \"email\", \"id\" FROM (SELECT"),
        "{out}"
    );
    assert!(out.ends_with(" TO STDOUT WITH (FORMAT csv)"), "{out}");
    rewritten("COPY (SELECT email FROM payers) TO STDOUT");
    rewritten("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM payers");
    rewritten("PREPARE q(int) AS SELECT email FROM payers WHERE id = $1");
    rewritten("EXPLAIN ANALYZE SELECT card_pan FROM payments");
    let out = rewritten("SELECT 1; SELECT email FROM payers; SELECT 'payers'");
    assert!(out.ends_with("; SELECT 'payers'"), "{out}");
    refused("COPY payers TO '/tmp/x'", "copy-file");
    refused("COPY payers TO PROGRAM 'cat'", "copy-file");
    refused("COPY payers FROM STDIN", "statement-kind");
}

#[test]
fn explain_never_shows_key_material() {
    refused(
        "EXPLAIN VERBOSE SELECT full_name FROM payers",
        "explain-pseudonym",
    );
}

#[test]
fn partitions_children_views_generated_columns() {
    let out = rewritten("SELECT * FROM events_2024");
    assert!(
        out.contains("'****' || COALESCE"),
        "partition inherits the parent's class: {out}"
    );
    assert!(out.contains("jsonb_set"), "{out}");
    let out = rewritten("SELECT * FROM old_payers");
    assert!(out.contains("AS \"email\""), "inheritance child: {out}");
    let out = rewritten("SELECT contact FROM payer_emails");
    assert!(
        out.contains("AS \"contact\""),
        "view column reading payers.email: {out}"
    );
    let out = rewritten("SELECT email_upper FROM contacts");
    assert!(
        out.contains("AS \"email_upper\""),
        "generated column: {out}"
    );
    refused("SELECT * FROM fn_view", "view-calls-function");
    match run_as("fnuser", "SELECT * FROM fn_view") {
        Outcome::Allow => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn dml_targets() {
    refused("UPDATE payers SET phone = '1'", "statement-kind");
    match run_as("writer", "UPDATE payers SET phone = '1' WHERE id = 3") {
        Outcome::Allow => {}
        other => panic!("{other:?}"),
    }
    for sql in [
        "UPDATE payers SET phone = email WHERE id = 3",
        "UPDATE payers p SET phone = '1' WHERE p.email LIKE 'a%'",
        "DELETE FROM payers WHERE card_pan = '4111111111111111'",
        "DELETE FROM payers RETURNING *",
        "UPDATE payers SET id = id RETURNING payers",
        "INSERT INTO payers (email) VALUES ('x') ON CONFLICT (email) DO UPDATE SET phone = payers.email",
        "MERGE INTO payers USING merchants m ON m.id = payers.id WHEN MATCHED THEN DELETE",
    ] {
        refused_as("writer", sql, "dml-masked-target");
    }
    match run_as(
        "writer",
        "WITH d AS (DELETE FROM disputes RETURNING *) SELECT * FROM d, payers",
    ) {
        Outcome::Rewrite { .. } => {}
        other => panic!("{other:?}"),
    }
    refused(
        "WITH d AS (DELETE FROM disputes RETURNING *) SELECT * FROM d",
        "statement-kind",
    );
}

#[test]
fn firewall_statement_kinds() {
    for sql in [
        "CREATE VIEW v AS SELECT email FROM payers",
        "CREATE TEMP TABLE t AS SELECT * FROM payers",
        "SELECT * INTO t FROM payers",
        "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS 'SELECT email FROM payers'",
        "CREATE RULE r AS ON SELECT TO merchants DO INSTEAD SELECT * FROM payers",
        "ALTER TABLE payers ADD COLUMN x int",
        "GRANT SELECT ON payers TO public",
    ] {
        refused(sql, "statement-kind");
    }
    refused(
        "DO $$ BEGIN RAISE NOTICE '%', (SELECT email FROM payers LIMIT 1); END $$",
        "statement-kind",
    );
    refused("CALL p()", "statement-kind");
    refused("SET ROLE postgres", "statement-kind");
    refused("SET SESSION AUTHORIZATION postgres", "statement-kind");
    refused("LOCK payers", "statement-kind");
    refused("VACUUM payers", "statement-kind");
    allowed("BEGIN; SHOW search_path; COMMIT");
    allowed("SET application_name = 'x'");
    allowed("FETCH 10 FROM c; CLOSE c");
    allowed("DISCARD ALL");
}

#[test]
fn firewall_functions_relations_settings() {
    for sql in [
        "SELECT query_to_xml('SELECT email FROM payers', true, true, '')",
        "SELECT pg_catalog.table_to_xml('payers', true, true, '')",
        "SELECT cursor_to_xml('c', 10, true, true, '')",
        "SELECT ts_stat('SELECT to_tsvector(email) FROM payers')",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT lo_import('/etc/passwd')",
        "SELECT pg_terminate_backend(1)",
        "SELECT current_query()",
    ] {
        refused(sql, "denied-function");
    }
    refused(
        "SELECT * FROM dblink('dbname=globex', 'SELECT email FROM payers') AS t(e text)",
        "denied-function",
    );
    refused("SELECT public.dblink_exec('x')", "denied-function");
    refused("SELECT lookup_email(1)", "denied-function");
    refused("SELECT lower('X')", "denied-function");
    allowed("SELECT pg_catalog.lower('X')");
    refused("SELECT 1 === 1", "denied-operator");
    refused("SELECT 1 OPERATOR(public.+) 1", "denied-operator");
    for sql in [
        "SELECT * FROM pg_stats",
        "SELECT * FROM pg_catalog.pg_stat_activity",
        "SELECT * FROM public.pg_stat_statements",
        "SELECT * FROM pg_prepared_statements",
    ] {
        refused(sql, "denied-relation");
    }
    refused("SET search_path = evil, public", "protected-setting");
    refused("SET LOCAL search_path TO evil", "protected-setting");
    refused(
        "SELECT set_config('search_path', 'evil', false)",
        "protected-setting",
    );
    refused(
        "SELECT pg_catalog.set_config(E'standard_conforming_strings', E'off', false)",
        "protected-setting",
    );
    refused("SET client_encoding = 'SJIS'", "protected-setting");
    refused(
        "SELECT set_config(current_user, 'x', false)",
        "protected-setting",
    );
    allowed(
        "SELECT pg_catalog.set_config(E'application_name', E'psql', false), pg_catalog.set_config(E'client_encoding', E'UTF8', false)",
    );
    refused("SELECT * FROM nosuchtable", "unknown-relation");
    refused("SELECT * FROM pg_toast.pg_toast_1234", "denied-relation");
    refused("SELECT * FROM other_db.public.payers", "unsupported");
    refused(
        "SELECT * FROM payers TABLESAMPLE SYSTEM (50)",
        "unsupported",
    );
    refused("SELECT 'unterminated", "parse");
    refused_as("strict", "SELECT * FROM merchants", "unclassified-column");
}

#[test]
fn catalog_queries_pass_untouched() {
    for sql in [
        "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE pg_catalog.pg_table_is_visible(c.oid) ORDER BY 1",
        "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a \
         WHERE a.attrelid = 'payers'::regclass AND a.attnum > 0",
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'payers'",
        "SELECT * FROM merchants",
    ] {
        allowed(sql);
    }
}

#[test]
fn no_catalog_means_refusal() {
    let p = policy();
    let role = RoleName::new("analyst");
    let eff = p.effective(&TenantId::new("acme"), &role).unwrap();
    let ctx = Context {
        policy: &eff,
        catalog: None,
        key: None,
        role: &role,
    };
    assert!(
        matches!(rewrite("SELECT * FROM merchants", &ctx), Outcome::Refuse(r) if r.rule == "catalog")
    );
    assert_eq!(
        rewrite(
            "SELECT pg_catalog.set_config(E'DateStyle', E'ISO', false)",
            &ctx
        ),
        Outcome::Allow
    );
}

#[test]
fn pseudonym_without_key_is_refused() {
    let p = policy();
    let cat = fixture::catalog();
    let role = RoleName::new("analyst");
    let eff = p.effective(&TenantId::new("acme"), &role).unwrap();
    let ctx = Context {
        policy: &eff,
        catalog: Some(&cat),
        key: None,
        role: &role,
    };
    assert!(
        matches!(rewrite("SELECT * FROM payers", &ctx), Outcome::Refuse(r) if r.rule == "mask")
    );
}

#[test]
fn raw_classes_and_tenant_overrides() {
    let p = policy();
    let role = RoleName::new("support");
    let acme = p.effective(&TenantId::new("acme"), &role).unwrap();
    assert!(acme.role.raw.contains("pii.phone"));
    let globex = p.effective(&TenantId::new("globex"), &role).unwrap();
    assert!(!globex.role.raw.contains("pii.phone") && globex.role.raw.contains("pii.email"));
    match run_as("support", "SELECT email, phone FROM payers") {
        Outcome::Rewrite { masked, .. } => {
            assert!(
                !masked
                    .iter()
                    .any(|m| m.contains(".email ") || m.contains(".phone ")),
                "{masked:?}"
            )
        }
        other => panic!("{other:?}"),
    }
}

/// Rewrite cost, cold (parse + walk + splice + verify) per statement; printed with `--nocapture`.
#[test]
fn rewrite_cost() {
    let sql = "SELECT p.full_name, p.email, count(*), sum(pm.amount) FROM payers p JOIN payments pm ON pm.payer_id = p.id \
               WHERE p.date_of_birth < '2000-01-01' GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 10";
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        assert!(matches!(run(sql), Outcome::Rewrite { .. }));
    }
    let per = t.elapsed().as_micros() / n;
    println!("rewrite cost (cold, incl. policy setup): {per} µs per statement");
}

fn check_as(role: &str, sql: &str) -> Checked {
    let p = policy();
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
    check(sql, &ctx)
}

#[test]
fn literal_plans_give_what_a_fresh_rewrite_gives() {
    let pairs = [
        (
            "SELECT email, full_name FROM payers WHERE id = 1",
            "SELECT email, full_name FROM payers WHERE id = 987654",
        ),
        (
            "SELECT p.email, x.amount FROM payers p JOIN payments x ON x.payer_id = p.id WHERE x.amount > 10.5 AND p.email LIKE 'a%'",
            "SELECT p.email, x.amount FROM payers p JOIN payments x ON x.payer_id = p.id WHERE x.amount > 0.25 AND p.email LIKE '%''; SELECT email FROM payers --'",
        ),
        (
            "SELECT * FROM merchants WHERE name = 'x'",
            "SELECT * FROM merchants WHERE name = $q$payers$q$",
        ),
        (
            "UPDATE merchants SET name = 'a' WHERE id = 1",
            "UPDATE merchants SET name = E'b\\'c' WHERE id = 2",
        ),
        (
            "WITH t AS (SELECT * FROM payers WHERE id < 5) SELECT email FROM t LIMIT 3",
            "WITH t AS (SELECT * FROM payers WHERE id < 50000) SELECT email FROM t LIMIT 30",
        ),
    ];
    for (a, b) in pairs {
        let role = if a.starts_with("UPDATE") {
            "writer"
        } else {
            "analyst"
        };
        let checked = check_as(role, a);
        let (n, t) = checked
            .template
            .unwrap_or_else(|| panic!("no plan for {a}"));
        let nb = normalize(b).expect("normalizes");
        assert_eq!(n.key, nb.key, "{a} / {b}");
        let fresh = run_as(role, b);
        match (&checked.outcome, fresh) {
            (Outcome::Allow, Outcome::Allow) => {}
            (Outcome::Rewrite { .. }, Outcome::Rewrite { sql, .. }) => {
                assert_eq!(t.instantiate(b, &nb).as_deref(), Some(sql.as_str()), "{b}");
            }
            (x, y) => panic!("{a}: {x:?} vs {b}: {y:?}"),
        }
    }
}

#[test]
fn decisions_on_constants_are_never_planned() {
    for sql in [
        "SELECT set_config('application_name', 'x', false)",
        "SET application_name = 'x'",
        "SET statement_timeout = 5",
        "COPY payers TO STDOUT WITH (FORMAT 'csv')",
        "EXPLAIN SELECT * FROM merchants WHERE id = 1",
        "PREPARE q AS SELECT * FROM payers WHERE id = 1",
        "DECLARE c CURSOR FOR SELECT * FROM payers WHERE id = 1",
    ] {
        let checked = check_as("analyst", sql);
        assert!(checked.template.is_none(), "{sql} was planned");
    }
    // Refusals are not planned either.
    let checked = check_as(
        "analyst",
        "SELECT * FROM pg_stats WHERE tablename = 'payers'",
    );
    assert!(matches!(checked.outcome, Outcome::Refuse(_)));
    assert!(checked.template.is_none());
}

#[test]
fn view_columns_reading_several_classes_are_redacted() {
    let out = rewritten("SELECT contact, dob FROM payer_contact");
    assert!(
        out.contains("'[REDACTED]'") && !out.contains("'****' || COALESCE"),
        "two classes: redact, not the e-mail mask: {out}"
    );
    assert!(
        out.contains("pg_catalog.date_trunc('year'"),
        "one class read twice keeps its function: {out}"
    );
    // A role that sees both classes raw reads the column raw.
    match run_as("support", "SELECT contact FROM payer_contact") {
        Outcome::Allow => {}
        Outcome::Rewrite { sql, .. } => assert!(!sql.contains("AS \"contact\""), "{sql}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn own_statement_names_are_refused_after_parsing() {
    for sql in [
        "EXECUTE pgveil_ps_1",
        "EXECUTE U&\"pgveil\\005fps\\005f1\"",
        "EXECUTE U&\"pgveil!005fps!005f1\" UESCAPE '!'",
        "EXPLAIN (VERBOSE) EXECUTE U&\"pgveil\\005fps\\005f1\"",
        "DEALLOCATE \"PGVEIL_PS_2\"",
        "PREPARE pgveil_ps_3 AS SELECT 1",
        "DECLARE U&\"pgveil\\005fps\\005f1\" CURSOR FOR SELECT 1",
        "FETCH 10 FROM pgveil_ps_1",
        "CLOSE pgveil_ps_1",
    ] {
        refused(sql, "reserved-name");
    }
    assert!(matches!(run("EXECUTE my_statement"), Outcome::Allow));
    assert!(matches!(run("DEALLOCATE ALL"), Outcome::Allow));
    assert_eq!(
        super::walk::OWN_NAME_PREFIX,
        crate::backend::statements::NAME_PREFIX
    );
}

#[test]
fn other_databases_are_filtered_or_refused() {
    let out = rewritten("SELECT datname FROM pg_database");
    assert!(
        out.contains(
            "FROM pg_catalog.\"pg_database\" WHERE datname = pg_catalog.current_database()"
        ),
        "{out}"
    );
    let out = rewritten("SELECT * FROM pg_catalog.pg_stat_database d");
    assert!(out.contains("current_database()"), "{out}");
    refused("SELECT pg_database_size('globex')", "denied-function");
    refused("SELECT pg_stat_get_db_numbackends(1)", "denied-function");
}
