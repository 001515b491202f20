//! Tests of the sample data: determinism, tenant separation, and loading into a real cluster.

use super::*;
use crate::{ClusterOptions, LocalCluster};

#[test]
fn deterministic_and_tenant_specific() {
    assert_eq!(sample_data_sql("acme", 50), sample_data_sql("acme", 50));
    assert_ne!(sample_data_sql("acme", 50), sample_data_sql("globex", 50));
    let sql = sample_data_sql("acme", 50);
    assert!(sql.contains(".0001@acme-payer.example'"), "{sql}");
    assert!(!sql.contains("globex"));
    assert!(sql.starts_with("BEGIN;\n") && sql.ends_with("COMMIT;\n"));
}

#[test]
fn slugs() {
    assert_eq!(tenant_slug("Acme Corp"), "acme-corp");
    assert_eq!(tenant_slug("  ACME__corp!! "), "acme-corp");
    assert_eq!(tenant_slug("'; drop table x"), "drop-table-x");
    assert_eq!(tenant_slug("***"), "tenant");
    assert_eq!(title_case("acme-corp"), "Acme Corp");
}

#[test]
fn card_numbers_are_luhn_valid() {
    let mut rng = Lcg::seeded("acme");
    for _ in 0..200 {
        let pan = card_pan(&mut rng);
        assert_eq!(pan.len(), 16);
        let sum: u32 = pan
            .chars()
            .rev()
            .enumerate()
            .map(|(i, c)| {
                let d = c.to_digit(10).expect("digit");
                if i % 2 == 1 {
                    if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
                } else {
                    d
                }
            })
            .sum();
        assert_eq!(sum % 10, 0, "{pan}");
    }
}

#[test]
fn dates() {
    assert_eq!(date(0), "1970-01-01");
    assert_eq!(date(PAYMENTS_START_DAY), "2024-01-01");
    assert_eq!(date(BIRTH_START_DAY), "1950-01-01");
    assert_eq!(date(19_782), "2024-02-29");
    assert_eq!(
        timestamp(PAYMENTS_START_DAY * 86_400 + 3_661),
        "2024-01-01 01:01:01+00"
    );
}

#[test]
fn counts() {
    let c = SampleCounts::for_rows(100);
    assert_eq!(
        (c.merchants, c.payers, c.payments, c.disputes),
        (3, 100, 200, 20)
    );
    assert_eq!(
        c.refunds,
        (1..=200).filter(|i| i % 7 == 5 && i % 10 != 3).count()
    );
    assert_eq!(SampleCounts::for_rows(0).payments, 0);
}

/// Count rows of every table, in `SampleCounts` field order.
fn table_counts(cluster: &LocalCluster, db: &str) -> String {
    cluster
        .psql(
            db,
            "select (select count(*) from merchants), (select count(*) from payers), \
             (select count(*) from payments), (select count(*) from disputes), (select count(*) from refunds)",
        )
        .expect("count rows")
        .trim()
        .to_owned()
}

#[test]
fn schema_and_data_load_into_a_cluster() {
    let cluster = LocalCluster::start(ClusterOptions::default()).expect("start cluster");
    let owner = cluster.superuser().to_owned();
    for (tenant, rows) in [("acme", 1_200), ("globex", 0), ("Initech Ltd", 7)] {
        let db = format!("{}_db", tenant_slug(tenant));
        cluster.create_database(&db, &owner).expect("create db");
        cluster.psql(&db, SCHEMA_SQL).expect("load schema");
        cluster
            .psql(&db, &sample_data_sql(tenant, rows))
            .expect("load data");
        let c = SampleCounts::for_rows(rows);
        let expected = format!(
            "{}|{}|{}|{}|{}",
            c.merchants, c.payers, c.payments, c.disputes, c.refunds
        );
        assert_eq!(table_counts(&cluster, &db), expected, "tenant {tenant}");
    }

    let emails = cluster
        .psql(
            "acme_db",
            "select count(*) from payers where email like '%@acme-payer.example'",
        )
        .expect("emails");
    assert_eq!(emails.trim(), "1200");
    let quoted = cluster
        .psql(
            "acme_db",
            "select count(*) > 0 from payers where full_name like '%O''Connor'",
        )
        .expect("apostrophes");
    assert_eq!(quoted.trim(), "t");
    let consistent = cluster
        .psql(
            "acme_db",
            "select bool_and(p.card_pan = y.card_pan) and bool_and(p.created_at >= '2024-01-01' \
             and p.created_at < '2025-01-01') from payments p join payers y on y.id = p.payer_id",
        )
        .expect("consistency");
    assert_eq!(consistent.trim(), "t");
    // Identity columns continue after the explicit ids.
    let next = cluster
        .psql(
            "acme_db",
            "insert into payers (full_name, email, phone, date_of_birth, ip_address, address, card_pan) \
             values ('New Payer', 'new@acme-payer.example', '+1-555-0100-0000', '1990-01-01', \
             '192.0.2.1', '1 Main St', '4111111111111111') returning id",
        )
        .expect("insert without id");
    assert_eq!(next.trim(), "1201");
}
