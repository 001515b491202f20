//! Live sessions by user and token, each with a kill switch the session loop watches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

struct Entry {
    user: String,
    jti: String,
    iat: i64,
    kill: watch::Sender<bool>,
}

/// Every live session of this instance.
#[derive(Default)]
pub struct SessionRegistry {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Entry>>,
}

/// A registered session: its kill signal; unregisters when dropped.
pub struct SessionGuard {
    registry: Arc<SessionRegistry>,
    id: u64,
    /// Turns true when the session must end at once.
    pub killed: watch::Receiver<bool>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.registry
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl SessionRegistry {
    /// Registers a session of `user` with token `jti` issued at `iat`.
    pub fn register(self: &Arc<Self>, user: &str, jti: &str, iat: i64) -> SessionGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (kill, killed) = watch::channel(false);
        self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            Entry {
                user: user.to_owned(),
                jti: jti.to_owned(),
                iat,
                kill,
            },
        );
        SessionGuard {
            registry: self.clone(),
            id,
            killed,
        }
    }

    /// Signals every session for which `doomed(user, jti, iat)` holds; returns how many.
    pub fn kill_where(&self, doomed: impl Fn(&str, &str, i64) -> bool) -> usize {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        for e in live.values() {
            if !*e.kill.borrow() && doomed(&e.user, &e.jti, e.iat) {
                let _ = e.kill.send(true);
                n += 1;
            }
        }
        n
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether there are no live sessions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_matching_sessions_only() {
        let r = Arc::new(SessionRegistry::default());
        let a = r.register("alice", "j1", 0);
        let b = r.register("bob", "j2", 0);
        assert_eq!(r.kill_where(|u, _, _| u == "alice"), 1);
        assert!(*a.killed.borrow());
        assert!(!*b.killed.borrow());
        drop(a);
        assert_eq!(r.len(), 1);
    }
}
