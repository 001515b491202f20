//! Renders a [`Report`]: a human-readable listing (one header line per finding, then what is wrong and the
//! fix) or a stable JSON document (`--json`, format 1: keys are only ever added).

use std::fmt::Write as _;

use serde_json::json;

use super::{Report, Severity};

/// Format version of the JSON document.
pub const JSON_FORMAT: u32 = 1;

const SEVERITIES: [Severity; 4] = [
    Severity::High,
    Severity::Medium,
    Severity::Low,
    Severity::Info,
];

fn summary(report: &Report) -> String {
    SEVERITIES
        .iter()
        .map(|s| format!("{} {}", report.count(*s), s.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The JSON document: `{"format", "tenants", "summary": {"high", "medium", "low", "info"}, "has_high",
/// "findings": [{"severity", "code", "tenant" (null: config-wide), "object", "message", "fix"}]}`.
pub fn json(report: &Report) -> String {
    let mut counts = serde_json::Map::new();
    for s in SEVERITIES {
        counts.insert(s.name().to_owned(), json!(report.count(s)));
    }
    let doc = json!({
        "format": JSON_FORMAT,
        "tenants": report.tenants,
        "summary": counts,
        "has_high": report.has_high(),
        "findings": report.findings,
    });
    // A serde_json::Value always serializes.
    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
}

/// The human-readable listing.
pub fn table(report: &Report) -> String {
    let names: Vec<&str> = report.tenants.iter().map(|t| t.as_str()).collect();
    let mut out = format!(
        "pgveil doctor: {} tenant(s) checked ({}): {}\n",
        names.len(),
        names.join(", "),
        summary(report)
    );
    if report.findings.is_empty() {
        out.push_str("no findings\n");
        return out;
    }
    let width =
        |f: &dyn Fn(&super::Finding) -> usize| report.findings.iter().map(f).max().unwrap_or(0);
    let tw = width(&|f| f.tenant.as_ref().map_or(1, |t| t.as_str().len())).max(6);
    let cw = width(&|f| f.code.len()).max(4);
    let _ = writeln!(
        out,
        "\n{:<8}  {:<tw$}  {:<cw$}  OBJECT",
        "SEVERITY", "TENANT", "CODE"
    );
    for f in &report.findings {
        let tenant = f.tenant.as_ref().map_or("-", |t| t.as_str());
        let _ = writeln!(
            out,
            "{:<8}  {:<tw$}  {:<cw$}  {}",
            f.severity.name(),
            tenant,
            f.code,
            f.object
        );
        let _ = writeln!(out, "          {}", f.message);
        let _ = writeln!(out, "          fix: {}", f.fix);
    }
    out
}
