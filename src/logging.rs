//! Log filtering shared by the binary and the tests.

use tracing_subscriber::EnvFilter;

/// Targets whose trace-level output can include raw HTTP bodies (the AWS SDK logs responses, i.e. secret
/// values, at trace level). They are capped at `debug` whatever the operator asks for.
const CAPPED: &[&str] = &[
    "aws_smithy_runtime",
    "aws_smithy_http_client",
    "aws_sdk_secretsmanager",
    "hyper",
    "h2",
];

/// An env-filter from `spec` (e.g. the `PGVEIL_LOG` variable) with the targets above capped at `debug`.
pub fn filter(spec: &str) -> EnvFilter {
    let mut f = EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info"));
    let lowered = spec.to_ascii_lowercase();
    let global_trace = lowered.split(',').any(|d| d.trim() == "trace");
    for target in CAPPED {
        // Keep the operator's own, stricter choice for a capped target; otherwise cap it.
        if (global_trace
            || !lowered.contains(target)
            || lowered.contains(&format!("{target}=trace")))
            && let Ok(d) = format!("{target}=debug").parse()
        {
            f = f.add_directive(d);
        }
    }
    f
}
