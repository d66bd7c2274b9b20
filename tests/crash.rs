//! Crash harness on real mounts.
//!
//! `sigkill_cycles_lose_nothing_fsynced`: a workload of writes, fsyncs, renames and deletes
//! runs on a mount; the daemon is SIGKILLed at a random moment; then (1) the volume is
//! mounted from the bucket alone (a fresh cache dir) and (2) fsck checks the bucket, and
//! (3) the next cycle mounts again with the original cache dir. After every mount, every
//! file logged as fsync'd must hold exactly its content, and every file present must hold
//! only bytes it was ever written (contents are a pattern derived from the file's id, and a
//! file is never touched once logged). Default: 20 cycles; CRYPTBUCKET_CRASH_CYCLES=N or
//! CRYPTBUCKET_LONG_TESTS=1 (300) run more; CRYPTBUCKET_CRASH_SEED replays a run.
//!
//! `s3_outage_mid_upload_recovers`: the S3 server disappears (a TCP proxy in front of it
//! drops every connection and refuses new ones) in the middle of an upload and comes back;
//! the fsync waits, then succeeds, and everything fsync'd is intact from a fresh cache dir.
//!
//! `mount_with_ten_percent_faults`: a mount whose store fails 10 % of requests
//! (CRYPTBUCKET_TEST_FAULTS) shows no error to the application.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const PASS: &str = "crash test passphrase";

/// xorshift64*: deterministic per seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The only content file `id` ever has: byte i of it is `pattern_byte(id, i)`.
fn pattern_byte(id: u64, i: u64) -> u8 {
    let x = (i ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    (x >> 29) as u8 | 1 // never 0, so a hole of zeros is always detected
}

fn pattern(id: u64, len: u64) -> Vec<u8> {
    (0..len).map(|i| pattern_byte(id, i)).collect()
}

/// The file id in a name like `f123`, `s123`, `r123`.
fn id_of(name: &str) -> Option<u64> {
    name.get(1..)?.parse().ok()
}

type Log = Arc<Mutex<BTreeMap<PathBuf, u64>>>;

/// Runs until an operation fails (the daemon died) or `stop`. Every file is written once,
/// sequentially, and logged (relative path -> length) only after its fsync returned.
fn workload(mnt: PathBuf, seed: u64, first_id: u64, log: Log, stop: Arc<AtomicBool>) -> u64 {
    let mut rng = Rng(seed | 1);
    let mut id = first_id;
    let mut scratch: Vec<PathBuf> = Vec::new();
    let sizes = [
        0u64,
        1,
        100,
        4095,
        5000,
        70_000,
        300_000,
        CHUNK as u64 + 1000,
    ];
    let mut run = || -> std::io::Result<()> {
        while !stop.load(Ordering::SeqCst) {
            id += 1;
            let dir = format!("d{}", rng.below(3));
            std::fs::create_dir_all(mnt.join(&dir))?;
            let pick = rng.below(100);
            let size = {
                let i = rng.below(100);
                // Big files are rare: they cost an upload of a whole chunk.
                let idx = if i < 2 { 7 } else { (i % 7) as usize };
                sizes[idx]
            };
            if pick < 55 {
                let rel = PathBuf::from(&dir).join(format!("f{id}"));
                let mut f = std::fs::File::create(mnt.join(&rel))?;
                let data = pattern(id, size);
                let mut off = 0usize;
                while off < data.len() {
                    let n = (1 + rng.below(200_000) as usize).min(data.len() - off);
                    f.write_all(&data[off..off + n])?;
                    off += n;
                }
                f.sync_all()?;
                drop(f);
                log.lock().unwrap().insert(rel, size);
            } else if pick < 75 {
                let rel = PathBuf::from(&dir).join(format!("s{id}"));
                std::fs::write(mnt.join(&rel), pattern(id, size))?;
                scratch.push(rel);
            } else if pick < 88 && !scratch.is_empty() {
                let i = rng.below(scratch.len() as u64) as usize;
                let from = scratch.swap_remove(i);
                let n = id_of(from.file_name().unwrap().to_str().unwrap()).unwrap();
                let to = PathBuf::from(format!("d{}", rng.below(3))).join(format!("r{n}"));
                std::fs::rename(mnt.join(&from), mnt.join(&to))?;
                scratch.push(to);
            } else if !scratch.is_empty() {
                let i = rng.below(scratch.len() as u64) as usize;
                let gone = scratch.swap_remove(i);
                std::fs::remove_file(mnt.join(gone))?;
            }
        }
        Ok(())
    };
    let _ = run();
    id
}

/// Every logged file exactly; every present file only bytes of its own pattern.
/// Check files with id >= `min_id` (0: all): every logged one has exactly its fsync'd
/// content, and no present one holds bytes it never had. Returns how many were present.
fn verify(mnt: &Path, log: &BTreeMap<PathBuf, u64>, what: &str, min_id: u64) -> usize {
    let recent = |rel: &Path| {
        rel.file_name()
            .and_then(|n| n.to_str())
            .and_then(id_of)
            .is_none_or(|id| id >= min_id)
    };
    for (rel, len) in log {
        if !recent(rel) {
            continue;
        }
        let p = mnt.join(rel);
        let got = std::fs::read(&p)
            .unwrap_or_else(|e| panic!("{what}: fsync'd file {} is gone: {e}", rel.display()));
        let id = id_of(rel.file_name().unwrap().to_str().unwrap()).unwrap();
        assert_eq!(
            got.len() as u64,
            *len,
            "{what}: {} has the wrong length",
            rel.display()
        );
        if got != pattern(id, *len) {
            let at = got
                .iter()
                .enumerate()
                .position(|(i, b)| *b != pattern_byte(id, i as u64))
                .unwrap_or(0);
            panic!(
                "{what}: fsync'd file {} differs at byte {at}",
                rel.display()
            );
        }
    }
    let mut present = 0;
    for p in files_under(mnt) {
        let rel = p.strip_prefix(mnt).unwrap();
        let name = rel.file_name().unwrap().to_str().unwrap();
        if rel.starts_with("lost+found") {
            panic!("{what}: fsck-style damage: {}", rel.display());
        }
        let id = id_of(name).unwrap_or_else(|| panic!("{what}: unexpected file {}", rel.display()));
        if id < min_id {
            continue;
        }
        let got =
            std::fs::read(&p).unwrap_or_else(|e| panic!("{what}: read {}: {e}", rel.display()));
        if let Some(at) = got
            .iter()
            .enumerate()
            .position(|(i, b)| *b != pattern_byte(id, i as u64))
        {
            panic!(
                "{what}: {} ({} bytes) holds bytes it never had, from byte {at}",
                rel.display(),
                got.len()
            );
        }
        present += 1;
    }
    present
}

fn kill_and_detach(mnt: &Path, pid: i32) {
    // SAFETY: kill(2) on the pid of the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill {pid}");
    let t = Instant::now();
    // SAFETY: kill with signal 0 only probes for existence.
    while unsafe { libc::kill(pid, 0) } == 0 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = Command::new("fusermount3").arg("-uz").arg(mnt).status();
}

fn fsck_clean(vol: &common::Volume, what: &str) {
    let mut c = vol.cmd("fsck", &[&vol.store]);
    let o = run(&mut c, CMD_TIMEOUT);
    assert!(
        o.status.code() == Some(0) && o.stdout.contains(" 0 errors"),
        "{what}: fsck found problems: {o}"
    );
}

#[test]
fn sigkill_cycles_lose_nothing_fsynced() {
    require_fuse!("sigkill_cycles_lose_nothing_fsynced");
    let _heavy = heavy_lock();
    let cycles: u64 = std::env::var("CRYPTBUCKET_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if std::env::var_os("CRYPTBUCKET_LONG_TESTS").is_some() {
            300
        } else {
            20
        });
    let seed: u64 = std::env::var("CRYPTBUCKET_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| u64::from_le_bytes(random_bytes(8).try_into().unwrap()));
    eprintln!("crash harness: {cycles} cycles, CRYPTBUCKET_CRASH_SEED={seed}");
    let dir = tempdir();
    let store = dir.path().join("store");
    let vol = common::Volume::local(&store, Key::Passphrase(PASS.into()));
    vol.init();
    let mnt = dir.path().join("mnt");
    let fresh_mnt = dir.path().join("fresh-mnt");
    let cache = dir.path().join("cache");
    let log: Log = Arc::new(Mutex::new(BTreeMap::new()));
    let mut rng = Rng(seed | 1);
    let mut next_id = 0u64;
    let started = Instant::now();
    let mut stats = (0usize, 0usize); // (files present at the last check, kills)
    let mut prev_first = 0u64;
    for cycle in 0..cycles {
        // Every file is checked every 5th cycle and at the end; in between only the files
        // of the last two cycles (the ones a crash could touch), so a cycle's cost does not
        // grow with everything written before.
        let min_id = if cycle % 5 == 4 { 0 } else { prev_first };
        // Same cache dir as the killed daemon: its local state is picked up again.
        let m = vol.mount(&mnt, &cache);
        let snapshot = log.lock().unwrap().clone();
        verify(
            &mnt,
            &snapshot,
            &format!("cycle {cycle}, same cache dir"),
            min_id,
        );
        let pid = daemon_pid(&mnt);
        let stop = Arc::new(AtomicBool::new(false));
        let (wm, wl, ws, wseed) = (mnt.clone(), log.clone(), stop.clone(), rng.next());
        let first = next_id;
        let worker = std::thread::spawn(move || workload(wm, wseed, first, wl, ws));
        std::thread::sleep(Duration::from_millis(100 + rng.below(1400)));
        kill_and_detach(&mnt, pid);
        stop.store(true, Ordering::SeqCst);
        next_id = worker.join().expect("workload thread") + 1_000;
        m.forget();
        stats.1 += 1;

        // From the bucket alone. The killed daemon's lease is still valid for a minute;
        // this test knows the daemon is dead, so it removes the lease (as --break-lease
        // would after expiry).
        let _ = std::fs::remove_file(store.join("lock"));
        let fresh_cache = dir.path().join(format!("fresh-cache-{cycle}"));
        let f = vol.mount(&fresh_mnt, &fresh_cache);
        let snapshot = log.lock().unwrap().clone();
        stats.0 = verify(
            &fresh_mnt,
            &snapshot,
            &format!("cycle {cycle}, fresh cache dir"),
            min_id,
        );
        f.unmount();
        let _ = std::fs::remove_dir_all(&fresh_cache);
        fsck_clean(&vol, &format!("cycle {cycle}"));
        eprintln!(
            "cycle {cycle}: killed, {} files fsync'd so far, {} present, {:.1?} elapsed",
            snapshot.len(),
            stats.0,
            started.elapsed()
        );
        prev_first = first;
    }
    let m = vol.mount(&mnt, &cache);
    let snapshot = log.lock().unwrap().clone();
    verify(&mnt, &snapshot, "final", 0);
    m.unmount();
    fsck_clean(&vol, "final");
    eprintln!(
        "crash harness: {} kills in {:.1?}, {} files fsync'd and intact, {} files present at the end of the last cycle",
        stats.1,
        started.elapsed(),
        snapshot.len(),
        stats.0
    );
    assert!(
        snapshot.len() as u64 >= cycles / 2,
        "the workload logged too little"
    );
}

#[test]
fn mount_with_ten_percent_faults() {
    require_fuse!("mount_with_ten_percent_faults");
    let _heavy = heavy_lock();
    let dir = tempdir();
    let store = dir.path().join("store");
    let vol = common::Volume::local(&store, Key::Passphrase(PASS.into()));
    vol.init();
    let mnt = dir.path().join("mnt");
    let cache = dir.path().join("cache");
    // The daemon inherits the variable from the mount command.
    std::env::set_var(
        "CRYPTBUCKET_TEST_FAULTS",
        "seed=11,rate=0.1,timeout_ms=50,slow_ms=20",
    );
    let m = vol.mount(&mnt, &cache);
    std::env::remove_var("CRYPTBUCKET_TEST_FAULTS");
    let mut expect = BTreeMap::new();
    for i in 0..24u64 {
        let size = [10, 5000, 300_000, CHUNK as u64 + 7][(i % 4) as usize];
        let rel = PathBuf::from(format!("f{i}"));
        let data = pattern(i, size);
        let mut f = std::fs::File::create(mnt.join(&rel)).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        expect.insert(rel, size);
    }
    std::fs::rename(mnt.join("f1"), mnt.join("r1")).unwrap();
    expect.remove(Path::new("f1"));
    expect.insert(PathBuf::from("r1"), 5000);
    std::fs::remove_file(mnt.join("f2")).unwrap();
    expect.remove(Path::new("f2"));
    verify(&mnt, &expect, "on the faulty mount", 0);
    let log = std::fs::read_to_string(m.log_path()).unwrap_or_default();
    m.unmount();
    let injected = log.matches("(injected").count();
    eprintln!("the faulty mount retried {injected} injected failures");
    assert!(
        injected >= 3,
        "faults were on and some requests failed: {log}"
    );
    let fresh = dir.path().join("fresh");
    let f = vol.mount(&mnt, &fresh);
    assert_eq!(
        verify(&mnt, &expect, "fresh cache dir, healthy store", 0),
        expect.len()
    );
    f.unmount();
    fsck_clean(&vol, "after the faulty mount");
}

/// A TCP proxy in front of the S3 server that can "die" (drop every connection, refuse new
/// ones) and come back on the same port, without the server losing its (in-memory) data.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    target: String,
    /// Bytes forwarded client -> server since the proxy started.
    bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    fn start(target: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let p = Proxy {
            port,
            up: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
            target: target.to_string(),
            bytes: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        };
        p.serve(l);
        p
    }

    fn serve(&self, l: TcpListener) {
        self.up.store(true, Ordering::SeqCst);
        let (up, conns, target) = (self.up.clone(), self.conns.clone(), self.target.clone());
        let bytes = self.bytes.clone();
        l.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while up.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        let Ok(s) = TcpStream::connect(&target) else {
                            continue;
                        };
                        let mut g = conns.lock().unwrap();
                        g.push(c.try_clone().unwrap());
                        g.push(s.try_clone().unwrap());
                        for (mut a, mut b, count) in [
                            (c.try_clone().unwrap(), s.try_clone().unwrap(), true),
                            (s, c, false),
                        ] {
                            let bytes = bytes.clone();
                            std::thread::spawn(move || {
                                let mut buf = [0u8; 65536];
                                while let Ok(n) = a.read(&mut buf) {
                                    if n == 0 || b.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                    if count {
                                        bytes.fetch_add(n as u64, Ordering::SeqCst);
                                    }
                                }
                                let _ = b.shutdown(Shutdown::Both);
                            });
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            // Dropping the listener closes the port: new connections are refused.
        });
    }

    fn kill(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    fn restart(&self) {
        let t = Instant::now();
        loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => return self.serve(l),
                Err(e) if t.elapsed() < Duration::from_secs(10) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot listen again on port {}: {e}", self.port),
            }
        }
    }
}

#[test]
fn s3_outage_mid_upload_recovers() {
    require_fuse!("s3_outage_mid_upload_recovers");
    let Some(endpoint) = s3_endpoint() else {
        note_skip(
            "s3_outage_mid_upload_recovers",
            "no S3 test server (CRYPTBUCKET_TEST_S3_ENDPOINT)",
        );
        return;
    };
    let _heavy = heavy_lock();
    let target = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let proxy = Proxy::start(&target);
    let via = format!("http://127.0.0.1:{}", proxy.port);
    let bucket = unique_bucket("outage");
    s3_create_bucket(&endpoint, &bucket);
    let vol = common::Volume::s3(format!("s3://{bucket}"), &via, Key::Passphrase(PASS.into()));
    vol.init();
    let dir = tempdir();
    let mnt = dir.path().join("mnt");
    let m = vol.mount_with(&mnt, &dir.path().join("cache"), &["--io-timeout", "8"]);

    let mut expect = BTreeMap::new();
    let big = 3 * CHUNK as u64 + 11;
    let writer = {
        let mnt = mnt.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let mut f = std::fs::File::create(mnt.join("f1")).unwrap();
            f.write_all(&pattern(1, big)).unwrap();
            f.sync_all().unwrap();
            t.elapsed()
        })
    };
    // Cut the connection in the middle of the upload: once some MiB went through.
    let t = Instant::now();
    while proxy.bytes.load(Ordering::SeqCst) < 2 * MIB as u64
        && t.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        !writer.is_finished(),
        "the upload finished before the outage"
    );
    proxy.kill();
    std::thread::sleep(Duration::from_secs(3));
    proxy.restart();
    let took = writer.join().expect("write and fsync through the outage");
    eprintln!("write + fsync of {big} bytes through a 3 s outage took {took:?}");
    expect.insert(PathBuf::from("f1"), big);
    {
        let mut f = std::fs::File::create(mnt.join("f2")).unwrap();
        f.write_all(&pattern(2, 5000)).unwrap();
        f.sync_all().unwrap();
    }
    expect.insert(PathBuf::from("f2"), 5000);
    verify(&mnt, &expect, "after the outage", 0);

    // An outage longer than --io-timeout: fsync fails with EIO, the data stays buffered,
    // and a later fsync once the server is back succeeds.
    {
        let mut f = std::fs::File::create(mnt.join("f3")).unwrap();
        f.write_all(&pattern(3, 300_000)).unwrap();
        proxy.kill();
        let t = Instant::now();
        let err = f.sync_all().expect_err("fsync while the store is gone");
        let took = t.elapsed();
        eprintln!("fsync during a long outage failed after {took:?}: {err}");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        assert!(took >= Duration::from_secs(5), "gave up after {took:?}");
        proxy.restart();
        f.sync_all().expect("fsync once the store is back");
    }
    expect.insert(PathBuf::from("f3"), 300_000);
    verify(&mnt, &expect, "after the long outage", 0);
    m.unmount();

    let fresh = dir.path().join("fresh");
    let f = vol.mount(&mnt, &fresh);
    verify(&mnt, &expect, "fresh cache dir after the outage", 0);
    f.unmount();
    fsck_clean(&vol, "after the outage");
}
