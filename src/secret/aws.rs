//! `aws` secret backend: AWS Secrets Manager `GetSecretValue`, by name or ARN.
//!
//! Credentials come from the standard AWS chain (environment, shared profile, web identity, ECS task role,
//! EC2 instance role); the region from the config or that chain; the endpoint may be overridden (VPC endpoint,
//! or moto/LocalStack for local testing). HTTPS uses rustls with ring, passed explicitly as the HTTP client.
//!
//! A `SecretString` is returned as is; a `SecretBinary` as its standard base64 text (decode it with
//! [`super::fetch_bytes`]). Errors are mapped to [`SecretError`] without the value ever being part of them.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use base64::Engine as _;

use super::{BoxFuture, STAGE_PENDING, SecretError, SecretStore, SecretString};
use crate::ids::SecretId;

/// Settings of the `aws` backend.
#[derive(Debug, Clone, Default)]
pub struct AwsSettings {
    /// Region; when `None`, the standard chain (`AWS_REGION`, profile, instance metadata).
    pub region: Option<String>,
    /// Endpoint override, e.g. `http://127.0.0.1:5000` for moto or a VPC endpoint URL.
    pub endpoint: Option<String>,
    /// `VersionStage` to read (default: the service's default, `AWSCURRENT`).
    pub version_stage: Option<String>,
    /// During rotations, when the current credentials are rejected, also try the `AWSPENDING` version.
    pub try_pending: bool,
    /// Time allowed for one `GetSecretValue` including retries.
    pub timeout: Duration,
}

/// Secrets from AWS Secrets Manager.
#[derive(Clone)]
pub struct AwsSecretStore {
    client: Client,
    version_stage: Option<String>,
    try_pending: bool,
}

impl std::fmt::Debug for AwsSecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsSecretStore")
            .field("version_stage", &self.version_stage)
            .field("try_pending", &self.try_pending)
            .finish_non_exhaustive()
    }
}

impl AwsSecretStore {
    /// Resolves region and credentials providers (no network call yet) and builds the client.
    pub async fn new(settings: &AwsSettings) -> AwsSecretStore {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3).min(settings.timeout))
            .operation_timeout(settings.timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(2));
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        let sdk = loader.load().await;
        AwsSecretStore {
            client: Client::new(&sdk),
            version_stage: settings.version_stage.clone(),
            try_pending: settings.try_pending,
        }
    }

    /// Builds the store from an existing SDK client (tests, embedding).
    pub fn from_client(
        client: Client,
        version_stage: Option<String>,
        try_pending: bool,
    ) -> AwsSecretStore {
        AwsSecretStore {
            client,
            version_stage,
            try_pending,
        }
    }

    async fn get(&self, id: &SecretId, stage: Option<&str>) -> Result<SecretString, SecretError> {
        let out = self
            .client
            .get_secret_value()
            .secret_id(id.as_str())
            .set_version_stage(stage.map(str::to_owned))
            .send()
            .await
            .map_err(|e| map_error(id, e))?;
        // The SDK's output type redacts these fields in its Debug; take them out without copies in Strings.
        if let Some(s) = out.secret_string() {
            return Ok(SecretString::from(s.to_owned()));
        }
        if let Some(b) = out.secret_binary() {
            return Ok(SecretString::from(
                base64::engine::general_purpose::STANDARD.encode(b.as_ref()),
            ));
        }
        Err(SecretError::Malformed {
            id: id.clone(),
            reason: "the secret version has neither SecretString nor SecretBinary".to_owned(),
        })
    }
}

fn map_error(id: &SecretId, e: SdkError<GetSecretValueError, HttpResponse>) -> SecretError {
    match &e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            let code = err.code().unwrap_or_default();
            let message = err.message().unwrap_or_default().to_owned();
            match err {
                GetSecretValueError::ResourceNotFoundException(_) => {
                    SecretError::NotFound(id.clone())
                }
                GetSecretValueError::DecryptionFailure(_) => SecretError::AccessDenied {
                    id: id.clone(),
                    reason: format!("KMS decryption failed: {message}"),
                },
                _ if code == "AccessDeniedException" || code.contains("NotAuthorized") => {
                    SecretError::AccessDenied {
                        id: id.clone(),
                        reason: message,
                    }
                }
                _ if code.contains("Throttl") || code == "TooManyRequestsException" => {
                    SecretError::Throttled(id.clone())
                }
                GetSecretValueError::InternalServiceError(_) => {
                    SecretError::Unavailable(format!("AWS Secrets Manager internal error for {id}"))
                }
                _ if code.contains("Credentials")
                    || code.contains("Token")
                    || code.contains("Signature") =>
                {
                    SecretError::AccessDenied {
                        id: id.clone(),
                        reason: format!("{code}: {message}"),
                    }
                }
                _ => SecretError::Unavailable(format!("GetSecretValue {id}: {code}: {message}")),
            }
        }
        SdkError::TimeoutError(_) => {
            SecretError::Unavailable(format!("GetSecretValue {id}: timed out"))
        }
        SdkError::DispatchFailure(_) => SecretError::Unavailable(format!(
            "GetSecretValue {id}: endpoint unreachable ({})",
            DisplayErrorContext(&e)
        )),
        // Construction failures are local (e.g. no credentials or region found): an answer, not an outage.
        SdkError::ConstructionFailure(_) => SecretError::AccessDenied {
            id: id.clone(),
            reason: format!("request not sent ({})", DisplayErrorContext(&e)),
        },
        _ => SecretError::Unavailable(format!("GetSecretValue {id}: {}", DisplayErrorContext(&e))),
    }
}

impl SecretStore for AwsSecretStore {
    fn fetch<'a>(&'a self, id: &'a SecretId) -> BoxFuture<'a, Result<SecretString, SecretError>> {
        // Always name the stage: AWSCURRENT unless configured. AWS defaults to it anyway, but other
        // implementations of the API (moto) return a stale "default version" after a rotation promotes a new
        // version with UpdateSecretVersionStage.
        Box::pin(self.get(
            id,
            Some(self.version_stage.as_deref().unwrap_or("AWSCURRENT")),
        ))
    }

    fn fetch_pending<'a>(
        &'a self,
        id: &'a SecretId,
    ) -> BoxFuture<'a, Result<Option<SecretString>, SecretError>> {
        Box::pin(async move {
            if !self.try_pending {
                return Ok(None);
            }
            match self.get(id, Some(STAGE_PENDING)).await {
                Ok(v) => Ok(Some(v)),
                // No rotation in progress.
                Err(SecretError::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }
}
