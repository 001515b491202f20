//! Error kinds shared by metrics and logs: every failure on a connection's path is classified with one
//! [`ErrorKind`], whose [`ErrorKind::as_label`] is both the metric label value and the `kind` log field, so a
//! counter and the log lines behind it use the same word. Labels are a small fixed set (never a user, tenant,
//! SQL text or secret id). The first five are the values `pgveil_auth_total{result}` and
//! `pgveil_backend_errors_total{kind}` have always had; the others classify the failures of pool checkouts
//! (`pgveil_pool_checkouts_total{kind}`), backend drains (`pgveil_backend_drains_total{kind}`) and catalog
//! loads (`pgveil_catalog_loads_total{kind}`), where the `result` label keeps its own values.

/// What kind of failure ended an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The client was refused (token, TLS requirement, startup packet, connection caps, policy): `refused`.
    Refused,
    /// The client went away before the exchange ended: `gone`.
    ClientGone,
    /// A tenant database's credentials could not be obtained from the secret store: `secret`.
    Secret,
    /// A tenant has no complete backend target (neither config nor secret names its host or database):
    /// `incomplete`.
    Incomplete,
    /// A tenant database could not be connected to, or refused pgveil's login: `connect`.
    Connect,
    /// A deadline passed: the checkout queue, `pool.reset_timeout`, a catalog load's limit: `timeout`.
    Timeout,
    /// A database sent bytes that break the protocol (a bad length, an empty ReadyForQuery, COPY in answer to
    /// an internal statement): `protocol`.
    Protocol,
    /// I/O with an established database connection failed, or the database closed it: `io`.
    Io,
    /// A database answered pgveil's clean-up (drain, `ROLLBACK`, `DISCARD ALL`) but did not end idle and
    /// error-free: `unclean`.
    Unclean,
    /// A database refused one of pgveil's own queries (the catalog queries): `query`.
    Query,
    /// The pools are closed (shutdown): `shutdown`.
    Shutdown,
    /// pgveil could not set up its own machinery (a pool deadpool would not build): `internal`.
    Internal,
}

impl ErrorKind {
    /// The metric label value and `kind` log field.
    pub fn as_label(self) -> &'static str {
        match self {
            ErrorKind::Refused => "refused",
            ErrorKind::ClientGone => "gone",
            ErrorKind::Secret => "secret",
            ErrorKind::Incomplete => "incomplete",
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Io => "io",
            ErrorKind::Unclean => "unclean",
            ErrorKind::Query => "query",
            ErrorKind::Shutdown => "shutdown",
            ErrorKind::Internal => "internal",
        }
    }
}

/// An error that knows its [`ErrorKind`].
pub trait Classified {
    /// Its kind.
    fn kind(&self) -> ErrorKind;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_documented_metric_values() {
        let all = [
            ErrorKind::Refused,
            ErrorKind::ClientGone,
            ErrorKind::Secret,
            ErrorKind::Incomplete,
            ErrorKind::Connect,
            ErrorKind::Timeout,
            ErrorKind::Protocol,
            ErrorKind::Io,
            ErrorKind::Unclean,
            ErrorKind::Query,
            ErrorKind::Shutdown,
            ErrorKind::Internal,
        ];
        let labels: Vec<_> = all.iter().map(|k| k.as_label()).collect();
        assert_eq!(
            labels,
            [
                "refused",
                "gone",
                "secret",
                "incomplete",
                "connect",
                "timeout",
                "protocol",
                "io",
                "unclean",
                "query",
                "shutdown",
                "internal"
            ]
        );
    }
}
