//! Error kinds shared by metrics and logs: every failure on a connection's path is classified with one
//! [`ErrorKind`], whose [`ErrorKind::as_label`] is both the metric label value and the `kind` log field, so a
//! counter and the log lines behind it use the same word. Labels are a small fixed set (never a user, tenant,
//! SQL text or secret id); the ones below are the values `pgveil_auth_total{result}` and
//! `pgveil_backend_errors_total{kind}` have always had.

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
        ];
        let labels: Vec<_> = all.iter().map(|k| k.as_label()).collect();
        assert_eq!(
            labels,
            ["refused", "gone", "secret", "incomplete", "connect"]
        );
    }
}
