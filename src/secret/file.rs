//! `file` secret backend: a JSON object mapping secret ids to values (a JSON object in the RDS format, or a
//! string). Read at every fetch, so edits (rotations) are seen without a restart. For the demo and tests.

use std::path::PathBuf;

use super::{BoxFuture, SecretError, SecretStore, SecretString};
use crate::ids::SecretId;

/// Secrets from a local JSON file.
#[derive(Debug, Clone)]
pub struct FileSecretStore {
    path: PathBuf,
}

impl FileSecretStore {
    /// A store reading `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    async fn read(&self, id: &SecretId) -> Result<SecretString, SecretError> {
        let text = tokio::fs::read_to_string(&self.path).await.map_err(|e| {
            SecretError::Unavailable(format!("cannot read {}: {e}", self.path.display()))
        })?;
        let text = SecretString::from(text);
        let mut all: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(secrecy::ExposeSecret::expose_secret(&text)).map_err(|e| {
                SecretError::Unavailable(format!(
                    "{} is not a JSON object (line {}, column {})",
                    self.path.display(),
                    e.line(),
                    e.column()
                ))
            })?;
        match all.remove(id.as_str()) {
            None => Err(SecretError::NotFound(id.clone())),
            Some(serde_json::Value::String(s)) => Ok(SecretString::from(s)),
            Some(v @ serde_json::Value::Object(_)) => Ok(SecretString::from(v.to_string())),
            Some(_) => Err(SecretError::Malformed {
                id: id.clone(),
                reason: "value must be a JSON object or a string".to_owned(),
            }),
        }
    }
}

impl SecretStore for FileSecretStore {
    fn fetch<'a>(&'a self, id: &'a SecretId) -> BoxFuture<'a, Result<SecretString, SecretError>> {
        Box::pin(self.read(id))
    }
}
