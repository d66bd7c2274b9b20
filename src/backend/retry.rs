//! `RetryStore`: wraps any `ObjectStore` and retries `Transient` errors (S3 503 SlowDown,
//! 500s, timeouts, dropped connections, truncated bodies) with exponential backoff and
//! full jitter, within an attempt count and a total deadline.
//!
//! Conditional puts and retries: a put whose response was lost (e.g. a timeout after the
//! server stored the object) is retried; in `Create` mode the retry then fails with
//! `PreconditionFailed` although *our* write succeeded (likewise for `IfMatch`, whose etag
//! changed by our own write). We cannot tell the two cases apart from here without reading
//! the object back, so we report `PreconditionFailed` as is: it is the safe answer for the
//! callers that rely on conditional puts (leases, journal commits), which must then re-read
//! the object and decide — a spurious "lost the race" costs a retry at a higher level,
//! whereas a spurious "won" would let two writers both believe they own something. The
//! error message says that an earlier attempt failed transiently, so logs show the case.

use std::ops::Range;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use super::{BackendError, ObjectMeta, ObjectStore, PutMode, Result};

/// Retry limits. A failed call is retried until `max_attempts` attempts were made or
/// `deadline` has passed since the first attempt began (the last sleep is shortened to end
/// at the deadline, with one more attempt then).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total attempts, including the first (at least 1).
    pub max_attempts: u32,
    /// First backoff; doubles on each retry.
    pub base_delay: Duration,
    /// Upper bound for one sleep.
    pub max_delay: Duration,
    /// Upper bound for the whole call, sleeps included.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            deadline: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// Keep retrying transient failures for up to `io_timeout` (the mount's `--io-timeout`):
    /// the attempt count no longer limits, only the time does.
    pub fn with_io_timeout(io_timeout: Duration) -> Self {
        RetryPolicy {
            max_attempts: u32::MAX,
            deadline: io_timeout,
            ..RetryPolicy::default()
        }
    }

    /// The sleep before retry number `retry` (1-based): full jitter in
    /// `[cap/2, cap]` with `cap = min(max_delay, base * 2^(retry-1))`.
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self.base_delay.saturating_mul(
            1u32.checked_shl(retry.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        let cap = exp.min(self.max_delay);
        let half = cap / 2;
        let spread = (cap - half).as_nanos() as u64;
        let jitter = if spread == 0 {
            0
        } else {
            random_u64() % (spread + 1)
        };
        half + Duration::from_nanos(jitter)
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        // Jitter only spreads load; a clock-derived value is good enough as a fallback.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return u64::from(t) ^ 0x9e37_79b9_7f4a_7c15;
    }
    u64::from_le_bytes(b)
}

/// An `ObjectStore` that retries its inner store's transient failures.
#[derive(Debug)]
pub struct RetryStore<S> {
    inner: S,
    policy: RetryPolicy,
}

impl<S: ObjectStore> RetryStore<S> {
    /// Wrap `inner` with the default policy (6 attempts, 100 ms .. 5 s backoff).
    pub fn new(inner: S) -> Self {
        Self::with_policy(inner, RetryPolicy::default())
    }

    pub fn with_policy(inner: S, mut policy: RetryPolicy) -> Self {
        policy.max_attempts = policy.max_attempts.max(1);
        RetryStore { inner, policy }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// A ranged GET came back shorter than asked. That is right at the end of the object
    /// (ranges are clamped to its size) and wrong anywhere else: a body cut off in transit
    /// (a proxy or server closing early). One HEAD tells the two apart; a cut body is a
    /// transient failure, retried like any other.
    async fn check_short_body(&self, key: &str, r: &Range<u64>, body: Bytes) -> Result<Bytes> {
        let size = self.inner.head(key).await?.size;
        let expected = r.end.min(size).saturating_sub(r.start);
        if (body.len() as u64) < expected {
            return Err(BackendError::Transient(format!(
                "get {key}: truncated body ({} of {expected} bytes)",
                body.len()
            )));
        }
        Ok(body)
    }

    async fn run<T, F, Fut>(&self, op: &str, key: &str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let start = Instant::now();
        let mut attempt = 1u32;
        let mut had_transient = false;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(BackendError::PreconditionFailed(m)) if had_transient => {
                    return Err(BackendError::PreconditionFailed(format!(
                        "{m} (after a transient failure: an earlier attempt may have succeeded)"
                    )));
                }
                Err(e) if e.is_transient() => {
                    had_transient = true;
                    // The last sleep is cut to end at the deadline, so a store that stays
                    // away is given the whole deadline (the io timeout), not less.
                    let remaining = self.policy.deadline.saturating_sub(start.elapsed());
                    let delay = self.policy.delay(attempt).min(remaining);
                    if attempt >= self.policy.max_attempts || remaining < Duration::from_millis(1) {
                        tracing::warn!(op, key, attempts = attempt, error = %e, "giving up");
                        return Err(BackendError::Transient(format!(
                            "{op} {key}: gave up after {attempt} attempts in {:.1?}: {e}",
                            start.elapsed()
                        )));
                    }
                    tracing::warn!(
                        op, key, attempt, delay_ms = delay.as_millis() as u64, error = %e,
                        "transient store error, retrying"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for RetryStore<S> {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        self.run("put", key, || {
            self.inner.put(key, data.clone(), mode.clone())
        })
        .await
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        self.run("get", key, || async {
            let body = self.inner.get(key, range.clone()).await?;
            match &range {
                Some(r) if (body.len() as u64) < r.end - r.start => {
                    self.check_short_body(key, r, body).await
                }
                _ => Ok(body),
            }
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.run("head", key, || self.inner.head(key)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.run("delete", key, || self.inner.delete(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.run("list", prefix, || self.inner.list(prefix)).await
    }

    fn supports_conditional(&self) -> bool {
        self.inner.supports_conditional()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}
