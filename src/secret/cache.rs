//! A caching layer over any [`SecretStore`].
//!
//! - **TTL and refresh-ahead.** A value younger than `ttl - refresh_ahead` is served from memory; one younger than
//!   `ttl` is served from memory too while a background task refreshes it, so no request waits on a refresh
//!   while a fresh-enough value exists. Past `ttl` the request fetches.
//! - **Single-flight.** Per secret, one fetch at a time: callers that queued behind a fetch take its outcome
//!   instead of fetching again, so N concurrent first requests make one call to the store.
//! - **Bounded staleness.** When the store is down or throttling (transient errors), the last good value is
//!   served, with a warning log and the `pgveil_secret_stale_served_total` metric, until it is `max_stale` old
//!   (counted from its fetch); after that callers get [`SecretError::TooStale`]. After a failed fetch the store is
//!   not asked again for `retry_after`, so requests do not pile up on a dead endpoint. Final answers (not found,
//!   access denied, malformed) are never papered over.
//! - **Rotation.** [`SecretStore::refetch`] drops a value a consumer found rejected and fetches again, once for
//!   all the callers that report the same rejected value.
//!
//! Time is `tokio::time::Instant`, so unit tests run on a paused clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::{BoxFuture, ExposeSecret, SecretError, SecretStore, SecretString};
use crate::ids::SecretId;

/// Cache timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// A value older than this is fetched again before use.
    pub ttl: Duration,
    /// Values older than `ttl - refresh_ahead` are refreshed in the background while still being served.
    pub refresh_ahead: Duration,
    /// While the store is unreachable, a cached value is served until it is this old; then requests fail.
    pub max_stale: Duration,
    /// After a failed fetch, how long to serve the cached value (or the error) before asking the store again.
    pub retry_after: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            refresh_ahead: Duration::from_secs(60),
            max_stale: Duration::from_secs(3600),
            retry_after: Duration::from_secs(2),
        }
    }
}

/// Counters, for tests and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Requests answered from memory with a fresh value.
    pub hits: u64,
    /// Calls made to the underlying store (including background refreshes).
    pub fetches: u64,
    /// Requests answered with a stale value because the store was unreachable.
    pub stale_served: u64,
    /// Requests that failed.
    pub errors: u64,
}

/// A [`SecretStore`] that caches another one.
pub struct CachedSecretStore {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn SecretStore>,
    settings: CacheSettings,
    slots: Mutex<HashMap<SecretId, Arc<Slot>>>,
    hits: AtomicU64,
    fetches: AtomicU64,
    stale_served: AtomicU64,
    errors: AtomicU64,
}

/// One secret: its state, and the lock that makes fetches single-flight.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct SlotState {
    /// Last good value and when it was fetched.
    value: Option<(SecretString, Instant)>,
    /// Last failed fetch, when newer than the value.
    failed: Option<(Instant, SecretError)>,
    /// A background refresh is scheduled or running.
    refreshing: bool,
    /// A stale value has been served since the last successful fetch.
    stale: bool,
    /// Completed fetches (successful or not): a caller that saw generation `g` and finds a larger one after
    /// queueing takes that outcome instead of fetching again.
    generation: u64,
}

impl CachedSecretStore {
    /// Wraps `store`.
    pub fn new(store: Arc<dyn SecretStore>, settings: CacheSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                settings,
                slots: Mutex::new(HashMap::new()),
                hits: AtomicU64::new(0),
                fetches: AtomicU64::new(0),
                stale_served: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            }),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> CacheStats {
        let i = &self.inner;
        CacheStats {
            hits: i.hits.load(Ordering::Relaxed),
            fetches: i.fetches.load(Ordering::Relaxed),
            stale_served: i.stale_served.load(Ordering::Relaxed),
            errors: i.errors.load(Ordering::Relaxed),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> CacheSettings {
        self.inner.settings
    }
}

impl Inner {
    fn slot(&self, id: &SecretId) -> Arc<Slot> {
        self.slots.lock().entry(id.clone()).or_default().clone()
    }

    async fn get(self: &Arc<Self>, id: &SecretId) -> Result<SecretString, SecretError> {
        let s = &self.settings;
        let start = Instant::now();
        let slot = self.slot(id);
        let generation;
        {
            let mut st = slot.state.lock();
            generation = st.generation;
            if let Some((value, at)) = &st.value {
                let age = start.saturating_duration_since(*at);
                if age < s.ttl {
                    let value = value.clone();
                    let due = age >= s.ttl.saturating_sub(s.refresh_ahead);
                    let backing_off = st
                        .failed
                        .as_ref()
                        .is_some_and(|(t, _)| start.saturating_duration_since(*t) < s.retry_after);
                    if due && !st.refreshing && !backing_off {
                        st.refreshing = true;
                        self.spawn_refresh(id.clone(), slot.clone());
                    }
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(value);
                }
            }
            if let Some((t, err)) = &st.failed
                && start.saturating_duration_since(*t) < s.retry_after
            {
                let err = err.clone();
                return self.fallback(id, &mut st, err, start);
            }
        }
        self.fetch_once(id, &slot, generation, None).await
    }

    /// Fetches unless a fetch completed since the caller saw `seen` (single-flight): then its outcome is
    /// taken. With `rejected`, the outcome never falls back to that value.
    async fn fetch_once(
        &self,
        id: &SecretId,
        slot: &Slot,
        seen: u64,
        rejected: Option<&SecretString>,
    ) -> Result<SecretString, SecretError> {
        let _flight = slot.fetching.lock().await;
        {
            let mut st = slot.state.lock();
            if st.generation != seen
                && st.failed.is_none()
                && let Some((value, _)) = &st.value
            {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(value.clone());
            }
            if st.generation != seen
                && let Some((_, err)) = &st.failed
            {
                let err = err.clone();
                return match rejected {
                    Some(_) => self.fail(err),
                    None => self.fallback(id, &mut st, err, Instant::now()),
                };
            }
        }
        let result = self.call_store(id).await;
        let now = Instant::now();
        let mut st = slot.state.lock();
        st.generation += 1;
        match result {
            Ok(value) => {
                self.store_value(id, &mut st, value.clone(), now);
                Ok(value)
            }
            Err(err) => {
                st.failed = Some((now, err.clone()));
                if let Some(r) = rejected {
                    // The rejected value must not come back as a fallback.
                    if st
                        .value
                        .as_ref()
                        .is_some_and(|(v, _)| v.expose_secret() == r.expose_secret())
                    {
                        st.value = None;
                    }
                    return self.fail(err);
                }
                self.fallback(id, &mut st, err, now)
            }
        }
    }

    async fn call_store(&self, id: &SecretId) -> Result<SecretString, SecretError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = self.store.fetch(id).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        metrics::counter!("pgveil_secret_fetch_total", "result" => outcome).increment(1);
        metrics::histogram!("pgveil_secret_fetch_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    fn store_value(&self, id: &SecretId, st: &mut SlotState, value: SecretString, now: Instant) {
        st.value = Some((value, now));
        st.failed = None;
        if std::mem::take(&mut st.stale) {
            tracing::info!(secret = %id, "secret store reachable again; cached value refreshed");
            metrics::gauge!("pgveil_secret_stale").decrement(1.0);
        }
    }

    /// After a failed fetch: the cached value if the error is transient and the value young enough.
    fn fallback(
        &self,
        id: &SecretId,
        st: &mut SlotState,
        err: SecretError,
        now: Instant,
    ) -> Result<SecretString, SecretError> {
        let max = self.settings.max_stale;
        match (&st.value, err.is_transient()) {
            (Some((value, at)), true) => {
                let age = now.saturating_duration_since(*at);
                if age <= max {
                    if !std::mem::replace(&mut st.stale, true) {
                        metrics::gauge!("pgveil_secret_stale").increment(1.0);
                    }
                    self.stale_served.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("pgveil_secret_stale_served_total").increment(1);
                    tracing::warn!(
                        secret = %id, age_s = age.as_secs(), max_stale_s = max.as_secs(), error = %err,
                        "secret store unavailable: serving the cached value"
                    );
                    Ok(value.clone())
                } else {
                    tracing::error!(
                        secret = %id, age_s = age.as_secs(), max_stale_s = max.as_secs(), error = %err,
                        "secret store unavailable and the cached value is past max_stale: refusing"
                    );
                    self.fail(SecretError::TooStale {
                        id: id.clone(),
                        age,
                        max,
                    })
                }
            }
            _ => self.fail(err),
        }
    }

    fn fail(&self, err: SecretError) -> Result<SecretString, SecretError> {
        self.errors.fetch_add(1, Ordering::Relaxed);
        Err(err)
    }

    fn spawn_refresh(self: &Arc<Self>, id: SecretId, slot: Arc<Slot>) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Ok(_flight) = slot.fetching.try_lock() {
                let result = this.call_store(&id).await;
                let now = Instant::now();
                let mut st = slot.state.lock();
                st.generation += 1;
                match result {
                    Ok(value) => this.store_value(&id, &mut st, value, now),
                    Err(err) => {
                        tracing::warn!(secret = %id, error = %err, "refresh-ahead failed; the cached value is still valid");
                        st.failed = Some((now, err));
                    }
                }
                st.refreshing = false;
            } else {
                slot.state.lock().refreshing = false;
            }
        });
    }

    async fn refetch(
        &self,
        id: &SecretId,
        rejected: &SecretString,
    ) -> Result<SecretString, SecretError> {
        let slot = self.slot(id);
        let generation;
        {
            let st = slot.state.lock();
            generation = st.generation;
            if let Some((value, _)) = &st.value
                && value.expose_secret() != rejected.expose_secret()
            {
                // Someone already replaced the rejected value.
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(value.clone());
            }
        }
        self.fetch_once(id, &slot, generation, Some(rejected)).await
    }
}

impl SecretStore for CachedSecretStore {
    fn fetch<'a>(&'a self, id: &'a SecretId) -> BoxFuture<'a, Result<SecretString, SecretError>> {
        Box::pin(self.inner.get(id))
    }

    fn fetch_pending<'a>(
        &'a self,
        id: &'a SecretId,
    ) -> BoxFuture<'a, Result<Option<SecretString>, SecretError>> {
        // Pending versions exist only for the minutes of a rotation: never cached.
        self.inner.store.fetch_pending(id)
    }

    fn refetch<'a>(
        &'a self,
        id: &'a SecretId,
        rejected: &'a SecretString,
    ) -> BoxFuture<'a, Result<SecretString, SecretError>> {
        Box::pin(self.inner.refetch(id, rejected))
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
