//! Write-back staging on local disk: every write to a chunk that is not yet in the bucket is
//! appended, sealed with the local-staging key, to that chunk's staging file before the
//! write is acknowledged. So acknowledged data survives a crash of the daemon (it is
//! replayed and uploaded at the next mount), is never plaintext at rest, and does not have
//! to stay in memory.
//!
//! A staging file is a sequence of frames `len: u32 LE || record`, each record sealed by
//! `VolumeKeys::seal_record(RecordKind::Staging, ..)` (fresh random salt per record, so no
//! nonce is ever reused). Record plaintext (little-endian):
//! `op: u8 || ino: u64 || idx: u64 || seq: u64 || size_after: u64 || mtime: i64 || a: u32 || data`
//! where op 1 = write `data` at offset `a` in the chunk, op 2 = cut the chunk to `a` bytes
//! (also used, with the chunk's current length, to record a new file size). A torn last
//! frame (crash in the middle of an append) fails to open and ends the replay: that write
//! was never acknowledged.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::{DataError, Result};
use crate::crypto::{ChunkId, RecordKind, VolumeKeys, RECORD_OVERHEAD};

const OP_WRITE: u8 = 1;
const OP_CUT: u8 = 2;
const REC_HEAD: usize = 1 + 8 + 8 + 8 + 8 + 8 + 4;

/// Default cap on bytes held in staging files (`--staging-size`).
pub const DEFAULT_STAGING_LIMIT: u64 = 1 << 30;
/// Free space always left on the cache disk: staging waits for uploads instead of filling it.
pub const FREE_SPACE_RESERVE: u64 = 256 << 20;
/// Emptied staging files kept for reuse. Deleting one file and creating another for every
/// small file written made ext4's inode allocator scan its recently freed inodes on every
/// create (a third of the daemon's CPU in an untar); a truncated file keeps its inode.
const POOL_MAX: usize = 256;
/// How long a free-space reading of the cache disk is reused.
const FREE_SPACE_TTL: Duration = Duration::from_millis(20);

/// The staging directory of one volume and its byte accounting.
pub struct Staging {
    dir: PathBuf,
    keys: Arc<VolumeKeys>,
    seq: AtomicU64,
    bytes: AtomicU64,
    limit: u64,
    reserve: u64,
    room: Mutex<()>,
    room_cv: Condvar,
    /// Names of empty staging files ready for reuse (none survive a restart: recovery
    /// deletes every file without a `staged` row).
    pool: Mutex<Vec<String>>,
    /// The last free-space reading and when it was taken.
    free_cache: Mutex<Option<(std::time::Instant, Option<u64>)>>,
}

/// An open staging file of one chunk, appended to by writes.
pub struct StagedFile {
    pub name: String,
    file: File,
    pub len: u64,
}

/// What a staging file says: the operations to replay, and the newest file size and mtime.
pub struct Replay {
    ops: Vec<Op>,
    pub seq: u64,
    pub size_after: u64,
    pub mtime: i64,
}

enum Op {
    Write(u32, Vec<u8>),
    Cut(u32),
}

impl Replay {
    /// Apply the recorded operations on top of the chunk's base content.
    pub fn apply(&self, mut buf: Vec<u8>) -> Vec<u8> {
        for op in &self.ops {
            match op {
                Op::Write(off, data) => {
                    let off = *off as usize;
                    if buf.len() < off + data.len() {
                        buf.resize(off + data.len(), 0);
                    }
                    buf[off..off + data.len()].copy_from_slice(data);
                }
                Op::Cut(n) => buf.truncate(*n as usize),
            }
        }
        buf
    }
}

fn io(path: &Path, e: std::io::Error) -> DataError {
    DataError::Local(format!("{}: {e}", path.display()))
}

impl Staging {
    /// Open (creating) the staging directory `dir`, capped at `limit` bytes.
    pub fn open(dir: &Path, keys: Arc<VolumeKeys>, limit: u64) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let _ = fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        let mut bytes = 0;
        for e in fs::read_dir(dir).map_err(|e| io(dir, e))?.flatten() {
            bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
        // Sequence numbers only order records of one inode; starting from the clock keeps
        // them increasing across restarts too.
        let seq = crate::vfs::now_ns().max(1) as u64;
        Ok(Staging {
            dir: dir.to_owned(),
            keys,
            seq: AtomicU64::new(seq),
            bytes: AtomicU64::new(bytes),
            limit: limit.max(64 << 20),
            reserve: FREE_SPACE_RESERVE,
            room: Mutex::new(()),
            room_cv: Condvar::new(),
            pool: Mutex::new(Vec::new()),
            free_cache: Mutex::new(None),
        })
    }

    /// Bytes in staging files now.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Names of every file in the staging directory.
    pub fn list_files(&self) -> Vec<String> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.flatten()
            .map(|e| String::from_utf8_lossy(e.file_name().as_bytes()).into_owned())
            .collect()
    }

    fn free_space(&self) -> Option<u64> {
        // Asked before every write: a reading a few milliseconds old is as good (the reserve
        // is far larger than what can be written meanwhile) and saves a statfs per write.
        let mut cached = self.free_cache.lock();
        if let Some((at, free)) = *cached {
            if at.elapsed() < FREE_SPACE_TTL {
                return free;
            }
        }
        let free = self.statvfs_free();
        *cached = Some((std::time::Instant::now(), free));
        free
    }

    fn statvfs_free(&self) -> Option<u64> {
        let c = std::ffi::CString::new(self.dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs writes into a zeroed struct we own; `c` is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
    }

    /// Whether `more` bytes fit: under the staging limit and leaving the free-space reserve.
    pub fn has_room(&self, more: u64) -> bool {
        if self.bytes() + more > self.limit {
            return false;
        }
        self.free_space()
            .is_none_or(|free| free >= self.reserve + more)
    }

    /// Whether the cache disk itself is short of space (as opposed to the staging cap).
    pub fn disk_full(&self, more: u64) -> bool {
        self.free_space()
            .is_some_and(|free| free < self.reserve + more)
    }

    /// Back-pressure: wait (up to `max`) for uploads to free staging space.
    pub fn wait_for_room(&self, more: u64, max: Duration) -> bool {
        let mut g = self.room.lock();
        let deadline = std::time::Instant::now() + max;
        while !self.has_room(more) {
            if self.room_cv.wait_until(&mut g, deadline).timed_out() {
                return self.has_room(more);
            }
        }
        true
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Start the staging file of chunk `idx` of inode `ino`.
    pub fn create(&self) -> Result<StagedFile> {
        let pooled = self.pool.lock().pop();
        if let Some(name) = pooled {
            let path = self.path(&name);
            match OpenOptions::new().append(true).open(&path) {
                Ok(file) => return Ok(StagedFile { name, file, len: 0 }),
                Err(e) => tracing::debug!("pooled staging file {}: {e}", path.display()),
            }
        }
        let name = ChunkId::random().to_hex();
        let path = self.path(&name);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        Ok(StagedFile { name, file, len: 0 })
    }

    /// Append one framed record (length, then the sealed `head` + `data`): one buffer,
    /// one copy of the data, one write.
    fn append(&self, f: &mut StagedFile, head: &[u8], data: &[u8]) -> Result<()> {
        let sealed_len = head.len() + data.len() + RECORD_OVERHEAD;
        let len = u32::try_from(sealed_len)
            .map_err(|_| DataError::Local(format!("a staging record of {sealed_len} bytes")))?;
        let mut frame = Vec::with_capacity(4 + sealed_len);
        frame.extend_from_slice(&len.to_le_bytes());
        self.keys
            .seal_record_into(RecordKind::Staging, &[head, data], &mut frame)?;
        debug_assert_eq!(frame.len(), 4 + sealed_len);
        f.file
            .write_all(&frame)
            .map_err(|e| io(&self.path(&f.name), e))?;
        f.len += frame.len() as u64;
        self.bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn record(op: u8, ino: u64, idx: u64, seq: u64, size: u64, mtime: i64, a: u32) -> Vec<u8> {
        let mut p = Vec::with_capacity(REC_HEAD);
        p.push(op);
        p.extend_from_slice(&ino.to_le_bytes());
        p.extend_from_slice(&idx.to_le_bytes());
        p.extend_from_slice(&seq.to_le_bytes());
        p.extend_from_slice(&size.to_le_bytes());
        p.extend_from_slice(&mtime.to_le_bytes());
        p.extend_from_slice(&a.to_le_bytes());
        p
    }

    /// Record a write of `data` at `off` in the chunk; the file is then `size` bytes long.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &self,
        f: &mut StagedFile,
        ino: u64,
        idx: u64,
        off: u32,
        data: &[u8],
        size: u64,
        mtime: i64,
    ) -> Result<()> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let head = Self::record(OP_WRITE, ino, idx, seq, size, mtime, off);
        self.append(f, &head, data)
    }

    /// Record that the chunk is now `len` bytes long and the file `size` bytes.
    pub fn cut(
        &self,
        f: &mut StagedFile,
        ino: u64,
        idx: u64,
        len: u32,
        size: u64,
        mtime: i64,
    ) -> Result<()> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let p = Self::record(OP_CUT, ino, idx, seq, size, mtime, len);
        self.append(f, &p, &[])
    }

    /// [`Staging::cut`] on a staging file no longer held open (a chunk being uploaded): with
    /// `len` its current length, this only records the new file size.
    pub fn cut_closed(
        &self,
        name: &str,
        ino: u64,
        idx: u64,
        len: u32,
        size: u64,
        mtime: i64,
    ) -> Result<()> {
        let path = self.path(name);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        let mut f = StagedFile {
            name: name.to_string(),
            file,
            len: 0,
        };
        self.cut(&mut f, ino, idx, len, size, mtime)
    }

    /// Read back a staging file written for (`ino`, `idx`). Records of another chunk or
    /// that fail authentication end the replay (a torn tail after a crash).
    pub fn load(&self, name: &str, ino: u64, idx: u64) -> Result<Replay> {
        let path = self.path(name);
        let bytes = fs::read(&path).map_err(|e| io(&path, e))?;
        let mut r = Replay {
            ops: Vec::new(),
            seq: 0,
            size_after: 0,
            mtime: 0,
        };
        let mut pos = 0usize;
        while pos + 4 <= bytes.len() {
            let n = u32::from_le_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
                as usize;
            let Some(frame) = bytes.get(pos + 4..pos + 4 + n) else {
                tracing::warn!("staging file {name}: torn last record ignored");
                break;
            };
            let plain = match self.keys.open_record(RecordKind::Staging, frame) {
                Ok(p) if p.len() >= REC_HEAD => p,
                _ => {
                    tracing::warn!(
                        "staging file {name}: unreadable record at {pos}; replay stops there"
                    );
                    break;
                }
            };
            let u64at = |o: usize| {
                let mut a = [0u8; 8];
                a.copy_from_slice(&plain[o..o + 8]);
                u64::from_le_bytes(a)
            };
            if u64at(1) != ino || u64at(9) != idx {
                return Err(DataError::Local(format!(
                    "staging file {name} belongs to another chunk"
                )));
            }
            let seq = u64at(17);
            r.size_after = u64at(25);
            r.mtime = u64at(33) as i64;
            r.seq = r.seq.max(seq);
            let mut a4 = [0u8; 4];
            a4.copy_from_slice(&plain[41..45]);
            let a = u32::from_le_bytes(a4);
            match plain[0] {
                OP_WRITE => r.ops.push(Op::Write(a, plain[REC_HEAD..].to_vec())),
                OP_CUT => r.ops.push(Op::Cut(a)),
                _ => {
                    return Err(DataError::Local(format!(
                        "staging file {name}: unknown record"
                    )))
                }
            }
            pos += 4 + n;
        }
        Ok(r)
    }

    /// Done with a staging file (its contents reached the bucket, or are no longer needed):
    /// emptied and kept for reuse, or deleted when the pool is full.
    pub fn remove(&self, name: &str) {
        let path = self.path(name);
        self.forget_bytes(&path);
        let room = self.pool.lock().len() < POOL_MAX;
        let emptied = room
            && OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(0))
                .is_ok();
        if emptied {
            self.pool.lock().push(name.to_string());
        } else {
            self.unlink(&path);
        }
        self.notify_room();
    }

    /// Delete the emptied files kept for reuse.
    pub fn clear_pool(&self) {
        let names = std::mem::take(&mut *self.pool.lock());
        for name in names {
            self.unlink(&self.path(&name));
        }
    }

    /// Delete a staging file (never reused).
    pub fn delete(&self, name: &str) {
        let path = self.path(name);
        self.forget_bytes(&path);
        self.unlink(&path);
        self.notify_room();
    }

    fn forget_bytes(&self, path: &Path) {
        if let Ok(m) = fs::metadata(path) {
            let _ = self
                .bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_sub(m.len()))
                });
        }
    }

    fn unlink(&self, path: &Path) {
        if let Err(e) = fs::remove_file(path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot delete staging file {}: {e}", path.display());
            }
        }
    }

    fn notify_room(&self) {
        let _g = self.room.lock();
        self.room_cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Cipher, VolumeParams};

    fn keys() -> Arc<VolumeKeys> {
        Arc::new(VolumeKeys::from_parts_for_tests(
            [7; 32],
            [1; 16],
            VolumeParams {
                cipher: Cipher::XChaCha20Poly1305,
                chunk_size: 1 << 20,
                block_size: 1 << 16,
                padding: 0,
            },
        ))
    }

    #[test]
    fn replay_round_trip_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let s = Staging::open(dir.path(), keys(), 0).unwrap();
        let mut f = s.create().unwrap();
        s.write(&mut f, 5, 2, 0, b"hello world", 11, 1).unwrap();
        s.cut(&mut f, 5, 2, 5, 5, 2).unwrap();
        s.write(&mut f, 5, 2, 7, b"xy", 9, 3).unwrap();
        assert_eq!(s.bytes(), f.len);
        let raw = fs::read(dir.path().join(&f.name)).unwrap();
        assert!(!raw.windows(5).any(|w| w == b"hello"), "plaintext at rest");
        let r = s.load(&f.name, 5, 2).unwrap();
        assert_eq!(r.apply(b"ABCDEFGHIJKLMNOP".to_vec()), b"hello\0\0xy");
        assert_eq!((r.size_after, r.mtime), (9, 3));
        assert!(s.load(&f.name, 5, 3).is_err());
        // A torn last frame is ignored, earlier records survive.
        fs::write(dir.path().join(&f.name), &raw[..raw.len() - 3]).unwrap();
        let r = s.load(&f.name, 5, 2).unwrap();
        assert_eq!(r.apply(Vec::new()), b"hello");
        s.remove(&f.name);
        assert!(s.bytes() < f.len);
        // Emptied and kept for reuse; the next staging file is that one, and starts empty.
        assert_eq!(s.list_files(), vec![f.name.clone()]);
        assert_eq!(fs::metadata(dir.path().join(&f.name)).unwrap().len(), 0);
        let g = s.create().unwrap();
        assert_eq!((g.name.as_str(), g.len), (f.name.as_str(), 0));
        s.delete(&g.name);
        assert!(s.list_files().is_empty());
        let h = s.create().unwrap();
        assert_ne!(h.name, f.name, "a deleted file is not reused");
        s.remove(&h.name);
        s.clear_pool();
        assert!(
            s.list_files().is_empty(),
            "clear_pool deletes the emptied files"
        );
    }
}
