//! The control socket of a live mount: a Unix socket next to the daemon's pid file that
//! answers one request per connection with one JSON object: `status` (for `cryptbucket
//! status`), `sync` (`cryptbucket sync`) and `gc` (`cryptbucket gc MOUNTPOINT`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use cryptbucket::data::CacheStats;
use cryptbucket::gc::GcReport;
use cryptbucket::meta::lease::{Lease, LeaseState, LeaseStatus};
use cryptbucket::vfs::Vfs;

use super::metrics::{CounterSnapshot, Counters};
use super::mount::pid_file;

/// The socket of the mount at `mnt` (a canonical path).
pub fn socket_path(mnt: &Path) -> PathBuf {
    pid_file(mnt).with_extension("sock")
}

/// The mountpoint `m` (made absolute) and its control socket, or an error saying it is not
/// one of this user's live mounts.
pub fn socket_of(m: &Path) -> Result<(PathBuf, PathBuf)> {
    let mnt =
        std::fs::canonicalize(m).with_context(|| format!("{}: no such directory", m.display()))?;
    let sock = socket_path(&mnt);
    if !sock.exists() {
        bail!(
            "{} is not a cryptbucket mount of this user (no control socket {})",
            mnt.display(),
            sock.display()
        );
    }
    Ok((mnt, sock))
}

/// What does not change while mounted.
#[derive(Debug, Clone)]
pub struct Info {
    pub mountpoint: PathBuf,
    pub store: String,
    pub volume_id: String,
    pub cache_dir: PathBuf,
    pub log: Option<PathBuf>,
    /// Seconds since the epoch when the final flush after unmount stops retrying (0: not
    /// unmounting); set by the mount loop.
    pub flush_until: Arc<std::sync::atomic::AtomicU64>,
}

/// Every request to the store has failed for a while.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreFailing {
    pub for_secs: u64,
    /// The last error.
    pub error: String,
}

/// The answer to `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub mountpoint: PathBuf,
    pub store: String,
    pub volume_id: String,
    pub pid: u32,
    pub cache_dir: PathBuf,
    pub log: Option<PathBuf>,
    /// Seconds since the epoch.
    pub started: u64,
    pub uptime_secs: u64,
    pub open_files: usize,
    /// Bytes written and not yet in the store (staged on the cache disk).
    pub dirty_bytes: u64,
    /// Files with staged data not yet uploaded.
    #[serde(default)]
    pub files_waiting: usize,
    /// Chunks queued for upload or being uploaded.
    #[serde(default)]
    pub uploads_queued: u64,
    /// Bytes of staging files on the cache disk (sealed; includes record overhead).
    #[serde(default)]
    pub staged_bytes: u64,
    /// Metadata changes not yet committed to the store.
    pub uncommitted_changes: bool,
    /// Seconds since the epoch of the last commit that reached the store (None: not yet).
    pub last_commit: Option<f64>,
    pub backend: BackendStatus,
    /// (Defaults: answers of a daemon older than these fields still parse.)
    #[serde(default)]
    pub cache: CacheStatus,
    #[serde(default)]
    pub lease: LeaseReport,
    /// Set while every request to the store fails.
    #[serde(default)]
    pub store_failing: Option<StoreFailing>,
    /// After unmount: when the final flush stops retrying (seconds since the epoch); the
    /// data then stays staged in the cache directory and is uploaded at the next mount.
    #[serde(default)]
    pub final_flush_until: Option<u64>,
}

/// The disk cache of sealed chunks and how often reads are answered locally.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CacheStatus {
    /// Bytes of chunks in the disk cache.
    pub bytes: u64,
    /// Its bound (`--cache-size`).
    pub limit: u64,
    /// Chunk reads answered from the memory or disk cache.
    pub hits: u64,
    /// Chunk reads that needed the store.
    pub misses: u64,
    /// hits / (hits + misses); None before the first read.
    pub hit_rate: Option<f64>,
}

impl From<CacheStats> for CacheStatus {
    fn from(c: CacheStats) -> Self {
        let reads = c.hits + c.misses;
        CacheStatus {
            bytes: c.disk_bytes,
            limit: c.disk_limit,
            hits: c.hits,
            misses: c.misses,
            hit_rate: (reads > 0).then(|| c.hits as f64 / reads as f64),
        }
    }
}

/// The writer lease as this mount sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseReport {
    /// `held`, `expired` (not renewed in time: store unreachable?), `lost` (another mount
    /// took it) or `none` (read-only mount).
    pub state: String,
    /// The holder's id (one per cache directory), host and pid; None when not taken.
    pub holder: Option<String>,
    pub host: Option<String>,
    pub pid: Option<u32>,
    /// Seconds since the epoch: when it was taken, last renewed in the store, and when that
    /// renewal runs out.
    pub since: Option<u64>,
    pub last_renewed: Option<u64>,
    pub expires: Option<u64>,
}

impl From<LeaseStatus> for LeaseReport {
    fn from(l: LeaseStatus) -> Self {
        let state = match l.state {
            LeaseState::Held => "held",
            LeaseState::Expired => "expired",
            LeaseState::Lost => "lost",
            LeaseState::NotTaken => "none",
        };
        let taken = l.state != LeaseState::NotTaken;
        LeaseReport {
            state: state.into(),
            holder: taken.then(|| l.info.holder.clone()),
            host: taken.then(|| l.info.host.clone()),
            pid: taken.then_some(l.info.pid),
            since: taken.then_some(l.info.since),
            last_renewed: l.renewed,
            expires: l.expires,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackendStatus {
    pub requests: u64,
    pub errors: u64,
    pub bytes_uploaded: u64,
    pub bytes_downloaded: u64,
    pub uploads_in_flight: u64,
}

impl From<CounterSnapshot> for BackendStatus {
    fn from(c: CounterSnapshot) -> Self {
        BackendStatus {
            requests: c.requests,
            errors: c.errors,
            bytes_uploaded: c.bytes_uploaded,
            bytes_downloaded: c.bytes_downloaded,
            uploads_in_flight: c.uploads_in_flight,
        }
    }
}

struct Server {
    info: Info,
    vfs: Arc<Vfs>,
    counters: Arc<Counters>,
    lease: Arc<Lease>,
    started: SystemTime,
    since: Instant,
}

impl Server {
    fn status(&self) -> Status {
        let s = self.vfs.stats();
        Status {
            mountpoint: self.info.mountpoint.clone(),
            store: self.info.store.clone(),
            volume_id: self.info.volume_id.clone(),
            pid: std::process::id(),
            cache_dir: self.info.cache_dir.clone(),
            log: self.info.log.clone(),
            started: self
                .started
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            uptime_secs: self.since.elapsed().as_secs(),
            open_files: s.open_files,
            dirty_bytes: s.dirty_bytes,
            files_waiting: s.files_waiting,
            uploads_queued: s.uploads_in_flight,
            staged_bytes: s.staged_bytes,
            uncommitted_changes: s.uncommitted,
            last_commit: s.last_commit_ns.map(|ns| ns as f64 / 1e9),
            backend: self.counters.snapshot().into(),
            cache: s.cache.into(),
            lease: self.lease.status().into(),
            store_failing: self.counters.failing().map(|(d, error)| StoreFailing {
                for_secs: d.as_secs(),
                error,
            }),
            final_flush_until: match self
                .info
                .flush_until
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                0 => None,
                t => Some(t),
            },
        }
    }

    /// `gc MIN_AGE_SECS DRY(0|1)`: collect garbage with this mount's view of the references.
    fn gc(&self, line: &str) -> String {
        let mut it = line.split_whitespace().skip(1);
        let min_age = it.next().and_then(|v| v.parse::<u64>().ok());
        let dry = it.next() == Some("1");
        let Some(min_age) = min_age else {
            return "{\"error\":\"usage: gc MIN_AGE_SECS DRY\"}".into();
        };
        match self.vfs.collect_garbage(Duration::from_secs(min_age), dry) {
            Ok(r) => serde_json::to_string(&r).unwrap_or_else(|e| error_json(&e.to_string())),
            Err(e) => error_json(&format!("gc failed: {e}")),
        }
    }

    /// `sync`: everything written so far reaches the store, as fsync of every file plus a
    /// commit. Linux sends FUSE_SYNCFS only to virtiofs, so syncfs(2) never gets here.
    fn sync(&self) -> String {
        let t = Instant::now();
        match self.vfs.sync_all() {
            Ok(()) => serde_json::json!({
                "synced": true,
                "secs": t.elapsed().as_secs_f64(),
                "read_only": self.vfs.is_read_only(),
            })
            .to_string(),
            Err(e) => error_json(&format!("sync failed (the data stays staged): {e}")),
        }
    }

    fn answer(&self, stream: UnixStream) -> std::io::Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.set_write_timeout(Some(Duration::from_secs(2)))?;
        let mut line = String::new();
        BufReader::new(stream.try_clone()?)
            .take(256)
            .read_line(&mut line)?;
        let mut out = stream;
        let reply = match line.trim() {
            "status" => serde_json::to_string(&self.status()).map_err(std::io::Error::other)?,
            "sync" => self.sync(),
            l if l.starts_with("gc ") => self.gc(l),
            other => format!("{{\"error\":\"unknown request {:?}\"}}", other),
        };
        out.write_all(reply.as_bytes())?;
        out.write_all(b"\n")
    }
}

/// Listen on the mount's control socket in a background thread.
pub fn start(info: Info, vfs: Arc<Vfs>, counters: Arc<Counters>, lease: Arc<Lease>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(&info.mountpoint);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot create control socket {}", path.display()))?;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    let server = Arc::new(Server {
        info,
        vfs,
        counters,
        lease,
        started: SystemTime::now(),
        since: Instant::now(),
    });
    std::thread::Builder::new()
        .name("cb-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    // One thread per request: a sync or gc can take minutes, and `status`
                    // (unmount's progress bar) must still answer meanwhile.
                    Ok(s) => {
                        let server = server.clone();
                        let spawned = std::thread::Builder::new()
                            .name("cb-control-req".into())
                            .spawn(move || {
                                if let Err(e) = server.answer(s) {
                                    tracing::debug!("control socket: {e}");
                                }
                            });
                        if let Err(e) = spawned {
                            tracing::warn!("control socket: cannot start a thread: {e}");
                        }
                    }
                    Err(e) => tracing::debug!("control socket accept: {e}"),
                }
            }
        })
        .context("cannot start the control thread")?;
    Ok(())
}

fn error_json(msg: &str) -> String {
    serde_json::json!({ "error": msg }).to_string()
}

/// Ask the mount listening on `sock` to collect garbage (see `cryptbucket gc`).
pub fn gc(sock: &Path, min_age_secs: u64, dry_run: bool) -> Result<GcReport> {
    let mut s = UnixStream::connect(sock)
        .with_context(|| format!("cannot reach the mount's control socket {}", sock.display()))?;
    // Listing and deleting a large bucket takes a while.
    s.set_read_timeout(Some(Duration::from_secs(3600)))?;
    writeln!(s, "gc {min_age_secs} {}", u8::from(dry_run))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .context("no answer on the control socket")?;
    let v: serde_json::Value =
        serde_json::from_str(reply.trim()).context("unreadable answer on the control socket")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("the mount answered: {e}");
    }
    serde_json::from_value(v).context("unreadable gc report from the mount")
}

/// What a mount answered to `sync`.
#[derive(Debug, Clone, Deserialize)]
pub struct SyncReply {
    pub secs: f64,
    #[serde(default)]
    pub read_only: bool,
}

/// Ask the mount listening on `sock` to write everything to the store; returns once all
/// staged data is uploaded and a commit referencing it is in the store (or it failed).
pub fn sync(sock: &Path) -> Result<SyncReply> {
    let mut s = UnixStream::connect(sock)
        .with_context(|| format!("cannot reach the mount's control socket {}", sock.display()))?;
    // No deadline: the mount gives up by itself (--io-timeout) when the store is down, and
    // a large backlog legitimately takes long to upload.
    s.set_read_timeout(None)?;
    s.write_all(b"sync\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .context("no answer on the control socket (did the mount stop?)")?;
    let v: serde_json::Value =
        serde_json::from_str(reply.trim()).context("unreadable answer on the control socket")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("{e}");
    }
    serde_json::from_value(v).context("unreadable sync answer from the mount")
}

/// Ask the mount listening on `sock` for its status.
pub fn query(sock: &Path) -> Result<Status> {
    let mut s = UnixStream::connect(sock)
        .with_context(|| format!("cannot reach the mount's control socket {}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"status\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .context("no answer on the control socket")?;
    if reply.trim().is_empty() {
        bail!("empty answer on the control socket {}", sock.display());
    }
    serde_json::from_str(reply.trim()).context("unreadable answer on the control socket")
}
