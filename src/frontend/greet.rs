//! The end of a client's login, the same in both pool modes: AuthenticationOk, the server parameters, the
//! client's own cancel key, the grace-period notice if any, ReadyForQuery.

use std::collections::BTreeMap;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::cancel::CancelHandle;
use crate::net::ClientStream;
use crate::proto::{PgError, TxnStatus, messages};

/// Completes the login. `notice`: the forced-2FA countdown, when the session is inside its grace period.
pub async fn greet(
    stream: &mut ClientStream,
    params: &BTreeMap<String, String>,
    handle: &CancelHandle,
    notice: Option<&str>,
) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(512);
    messages::auth_ok(&mut out);
    for (name, value) in params {
        messages::parameter_status(&mut out, name, value);
    }
    messages::backend_key_data(&mut out, handle.pid, handle.secret);
    if let Some(notice) = notice {
        PgError::encode_notice("01000", notice, &mut out);
    }
    messages::ready_for_query(&mut out, TxnStatus::Idle.byte());
    stream.write_all(&out).await
}
