//! Open files and write-back. A chunk being written is "open": its bytes sit in a memory
//! buffer and every write is also appended, sealed, to the chunk's staging file on local
//! disk before it is acknowledged. A chunk is sealed and handed to the upload pool when a
//! write completes it, when it has been idle for a moment, or at close/fsync/unmount; while
//! its upload is in flight it is "flying". Only a finished upload puts the chunk into the
//! metadata, so a commit never references an object that is not in the bucket, and the
//! recorded size never covers bytes that are not there yet.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::{now_ns, Attr, Result, Vfs, VfsError};
use crate::data::staging::{Replay, StagedFile};
use crate::data::{ChunkStore, Staging};
use crate::meta::{ChunkRef, FileKind, Ino, MetaError, SqliteMeta, INLINE_MAX};

/// Largest file offset we accept (keeps chunk arithmetic far from overflow).
const MAX_FILE_SIZE: u64 = 1 << 50;
/// An open chunk not written for this long is sealed and uploaded.
const IDLE_SEAL: Duration = Duration::from_secs(2);
/// Memory for buffers of open chunks (all files); above it, the writer's chunks are sealed.
const OPEN_MEM_LIMIT: u64 = 32 << 20;
/// Memory for plaintext of chunks being uploaded; beyond it, workers replay from staging.
const FLY_MEM_LIMIT: u64 = 16 << 20;
/// A failed upload is tried again after this long (by `tick`), or at once by fsync.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Largest read-ahead window, in chunks.
const READ_AHEAD_MAX: u64 = 12;
/// `update_file` keeps every chunk below this index (no truncation).
const KEEP_ALL: u64 = i64::MAX as u64;

pub(super) type OpenMap = Mutex<std::collections::HashMap<Ino, Arc<OpenFile>>>;

/// What the upload completions need, shared with the upload pool's threads.
pub(super) struct WriteBack {
    pub(super) meta: Arc<SqliteMeta>,
    pub(super) data: Arc<ChunkStore>,
    pub(super) staging: Arc<Staging>,
    pub(super) open: OpenMap,
    /// Bumped whenever write-back records a file's size and mtime in the metadata or drops
    /// a file's open state, so a reader knows whether an inode it read may predate them.
    pub(super) drops: AtomicU64,
    open_mem: AtomicU64,
    fly_mem: AtomicU64,
    token: AtomicU64,
    /// Bumped by every repack swap (under the `open` lock), so a file state built from
    /// chunk refs read before a swap reads them again.
    repacks: AtomicU64,
}

pub(super) struct OpenFile {
    st: Mutex<FileState>,
    /// Signalled whenever an upload of this file finishes (or fails).
    cv: Condvar,
}

pub(super) struct FileState {
    opens: usize,
    size: u64,
    /// mtime of changes not yet in the metadata (None when the metadata has them).
    mtime: Option<i64>,
    open: BTreeMap<u64, OpenChunk>,
    flying: BTreeMap<u64, Flying>,
    refs: BTreeMap<u64, ChunkRef>,
    inline: Option<Vec<u8>>,
    /// The last upload error, reported by the next fsync.
    error: Option<String>,
    /// Where a sequential reader would read next, and its read-ahead window in chunks.
    next_off: u64,
    ra: u64,
}

struct OpenChunk {
    buf: Vec<u8>,
    file: StagedFile,
    /// The stored chunk the staging records apply to (None: they start from empty).
    base: Option<ChunkRef>,
    touched: Instant,
}

struct Flying {
    name: String,
    base: Option<ChunkRef>,
    data: Option<Arc<Vec<u8>>>,
    plain_len: u64,
    token: u64,
    failed: Option<Instant>,
}

/// Files opened one after another in directory order: the next files' first chunks are
/// fetched in the background (on S3 each small file is otherwise one GET after another).
#[derive(Default)]
pub(super) struct Scan {
    parent: Ino,
    cookie: u64,
    /// How many opens in a row followed the previous one in its directory.
    streak: u32,
    /// Entries up to this cookie were already prefetched.
    ahead_until: u64,
}

/// Files and bytes a directory scan prefetches ahead of the reader, at most.
const SCAN_FILES: usize = 16;
const SCAN_BYTES: u64 = 32 << 20;

impl FileState {
    /// Whether closing the file (sealing, handing chunks to the uploader, storing a tiny
    /// file inline) can be done without waiting for the store: always for a file above the
    /// inline size; for a tiny one, unless an upload is in flight or its bytes are only in
    /// a stored chunk (which would be fetched).
    fn close_cannot_wait(&self) -> bool {
        self.size > INLINE_MAX
            || (self.flying.is_empty()
                && (self.open.contains_key(&0) || !self.refs.contains_key(&0)))
    }

    fn dirty_bytes(&self) -> u64 {
        self.open.values().map(|c| c.buf.len() as u64).sum::<u64>()
            + self.flying.values().map(|f| f.plain_len).sum::<u64>()
    }

    fn pending(&self) -> bool {
        !self.open.is_empty() || !self.flying.is_empty()
    }
}

impl FileState {
    /// Show the size and mtime of changes not yet in the metadata.
    pub(super) fn overlay(&self, a: &mut Attr) {
        a.size = self.size;
        if let Some(m) = self.mtime {
            a.mtime = m;
            a.ctime = a.ctime.max(m);
        }
    }

    /// An explicit mtime (utimens) replaces the one pending with unrecorded writes.
    pub(super) fn set_mtime(&mut self, m: i64) {
        if self.mtime.is_some() {
            self.mtime = Some(m);
        }
    }
}

impl OpenFile {
    fn new(st: FileState) -> Self {
        OpenFile {
            st: Mutex::new(st),
            cv: Condvar::new(),
        }
    }

    pub(super) fn lock_state(&self) -> MutexGuard<'_, FileState> {
        self.st.lock()
    }

    pub(super) fn try_lock_state(&self) -> Option<MutexGuard<'_, FileState>> {
        self.st.try_lock()
    }

    pub(super) fn size(&self) -> u64 {
        self.st.lock().size
    }

    pub(super) fn dirty_bytes(&self) -> u64 {
        self.st.lock().dirty_bytes()
    }

    /// (chunks waiting for or in upload, whether anything is pending)
    pub(super) fn uploads(&self) -> (u64, bool) {
        let st = self.st.lock();
        (st.flying.len() as u64, st.pending())
    }
}

/// One piece of a read: bytes already in memory, a range of a stored chunk, or a hole.
enum Piece {
    Bytes(Vec<u8>),
    Stored(ChunkRef, u64, u64),
    Zeros(u64),
}

impl WriteBack {
    pub(super) fn new(meta: Arc<SqliteMeta>, data: Arc<ChunkStore>, staging: Arc<Staging>) -> Self {
        WriteBack {
            meta,
            data,
            staging,
            open: Mutex::new(Default::default()),
            drops: AtomicU64::new(1),
            open_mem: AtomicU64::new(0),
            fly_mem: AtomicU64::new(0),
            token: AtomicU64::new(1),
            repacks: AtomicU64::new(0),
        }
    }

    /// Whether `ino` has an open state (open, or with writes pending).
    pub(super) fn is_tracked(&self, ino: Ino) -> bool {
        self.open.lock().contains_key(&ino)
    }

    /// A repack copied chunk `old` of `ino` to `new`: point the file at the copy, unless the
    /// file has an open state (its refs are held in memory) or the chunk changed meanwhile.
    /// Returns whether the copy is used.
    pub(super) fn swap_repacked(&self, ino: Ino, old: &ChunkRef, new: &ChunkRef) -> bool {
        let map = self.open.lock();
        if map.contains_key(&ino) {
            return false;
        }
        let swapped = match self.meta.replace_chunk(ino, old, new) {
            Ok(swapped) => swapped,
            Err(e) => {
                tracing::warn!("repack: cannot record a copied chunk: {e}");
                false
            }
        };
        // After the swap is in the database: a `file_state` that sees this count read its
        // refs after the swap; one that read them before sees the count change.
        self.repacks.fetch_add(1, Ordering::SeqCst);
        drop(map);
        swapped
    }

    fn cs(&self) -> u64 {
        self.data.chunk_size()
    }

    /// The row goes first: a staging file is emptied for reuse by another chunk, which
    /// must never inherit a row saying it is this one.
    fn drop_staging(&self, name: &str) {
        if let Err(e) = self.meta.remove_staged(name) {
            tracing::warn!("cannot forget staging file {name}: {e}");
            self.staging.delete(name);
            return;
        }
        self.staging.remove(name);
    }

    fn drop_open(&self, oc: OpenChunk) {
        self.open_mem
            .fetch_sub(oc.buf.len() as u64, Ordering::Relaxed);
        self.drop_staging(&oc.file.name);
    }

    /// Make chunk `idx` an open chunk holding its current contents.
    fn open_chunk(&self, ino: Ino, st: &mut FileState, idx: u64) -> Result<()> {
        if st.open.contains_key(&idx) {
            return Ok(());
        }
        let (buf, base) = if let Some(c) = st.refs.get(&idx) {
            let b = self.data.read(c, 0, c.plain_len).inspect_err(|e| {
                tracing::error!("read before write failed: {e}");
            })?;
            (b, Some(c.clone()))
        } else if let (0, Some(d)) = (idx, st.inline.as_ref()) {
            (d.clone(), None)
        } else {
            (Vec::new(), None)
        };
        let mut file = self.staging.create()?;
        if base.is_none() && !buf.is_empty() {
            // Inline data is not a chunk: the staging file carries it whole.
            let m = st.mtime.unwrap_or_else(now_ns);
            self.staging
                .write(&mut file, ino, idx, 0, &buf, st.size, m)?;
        }
        if let Err(e) = self.meta.add_staged(&file.name, ino, idx) {
            self.staging.remove(&file.name);
            return Err(e.into());
        }
        self.open_mem.fetch_add(buf.len() as u64, Ordering::Relaxed);
        st.open.insert(
            idx,
            OpenChunk {
                buf,
                file,
                base,
                touched: Instant::now(),
            },
        );
        Ok(())
    }

    /// Seal open chunk `idx` and hand it to the upload pool.
    fn seal(self: &Arc<Self>, of: &Arc<OpenFile>, ino: Ino, st: &mut FileState, idx: u64) {
        let Some(oc) = st.open.remove(&idx) else {
            return;
        };
        let len = oc.buf.len() as u64;
        self.open_mem.fetch_sub(len, Ordering::Relaxed);
        if len == 0 {
            self.drop_staging(&oc.file.name);
            return;
        }
        let keep = self.fly_mem.load(Ordering::Relaxed) + len <= FLY_MEM_LIMIT;
        let data = if keep {
            self.fly_mem.fetch_add(len, Ordering::Relaxed);
            Some(Arc::new(oc.buf))
        } else {
            None
        };
        let f = Flying {
            name: oc.file.name.clone(),
            base: oc.base,
            data,
            plain_len: len,
            token: self.token.fetch_add(1, Ordering::Relaxed),
            failed: None,
        };
        self.submit(of, ino, idx, &f);
        st.flying.insert(idx, f);
    }

    fn submit(self: &Arc<Self>, of: &Arc<OpenFile>, ino: Ino, idx: u64, f: &Flying) {
        let produce: crate::data::chunks::Produce = match &f.data {
            Some(d) => {
                let d = d.clone();
                Box::new(move || Ok(d))
            }
            None => {
                let wb = self.clone();
                let (name, base) = (f.name.clone(), f.base.clone());
                Box::new(move || Ok(Arc::new(wb.replay(&name, base.as_ref(), ino, idx)?)))
            }
        };
        let wb = self.clone();
        let of = of.clone();
        let token = f.token;
        self.data.upload_async(
            idx,
            f.plain_len,
            produce,
            Box::new(move |res| wb.complete(&of, ino, idx, token, res)),
        );
    }

    /// A chunk's content rebuilt from its staging file over its base.
    fn replay(
        &self,
        name: &str,
        base: Option<&ChunkRef>,
        ino: Ino,
        idx: u64,
    ) -> crate::data::Result<Vec<u8>> {
        let r: Replay = self.staging.load(name, ino, idx)?;
        let b = match base {
            Some(c) => self.data.read(c, 0, c.plain_len)?,
            None => Vec::new(),
        };
        Ok(r.apply(b))
    }

    /// An upload finished: record it. Returns whether the object is wanted (false: the
    /// file was deleted or the chunk superseded meanwhile, so nothing references it).
    fn complete(
        self: &Arc<Self>,
        of: &Arc<OpenFile>,
        ino: Ino,
        idx: u64,
        token: u64,
        res: crate::data::Result<ChunkRef>,
    ) -> bool {
        let mut st = of.st.lock();
        if st.flying.get(&idx).is_none_or(|f| f.token != token) {
            of.cv.notify_all();
            return false;
        }
        let r = match res {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("upload of a chunk failed (kept staged, will retry): {e}");
                if let Some(f) = st.flying.get_mut(&idx) {
                    f.failed = Some(Instant::now());
                }
                st.error = Some(e.to_string());
                of.cv.notify_all();
                return false;
            }
        };
        let Some(f) = st.flying.remove(&idx) else {
            return false;
        };
        if f.data.is_some() {
            self.fly_mem.fetch_sub(f.plain_len, Ordering::Relaxed);
        }
        st.refs.insert(idx, r.clone());
        let wanted = match self.apply_meta(ino, &mut st, std::slice::from_ref(&r), KEEP_ALL) {
            Ok(Some(recorded)) => {
                if recorded < st.size {
                    self.carry_size(ino, &mut st);
                }
                self.drop_staging(&f.name);
                true
            }
            Ok(None) => {
                self.drop_staging(&f.name);
                false
            }
            Err(e) => {
                // The staging file stays: the next mount replays and uploads it again
                // (the object is left for gc).
                tracing::error!("cannot record an uploaded chunk: {e}");
                st.error = Some(e.to_string());
                true
            }
        };
        of.cv.notify_all();
        drop(st);
        self.forget_if_idle(ino, of);
        wanted
    }

    /// The metadata could not take the file's whole size yet (a chunk below is still on its
    /// way) and a staging file is about to go: write the size into another staging file of
    /// the file, so a crash now still recovers it (recovery takes the newest record).
    fn carry_size(&self, ino: Ino, st: &mut FileState) {
        let (size, mtime) = (st.size, st.mtime.unwrap_or_else(now_ns));
        let res = if let Some((idx, f)) = st.flying.iter().next() {
            self.staging
                .cut_closed(&f.name, ino, *idx, f.plain_len as u32, size, mtime)
        } else if let Some((idx, oc)) = st.open.iter_mut().next() {
            let len = oc.buf.len() as u32;
            self.staging.cut(&mut oc.file, ino, *idx, len, size, mtime)
        } else {
            Ok(())
        };
        if let Err(e) = res {
            tracing::warn!("cannot record the size of a file being uploaded: {e}");
        }
    }

    /// Write the file's size, mtime and `new_refs` into the metadata. The size recorded
    /// never reaches into a chunk that is still pending past the old recorded size, so a
    /// commit never shows zeros where written data is still on its way. Returns the size
    /// recorded, or None when the inode is gone.
    fn apply_meta(
        &self,
        ino: Ino,
        st: &mut FileState,
        new_refs: &[ChunkRef],
        keep: u64,
    ) -> Result<Option<u64>> {
        let mut inode = match self.meta.get_inode(ino) {
            Ok(i) => i,
            Err(MetaError::NotFound) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let cs = self.cs();
        let old = inode.size;
        let ext = st
            .open
            .keys()
            .chain(st.flying.keys())
            .filter(|p| (**p + 1) * cs > old)
            .map(|p| p * cs)
            .min();
        inode.size = match ext {
            None => st.size,
            Some(e) => st.size.min(old.max(e)),
        };
        if let Some(m) = st.mtime {
            inode.mtime = m;
            inode.ctime = inode.ctime.max(m);
        }
        let has0 = st.refs.contains_key(&0);
        let inline = if has0 { None } else { st.inline.as_deref() };
        self.meta.update_file(&inode, new_refs, keep, inline)?;
        self.drops.fetch_add(1, Ordering::SeqCst);
        if has0 {
            st.inline = None;
        }
        if !st.pending() {
            st.mtime = None;
        }
        Ok(Some(inode.size))
    }

    /// Drop everything pending for `ino`, unless it is open; true when it is no longer
    /// tracked (the caller may then delete the inode).
    pub(super) fn discard_unopened(&self, ino: Ino) -> bool {
        let mut map = self.open.lock();
        let Some(of) = map.get(&ino).cloned() else {
            return true;
        };
        let mut st = of.st.lock();
        if st.opens > 0 {
            return false;
        }
        for (_, oc) in std::mem::take(&mut st.open) {
            self.drop_open(oc);
        }
        for (_, f) in std::mem::take(&mut st.flying) {
            if f.data.is_some() {
                self.fly_mem.fetch_sub(f.plain_len, Ordering::Relaxed);
            }
            self.drop_staging(&f.name);
        }
        drop(st);
        map.remove(&ino);
        self.drops.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Whether any file has a chunk sealed and not yet in the store (uploading, queued,
    /// or failed and waiting for its retry).
    fn any_flying(&self) -> bool {
        let files: Vec<Arc<OpenFile>> = self.open.lock().values().cloned().collect();
        files.iter().any(|of| !of.st.lock().flying.is_empty())
    }

    fn forget_if_idle(&self, ino: Ino, of: &Arc<OpenFile>) {
        self.forget_if_idle_with(ino, of, true);
    }

    /// Drop a file's open state once nothing uses it. Without `wait`, a state locked by
    /// someone else is left alone (that user's own end forgets it).
    fn forget_if_idle_with(&self, ino: Ino, of: &Arc<OpenFile>, wait: bool) {
        let mut map = self.open.lock();
        if map.get(&ino).is_some_and(|o| Arc::ptr_eq(o, of)) {
            let st = if wait {
                Some(of.st.lock())
            } else {
                of.st.try_lock()
            };
            if st.is_some_and(|st| st.opens == 0 && !st.pending()) {
                map.remove(&ino);
                self.drops.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Wait until no upload of this file is in flight. A failed upload is restarted and
    /// reported as an error (its data stays staged).
    fn wait_flying(
        self: &Arc<Self>,
        of: &Arc<OpenFile>,
        ino: Ino,
        st: &mut MutexGuard<'_, FileState>,
    ) -> Result<()> {
        // Each failed upload is tried once more here; failing again is the caller's error
        // (the data stays staged and `tick` keeps retrying).
        let mut retried = std::collections::BTreeSet::new();
        loop {
            if st.flying.is_empty() {
                return Ok(());
            }
            let failed: Vec<u64> = st
                .flying
                .iter()
                .filter(|(_, f)| f.failed.is_some())
                .map(|(i, _)| *i)
                .collect();
            if failed.iter().any(|i| retried.contains(i)) {
                let e = st.error.take().unwrap_or_else(|| "upload failed".into());
                return Err(VfsError::Io(format!("upload to the store failed: {e}")));
            }
            if !failed.is_empty() {
                self.retry(of, ino, st, &failed);
                retried.extend(failed);
            }
            of.cv.wait(st);
        }
    }

    /// Wait until chunk `idx` is not being uploaded (retrying a failed upload meanwhile).
    fn wait_chunk(
        self: &Arc<Self>,
        of: &Arc<OpenFile>,
        ino: Ino,
        st: &mut MutexGuard<'_, FileState>,
        idx: u64,
    ) {
        while st.flying.contains_key(&idx) {
            let failed = st.flying.get(&idx).is_some_and(|f| {
                f.failed
                    .is_some_and(|t| t.elapsed() > Duration::from_millis(500))
            });
            if failed {
                self.retry(of, ino, st, &[idx]);
            }
            of.cv.wait_for(st, Duration::from_secs(1));
        }
    }

    fn retry(self: &Arc<Self>, of: &Arc<OpenFile>, ino: Ino, st: &mut FileState, idxs: &[u64]) {
        for idx in idxs {
            if let Some(f) = st.flying.get_mut(idx) {
                f.failed = None;
                f.token = self.token.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(f) = st.flying.get(idx) {
                self.submit(of, ino, *idx, f);
            }
        }
    }

    /// Store a tiny file inline in the metadata (no upload), once nothing is in flight.
    fn store_inline(&self, ino: Ino, st: &mut FileState) -> Result<()> {
        let size = st.size as usize;
        let mut content = if let Some(c) = st.open.get(&0) {
            c.buf.clone()
        } else if let Some(c) = st.refs.get(&0) {
            self.data.read(c, 0, c.plain_len)?
        } else {
            st.inline.clone().unwrap_or_default()
        };
        content.resize(size, 0);
        let mut inode = self.meta.get_inode(ino)?;
        inode.size = st.size;
        if let Some(m) = st.mtime {
            inode.mtime = m;
            inode.ctime = inode.ctime.max(m);
        }
        self.meta.update_file(&inode, &[], 0, Some(&content))?;
        self.drops.fetch_add(1, Ordering::SeqCst);
        for (_, oc) in std::mem::take(&mut st.open) {
            self.drop_open(oc);
        }
        st.refs.clear();
        st.inline = Some(content);
        st.mtime = None;
        Ok(())
    }

    /// close(): seal every open chunk (uploads continue in the background) and record
    /// what can be recorded; a tiny file goes inline at once.
    fn flush_locked(
        self: &Arc<Self>,
        of: &Arc<OpenFile>,
        ino: Ino,
        st: &mut MutexGuard<'_, FileState>,
    ) -> Result<()> {
        if !st.pending() && st.mtime.is_none() {
            return Ok(());
        }
        match self.meta.get_inode(ino) {
            Ok(i) if i.nlink == 0 => return Ok(()),
            Err(MetaError::NotFound) => return Ok(()),
            _ => {}
        }
        if st.size <= INLINE_MAX {
            self.wait_flying(of, ino, st)?;
            return self.store_inline(ino, st);
        }
        let idxs: Vec<u64> = st.open.keys().copied().collect();
        for idx in idxs {
            self.seal(of, ino, st, idx);
        }
        if !st.pending() {
            self.apply_meta(ino, st, &[], KEEP_ALL)?;
        }
        Ok(())
    }
}

impl Vfs {
    fn chunk_size(&self) -> u64 {
        self.data.chunk_size()
    }

    /// Get the open state of `ino`, creating it if needed; `pin` counts one more user
    /// (done under the map lock, so a finishing upload cannot forget it meanwhile).
    fn file_state(&self, ino: Ino, pin: bool) -> Result<Arc<OpenFile>> {
        {
            let map = self.wb.open.lock();
            if let Some(of) = map.get(&ino) {
                if pin {
                    of.st.lock().opens += 1;
                }
                return Ok(of.clone());
            }
        }
        let inode = self.meta.get_inode(ino)?;
        match inode.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(VfsError::IsDir),
            _ => return Err(VfsError::Invalid("not a regular file")),
        }
        let load = |meta: &crate::meta::SqliteMeta| -> Result<BTreeMap<u64, ChunkRef>> {
            Ok(meta.chunks(ino)?.into_iter().map(|c| (c.idx, c)).collect())
        };
        let repacks = self.wb.repacks.load(Ordering::SeqCst);
        let mut refs = load(&self.meta)?;
        let inline = self.meta.inline_data(ino)?;
        let mut map = self.wb.open.lock();
        if !map.contains_key(&ino) && self.wb.repacks.load(Ordering::SeqCst) != repacks {
            // A repack swapped chunks since they were read (it does so under this lock).
            refs = load(&self.meta)?;
        }
        let of = map.entry(ino).or_insert_with(|| {
            Arc::new(OpenFile::new(FileState {
                opens: 0,
                size: inode.size,
                mtime: None,
                open: BTreeMap::new(),
                flying: BTreeMap::new(),
                refs,
                inline,
                error: None,
                next_off: 0,
                ra: 0,
            }))
        });
        if pin {
            of.st.lock().opens += 1;
        }
        Ok(of.clone())
    }

    /// Called at every open: after two opens in a row that each followed the previous
    /// one in the same directory, prefetch the first chunks of the next files (a window
    /// that doubles with the streak).
    fn note_open(&self, ino: Ino) {
        let Ok(Some((parent, cookie))) = self.meta.position_of(ino) else {
            return;
        };
        let mut s = self.scan.lock();
        let follows = s.parent == parent && cookie > s.cookie;
        if follows {
            s.streak = s.streak.saturating_add(1);
        } else {
            *s = Scan {
                parent,
                cookie,
                streak: 0,
                ahead_until: cookie,
            };
            return;
        }
        s.cookie = cookie;
        if s.streak < 2 {
            return;
        }
        let window = (1usize << (s.streak - 1).min(8)).min(SCAN_FILES);
        let Ok(next) = self.meta.next_first_chunks(parent, cookie, window) else {
            return;
        };
        let mut bytes = 0;
        let mut refs: Vec<ChunkRef> = Vec::new();
        for (c, r) in next {
            if c <= s.ahead_until {
                continue;
            }
            // Files packed together share one download.
            if !refs.iter().any(|p| p.id == r.id) {
                bytes += r.stored_len;
                if bytes > SCAN_BYTES {
                    break;
                }
            }
            s.ahead_until = c;
            refs.push(r);
        }
        drop(s);
        if !refs.is_empty() {
            self.data.prefetch(refs, true);
        }
    }

    pub fn open(&self, ino: Ino) -> Result<u64> {
        let fh = self.open_handle(ino)?;
        self.note_open(ino);
        Ok(fh)
    }

    /// A new handle on `ino` (no scan detection: used by create too).
    pub(super) fn open_handle(&self, ino: Ino) -> Result<u64> {
        self.file_state(ino, true)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, ino);
        Ok(fh)
    }

    fn handle(&self, fh: u64) -> Result<(Ino, Arc<OpenFile>)> {
        let ino = *self.handles.lock().get(&fh).ok_or(VfsError::BadHandle)?;
        let of = self
            .wb
            .open
            .lock()
            .get(&ino)
            .cloned()
            .ok_or(VfsError::BadHandle)?;
        Ok((ino, of))
    }

    pub fn read(&self, fh: u64, off: u64, len: u32) -> Result<Vec<u8>> {
        let (ino, of) = self.handle(fh)?;
        let pieces = {
            let mut st = of.st.lock();
            let Some((end, pieces)) = self.pieces(ino, &st, off, len, true)? else {
                return Err(VfsError::Invalid("read of a chunk being uploaded"));
            };
            self.read_ahead(&mut st, off, end);
            pieces
        };
        self.assemble(pieces, len)
    }

    /// `read` for the FUSE thread itself: only when every byte is in memory (open or
    /// uploading chunks held in memory, the block cache, a finished read-ahead download),
    /// so a stream served from read-ahead costs no hand-off to a worker per request.
    pub fn read_nowait(&self, fh: u64, off: u64, len: u32) -> Option<Result<Vec<u8>>> {
        let ino = *self.handles.lock().get(&fh)?;
        let of = self.wb.open.lock().get(&ino).cloned()?;
        let mut st = of.try_lock_state()?;
        let (end, pieces) = match self.pieces(ino, &st, off, len, false) {
            Ok(r) => r?,
            Err(e) => return Some(Err(e)),
        };
        // Assembled under the file's lock, so the read-ahead state only moves for a read
        // answered here (a read left to a worker moves it there).
        let out = self.assemble_with(pieces, len, |c, o, n| self.data.read_in_memory(c, o, n))?;
        self.read_ahead(&mut st, off, end);
        Some(out)
    }

    /// What a read of `len` bytes at `off` consists of, and where it ends. A chunk being
    /// uploaded whose bytes are only in its staging file is read back from there, unless
    /// `may_wait` is false: then the answer is None.
    fn pieces(
        &self,
        ino: Ino,
        st: &FileState,
        off: u64,
        len: u32,
        may_wait: bool,
    ) -> Result<Option<(u64, Vec<Piece>)>> {
        let cs = self.chunk_size();
        let end = (off + len as u64).min(st.size);
        let mut pieces = Vec::new();
        let mut pos = off;
        while pos < end {
            let idx = pos / cs;
            let in_off = pos % cs;
            let n = (cs - in_off).min(end - pos);
            if let Some(c) = st.open.get(&idx) {
                pieces.push(slice_or_zeros(&c.buf, in_off, n));
            } else if let Some(f) = st.flying.get(&idx) {
                let buf = match &f.data {
                    Some(d) => d.clone(),
                    None if may_wait => {
                        Arc::new(self.wb.replay(&f.name, f.base.as_ref(), ino, idx)?)
                    }
                    None => return Ok(None),
                };
                pieces.push(slice_or_zeros(&buf, in_off, n));
            } else if let Some(c) = st.refs.get(&idx) {
                pieces.push(Piece::Stored(c.clone(), in_off, n));
            } else if let (0, Some(data)) = (idx, st.inline.as_ref()) {
                pieces.push(slice_or_zeros(data, in_off, n));
            } else {
                pieces.push(Piece::Zeros(n));
            }
            pos += n;
        }
        Ok(Some((end, pieces)))
    }

    fn assemble(&self, pieces: Vec<Piece>, len: u32) -> Result<Vec<u8>> {
        let out = self.assemble_with(pieces, len, |c, o, n| Some(self.data.read(c, o, n)));
        out.unwrap_or(Err(VfsError::Invalid("read")))
    }

    /// The reply from its pieces, stored ones read with `read`; None as soon as `read`
    /// gives None (the bytes are not at hand).
    fn assemble_with(
        &self,
        pieces: Vec<Piece>,
        len: u32,
        read: impl Fn(&ChunkRef, u64, u64) -> Option<crate::data::Result<Vec<u8>>>,
    ) -> Option<Result<Vec<u8>>> {
        let read = |c: &ChunkRef, o: u64, n: u64| -> Option<Result<Vec<u8>>> {
            Some(read(c, o, n)?.map_err(|e| {
                tracing::error!("read failed: {e}");
                e.into()
            }))
        };
        if let [Piece::Stored(c, in_off, n)] = pieces.as_slice() {
            // One chunk (most reads): its bytes are the reply, no copy.
            return Some(read(c, *in_off, *n)?.map(|mut got| {
                got.resize(*n as usize, 0);
                got
            }));
        }
        let mut out = Vec::with_capacity(len as usize);
        for p in pieces {
            match p {
                Piece::Bytes(b) => out.extend_from_slice(&b),
                Piece::Zeros(n) => out.resize(out.len() + n as usize, 0),
                Piece::Stored(c, in_off, n) => {
                    let got = match read(&c, in_off, n)? {
                        Ok(g) => g,
                        Err(e) => return Some(Err(e)),
                    };
                    let want = out.len() + n as usize;
                    out.extend_from_slice(&got);
                    out.resize(want, 0);
                }
            }
        }
        Some(Ok(out))
    }

    /// Read-ahead: a reader continuing where it stopped doubles its window (up to
    /// `read_ahead_max` chunks, fetched into the read-ahead buffer in the background); any
    /// other read closes it.
    fn read_ahead(&self, st: &mut FileState, off: u64, end: u64) {
        let cs = self.chunk_size();
        if off == st.next_off && end > off {
            st.ra = (st.ra * 2).clamp(1, read_ahead_max(cs));
        } else {
            st.ra = 0;
        }
        st.next_off = end;
        if st.ra == 0 || end == 0 {
            return;
        }
        // The chunk being read is fetched by the read itself (and consumed from the buffer:
        // asking for it again would download it again).
        let from = (end - 1) / cs + 1;
        let refs: Vec<ChunkRef> = st
            .refs
            .range(from..from + st.ra)
            .filter(|(i, _)| !st.open.contains_key(i) && !st.flying.contains_key(i))
            .map(|(_, c)| c.clone())
            .collect();
        self.data.prefetch(refs, false);
    }

    /// Back-pressure: wait while staging is full and uploads can drain it, for as long as
    /// the store is down (nothing buffered is dropped). Only a cache disk that is full
    /// with nothing left to upload is an ENOSPC.
    fn make_room(&self, more: u64) -> Result<()> {
        let staging = &self.wb.staging;
        loop {
            if staging.has_room(more) {
                return Ok(());
            }
            // Failed uploads waiting for their retry (the store is down) drain staging
            // once it is back: wait for them too, or an outage longer than the io timeout
            // would let staging grow without bound between retries.
            if self.data.uploads_pending() == 0 && !self.wb.any_flying() {
                if staging.disk_full(more) {
                    return Err(VfsError::NoSpace);
                }
                // Over the staging cap only with chunks still being written: they are
                // sealed by close or idleness; refusing the write would not help.
                return Ok(());
            }
            staging.wait_for_room(more, Duration::from_millis(500));
        }
    }

    pub fn write(&self, fh: u64, off: u64, data: &[u8]) -> Result<u32> {
        self.writable()?;
        let (ino, of) = self.handle(fh)?;
        let end = write_end(off, data)?;
        self.make_room(staging_need(data))?;
        let mut st = of.st.lock();
        self.write_locked(ino, &of, &mut st, off, end, data)
    }

    /// `write` for the FUSE thread itself: `None` (hand it to a worker) when it may wait
    /// for the file's lock, for staging room, for an upload of a chunk it touches, or for
    /// a stored chunk to be read before it is modified.
    pub fn write_nowait(&self, fh: u64, off: u64, data: &[u8]) -> Option<Result<u32>> {
        self.writable().ok()?;
        let end = write_end(off, data).ok()?;
        if !self.wb.staging.has_room(staging_need(data)) {
            return None;
        }
        let (ino, of) = self.handle(fh).ok()?;
        let mut st = of.try_lock_state()?;
        let cs = self.chunk_size();
        let first = off / cs;
        let last = end.saturating_sub(1).max(off) / cs;
        let ready = (first..=last).all(|idx| {
            !st.flying.contains_key(&idx)
                && (st.open.contains_key(&idx) || !st.refs.contains_key(&idx))
        });
        if !ready {
            return None;
        }
        Some(self.write_locked(ino, &of, &mut st, off, end, data))
    }

    fn write_locked(
        &self,
        ino: Ino,
        of: &Arc<OpenFile>,
        st: &mut MutexGuard<'_, FileState>,
        off: u64,
        end: u64,
        data: &[u8],
    ) -> Result<u32> {
        let cs = self.chunk_size();
        let wb = &self.wb;
        let mtime = now_ns();
        let size_after = st.size.max(end);
        let mut pos = off;
        let mut rest = data;
        let mut touched = Vec::new();
        while !rest.is_empty() {
            let idx = pos / cs;
            let in_off = (pos % cs) as usize;
            let n = rest.len().min(cs as usize - in_off);
            // A chunk is rewritten only after its previous version reached the store.
            wb.wait_chunk(of, ino, st, idx);
            wb.open_chunk(ino, st, idx)?;
            let oc = st
                .open
                .get_mut(&idx)
                .ok_or(VfsError::Io("chunk buffer vanished".into()))?;
            wb.staging.write(
                &mut oc.file,
                ino,
                idx,
                in_off as u32,
                &rest[..n],
                size_after,
                mtime,
            )?;
            let before = oc.buf.len();
            if oc.buf.len() < in_off + n {
                oc.buf.resize(in_off + n, 0);
            }
            oc.buf[in_off..in_off + n].copy_from_slice(&rest[..n]);
            oc.touched = Instant::now();
            wb.open_mem
                .fetch_add((oc.buf.len() - before) as u64, Ordering::Relaxed);
            touched.push(idx);
            pos += n as u64;
            rest = &rest[n..];
        }
        st.size = size_after;
        st.mtime = Some(mtime);
        // A staging file that grew far beyond its chunk (rewrites of the same bytes) is
        // replaced by one record of the current contents.
        for idx in &touched {
            let big = st
                .open
                .get(idx)
                .is_some_and(|c| c.file.len > 2 * cs + (1 << 20));
            if big {
                self.compact(ino, st, *idx, mtime)?;
            }
        }
        // A write that completes a chunk (a sequential stream) seals it now, so an append
        // stream never re-uploads a tail; random writes stay open until idle or close.
        if end.is_multiple_of(cs)
            && st
                .open
                .get(&(end / cs - 1))
                .is_some_and(|c| c.buf.len() as u64 == cs)
        {
            wb.seal(of, ino, st, end / cs - 1);
        }
        if wb.open_mem.load(Ordering::Relaxed) > OPEN_MEM_LIMIT {
            let idxs: Vec<u64> = st.open.keys().copied().collect();
            for idx in idxs {
                wb.seal(of, ino, st, idx);
            }
        }
        Ok(data.len() as u32)
    }

    fn compact(&self, ino: Ino, st: &mut FileState, idx: u64, mtime: i64) -> Result<()> {
        let wb = &self.wb;
        let size = st.size;
        let Some(oc) = st.open.get_mut(&idx) else {
            return Ok(());
        };
        let mut file = wb.staging.create()?;
        wb.staging.cut(&mut file, ino, idx, 0, size, mtime)?;
        wb.staging
            .write(&mut file, ino, idx, 0, &oc.buf, size, mtime)?;
        wb.meta.add_staged(&file.name, ino, idx)?;
        let old = std::mem::replace(&mut oc.file, file);
        wb.drop_staging(&old.name);
        Ok(())
    }

    /// Seal open chunks idle for a moment and retry failed uploads; called periodically.
    pub fn tick(&self) {
        let files: Vec<(Ino, Arc<OpenFile>)> = self
            .wb
            .open
            .lock()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (ino, of) in files {
            let mut st = of.st.lock();
            if st.size > INLINE_MAX {
                let idle: Vec<u64> = st
                    .open
                    .iter()
                    .filter(|(_, c)| c.touched.elapsed() > IDLE_SEAL)
                    .map(|(i, _)| *i)
                    .collect();
                for idx in idle {
                    self.wb.seal(&of, ino, &mut st, idx);
                }
            }
            let failed: Vec<u64> = st
                .flying
                .iter()
                .filter(|(_, f)| f.failed.is_some_and(|t| t.elapsed() > RETRY_AFTER))
                .map(|(i, _)| *i)
                .collect();
            self.wb.retry(&of, ino, &mut st, &failed);
        }
    }

    pub(super) fn flush_file(&self, ino: Ino, of: &Arc<OpenFile>) -> Result<()> {
        let mut st = of.st.lock();
        self.wb.flush_locked(of, ino, &mut st)
    }

    /// Flush and wait until every upload of the file finished and is in the metadata.
    pub(super) fn flush_and_wait(&self, ino: Ino, of: &Arc<OpenFile>) -> Result<()> {
        let mut st = of.st.lock();
        self.wb.flush_locked(of, ino, &mut st)?;
        self.wb.wait_flying(of, ino, &mut st)?;
        if st.mtime.is_some() && !st.pending() {
            self.wb.apply_meta(ino, &mut st, &[], KEEP_ALL)?;
        }
        Ok(())
    }

    /// close(): the file's data is staged on local disk (crash-safe) and its uploads run
    /// in the background; the metadata records each chunk once it is in the store.
    pub fn flush(&self, fh: u64) -> Result<()> {
        let (ino, of) = self.handle(fh)?;
        if self.sync_on_close() {
            // As fsync: a commit only records chunks whose upload finished, so wait first.
            self.flush_and_wait(ino, &of)?;
            return self.commit();
        }
        self.flush_file(ino, &of)
    }

    /// fsync(): the file's data and the metadata that references it reach the store.
    pub fn fsync(&self, fh: u64) -> Result<()> {
        let (ino, of) = self.handle(fh)?;
        self.flush_and_wait(ino, &of)?;
        self.commit()
    }

    /// `open` for the FUSE thread itself: `None` instead of waiting for a file whose state
    /// is busy (a write may hold it while fetching a chunk).
    pub fn open_nowait(&self, ino: Ino) -> Option<Result<u64>> {
        let map = self.wb.open.lock();
        let Some(of) = map.get(&ino).cloned() else {
            drop(map);
            // A fresh state: nobody else holds its lock (but for a racing open of the same
            // file, which holds it only to count itself).
            return Some(self.open(ino));
        };
        // Counted under the map lock, as `file_state` does: a last close racing with this
        // open must not drop the state in between (the new handle would be EBADF).
        of.try_lock_state()?.opens += 1;
        drop(map);
        self.note_open(ino);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, ino);
        Some(Ok(fh))
    }

    /// `flush` (close) for the FUSE thread itself: `None` when the file's state is busy or
    /// closing it may wait (see `FileState::close_cannot_wait`).
    pub fn flush_nowait(&self, fh: u64) -> Option<Result<()>> {
        if self.sync_on_close() {
            return None;
        }
        let ino = *self.handles.lock().get(&fh)?;
        let of = self.wb.open.lock().get(&ino).cloned()?;
        let mut st = of.try_lock_state()?;
        if !st.close_cannot_wait() {
            return None;
        }
        Some(self.wb.flush_locked(&of, ino, &mut st))
    }

    /// `release` for the FUSE thread itself, under the same rule as `flush_nowait`; an
    /// unlinked file (which may have to be deleted) goes to the worker pool.
    pub fn release_nowait(&self, fh: u64) -> Option<Result<()>> {
        if self.sync_on_close() {
            return None;
        }
        let ino = *self.handles.lock().get(&fh)?;
        let of = self.wb.open.lock().get(&ino).cloned()?;
        let res = {
            let mut st = of.try_lock_state()?;
            if !st.close_cannot_wait() {
                return None;
            }
            match self.meta.get_inode(ino) {
                Ok(i) if i.nlink > 0 => {}
                _ => return None,
            }
            let res = self.wb.flush_locked(&of, ino, &mut st);
            st.opens = st.opens.saturating_sub(1);
            res
        };
        self.handles.lock().remove(&fh);
        self.wb.forget_if_idle_with(ino, &of, false);
        Some(res)
    }

    pub fn release(&self, fh: u64) -> Result<()> {
        let ino = self.handles.lock().remove(&fh).ok_or(VfsError::BadHandle)?;
        let of = match self.wb.open.lock().get(&ino).cloned() {
            Some(of) => of,
            None => return Ok(()),
        };
        let res = self.flush_file(ino, &of);
        let unlinked = matches!(self.meta.get_inode(ino), Ok(i) if i.nlink == 0);
        {
            let mut st = of.st.lock();
            st.opens = st.opens.saturating_sub(1);
            if st.opens == 0 && unlinked {
                // Nobody can reach this file any more: its pending data goes with it.
                for (_, oc) in std::mem::take(&mut st.open) {
                    self.wb.drop_open(oc);
                }
                for (_, f) in std::mem::take(&mut st.flying) {
                    if f.data.is_some() {
                        self.wb.fly_mem.fetch_sub(f.plain_len, Ordering::Relaxed);
                    }
                    self.wb.drop_staging(&f.name);
                }
            }
        }
        self.wb.forget_if_idle(ino, &of);
        if unlinked && !self.wb.open.lock().contains_key(&ino) {
            self.meta.delete_inode(ino)?;
        }
        res
    }

    /// fallocate: mode 0 extends the file (the new range reads as zeros and, being a
    /// hole, costs no storage); other modes are not supported.
    pub fn fallocate(&self, fh: u64, off: u64, len: u64, mode: i32) -> Result<()> {
        self.writable()?;
        if mode != 0 {
            return Err(VfsError::NotSupported);
        }
        let (ino, of) = self.handle(fh)?;
        let end = off
            .checked_add(len)
            .filter(|e| *e <= MAX_FILE_SIZE)
            .ok_or(VfsError::TooBig)?;
        if end > of.size() {
            self.truncate(ino, end)?;
        }
        Ok(())
    }

    pub(super) fn truncate(&self, ino: Ino, size: u64) -> Result<()> {
        if size > MAX_FILE_SIZE {
            return Err(VfsError::TooBig);
        }
        let of = self.file_state(ino, true)?;
        let res = self.truncate_pinned(ino, &of, size);
        of.st.lock().opens -= 1;
        self.wb.forget_if_idle(ino, &of);
        res
    }

    fn truncate_pinned(&self, ino: Ino, of: &Arc<OpenFile>, size: u64) -> Result<()> {
        let cs = self.chunk_size();
        let wb = &self.wb;
        let mut st = of.st.lock();
        let now = now_ns();
        if size < st.size {
            let keep = size.div_ceil(cs);
            // Uploads wholly past the new end are abandoned (discarded when they finish);
            // the chunk cut in its middle must be in the store before it is cut again.
            let gone: Vec<u64> = st.flying.range(keep..).map(|(i, _)| *i).collect();
            for i in gone {
                if let Some(f) = st.flying.remove(&i) {
                    if f.data.is_some() {
                        wb.fly_mem.fetch_sub(f.plain_len, Ordering::Relaxed);
                    }
                    wb.drop_staging(&f.name);
                }
            }
            if !size.is_multiple_of(cs) {
                wb.wait_chunk(of, ino, &mut st, size / cs);
            }
            let gone: Vec<u64> = st.open.range(keep..).map(|(i, _)| *i).collect();
            for i in gone {
                if let Some(oc) = st.open.remove(&i) {
                    wb.drop_open(oc);
                }
            }
            st.refs.retain(|i, _| *i < keep);
            let in_off = size % cs;
            if in_off != 0 {
                let idx = size / cs;
                let stored_longer = st.refs.get(&idx).is_some_and(|c| c.plain_len > in_off);
                if stored_longer {
                    wb.open_chunk(ino, &mut st, idx)?;
                }
                if let Some(oc) = st.open.get_mut(&idx) {
                    let cut = oc.buf.len().saturating_sub(in_off as usize);
                    oc.buf.truncate(in_off as usize);
                    wb.open_mem.fetch_sub(cut as u64, Ordering::Relaxed);
                }
            }
            if let Some(d) = st.inline.as_mut() {
                d.truncate(size as usize);
            }
        }
        st.size = size;
        st.mtime = Some(now);
        // Every staging file learns the new size: recovery takes the newest record.
        for (idx, oc) in st.open.iter_mut() {
            wb.staging
                .cut(&mut oc.file, ino, *idx, oc.buf.len() as u32, size, now)?;
        }
        for (idx, f) in st.flying.iter() {
            wb.staging
                .cut_closed(&f.name, ino, *idx, f.plain_len as u32, size, now)?;
        }
        wb.apply_meta(ino, &mut st, &[], size.div_ceil(cs))?;
        if st.opens == 1 {
            // Nobody else has the file open: nothing will close it, so seal now.
            wb.flush_locked(of, ino, &mut st)?;
        }
        Ok(())
    }

    /// After a crash: upload what was staged but not yet in the store, record it in the
    /// metadata and commit. Returns how many files were recovered.
    pub fn recover_staged(&self) -> Result<usize> {
        let wb = &self.wb;
        let rows = self.meta.list_staged()?;
        let known: std::collections::HashSet<&str> =
            rows.iter().map(|(n, _, _)| n.as_str()).collect();
        for f in wb.staging.list_files() {
            if !known.contains(f.as_str()) {
                // Created but never recorded: no write was acknowledged from it.
                wb.staging.remove(&f);
            }
        }
        if rows.is_empty() {
            return Ok(0);
        }
        if self.read_only {
            tracing::warn!(
                "{} staged chunks from an earlier crash wait for a writable mount",
                rows.len()
            );
            return Ok(0);
        }
        let cs = self.chunk_size();
        let mut by_ino: BTreeMap<Ino, Vec<(String, u64)>> = BTreeMap::new();
        for (name, ino, idx) in rows {
            by_ino.entry(ino).or_default().push((name, idx));
        }
        let mut files = 0;
        for (ino, staged) in by_ino {
            let mut inode = match self.meta.get_inode(ino) {
                Ok(i) if i.nlink > 0 && i.kind == FileKind::File => i,
                _ => {
                    for (name, _) in staged {
                        wb.drop_staging(&name);
                    }
                    continue;
                }
            };
            let refs: BTreeMap<u64, ChunkRef> = self
                .meta
                .chunks(ino)?
                .into_iter()
                .map(|c| (c.idx, c))
                .collect();
            // Several files of one chunk (a compaction cut short): the newest wins.
            let mut contents: BTreeMap<u64, (u64, Vec<u8>)> = BTreeMap::new();
            let (mut seq, mut size, mut mtime) = (0u64, inode.size, inode.mtime);
            for (name, idx) in &staged {
                let r = match wb.staging.load(name, ino, *idx) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!("staging file {name} unusable: {e}");
                        continue;
                    }
                };
                if r.seq == 0 {
                    continue;
                }
                let base = match refs.get(idx) {
                    Some(c) => self.data.read(c, 0, c.plain_len)?,
                    None => Vec::new(),
                };
                if r.seq > seq {
                    (seq, size, mtime) = (r.seq, r.size_after, r.mtime);
                }
                let newer = contents.get(idx).is_none_or(|(s, _)| *s < r.seq);
                if newer {
                    contents.insert(*idx, (r.seq, r.apply(base)));
                }
            }
            inode.size = size;
            inode.mtime = mtime;
            inode.ctime = inode.ctime.max(mtime);
            let keep = size.div_ceil(cs);
            if size <= INLINE_MAX {
                let mut content = match contents.remove(&0) {
                    Some((_, c)) => c,
                    None => match refs.get(&0) {
                        Some(c) => self.data.read(c, 0, c.plain_len)?,
                        None => self.meta.inline_data(ino)?.unwrap_or_default(),
                    },
                };
                content.resize(size as usize, 0);
                self.meta.update_file(&inode, &[], 0, Some(&content))?;
            } else {
                let items: Vec<(u64, Vec<u8>)> = contents
                    .into_iter()
                    .filter(|(i, (_, c))| *i < keep && !c.is_empty())
                    .map(|(i, (_, c))| (i, c))
                    .collect();
                let new = self.data.write_many(items)?;
                let has0 = refs.contains_key(&0) || new.iter().any(|r| r.idx == 0);
                let inline = if has0 {
                    None
                } else {
                    self.meta.inline_data(ino)?
                };
                self.meta
                    .update_file(&inode, &new, keep, inline.as_deref())?;
            }
            for (name, _) in staged {
                wb.drop_staging(&name);
            }
            files += 1;
        }
        tracing::info!("recovered staged data of {files} files from an earlier crash");
        self.commit()?;
        Ok(files)
    }
}

/// The largest read-ahead window for chunks of `cs` bytes: the buffer must also hold the
/// chunk being read and the one just passed, or the window's downloads find it full and the
/// reader fetches every chunk itself (16 MiB chunks with a 12-chunk window: 384-462 MB/s;
/// with 2: 823-831 MB/s; 4 MiB chunks with 16: ~300 MB/s, with 12: ~900 MB/s).
fn read_ahead_max(cs: u64) -> u64 {
    (crate::data::ahead::AHEAD_LIMIT / cs.max(1))
        .saturating_sub(2)
        .clamp(1, READ_AHEAD_MAX)
}

/// Where a write of `data` at `off` ends, if the file may grow that far.
fn write_end(off: u64, data: &[u8]) -> Result<u64> {
    off.checked_add(data.len() as u64)
        .filter(|e| *e <= MAX_FILE_SIZE)
        .ok_or(VfsError::TooBig)
}

/// Staging bytes a write of `data` may take (its record's framing included).
fn staging_need(data: &[u8]) -> u64 {
    data.len() as u64 + 4096
}

fn slice_or_zeros(buf: &[u8], off: u64, n: u64) -> Piece {
    let mut v = vec![0u8; n as usize];
    let lo = (off as usize).min(buf.len());
    let hi = ((off + n) as usize).min(buf.len());
    v[..hi - lo].copy_from_slice(&buf[lo..hi]);
    Piece::Bytes(v)
}

#[cfg(test)]
mod tests {
    use super::read_ahead_max;

    #[test]
    fn read_ahead_window_leaves_room_in_the_buffer() {
        let limit = crate::data::ahead::AHEAD_LIMIT;
        for cs in [
            64 << 10,
            1 << 20,
            4 << 20,
            8 << 20,
            16 << 20,
            32 << 20,
            64 << 20,
        ] {
            let w = read_ahead_max(cs);
            assert!((1..=12).contains(&w), "{cs}: {w}");
            // The window, the chunk being read and the one just passed fit, when any can.
            if 3 * cs <= limit {
                assert!(
                    (w + 2) * cs <= limit,
                    "{cs}: window {w} overfills the buffer"
                );
            }
        }
        assert_eq!(
            read_ahead_max(4 << 20),
            12,
            "the default chunk size keeps its window"
        );
        assert_eq!(read_ahead_max(16 << 20), 2);
    }
}
