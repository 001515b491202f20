//! Cancel requests. Each client gets its own random key; a CancelRequest carrying it is forwarded (with the
//! backend's own key) only to the backend currently serving that client. Unknown keys do nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;

use crate::backend::{BackendKey, BackendTarget};

type Slot = Arc<Mutex<Option<(Arc<BackendTarget>, BackendKey)>>>;

struct Entry {
    secret: i32,
    slot: Slot,
}

/// All live client cancel keys.
#[derive(Default)]
pub struct CancelRegistry {
    entries: Mutex<HashMap<i32, Entry>>,
}

/// A client's registered key; unregisters on drop.
pub struct CancelHandle {
    /// Key given to the client (pid part).
    pub pid: i32,
    /// Key given to the client (secret part).
    pub secret: i32,
    slot: Slot,
    registry: Arc<CancelRegistry>,
}

impl CancelHandle {
    /// Records which backend serves the client now (None while it holds none).
    pub fn set_backend(&self, backend: Option<(Arc<BackendTarget>, BackendKey)>) {
        *self.slot.lock() = backend;
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry.entries.lock().remove(&self.pid);
    }
}

impl CancelRegistry {
    /// Registers a new client with a fresh random key.
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        let mut entries = self.entries.lock();
        let pid = loop {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            if pid != 0 && !entries.contains_key(&pid) {
                break pid;
            }
        };
        let secret = rand::random::<i32>();
        let slot: Slot = Arc::default();
        entries.insert(
            pid,
            Entry {
                secret,
                slot: slot.clone(),
            },
        );
        CancelHandle {
            pid,
            secret,
            slot,
            registry: self.clone(),
        }
    }

    /// Handles a CancelRequest: forwards it to the matching client's current backend, if any.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let target = {
            let entries = self.entries.lock();
            match entries.get(&pid) {
                // Integer equality does not leak timing about how many bits matched.
                Some(e) if e.secret == secret => e.slot.lock().clone(),
                _ => None,
            }
        };
        let Some((target, key)) = target else {
            tracing::info!("cancel request with unknown key ignored");
            return;
        };
        match tokio::time::timeout(Duration::from_secs(5), send_cancel(&target, key)).await {
            Ok(Ok(())) => tracing::debug!(backend_pid = key.pid, "cancel forwarded"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cancel forwarding failed"),
            Err(_) => tracing::warn!("cancel forwarding timed out"),
        }
    }

    /// Number of registered clients.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// True when no client is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sends a cancel for a backend in the background (used when a client leaves while a statement runs).
pub fn send_cancel_detached(target: Arc<BackendTarget>, key: BackendKey) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), send_cancel(&target, key)).await;
    });
}

async fn send_cancel(target: &BackendTarget, key: BackendKey) -> std::io::Result<()> {
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
