//! Opening and creating a volume: store + header + keys + local state + metadata + data,
//! assembled into a ready `Vfs`.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::{BackendError, ObjectStore, PutMode};
use crate::crypto::{self, Argon2Params, CryptoError, KeySource, VolumeKeys, VolumeParams};
use crate::data::ChunkStore;
use crate::meta::lease::{Lease, DEFAULT_LEASE_TTL};
use crate::meta::remote::RemoteMeta;
use crate::meta::{MetaError, SqliteMeta};
use crate::vfs::{now_ns, Vfs, VfsError};

pub const HEADER_KEY: &str = "cryptbucket.json";
pub const HEADER_BACKUP_KEY: &str = "cryptbucket.json.bak";
/// Memory cache of opened blocks.
const BLOCK_CACHE_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{0} already holds a cryptbucket volume; refusing to touch it (mount it, or pick an empty location)")]
    AlreadyExists(String),
    #[error("no cryptbucket volume at {0} (create one with `cryptbucket init`)")]
    NoVolume(String),
    #[error("wrong passphrase or keyfile for {store}: no key slot of this volume accepts it (this volume has: {slots})")]
    WrongKey { store: String, slots: String },
    #[error("the volume header at {0} is damaged or was tampered with: {1}")]
    BadHeader(String, String),
    #[error("store {0}: {1}")]
    Store(String, BackendError),
    #[error("metadata: {0}")]
    Meta(#[from] MetaError),
    #[error("{0}")]
    Crypto(#[from] CryptoError),
    #[error("{0}")]
    Vfs(#[from] VfsError),
    #[error("local state in {0}: {1}")]
    Local(PathBuf, std::io::Error),
    #[error("the cache directory {0} is in use by another cryptbucket mount")]
    CacheBusy(PathBuf),
    #[error("{0}")]
    Kms(String),
    #[error("the volume header in {0} changed while this command was editing it (another `key` or `passwd` command?); nothing was written: run the command again")]
    HeaderChanged(String),
}

pub type Result<T> = std::result::Result<T, VolumeError>;

/// Options for opening a volume.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Local state directory; default per volume under the XDG cache directory.
    pub cache_dir: Option<PathBuf>,
    /// Take over a writer lease that expired (its holder is gone).
    pub break_lease: bool,
    pub lease_ttl: std::time::Duration,
    /// Take no writer lease and refuse every change (works while a writer holds the lease).
    pub read_only: bool,
    /// Adopt the store's metadata even if it went back in time, forked, or its journal is
    /// broken (`--accept-store-state`).
    pub accept_store_state: bool,
    /// How long superseded snapshots, segments and unreferenced chunks stay in the store
    /// for readers of an older head.
    pub superseded_grace: std::time::Duration,
    /// Cap on write-back staging bytes on the cache disk (back-pressure beyond it).
    pub staging_limit: u64,
    /// Bound of the disk cache of sealed chunks.
    pub cache_size: u64,
    /// Told how loading the store's metadata advances (a mount from an empty cache dir).
    pub load_progress: Option<crate::meta::LoadProgress>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            cache_dir: None,
            break_lease: false,
            lease_ttl: DEFAULT_LEASE_TTL,
            read_only: false,
            accept_store_state: false,
            superseded_grace: crate::meta::remote::SUPERSEDED_GRACE,
            staging_limit: crate::data::staging::DEFAULT_STAGING_LIMIT,
            cache_size: crate::data::diskcache::DEFAULT_CACHE_SIZE,
            load_progress: None,
        }
    }
}

/// A volume ready to serve: the tokio runtime must outlive the vfs.
pub struct Volume {
    pub vfs: Arc<Vfs>,
    pub lease: Arc<Lease>,
    pub cache_dir: PathBuf,
    pub volume_id: String,
    pub rt: tokio::runtime::Runtime,
    _lock: fs::File,
}

pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .thread_name("cb-io")
        .build()
}

impl Volume {
    /// Unmount: write everything to the store, then give up the writer lease.
    pub fn unmount(self) -> Result<()> {
        self.vfs.shutdown()?;
        self.lease.release();
        Ok(())
    }
}

/// Create a new volume in an empty location of `store`.
pub fn create(
    rt: &tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    params: VolumeParams,
    source: &KeySource,
    kdf: Argon2Params,
) -> Result<String> {
    create_with_ext(rt, store, params, source, kdf, serde_json::Map::new())
}

/// [`create`] with authenticated extension settings in the header (e.g. the SSE mode).
pub fn create_with_ext(
    rt: &tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    params: VolumeParams,
    source: &KeySource,
    kdf: Argon2Params,
    ext: serde_json::Map<String, serde_json::Value>,
) -> Result<String> {
    create_with_id(rt, store, crypto::new_volume_id(), params, source, kdf, ext)
}

/// [`create_with_ext`] with a volume id chosen beforehand (a KMS first slot needs it).
pub fn create_with_id(
    rt: &tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    volume_id: [u8; 16],
    params: VolumeParams,
    source: &KeySource,
    kdf: Argon2Params,
    ext: serde_json::Map<String, serde_json::Value>,
) -> Result<String> {
    let desc = store.describe();
    let st = |e| VolumeError::Store(desc.clone(), e);
    for key in [HEADER_KEY, HEADER_BACKUP_KEY] {
        match rt.block_on(store.head(key)) {
            Ok(_) => return Err(VolumeError::AlreadyExists(desc.clone())),
            Err(BackendError::NotFound(_)) => {}
            Err(e) => return Err(st(e)),
        }
    }
    let (header, keys) = crypto::create_header_with_id(volume_id, params, source, kdf, ext)?;
    match rt.block_on(store.put(HEADER_KEY, Bytes::from(header.clone()), PutMode::Create)) {
        Ok(_) => {}
        Err(BackendError::PreconditionFailed(_)) => return Err(VolumeError::AlreadyExists(desc)),
        Err(e) => return Err(st(e)),
    }
    rt.block_on(store.put(HEADER_BACKUP_KEY, Bytes::from(header), PutMode::Overwrite))
        .map_err(st)?;
    let keys = Arc::new(keys);
    let meta = SqliteMeta::open_in_memory()?;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    meta.init_root(0o755, uid, gid, now_ns())?;
    let remote = RemoteMeta::new(store.clone(), keys.clone(), rt.handle().clone());
    remote.commit(&meta)?;
    Ok(hex::encode(keys.volume_id()))
}

/// Read the header (or its backup), returning its bytes.
fn read_header(rt: &tokio::runtime::Runtime, store: &Arc<dyn ObjectStore>) -> Result<Vec<u8>> {
    let desc = store.describe();
    match rt.block_on(store.get(HEADER_KEY, None)) {
        Ok(b) => Ok(b.to_vec()),
        Err(BackendError::NotFound(_)) => match rt.block_on(store.get(HEADER_BACKUP_KEY, None)) {
            Ok(b) => {
                tracing::warn!(
                    "{HEADER_KEY} is missing from {desc}; using its backup {HEADER_BACKUP_KEY}"
                );
                Ok(b.to_vec())
            }
            Err(BackendError::NotFound(_)) => Err(VolumeError::NoVolume(desc)),
            Err(e) => Err(VolumeError::Store(desc, e)),
        },
        Err(e) => Err(VolumeError::Store(desc, e)),
    }
}

/// The extension settings of the volume in `store` (e.g. its SSE mode), read without a key
/// and so not yet authenticated: opening the volume later checks the header MAC, which
/// covers them. `None` when the store holds no volume.
pub async fn peek_ext(
    store: &dyn ObjectStore,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>> {
    let desc = store.describe();
    let mut bytes = None;
    for key in [HEADER_KEY, HEADER_BACKUP_KEY] {
        match store.get(key, None).await {
            Ok(b) => {
                bytes = Some(b);
                break;
            }
            Err(BackendError::NotFound(_)) => {}
            Err(e) => return Err(VolumeError::Store(desc, e)),
        }
    }
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    let header = crypto::Header::parse(&bytes).map_err(|e| header_error(&desc, &bytes, e))?;
    Ok(Some(header.ext().clone()))
}

/// Unlock the volume's keys with `source`.
pub fn unlock(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    source: &KeySource,
) -> Result<VolumeKeys> {
    let desc = store.describe();
    let header = read_header(rt, store)?;
    crypto::open_header(&header, source).map_err(|e| header_error(&desc, &header, e))
}

/// The volume-level error for a failure to open `header` (read from store `desc`).
pub(crate) fn header_error(desc: &str, header: &[u8], e: CryptoError) -> VolumeError {
    match e {
        CryptoError::WrongKey => {
            let slots = crypto::peek_header(header)
                .map(|h| h.slot_kinds.join(", "))
                .unwrap_or_else(|_| "unknown".into());
            VolumeError::WrongKey {
                store: desc.to_string(),
                slots,
            }
        }
        CryptoError::Tampered(what) | CryptoError::Format(what) => {
            VolumeError::BadHeader(desc.to_string(), what)
        }
        e => e.into(),
    }
}

pub fn default_cache_dir(volume_id: &str) -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("cryptbucket")
        .join(volume_id)
}

fn lock_dir(dir: &Path) -> Result<fs::File> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join("lock"))
        .map_err(|e| VolumeError::Local(dir.to_owned(), e))?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(VolumeError::CacheBusy(dir.to_owned()));
    }
    Ok(f)
}

/// Open an existing volume for mounting, with default options and `cache_dir`.
pub fn open(
    rt: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    source: &KeySource,
    cache_dir: Option<PathBuf>,
) -> Result<Volume> {
    let opts = OpenOptions {
        cache_dir,
        ..OpenOptions::default()
    };
    open_with(rt, store, source, &opts)
}

/// Open an existing volume for mounting: unlock, take the writer lease, bring the local
/// metadata up to the store's head.
pub fn open_with(
    rt: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    source: &KeySource,
    opts: &OpenOptions,
) -> Result<Volume> {
    let keys = Arc::new(unlock(&rt, &store, source)?);
    open_unlocked(rt, store, keys, opts)
}

/// `open_with` for keys already unlocked (a command that also works on the store itself).
pub fn open_unlocked(
    rt: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    keys: Arc<VolumeKeys>,
    opts: &OpenOptions,
) -> Result<Volume> {
    let volume_id = hex::encode(keys.volume_id());
    let cache_dir = opts
        .cache_dir
        .clone()
        .unwrap_or_else(|| default_cache_dir(&volume_id));
    fs::create_dir_all(&cache_dir).map_err(|e| VolumeError::Local(cache_dir.clone(), e))?;
    let cache_dir = fs::canonicalize(&cache_dir).map_err(|e| VolumeError::Local(cache_dir, e))?;
    let _ = fs::set_permissions(
        &cache_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    );
    let lock = lock_dir(&cache_dir)?;
    let meta = Arc::new(SqliteMeta::open(&cache_dir.join("meta.db"))?);
    match meta.get_state("volume_id")? {
        Some(v) if v != volume_id.as_bytes() => {
            return Err(VolumeError::Local(
                cache_dir,
                std::io::Error::other("it belongs to a different volume; pick another --cache-dir"),
            ))
        }
        Some(_) => {}
        None => meta.set_state("volume_id", volume_id.as_bytes())?,
    }
    let holder = match meta.get_state("holder_id")? {
        Some(h) => String::from_utf8_lossy(&h).into_owned(),
        None => {
            let h = crypto::ChunkId::random().to_hex();
            meta.set_state("holder_id", h.as_bytes())?;
            h
        }
    };
    if opts.read_only && meta.has_changes()? {
        return Err(MetaError::Refused(format!(
            "{} holds changes not yet written to the store; mount it read-write once to commit them, or use another --cache-dir",
            cache_dir.display()
        ))
        .into());
    }
    let lease = Arc::new(if opts.read_only {
        Lease::not_held(store.clone(), keys.clone(), rt.handle().clone())
    } else {
        Lease::acquire(
            store.clone(),
            keys.clone(),
            rt.handle().clone(),
            &holder,
            opts.lease_ttl,
            opts.break_lease,
        )?
    });
    let remote = Arc::new(RemoteMeta::new(
        store.clone(),
        keys.clone(),
        rt.handle().clone(),
    ));
    remote.set_accept_store_state(opts.accept_store_state);
    remote.set_grace(opts.superseded_grace);
    if !opts.read_only {
        remote.set_lease(lease.clone());
    }
    meta.set_load_progress(opts.load_progress.clone());
    let opened = remote.open_local(&meta);
    meta.set_load_progress(None);
    let loaded = match opened {
        Ok(l) => l,
        Err(e) => {
            // A refused mount must not leave the volume locked for others.
            if !opts.read_only {
                lease.release();
            }
            return Err(e.into());
        }
    };
    let staging = Arc::new(
        crate::data::Staging::open(&cache_dir.join("staging"), keys.clone(), opts.staging_limit)
            .map_err(|e| VolumeError::Vfs(e.into()))?,
    );
    let disk = crate::data::DiskCache::open(&cache_dir.join("chunks"), opts.cache_size)
        .map_err(|e| VolumeError::Local(cache_dir.join("chunks"), e))?;
    let data = Arc::new(
        ChunkStore::new(store, keys, rt.handle().clone(), BLOCK_CACHE_BYTES)
            .with_disk_cache(Arc::new(disk)),
    );
    // Freshly loaded metadata equals the store's head: nothing to commit until it changes.
    let vfs = Arc::new(Vfs::new(
        meta,
        data,
        remote,
        staging,
        opts.read_only,
        loaded,
    )?);
    // Writes staged before a crash of the previous daemon reach the store now.
    vfs.recover_staged()?;
    Ok(Volume {
        vfs,
        lease,
        cache_dir,
        volume_id,
        rt,
        _lock: lock,
    })
}
