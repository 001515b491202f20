//! The HTTP API over TLS (default port 8432): enrolment, login and recovery for users, user and token
//! administration, and the server-rendered security page. JSON in and out; errors are
//! `{"error": {"code", "message"}}` with a stable `code` (see [`routes::ApiError`]).
//!
//! Admin endpoints authenticate with an admin API key held in the secret store (`api.admin_key_secret`),
//! sent as `Authorization: Bearer <key>` and compared in constant time.

mod admin;
pub mod client_ip;
pub mod fetch;
pub mod first_factor;
pub mod oidc;
mod page;
mod revoke;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use self::first_factor::FirstFactor;
use self::oidc::OidcVerifier;
use crate::clock::Clock;
use crate::config::{Config, demo_mode};
use crate::control::{ControlDb, ControlError};
use crate::mfa::MfaService;
use crate::mfa::crypto::{CryptoError, SecretBox};
use crate::revoke::{RevocationCache, SessionRegistry};
use crate::secret::{SecretError, SecretStore, SecretString};
use crate::token::{TokenError, TokenSigner};

pub use crate::config::{ApiConfig, DEFAULT_API_PORT};

/// Errors starting the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    /// Configuration missing.
    #[error("{0}")]
    Config(&'static str),
    /// A secret could not be fetched.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// Control database.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// TOTP key.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Token signing key.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// OIDC JWKS.
    #[error("oidc: {0}")]
    Oidc(#[from] oidc::OidcError),
    /// TLS material.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// I/O (key file, bind).
    #[error("{0}")]
    Io(String),
}

/// Options beyond the config file.
pub struct ApiOptions {
    /// Secret store.
    pub secrets: Arc<dyn SecretStore>,
    /// Clock.
    pub clock: Clock,
    /// The proxy in the same process, if any: revocations are applied to it at once.
    pub local_proxy: Option<(Arc<RevocationCache>, Arc<SessionRegistry>)>,
    /// Proxy port for connection strings when `api.proxy_port` is unset.
    pub proxy_port: u16,
}

/// Everything a request handler needs.
pub struct ApiState {
    pub(crate) cfg: Config,
    pub(crate) api: ApiConfig,
    pub(crate) mfa: MfaService,
    pub(crate) signer: TokenSigner,
    pub(crate) admin_key: SecretString,
    pub(crate) first: FirstFactor,
    pub(crate) clock: Clock,
    pub(crate) local_proxy: Option<(Arc<RevocationCache>, Arc<SessionRegistry>)>,
    pub(crate) proxy_port: u16,
    pub(crate) trusted_proxies: Arc<client_ip::TrustedProxies>,
}

/// A bound API server.
pub struct ApiServer {
    listener: TcpListener,
    addr: SocketAddr,
    tls: TlsAcceptor,
    state: Arc<ApiState>,
}

/// The first factors the API accepts, from its config (keys from the secret store). Demo-only options are
/// refused outside demo mode.
async fn first_factor(
    api: &ApiConfig,
    secrets: &dyn SecretStore,
) -> Result<FirstFactor, ApiStartError> {
    let oidc = match &api.oidc {
        Some(o) => Some(OidcVerifier::new(o.clone()).await?),
        None => None,
    };
    if api
        .webapp
        .as_ref()
        .is_some_and(|w| w.max_age > Duration::from_secs(15 * 60))
    {
        tracing::warn!(
            "api.webapp.max_age is over 15 minutes: an assertion is a bearer credential (replayable) until it expires"
        );
    }
    let webapp = match &api.webapp {
        Some(w) => Some((secrets.fetch(&w.key_secret).await?, w.max_age)),
        None => None,
    };
    if api.insecure_no_first_factor {
        if !demo_mode() {
            return Err(ApiStartError::Config(
                "api.insecure_no_first_factor is for demos only (set PGVEIL_DEMO=1 to accept it)",
            ));
        }
        tracing::warn!(
            "!!! DEMO MODE: the API issues tokens WITHOUT any first factor: anyone who knows an email and its TOTP code gets a token. Never use this with real data. !!!"
        );
    }
    Ok(FirstFactor {
        oidc,
        webapp,
        insecure_none: api.insecure_no_first_factor,
    })
}

/// The API's listening socket and its bound address.
async fn listen(at: SocketAddr) -> Result<(TcpListener, SocketAddr), ApiStartError> {
    let io = |e: std::io::Error| ApiStartError::Io(format!("cannot listen on {at}: {e}"));
    let listener = TcpListener::bind(at).await.map_err(io)?;
    let addr = listener.local_addr().map_err(io)?;
    Ok((listener, addr))
}

impl ApiServer {
    /// Opens the control database, loads keys and binds the listener.
    pub async fn bind(cfg: Config, opts: ApiOptions) -> Result<ApiServer, ApiStartError> {
        let api = cfg
            .api
            .clone()
            .ok_or(ApiStartError::Config("no [api] section"))?;
        let control = cfg
            .control
            .clone()
            .ok_or(ApiStartError::Config("[api] needs [control]"))?;
        let tls_cfg = cfg
            .tls
            .clone()
            .ok_or(ApiStartError::Config("the API needs a [tls] certificate"))?;
        let secrets = opts.secrets;
        let db = ControlDb::open(&control, &*secrets).await?;
        let secret_box = SecretBox::from_secret(&secrets.fetch(&control.totp_key_secret).await?)?;
        let admin_key = secrets.fetch(&api.admin_key_secret).await?;
        let key_id = cfg
            .auth
            .signing_key_secret
            .clone()
            .ok_or(ApiStartError::Config("[api] needs auth.signing_key_secret"))?;
        // The signing key comes from the secret store, like every other pgveil key.
        let pem = secrets.fetch(&key_id).await?;
        let signer = TokenSigner::from_pem(&pem, &cfg.auth.issuer)?;
        let first = first_factor(&api, &*secrets).await?;
        let mut server_tls = (*crate::tls::server_config(&tls_cfg.cert, &tls_cfg.key)?).clone();
        server_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let trusted_proxies = Arc::new(
            client_ip::TrustedProxies::parse(&api.trusted_proxies)
                .map_err(|_| ApiStartError::Config("api.trusted_proxies is invalid"))?,
        );
        let (listener, addr) = listen(api.addr).await?;
        let state = Arc::new(ApiState {
            mfa: MfaService::new(db, secret_box, api.throttle.clone()),
            signer,
            admin_key,
            first,
            clock: opts.clock,
            local_proxy: opts.local_proxy,
            proxy_port: api.proxy_port.unwrap_or(opts.proxy_port),
            trusted_proxies,
            api,
            cfg,
        });
        Ok(ApiServer {
            listener,
            addr,
            tls: TlsAcceptor::from(Arc::new(server_tls)),
            state,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `stop` resolves.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        let app = routes::router(self.state.clone());
        tracing::info!(addr = %self.local_addr(), "pgveil API listening (TLS)");
        tokio::pin!(stop);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut stop => break,
                a = self.listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "API accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let tls = self.tls.clone();
            let app = app.clone();
            let proxies = self.state.trusted_proxies.clone();
            tokio::spawn(async move {
                let Ok(Ok(stream)) =
                    tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await
                else {
                    return;
                };
                let svc = app.map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let ip = proxies.client_ip(peer.ip(), req.headers());
                    req.extensions_mut().insert(routes::ClientIp(ip));
                    req
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(15))
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                    .await;
            });
        }
    }
}
