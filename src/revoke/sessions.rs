//! Live sessions by user and token, each with a kill switch the session loop watches; per-user and per-tenant
//! session counts for the connection caps.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::watch;

struct Entry {
    user: String,
    tenant: String,
    jti: String,
    iat: i64,
    kill: watch::Sender<bool>,
}

#[derive(Default)]
struct Live {
    sessions: HashMap<u64, Entry>,
    per_user: HashMap<String, usize>,
    per_tenant: HashMap<String, usize>,
}

impl Live {
    fn count(map: &mut HashMap<String, usize>, key: &str, up: bool) {
        if up {
            *map.entry(key.to_owned()).or_default() += 1;
        } else if let Some(n) = map.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                map.remove(key);
            }
        }
    }
}

/// Every live session of this instance.
#[derive(Default)]
pub struct SessionRegistry {
    next: AtomicU64,
    live: Mutex<Live>,
}

/// Who a new session is, and the caps it must stay within (`None`: no cap).
pub struct NewSession<'a> {
    pub user: &'a str,
    pub tenant: &'a str,
    pub jti: &'a str,
    pub iat: i64,
    pub max_per_user: Option<usize>,
    pub max_per_tenant: Option<usize>,
}

/// A cap a new session would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapReached {
    /// The user already has the maximum number of sessions on this instance.
    #[error("too many sessions for this user (at most {0})")]
    User(usize),
    /// The tenant already has the maximum number of sessions on this instance.
    #[error("too many sessions for this tenant (at most {0})")]
    Tenant(usize),
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
        let mut live = self.registry.live.lock();
        if let Some(e) = live.sessions.remove(&self.id) {
            Live::count(&mut live.per_user, &e.user, false);
            Live::count(&mut live.per_tenant, &e.tenant, false);
        }
    }
}

impl SessionRegistry {
    /// Registers a session, unless it would exceed a cap (checked and counted under one lock).
    pub fn register(self: &Arc<Self>, s: NewSession<'_>) -> Result<SessionGuard, CapReached> {
        let mut live = self.live.lock();
        if let Some(max) = s.max_per_user
            && live.per_user.get(s.user).copied().unwrap_or(0) >= max
        {
            return Err(CapReached::User(max));
        }
        if let Some(max) = s.max_per_tenant
            && live.per_tenant.get(s.tenant).copied().unwrap_or(0) >= max
        {
            return Err(CapReached::Tenant(max));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (kill, killed) = watch::channel(false);
        Live::count(&mut live.per_user, s.user, true);
        Live::count(&mut live.per_tenant, s.tenant, true);
        live.sessions.insert(
            id,
            Entry {
                user: s.user.to_owned(),
                tenant: s.tenant.to_owned(),
                jti: s.jti.to_owned(),
                iat: s.iat,
                kill,
            },
        );
        Ok(SessionGuard {
            registry: self.clone(),
            id,
            killed,
        })
    }

    /// Signals every session for which `doomed(user, jti, iat)` holds; returns how many.
    pub fn kill_where(&self, doomed: impl Fn(&str, &str, i64) -> bool) -> usize {
        let live = self.live.lock();
        let mut n = 0;
        for e in live.sessions.values() {
            if !*e.kill.borrow() && doomed(&e.user, &e.jti, e.iat) {
                let _ = e.kill.send(true);
                n += 1;
            }
        }
        n
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.live.lock().sessions.len()
    }

    /// Whether there are no live sessions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new<'a>(
        user: &'a str,
        tenant: &'a str,
        per_user: Option<usize>,
        per_tenant: Option<usize>,
    ) -> NewSession<'a> {
        NewSession {
            user,
            tenant,
            jti: "j",
            iat: 0,
            max_per_user: per_user,
            max_per_tenant: per_tenant,
        }
    }

    /// A panic while the registry's lock is held does not fail later callers (parking_lot does not poison).
    #[test]
    fn a_panic_under_the_lock_does_not_poison_it() {
        let r = Arc::new(SessionRegistry::default());
        let a = r.register(new("alice", "acme", None, None)).unwrap();
        let r2 = r.clone();
        let panicked = std::thread::spawn(move || {
            let _held = r2.live.lock();
            panic!("while holding the registry lock");
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(r.len(), 1);
        drop(a);
        assert_eq!(r.len(), 0);
        let _b = r.register(new("bob", "acme", None, None)).unwrap();
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn caps_count_live_sessions_only() {
        let r = Arc::new(SessionRegistry::default());
        let a1 = r.register(new("alice", "acme", Some(2), Some(3))).unwrap();
        let _a2 = r.register(new("alice", "acme", Some(2), Some(3))).unwrap();
        assert_eq!(
            r.register(new("alice", "acme", Some(2), Some(3))).err(),
            Some(CapReached::User(2))
        );
        let _b1 = r.register(new("bob", "acme", Some(2), Some(3))).unwrap();
        assert_eq!(
            r.register(new("bob", "acme", Some(2), Some(3))).err(),
            Some(CapReached::Tenant(3))
        );
        // Other tenants and uncapped registrations are not affected.
        let _g = r.register(new("bob", "globex", Some(2), Some(3))).unwrap();
        let _u = r.register(new("alice", "acme", None, None)).unwrap();
        // A session that ends frees its place.
        drop(a1);
        let _a3 = r.register(new("alice", "acme", Some(3), Some(5))).unwrap();
        assert_eq!(
            r.register(new("alice", "acme", Some(3), Some(9))).err(),
            Some(CapReached::User(3))
        );
        assert_eq!(r.len(), 5);
    }

    #[test]
    fn kill_matching_sessions_only() {
        let r = Arc::new(SessionRegistry::default());
        let a = r.register(new("alice", "acme", None, None)).unwrap();
        let b = r.register(new("bob", "acme", None, None)).unwrap();
        assert_eq!(r.kill_where(|u, _, _| u == "alice"), 1);
        assert!(*a.killed.borrow());
        assert!(!*b.killed.borrow());
        drop(a);
        assert_eq!(r.len(), 1);
    }
}
