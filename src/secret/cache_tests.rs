//! Cache behaviour on a paused tokio clock: no real sleeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::*;

/// A store whose answer and latency the test controls, counting calls.
struct FakeStore {
    answer: Mutex<Result<String, SecretError>>,
    pending: Mutex<Option<String>>,
    latency: Duration,
    calls: AtomicUsize,
}

impl FakeStore {
    fn new(value: &str, latency: Duration) -> Arc<Self> {
        Arc::new(Self {
            answer: Mutex::new(Ok(value.to_owned())),
            pending: Mutex::new(None),
            latency,
            calls: AtomicUsize::new(0),
        })
    }
    fn set(&self, answer: Result<&str, SecretError>) {
        *self.answer.lock() = answer.map(str::to_owned);
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl SecretStore for FakeStore {
    fn fetch<'a>(&'a self, _id: &'a SecretId) -> BoxFuture<'a, Result<SecretString, SecretError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.latency).await;
            self.answer.lock().clone().map(SecretString::from)
        })
    }
    fn fetch_pending<'a>(
        &'a self,
        _id: &'a SecretId,
    ) -> BoxFuture<'a, Result<Option<SecretString>, SecretError>> {
        Box::pin(async move { Ok(self.pending.lock().clone().map(SecretString::from)) })
    }
}

fn settings() -> CacheSettings {
    CacheSettings {
        ttl: Duration::from_secs(60),
        refresh_ahead: Duration::from_secs(10),
        max_stale: Duration::from_secs(120),
        retry_after: Duration::from_secs(5),
    }
}

fn id() -> SecretId {
    SecretId::new("tenants/acme/db")
}

fn down() -> SecretError {
    SecretError::Unavailable("connection refused".into())
}

async fn get(c: &CachedSecretStore) -> Result<String, SecretError> {
    c.fetch(&id()).await.map(|v| v.expose_secret().to_owned())
}

#[tokio::test(start_paused = true)]
async fn concurrent_first_fetches_are_single_flight() {
    let store = FakeStore::new("v1", Duration::from_millis(100));
    let cache = Arc::new(CachedSecretStore::new(store.clone(), settings()));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let c = cache.clone();
        tasks.push(tokio::spawn(async move { get(&c).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "v1");
    }
    assert_eq!(store.calls(), 1);
    assert_eq!(cache.stats().fetches, 1);
}

#[tokio::test(start_paused = true)]
async fn fresh_values_come_from_memory() {
    let store = FakeStore::new("v1", Duration::from_millis(5));
    let cache = CachedSecretStore::new(store.clone(), settings());
    for _ in 0..100 {
        assert_eq!(get(&cache).await.unwrap(), "v1");
    }
    tokio::time::advance(Duration::from_secs(49)).await;
    assert_eq!(get(&cache).await.unwrap(), "v1");
    assert_eq!(store.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn refresh_ahead_does_not_make_requests_wait() {
    let store = FakeStore::new("v1", Duration::from_secs(3));
    let cache = CachedSecretStore::new(store.clone(), settings());
    get(&cache).await.unwrap();
    store.set(Ok("v2"));
    tokio::time::advance(Duration::from_secs(55)).await;
    // Inside the refresh-ahead window: answered at once with the cached value, refresh in the background.
    let before = tokio::time::Instant::now();
    assert_eq!(get(&cache).await.unwrap(), "v1");
    assert_eq!(
        before.elapsed(),
        Duration::ZERO,
        "a request waited on the refresh"
    );
    assert_eq!(get(&cache).await.unwrap(), "v1");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(get(&cache).await.unwrap(), "v2");
    assert_eq!(store.calls(), 2, "one background refresh");
}

#[tokio::test(start_paused = true)]
async fn expired_value_is_fetched_again() {
    let store = FakeStore::new("v1", Duration::from_millis(5));
    let cache = CachedSecretStore::new(store.clone(), settings());
    get(&cache).await.unwrap();
    store.set(Ok("v2"));
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(get(&cache).await.unwrap(), "v2");
    assert_eq!(store.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn store_down_serves_stale_until_max_stale_then_fails_then_recovers() {
    let store = FakeStore::new("v1", Duration::from_millis(5));
    let cache = CachedSecretStore::new(store.clone(), settings());
    get(&cache).await.unwrap();
    store.set(Err(down()));
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(
        get(&cache).await.unwrap(),
        "v1",
        "stale value within max_stale"
    );
    let calls = store.calls();
    // Within retry_after the store is not asked again.
    for _ in 0..20 {
        assert_eq!(get(&cache).await.unwrap(), "v1");
    }
    assert_eq!(store.calls(), calls);
    assert!(cache.stats().stale_served >= 21);
    tokio::time::advance(Duration::from_secs(60)).await; // age 121 s > max_stale 120 s
    let err = get(&cache).await.unwrap_err();
    assert!(matches!(err, SecretError::TooStale { .. }), "{err}");
    assert!(err.to_string().contains("max_stale"), "{err}");
    store.set(Ok("v2"));
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(get(&cache).await.unwrap(), "v2", "recovers without restart");
}

#[tokio::test(start_paused = true)]
async fn final_errors_are_not_papered_over() {
    let store = FakeStore::new("v1", Duration::from_millis(5));
    let cache = CachedSecretStore::new(store.clone(), settings());
    get(&cache).await.unwrap();
    store.set(Err(SecretError::AccessDenied {
        id: id(),
        reason: "not authorized".into(),
    }));
    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(matches!(
        get(&cache).await.unwrap_err(),
        SecretError::AccessDenied { .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn first_fetch_error_is_reported_and_retried_after_backoff() {
    let store = FakeStore::new("v1", Duration::from_millis(5));
    store.set(Err(down()));
    let cache = CachedSecretStore::new(store.clone(), settings());
    assert!(matches!(
        get(&cache).await.unwrap_err(),
        SecretError::Unavailable(_)
    ));
    assert!(get(&cache).await.is_err());
    assert_eq!(store.calls(), 1, "backed off");
    store.set(Ok("v1"));
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(get(&cache).await.unwrap(), "v1");
}

#[tokio::test(start_paused = true)]
async fn refetch_after_rejection_is_single_flight() {
    let store = FakeStore::new("old", Duration::from_millis(50));
    let cache = Arc::new(CachedSecretStore::new(store.clone(), settings()));
    let old = cache.fetch(&id()).await.unwrap();
    store.set(Ok("new"));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (c, old) = (cache.clone(), old.clone());
        tasks.push(tokio::spawn(async move {
            c.refetch(&id(), &old)
                .await
                .map(|v| v.expose_secret().to_owned())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "new");
    }
    assert_eq!(
        store.calls(),
        2,
        "one fetch for the rejection, however many callers"
    );
    assert_eq!(get(&cache).await.unwrap(), "new");
    // A late report of the old value gets the new one without a fetch.
    assert_eq!(
        cache.refetch(&id(), &old).await.unwrap().expose_secret(),
        "new"
    );
    assert_eq!(store.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn refetch_never_falls_back_to_the_rejected_value() {
    let store = FakeStore::new("old", Duration::from_millis(5));
    let cache = CachedSecretStore::new(store.clone(), settings());
    let old = cache.fetch(&id()).await.unwrap();
    store.set(Err(down()));
    assert!(cache.refetch(&id(), &old).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn pending_passes_through_uncached() {
    let store = FakeStore::new("cur", Duration::from_millis(5));
    let cache = CachedSecretStore::new(store.clone(), settings());
    assert!(cache.fetch_pending(&id()).await.unwrap().is_none());
    *store.pending.lock() = Some("next".into());
    assert_eq!(
        cache
            .fetch_pending(&id())
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        "next"
    );
}
