//! pgbench through pgveil (session pool mode): every query mode and the TPC-B script, 4 clients on 2 threads.

use anyhow::{Result, ensure};

use crate::support::Fixture;
use crate::{Target, client, run_ok};

/// The tenant whose database holds the pgbench tables (nothing else in this binary touches them).
const TENANT: &str = "clearco";
const CLIENTS: usize = 4;
const TXNS_PER_CLIENT: usize = 200;

/// Three statements sent in one pipeline per transaction; the history row lets the test count them.
const PIPELINE_SCRIPT: &str = "\\set aid random(1, 100000)
\\set delta random(-5000, 5000)
\\startpipeline
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :aid, :delta, CURRENT_TIMESTAMP);
END;
\\endpipeline
";

/// Initialises pgbench's tables directly, then runs `-M simple`, `-M extended`, `-M prepared` (simple-update
/// script), a `tpcb-like` run, a pipelined custom script, and a `-C` run (new connection per transaction) through
/// pgveil; each must process all its transactions without failures, and every writing transaction must have left
/// its row in `pgbench_history`.
pub fn all_query_modes(fx: &Fixture) -> Result<()> {
    let direct = Target::direct(fx, TENANT);
    run_ok(&mut client(
        &direct,
        "pgbench",
        ["-i", "-s", "1", "-q", &direct.conninfo],
    ))?;

    let proxy = Target::proxy(fx, TENANT, "admin", "sslmode=require");
    let total = CLIENTS * TXNS_PER_CLIENT;
    let runs = [
        ("simple", "simple-update"),
        ("extended", "simple-update"),
        ("prepared", "simple-update"),
        ("prepared", "tpcb-like"),
    ];
    for (mode, script) in runs {
        let (c, t) = (CLIENTS.to_string(), TXNS_PER_CLIENT.to_string());
        let args = [
            "-n",
            "-c",
            &c,
            "-j",
            "2",
            "-t",
            &t,
            "-M",
            mode,
            "-b",
            script,
            &proxy.conninfo,
        ];
        let out = run_ok(&mut client(&proxy, "pgbench", args))?;
        let what = format!("pgbench -M {mode} -b {script}");
        ensure!(
            out.contains(&format!("query mode: {mode}")),
            "{what}: unexpected report:\n{out}"
        );
        ensure!(
            out.contains(&format!(
                "number of transactions actually processed: {total}/{total}"
            )),
            "{what}: not all transactions processed:\n{out}"
        );
        // pgbench 15 always prints the failure count; older versions print nothing when there are none.
        ensure!(
            !out.contains("number of failed transactions")
                || out.contains("number of failed transactions: 0 "),
            "{what}: failures:\n{out}"
        );
    }

    // A custom script in pipeline mode (needs the extended protocol), then a new connection per transaction.
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("pipeline.sql");
    std::fs::write(&script, PIPELINE_SCRIPT)?;
    let script = script.display().to_string();
    let extra: [(&str, Vec<&str>, usize); 2] = [
        (
            "pipeline",
            vec![
                "-c", "4", "-j", "2", "-t", "200", "-M", "prepared", "-f", &script,
            ],
            total,
        ),
        (
            "-C",
            vec![
                "-C",
                "-c",
                "4",
                "-j",
                "2",
                "-t",
                "50",
                "-M",
                "extended",
                "-b",
                "select-only",
            ],
            200,
        ),
    ];
    for (what, mut args, n) in extra {
        args.insert(0, "-n");
        args.push(&proxy.conninfo);
        let out = run_ok(&mut client(&proxy, "pgbench", &args))?;
        ensure!(
            out.contains(&format!(
                "number of transactions actually processed: {n}/{n}"
            )),
            "pgbench {what}: not all transactions processed:\n{out}"
        );
        ensure!(
            !out.contains("number of failed transactions")
                || out.contains("number of failed transactions: 0 "),
            "pgbench {what}: failures:\n{out}"
        );
    }
    let history = run_ok(&mut client(
        &direct,
        "psql",
        [
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT count(*) FROM pgbench_history",
            &direct.conninfo,
        ],
    ))?;
    let want = total * (runs.len() + 1);
    ensure!(
        history.trim() == want.to_string(),
        "pgbench_history has {} rows, want {want}",
        history.trim()
    );
    Ok(())
}
