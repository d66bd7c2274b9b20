//! Test-only hooks in the binary (documented in docs/CONFIGURATION.md under "Test-only
//! environment"), so end-to-end tests can make a mount slow or its store unreachable
//! without a fault-injecting backend:
//!
//! - `CRYPTBUCKET_TEST_THROTTLE_BPS=N`: uploads take at least size/N seconds.
//! - `CRYPTBUCKET_TEST_FAIL_FILE=PATH`: while PATH exists, every store request fails as
//!   "unreachable" (after the retry layer, so the failure is seen at once).
//!
//! Neither is read unless set; they never weaken encryption or integrity.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use cryptbucket::backend::{BackendError, ObjectMeta, ObjectStore, PutMode, Result};

#[derive(Debug)]
pub struct HookedStore {
    inner: Arc<dyn ObjectStore>,
    bytes_per_sec: Option<u64>,
    fail_file: Option<PathBuf>,
}

/// Wrap `inner` if a test hook is set in the environment.
pub fn wrap(inner: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
    let bytes_per_sec = std::env::var("CRYPTBUCKET_TEST_THROTTLE_BPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n: &u64| *n > 0);
    let fail_file = std::env::var_os("CRYPTBUCKET_TEST_FAIL_FILE").map(PathBuf::from);
    if bytes_per_sec.is_none() && fail_file.is_none() {
        return inner;
    }
    tracing::warn!(
        "test hooks active (throttle {bytes_per_sec:?} B/s, fail file {fail_file:?}); not for real use"
    );
    Arc::new(HookedStore {
        inner,
        bytes_per_sec,
        fail_file,
    })
}

impl HookedStore {
    fn check(&self) -> Result<()> {
        match &self.fail_file {
            Some(f) if f.exists() => Err(BackendError::Transient(format!(
                "injected by CRYPTBUCKET_TEST_FAIL_FILE ({})",
                f.display()
            ))),
            _ => Ok(()),
        }
    }

    async fn throttle(&self, len: usize) {
        if let Some(bps) = self.bytes_per_sec {
            let secs = len as f64 / bps as f64;
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        }
    }
}

#[async_trait]
impl ObjectStore for HookedStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        self.check()?;
        self.throttle(data.len()).await;
        self.inner.put(key, data, mode).await
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        self.check()?;
        self.inner.get(key, range).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.check()?;
        self.inner.head(key).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.check()?;
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.check()?;
        self.inner.list(prefix).await
    }

    fn supports_conditional(&self) -> bool {
        self.inner.supports_conditional()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}
