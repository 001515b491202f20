//! Who a session is: established from a verified token, fixed for the session's life.

use crate::ids::{ClientAddr, RoleName, TenantId, UserId};

/// A session's verified identity.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Token subject.
    pub user: UserId,
    /// Tenant: decides the backend database.
    pub tenant: TenantId,
    /// Role: decides masking and the pool's role class.
    pub role: RoleName,
    /// Whether the token records a second factor.
    pub mfa: bool,
    /// Token id (`jti`), for audit and revocation.
    pub token_id: String,
    /// Client address.
    pub client: ClientAddr,
}
