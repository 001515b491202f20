//! Database credentials in the RDS secret JSON format.

use std::fmt;

use serde::Deserialize;

use super::{ExposeSecret, SecretError, SecretStore, SecretString};
use crate::ids::SecretId;

/// Database credentials in the RDS secret JSON format: `username`, `password`, optional `host`, `port`
/// (number or string), `dbname`, `engine`; other fields (`dbClusterIdentifier`, `masterarn`, ...) are ignored.
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
    #[serde(default, deserialize_with = "port")]
    pub port: Option<u16>,
    /// Database, when the secret names one.
    #[serde(default)]
    pub dbname: Option<String>,
    /// Engine (`postgres`), informational.
    #[serde(default)]
    pub engine: Option<String>,
}

fn port<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Port {
        Num(u16),
        Text(String),
    }
    match Option::<Port>::deserialize(d)? {
        None => Ok(None),
        Some(Port::Num(n)) => Ok(Some(n)),
        Some(Port::Text(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom("port is not a number")),
    }
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
                // serde_json's messages may quote the input; only its category is reported.
                reason: format!(
                    "expected RDS JSON with username and password ({})",
                    classify(&e)
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

fn classify(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "i/o error",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "missing or mistyped field",
        serde_json::error::Category::Eof => "truncated JSON",
    }
}
