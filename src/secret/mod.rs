//! Secret store: where backend credentials (and, later, pgveil's own keys) come from at run time.
//!
//! Secret values are held in [`SecretString`] (its `Debug` prints `[REDACTED]`), never in plain `String`s, and
//! no error here ever carries a secret value.

mod file;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

pub use file::FileSecretStore;
pub use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::ids::SecretId;

/// A boxed future, so the store can be used as `dyn SecretStore`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Errors fetching or decoding a secret. Messages name the secret id, never its value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// No secret with this id.
    #[error("secret {0} not found")]
    NotFound(SecretId),
    /// The store could not be read or reached.
    #[error("secret store unavailable: {0}")]
    Unavailable(String),
    /// The secret exists but is not in the expected format.
    #[error("secret {id} is malformed: {reason}")]
    Malformed {
        /// Secret id.
        id: SecretId,
        /// What is wrong (never the value).
        reason: String,
    },
}

/// A source of secrets.
pub trait SecretStore: Send + Sync {
    /// Fetches the current value of a secret.
    fn fetch<'a>(&'a self, id: &'a SecretId) -> BoxFuture<'a, Result<SecretString, SecretError>>;
}

/// Database credentials in the RDS secret JSON format.
#[derive(Clone, Deserialize)]
pub struct DbCredentials {
    /// Login role.
    pub username: String,
    /// Password.
    pub password: SecretString,
    /// Host, when the secret names one.
    #[serde(default)]
    pub host: Option<String>,
    /// Port, when the secret names one.
    #[serde(default)]
    pub port: Option<u16>,
    /// Database, when the secret names one.
    #[serde(default)]
    pub dbname: Option<String>,
}

impl fmt::Debug for DbCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbCredentials")
            .field("username", &self.username)
            .field("password", &"[REDACTED]")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .finish()
    }
}

impl DbCredentials {
    /// Decodes credentials from a secret value (RDS JSON).
    pub fn from_secret(id: &SecretId, value: &SecretString) -> Result<DbCredentials, SecretError> {
        serde_json::from_str::<DbCredentials>(value.expose_secret()).map_err(|e| {
            SecretError::Malformed {
                id: id.clone(),
                // serde_json's messages name the field and position, not the value.
                reason: format!(
                    "expected RDS JSON with username and password ({})",
                    e.classify_msg()
                ),
            }
        })
    }

    /// Fetches and decodes credentials.
    pub async fn fetch(
        store: &dyn SecretStore,
        id: &SecretId,
    ) -> Result<DbCredentials, SecretError> {
        let value = store.fetch(id).await?;
        DbCredentials::from_secret(id, &value)
    }
}

trait ClassifyMsg {
    fn classify_msg(&self) -> &'static str;
}

impl ClassifyMsg for serde_json::Error {
    fn classify_msg(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "i/o error",
            serde_json::error::Category::Syntax => "not valid JSON",
            serde_json::error::Category::Data => "missing or mistyped field",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_password() {
        let id = SecretId::new("t/acme");
        let v = SecretString::from(r#"{"username":"u","password":"hunter2-canary","host":"h"}"#);
        let c = DbCredentials::from_secret(&id, &v).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2-canary"), "{dbg}");
        assert_eq!(c.password.expose_secret(), "hunter2-canary");
    }

    #[test]
    fn malformed_error_never_shows_value() {
        let id = SecretId::new("t/acme");
        let v = SecretString::from(r#"{"user":"u","password":"hunter2-canary"#);
        let err = DbCredentials::from_secret(&id, &v).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("t/acme"), "{err}");
    }
}
