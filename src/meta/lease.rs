//! The writer lease (`lock` object): one writer at a time per volume. Taken with a
//! conditional put, renewed in the background, released at unmount; every commit checks
//! that it is still held, so a writer that lost it (a laptop that slept) cannot overwrite
//! a newer writer's metadata.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use super::{MetaError, Result};
use crate::backend::{BackendError, ObjectStore, PutMode};
use crate::crypto::{RecordKind, VolumeKeys};

pub const LEASE_KEY: &str = "lock";
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);
/// How often a holder renews: three tries within one lifetime.
pub const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(20);

/// What the lease object says (sealed as a lease record).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Stable id of the holder's local state (one per cache directory).
    pub holder: String,
    pub host: String,
    pub pid: u32,
    /// Unix seconds.
    pub since: u64,
    pub expires: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown host".into())
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC` (a lease read on another machine: UTC avoids
/// guessing its time zone; no date crate for one message).
pub fn utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm, proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A point in time for a message: the date, and how far from now.
fn when(secs: u64) -> String {
    let now = now();
    if secs <= now {
        format!("{} ({} s ago)", utc(secs), now - secs)
    } else {
        format!("{} (in {} s)", utc(secs), secs - now)
    }
}

/// Where this process stands with the writer lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Held and renewed in time.
    Held,
    /// Held, but the last renewal that reached the store has run out (store unreachable?).
    Expired,
    /// Taken over by another mount: final.
    Lost,
    /// Never taken (a read-only mount).
    NotTaken,
}

/// The lease as `cryptbucket status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    pub state: LeaseState,
    /// Who holds it (this process, when taken).
    pub info: LeaseInfo,
    /// Unix seconds of the last write of the lease object that reached the store.
    pub renewed: Option<u64>,
    /// The expiry in that write (what other mounts see), unix seconds.
    pub expires: Option<u64>,
}

pub struct Lease {
    store: Arc<dyn ObjectStore>,
    keys: Arc<VolumeKeys>,
    rt: Handle,
    info: Mutex<LeaseInfo>,
    etag: Mutex<Option<String>>,
    ttl: Duration,
    lost: AtomicBool,
    /// False for a read-only mount's placeholder.
    taken: bool,
    /// (when, expiry written) of the last successful write of the lease object.
    written: Mutex<Option<(u64, u64)>>,
}

impl Lease {
    /// Take the lease for `holder`, or refuse with a message naming the current holder.
    /// A lease held by the same `holder` (this cache directory, after a crash) is taken
    /// over; an expired one only with `break_expired`.
    pub fn acquire(
        store: Arc<dyn ObjectStore>,
        keys: Arc<VolumeKeys>,
        rt: Handle,
        holder: &str,
        ttl: Duration,
        break_expired: bool,
    ) -> Result<Lease> {
        if !store.supports_conditional() {
            tracing::warn!(
                "{} does not honour conditional writes: the writer lease cannot be enforced, so only one machine may mount this volume at a time",
                store.describe()
            );
        }
        let t = now();
        let info = LeaseInfo {
            holder: holder.to_string(),
            host: hostname(),
            pid: std::process::id(),
            since: t,
            expires: t + ttl.as_secs(),
        };
        let lease = Lease {
            store,
            keys,
            rt,
            info: Mutex::new(info),
            etag: Mutex::new(None),
            ttl,
            lost: AtomicBool::new(false),
            taken: true,
            written: Mutex::new(None),
        };
        for _ in 0..5 {
            let mode = match lease.current()? {
                None => PutMode::Create,
                Some((cur, etag)) => {
                    let expired = cur.as_ref().is_none_or(|c| c.expires < now());
                    let ours = cur.as_ref().is_some_and(|c| c.holder == holder);
                    if !(ours || (expired && break_expired)) {
                        return Err(MetaError::Refused(refusal(cur.as_ref(), expired)));
                    }
                    if let (Some(c), false) = (cur.as_ref(), ours) {
                        tracing::warn!(
                            "breaking the expired writer lease of {} (pid {})",
                            c.host,
                            c.pid
                        );
                    }
                    PutMode::IfMatch(etag)
                }
            };
            match lease.write(mode) {
                Ok(()) => return Ok(lease),
                Err(MetaError::Store(BackendError::PreconditionFailed(_))) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(MetaError::Refused(
            "another process keeps changing the writer lease; try again".into(),
        ))
    }

    /// No lease at all, for a read-only mount: never renewed, released or held.
    pub fn not_held(store: Arc<dyn ObjectStore>, keys: Arc<VolumeKeys>, rt: Handle) -> Lease {
        Lease {
            store,
            keys,
            rt,
            info: Mutex::new(LeaseInfo {
                holder: String::new(),
                host: hostname(),
                pid: std::process::id(),
                since: now(),
                expires: 0,
            }),
            etag: Mutex::new(None),
            ttl: Duration::ZERO,
            lost: AtomicBool::new(true),
            taken: false,
            written: Mutex::new(None),
        }
    }

    /// Whether this mount holds the writer lease (false for read-only mounts).
    pub fn is_held(&self) -> bool {
        !self.lost.load(Ordering::SeqCst)
    }

    /// The current lease object, if any: (its contents if they open, its etag).
    fn current(&self) -> Result<Option<(Option<LeaseInfo>, String)>> {
        let meta = match self.rt.block_on(self.store.head(LEASE_KEY)) {
            Ok(m) => m,
            Err(BackendError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let sealed = match self.rt.block_on(self.store.get(LEASE_KEY, None)) {
            Ok(b) => b,
            Err(BackendError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let info = self
            .keys
            .open_record(RecordKind::Lease, &sealed)
            .ok()
            .and_then(|p| serde_json::from_slice::<LeaseInfo>(&p).ok());
        Ok(Some((info, meta.etag.unwrap_or_default())))
    }

    fn write(&self, mode: PutMode) -> Result<()> {
        let info = self.info.lock().clone();
        let plain =
            serde_json::to_vec(&info).map_err(|e| MetaError::Corrupt(format!("lease: {e}")))?;
        let sealed = self.keys.seal_record(RecordKind::Lease, &plain)?;
        let meta = self
            .rt
            .block_on(self.store.put(LEASE_KEY, Bytes::from(sealed), mode))?;
        *self.etag.lock() = meta.etag;
        *self.written.lock() = Some((now(), info.expires));
        Ok(())
    }

    /// For `cryptbucket status`: judged from what last reached the store.
    pub fn status(&self) -> LeaseStatus {
        let written = *self.written.lock();
        let state = if !self.taken {
            LeaseState::NotTaken
        } else if self.lost.load(Ordering::SeqCst) {
            LeaseState::Lost
        } else if written.is_none_or(|(_, exp)| exp < now()) {
            LeaseState::Expired
        } else {
            LeaseState::Held
        };
        LeaseStatus {
            state,
            info: self.info(),
            renewed: written.map(|w| w.0),
            expires: written.map(|w| w.1),
        }
    }

    /// Extend the lease. Losing it (someone else took it) is final for this mount.
    ///
    /// A lease that ran out while the store was unreachable is renewed too: the conditional
    /// put below fails if anyone took it over meanwhile (`--break-lease`), and otherwise
    /// nobody wrote since, so carrying on is safe. (Refusing here would stop a mount from
    /// ever committing again after an outage longer than the lease lifetime.)
    pub fn renew(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            return self.check();
        }
        // The record carries the new expiry; it counts for fencing only once the store has
        // it (a failed renewal must not extend what `check` allows).
        let before = std::mem::replace(&mut self.info.lock().expires, now() + self.ttl.as_secs());
        let mode = match self.etag.lock().clone() {
            Some(e) if self.store.supports_conditional() => PutMode::IfMatch(e),
            _ => PutMode::Overwrite,
        };
        let res = self.write(mode);
        if res.is_err() {
            self.info.lock().expires = before;
        }
        match res {
            Ok(()) => Ok(()),
            Err(MetaError::Store(BackendError::PreconditionFailed(_))) => {
                self.lost.store(true, Ordering::SeqCst);
                tracing::error!("the writer lease was taken by another mount: no more changes will be written to the store");
                Err(MetaError::Refused(
                    "the writer lease was taken by another mount".into(),
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// Fence for commits: refuse once the lease is lost or has run out unrenewed.
    pub fn check(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(MetaError::Refused(
                "this mount lost its writer lease; its changes are kept locally but not written to the store".into(),
            ));
        }
        if self.info.lock().expires < now() {
            return Err(MetaError::Refused(
                "this mount's writer lease expired before it could be renewed (store unreachable?)"
                    .into(),
            ));
        }
        Ok(())
    }

    pub fn info(&self) -> LeaseInfo {
        self.info.lock().clone()
    }

    /// Renew the lease every `every` on a thread of its own until the returned guard is
    /// dropped: for long work after (or without) a serving loop that renews it, such as a
    /// final flush at unmount or `gc` of an unmounted volume. Drop the guard before
    /// `release`.
    pub fn renew_in_background(self: &Arc<Self>, every: Duration) -> Renewer {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let lease = self.clone();
        let run = move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                if let Err(e) = lease.renew() {
                    tracing::warn!("could not renew the writer lease: {e}");
                }
            }
        };
        let handle = match std::thread::Builder::new().name("lease".into()).spawn(run) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!("cannot start renewing the writer lease: {e}");
                None
            }
        };
        Renewer {
            stop: Some(tx),
            handle,
        }
    }

    /// Give the lease up (at unmount).
    pub fn release(&self) {
        if self.lost.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = self.rt.block_on(self.store.delete(LEASE_KEY)) {
            tracing::warn!("could not release the writer lease: {e}");
        }
    }
}

/// Keeps a lease renewed while it lives (`Lease::renew_in_background`).
pub struct Renewer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Renewer {
    fn drop(&mut self) {
        // Closing the channel wakes the thread at once; no renewal starts after the join.
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn refusal(cur: Option<&LeaseInfo>, expired: bool) -> String {
    match (cur, expired) {
        (Some(c), false) => format!(
            "the volume is already mounted by {} (pid {}) since {}; its writer lease is valid until {}. Unmount it there first (or mount with --read-only)",
            c.host, c.pid, when(c.since), when(c.expires)
        ),
        (Some(c), true) => format!(
            "the volume's writer lease, held by {} (pid {}) since {}, expired at {}: if that mount is gone, mount with --break-lease",
            c.host, c.pid, when(c.since), when(c.expires)
        ),
        (None, _) => "the volume's lease object cannot be read (damaged or from another key): if no other mount is running, mount with --break-lease".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_764_574_542), "2025-12-01 07:35:42 UTC");
        assert_eq!(utc(4_107_542_399), "2100-02-28 23:59:59 UTC");
    }
}
