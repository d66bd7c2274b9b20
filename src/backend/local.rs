//! Local-directory `ObjectStore`: each object is a file under one directory (key `a/b/c`
//! -> `DIR/a/b/c`). It needs nothing installed, so it is the default for a first try and
//! for tests.
//!
//! Durability: a put writes a temp file (`.tmp-…`) in the target's directory, fsyncs it,
//! renames it into place and fsyncs the directory, so a reader sees the old or the new
//! object, never a torn one.
//!
//! Concurrency: every mutation (put, delete) holds an exclusive `flock` on `DIR/.tmp-lock`
//! (opened afresh per call, so it excludes other threads of this process as well as other
//! processes on the same host). Conditional puts check and rename under that lock, which
//! makes `Create` and `IfMatch` atomic with respect to every other writer that uses this
//! type. Reads take no lock; the rename makes them atomic anyway.
//!
//! Etags: `<mtime-ns>-<size>-<inode>` in hex. A put stamps its temp file with an explicit
//! nanosecond mtime that is strictly increasing within the process, so two puts never get
//! the same tag even on filesystems with coarse timestamps, and head/list stay cheap (no
//! hashing).
//!
//! Limits: a key cannot be both an object and a "directory" of other objects (`a` and
//! `a/b`); such a put fails with `Other`. Temp files left by a crash are skipped by `list`
//! and are harmless; nothing deletes them yet.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

use super::memory::resolve_range;
use super::{BackendError, ObjectMeta, ObjectStore, PutMode, Result};

const TMP_PREFIX: &str = ".tmp-";
const LOCK_NAME: &str = ".tmp-lock";
/// Objects at least this big leave the page cache once written and synced: their pages
/// hold ciphertext the mount's own caches already keep as plaintext, and recycling them at
/// once spares the kernel allocating (on a VM: the host backing) fresh memory for every chunk.
const DROP_CACHE_MIN: usize = 256 << 10;

/// Drop the clean page-cache pages of a just-synced file of `len` bytes (advice only: errors
/// are ignored).
fn drop_cached(f: &File, len: usize) {
    if len >= DROP_CACHE_MIN {
        // SAFETY: posix_fadvise only reads its integer arguments; `f` is an open file.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
}

/// A store whose objects are files under one directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Open an existing directory. `StoreNotFound` if it is missing or not a directory.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        match fs::metadata(dir) {
            Ok(m) if m.is_dir() => Ok(Self {
                root: dir.to_path_buf(),
            }),
            Ok(_) => Err(BackendError::StoreNotFound(format!(
                "{} is not a directory",
                dir.display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BackendError::StoreNotFound(
                format!("directory {} does not exist", dir.display()),
            )),
            Err(e) => Err(io_err(dir, e)),
        }
    }

    /// Create the directory (and its parents) if needed, then open it.
    pub fn create(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        Self::open(dir)
    }

    /// The directory this store keeps its objects in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Path) -> Result<T> + Send + 'static,
    {
        // On a multi-threaded runtime the file I/O runs right here (block_in_place): the
        // upload pool calls from blocking threads already, where a hop to yet another
        // thread cost two context switches per object.
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi {
            return tokio::task::block_in_place(|| f(&self.root));
        }
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || f(&root))
            .await
            .map_err(|e| BackendError::Other(format!("local store task failed: {e}")))?
    }
}

/// Keys must be relative, '/'-separated, without empty, `.`/`..` or temp-like components.
fn validate_key(key: &str) -> Result<()> {
    let bad = key.is_empty()
        || key.split('/').any(|c| {
            c.is_empty() || c == "." || c == ".." || c.starts_with(TMP_PREFIX) || c.contains('\0')
        });
    if bad {
        Err(BackendError::Other(format!(
            "invalid object key {key:?} for a local store"
        )))
    } else {
        Ok(())
    }
}

fn io_err(path: &Path, e: io::Error) -> BackendError {
    match e.kind() {
        io::ErrorKind::PermissionDenied => {
            BackendError::AccessDenied(format!("{}: {e}", path.display()))
        }
        _ => BackendError::Other(format!("{}: {e}", path.display())),
    }
}

/// Errors that mean "no object here" when reading: missing, a directory, or a parent that
/// is a file.
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory
    ) || e.raw_os_error() == Some(libc::ENOTDIR)
        || e.raw_os_error() == Some(libc::EISDIR)
}

fn read_err(key: &str, path: &Path, e: io::Error) -> BackendError {
    if is_absent(&e) {
        BackendError::NotFound(key.to_string())
    } else {
        io_err(path, e)
    }
}

fn etag_of(m: &fs::Metadata) -> String {
    let ns = (m.mtime() as i128) * 1_000_000_000 + m.mtime_nsec() as i128;
    format!("{:x}-{:x}-{:x}", ns, m.size(), m.ino())
}

fn meta_of(key: &str, m: &fs::Metadata) -> ObjectMeta {
    ObjectMeta {
        key: key.to_string(),
        size: m.size(),
        etag: Some(etag_of(m)),
        modified: m.modified().ok(),
    }
}

/// Metadata of the object file at `path`, `None` if there is no object (a directory counts
/// as no object).
fn stat_object(path: &Path) -> Result<Option<fs::Metadata>> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(Some(m)),
        Ok(_) => Ok(None),
        Err(e) if is_absent(&e) => Ok(None),
        Err(e) => Err(io_err(path, e)),
    }
}

/// A nanosecond timestamp strictly greater than any this process handed out before.
fn unique_mtime() -> SystemTime {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return UNIX_EPOCH + Duration::from_nanos(next),
            Err(p) => prev = p,
        }
    }
}

fn temp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut rnd = [0u8; 6];
    // A failing getrandom only weakens uniqueness across processes; pid + counter remain.
    let _ = getrandom::getrandom(&mut rnd);
    format!(
        "{TMP_PREFIX}{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        hex::encode(rnd)
    )
}

fn fsync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| io_err(dir, e))?;
    f.sync_all().map_err(|e| io_err(dir, e))
}

/// Exclusive advisory lock on `root/.tmp-lock`, released on drop.
struct DirLock(File);

impl DirLock {
    fn acquire(root: &Path) -> Result<Self> {
        let path = root.join(LOCK_NAME);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    BackendError::StoreNotFound(format!(
                        "directory {} does not exist",
                        root.display()
                    ))
                } else {
                    io_err(&path, e)
                }
            })?;
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(DirLock(f));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(io_err(&path, e));
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // SAFETY: as above; closing the file would release the lock too.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// Create the directories between `root` and `dir` (exclusive of root), fsyncing each
/// parent whose entries changed.
fn make_dirs(root: &Path, dir: &Path) -> Result<()> {
    if dir == root {
        return Ok(());
    }
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(BackendError::Other(format!(
                "{} is an object, cannot hold other objects",
                dir.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(dir, e)),
    }
    let parent = dir.parent().unwrap_or(root);
    make_dirs(root, parent)?;
    match fs::create_dir(dir) {
        Ok(()) => fsync_dir(parent),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(dir, e)),
    }
}

/// Remove now-empty directories from `dir` up to (not including) `root`. Best effort.
fn prune_dirs(root: &Path, mut dir: &Path) {
    while dir != root && dir.starts_with(root) {
        if fs::remove_dir(dir).is_err() {
            break;
        }
        match dir.parent() {
            Some(p) => {
                let _ = fsync_dir(p);
                dir = p;
            }
            None => break,
        }
    }
}

fn put_blocking(
    root: &Path,
    key: &str,
    path: &Path,
    data: &[u8],
    mode: &PutMode,
) -> Result<ObjectMeta> {
    // Write and fsync the bytes before taking the lock (the slow part), in the root so
    // no directory pruning can race with it; only check + rename run under the lock.
    let tmp = root.join(temp_name());
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io_err(&tmp, e))?;
        f.write_all(data).map_err(|e| io_err(&tmp, e))?;
        f.set_modified(unique_mtime())
            .map_err(|e| io_err(&tmp, e))?;
        f.sync_all().map_err(|e| io_err(&tmp, e))?;
        drop_cached(&f, data.len());
        Ok(())
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let result = (|| {
        let _lock = DirLock::acquire(root)?;
        let current = stat_object(path)?;
        match (mode, &current) {
            (PutMode::Create, Some(_)) => {
                return Err(BackendError::PreconditionFailed(key.to_string()))
            }
            (PutMode::IfMatch(_), None) => {
                return Err(BackendError::PreconditionFailed(key.to_string()))
            }
            (PutMode::IfMatch(want), Some(m)) if *want != etag_of(m) => {
                return Err(BackendError::PreconditionFailed(key.to_string()))
            }
            _ => {}
        }
        let dir = path.parent().unwrap_or(root);
        make_dirs(root, dir)?;
        if let Ok(m) = fs::metadata(path) {
            if m.is_dir() {
                return Err(BackendError::Other(format!(
                    "{} holds other objects, cannot be an object",
                    path.display()
                )));
            }
        }
        fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
        fsync_dir(dir)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let m = fs::metadata(path).map_err(|e| io_err(path, e))?;
    Ok(meta_of(key, &m))
}

fn get_blocking(key: &str, path: &Path, range: Option<Range<u64>>) -> Result<Bytes> {
    let mut f = File::open(path).map_err(|e| read_err(key, path, e))?;
    let m = f.metadata().map_err(|e| io_err(path, e))?;
    if !m.is_file() {
        return Err(BackendError::NotFound(key.to_string()));
    }
    let r = resolve_range(key, range, m.size())?;
    let len = usize::try_from(r.end - r.start)
        .map_err(|_| BackendError::Other(format!("range too large for {key}")))?;
    if r.start > 0 {
        f.seek(SeekFrom::Start(r.start))
            .map_err(|e| io_err(path, e))?;
    }
    let mut buf = super::bufpool::pool().take(len);
    buf.resize(len, 0);
    f.read_exact(&mut buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            // The file shrank under us (it cannot with rename-based writes, but be safe).
            BackendError::Other(format!("{}: object shorter than expected", path.display()))
        } else {
            read_err(key, path, e)
        }
    })?;
    Ok(super::bufpool::freeze(buf))
}

fn list_blocking(root: &Path, prefix: &str) -> Result<Vec<ObjectMeta>> {
    // Start at the deepest directory the prefix fully names, e.g. "a/b/c" -> "a/b".
    let start_rel = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    let start_ok = start_rel.is_empty() || validate_key(start_rel).is_ok();
    let mut out = Vec::new();
    if start_ok {
        walk(root, start_rel, prefix, &mut out)?;
    } else {
        walk(root, "", prefix, &mut out)?;
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

fn walk(root: &Path, rel: &str, prefix: &str, out: &mut Vec<ObjectMeta>) -> Result<()> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if is_absent(&e) => {
            if rel.is_empty() {
                return Err(BackendError::StoreNotFound(format!(
                    "directory {} does not exist",
                    root.display()
                )));
            }
            return Ok(());
        }
        Err(e) => return Err(io_err(&dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| io_err(&dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(TMP_PREFIX) {
            continue;
        }
        let key = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let ft = match entry.file_type() {
            Ok(ft) => ft,
            Err(e) if is_absent(&e) => continue,
            Err(e) => return Err(io_err(&entry.path(), e)),
        };
        if ft.is_dir() {
            // Descend only if keys below could match the prefix.
            let sub = format!("{key}/");
            if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                walk(root, &key, prefix, out)?;
            }
        } else if ft.is_file() && key.starts_with(prefix) {
            match entry.metadata() {
                Ok(m) => out.push(meta_of(&key, &m)),
                Err(e) if is_absent(&e) => continue, // deleted meanwhile
                Err(e) => return Err(io_err(&entry.path(), e)),
            }
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        self.blocking(move |root| put_blocking(root, &key, &path, &data, &mode))
            .await
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        self.blocking(move |_| get_blocking(&key, &path, range))
            .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        self.blocking(move |_| match stat_object(&path)? {
            Some(m) => Ok(meta_of(&key, &m)),
            None => Err(BackendError::NotFound(key)),
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path_of(key)?;
        self.blocking(move |root| {
            let _lock = DirLock::acquire(root)?;
            match fs::remove_file(&path) {
                Ok(()) => {
                    let dir = path.parent().unwrap_or(root);
                    fsync_dir(dir)?;
                    prune_dirs(root, dir);
                    Ok(())
                }
                Err(e) if is_absent(&e) => Ok(()),
                // Deleting a key that is a "directory" of other objects: no such object.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) && path.is_dir() => Ok(()),
                Err(e) => Err(io_err(&path, e)),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let prefix = prefix.to_string();
        self.blocking(move |root| list_blocking(root, &prefix))
            .await
    }

    fn supports_conditional(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }
}
