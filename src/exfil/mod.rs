//! The exfiltration guard: per role (with per-tenant overrides) caps on the rows one statement may return and
//! budgets of rows and bytes one user may read per time window. The relay counts DataRow and CopyData
//! messages as they pass (never decoding them, see `proto::frame`), and stops a statement that goes over:
//! the backend gets a CancelRequest, the rest of the result is swallowed, the client gets a 53400 error naming
//! the budget (see `frontend::tally`).
//!
//! Window budgets are counted per (tenant, user) across all that user's sessions **in this pgveil instance**
//! ([`Budgets`]); each instance of a fleet counts its own. Windows are fixed: one starts with the first row
//! counted after the previous one ended, and the whole budget is available again when it ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use serde::Deserialize;
use tokio::time::Instant;

use crate::ids::{TenantId, UserId};

/// `[roles.<name>.guard]` and `[tenants.<id>.roles.<name>.guard]` as written (a tenant's keys replace the
/// role's, one by one).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GuardDoc {
    /// Rows one statement (one Execute, one COPY TO) may return.
    #[serde(default)]
    pub max_rows_per_statement: Option<u64>,
    /// Rows one user may read per window.
    #[serde(default)]
    pub max_rows: Option<u64>,
    /// Bytes of DataRow/CopyData messages one user may read per window.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// The window of `max_rows` and `max_bytes` (e.g. `"1h"`).
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
}

impl GuardDoc {
    /// `over`'s keys replace these.
    pub fn overridden(self, over: Option<GuardDoc>) -> GuardDoc {
        let Some(o) = over else { return self };
        GuardDoc {
            max_rows_per_statement: o.max_rows_per_statement.or(self.max_rows_per_statement),
            max_rows: o.max_rows.or(self.max_rows),
            max_bytes: o.max_bytes.or(self.max_bytes),
            window: o.window.or(self.window),
        }
    }

    /// Problems with these keys (for the policy loader).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (name, v) in [
            ("max_rows_per_statement", self.max_rows_per_statement),
            ("max_rows", self.max_rows),
            ("max_bytes", self.max_bytes),
        ] {
            if v == Some(0) {
                p.push(format!("guard: {name} must be at least 1"));
            }
        }
        if (self.max_rows.is_some() || self.max_bytes.is_some()) && self.window.is_none() {
            p.push("guard: max_rows and max_bytes need a window (e.g. window = \"1h\")".into());
        }
        if self.window.is_some_and(|w| w.is_zero()) {
            p.push("guard: window must be longer than zero".into());
        }
        p
    }

    /// The limits, `None` when nothing is limited.
    pub fn limits(&self) -> Option<Limits> {
        let l = Limits {
            max_rows_per_statement: self.max_rows_per_statement,
            max_rows: self.max_rows,
            max_bytes: self.max_bytes,
            window: self.window.unwrap_or(Duration::from_secs(3600)),
        };
        (l.max_rows_per_statement.is_some() || l.max_rows.is_some() || l.max_bytes.is_some())
            .then_some(l)
    }
}

/// A session's effective guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rows per statement.
    pub max_rows_per_statement: Option<u64>,
    /// Rows per user and window.
    pub max_rows: Option<u64>,
    /// Bytes per user and window.
    pub max_bytes: Option<u64>,
    /// The window.
    pub window: Duration,
}

/// Which budget a statement went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// `max_rows_per_statement`.
    StatementRows,
    /// `max_rows` in the window.
    WindowRows,
    /// `max_bytes` in the window.
    WindowBytes,
}

impl Budget {
    /// The policy key.
    pub fn name(self) -> &'static str {
        match self {
            Budget::StatementRows => "max_rows_per_statement",
            Budget::WindowRows => "max_rows",
            Budget::WindowBytes => "max_bytes",
        }
    }

    /// Its configured value and, for window budgets, the window.
    pub fn limit(self, l: &Limits) -> (u64, Option<Duration>) {
        match self {
            Budget::StatementRows => (l.max_rows_per_statement.unwrap_or(0), None),
            Budget::WindowRows => (l.max_rows.unwrap_or(0), Some(l.window)),
            Budget::WindowBytes => (l.max_bytes.unwrap_or(0), Some(l.window)),
        }
    }
}

/// What one user has read in the current window.
#[derive(Debug, Default)]
struct Window {
    started: Option<Instant>,
    rows: u64,
    bytes: u64,
}

impl Window {
    fn roll(&mut self, window: Duration, now: Instant) {
        if self
            .started
            .is_some_and(|s| now.duration_since(s) >= window)
        {
            *self = Window::default();
        }
    }
}

/// One user's window, shared by that user's sessions.
#[derive(Debug, Default)]
pub struct UserWindow(Mutex<Window>);

impl UserWindow {
    fn lock(&self) -> MutexGuard<'_, Window> {
        // parking_lot: a panicking holder does not poison it (plain counters, never left inconsistent).
        self.0.lock()
    }

    /// Rows and bytes still allowed in the current window (`u64::MAX` when unlimited).
    pub fn remaining(&self, l: &Limits, now: Instant) -> (u64, u64) {
        let mut w = self.lock();
        w.roll(l.window, now);
        (
            l.max_rows.map_or(u64::MAX, |m| m.saturating_sub(w.rows)),
            l.max_bytes.map_or(u64::MAX, |m| m.saturating_sub(w.bytes)),
        )
    }

    /// Counts rows and bytes read.
    pub fn consume(&self, l: &Limits, rows: u64, bytes: u64, now: Instant) {
        if rows == 0 && bytes == 0 {
            return;
        }
        let mut w = self.lock();
        w.roll(l.window, now);
        w.started.get_or_insert(now);
        w.rows = w.rows.saturating_add(rows);
        w.bytes = w.bytes.saturating_add(bytes);
    }

    /// Whether the window has ended (nothing counted in it any more).
    fn idle(&self, now: Instant, longest: Duration) -> bool {
        self.lock()
            .started
            .is_none_or(|s| now.duration_since(s) >= longest)
    }
}

/// The windows of every user of this instance.
#[derive(Debug, Default)]
pub struct Budgets {
    users: Mutex<HashMap<(TenantId, UserId), Arc<UserWindow>>>,
}

/// Above this many users, windows no session holds and older than a day are forgotten.
const PRUNE_ABOVE: usize = 4096;

impl Budgets {
    /// The window of (tenant, user), shared with that user's other sessions.
    pub fn user(&self, tenant: &TenantId, user: &UserId) -> Arc<UserWindow> {
        let mut users = self.users.lock();
        if users.len() > PRUNE_ABOVE {
            let now = Instant::now();
            let day = Duration::from_secs(86_400);
            users.retain(|_, w| Arc::strong_count(w) > 1 || !w.idle(now, day));
        }
        users
            .entry((tenant.clone(), user.clone()))
            .or_default()
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rows: Option<u64>, bytes: Option<u64>) -> Limits {
        Limits {
            max_rows_per_statement: None,
            max_rows: rows,
            max_bytes: bytes,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn windows_count_per_user_and_reset_when_they_end() {
        let b = Budgets::default();
        let (t, u, v) = (TenantId::new("acme"), UserId::new("u"), UserId::new("v"));
        let l = limits(Some(10), Some(1000));
        let now = Instant::now();
        let w = b.user(&t, &u);
        w.consume(&l, 7, 100, now);
        // The same user's other session sees the same window; another user does not.
        assert_eq!(b.user(&t, &u).remaining(&l, now), (3, 900));
        assert_eq!(b.user(&t, &v).remaining(&l, now), (10, 1000));
        w.consume(&l, 5, 1000, now + Duration::from_secs(30));
        assert_eq!(w.remaining(&l, now + Duration::from_secs(59)), (0, 0));
        assert_eq!(w.remaining(&l, now + Duration::from_secs(60)), (10, 1000));
    }

    #[test]
    fn tenant_keys_replace_the_roles_one_by_one_and_bad_values_are_refused() {
        let role = GuardDoc {
            max_rows_per_statement: Some(100),
            max_rows: Some(1000),
            window: Some(Duration::from_secs(3600)),
            ..GuardDoc::default()
        };
        let over = GuardDoc {
            max_rows: Some(5),
            ..GuardDoc::default()
        };
        let g = role.overridden(Some(over));
        assert_eq!(g.max_rows_per_statement, Some(100));
        assert_eq!(g.max_rows, Some(5));
        assert!(g.problems().is_empty());
        assert!(GuardDoc::default().limits().is_none());
        let bad = GuardDoc {
            max_rows: Some(0),
            max_bytes: Some(10),
            ..GuardDoc::default()
        };
        assert_eq!(bad.problems().len(), 2, "{:?}", bad.problems());
    }
}
