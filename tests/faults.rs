//! Backend faults under the vfs (no kernel): a store where a share of requests fail, time
//! out, come back truncated or slow must be invisible to the application, and a store that
//! stays down must make fsync fail with EIO after the io timeout without losing what is
//! buffered locally.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptbucket::backend::fault::{FaultConfig, FaultStore};
use cryptbucket::backend::memory::MemoryStore;
use cryptbucket::backend::retry::{RetryPolicy, RetryStore};
use cryptbucket::backend::ObjectStore;
use cryptbucket::crypto::{Argon2Params, KeySource, VolumeParams};
use cryptbucket::meta::ROOT_INO;
use cryptbucket::vfs::{Ctx, Vfs};
use cryptbucket::volume::{self, Volume};

const CTX: Ctx = Ctx {
    uid: 1000,
    gid: 1000,
    umask: 0o022,
};

fn key() -> KeySource {
    KeySource::Passphrase(zeroize::Zeroizing::new("fault passphrase".to_string()))
}

fn params() -> VolumeParams {
    VolumeParams {
        chunk_size: 64 * 1024,
        block_size: 4096,
        ..VolumeParams::default()
    }
}

fn fast_retries(deadline: Duration) -> RetryPolicy {
    RetryPolicy {
        max_attempts: u32::MAX,
        base_delay: Duration::from_millis(2),
        max_delay: Duration::from_millis(40),
        deadline,
    }
}

fn create(store: Arc<dyn ObjectStore>) {
    let rt = volume::runtime().unwrap();
    let kdf = Argon2Params {
        m_kib: 8192,
        t: 1,
        p: 1,
    };
    volume::create(&rt, store, params(), &key(), kdf).unwrap();
}

fn open(store: Arc<dyn ObjectStore>) -> (Volume, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let v = volume::open(
        volume::runtime().unwrap(),
        store,
        &key(),
        Some(dir.path().to_owned()),
    )
    .unwrap();
    (v, dir)
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)).to_le_bytes()[1])
        .collect()
}

fn read_all(vfs: &Vfs, ino: u64) -> Vec<u8> {
    let fh = vfs.open(ino).unwrap();
    let size = vfs.getattr(ino).unwrap().size;
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let got = vfs.read(fh, out.len() as u64, 1 << 20).unwrap();
        assert!(!got.is_empty(), "short read at {}", out.len());
        out.extend_from_slice(&got);
    }
    vfs.release(fh).unwrap();
    out
}

#[test]
fn ten_percent_failing_requests_are_invisible_to_the_application() {
    let base = Arc::new(MemoryStore::new());
    create(base.clone());
    // The faulty store shares the objects of `base` through a thin forwarding wrapper.
    let faulty = Arc::new(FaultStore::new(
        Shared(base.clone()),
        FaultConfig::mixed(42, 0.10),
    ));
    let store: Arc<dyn ObjectStore> = Arc::new(RetryStore::with_policy(
        SharedFault(faulty.clone()),
        fast_retries(Duration::from_secs(60)),
    ));
    let (v, _dir) = open(store.clone());
    let vfs = &v.vfs;
    let mut expect: Vec<(String, Vec<u8>)> = Vec::new();
    let sizes = [0usize, 10, 4096, 5000, 64 * 1024, 64 * 1024 + 1, 300_000];
    for round in 0..10u32 {
        for (n, &size) in sizes.iter().enumerate() {
            let name = format!("r{round}-f{n}");
            let data = pattern(size, round * 100 + n as u32);
            let (a, fh) = vfs.create(&CTX, ROOT_INO, name.as_bytes(), 0o644).unwrap();
            for (i, piece) in data.chunks(20_000).enumerate() {
                vfs.write(fh, (i * 20_000) as u64, piece).unwrap();
            }
            if n % 2 == 0 {
                vfs.fsync(fh).unwrap();
            }
            vfs.release(fh).unwrap();
            // Read back through the faulty store (cached blocks aside).
            assert_eq!(read_all(vfs, a.ino), data, "{name}");
            expect.push((name, data));
        }
        // Overwrite the middle of an earlier file, rename one, delete one.
        let (victim, data) = expect[expect.len() - 1].clone();
        let a = vfs.lookup(ROOT_INO, victim.as_bytes()).unwrap();
        let fh = vfs.open(a.ino).unwrap();
        let patch = pattern(70_000, 9999 + round);
        vfs.write(fh, 100_000, &patch).unwrap();
        vfs.fsync(fh).unwrap();
        vfs.release(fh).unwrap();
        let mut data = data;
        data[100_000..170_000].copy_from_slice(&patch);
        let renamed = format!("{victim}-renamed");
        vfs.rename(ROOT_INO, victim.as_bytes(), ROOT_INO, renamed.as_bytes(), 0)
            .unwrap();
        expect.pop();
        expect.push((renamed, data));
        let (gone, _) = expect.remove(expect.len() - 3);
        vfs.unlink(ROOT_INO, gone.as_bytes()).unwrap();
        vfs.sync_all().unwrap();
    }
    v.unmount().unwrap();
    let c = &faulty.counters;
    let requests = c.requests.load(std::sync::atomic::Ordering::Relaxed);
    let failed = c.failed();
    eprintln!(
        "fault injection: {requests} requests, {failed} failed ({} errors, {} timeouts, {} truncated, {} lost put answers), {} slow",
        c.errors.load(std::sync::atomic::Ordering::Relaxed),
        c.timeouts.load(std::sync::atomic::Ordering::Relaxed),
        c.truncated.load(std::sync::atomic::Ordering::Relaxed),
        c.lost_puts.load(std::sync::atomic::Ordering::Relaxed),
        c.slow.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(requests > 200, "workload too small: {requests} requests");
    assert!(
        failed * 100 >= requests * 5,
        "fewer faults than configured: {failed} of {requests}"
    );
    // Truncated bodies are injected on ranged GETs only; with the disk cache a mount fetches
    // whole chunk objects, so this workload may see none (the injector's own test covers them).

    // Everything is in the bucket: a fresh cache dir on the healthy store sees it exactly.
    let (v, _dir) = open(base.clone());
    for (name, data) in &expect {
        let a = v.vfs.lookup(ROOT_INO, name.as_bytes()).unwrap();
        assert_eq!(&read_all(&v.vfs, a.ino), data, "{name} after remount");
    }
    let n = v.vfs.readdir(ROOT_INO, 0, 1000).unwrap().len();
    assert_eq!(n, expect.len() + 2, "no extra or missing names");
    v.unmount().unwrap();
}

#[test]
fn store_down_fsync_fails_with_eio_after_io_timeout_and_recovers() {
    let base = Arc::new(MemoryStore::new());
    create(base.clone());
    let faulty = Arc::new(FaultStore::new(
        Shared(base.clone()),
        FaultConfig::default(),
    ));
    let io_timeout = Duration::from_millis(1500);
    let store: Arc<dyn ObjectStore> = Arc::new(RetryStore::with_policy(
        SharedFault(faulty.clone()),
        fast_retries(io_timeout),
    ));
    let (v, _dir) = open(store);
    let vfs = &v.vfs;
    let data = pattern(200_000, 7);
    let (a, fh) = vfs.create(&CTX, ROOT_INO, b"precious", 0o644).unwrap();
    vfs.write(fh, 0, &data[..150_000]).unwrap();

    faulty.set_down(true);
    let t = Instant::now();
    let err = vfs
        .fsync(fh)
        .expect_err("fsync must fail while the store is down");
    let took = t.elapsed();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    assert!(
        took >= io_timeout / 2 && took < io_timeout * 4,
        "fsync gave up after {took:?} (io timeout {io_timeout:?})"
    );
    // Still readable from the local buffers, and still writable.
    let got = vfs.read(fh, 0, 150_000).unwrap();
    assert!(got == data[..150_000], "buffered data changed while down");
    faulty.set_down(false);
    vfs.write(fh, 150_000, &data[150_000..]).unwrap();
    faulty.set_down(true);
    assert!(vfs.fsync(fh).is_err());
    faulty.set_down(false);
    vfs.fsync(fh).expect("fsync once the store is back");
    vfs.release(fh).unwrap();
    assert_eq!(read_all(vfs, a.ino), data);
    v.unmount().unwrap();

    let (v, _dir) = open(base);
    let a = v.vfs.lookup(ROOT_INO, b"precious").unwrap();
    assert_eq!(read_all(&v.vfs, a.ino), data);
    v.unmount().unwrap();
}

/// Forwarders, so a test can keep a handle on a store it also hands to the layers above.
#[derive(Debug)]
struct Shared(Arc<MemoryStore>);
#[derive(Debug)]
struct SharedFault(Arc<FaultStore<Shared>>);

macro_rules! forward {
    ($t:ty) => {
        #[async_trait::async_trait]
        impl ObjectStore for $t {
            async fn put(
                &self,
                key: &str,
                data: bytes::Bytes,
                mode: cryptbucket::backend::PutMode,
            ) -> cryptbucket::backend::Result<cryptbucket::backend::ObjectMeta> {
                self.0.put(key, data, mode).await
            }
            async fn get(
                &self,
                key: &str,
                range: Option<std::ops::Range<u64>>,
            ) -> cryptbucket::backend::Result<bytes::Bytes> {
                self.0.get(key, range).await
            }
            async fn head(
                &self,
                key: &str,
            ) -> cryptbucket::backend::Result<cryptbucket::backend::ObjectMeta> {
                self.0.head(key).await
            }
            async fn delete(&self, key: &str) -> cryptbucket::backend::Result<()> {
                self.0.delete(key).await
            }
            async fn list(
                &self,
                prefix: &str,
            ) -> cryptbucket::backend::Result<Vec<cryptbucket::backend::ObjectMeta>> {
                self.0.list(prefix).await
            }
            fn supports_conditional(&self) -> bool {
                self.0.supports_conditional()
            }
            fn describe(&self) -> String {
                self.0.describe()
            }
        }
    };
}
forward!(Shared);
forward!(SharedFault);

#[test]
fn a_lease_that_ran_out_during_an_outage_is_renewed_afterwards() {
    let base = Arc::new(MemoryStore::new());
    create(base.clone());
    let faulty = Arc::new(FaultStore::new(
        Shared(base.clone()),
        FaultConfig::default(),
    ));
    let store: Arc<dyn ObjectStore> = Arc::new(RetryStore::with_policy(
        SharedFault(faulty.clone()),
        fast_retries(Duration::from_millis(300)),
    ));
    let dir = tempfile::tempdir().unwrap();
    let opts = volume::OpenOptions {
        cache_dir: Some(dir.path().to_owned()),
        lease_ttl: Duration::from_secs(1),
        ..Default::default()
    };
    let v = volume::open_with(volume::runtime().unwrap(), store, &key(), &opts).unwrap();
    let (_, fh) = v.vfs.create(&CTX, ROOT_INO, b"f", 0o644).unwrap();
    v.vfs.write(fh, 0, b"kept through the outage").unwrap();
    faulty.set_down(true);
    assert!(
        v.lease.renew().is_err(),
        "no renewal while the store is down"
    );
    std::thread::sleep(Duration::from_millis(2500));
    faulty.set_down(false);
    assert!(
        v.vfs.fsync(fh).is_err(),
        "the lease ran out: commits are fenced"
    );
    v.lease
        .renew()
        .expect("an expired lease nobody took is renewed");
    v.vfs.fsync(fh).expect("commits resume");
    v.vfs.release(fh).unwrap();
    v.unmount().unwrap();
    let (v, _dir) = open(base);
    let a = v.vfs.lookup(ROOT_INO, b"f").unwrap();
    assert_eq!(read_all(&v.vfs, a.ino), b"kept through the outage");
    v.unmount().unwrap();
}

#[test]
fn a_store_that_is_down_blocks_writes_past_the_staging_limit_until_it_is_back() {
    // Staging is capped at 64 MiB (the smallest cap there is); a writer streams 96 MiB while
    // every request fails. Uploads give up after the io timeout and wait for their retry,
    // so staging can only grow: the writer must stop near the cap, not run past it, and
    // finish once the store is back, with every byte in the store.
    const LIMIT: u64 = 64 << 20;
    const TOTAL: usize = 96 << 20;
    const PIECE: usize = 1 << 20;
    let base = Arc::new(MemoryStore::new());
    create(base.clone());
    let faulty = Arc::new(FaultStore::new(
        Shared(base.clone()),
        FaultConfig::default(),
    ));
    let store: Arc<dyn ObjectStore> = Arc::new(RetryStore::with_policy(
        SharedFault(faulty.clone()),
        // Short, so every queued upload has failed (none in progress) well within the
        // observation window below: only failed uploads waiting for a retry are left.
        fast_retries(Duration::from_millis(20)),
    ));
    let dir = tempfile::tempdir().unwrap();
    let opts = volume::OpenOptions {
        cache_dir: Some(dir.path().to_owned()),
        staging_limit: LIMIT,
        ..Default::default()
    };
    let v = volume::open_with(volume::runtime().unwrap(), store, &key(), &opts).unwrap();
    let vfs = v.vfs.clone();
    // What the mount loop does every 100 ms: seal idle chunks, retry failed uploads.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let (vfs, stop) = (vfs.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                vfs.tick();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let data = Arc::new(pattern(TOTAL, 11));
    let (f, fh) = vfs.create(&CTX, ROOT_INO, b"big", 0o644).unwrap();
    faulty.set_down(true);
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (vfs, data, written) = (vfs.clone(), data.clone(), written.clone());
        std::thread::spawn(move || {
            for (i, piece) in data.chunks(PIECE).enumerate() {
                vfs.write(fh, (i * PIECE) as u64, piece)?;
                written.fetch_add(piece.len() as u64, std::sync::atomic::Ordering::SeqCst);
            }
            vfs.fsync(fh)
        })
    };
    // Wait until the writer stops making progress (blocked), for at least a few upload
    // retry rounds (tick retries a failed upload every 5 s).
    let t = Instant::now();
    let mut last = (0, Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = written.load(std::sync::atomic::Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        }
        assert!(
            !writer.is_finished(),
            "the writer ran through a store that is down"
        );
        if last.1.elapsed() > Duration::from_secs(7) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the writer never blocked"
        );
    }
    let blocked_at = last.0;
    let st = vfs.stats();
    eprintln!("blocked after {blocked_at} bytes: {st:?}");
    assert!(
        blocked_at >= LIMIT / 2 && blocked_at <= LIMIT + PIECE as u64,
        "the writer blocked after {blocked_at} bytes (staging cap {LIMIT}): {st:?}"
    );
    assert!(
        st.staged_bytes <= LIMIT + 2 * PIECE as u64,
        "staging grew past its cap: {st:?}"
    );
    assert!(st.dirty_bytes >= blocked_at - PIECE as u64, "{st:?}");

    faulty.set_down(false);
    let t = Instant::now();
    while !writer.is_finished() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the writer never resumed after the store came back ({:?})",
            vfs.stats()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    writer
        .join()
        .unwrap()
        .expect("writes and fsync complete once the store is back");
    assert_eq!(
        written.load(std::sync::atomic::Ordering::SeqCst),
        TOTAL as u64
    );
    vfs.release(fh).unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    ticker.join().unwrap();
    assert_eq!(vfs.stats().dirty_bytes, 0);
    drop(vfs);
    v.unmount().unwrap();

    // Nothing lost: the store alone (a fresh cache dir) has every byte.
    let (v, _dir) = open(base);
    assert_eq!(v.vfs.lookup(ROOT_INO, b"big").unwrap().ino, f.ino);
    assert!(
        read_all(&v.vfs, f.ino) == *data,
        "content differs after the outage"
    );
    v.unmount().unwrap();
}
