//! `FaultStore`: wraps any `ObjectStore` and makes a deterministic share of its requests
//! misbehave the way real object stores and networks do — 500/503 answers, timeouts,
//! truncated GET bodies, slow answers, lost PUT responses — or fail everything while "down".
//! Used by tests (and by the binary only through the test-only `CRYPTBUCKET_TEST_FAULTS`
//! variable, see docs/CONFIGURATION.md) to check that the retry layer above it hides
//! transient faults and that nothing is lost when the store stays away.
//!
//! Faults are drawn from a seeded generator, so a failing run can be replayed with the
//! same seed (the order of concurrent requests still varies between runs).

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use super::{BackendError, ObjectMeta, ObjectStore, PutMode, Result};

/// What to inject. Rates are probabilities per request in `[0, 1]`; they are tried in the
/// order listed and at most one fault hits a request.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    pub seed: u64,
    /// The request fails before reaching the store with a 500 or 503-like transient error.
    pub error_rate: f64,
    /// The request hangs for `timeout` and then fails as a timeout, without reaching the store.
    pub timeout_rate: f64,
    /// A GET of a byte range returns only part of the body (as a server or proxy that
    /// closes the connection early without the transport noticing).
    pub truncate_rate: f64,
    /// The request is answered correctly after `slow`.
    pub slow_rate: f64,
    /// An unconditional PUT is stored, but its answer is lost (a transient error). Only
    /// unconditional puts: for conditional ones the retry layer documents that the caller
    /// sees `PreconditionFailed` and must re-read, which is a different test.
    pub lost_put_rate: f64,
    pub timeout: Duration,
    pub slow: Duration,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            seed: 1,
            error_rate: 0.0,
            timeout_rate: 0.0,
            truncate_rate: 0.0,
            slow_rate: 0.0,
            lost_put_rate: 0.0,
            timeout: Duration::from_millis(200),
            slow: Duration::from_millis(50),
        }
    }
}

impl FaultConfig {
    /// A mix where `total` of all requests misbehave: 40 % errors, 15 % timeouts, 20 %
    /// truncated bodies (GETs only), 15 % slow answers, 10 % lost put answers.
    pub fn mixed(seed: u64, total: f64) -> Self {
        FaultConfig {
            seed,
            error_rate: total * 0.40,
            timeout_rate: total * 0.15,
            truncate_rate: total * 0.20,
            slow_rate: total * 0.15,
            lost_put_rate: total * 0.10,
            timeout: Duration::from_millis(100),
            slow: Duration::from_millis(30),
        }
    }

    /// Parse `seed=N,rate=F` (a [`FaultConfig::mixed`] share) optionally followed by
    /// single settings `error=F,timeout=F,truncate=F,slow=F,lost_put=F,timeout_ms=N,slow_ms=N`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let mut cfg = FaultConfig::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("fault setting {part:?} is not key=value"))?;
            let f = || {
                v.parse::<f64>()
                    .ok()
                    .filter(|x| (0.0..=1.0).contains(x))
                    .ok_or_else(|| format!("fault setting {k}: {v:?} is not a rate in [0, 1]"))
            };
            let n = || {
                v.parse::<u64>()
                    .map_err(|_| format!("fault setting {k}: {v:?} is not a number"))
            };
            match k {
                "seed" => cfg.seed = n()?,
                "rate" => {
                    let seed = cfg.seed;
                    cfg = FaultConfig::mixed(seed, f()?);
                }
                "error" => cfg.error_rate = f()?,
                "timeout" => cfg.timeout_rate = f()?,
                "truncate" => cfg.truncate_rate = f()?,
                "slow" => cfg.slow_rate = f()?,
                "lost_put" => cfg.lost_put_rate = f()?,
                "timeout_ms" => cfg.timeout = Duration::from_millis(n()?),
                "slow_ms" => cfg.slow = Duration::from_millis(n()?),
                other => return Err(format!("unknown fault setting {other:?}")),
            }
        }
        Ok(cfg)
    }
}

/// What happened to requests so far (for test assertions and reports).
#[derive(Debug, Default)]
pub struct FaultCounters {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub truncated: AtomicU64,
    pub slow: AtomicU64,
    pub lost_puts: AtomicU64,
    /// Requests refused because the store was down.
    pub down: AtomicU64,
}

impl FaultCounters {
    /// Requests that misbehaved in any way but slowness.
    pub fn failed(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
            + self.timeouts.load(Ordering::Relaxed)
            + self.truncated.load(Ordering::Relaxed)
            + self.lost_puts.load(Ordering::Relaxed)
            + self.down.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Error,
    Timeout,
    Truncate,
    Slow,
    LostPut,
}

#[derive(Debug)]
pub struct FaultStore<S> {
    inner: S,
    cfg: FaultConfig,
    rng: Mutex<u64>,
    down: AtomicBool,
    pub counters: FaultCounters,
}

impl<S: ObjectStore> FaultStore<S> {
    pub fn new(inner: S, cfg: FaultConfig) -> Self {
        FaultStore {
            inner,
            rng: Mutex::new(cfg.seed ^ 0x9e37_79b9_7f4a_7c15),
            cfg,
            down: AtomicBool::new(false),
            counters: FaultCounters::default(),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// While down, every request fails with a transient "unreachable" error.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn next_f64(&self) -> f64 {
        // splitmix64: tiny, seedable, good enough to pick faults.
        let mut s = self.rng.lock();
        *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Draw the fault for one request; `Err` when it fails before reaching the store.
    async fn draw(&self, op: &str, key: &str) -> Result<Fault> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        if self.down.load(Ordering::SeqCst) {
            self.counters.down.fetch_add(1, Ordering::Relaxed);
            return Err(BackendError::Transient(format!(
                "{op} {key}: store unreachable (injected outage)"
            )));
        }
        let c = &self.cfg;
        let x = self.next_f64();
        let mut acc = 0.0;
        let mut pick = Fault::None;
        for (rate, f) in [
            (c.error_rate, Fault::Error),
            (c.timeout_rate, Fault::Timeout),
            (c.truncate_rate, Fault::Truncate),
            (c.slow_rate, Fault::Slow),
            (c.lost_put_rate, Fault::LostPut),
        ] {
            acc += rate;
            if x < acc {
                pick = f;
                break;
            }
        }
        match pick {
            Fault::Error => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                let code = if x < c.error_rate / 2.0 {
                    "500 InternalError"
                } else {
                    "503 SlowDown"
                };
                Err(BackendError::Transient(format!(
                    "{op} {key}: {code} (injected)"
                )))
            }
            Fault::Timeout => {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(c.timeout).await;
                Err(BackendError::Transient(format!(
                    "{op} {key}: request timed out (injected)"
                )))
            }
            Fault::Slow => {
                self.counters.slow.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(c.slow).await;
                Ok(Fault::Slow)
            }
            other => Ok(other),
        }
    }
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for FaultStore<S> {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        let fault = self.draw("put", key).await?;
        let res = self.inner.put(key, data, mode.clone()).await;
        if fault == Fault::LostPut && mode == PutMode::Overwrite && res.is_ok() {
            self.counters.lost_puts.fetch_add(1, Ordering::Relaxed);
            return Err(BackendError::Transient(format!(
                "put {key}: connection reset after the upload (injected; the object was stored)"
            )));
        }
        res
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        let fault = self.draw("get", key).await?;
        let ranged = range.is_some();
        let body = self.inner.get(key, range).await?;
        // Whole-object GETs are left intact: nothing but the HTTP layer's Content-Length
        // check could notice, and that check turns a short body into a transient error.
        if fault == Fault::Truncate && ranged && body.len() > 1 {
            self.counters.truncated.fetch_add(1, Ordering::Relaxed);
            let keep = body.len() / 2;
            return Ok(body.slice(..keep));
        }
        Ok(body)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.draw("head", key).await?;
        self.inner.head(key).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.draw("delete", key).await?;
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.draw("list", prefix).await?;
        self.inner.list(prefix).await
    }

    fn supports_conditional(&self) -> bool {
        self.inner.supports_conditional()
    }

    fn describe(&self) -> String {
        format!("{} (with injected faults)", self.inner.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryStore;

    #[tokio::test]
    async fn rates_are_roughly_honoured_and_deterministic() {
        let run = |seed| async move {
            let s = FaultStore::new(
                MemoryStore::new(),
                FaultConfig {
                    seed,
                    error_rate: 0.1,
                    ..Default::default()
                },
            );
            let mut fails = Vec::new();
            for i in 0..2000 {
                fails.push(
                    s.head(&format!("k{i}"))
                        .await
                        .is_err_and(|e| e.is_transient()),
                );
            }
            fails
        };
        let a = run(7).await;
        let n = a.iter().filter(|f| **f).count();
        assert!((120..=280).contains(&n), "{n} of 2000 failed");
        assert_eq!(a, run(7).await, "same seed, same faults");
        assert_ne!(a, run(8).await);
    }

    #[tokio::test]
    async fn truncates_ranged_gets_and_loses_put_answers() {
        let s = FaultStore::new(
            MemoryStore::new(),
            FaultConfig {
                truncate_rate: 1.0,
                ..Default::default()
            },
        );
        s.inner()
            .put("k", Bytes::from(vec![7u8; 100]), PutMode::Overwrite)
            .await
            .unwrap();
        assert_eq!(s.get("k", Some(0..100)).await.unwrap().len(), 50);
        assert_eq!(s.get("k", None).await.unwrap().len(), 100);
        let s = FaultStore::new(
            MemoryStore::new(),
            FaultConfig {
                lost_put_rate: 1.0,
                ..Default::default()
            },
        );
        let r = s
            .put("k", Bytes::from_static(b"x"), PutMode::Overwrite)
            .await;
        assert!(r.is_err_and(|e| e.is_transient()));
        assert_eq!(s.inner().get("k", None).await.unwrap().as_ref(), b"x");
        s.set_down(true);
        assert!(s.head("k").await.is_err_and(|e| e.is_transient()));
        s.set_down(false);
        assert!(s.head("k").await.is_ok());
    }

    #[test]
    fn parses_settings() {
        let c = FaultConfig::parse("seed=9,rate=0.1,slow_ms=5").unwrap();
        assert_eq!(c.seed, 9);
        assert!((c.error_rate - 0.04).abs() < 1e-9);
        assert_eq!(c.slow, Duration::from_millis(5));
        assert!(FaultConfig::parse("rate=2").is_err());
        assert!(FaultConfig::parse("bogus=1").is_err());
    }
}
