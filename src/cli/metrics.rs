//! A counting wrapper around the store, so `cryptbucket status` can report backend requests,
//! errors, bytes moved and uploads in flight without touching the backend layer.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;

use cryptbucket::backend::{BackendError, ObjectMeta, ObjectStore, PutMode, Result};

#[derive(Debug, Default)]
pub struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    bytes_uploaded: AtomicU64,
    bytes_downloaded: AtomicU64,
    uploads_in_flight: AtomicU64,
    /// Milliseconds since the epoch of the first failure since the last success (0: healthy).
    failing_since_ms: AtomicU64,
    last_error: parking_lot::Mutex<String>,
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub requests: u64,
    pub errors: u64,
    pub bytes_uploaded: u64,
    pub bytes_downloaded: u64,
    pub uploads_in_flight: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            bytes_uploaded: self.bytes_uploaded.load(Ordering::Relaxed),
            bytes_downloaded: self.bytes_downloaded.load(Ordering::Relaxed),
            uploads_in_flight: self.uploads_in_flight.load(Ordering::Relaxed),
        }
    }

    fn count<T>(&self, r: &Result<T>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        // A missing object or a lost conditional put is an answer, not a failure.
        match r {
            Err(e)
                if !matches!(
                    e,
                    BackendError::NotFound(_) | BackendError::PreconditionFailed(_)
                ) =>
            {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let _ = self.failing_since_ms.compare_exchange(
                    0,
                    now_ms().max(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                *self.last_error.lock() = e.to_string();
            }
            _ => self.failing_since_ms.store(0, Ordering::Relaxed),
        }
    }

    /// How long every request has been failing (None: the last one succeeded), and the
    /// last error.
    pub fn failing(&self) -> Option<(std::time::Duration, String)> {
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        if since == 0 {
            return None;
        }
        let d = std::time::Duration::from_millis(now_ms().saturating_sub(since));
        Some((d, self.last_error.lock().clone()))
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    pub counters: Arc<Counters>,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        CountingStore {
            inner,
            counters: Arc::new(Counters::default()),
        }
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        let c = &self.counters;
        let len = data.len() as u64;
        c.uploads_in_flight.fetch_add(1, Ordering::Relaxed);
        let r = self.inner.put(key, data, mode).await;
        c.uploads_in_flight.fetch_sub(1, Ordering::Relaxed);
        if r.is_ok() {
            c.bytes_uploaded.fetch_add(len, Ordering::Relaxed);
        }
        c.count(&r);
        r
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        let r = self.inner.get(key, range).await;
        if let Ok(b) = &r {
            let n = b.len() as u64;
            self.counters
                .bytes_downloaded
                .fetch_add(n, Ordering::Relaxed);
        }
        self.counters.count(&r);
        r
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let r = self.inner.head(key).await;
        self.counters.count(&r);
        r
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let r = self.inner.delete(key).await;
        self.counters.count(&r);
        r
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let r = self.inner.list(prefix).await;
        self.counters.count(&r);
        r
    }

    fn supports_conditional(&self) -> bool {
        self.inner.supports_conditional()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}
