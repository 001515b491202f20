//! Secret store: where backend credentials and pgveil's own keys come from at run time.
//!
//! - [`SecretStore`] is the trait; backends are [`AwsSecretStore`] (AWS Secrets Manager, production) and
//!   [`FileSecretStore`] (a JSON file, for the demo and tests).
//! - [`CachedSecretStore`] wraps any store: TTL, refresh-ahead, single-flight, bounded staleness while the store
//!   is down, and a forced re-fetch when a consumer finds a value rejected (credential rotation).
//! - [`fetch_text`] / [`fetch_bytes`] fetch keys by secret id for other modules (token keys, TOTP encryption
//!   keys, pseudonym keys).
//!
//! Secret values are held in [`SecretString`] / [`SecretBytes`] (their `Debug` prints `[REDACTED]`), never in
//! plain `String`s, and no error here ever carries a secret value.

mod aws;
mod cache;
mod creds;
mod file;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use aws::{AwsSecretStore, AwsSettings};
use base64::Engine as _;
pub use cache::{CacheSettings, CacheStats, CachedSecretStore};
pub use creds::DbCredentials;
pub use file::FileSecretStore;
pub use secrecy::{ExposeSecret, SecretBox, SecretString};

use crate::ids::SecretId;

/// A boxed future, so the store can be used as `dyn SecretStore`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Secret bytes (keys); `Debug` is redacted and the memory is zeroed on drop.
pub type SecretBytes = SecretBox<Vec<u8>>;

/// The AWS version stage of the version being rotated in (`GetSecretValue` with `VersionStage`).
pub const STAGE_PENDING: &str = "AWSPENDING";

/// Errors fetching or decoding a secret. Messages name the secret id, never its value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SecretError {
    /// No secret (or no version with the requested stage) with this id.
    #[error("secret {0} not found")]
    NotFound(SecretId),
    /// The store refused access (IAM policy, KMS key policy).
    #[error("access to secret {id} denied: {reason}")]
    AccessDenied {
        /// Secret id.
        id: SecretId,
        /// The store's explanation (never the value).
        reason: String,
    },
    /// The store throttled the request.
    #[error("secret store throttled the request for {0}")]
    Throttled(SecretId),
    /// The store could not be read or reached.
    #[error("secret store unavailable: {0}")]
    Unavailable(String),
    /// The store is down and the cached value is older than the configured staleness bound.
    #[error(
        "secret {id}: store unreachable and the cached value is {}s old (max_stale allows {}s)",
        age.as_secs(), max.as_secs()
    )]
    TooStale {
        /// Secret id.
        id: SecretId,
        /// Age of the cached value.
        age: std::time::Duration,
        /// The configured bound.
        max: std::time::Duration,
    },
    /// The secret exists but is not in the expected format.
    #[error("secret {id} is malformed: {reason}")]
    Malformed {
        /// Secret id.
        id: SecretId,
        /// What is wrong (never the value).
        reason: String,
    },
}

impl SecretError {
    /// A short fixed label (for metrics and logs).
    pub fn kind(&self) -> &'static str {
        match self {
            SecretError::NotFound(_) => "not_found",
            SecretError::AccessDenied { .. } => "access_denied",
            SecretError::Throttled(_) => "throttled",
            SecretError::Unavailable(_) => "unavailable",
            SecretError::TooStale { .. } => "too_stale",
            SecretError::Malformed { .. } => "malformed",
        }
    }

    /// True for errors that say the store is down or overloaded (a cached value may then be served), as
    /// opposed to answers from the store (not found, access denied) that are final.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SecretError::Throttled(_) | SecretError::Unavailable(_)
        )
    }
}

/// A source of secrets.
pub trait SecretStore: Send + Sync {
    /// Fetches the current value of a secret.
    fn fetch<'a>(&'a self, id: &'a SecretId) -> BoxFuture<'a, Result<SecretString, SecretError>>;

    /// Fetches the value of the version being rotated in (`AWSPENDING`), when the store is configured to
    /// look there during rotations. `Ok(None)`: not configured, not supported, or no such version.
    fn fetch_pending<'a>(
        &'a self,
        _id: &'a SecretId,
    ) -> BoxFuture<'a, Result<Option<SecretString>, SecretError>> {
        Box::pin(async { Ok(None) })
    }

    /// Called when a consumer found `rejected` (a value this store returned) no longer valid, e.g. a backend
    /// refused the credentials: returns a value fetched from the source after the rejection was noticed.
    /// Caching stores drop `rejected` and re-fetch (once, however many callers report it).
    fn refetch<'a>(
        &'a self,
        id: &'a SecretId,
        _rejected: &'a SecretString,
    ) -> BoxFuture<'a, Result<SecretString, SecretError>> {
        self.fetch(id)
    }
}

/// Fetches a secret as text (e.g. a PEM key).
pub async fn fetch_text(
    store: &dyn SecretStore,
    id: &SecretId,
) -> Result<SecretString, SecretError> {
    store.fetch(id).await
}

/// Fetches a key as bytes: the secret's text is standard base64 (which is also how the `aws` store returns a
/// binary secret), surrounding whitespace ignored.
pub async fn fetch_bytes(
    store: &dyn SecretStore,
    id: &SecretId,
) -> Result<SecretBytes, SecretError> {
    let text = store.fetch(id).await?;
    decode_key_bytes(id, &text)
}

/// Decodes a base64 key (see [`fetch_bytes`]).
pub fn decode_key_bytes(id: &SecretId, text: &SecretString) -> Result<SecretBytes, SecretError> {
    base64::engine::general_purpose::STANDARD
        .decode(text.expose_secret().trim())
        .map(|b| SecretBox::new(Box::new(b)))
        .map_err(|_| SecretError::Malformed {
            id: id.clone(),
            reason: "expected a base64-encoded key (or a binary secret)".to_owned(),
        })
}

/// Builds the configured store wrapped in the cache. `demo` silences the warning about the `file` backend,
/// which is logged at most once per process.
pub async fn store_from_config(
    cfg: &crate::config::SecretsConfig,
    demo: bool,
) -> Arc<CachedSecretStore> {
    use crate::config::SecretBackend;
    let store: Arc<dyn SecretStore> = match cfg.backend {
        SecretBackend::File => {
            // Once per process: a CLI command may build several stores (one per tenant it loads).
            static WARNED: std::sync::Once = std::sync::Once::new();
            if !demo {
                WARNED.call_once(|| tracing::warn!(
                    "secrets backend \"file\" is for the demo and tests: secrets on local disk; use backend = \"aws\" in production"
                ));
            }
            Arc::new(FileSecretStore::new(cfg.path.clone().unwrap_or_default()))
        }
        SecretBackend::Aws => Arc::new(
            AwsSecretStore::new(&AwsSettings {
                region: cfg.region.clone(),
                endpoint: cfg.endpoint.clone(),
                version_stage: cfg.version_stage.clone(),
                try_pending: cfg.try_pending,
                timeout: cfg.timeout,
            })
            .await,
        ),
    };
    Arc::new(CachedSecretStore::new(
        store,
        CacheSettings {
            ttl: cfg.cache_ttl,
            refresh_ahead: cfg.refresh_ahead,
            max_stale: cfg.max_stale,
            retry_after: cfg.retry_after,
        },
    ))
}
