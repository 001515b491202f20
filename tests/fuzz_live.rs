//! Differential fuzzing against a live server (issue 16): pgveil's decision on a statement held to what
//! PostgreSQL itself says about the same text. Every input of the `rewrite_check` and `sqlscan` corpora, then
//! seeded mutations of them (tests/mutation, the mutator of tests/fuzz.rs; `PGVEIL_FUZZ_LIVE_ITERS`, default
//! 40000, 17-35 s on a busy 2-core box; `PGVEIL_FUZZ_SEED`), is prepared on the demo tenant's database three
//! ways: (a) directly on PostgreSQL as the tenant's backend user, (b) through pgveil with the example policy as
//! the unrestricted `admin`, (c) as the masked `analyst`. Preparing is Parse + Describe + Sync, nothing is ever
//! executed (mutated SQL holds DROP and DELETE). Both pool modes: the corpus and the mutations through a
//! session-mode pgveil, then again through a transaction-mode one, where Parse, Describe and Close are
//! translated against each transaction's backend (`PGVEIL_FUZZ_LIVE_TXN_ITERS`, default 10000). Properties:
//! 1. transparency: when (a) describes, (b) describes the same parameter types and columns (name, type, type
//!    modifier, table and column number); when (a) fails, (b) fails with the same SQLSTATE or with one of
//!    pgveil's refusal SQLSTATEs (42501, 0A000, 42601, 42P01; such refusals are listed at the end);
//! 2. masking keeps the statement's shape: when (c) describes, (a) described the same column names, as many
//!    parameters, and the same types wherever the column is a plain column of a tenant table the policy does
//!    not classify (masks may change the type of what they mask and of expressions built from it);
//! 3. neither (b) nor (c) describes what PostgreSQL refuses as a syntax error (42601).
//!
//! A session ended by an input (FATAL, closed socket, no answer within 10 s) fails the input and is reopened.
//! Text goes through tokio-postgres, so an input is sent as a C client would send it: up to its first NUL (a
//! Parse text ends there) and with invalid UTF-8 replaced (U+FFFD); text the server cannot take as one Parse
//! (several statements, empty text) is compared like any other. A failing input is printed with the three
//! outcomes and saved (as sent) under target/fuzz-failures/.
// Test code: a failed unwrap is a failed test; std locks are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod mutation;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use pgveil::ids::{RoleName, TenantId};
use pgveil::policy::file::Policy;
use rand::RngExt;
use support::Fixture;
use support::masking::{masking_proxy_in, write_policy_dir};
use tokio_postgres::{Client, Statement};

use mutation::{dictionary, env_u64, inputs, mutate, save_failure, seeded};

fn main() -> std::process::ExitCode {
    support::main_with(&[
        ("corpus_prepares_as_on_postgres", corpus),
        ("mutations_prepare_as_on_postgres", mutations),
        (
            "corpus_prepares_as_on_postgres_in_transaction_mode",
            corpus_txn,
        ),
        (
            "mutations_prepare_as_on_postgres_in_transaction_mode",
            mutations_txn,
        ),
    ])
}

/// The demo tenant: its database has the schema the example policy describes.
const TENANT: &str = "acme";
/// Transaction mode refuses every role statements on pgveil's own server-side prepared statements and on
/// pg_prepared_statements (README "Pool modes"): accepted as a refusal where the text visibly aims at them
/// (`pgveil_ps_…` written plainly, quoted or with Unicode escapes such as `\005f`, or
/// `pg_prepared_statements`); the same refusal of any other text fails property 1.
fn reserved_refusal(sql: &str, admin: &Outcome) -> bool {
    let Outcome::Error { code, message } = admin else {
        return false;
    };
    let text = sql.to_lowercase();
    code == "42501"
        && message.contains("not accessible in transaction pooling mode")
        && ["veil", "prepared_statements", "005f"]
            .iter()
            .any(|n| text.contains(n))
}

/// SQLSTATEs of pgveil's own statement refusals (fuzz/targets.rs `rewrite_check`).
const REFUSALS: [&str; 4] = ["42501", "0A000", "42601", "42P01"];
/// The corpora whose inputs are SQL.
const CORPORA: [&str; 2] = ["rewrite_check", "sqlscan"];
/// Longest wait for one Parse/Describe before the session counts as broken.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Failures printed in full (all are saved).
const PRINTED: usize = 40;
/// Hand-written seeds (fuzz/corpus/rewrite_check/live-*) PostgreSQL refuses, with the SQLSTATE; every other
/// `live-*` seed must be described by PostgreSQL, so the seeds keep meaning what they say.
const LIVE_REFUSED: [(&str, &str); 2] = [
    ("live-syntax-error", "42601"),
    ("live-two-statements", "42601"),
];

/// One output column as RowDescription gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Column {
    name: String,
    oid: u32,
    ty: String,
    typmod: i32,
    /// Table OID and column number when the column is a plain table column.
    origin: Option<(u32, i16)>,
}

/// What preparing one text gave.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Parameter type OIDs and the columns.
    Described {
        params: Vec<u32>,
        columns: Vec<Column>,
    },
    /// An ERROR; the session stays usable.
    Error { code: String, message: String },
    /// The session ended or did not answer (reopened since).
    Broken(String),
}

impl Outcome {
    fn code(&self) -> Option<&str> {
        match self {
            Outcome::Error { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Described { params, columns } => {
                write!(f, "described, params {params:?}, columns [")?;
                for (i, c) in columns.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{} {}({})", c.name, c.ty, c.typmod)?;
                    if let Some((t, n)) = c.origin {
                        write!(f, " of {t}.{n}")?;
                    }
                }
                write!(f, "]")
            }
            Outcome::Error { code, message } => write!(f, "ERROR {code}: {message}"),
            Outcome::Broken(why) => write!(f, "session ended: {why}"),
        }
    }
}

fn described(st: &Statement) -> Outcome {
    Outcome::Described {
        params: st.params().iter().map(|t| t.oid()).collect(),
        columns: st
            .columns()
            .iter()
            .map(|c| Column {
                name: c.name().to_owned(),
                oid: c.type_().oid(),
                ty: c.type_().name().to_owned(),
                typmod: c.type_modifier(),
                origin: c.table_oid().zip(c.column_id()).filter(|(t, _)| *t != 0),
            })
            .collect(),
    }
}

/// Which way a session reaches the tenant database.
#[derive(Debug, Clone, Copy)]
enum Via {
    Direct,
    Admin,
    Analyst,
}

/// One session, reopened when an input ends it.
struct Session<'f> {
    fx: &'f Fixture,
    proxy: SocketAddr,
    via: Via,
    client: Client,
    reopened: usize,
}

impl<'f> Session<'f> {
    async fn open(fx: &'f Fixture, proxy: SocketAddr, via: Via) -> Result<Session<'f>> {
        let client = connect(fx, proxy, via).await?;
        Ok(Session {
            fx,
            proxy,
            via,
            client,
            reopened: 0,
        })
    }

    /// Parse + Describe + Sync of `sql` (tokio-postgres also looks up types it does not know).
    async fn prepare(&mut self, sql: &str) -> Result<Outcome> {
        let outcome = if self.client.is_closed() {
            Outcome::Broken("the session was already closed (by the input before?)".into())
        } else {
            match tokio::time::timeout(TIMEOUT, self.client.prepare(sql)).await {
                Ok(Ok(st)) => described(&st),
                Ok(Err(e)) => match e.as_db_error() {
                    Some(d) if d.severity() == "ERROR" && !self.client.is_closed() => {
                        Outcome::Error {
                            code: d.code().code().to_owned(),
                            message: d.message().to_owned(),
                        }
                    }
                    Some(d) => Outcome::Broken(format!(
                        "{} {}: {}",
                        d.severity(),
                        d.code().code(),
                        d.message()
                    )),
                    None => Outcome::Broken(e.to_string()),
                },
                Err(_) => Outcome::Broken(format!("no answer within {TIMEOUT:?}")),
            }
        };
        if matches!(outcome, Outcome::Broken(_)) {
            self.client = connect(self.fx, self.proxy, self.via).await?;
            self.reopened += 1;
        }
        Ok(outcome)
    }
}

async fn connect(fx: &Fixture, proxy: SocketAddr, via: Via) -> Result<Client> {
    match via {
        Via::Direct => fx.direct(TENANT).await,
        Via::Admin => fx.connect_to(proxy, TENANT, "admin").await,
        Via::Analyst => fx.connect_to(proxy, TENANT, "analyst").await,
    }
}

/// The three outcomes of one input.
struct Trio {
    direct: Outcome,
    admin: Outcome,
    analyst: Outcome,
}

/// Plain columns of the tenant's own tables (table OID, column number) and whether the example policy
/// classifies them (masked for `analyst`, whose `raw` is empty).
async fn classified_columns(client: &Client) -> Result<HashMap<(u32, i16), bool>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("policies/payments.toml");
    let policy = Policy::from_texts(&[(path.clone(), std::fs::read_to_string(&path)?)])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(eff) = policy.effective(&TenantId::new(TENANT), &RoleName::new("analyst")) else {
        bail!("the example policy has no analyst");
    };
    let rows = client
        .query(
            "SELECT c.oid, a.attnum, n.nspname::text, c.relname::text, a.attname::text \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p') \
             AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')",
            &[],
        )
        .await?;
    let mut out = HashMap::new();
    for r in rows {
        let (schema, table, column): (String, String, String) = (r.get(2), r.get(3), r.get(4));
        let class = eff.classify(&schema, &table, &column);
        out.insert((r.get::<_, u32>(0), r.get::<_, i16>(1)), class.is_some());
    }
    ensure!(
        out.values().filter(|c| **c).count() >= 8,
        "the demo schema's classified columns were not found"
    );
    Ok(out)
}

/// What a run saw, for the summary.
#[derive(Default)]
struct Stats {
    inputs: usize,
    truncated_at_nul: usize,
    lossy_utf8: usize,
    /// PostgreSQL's outcomes: "described" or the SQLSTATE.
    direct: BTreeMap<String, usize>,
    /// The masked role's outcomes.
    analyst: BTreeMap<String, usize>,
    /// Inputs whose masked description changed the type of a classified column.
    masked_types: usize,
    /// Inputs that failed on PostgreSQL and that pgveil refused for `admin` with another SQLSTATE: (input,
    /// PostgreSQL's outcome, pgveil's).
    admin_refusals: Vec<(String, Outcome, Outcome)>,
    /// Transaction mode: inputs refused for `admin` because they name pgveil's own prepared statements or
    /// pg_prepared_statements (README "Pool modes"), whatever PostgreSQL answered.
    reserved: usize,
    failures: usize,
}

fn label(o: &Outcome) -> String {
    match o {
        Outcome::Described { .. } => "described".into(),
        Outcome::Error { code, .. } => code.clone(),
        Outcome::Broken(_) => "session ended".into(),
    }
}

/// One differential run over the three sessions.
struct Run<'f> {
    /// Through a transaction-mode pgveil.
    txn: bool,
    direct: Session<'f>,
    admin: Session<'f>,
    analyst: Session<'f>,
    classified: HashMap<(u32, i16), bool>,
    stats: Stats,
    started: Instant,
}

impl<'f> Run<'f> {
    async fn start(fx: &'f Fixture, proxy: SocketAddr, txn: bool) -> Result<Run<'f>> {
        let direct = Session::open(fx, proxy, Via::Direct).await?;
        let classified = classified_columns(&direct.client).await?;
        Ok(Run {
            txn,
            direct,
            admin: Session::open(fx, proxy, Via::Admin).await?,
            analyst: Session::open(fx, proxy, Via::Analyst).await?,
            classified,
            stats: Stats::default(),
            started: Instant::now(),
        })
    }

    /// The text a client sends for these bytes: up to the first NUL, invalid UTF-8 replaced.
    fn as_sent(&mut self, data: &[u8]) -> String {
        let end = data.iter().position(|&b| b == 0);
        if end.is_some() {
            self.stats.truncated_at_nul += 1;
        }
        let text = &data[..end.unwrap_or(data.len())];
        let sql = String::from_utf8_lossy(text);
        if matches!(sql, std::borrow::Cow::Owned(_)) {
            self.stats.lossy_utf8 += 1;
        }
        sql.into_owned()
    }

    /// Prepares one input three ways and holds the outcomes to the properties; a failure is printed and
    /// saved, and counted for the end of the run.
    async fn check(&mut self, what: &str, data: &[u8]) -> Result<Trio> {
        let sql = self.as_sent(data);
        let (direct, admin, analyst) = tokio::join!(
            self.direct.prepare(&sql),
            self.admin.prepare(&sql),
            self.analyst.prepare(&sql)
        );
        let trio = Trio {
            direct: direct?,
            admin: admin?,
            analyst: analyst?,
        };
        self.stats.inputs += 1;
        *self.stats.direct.entry(label(&trio.direct)).or_default() += 1;
        *self.stats.analyst.entry(label(&trio.analyst)).or_default() += 1;
        if let (Outcome::Error { code: x, .. }, Outcome::Error { code: y, .. }) =
            (&trio.direct, &trio.admin)
            && x != y
            && REFUSALS.contains(&y.as_str())
        {
            let refusal = (sql.clone(), trio.direct.clone(), trio.admin.clone());
            self.stats.admin_refusals.push(refusal);
        }
        let violations = self.judge(&sql, &trio);
        if !violations.is_empty() {
            self.stats.failures += 1;
            let file = save_failure("fuzz_live", sql.as_bytes());
            if self.stats.failures <= PRINTED {
                eprintln!(
                    "fuzz_live: {what} fails, saved as {}\n  input:    {sql:?}\n  direct:   {}\n  \
                     admin:    {}\n  analyst:  {}\n  {}",
                    file.display(),
                    trio.direct,
                    trio.admin,
                    trio.analyst,
                    violations.join("\n  ")
                );
            }
        }
        Ok(trio)
    }

    /// The properties (module comment) broken by one input's outcomes.
    fn judge(&mut self, sql: &str, t: &Trio) -> Vec<String> {
        use Outcome::{Broken, Described, Error};
        let mut v = Vec::new();
        if let Broken(e) = &t.direct {
            v.push(format!("PostgreSQL itself ended the session: {e}"));
        }
        let reserved = self.txn && reserved_refusal(sql, &t.admin);
        if reserved {
            self.stats.reserved += 1;
        }
        match (&t.direct, &t.admin) {
            _ if reserved => {}
            (Described { .. }, Described { .. }) if t.direct == t.admin => {}
            (Described { .. }, Described { .. }) => {
                v.push("1: admin's description differs from PostgreSQL's".into())
            }
            (Described { .. }, _) => {
                v.push("1: admin did not get what PostgreSQL describes".into())
            }
            (Error { code: x, .. }, Error { code: y, .. })
                if x == y || REFUSALS.contains(&y.as_str()) => {}
            (Error { code, .. }, Described { .. }) if code == "42601" => {
                v.push("3: admin got a description of a syntax error".into())
            }
            (Error { code, .. }, _) => v.push(format!("1: admin did not get PostgreSQL's {code}")),
            (Broken(_), _) => {}
        }
        match (&t.direct, &t.analyst) {
            (Described { .. }, Described { .. }) => self.same_shape(&t.direct, &t.analyst, &mut v),
            (Error { code, .. }, Described { .. }) if code == "42601" => {
                v.push("3: analyst got a description of a syntax error".into())
            }
            (Error { code, .. }, Described { .. }) => v.push(format!(
                "2: analyst got a description of what PostgreSQL refuses with {code}"
            )),
            (Described { .. } | Error { .. }, Broken(_)) => {
                v.push("2: the analyst's session ended".into())
            }
            _ => {}
        }
        v
    }

    /// Property 2 for two descriptions: PostgreSQL's (`a`) and the masked role's (`c`).
    fn same_shape(&mut self, a: &Outcome, c: &Outcome, v: &mut Vec<String>) {
        let (
            Outcome::Described {
                params: ap,
                columns: ac,
            },
            Outcome::Described {
                params: cp,
                columns: cc,
            },
        ) = (a, c)
        else {
            return;
        };
        let names = |cols: &[Column]| cols.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        if names(ac) != names(cc) {
            v.push("2: the masked columns' names or count differ from PostgreSQL's".into());
            return;
        }
        if ap.len() != cp.len() {
            v.push(format!(
                "2: the masked statement takes {} parameters, PostgreSQL's {}",
                cp.len(),
                ap.len()
            ));
        }
        let mut masked_types = false;
        for (x, y) in ac.iter().zip(cc) {
            if (x.oid, x.typmod) == (y.oid, y.typmod) {
                continue;
            }
            match x.origin.and_then(|o| self.classified.get(&o)) {
                Some(false) => v.push(format!(
                    "2: the type of unclassified column {} changed from {}({}) to {}({})",
                    x.name, x.ty, x.typmod, y.ty, y.typmod
                )),
                Some(true) => masked_types = true,
                None => {}
            }
        }
        self.stats.masked_types += usize::from(masked_types);
    }

    /// Whether PostgreSQL described a classified table column and the masked role got a description.
    fn shows_masked(&self, t: &Trio) -> bool {
        let Outcome::Described { columns, .. } = &t.direct else {
            return false;
        };
        matches!(t.analyst, Outcome::Described { .. })
            && columns.iter().any(|c| {
                c.origin
                    .and_then(|o| self.classified.get(&o))
                    .copied()
                    .unwrap_or(false)
            })
    }

    /// Prints the summary; fails when any input failed.
    fn finish(self, name: &str) -> Result<()> {
        let s = &self.stats;
        let elapsed = self.started.elapsed();
        eprintln!(
            "fuzz_live {name}: {} inputs in {:.1} s ({} sent up to a NUL, {} with invalid UTF-8 replaced); \
             sessions reopened: direct {}, admin {}, analyst {}\n  PostgreSQL: {:?}\n  analyst:    {:?}\n  \
             analyst descriptions with a masked column's type changed: {}",
            s.inputs,
            elapsed.as_secs_f64(),
            s.truncated_at_nul,
            s.lossy_utf8,
            self.direct.reopened,
            self.admin.reopened,
            self.analyst.reopened,
            s.direct,
            s.analyst,
            s.masked_types,
        );
        eprintln!(
            "  admin refused with another SQLSTATE than PostgreSQL's: {} (the first {PRINTED} listed)",
            s.admin_refusals.len()
        );
        for (sql, a, b) in s.admin_refusals.iter().take(PRINTED) {
            eprintln!("    {sql:?}\n      direct: {a}\n      admin:  {b}");
        }
        if self.txn {
            eprintln!(
                "  admin refused for naming pgveil's prepared statements or pg_prepared_statements: {}",
                s.reserved
            );
        }
        if s.failures > 0 {
            bail!(
                "{} of {} inputs broke a property (the first {PRINTED} printed above; all saved under \
                 target/fuzz-failures/)",
                s.failures,
                s.inputs
            );
        }
        Ok(())
    }
}

fn fuzz_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every input of the SQL corpora (file name, bytes).
fn corpus_inputs() -> Result<Vec<(String, Vec<u8>)>> {
    let mut all = Vec::new();
    for name in CORPORA {
        let found = inputs(&fuzz_dir().join("corpus").join(name));
        ensure!(!found.is_empty(), "fuzz/corpus/{name} has no inputs");
        for (path, data) in found {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            all.push((format!("{name}/{file}"), data));
        }
    }
    Ok(all)
}

/// Every corpus input; the hand-written `live-*` seeds must also get from PostgreSQL what they expect, and at
/// least one must reach a masked column through the masked role.
fn corpus(fx: &Fixture) -> Result<()> {
    corpus_in(fx, false)
}

/// [`corpus`] through pgveil in transaction mode (Parse, Describe and Close translated against each
/// transaction's backend).
fn corpus_txn(fx: &Fixture) -> Result<()> {
    corpus_in(fx, true)
}

fn corpus_in(fx: &Fixture, txn: bool) -> Result<()> {
    let seeds = corpus_inputs()?;
    let dir = write_policy_dir(fx, &format!("policies-fuzz-corpus-{txn}"))?;
    let proxy = masking_proxy_in(fx, dir, txn)?;
    fx.block_on(async {
        let mut run = Run::start(fx, proxy.addr, txn).await?;
        let mut problems = Vec::new();
        let (mut live, mut masked) = (0, false);
        for (name, data) in &seeds {
            let trio = run.check(name, data).await?;
            let Some(seed) = name
                .strip_prefix("rewrite_check/")
                .filter(|n| n.starts_with("live-"))
            else {
                continue;
            };
            live += 1;
            masked |= run.shows_masked(&trio);
            let expected = LIVE_REFUSED
                .iter()
                .find(|(n, _)| *n == seed)
                .map(|(_, c)| *c);
            let ok = match expected {
                Some(code) => trio.direct.code() == Some(code),
                None => matches!(trio.direct, Outcome::Described { .. }),
            };
            if !ok {
                problems.push(format!("{seed}: PostgreSQL gave {}", trio.direct));
            }
        }
        run.finish(if txn {
            "corpus, transaction mode"
        } else {
            "corpus"
        })?;
        ensure!(
            live >= 10,
            "only {live} live-* seeds in fuzz/corpus/rewrite_check"
        );
        ensure!(masked, "no live-* seed reached a masked column as analyst");
        ensure!(problems.is_empty(), "live-* seeds: {problems:#?}");
        Ok(())
    })
}

/// Seeded mutations of the corpus inputs with both corpora's dictionaries.
fn mutations(fx: &Fixture) -> Result<()> {
    mutations_in(fx, false, env_u64("PGVEIL_FUZZ_LIVE_ITERS", 40000))
}

/// [`mutations`] through pgveil in transaction mode (`PGVEIL_FUZZ_LIVE_TXN_ITERS`, default 10000).
fn mutations_txn(fx: &Fixture) -> Result<()> {
    mutations_in(fx, true, env_u64("PGVEIL_FUZZ_LIVE_TXN_ITERS", 10000))
}

fn mutations_in(fx: &Fixture, txn: bool, iterations: u64) -> Result<()> {
    let corpus = corpus_inputs()?;
    let dict: Vec<Vec<u8>> = CORPORA
        .iter()
        .flat_map(|n| dictionary(&fuzz_dir().join("dict").join(format!("{n}.dict"))))
        .collect();
    let (seed, mut rng) = seeded(if txn { "fuzz_live_txn" } else { "fuzz_live" });
    let dir = write_policy_dir(fx, &format!("policies-fuzz-mutations-{txn}"))?;
    let proxy = masking_proxy_in(fx, dir, txn)?;
    fx.block_on(async {
        let mut run = Run::start(fx, proxy.addr, txn).await?;
        for i in 0..iterations {
            let a = &corpus[rng.random_range(0..corpus.len())].1;
            let b = &corpus[rng.random_range(0..corpus.len())].1;
            let data = mutate(&mut rng, a, b, &dict);
            run.check(&format!("mutation {i} (seed {seed:#x})"), &data)
                .await?;
        }
        run.finish(if txn {
            "mutations, transaction mode"
        } else {
            "mutations"
        })
    })
}
