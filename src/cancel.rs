//! Cancel requests. Each client gets its own random key; a CancelRequest carrying it is forwarded (with the
//! backend's own key) only to the backend currently serving that client. Unknown keys do nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::backend::cancel::send_cancel;
pub use crate::backend::cancel::send_cancel_detached;
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
