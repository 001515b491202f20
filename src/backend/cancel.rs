//! Cancelling what a backend is doing: a CancelRequest with the backend's own key, sent on a new connection
//! to its server. Which client may cancel which backend is decided by [`crate::cancel`].

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::{BackendKey, BackendTarget};

/// Sends a cancel for a backend in the background (used when a client leaves while a statement runs).
pub fn send_cancel_detached(target: Arc<BackendTarget>, key: BackendKey) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), send_cancel(&target, key)).await;
    });
}

pub(crate) async fn send_cancel(target: &BackendTarget, key: BackendKey) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(key.pid, key.secret, &mut buf);
    let mut tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port)).await?;
    // PostgreSQL accepts CancelRequest in plain text even when it requires TLS for sessions; the key is
    // single-use per backend process and carries no credentials.
    tcp.write_all(&buf).await?;
    tcp.shutdown().await?;
    // Wait for the server to close, so the cancel is processed before we return.
    let mut sink = [0u8; 16];
    let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut sink).await;
    Ok(())
}
