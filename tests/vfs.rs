//! The vfs layer without a kernel: file contents against a byte-vector model (property
//! test), namespace operations, and remounts from the store alone (fresh cache dir).

use std::sync::Arc;

use proptest::prelude::*;

use cryptbucket::backend::memory::MemoryStore;
use cryptbucket::backend::ObjectStore;
use cryptbucket::crypto::{Argon2Params, Cipher, KeySource, VolumeParams};
use cryptbucket::meta::{FileKind, ROOT_INO};
use cryptbucket::vfs::{Ctx, SetAttr, Vfs, VfsError};
use cryptbucket::volume::{self, Volume};

const CTX: Ctx = Ctx {
    uid: 1000,
    gid: 1000,
    umask: 0o022,
};

fn key() -> KeySource {
    KeySource::Passphrase(zeroize::Zeroizing::new("test passphrase".to_string()))
}

fn small_params(cipher: Cipher) -> VolumeParams {
    VolumeParams {
        cipher,
        chunk_size: 64 * 1024,
        block_size: 4096,
        ..VolumeParams::default()
    }
}

struct Fixture {
    store: Arc<dyn ObjectStore>,
    dirs: Vec<tempfile::TempDir>,
}

impl Fixture {
    fn new(params: VolumeParams) -> Self {
        let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
        let rt = volume::runtime().unwrap();
        let kdf = Argon2Params {
            m_kib: 8192,
            t: 1,
            p: 1,
        };
        volume::create(&rt, store.clone(), params, &key(), kdf).unwrap();
        Fixture {
            store,
            dirs: Vec::new(),
        }
    }

    /// Mount with a fresh cache dir: everything comes from the store.
    fn mount(&mut self) -> Volume {
        let dir = tempfile::tempdir().unwrap();
        // No grace period: these tests check that unreferenced chunks leave the store.
        let opts = volume::OpenOptions {
            cache_dir: Some(dir.path().to_owned()),
            superseded_grace: std::time::Duration::ZERO,
            ..volume::OpenOptions::default()
        };
        let v = volume::open_with(
            volume::runtime().unwrap(),
            self.store.clone(),
            &key(),
            &opts,
        )
        .unwrap();
        self.dirs.push(dir);
        v
    }
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

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}

#[test]
fn sizes_round_trip_through_the_store() {
    for cipher in [Cipher::Aes256Gcm, Cipher::XChaCha20Poly1305] {
        let mut fx = Fixture::new(small_params(cipher));
        let cs = 64 * 1024;
        let bs = 4096;
        let sizes = [0, 1, bs - 1, bs, bs + 1, cs - 1, cs, cs + 1, 3 * cs + 7];
        let v = fx.mount();
        let mut inos = Vec::new();
        for (n, &size) in sizes.iter().enumerate() {
            let name = format!("f{size}");
            let (a, fh) = v
                .vfs
                .create(&CTX, ROOT_INO, name.as_bytes(), 0o644)
                .unwrap();
            let data = pattern(size, n as u8);
            for (i, piece) in data.chunks(10_000).enumerate() {
                v.vfs.write(fh, (i * 10_000) as u64, piece).unwrap();
            }
            v.vfs.release(fh).unwrap();
            assert_eq!(
                read_all(&v.vfs, a.ino),
                data,
                "{cipher:?} size {size} before remount"
            );
            inos.push((name, data));
        }
        v.unmount().unwrap();
        let v = fx.mount();
        for (name, data) in inos {
            let a = v.vfs.lookup(ROOT_INO, name.as_bytes()).unwrap();
            assert_eq!(a.size, data.len() as u64);
            assert_eq!(
                read_all(&v.vfs, a.ino),
                data,
                "{cipher:?} {name} after remount"
            );
        }
    }
}

#[test]
fn namespace_operations_survive_remount() {
    let mut fx = Fixture::new(small_params(Cipher::Aes256Gcm));
    let v = fx.mount();
    let vfs = &v.vfs;
    let d = vfs.mkdir(&CTX, ROOT_INO, b"dir", 0o755).unwrap();
    let sub = vfs.mkdir(&CTX, d.ino, b"sub", 0o700).unwrap();
    let (f, fh) = vfs
        .create(&CTX, sub.ino, "é 日本 file.txt".as_bytes(), 0o600)
        .unwrap();
    vfs.write(fh, 0, b"hello").unwrap();
    vfs.release(fh).unwrap();
    vfs.symlink(&CTX, ROOT_INO, b"link", b"dir/sub/x").unwrap();
    vfs.link(f.ino, ROOT_INO, b"hard").unwrap();
    assert_eq!(vfs.getattr(f.ino).unwrap().nlink, 2);
    assert!(matches!(
        vfs.rmdir(ROOT_INO, b"dir"),
        Err(VfsError::NotEmpty)
    ));
    vfs.rename(ROOT_INO, b"dir", ROOT_INO, b"moved", 0).unwrap();
    assert!(matches!(
        vfs.lookup(ROOT_INO, b"dir"),
        Err(VfsError::NotFound)
    ));
    // Moving a directory into its own subtree is refused.
    assert!(vfs.rename(ROOT_INO, b"moved", sub.ino, b"x", 0).is_err());
    vfs.setattr(
        f.ino,
        SetAttr {
            perm: Some(0o640),
            ..SetAttr::default()
        },
    )
    .unwrap();
    let (g, fh) = vfs.create(&CTX, ROOT_INO, b"gone", 0o644).unwrap();
    vfs.write(fh, 0, &pattern(200_000, 3)).unwrap();
    vfs.release(fh).unwrap();
    vfs.unlink(ROOT_INO, b"gone").unwrap();
    assert!(vfs.getattr(g.ino).is_err());
    v.unmount().unwrap();

    let v = fx.mount();
    let vfs = &v.vfs;
    let moved = vfs.lookup(ROOT_INO, b"moved").unwrap();
    let sub = vfs.lookup(moved.ino, b"sub").unwrap();
    let f = vfs.lookup(sub.ino, "é 日本 file.txt".as_bytes()).unwrap();
    assert_eq!(f.perm, 0o640);
    assert_eq!(f.nlink, 2);
    assert_eq!(read_all(vfs, f.ino), b"hello");
    let l = vfs.lookup(ROOT_INO, b"link").unwrap();
    assert_eq!(l.kind, FileKind::Symlink);
    assert_eq!(vfs.readlink(l.ino).unwrap(), b"dir/sub/x");
    let names: Vec<Vec<u8>> = vfs
        .readdir(ROOT_INO, 0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names.len(), 5, "., .., moved, link, hard: {names:?}");
    // The unlinked file's chunks were deleted from the store after the commit.
    let chunks = v.rt.block_on(fx.store.list("d/")).unwrap();
    assert_eq!(chunks.len(), 0, "only inline files remain: {chunks:?}");
}

#[test]
fn unlinked_open_file_stays_usable_until_close() {
    let mut fx = Fixture::new(small_params(Cipher::Aes256Gcm));
    let v = fx.mount();
    let (a, fh) = v.vfs.create(&CTX, ROOT_INO, b"tmp", 0o644).unwrap();
    v.vfs.write(fh, 0, &pattern(100_000, 1)).unwrap();
    v.vfs.unlink(ROOT_INO, b"tmp").unwrap();
    v.vfs.write(fh, 100_000, b"more").unwrap();
    let got = v.vfs.read(fh, 99_998, 10).unwrap();
    assert_eq!(&got[2..], b"more");
    v.vfs.release(fh).unwrap();
    assert!(v.vfs.getattr(a.ino).is_err());
}

#[derive(Debug, Clone)]
enum Op {
    Write { off: u32, len: u32, seed: u8 },
    Truncate(u32),
    Reopen,
    Remount,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u32..300_000, 1u32..150_000, any::<u8>())
            .prop_map(|(off, len, seed)| Op::Write { off, len, seed }),
        2 => (0u32..300_000).prop_map(Op::Truncate),
        1 => Just(Op::Reopen),
        1 => Just(Op::Remount),
    ]
}

fn cases() -> u32 {
    std::env::var("CRYPTBUCKET_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Random writes and truncates across block, chunk and inline boundaries, with
    /// reopen and remount, always read back exactly like a plain byte vector.
    #[test]
    fn file_contents_match_model(ops in proptest::collection::vec(op(), 1..14)) {
        let mut fx = Fixture::new(small_params(Cipher::Aes256Gcm));
        let mut v = fx.mount();
        let (a, mut fh) = v.vfs.create(&CTX, ROOT_INO, b"f", 0o644).unwrap();
        let ino = a.ino;
        let mut model: Vec<u8> = Vec::new();
        for op in ops {
            match op {
                Op::Write { off, len, seed } => {
                    let data = pattern(len as usize, seed);
                    v.vfs.write(fh, off as u64, &data).unwrap();
                    let end = off as usize + data.len();
                    if model.len() < end { model.resize(end, 0); }
                    model[off as usize..end].copy_from_slice(&data);
                }
                Op::Truncate(size) => {
                    v.vfs.setattr(ino, SetAttr { size: Some(size as u64), ..SetAttr::default() }).unwrap();
                    model.resize(size as usize, 0);
                }
                Op::Reopen => {
                    v.vfs.release(fh).unwrap();
                    fh = v.vfs.open(ino).unwrap();
                }
                Op::Remount => {
                    v.vfs.release(fh).unwrap();
                    v.unmount().unwrap();
                    v = fx.mount();
                    fh = v.vfs.open(ino).unwrap();
                }
            }
            prop_assert_eq!(v.vfs.getattr(ino).unwrap().size, model.len() as u64);
            let got = v.vfs.read(fh, 0, model.len() as u32 + 10).unwrap();
            prop_assert!(got == model, "content differs from the model");
        }
        v.vfs.release(fh).unwrap();
        v.unmount().unwrap();
    }
}

#[test]
fn offsets_past_4_gib_and_holes() {
    let mut fx = Fixture::new(small_params(Cipher::Aes256Gcm));
    let v = fx.mount();
    let (a, fh) = v.vfs.create(&CTX, ROOT_INO, b"big", 0o644).unwrap();
    let off = (5u64 << 30) + 12345;
    v.vfs.write(fh, off, b"past four gigabytes").unwrap();
    v.vfs.release(fh).unwrap();
    v.unmount().unwrap();
    let v = fx.mount();
    let fh = v.vfs.open(a.ino).unwrap();
    assert_eq!(v.vfs.getattr(a.ino).unwrap().size, off + 19);
    assert_eq!(v.vfs.read(fh, off, 100).unwrap(), b"past four gigabytes");
    assert_eq!(v.vfs.read(fh, 1 << 32, 4096).unwrap(), vec![0u8; 4096]);
    v.vfs.release(fh).unwrap();
    // The hole costs nothing: one chunk object for the one written chunk.
    let chunks = v.rt.block_on(fx.store.list("d/")).unwrap();
    assert_eq!(chunks.len(), 1, "{chunks:?}");
}

#[test]
fn large_directory_lists_every_entry_once_despite_concurrent_changes() {
    let n: usize = if std::env::var("CRYPTBUCKET_LONG_TESTS").is_ok() {
        100_000
    } else {
        10_000
    };
    let mut fx = Fixture::new(small_params(Cipher::Aes256Gcm));
    let v = fx.mount();
    let d = v.vfs.mkdir(&CTX, ROOT_INO, b"many", 0o755).unwrap();
    for i in 0..n {
        v.vfs
            .mknod(&CTX, d.ino, format!("entry-{i:06}").as_bytes(), 0o100644, 0)
            .unwrap();
    }
    let start = std::time::Instant::now();
    let mut seen = std::collections::HashSet::new();
    let mut offset = 0i64;
    let mut batches = 0;
    loop {
        let batch = v.vfs.readdir(d.ino, offset, 1000).unwrap();
        if batch.is_empty() {
            break;
        }
        for e in &batch {
            assert!(seen.insert(e.name.clone()), "listed twice: {:?}", e.name);
            offset = e.next;
        }
        // Entries removed and added while listing must not shift the offsets.
        if batches == 3 {
            v.vfs.unlink(d.ino, b"entry-000000").unwrap();
            v.vfs
                .mknod(&CTX, d.ino, b"added-late", 0o100644, 0)
                .unwrap();
        }
        batches += 1;
    }
    let elapsed = start.elapsed();
    // Every original entry except none were skipped; the late addition shows at the end.
    for i in 1..n {
        assert!(
            seen.contains(format!("entry-{i:06}").as_bytes()),
            "missing entry {i}"
        );
    }
    assert!(seen.contains(b"added-late".as_slice()));
    eprintln!("listed {} entries in {elapsed:?}", seen.len());
}

#[test]
fn rename_noreplace_and_exchange() {
    let mut fx = Fixture::new(small_params(Cipher::Aes256Gcm));
    let v = fx.mount();
    let vfs = &v.vfs;
    let (f, fh) = vfs.create(&CTX, ROOT_INO, b"file", 0o644).unwrap();
    vfs.release(fh).unwrap();
    let d = vfs.mkdir(&CTX, ROOT_INO, b"dir", 0o755).unwrap();
    let sub = vfs.mkdir(&CTX, d.ino, b"sub", 0o755).unwrap();
    let noreplace = libc::RENAME_NOREPLACE;
    let err = vfs
        .rename(ROOT_INO, b"file", ROOT_INO, b"dir", noreplace)
        .unwrap_err();
    assert_eq!(err.errno(), libc::EEXIST);
    vfs.rename(ROOT_INO, b"file", ROOT_INO, b"new", noreplace)
        .unwrap();
    // Exchange a file and a directory that live in different parents.
    vfs.rename(ROOT_INO, b"new", d.ino, b"sub", libc::RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(vfs.lookup(ROOT_INO, b"new").unwrap().ino, sub.ino);
    assert_eq!(vfs.lookup(d.ino, b"sub").unwrap().ino, f.ino);
    // The directory moved up: link counts follow.
    assert_eq!(vfs.getattr(d.ino).unwrap().nlink, 2);
    assert_eq!(vfs.getattr(ROOT_INO).unwrap().nlink, 4);
    assert_eq!(vfs.lookup(sub.ino, b"..").unwrap().ino, ROOT_INO);
    let err = vfs
        .rename(
            ROOT_INO,
            b"new",
            ROOT_INO,
            b"missing",
            libc::RENAME_EXCHANGE,
        )
        .unwrap_err();
    assert_eq!(err.errno(), libc::ENOENT);
}

#[test]
fn writer_lease_refuses_a_second_mount_and_is_released() {
    use cryptbucket::volume::OpenOptions;
    let mut fx = Fixture::new(small_params(Cipher::Aes256Gcm));
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let t0 = unix();
    let first = fx.mount();
    let t1 = unix();
    let dir = tempfile::tempdir().unwrap();
    let opts = OpenOptions {
        cache_dir: Some(dir.path().to_owned()),
        lease_ttl: std::time::Duration::from_secs(1),
        ..OpenOptions::default()
    };
    let err = volume::open_with(volume::runtime().unwrap(), fx.store.clone(), &key(), &opts)
        .err()
        .expect("second mount must be refused");
    let msg = err.to_string();
    // The holder in full: host, pid, and since when (the first mount's start, in UTC).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(
        msg.contains(&format!(
            "already mounted by {} (pid {}) since ",
            host.trim(),
            std::process::id()
        )),
        "{msg}"
    );
    assert!(
        (t0..=t1).any(|t| msg.contains(&format!("since {} (", cryptbucket::meta::lease::utc(t)))),
        "the message does not name the start of the first mount ({t0}..{t1}): {msg}"
    );
    assert!(
        msg.contains("valid until ") && msg.contains(" UTC (in "),
        "{msg}"
    );
    // The same cache dir after a crash (lease never released) takes its own lease back.
    let first_dir = fx.dirs.last().unwrap().path().to_owned();
    // A crash: everything flushed, but the lease is never released.
    first.vfs.shutdown().unwrap();
    drop(first);
    let again = volume::open(
        volume::runtime().unwrap(),
        fx.store.clone(),
        &key(),
        Some(first_dir),
    )
    .unwrap();
    again.lease.release();
    drop(again);
    // Released: another cache dir mounts.
    let other =
        volume::open_with(volume::runtime().unwrap(), fx.store.clone(), &key(), &opts).unwrap();
    // Once its 1 s lease has expired unrenewed, commits are fenced...
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (_, fh) = other.vfs.create(&CTX, ROOT_INO, b"late", 0o644).unwrap();
    other.vfs.release(fh).unwrap();
    assert!(
        other.vfs.commit().is_err(),
        "commit with an expired lease must fail"
    );
    // ...and a new mount must break the expired lease explicitly.
    let dir3 = tempfile::tempdir().unwrap();
    let mut opts3 = OpenOptions {
        cache_dir: Some(dir3.path().to_owned()),
        ..OpenOptions::default()
    };
    let err = volume::open_with(volume::runtime().unwrap(), fx.store.clone(), &key(), &opts3)
        .err()
        .expect("expired lease needs --break-lease");
    assert!(err.to_string().contains("--break-lease"), "{err}");
    opts3.break_lease = true;
    let third =
        volume::open_with(volume::runtime().unwrap(), fx.store.clone(), &key(), &opts3).unwrap();
    // The old holder has lost it for good.
    assert!(other.lease.renew().is_err());
    third.vfs.shutdown().unwrap();
}

/// Work after the serving loop (final flush at unmount, gc of an unmounted volume) keeps the
/// lease alive with a background renewer, and no renewal happens once the guard is dropped.
#[test]
fn a_background_renewer_keeps_the_lease_until_dropped() {
    let fx = Fixture::new(small_params(Cipher::Aes256Gcm));
    let dir = tempfile::tempdir().unwrap();
    let opts = volume::OpenOptions {
        cache_dir: Some(dir.path().to_owned()),
        lease_ttl: std::time::Duration::from_secs(1),
        ..volume::OpenOptions::default()
    };
    let v = volume::open_with(volume::runtime().unwrap(), fx.store.clone(), &key(), &opts).unwrap();
    let renewer = v
        .lease
        .renew_in_background(std::time::Duration::from_millis(200));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (_, fh) = v.vfs.create(&CTX, ROOT_INO, b"kept", 0o644).unwrap();
    v.vfs.release(fh).unwrap();
    v.vfs
        .commit()
        .expect("renewed in the background: the commit goes through");
    drop(renewer);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (_, fh) = v.vfs.create(&CTX, ROOT_INO, b"late", 0o644).unwrap();
    v.vfs.release(fh).unwrap();
    assert!(
        v.vfs.commit().is_err(),
        "no renewal after the guard is dropped: the lease ran out"
    );
}

/// READDIRPLUS and the FUSE-thread fast paths (`*_nowait`) must answer exactly what the
/// ordinary calls answer, including a file whose written size is not recorded yet.
#[test]
fn readdirplus_and_nowait_answers_match_getattr() {
    let mut fx = Fixture::new(small_params(Cipher::Aes256Gcm));
    let v = fx.mount();
    let vfs = &v.vfs;
    let d = vfs.mkdir(&CTX, ROOT_INO, b"d", 0o755).unwrap();
    let mut inos = Vec::new();
    for i in 0..70u32 {
        let name = format!("f{i:03}");
        let (a, fh) = vfs.create(&CTX, d.ino, name.as_bytes(), 0o644).unwrap();
        vfs.write(fh, 0, &pattern(100 + i as usize * 1000, i as u8))
            .unwrap();
        vfs.release(fh).unwrap();
        inos.push(a.ino);
    }
    vfs.symlink(&CTX, d.ino, b"link", b"f000").unwrap();
    // One file held open with unrecorded data past its recorded size.
    let (open, ofh) = vfs.create(&CTX, d.ino, b"open", 0o600).unwrap();
    vfs.write(ofh, 0, &pattern(300_000, 9)).unwrap();

    // Page through the directory as the kernel does, resuming at each batch's last offset.
    let mut seen = Vec::new();
    let mut off = 0;
    loop {
        let batch = vfs.readdirplus(d.ino, off, 16).unwrap();
        let Some(last) = batch.last() else { break };
        off = last.0.next;
        seen.extend(batch);
    }
    let names: Vec<Vec<u8>> = seen.iter().map(|(e, _)| e.name.clone()).collect();
    let plain: Vec<Vec<u8>> = vfs
        .readdir(d.ino, 0, 10_000)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, plain, "same entries, same order as readdir");
    assert_eq!(seen.len(), 2 + 70 + 2);
    for (e, a) in &seen {
        let want = vfs.getattr(e.ino).unwrap();
        assert_eq!(a.ino, e.ino);
        assert_eq!(
            (a.size, a.mtime, a.perm, a.kind),
            (want.size, want.mtime, want.perm, want.kind)
        );
        if e.name != b"." && e.name != b".." {
            let l = vfs.lookup_nowait(d.ino, &e.name).unwrap().unwrap();
            assert_eq!((l.ino, l.size, l.mtime), (want.ino, want.size, want.mtime));
            let g = vfs.getattr_nowait(e.ino).unwrap().unwrap();
            assert_eq!((g.size, g.mtime), (want.size, want.mtime));
        }
    }
    let o = seen.iter().find(|(e, _)| e.ino == open.ino).unwrap();
    assert_eq!(o.1.size, 300_000, "an open file shows its written size");
    assert!(matches!(
        vfs.lookup_nowait(d.ino, b"missing"),
        Some(Err(VfsError::NotFound))
    ));

    // setattr_nowait: mode, owner and times only; a size change goes to the worker pool.
    let f = inos[3];
    let s = SetAttr {
        perm: Some(0o600),
        mtime: Some(cryptbucket::vfs::SetTime::At(1_000_000_000)),
        ..SetAttr::default()
    };
    let a = vfs.setattr_nowait(f, &s).unwrap().unwrap();
    assert_eq!((a.perm, a.mtime), (0o600, 1_000_000_000));
    assert_eq!(vfs.getattr(f).unwrap().perm, 0o600);
    let grow = SetAttr {
        size: Some(1),
        ..SetAttr::default()
    };
    assert!(vfs.setattr_nowait(f, &grow).is_none());
    // On the open file an explicit mtime wins over the pending write's.
    let a = vfs.setattr_nowait(open.ino, &s).unwrap().unwrap();
    assert_eq!((a.size, a.mtime), (300_000, 1_000_000_000));
    vfs.release(ofh).unwrap();
    assert_eq!(vfs.getattr(open.ino).unwrap().mtime, 1_000_000_000);
    v.unmount().unwrap();
}

/// open/flush/release answered on the FUSE thread: only when closing cannot wait for the
/// store and nothing is to be deleted; everything else falls back to the ordinary calls.
#[test]
fn nowait_open_flush_release_only_when_they_cannot_wait() {
    let mut fx = Fixture::new(small_params(Cipher::Aes256Gcm));
    let v = fx.mount();
    let vfs = &v.vfs;
    let data = pattern(100_000, 3);
    let (f, fh) = vfs.create(&CTX, ROOT_INO, b"f", 0o644).unwrap();
    vfs.write(fh, 0, &data).unwrap();
    // Closing hands the chunks to the uploader without waiting: fine on the FUSE thread
    // (unless an upload's completion holds the file's state that moment: then the pool).
    match vfs.flush_nowait(fh) {
        Some(r) => r.unwrap(),
        None => vfs.flush(fh).unwrap(),
    }
    match vfs.release_nowait(fh) {
        Some(r) => r.unwrap(),
        None => vfs.release(fh).unwrap(),
    }
    vfs.sync_all().unwrap();
    assert_eq!(read_all(vfs, f.ino), data);
    // With --sync-on-close a close waits for the store: never on the FUSE thread.
    vfs.set_sync_on_close(true);
    let s = vfs.open(f.ino).unwrap();
    assert!(vfs.flush_nowait(s).is_none() && vfs.release_nowait(s).is_none());
    vfs.release(s).unwrap();
    vfs.set_sync_on_close(false);

    // A reader: every step answered without the pool, and the data is right.
    let r = vfs.open_nowait(f.ino).unwrap().unwrap();
    assert_eq!(vfs.read(r, 0, 200_000).unwrap(), data);
    assert!(matches!(vfs.flush_nowait(r), Some(Ok(()))));
    assert!(matches!(vfs.release_nowait(r), Some(Ok(()))));
    assert!(matches!(vfs.read(r, 0, 1), Err(VfsError::BadHandle)));
    assert!(
        vfs.release_nowait(r).is_none(),
        "an unknown handle goes to the pool"
    );

    // Two readers: the second release still works after the first.
    let a = vfs.open_nowait(f.ino).unwrap().unwrap();
    let b = vfs.open(f.ino).unwrap();
    assert!(matches!(vfs.release_nowait(a), Some(Ok(()))));
    assert_eq!(vfs.read(b, 0, 10).unwrap(), data[..10].to_vec());
    assert!(matches!(vfs.release_nowait(b), Some(Ok(()))));

    // An unlinked open file must be deleted at its last close: that is the pool's job.
    let u = vfs.open_nowait(f.ino).unwrap().unwrap();
    vfs.unlink(ROOT_INO, b"f").unwrap();
    assert!(vfs.release_nowait(u).is_none());
    vfs.release(u).unwrap();
    assert!(matches!(vfs.getattr(f.ino), Err(VfsError::NotFound)));
    v.unmount().unwrap();
}
