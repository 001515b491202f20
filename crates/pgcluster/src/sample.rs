//! Sample schema and deterministic fake data of a payments/disputes merchant platform, for pgveil's demo and
//! tests (the example policy `policies/payments.toml` masks its PII columns).
//!
//! [`SCHEMA_SQL`] creates the tables; [`sample_data_sql`] returns INSERT statements for one tenant. The
//! data is fake but realistic-looking (names, e-mails, phone numbers, documentation-range IP addresses,
//! Luhn-valid card numbers) and deterministic: a small LCG seeded from the tenant name drives it, so the
//! same tenant always gets the same rows and different tenants get different ones. Every payer e-mail
//! contains the tenant (`alice.0001@acme-payer.example`), so tests can tell tenants apart.

#[cfg(test)]
mod tests;

use crate::quote_literal;

/// DDL creating `merchants`, `payers`, `payments`, `disputes` and `refunds`.
pub const SCHEMA_SQL: &str = include_str!("schema.sql");

/// Number of merchants every tenant gets.
const MERCHANTS: usize = 3;
/// Payments per payer.
const PAYMENTS_PER_PAYER: usize = 2;
/// Rows per INSERT statement.
const BATCH: usize = 500;
/// 2024-01-01 as days since 1970-01-01: payments happen during 2024.
const PAYMENTS_START_DAY: i64 = 19_723;
/// 1950-01-01 as days since 1970-01-01: the earliest date of birth.
const BIRTH_START_DAY: i64 = -7_305;

/// How many rows [`sample_data_sql`] inserts into each table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleCounts {
    /// Rows in `merchants`.
    pub merchants: usize,
    /// Rows in `payers` (the `rows` argument).
    pub payers: usize,
    /// Rows in `payments`.
    pub payments: usize,
    /// Rows in `disputes`.
    pub disputes: usize,
    /// Rows in `refunds`.
    pub refunds: usize,
}

impl SampleCounts {
    /// The counts for `sample_data_sql(_, rows)`.
    pub fn for_rows(rows: usize) -> SampleCounts {
        let payments = rows * PAYMENTS_PER_PAYER;
        SampleCounts {
            merchants: MERCHANTS,
            payers: rows,
            payments,
            disputes: (1..=payments).filter(|&i| is_disputed(i)).count(),
            refunds: (1..=payments).filter(|&i| is_refunded(i)).count(),
        }
    }
}

/// Whether payment number `i` (1-based) is disputed.
fn is_disputed(i: usize) -> bool {
    i % 10 == 3
}

/// Whether payment number `i` (1-based) is refunded (never one that is disputed).
fn is_refunded(i: usize) -> bool {
    i % 7 == 5 && !is_disputed(i)
}

/// The tenant name reduced to `[a-z0-9-]`, as used in e-mail domains (`"Acme Corp"` -> `"acme-corp"`).
pub fn tenant_slug(tenant: &str) -> String {
    let mut slug = String::new();
    for c in tenant.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        "tenant".to_owned()
    } else {
        slug.to_owned()
    }
}

/// Deterministic INSERT statements (in one transaction) filling the [`SCHEMA_SQL`] tables for `tenant`:
/// 3 merchants, `rows` payers, 2 payments per payer, and disputes and refunds on some payments
/// ([`SampleCounts::for_rows`] gives the exact counts). Identity columns are restarted after the
/// explicit ids, so later inserts without an id work.
pub fn sample_data_sql(tenant: &str, rows: usize) -> String {
    let mut rng = Lcg::seeded(tenant);
    let slug = tenant_slug(tenant);
    let counts = SampleCounts::for_rows(rows);
    let mut out = String::from("BEGIN;\n");

    // Merchants: the tenant's brands.
    let brand = title_case(&slug);
    let merchants: Vec<String> = MERCHANT_KINDS
        .iter()
        .enumerate()
        .map(|(i, (suffix, country, category, _))| {
            let created = timestamp(
                (PAYMENTS_START_DAY - 700 + rng.below(300) as i64) * 86_400
                    + rng.below(86_400) as i64,
            );
            format!(
                "({}, {}, '{country}', '{category}', '{created}')",
                i + 1,
                quote_literal(&format!("{brand} {suffix}")),
            )
        })
        .collect();
    push_inserts(
        &mut out,
        "merchants (id, name, country, category, created_at)",
        &merchants,
    );

    // Payers.
    let mut pans = Vec::with_capacity(rows);
    let payers: Vec<String> = (1..=rows)
        .map(|i| {
            let first = pick(&mut rng, FIRST_NAMES);
            let last = pick(&mut rng, LAST_NAMES);
            let email = format!("{}.{i:04}@{slug}-payer.example", first.to_lowercase());
            let phone = format!(
                "+1-{}-555-01{:02}",
                pick(&mut rng, AREA_CODES),
                rng.below(100)
            );
            let birth = date(BIRTH_START_DAY + rng.below(20_000) as i64);
            let ip = format!("{}.{}", pick(&mut rng, IP_PREFIXES), 1 + rng.below(254));
            let address = format!(
                "{} {}, {}",
                1 + rng.below(9_999),
                pick(&mut rng, STREETS),
                pick(&mut rng, CITIES)
            );
            let pan = card_pan(&mut rng);
            let row = format!(
                "({i}, {}, '{email}', '{phone}', '{birth}', '{ip}', {}, '{pan}')",
                quote_literal(&format!("{first} {last}")),
                quote_literal(&address),
            );
            pans.push(pan);
            row
        })
        .collect();
    push_inserts(
        &mut out,
        "payers (id, full_name, email, phone, date_of_birth, ip_address, address, card_pan)",
        &payers,
    );

    // Payments, spread over 2024 in id order, with their disputes and refunds.
    let (mut payments, mut disputes, mut refunds) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=counts.payments {
        let payer = 1 + rng.below(rows as u64) as usize;
        let merchant = 1 + rng.below(MERCHANTS as u64) as usize;
        let currency = MERCHANT_KINDS[merchant - 1].3;
        let cents = 500 + rng.below(49_500);
        let day = PAYMENTS_START_DAY + (i as i64 - 1) * 365 / counts.payments as i64;
        let at = day * 86_400 + rng.below(86_400) as i64;
        let status = if is_disputed(i) {
            "disputed"
        } else if is_refunded(i) {
            "refunded"
        } else {
            match rng.below(10) {
                0 => "failed",
                1 => "authorized",
                _ => "captured",
            }
        };
        payments.push(format!(
            "({i}, {payer}, {merchant}, {}, '{currency}', '{}', '{status}', '{}')",
            money(cents),
            timestamp(at),
            pans[payer - 1],
        ));
        if is_disputed(i) {
            let opened = at + (3 + rng.below(38) as i64) * 86_400 + rng.below(86_400) as i64;
            disputes.push(format!(
                "({}, {i}, '{}', {}, '{}', '{}')",
                disputes.len() + 1,
                pick(&mut rng, DISPUTE_REASONS),
                money(cents),
                pick(&mut rng, DISPUTE_STATUSES),
                timestamp(opened),
            ));
        }
        if is_refunded(i) {
            let refunded = (cents * (50 + rng.below(51)) / 100).max(1);
            let created = at + (1 + rng.below(20) as i64) * 86_400 + rng.below(86_400) as i64;
            refunds.push(format!(
                "({}, {i}, {}, '{}', '{}')",
                refunds.len() + 1,
                money(refunded),
                pick(&mut rng, REFUND_REASONS),
                timestamp(created),
            ));
        }
    }
    push_inserts(
        &mut out,
        "payments (id, payer_id, merchant_id, amount, currency, created_at, status, card_pan)",
        &payments,
    );
    push_inserts(
        &mut out,
        "disputes (id, payment_id, reason, amount, status, opened_at)",
        &disputes,
    );
    push_inserts(
        &mut out,
        "refunds (id, payment_id, amount, reason, created_at)",
        &refunds,
    );

    for (table, n) in [
        ("merchants", counts.merchants),
        ("payers", counts.payers),
        ("payments", counts.payments),
        ("disputes", counts.disputes),
        ("refunds", counts.refunds),
    ] {
        out.push_str(&format!(
            "ALTER TABLE {table} ALTER COLUMN id RESTART WITH {};\n",
            n + 1
        ));
    }
    out.push_str("COMMIT;\n");
    out
}

/// Append `INSERT INTO <target> VALUES ...;` statements of at most [`BATCH`] rows each.
fn push_inserts(out: &mut String, target: &str, rows: &[String]) {
    for chunk in rows.chunks(BATCH) {
        out.push_str(&format!("INSERT INTO {target} VALUES\n  "));
        out.push_str(&chunk.join(",\n  "));
        out.push_str(";\n");
    }
}

/// A 64-bit linear congruential generator (Knuth's MMIX constants); plenty for fake data.
struct Lcg(u64);

impl Lcg {
    /// Seeded with the FNV-1a hash of `tenant`.
    fn seeded(tenant: &str) -> Lcg {
        let hash = tenant.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        Lcg(hash)
    }

    /// The next 31 well-mixed bits.
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random element of a non-empty list.
fn pick<'a>(rng: &mut Lcg, items: &[&'a str]) -> &'a str {
    items[rng.below(items.len() as u64) as usize]
}

/// A 16-digit Luhn-valid card number with a Visa or Mastercard prefix.
fn card_pan(rng: &mut Lcg) -> String {
    let mut digits: Vec<u32> = match rng.below(2) {
        0 => vec![4],
        _ => vec![5, 1 + rng.below(5) as u32],
    };
    while digits.len() < 15 {
        digits.push(rng.below(10) as u32);
    }
    digits.push(luhn_check_digit(&digits));
    digits
        .iter()
        .map(|d| char::from_digit(*d, 10).unwrap_or('0'))
        .collect()
}

/// The Luhn check digit to append to `payload`.
fn luhn_check_digit(payload: &[u32]) -> u32 {
    let sum: u32 = payload
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 0 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

/// `cents` as a numeric literal with two decimals.
fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// `"acme-corp"` -> `"Acme Corp"`.
fn title_case(slug: &str) -> String {
    slug.split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Days since 1970-01-01 as `YYYY-MM-DD` (proleptic Gregorian; Howard Hinnant's `civil_from_days`).
fn date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Seconds since the epoch as a UTC timestamptz literal body.
fn timestamp(secs: i64) -> String {
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    format!(
        "{} {:02}:{:02}:{:02}+00",
        date(days),
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

/// Per merchant: name suffix, country, category, currency.
const MERCHANT_KINDS: [(&str, &str, &str, &str); MERCHANTS] = [
    ("Online", "US", "ecommerce", "USD"),
    ("Stores", "GB", "retail", "GBP"),
    ("Travel", "DE", "travel", "EUR"),
];

/// Payer first names (ASCII; also the e-mail local part).
const FIRST_NAMES: &[&str] = &[
    "Alice", "Bob", "Carol", "David", "Emma", "Farid", "Grace", "Hiro", "Ines", "James", "Kofi",
    "Lena", "Mateo", "Nadia", "Oliver", "Priya", "Quinn", "Rosa", "Samir", "Tara", "Umar", "Vera",
    "Wei", "Yara",
];

/// Payer last names (one with an apostrophe, to exercise quoting).
const LAST_NAMES: &[&str] = &[
    "Anderson", "Becker", "Chen", "Dubois", "Evans", "Fischer", "Garcia", "Haddad", "Ivanova",
    "Johnson", "Kowalski", "Lopez", "Murphy", "Nakamura", "O'Connor", "Patel", "Rossi", "Silva",
    "Thompson", "Weber",
];

/// Street names.
const STREETS: &[&str] = &[
    "Maple Street",
    "Oak Avenue",
    "Harbor Road",
    "Elm Court",
    "Station Road",
    "Mill Lane",
    "Park Drive",
    "King Street",
    "Cedar Way",
    "Lakeview Boulevard",
];

/// Cities with postal codes.
const CITIES: &[&str] = &[
    "Springfield, IL 62704",
    "Portland, OR 97205",
    "Austin, TX 78701",
    "London SW1A 1AA",
    "Manchester M1 1AE",
    "Berlin 10115",
    "Munich 80331",
    "Dublin D02 X285",
    "Toronto, ON M5H 2N2",
    "Denver, CO 80202",
];

/// US area codes; combined with the fictional 555-0100..555-0199 numbers.
const AREA_CODES: &[&str] = &["212", "312", "415", "512", "617", "720", "206", "305"];

/// Documentation address ranges (RFC 5737), so no real host is ever named.
const IP_PREFIXES: &[&str] = &["192.0.2", "198.51.100", "203.0.113"];

/// Card network dispute reasons.
const DISPUTE_REASONS: &[&str] = &[
    "fraudulent",
    "product_not_received",
    "duplicate",
    "subscription_canceled",
    "product_unacceptable",
    "credit_not_processed",
];

/// Dispute states.
const DISPUTE_STATUSES: &[&str] = &["open", "under_review", "won", "lost"];

/// Refund reasons.
const REFUND_REASONS: &[&str] = &["requested_by_customer", "duplicate", "fraudulent"];
