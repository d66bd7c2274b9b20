//! Write-back staging without a kernel: staged data survives a crash of the daemon (the
//! volume is dropped without shutdown while uploads fail) and is uploaded and committed at
//! the next open of the same cache dir; an append stream uploads each chunk once; cached
//! reads and stats make no backend request.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use cryptbucket::backend::memory::MemoryStore;
use cryptbucket::backend::{BackendError, ObjectMeta, ObjectStore, PutMode, Result};
use cryptbucket::crypto::{Argon2Params, Cipher, KeySource, VolumeParams};
use cryptbucket::meta::ROOT_INO;
use cryptbucket::vfs::{Ctx, Vfs};
use cryptbucket::volume::{self, Volume};

const CTX: Ctx = Ctx {
    uid: 1000,
    gid: 1000,
    umask: 0o022,
};
const CS: usize = 64 * 1024;

fn key() -> KeySource {
    KeySource::Passphrase(zeroize::Zeroizing::new("test passphrase".to_string()))
}

/// Counts requests and can refuse chunk uploads (a store that is down for data).
#[derive(Debug, Default)]
struct Gate {
    inner: Option<Arc<dyn ObjectStore>>,
    closed: AtomicBool,
    /// When non-zero, chunk uploads bigger than this fail (the small ones go through).
    refuse_over: AtomicU64,
    requests: AtomicU64,
    chunk_puts: AtomicU64,
    chunk_gets: AtomicU64,
}

impl Gate {
    fn inner(&self) -> &Arc<dyn ObjectStore> {
        self.inner.as_ref().expect("inner store")
    }
}

#[async_trait]
impl ObjectStore for Gate {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        if key.starts_with("d/") {
            if self.closed.load(Ordering::SeqCst) {
                return Err(BackendError::Other("test: store down".into()));
            }
            let over = self.refuse_over.load(Ordering::SeqCst);
            if over > 0 && data.len() as u64 > over {
                return Err(BackendError::Other("test: big uploads fail".into()));
            }
            self.chunk_puts.fetch_add(1, Ordering::SeqCst);
        }
        self.inner().put(key, data, mode).await
    }
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        if key.starts_with("d/") {
            self.chunk_gets.fetch_add(1, Ordering::SeqCst);
        }
        self.inner().get(key, range).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.inner().head(key).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.inner().delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.inner().list(prefix).await
    }
    fn supports_conditional(&self) -> bool {
        self.inner().supports_conditional()
    }
    fn describe(&self) -> String {
        "gate".into()
    }
}

fn new_volume() -> Arc<Gate> {
    let inner: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
    let rt = volume::runtime().unwrap();
    let params = VolumeParams {
        cipher: Cipher::XChaCha20Poly1305,
        chunk_size: CS as u32,
        block_size: 4096,
        ..VolumeParams::default()
    };
    let kdf = Argon2Params {
        m_kib: 8192,
        t: 1,
        p: 1,
    };
    volume::create(&rt, inner.clone(), params, &key(), kdf).unwrap();
    Arc::new(Gate {
        inner: Some(inner),
        ..Gate::default()
    })
}

fn open(store: &Arc<Gate>, cache: &std::path::Path) -> Volume {
    // A short lease, so a "crashed" volume's lease can be broken a moment later.
    let opts = volume::OpenOptions {
        cache_dir: Some(cache.to_path_buf()),
        lease_ttl: std::time::Duration::from_secs(1),
        break_lease: true,
        ..Default::default()
    };
    volume::open_with(volume::runtime().unwrap(), store.clone(), &key(), &opts).unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn read_all(vfs: &Vfs, ino: u64) -> Vec<u8> {
    let size = vfs.getattr(ino).unwrap().size;
    let fh = vfs.open(ino).unwrap();
    let out = vfs.read(fh, 0, size as u32).unwrap();
    vfs.release(fh).unwrap();
    out
}

/// Open the volume with the cache dir `dir`, check that `ino` reads `want`, unmount.
fn assert_reads_back(store: &Arc<Gate>, dir: &std::path::Path, ino: u64, want: &[u8]) {
    let v = open(store, dir);
    assert_eq!(read_all(&v.vfs, ino), want);
    v.unmount().unwrap();
}

/// A fresh volume holding one file `name` with `data`, written, fsync'd and unmounted.
fn stored_file(name: &[u8], data: &[u8]) -> (Arc<Gate>, tempfile::TempDir, u64) {
    let store = new_volume();
    let cache = tempfile::tempdir().unwrap();
    let v = open(&store, cache.path());
    let (f, fh) = v.vfs.create(&CTX, ROOT_INO, name, 0o644).unwrap();
    v.vfs.write(fh, 0, data).unwrap();
    v.vfs.fsync(fh).unwrap();
    v.vfs.release(fh).unwrap();
    v.unmount().unwrap();
    (store, cache, f.ino)
}

/// Staging files holding data (emptied ones are kept for reuse while mounted).
fn staging_files(cache: &std::path::Path) -> usize {
    std::fs::read_dir(cache.join("staging"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.metadata().is_ok_and(|m| m.len() > 0))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn staged_writes_survive_a_crash_and_reach_the_store_at_next_open() {
    let store = new_volume();
    let cache = tempfile::tempdir().unwrap();
    let v = open(&store, cache.path());
    // Committed before the crash: a file that is then partly overwritten and truncated.
    let base = pattern(3 * CS, 1);
    let (c, fh) = v.vfs.create(&CTX, ROOT_INO, b"c", 0o644).unwrap();
    v.vfs.write(fh, 0, &base).unwrap();
    v.vfs.fsync(fh).unwrap();
    v.vfs.release(fh).unwrap();

    store.closed.store(true, Ordering::SeqCst);
    // a: still open, 3.5 chunks, never closed.
    let a_data = pattern(3 * CS + CS / 2, 2);
    let (a, fha) = v.vfs.create(&CTX, ROOT_INO, b"a", 0o644).unwrap();
    for piece in a_data.chunks(10_000).enumerate() {
        v.vfs
            .write(fha, (piece.0 * 10_000) as u64, piece.1)
            .unwrap();
    }
    // b: written and closed; its uploads fail, so it lives in staging only.
    let b_data = pattern(2 * CS + 123, 3);
    let (b, fhb) = v.vfs.create(&CTX, ROOT_INO, b"b", 0o644).unwrap();
    v.vfs.write(fhb, 0, &b_data).unwrap();
    v.vfs.release(fhb).unwrap();
    // c: cut inside chunk 1, then a write past a gap inside the same chunk.
    let fhc = v.vfs.open(c.ino).unwrap();
    v.vfs
        .setattr(
            c.ino,
            cryptbucket::vfs::SetAttr {
                size: Some((CS + 100) as u64),
                ..Default::default()
            },
        )
        .unwrap();
    v.vfs.write(fhc, (CS + 1000) as u64, b"tail").unwrap();
    let mut c_want = base[..CS + 100].to_vec();
    c_want.resize(CS + 1000, 0);
    c_want.extend_from_slice(b"tail");
    // Reads before the crash see the staged data.
    assert_eq!(read_all(&v.vfs, b.ino), b_data);
    assert_eq!(read_all(&v.vfs, c.ino), c_want);
    let st = v.vfs.stats();
    assert!(
        st.dirty_bytes >= (a_data.len() + b_data.len()) as u64,
        "{st:?}"
    );
    assert!(st.files_waiting >= 2, "{st:?}");
    assert!(st.staged_bytes > st.dirty_bytes, "{st:?}");
    assert!(staging_files(cache.path()) >= 5);
    // Staging holds no plaintext.
    for e in std::fs::read_dir(cache.path().join("staging")).unwrap() {
        let raw = std::fs::read(e.unwrap().path()).unwrap();
        assert!(!raw.windows(64).any(|w| w == &b_data[CS..CS + 64]));
    }

    // Crash: no shutdown, no close, no commit.
    drop(v);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    store.closed.store(false, Ordering::SeqCst);

    let v = open(&store, cache.path());
    assert_eq!(
        staging_files(cache.path()),
        0,
        "staging emptied by recovery"
    );
    assert!(!v.vfs.stats().uncommitted, "recovery commits");
    v.unmount().unwrap();

    // The store alone (a fresh cache dir) has everything.
    let fresh = tempfile::tempdir().unwrap();
    let v = open(&store, fresh.path());
    assert_eq!(read_all(&v.vfs, a.ino), a_data);
    assert_eq!(read_all(&v.vfs, b.ino), b_data);
    assert_eq!(read_all(&v.vfs, c.ino), c_want);
    v.unmount().unwrap();
}

#[test]
fn a_crash_after_the_last_chunk_uploaded_first_keeps_the_file_size() {
    // The tail chunk reaches the store while the full chunks before it are still staged:
    // the size it carried must survive a crash (its staging file is gone by then).
    let store = new_volume();
    let cache = tempfile::tempdir().unwrap();
    let v = open(&store, cache.path());
    store.refuse_over.store((CS / 2) as u64, Ordering::SeqCst);
    let data = pattern(2 * CS + 123, 9);
    let (f, fh) = v.vfs.create(&CTX, ROOT_INO, b"f", 0o644).unwrap();
    // Chunk-aligned writes, so the tail's size is only in the tail chunk's records.
    for (i, piece) in data.chunks(8192).enumerate() {
        v.vfs.write(fh, (i * 8192) as u64, piece).unwrap();
    }
    v.vfs.release(fh).unwrap();
    let t = std::time::Instant::now();
    while store.chunk_puts.load(Ordering::SeqCst) == 0 {
        assert!(t.elapsed().as_secs() < 20, "the tail chunk never uploaded");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(read_all(&v.vfs, f.ino), data);
    drop(v);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    store.refuse_over.store(0, Ordering::SeqCst);

    assert_reads_back(&store, cache.path(), f.ino, &data);
    assert_reads_back(&store, tempfile::tempdir().unwrap().path(), f.ino, &data);
}

#[test]
fn fsync_fails_while_uploads_fail_and_keeps_the_data() {
    let store = new_volume();
    let cache = tempfile::tempdir().unwrap();
    let v = open(&store, cache.path());
    let data = pattern(CS + 5000, 9);
    let (f, fh) = v.vfs.create(&CTX, ROOT_INO, b"f", 0o644).unwrap();
    v.vfs.write(fh, 0, &data).unwrap();
    store.closed.store(true, Ordering::SeqCst);
    assert!(
        v.vfs.fsync(fh).is_err(),
        "fsync must report the failed upload"
    );
    assert_eq!(read_all(&v.vfs, f.ino), data);
    store.closed.store(false, Ordering::SeqCst);
    v.vfs.fsync(fh).unwrap();
    v.vfs.release(fh).unwrap();
    assert_eq!(v.vfs.stats().dirty_bytes, 0);
    v.unmount().unwrap();
    assert_reads_back(&store, tempfile::tempdir().unwrap().path(), f.ino, &data);
}

#[test]
fn an_append_stream_uploads_each_chunk_once() {
    let store = new_volume();
    let cache = tempfile::tempdir().unwrap();
    let v = open(&store, cache.path());
    let (f, fh) = v.vfs.create(&CTX, ROOT_INO, b"log", 0o644).unwrap();
    let data = pattern(4 * CS + 4096 * 3, 5);
    let before = store.chunk_puts.load(Ordering::SeqCst);
    for (i, piece) in data.chunks(4096).enumerate() {
        v.vfs.write(fh, (i * 4096) as u64, piece).unwrap();
    }
    v.vfs.fsync(fh).unwrap();
    v.vfs.release(fh).unwrap();
    let puts = store.chunk_puts.load(Ordering::SeqCst) - before;
    assert_eq!(puts, 5, "4 full chunks and one tail, each uploaded once");
    assert_eq!(read_all(&v.vfs, f.ino), data);
    v.unmount().unwrap();
}

#[test]
fn cached_reads_and_stats_make_no_backend_request() {
    let store = new_volume();
    let cache = tempfile::tempdir().unwrap();
    let v = open(&store, cache.path());
    let small = pattern(4096, 7);
    let (s, fh) = v.vfs.create(&CTX, ROOT_INO, b"small", 0o644).unwrap();
    v.vfs.write(fh, 0, &small).unwrap();
    v.vfs.release(fh).unwrap();
    let big = pattern(CS, 8);
    let (b, fh) = v.vfs.create(&CTX, ROOT_INO, b"big", 0o644).unwrap();
    v.vfs.write(fh, 0, &big).unwrap();
    v.vfs.fsync(fh).unwrap();
    v.vfs.release(fh).unwrap();
    v.unmount().unwrap();

    let v = open(&store, cache.path());
    assert_eq!(read_all(&v.vfs, b.ino), big); // warms the block cache
    let before = store.requests.load(Ordering::SeqCst);
    assert_eq!(read_all(&v.vfs, s.ino), small);
    assert_eq!(read_all(&v.vfs, b.ino), big);
    for _ in 0..10 {
        v.vfs.lookup(ROOT_INO, b"small").unwrap();
        v.vfs.getattr(b.ino).unwrap();
    }
    assert_eq!(store.requests.load(Ordering::SeqCst), before);
    v.unmount().unwrap();
}

#[test]
fn disk_cache_survives_restart_and_a_damaged_entry_is_refetched() {
    let big = pattern(3 * CS, 4);
    let (store, cache, b) = stored_file(b"big", &big);

    let v = open(&store, cache.path());
    assert_eq!(read_all(&v.vfs, b), big); // fills the disk cache
    v.unmount().unwrap();
    let entries: Vec<_> = std::fs::read_dir(cache.path().join("chunks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 3, "one entry per chunk");
    // Sealed as stored: no plaintext in the cache.
    for p in &entries {
        let raw = std::fs::read(p).unwrap();
        assert!(!raw
            .windows(64)
            .any(|w| big.windows(64).take(64).any(|x| x == w)));
    }

    // After a restart the chunks come from disk: no backend request.
    let v = open(&store, cache.path());
    let before = store.requests.load(Ordering::SeqCst);
    assert_eq!(read_all(&v.vfs, b), big);
    assert_eq!(store.requests.load(Ordering::SeqCst), before);
    v.unmount().unwrap();

    // A damaged entry fails authentication and is fetched again, never served.
    let mut raw = std::fs::read(&entries[1]).unwrap();
    raw[100] ^= 0x40;
    std::fs::write(&entries[1], &raw).unwrap();
    let v = open(&store, cache.path());
    let before = store.requests.load(Ordering::SeqCst);
    assert_eq!(read_all(&v.vfs, b), big);
    assert!(store.requests.load(Ordering::SeqCst) > before, "refetched");
    v.unmount().unwrap();
}

/// Files read one after another in directory order (grep -r, cp -r): the next files' first
/// chunks are fetched in the background, and no chunk is downloaded twice.
#[test]
fn a_directory_scan_prefetches_the_next_files_once() {
    let store = new_volume();
    let cache = tempfile::tempdir().unwrap();
    let v = open(&store, cache.path());
    let d = v.vfs.mkdir(&CTX, ROOT_INO, b"d", 0o755).unwrap();
    let mut files = Vec::new();
    for i in 0..20u8 {
        let data = pattern(10_000 + i as usize, i);
        let (a, fh) = v
            .vfs
            .create(&CTX, d.ino, format!("f{i:02}").as_bytes(), 0o644)
            .unwrap();
        v.vfs.write(fh, 0, &data).unwrap();
        // Uploaded before the next file is written: an object per file, not a pack.
        v.vfs.fsync(fh).unwrap();
        v.vfs.release(fh).unwrap();
        files.push((a.ino, data));
    }
    v.unmount().unwrap();

    let fresh = tempfile::tempdir().unwrap();
    let v = open(&store, fresh.path());
    store.chunk_gets.store(0, Ordering::SeqCst);
    for (ino, data) in &files[..3] {
        assert_eq!(&read_all(&v.vfs, *ino), data);
    }
    // The third open in a row started prefetching what comes next.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while store.chunk_gets.load(Ordering::SeqCst) <= 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        store.chunk_gets.load(Ordering::SeqCst) > 3,
        "nothing prefetched after three files read in order"
    );
    for (ino, data) in &files[3..] {
        assert_eq!(&read_all(&v.vfs, *ino), data);
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        store.chunk_gets.load(Ordering::SeqCst),
        files.len() as u64,
        "each chunk downloaded exactly once"
    );
    v.unmount().unwrap();

    // What the scan prefetched was kept in the disk cache: the same scan after a restart
    // downloads nothing.
    let v = open(&store, fresh.path());
    store.chunk_gets.store(0, Ordering::SeqCst);
    for (ino, data) in &files {
        assert_eq!(&read_all(&v.vfs, *ino), data);
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        store.chunk_gets.load(Ordering::SeqCst),
        0,
        "a scan over prefetched files downloads them again"
    );
    v.unmount().unwrap();
}

#[test]
fn a_stream_is_served_without_waiting_once_read_ahead_has_its_chunks() {
    let data = pattern(8 * CS, 3);
    let (store, cache, ino) = stored_file(b"stream", &data);

    // Cold: nothing of the file is in memory, so the FUSE thread must not answer.
    let v = open(&store, cache.path());
    let fh = v.vfs.open(ino).unwrap();
    let q = (CS / 4) as u32;
    assert!(v.vfs.read_nowait(fh, 0, q).is_none(), "a cold chunk waits");
    // The waiting read starts the stream; the next chunks arrive by read-ahead.
    let mut got = v.vfs.read(fh, 0, q).unwrap();
    let mut off = q as u64;
    let mut served_here = 0;
    while off < data.len() as u64 {
        // As the FUSE adapter does: the waiting path when memory does not have the bytes
        // (here after giving a download in flight a moment).
        let mut r = None;
        for _ in 0..100 {
            r = v.vfs.read_nowait(fh, off, q);
            if r.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        match r {
            Some(r) => {
                got.extend_from_slice(&r.unwrap());
                served_here += 1;
            }
            None => got.extend_from_slice(&v.vfs.read(fh, off, q).unwrap()),
        }
        off += q as u64;
    }
    assert_eq!(got, data, "bytes served without waiting match the file");
    assert!(
        served_here >= 24,
        "only {served_here} of 31 reads were answered from memory (28 are past chunk 0)"
    );
    v.vfs.release(fh).unwrap();
    v.unmount().unwrap();
}
