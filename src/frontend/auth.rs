//! Session authentication: the client's password is a pgveil token. It is asked for only over TLS (or plain
//! text from loopback when the config allows it), verified offline (signature, expiry, issuer), checked
//! against the cached revocation list (revoked `jti`, disabled user) and the tenant's forced-2FA rule, and
//! mapped to an [`Identity`] whose tenant and role must be known.

use std::net::SocketAddr;
use std::time::SystemTime;

use bytes::BytesMut;

use crate::config::Config;
use crate::error::{Classified, ErrorKind};
use crate::identity::Identity;
use crate::ids::ClientAddr;
use crate::net::{ClientStream, Framed, ReadError};
use crate::proto::PgError;
use crate::proto::messages::{self, tag};
use crate::revoke::{RevocationCache, Revoked};
use crate::route::Router;
use crate::token::{Claims, MAX_TOKEN_LEN, TokenError, TokenVerifier};

/// A successful authentication.
#[derive(Debug)]
pub struct Authenticated {
    /// Who the session is.
    pub identity: Identity,
    /// Token issue time (epoch seconds), for revocation of "tokens issued before".
    pub issued_at: i64,
    /// A notice to send once the session is ready (the forced-2FA countdown).
    pub notice: Option<String>,
}

/// Why authentication did not produce an identity.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Refused; the client must be sent this FATAL error.
    #[error("{0}")]
    Refused(PgError),
    /// The client went away (e.g. psql closing to prompt for a password).
    #[error("client left during authentication")]
    Gone,
}

impl Classified for AuthError {
    fn kind(&self) -> ErrorKind {
        match self {
            AuthError::Refused(_) => ErrorKind::Refused,
            AuthError::Gone => ErrorKind::ClientGone,
        }
    }
}

/// Asks for and verifies the token.
pub async fn authenticate(
    stream: &mut ClientStream,
    peer: SocketAddr,
    cfg: &Config,
    router: &Router,
    verifier: &TokenVerifier,
    revocations: Option<&RevocationCache>,
    now: SystemTime,
) -> Result<Authenticated, AuthError> {
    let plaintext_ok = cfg.listen.allow_plaintext_loopback && peer.ip().is_loopback();
    if !stream.is_tls() && !plaintext_ok {
        return Err(AuthError::Refused(
            PgError::invalid_authorization("pgveil requires an encrypted connection")
                .with_hint("Connect with sslmode=require (or verify-full with the pgveil CA)."),
        ));
    }
    let token = read_token(stream).await?;
    let claims = verifier.verify(&token, now).map_err(|e| {
        tracing::info!(client = %peer, reason = e.label(), "token refused");
        AuthError::Refused(token_error(&e))
    })?;
    let notice = admissible(&claims, peer, cfg, router, revocations, now)?;
    Ok(Authenticated {
        identity: Identity {
            mfa: claims.has_mfa(),
            user: claims.sub,
            tenant: claims.tenant,
            role: claims.role,
            token_id: claims.jti,
            client: ClientAddr(peer),
        },
        issued_at: claims.iat,
        notice,
    })
}

/// Asks for the token (a cleartext password request) and reads the client's password message.
async fn read_token(stream: &mut ClientStream) -> Result<String, AuthError> {
    let mut out = BytesMut::new();
    messages::auth_cleartext(&mut out);
    let mut framed = Framed::exact(&mut *stream);
    framed.send(&out).await.map_err(|_| AuthError::Gone)?;
    // The password message's payload may hold a token and its NUL, with room to spare.
    let frame = match framed.read_frame(4 + MAX_TOKEN_LEN + 16).await {
        Ok(f) => f,
        Err(ReadError::Io(_) | ReadError::Closed) => return Err(AuthError::Gone),
        Err(ReadError::BadLength(_) | ReadError::Refused(_)) => {
            return Err(AuthError::Refused(PgError::protocol_violation(
                "invalid password message",
            )));
        }
    };
    if frame.tag() != tag::PASSWORD {
        return Err(AuthError::Refused(PgError::protocol_violation(
            "expected a password message",
        )));
    }
    messages::decode_query(frame.payload())
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(str::to_owned)
        .ok_or_else(|| AuthError::Refused(PgError::protocol_violation("invalid password message")))
}

/// Whether verified claims may open a session here: a served tenant, a configured role, not revoked, and a
/// second factor where the tenant requires one. `Ok` carries the MFA grace-period notice, if any.
fn admissible(
    claims: &Claims,
    peer: SocketAddr,
    cfg: &Config,
    router: &Router,
    revocations: Option<&RevocationCache>,
    now: SystemTime,
) -> Result<Option<String>, AuthError> {
    let Some(tenant) = router.tenant(&claims.tenant) else {
        tracing::info!(client = %peer, tenant = %claims.tenant, "token for unknown tenant");
        return Err(AuthError::Refused(PgError::invalid_authorization(
            "token's tenant is not served here",
        )));
    };
    if !cfg.roles.contains(&claims.role) {
        tracing::info!(client = %peer, role = %claims.role, "token with unknown role");
        return Err(AuthError::Refused(PgError::invalid_authorization(
            "token's role is not configured",
        )));
    }
    if let Some(cache) = revocations
        && let Err(r) = cache.check(claims)
    {
        tracing::info!(client = %peer, user = %claims.sub, reason = %r, "token refused by revocation check");
        let msg = match r {
            Revoked::Token => "pgveil token has been revoked",
            Revoked::User => "pgveil user is disabled or their tokens were revoked",
            Revoked::Unavailable => {
                "pgveil cannot check token revocation right now; try again later"
            }
        };
        return Err(AuthError::Refused(PgError::invalid_authorization(msg)));
    }
    if claims.has_mfa() {
        return Ok(None);
    }
    let req = tenant.mfa_requirement(now);
    if !req.allows_without_mfa() {
        tracing::info!(client = %peer, user = %claims.sub, "token without MFA refused: tenant requires MFA");
        return Err(AuthError::Refused(
            PgError::invalid_authorization(
                "two-factor authentication is required for this tenant: enrol an authenticator app first",
            )
            .with_hint("Enrol an authenticator app on the pgveil security page, then obtain a new token with `pgveil login`."),
        ));
    }
    Ok(req.grace_notice())
}

fn token_error(e: &TokenError) -> PgError {
    let what = match e {
        TokenError::Expired => "pgveil token has expired",
        TokenError::NotYetValid => "pgveil token is not valid yet",
        _ => "invalid pgveil token",
    };
    PgError::invalid_password(what)
        .with_hint("Obtain a fresh token with `pgveil login` and use it as the password.")
}
