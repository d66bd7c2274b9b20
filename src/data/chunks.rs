//! Chunk objects: seal and upload whole chunks, fetch and open just the blocks a read needs.

use std::sync::Arc;

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::task::JoinSet;

use super::ahead::Ahead;
use super::cache::BlockCache;
use super::diskcache::DiskCache;
use super::pack::{groups, Job, PackQueue};
use super::{DataError, Result};
use crate::backend::{BackendError, ObjectStore, PutMode};
use crate::crypto::{chunk_block_range, ChunkId, CryptoError, VolumeKeys};
use crate::meta::{ChunkRef, PackSlot};

/// Uploads running at once (the write-back worker pool).
pub const UPLOAD_WORKERS: usize = 8;

/// Nice steps the upload workers run below the process: sealing and storing run behind the
/// FUSE thread and the programs waiting on it (docs/DESIGN.md, "Upload workers run at nice
/// 10").
const UPLOAD_NICE: i32 = 10;

/// Produces a chunk's plaintext on an upload worker (from memory, or replayed from staging).
/// Shared, so a chunk still held in memory is sealed from there without a copy.
pub type Produce = Box<dyn FnOnce() -> Result<std::sync::Arc<Vec<u8>>> + Send>;
/// Receives the outcome of an upload, on a blocking thread; returns whether the object is
/// still wanted (false: nothing references it, so it is deleted once no other chunk
/// packed with it is wanted either).
pub type Done = Box<dyn FnOnce(Result<ChunkRef>) -> bool + Send>;

/// How well the local caches serve reads, for `cryptbucket status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Bytes of sealed chunks in the disk cache (0 without one).
    pub disk_bytes: u64,
    /// The disk cache's bound (0 without one).
    pub disk_limit: u64,
    /// Chunk reads answered from the memory block cache or the disk cache.
    pub hits: u64,
    /// Chunk reads that needed the store (directly or through read-ahead).
    pub misses: u64,
}

pub struct ChunkStore {
    store: Arc<dyn ObjectStore>,
    keys: Arc<VolumeKeys>,
    rt: Handle,
    cache: BlockCache,
    uploads: crate::pool::Pool,
    /// Uploads submitted and not yet finished (queued or running).
    pending: Arc<std::sync::atomic::AtomicU64>,
    disk: Option<Arc<DiskCache>>,
    /// Read-ahead downloads running at once.
    prefetchers: Arc<tokio::sync::Semaphore>,
    ahead: Arc<Ahead>,
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
    packs: Arc<PackQueue>,
    recording: Arc<parking_lot::Mutex<std::collections::HashSet<[u8; 16]>>>,
}

/// Chunks up to this fraction of the chunk size are packed with others (see `pack`): above
/// it an object of its own costs little per byte.
const PACK_MEMBER_DIVISOR: u64 = 4;
/// Packers running at once: half the upload workers, so a stream of small files cannot
/// hold every worker while a big file's chunks wait.
const MAX_PACKERS: usize = UPLOAD_WORKERS / 2;

/// Read-ahead downloads running at once.
const PREFETCHERS: usize = 16;

/// Calls its `Done` exactly once: with the outcome, or, if the job ends without one (a
/// panic), with an error, so that no file waits forever for an upload that is gone (the
/// chunk stays staged and is retried).
pub(super) struct Answer(Option<Done>);

impl Answer {
    pub(super) fn new(done: Done) -> Self {
        Answer(Some(done))
    }

    /// Hand over the outcome; returns whether the object is wanted.
    pub(super) fn give(mut self, res: Result<ChunkRef>) -> bool {
        self.0.take().is_some_and(|d| d(res))
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = d(Err(DataError::Local(
                "the upload job stopped without finishing (see the log)".into(),
            )));
        }
    }
}

/// Counts an upload as pending until dropped (also when its job panics, so `wait_idle`
/// cannot hang on it). The count was raised when the upload was submitted.
pub(super) struct Pending(Arc<std::sync::atomic::AtomicU64>);

impl Pending {
    pub(super) fn new(count: Arc<std::sync::atomic::AtomicU64>) -> Self {
        Pending(count)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl ChunkStore {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        keys: Arc<VolumeKeys>,
        rt: Handle,
        cache_bytes: usize,
    ) -> Self {
        ChunkStore {
            store,
            keys,
            rt,
            cache: BlockCache::new(cache_bytes),
            uploads: crate::pool::Pool::new("cb-upload", UPLOAD_WORKERS).with_nice(UPLOAD_NICE),
            pending: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            disk: None,
            prefetchers: Arc::new(tokio::sync::Semaphore::new(PREFETCHERS)),
            ahead: Arc::new(Ahead::default()),
            hits: Default::default(),
            misses: Default::default(),
            packs: Default::default(),
            recording: Default::default(),
        }
    }

    pub fn cache_stats(&self) -> CacheStats {
        use std::sync::atomic::Ordering::Relaxed;
        CacheStats {
            disk_bytes: self.disk.as_ref().map_or(0, |d| d.bytes()),
            disk_limit: self.disk.as_ref().map_or(0, |d| d.limit()),
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
        }
    }

    fn count(&self, hit: bool) {
        let c = if hit { &self.hits } else { &self.misses };
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Keep whole sealed chunks in `disk` (reads then fetch whole chunks).
    pub fn with_disk_cache(mut self, disk: Arc<DiskCache>) -> Self {
        self.disk = Some(disk);
        self
    }

    /// Start downloading these chunks into the read-ahead buffer in the background (as
    /// many as it has room for; chunks already in the disk cache are read from there).
    /// `keep`: also store them in the disk cache (small files found by a directory scan,
    /// worth keeping; a big file's stream is not, see `ahead`).
    pub fn prefetch(&self, refs: Vec<ChunkRef>, keep: bool) {
        for c in refs {
            if self.disk.as_ref().is_some_and(|d| d.contains(&c.id)) {
                continue;
            }
            if !self.ahead.start(&c.id, c.stored_len) {
                continue;
            }
            let (store, ahead, sem) = (
                self.store.clone(),
                self.ahead.clone(),
                self.prefetchers.clone(),
            );
            let disk = self.disk.clone().filter(|_| keep);
            self.rt.spawn(async move {
                let mut got = None;
                if let Ok(_permit) = sem.acquire_owned().await {
                    let key = ChunkId(c.id).object_key();
                    // A failure is left to the foreground read, which reports it.
                    if let Ok(b) = store.get(&key, None).await {
                        if b.len() as u64 >= c.stored_len {
                            let sealed = b.slice(..c.stored_len as usize);
                            if let Some(d) = &disk {
                                // Unchecked here; a damaged entry is found and replaced
                                // by the read that opens it.
                                d.insert(&c.id, &sealed);
                            }
                            got = Some(sealed);
                        }
                    }
                }
                ahead.finish(&c.id, c.stored_len, got);
            });
        }
    }

    /// Uploads submitted and not yet finished.
    pub fn uploads_pending(&self) -> u64 {
        self.pending.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Seal chunk `idx` under a fresh id: its reference, object key and stored bytes.
    fn seal(keys: &VolumeKeys, idx: u64, data: &[u8]) -> Result<(ChunkRef, String, Bytes)> {
        let id = ChunkId::random();
        let sealed = keys.seal_chunk(&id, data)?;
        let r = ChunkRef {
            idx,
            id: id.0,
            plain_len: sealed.plain_len,
            stored_len: sealed.bytes.len() as u64,
            digest: sealed.digest,
            pack: None,
        };
        Ok((r, id.object_key(), Bytes::from(sealed.bytes)))
    }

    /// Upload chunk `idx` (about `len` bytes) in the background on the bounded worker
    /// pool: `produce` yields its plaintext on a worker, `done` gets the reference once the
    /// object is stored. A small chunk may be packed with others queued at the same time.
    pub fn upload_async(&self, idx: u64, len: u64, produce: Produce, done: Done) {
        let done = Answer::new(done);
        self.pending
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pending = Pending::new(self.pending.clone());
        let up = self.uploader();
        let cs = self.chunk_size();
        if len <= cs / PACK_MEMBER_DIVISOR {
            let job = Job {
                idx,
                len,
                produce,
                done,
                pending,
            };
            if self.packs.push(job, cs, MAX_PACKERS) {
                let packs = self.packs.clone();
                self.uploads.run(move || {
                    while let Some(batch) = packs.take(cs) {
                        // A panic (a bug) must not end the loop: the queue counts this
                        // packer as running until `take` finds it empty.
                        let run = std::panic::AssertUnwindSafe(|| up.upload_batch(batch));
                        if std::panic::catch_unwind(run).is_err() {
                            tracing::error!("packing a batch of small chunks panicked");
                        }
                    }
                });
            }
            return;
        }
        // Seal, put and record on one thread (see `crate::pool`).
        self.uploads.run(move || {
            let _pending = pending;
            let res = produce().and_then(|plain| up.put_solo(idx, &plain));
            up.finish(done, res);
        });
    }

    fn uploader(&self) -> Uploader {
        Uploader {
            store: self.store.clone(),
            keys: self.keys.clone(),
            rt: self.rt.clone(),
            pending: self.pending.clone(),
            recording: self.recording.clone(),
        }
    }

    /// Packs whose members are being recorded right now (stored, and some of their files
    /// may not reference them yet): they must not be deleted meanwhile.
    pub fn recording_packs(&self) -> std::collections::HashSet<[u8; 16]> {
        self.recording.lock().clone()
    }

    /// Wait until every background upload and delete has finished.
    pub fn wait_idle(&self) {
        while self.uploads_pending() > 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    pub fn chunk_size(&self) -> u64 {
        self.keys.params().chunk_size as u64
    }

    fn block_size(&self) -> u64 {
        self.keys.params().block_size as u64
    }

    /// `read`, but only from memory (the block cache, a finished read-ahead download): None
    /// when that would need the disk cache or the store, or a download still in flight.
    pub fn read_in_memory(&self, c: &ChunkRef, off: u64, len: u64) -> Option<Result<Vec<u8>>> {
        let Some((off, end)) = obj_span(c, off, len) else {
            return Some(Ok(Vec::new()));
        };
        let (first, last) = self.block_span(off, end);
        let blocks: Option<Vec<Arc<Vec<u8>>>> =
            (first..=last).map(|b| self.cache.get(&c.id, b)).collect();
        if let Some(blocks) = blocks {
            self.count(true);
            return Some(Ok(join_blocks(&blocks, first, self.block_size(), off, end)));
        }
        // A damaged download is left to the waiting path, which fetches it again and
        // reports what is wrong.
        let sealed = self.ahead.get_ready(&c.id)?;
        self.open_streamed(c, &sealed, first, last, off, end)
            .map(Ok)
    }

    fn block_span(&self, off: u64, end: u64) -> (u32, u32) {
        let bs = self.block_size();
        ((off / bs) as u32, ((end - 1) / bs) as u32)
    }

    /// Blocks `first..=last` opened straight from a read-ahead download into the reply
    /// (past the block cache: the kernel's page cache keeps what was read). None if the
    /// download is damaged.
    fn open_streamed(
        &self,
        c: &ChunkRef,
        sealed: &Bytes,
        first: u32,
        last: u32,
        off: u64,
        end: u64,
    ) -> Option<Vec<u8>> {
        let n = last - first + 1;
        let range = chunk_block_range(self.keys.params(), c.obj_len(), first, n);
        let got = sealed.get(range.start as usize..range.end as usize)?;
        let mut plain = self
            .keys
            .open_chunk_range(&ChunkId(c.id), c.obj_len(), &c.digest, first, n, got)
            .ok()?;
        let lo = (off - first as u64 * self.block_size()) as usize;
        if lo > 0 {
            plain.drain(..lo);
        }
        plain.truncate((end - off) as usize);
        self.count(false);
        Some(plain)
    }

    /// Read `len` bytes at `off` inside a chunk; bytes past its plaintext length are not
    /// returned (the caller fills holes with zeros).
    pub fn read(&self, c: &ChunkRef, off: u64, len: u64) -> Result<Vec<u8>> {
        let Some((off, end)) = obj_span(c, off, len) else {
            return Ok(Vec::new());
        };
        let (first, last) = self.block_span(off, end);
        let mut blocks: Vec<Option<Arc<Vec<u8>>>> =
            (first..=last).map(|b| self.cache.get(&c.id, b)).collect();
        if blocks.iter().all(|b| b.is_none()) {
            if let Some(sealed) = self.ahead.get(&c.id) {
                if let Some(plain) = self.open_streamed(c, &sealed, first, last, off, end) {
                    return Ok(plain);
                }
                // Damaged on the way: fetched again below, which reports what is wrong.
                self.ahead.forget(&c.id);
            }
        }
        if let Some(miss_lo) = blocks.iter().position(|b| b.is_none()) {
            let miss_hi = blocks.iter().rposition(|b| b.is_none()).unwrap_or(miss_lo);
            let b0 = first + miss_lo as u32;
            let n = (miss_hi - miss_lo + 1) as u32;
            let opened = self.fetch_blocks(c, b0, n)?;
            for (i, data) in opened.into_iter().enumerate() {
                let data = Arc::new(data);
                self.cache.insert(c.id, b0 + i as u32, data.clone());
                blocks[miss_lo + i] = Some(data);
            }
        } else {
            self.count(true);
        }
        let blocks: Vec<Arc<Vec<u8>>> =
            blocks
                .into_iter()
                .collect::<Option<_>>()
                .ok_or_else(|| DataError::Corrupt {
                    key: ChunkId(c.id).object_key(),
                    reason: "block missing after fetch".into(),
                })?;
        Ok(join_blocks(&blocks, first, self.block_size(), off, end))
    }

    fn fetch_blocks(&self, c: &ChunkRef, first: u32, n: u32) -> Result<Vec<Vec<u8>>> {
        let range = chunk_block_range(self.keys.params(), c.obj_len(), first, n);
        if let Some(sealed) = self.ahead.get(&c.id) {
            let got = sealed.get(range.start as usize..range.end as usize);
            if let Some(Ok(p)) = got.map(|g| self.open_blocks(c, first, n, g)) {
                self.count(false);
                return Ok(p);
            }
            // Damaged on the way: fetched again below, which reports what is wrong.
            self.ahead.forget(&c.id);
        }
        let Some(dc) = &self.disk else {
            self.count(false);
            let got = self.get_checked(c, Some(range.clone()), range.end - range.start)?;
            return self.open_blocks(c, first, n, &got);
        };
        if let Some(got) = dc.read(&c.id, range.clone()) {
            match self.open_blocks(c, first, n, &got) {
                Ok(p) => {
                    self.count(true);
                    return Ok(p);
                }
                Err(e) => {
                    tracing::warn!("disk cache entry damaged ({e}); fetching it again");
                    dc.remove(&c.id);
                }
            }
        }
        self.count(false);
        if c.pack.is_some() {
            return self.fetch_member(c, first, n);
        }
        let whole = self.get_checked(c, None, c.stored_len.max(range.end))?;
        dc.insert(&c.id, &whole[..c.stored_len.max(range.end) as usize]);
        self.open_blocks(
            c,
            first,
            n,
            &whole[range.start as usize..range.end as usize],
        )
    }

    /// A chunk inside a pack, read on its own: fetch the blocks of the whole chunk (one
    /// ranged GET), not the whole pack, so opening one small file costs its own size; a
    /// directory scan's prefetch fetches whole packs instead (`prefetch`). Blocks other
    /// than `first..first + n` go to the block cache for the reads that follow.
    fn fetch_member(&self, c: &ChunkRef, first: u32, n: u32) -> Result<Vec<Vec<u8>>> {
        let bs = self.block_size();
        let mf = (c.obj_off() / bs) as u32;
        let ml = ((c.obj_off() + c.plain_len).max(1) - 1) / bs;
        let mn = (ml as u32 + 1).saturating_sub(mf).max(1);
        if first < mf || first + n > mf + mn {
            let range = chunk_block_range(self.keys.params(), c.obj_len(), first, n);
            let got = self.get_checked(c, Some(range.clone()), range.end - range.start)?;
            return self.open_blocks(c, first, n, &got);
        }
        let range = chunk_block_range(self.keys.params(), c.obj_len(), mf, mn);
        let got = self.get_checked(c, Some(range.clone()), range.end - range.start)?;
        let mut blocks = self.open_blocks(c, mf, mn, &got)?;
        let want = (first - mf) as usize..(first - mf + n) as usize;
        if want.end > blocks.len() {
            return Err(DataError::Corrupt {
                key: ChunkId(c.id).object_key(),
                reason: format!("pack holds {} of the chunk's {mn} blocks", blocks.len()),
            });
        }
        for (i, b) in blocks.iter().enumerate() {
            if !want.contains(&i) {
                self.cache.insert(c.id, mf + i as u32, Arc::new(b.clone()));
            }
        }
        Ok(blocks.drain(want).collect())
    }

    /// GET (part of) a chunk object, mapping absence and truncation to `Corrupt`.
    fn get_checked(
        &self,
        c: &ChunkRef,
        range: Option<std::ops::Range<u64>>,
        want: u64,
    ) -> Result<Bytes> {
        let key = ChunkId(c.id).object_key();
        let corrupt = |reason: String| DataError::Corrupt {
            key: key.clone(),
            reason,
        };
        let got = match self.rt.block_on(self.store.get(&key, range)) {
            Ok(b) => b,
            Err(BackendError::NotFound(_)) => return Err(corrupt("object is missing".into())),
            Err(BackendError::InvalidRange { .. }) => {
                return Err(corrupt("object is truncated".into()))
            }
            Err(e) => return Err(e.into()),
        };
        if (got.len() as u64) < want {
            return Err(corrupt(format!(
                "object is truncated ({} of {} bytes)",
                got.len(),
                want
            )));
        }
        Ok(got.slice(..want as usize))
    }

    /// Open the stored bytes of blocks `[first, first + n)` (exactly their range).
    fn open_blocks(&self, c: &ChunkRef, first: u32, n: u32, got: &[u8]) -> Result<Vec<Vec<u8>>> {
        let id = ChunkId(c.id);
        let plain = self
            .keys
            .open_chunk_range(&id, c.obj_len(), &c.digest, first, n, got)
            .map_err(|e| DataError::Corrupt {
                key: id.object_key(),
                reason: match e {
                    CryptoError::Tampered(r) => format!("authentication failed ({r})"),
                    other => other.to_string(),
                },
            })?;
        let bs = self.block_size() as usize;
        Ok(plain.chunks(bs).map(|b| b.to_vec()).collect())
    }

    /// Seal and upload several chunks in parallel; returns their references in input order.
    pub fn write_many(&self, items: Vec<(u64, Vec<u8>)>) -> Result<Vec<ChunkRef>> {
        let mut refs = Vec::with_capacity(items.len());
        let mut uploads = Vec::with_capacity(items.len());
        for (idx, data) in items {
            let (r, key, body) = Self::seal(&self.keys, idx, &data)?;
            refs.push(r);
            uploads.push((key, body));
        }
        let store = self.store.clone();
        self.rt.block_on(async move {
            let mut set = JoinSet::new();
            for (key, body) in uploads {
                let store = store.clone();
                // A fresh random id is never overwritten, so a plain put is safe to retry.
                set.spawn(async move { store.put(&key, body, PutMode::Overwrite).await });
            }
            while let Some(res) = set.join_next().await {
                match res {
                    Ok(r) => {
                        r?;
                    }
                    Err(e) => return Err(DataError::Backend(BackendError::Other(e.to_string()))),
                }
            }
            Ok(())
        })?;
        Ok(refs)
    }

    /// Every chunk object in the store, with size and age (for gc).
    pub fn list_objects(&self) -> Result<Vec<crate::backend::ObjectMeta>> {
        Ok(self.rt.block_on(self.store.list(crate::gc::CHUNK_PREFIX))?)
    }

    /// Delete chunk objects (already unreferenced by the committed metadata).
    pub fn delete_many(&self, ids: &[[u8; 16]]) -> Result<()> {
        for id in ids {
            self.cache.forget_chunk(id);
            self.ahead.forget(id);
            if let Some(dc) = &self.disk {
                dc.remove(id);
            }
        }
        let keys: Vec<String> = ids.iter().map(|id| ChunkId(*id).object_key()).collect();
        let store = self.store.clone();
        self.rt.block_on(async move {
            let mut set = JoinSet::new();
            for key in keys {
                let store = store.clone();
                set.spawn(async move { store.delete(&key).await });
            }
            let mut first_err = None;
            while let Some(res) = set.join_next().await {
                if let Ok(Err(e)) = res {
                    first_err.get_or_insert(e);
                }
            }
            match first_err {
                Some(e) => Err(e.into()),
                None => Ok(()),
            }
        })
    }
}

/// What an upload worker needs of the store (cloned into each job).
struct Uploader {
    store: Arc<dyn ObjectStore>,
    keys: Arc<VolumeKeys>,
    rt: Handle,
    pending: Arc<std::sync::atomic::AtomicU64>,
    recording: Arc<parking_lot::Mutex<std::collections::HashSet<[u8; 16]>>>,
}

impl Uploader {
    /// Seal and store one chunk as an object of its own.
    fn put_solo(&self, idx: u64, plain: &[u8]) -> Result<ChunkRef> {
        let (r, key, body) = ChunkStore::seal(&self.keys, idx, plain)?;
        // A fresh random id is never overwritten, so a plain put is safe to retry.
        self.rt
            .block_on(self.store.put(&key, body, PutMode::Overwrite))?;
        Ok(r)
    }

    /// Hand the outcome to `done`; delete the object if nothing wants it.
    fn finish(&self, done: Answer, res: Result<ChunkRef>) {
        let id = res.as_ref().ok().map(|r| r.id);
        if !done.give(res) {
            if let Some(id) = id {
                self.discard(id);
            }
        }
    }

    /// Produce, seal and store a batch of small chunks: one object per group that fits a
    /// chunk, its members told where they sit in it.
    fn upload_batch(&self, batch: Vec<Job>) {
        let full = u64::from(self.keys.params().chunk_size);
        let mut parts = Vec::with_capacity(batch.len());
        for j in batch {
            match (j.produce)() {
                Ok(d) => parts.push(((j.idx, j.done, j.pending), d)),
                Err(e) => {
                    let _ = j.done.give(Err(e));
                }
            }
        }
        for group in groups(parts, full) {
            if let [((idx, _, _), d)] = &group[..] {
                let res = self.put_solo(*idx, d);
                if let Some(((_, done, _pending), _)) = group.into_iter().next() {
                    self.finish(done, res);
                }
                continue;
            }
            let total: usize = group.iter().map(|(_, d)| d.len()).sum();
            let mut plain = Vec::with_capacity(total);
            for (_, d) in &group {
                plain.extend_from_slice(d);
            }
            let res = self.put_solo(0, &plain);
            drop(plain);
            let mut wanted = false;
            let mut off = 0u64;
            let id = res.as_ref().ok().map(|r| r.id);
            if let Some(id) = id {
                self.recording.lock().insert(id);
            }
            // Dropped after the discard below, so `wait_idle` counts it.
            let mut pendings = Vec::with_capacity(group.len());
            for ((idx, done, pending), d) in group {
                pendings.push(pending);
                let len = d.len() as u64;
                let member = match &res {
                    Ok(r) => Ok(ChunkRef {
                        idx,
                        plain_len: len,
                        pack: Some(PackSlot {
                            off,
                            len: r.plain_len,
                        }),
                        ..r.clone()
                    }),
                    Err(e) => Err(e.shared()),
                };
                off += len;
                wanted |= done.give(member);
            }
            if let Some(id) = id {
                self.recording.lock().remove(&id);
                if !wanted {
                    self.discard(id);
                }
            }
            drop(pendings);
        }
    }

    /// Delete one chunk object that nothing references (an upload made stale) in the
    /// background.
    fn discard(&self, id: [u8; 16]) {
        let store = self.store.clone();
        let pending = self.pending.clone();
        pending.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.rt.spawn(async move {
            let key = ChunkId(id).object_key();
            if let Err(e) = store.delete(&key).await {
                tracing::warn!("could not delete unused chunk {key}: {e}");
            }
            pending.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
}

/// Bytes `off..off + len` of chunk `c`, cut at its length, as a range of its object's
/// plaintext (None when empty): the object may be a pack holding other chunks too.
fn obj_span(c: &ChunkRef, off: u64, len: u64) -> Option<(u64, u64)> {
    let end = off.saturating_add(len).min(c.plain_len);
    (off < end).then(|| (c.obj_off() + off, c.obj_off() + end))
}

/// The bytes `off..end` of a chunk from its consecutive plaintext blocks starting at `first`.
fn join_blocks(blocks: &[Arc<Vec<u8>>], first: u32, bs: u64, off: u64, end: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity((end - off) as usize);
    for (i, b) in blocks.iter().enumerate() {
        let bstart = (first as u64 + i as u64) * bs;
        let lo = off.saturating_sub(bstart) as usize;
        let hi = ((end - bstart) as usize).min(b.len());
        if lo < hi {
            out.extend_from_slice(&b[lo..hi]);
        }
    }
    out
}
