//! The metadata journal without a kernel: segments per commit, replay on a fresh mount,
//! refusal of a missing, reordered or replayed segment and of a rollback (and the override),
//! read-only mounts that follow a writer, fsync/close visibility on a second machine, the
//! fsck chain check, and mount time for many files.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use cryptbucket::backend::memory::MemoryStore;
use cryptbucket::backend::{ObjectStore, PutMode};
use cryptbucket::crypto::{Argon2Params, KeySource, VolumeParams};
use cryptbucket::meta::records::Head;
use cryptbucket::meta::remote::{RemoteMeta, FOLD_SEGMENTS};
use cryptbucket::meta::snapshot::{SnapDentry, SnapInode, Snapshot};
use cryptbucket::meta::{ChunkRef, FileKind, Inode, SqliteMeta, ROOT_INO};
use cryptbucket::vfs::{Ctx, Vfs};
use cryptbucket::volume::{self, OpenOptions, Volume};

const CTX: Ctx = Ctx {
    uid: 1000,
    gid: 1000,
    umask: 0o022,
};

fn key() -> KeySource {
    KeySource::Passphrase(zeroize::Zeroizing::new("journal test".to_string()))
}

struct Fx {
    store: Arc<dyn ObjectStore>,
    rt: tokio::runtime::Runtime,
    dirs: Vec<tempfile::TempDir>,
}

impl Fx {
    fn new() -> Fx {
        let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
        let rt = volume::runtime().unwrap();
        let kdf = Argon2Params {
            m_kib: 8192,
            t: 1,
            p: 1,
        };
        let params = VolumeParams {
            chunk_size: 64 * 1024,
            block_size: 4096,
            ..VolumeParams::default()
        };
        volume::create(&rt, store.clone(), params, &key(), kdf).unwrap();
        Fx {
            store,
            rt,
            dirs: Vec::new(),
        }
    }

    fn dir(&mut self) -> std::path::PathBuf {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().to_owned();
        self.dirs.push(d);
        p
    }

    fn open(
        &self,
        dir: &std::path::Path,
        f: impl FnOnce(&mut OpenOptions),
    ) -> volume::Result<Volume> {
        let mut opts = OpenOptions {
            cache_dir: Some(dir.to_owned()),
            ..OpenOptions::default()
        };
        f(&mut opts);
        volume::open_with(
            volume::runtime().unwrap(),
            self.store.clone(),
            &key(),
            &opts,
        )
    }

    fn remote(&self) -> RemoteMeta {
        let keys = volume::unlock(&self.rt, &self.store, &key()).unwrap();
        RemoteMeta::new(self.store.clone(), Arc::new(keys), self.rt.handle().clone())
    }

    fn head(&self) -> Head {
        self.remote().fetch_head().unwrap().unwrap().0
    }

    fn get(&self, k: &str) -> Bytes {
        self.rt.block_on(self.store.get(k, None)).unwrap()
    }

    fn put(&self, k: &str, b: Bytes) {
        self.rt
            .block_on(self.store.put(k, b, PutMode::Overwrite))
            .unwrap();
    }
}

fn write_file(vfs: &Vfs, name: &str, data: &[u8]) {
    let ino = match vfs.lookup(ROOT_INO, name.as_bytes()) {
        Ok(a) => a.ino,
        Err(_) => {
            let (a, fh) = vfs.create(&CTX, ROOT_INO, name.as_bytes(), 0o644).unwrap();
            vfs.release(fh).unwrap();
            a.ino
        }
    };
    let fh = vfs.open(ino).unwrap();
    vfs.write(fh, 0, data).unwrap();
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
}

fn read(vfs: &Vfs, name: &str) -> Option<Vec<u8>> {
    let a = vfs.lookup(ROOT_INO, name.as_bytes()).ok()?;
    let fh = vfs.open(a.ino).unwrap();
    let mut out = Vec::new();
    while (out.len() as u64) < a.size {
        let got = vfs.read(fh, out.len() as u64, 1 << 20).unwrap();
        assert!(!got.is_empty());
        out.extend_from_slice(&got);
    }
    vfs.release(fh).unwrap();
    Some(out)
}

/// A volume whose head names a snapshot and three segments (files a, b, c, one per commit).
fn three_segments(fx: &mut Fx) {
    let d = fx.dir();
    let v = fx.open(&d, |_| {}).unwrap();
    for name in ["a", "b", "c"] {
        write_file(&v.vfs, name, format!("content of {name}").as_bytes());
        v.vfs.commit().unwrap();
    }
    v.unmount().unwrap();
    let h = fx.head();
    assert_eq!(h.segments.len(), 3, "one segment per commit: {h:?}");
}

fn refusal(fx: &mut Fx) -> String {
    let d = fx.dir();
    match fx.open(&d, |_| {}) {
        Ok(_) => panic!("mount must be refused"),
        Err(e) => e.to_string(),
    }
}

fn accepted(fx: &mut Fx) -> Volume {
    let d = fx.dir();
    fx.open(&d, |o| o.accept_store_state = true).unwrap()
}

#[test]
fn commits_are_segments_and_a_fresh_mount_replays_them() {
    let mut fx = Fx::new();
    let before = fx.head();
    assert!(before.segments.is_empty());
    three_segments(&mut fx);
    let h = fx.head();
    assert_eq!(h.snapshot, before.snapshot, "no snapshot was rewritten");
    assert_eq!(h.seq, before.seq + 3);
    let d = fx.dir();
    let v = fx.open(&d, |_| {}).unwrap();
    for name in ["a", "b", "c"] {
        assert_eq!(
            read(&v.vfs, name).unwrap(),
            format!("content of {name}").as_bytes()
        );
    }
    // Renames, deletes and xattrs travel as segments too.
    v.vfs.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0).unwrap();
    v.vfs.unlink(ROOT_INO, b"c").unwrap();
    let b = v.vfs.lookup(ROOT_INO, b"b").unwrap();
    v.vfs.setxattr(b.ino, b"user.k", b"v", 0).unwrap();
    v.vfs.commit().unwrap();
    v.unmount().unwrap();
    assert_eq!(fx.head().segments.len(), 4);
    let d = fx.dir();
    let v = fx.open(&d, |_| {}).unwrap();
    assert_eq!(read(&v.vfs, "b").unwrap(), b"content of a");
    assert!(read(&v.vfs, "a").is_none() && read(&v.vfs, "c").is_none());
    let b = v.vfs.lookup(ROOT_INO, b"b").unwrap();
    assert_eq!(v.vfs.getxattr(b.ino, b"user.k").unwrap(), b"v");
    assert!(fx.remote().check_chain().unwrap().is_empty());
}

#[test]
fn journal_folds_into_a_snapshot() {
    let mut fx = Fx::new();
    let first = fx.head().snapshot;
    let d = fx.dir();
    let v = fx
        .open(&d, |o| o.superseded_grace = Duration::ZERO)
        .unwrap();
    for i in 0..FOLD_SEGMENTS + 2 {
        write_file(&v.vfs, &format!("f{i}"), b"x");
        v.vfs.commit().unwrap();
    }
    let h = fx.head();
    assert_ne!(h.snapshot, first, "a new snapshot folded the journal");
    assert!(
        h.segments.len() < FOLD_SEGMENTS,
        "{} segments",
        h.segments.len()
    );
    // With no grace period the folded-away objects are gone at the next commit.
    write_file(&v.vfs, "last", b"y");
    v.vfs.commit().unwrap();
    let logs = fx.rt.block_on(fx.store.list("m/log/")).unwrap();
    assert_eq!(logs.len(), fx.head().segments.len(), "{logs:?}");
    v.unmount().unwrap();
    let d = fx.dir();
    let v = fx.open(&d, |_| {}).unwrap();
    assert_eq!(
        read(&v.vfs, &format!("f{}", FOLD_SEGMENTS + 1)).unwrap(),
        b"x"
    );
    assert_eq!(read(&v.vfs, "last").unwrap(), b"y");
}

#[test]
fn missing_segment_is_refused_and_override_adopts_the_rest() {
    let mut fx = Fx::new();
    three_segments(&mut fx);
    let h = fx.head();
    let gone = &h.segments[1];
    fx.rt.block_on(fx.store.delete(&gone.key)).unwrap();
    let msg = refusal(&mut fx);
    assert!(msg.contains("missing") && msg.contains(&gone.key), "{msg}");
    assert!(msg.contains("--accept-store-state"), "{msg}");
    let problems = fx.remote().check_chain().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("missing"));
    let v = accepted(&mut fx);
    assert_eq!(read(&v.vfs, "a").unwrap(), b"content of a");
    assert!(read(&v.vfs, "b").is_none(), "b came in the missing segment");
    // The writer repairs the store with a full snapshot at its next commit.
    write_file(&v.vfs, "d", b"new");
    v.unmount().unwrap();
    assert!(fx.head().segments.is_empty());
    assert!(fx.remote().check_chain().unwrap().is_empty());
    let d = fx.dir();
    let v = fx.open(&d, |_| {}).unwrap();
    assert_eq!(read(&v.vfs, "d").unwrap(), b"new");
}

#[test]
fn reordered_segments_are_refused() {
    let mut fx = Fx::new();
    three_segments(&mut fx);
    let h = fx.head();
    let (x, y) = (fx.get(&h.segments[0].key), fx.get(&h.segments[1].key));
    fx.put(&h.segments[0].key, y);
    fx.put(&h.segments[1].key, x);
    let msg = refusal(&mut fx);
    assert!(
        msg.contains("reordered") && msg.contains(&h.segments[0].key),
        "{msg}"
    );
    let v = accepted(&mut fx);
    assert!(read(&v.vfs, "a").is_none());
    v.unmount().unwrap();
}

#[test]
fn replayed_segment_is_refused() {
    let mut fx = Fx::new();
    three_segments(&mut fx);
    let h = fx.head();
    fx.put(&h.segments[2].key, fx.get(&h.segments[1].key));
    let msg = refusal(&mut fx);
    assert!(
        msg.contains("replayed") && msg.contains(&h.segments[2].key),
        "{msg}"
    );
    let v = accepted(&mut fx);
    assert_eq!(read(&v.vfs, "b").unwrap(), b"content of b");
    assert!(read(&v.vfs, "c").is_none());
    v.unmount().unwrap();
}

#[test]
fn replaced_snapshot_is_refused() {
    let mut fx = Fx::new();
    let old_snap = fx.head().snapshot;
    let old = fx.get(&old_snap);
    let remote = fx.remote();
    let meta = SqliteMeta::open_in_memory().unwrap();
    remote.load_full(&meta).unwrap();
    remote.commit_snapshot(&meta).unwrap();
    let h = fx.head();
    assert_ne!(h.snapshot, old_snap);
    fx.put(&h.snapshot, old);
    let msg = refusal(&mut fx);
    assert!(
        msg.contains("replaced") && msg.contains(&h.snapshot),
        "{msg}"
    );
    // Without a snapshot there is nothing to adopt: still refused.
    let d = fx.dir();
    assert!(fx.open(&d, |o| o.accept_store_state = true).is_err());
}

#[test]
fn rollback_is_refused_and_override_adopts_the_store() {
    let mut fx = Fx::new();
    let d = fx.dir();
    let v = fx.open(&d, |_| {}).unwrap();
    write_file(&v.vfs, "a", b"1");
    v.vfs.commit().unwrap();
    let old_head = fx.get("m/head");
    write_file(&v.vfs, "b", b"2");
    v.unmount().unwrap();
    fx.put("m/head", old_head);
    let msg = match fx.open(&d, |_| {}) {
        Ok(_) => panic!("rollback must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        msg.contains("rolled back") && msg.contains("--accept-store-state"),
        "{msg}"
    );
    let v = fx.open(&d, |o| o.accept_store_state = true).unwrap();
    assert_eq!(read(&v.vfs, "a").unwrap(), b"1");
    assert!(read(&v.vfs, "b").is_none());
    v.unmount().unwrap();
    // Adopted: the same cache dir mounts normally afterwards.
    fx.open(&d, |_| {}).unwrap().unmount().unwrap();
}

#[test]
fn fsync_is_visible_to_a_read_only_mount_that_follows() {
    let mut fx = Fx::new();
    let (dw, dr) = (fx.dir(), fx.dir());
    let w = fx.open(&dw, |_| {}).unwrap();
    // The writer holds the lease: a second read-write mount is refused, read-only is not.
    assert!(fx.open(&dr, |_| {}).is_err());
    let (a, fh) = w.vfs.create(&CTX, ROOT_INO, b"synced", 0o644).unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    w.vfs.write(fh, 0, &data).unwrap();
    w.vfs.fsync(fh).unwrap();
    let r = fx.open(&dr, |o| o.read_only = true).unwrap();
    assert_eq!(read(&r.vfs, "synced").unwrap(), data);
    // Every mutation is EROFS.
    let erofs = |res: Result<(), cryptbucket::vfs::VfsError>| {
        assert_eq!(res.unwrap_err().errno(), libc::EROFS)
    };
    erofs(r.vfs.mkdir(&CTX, ROOT_INO, b"d", 0o755).map(|_| ()));
    erofs(r.vfs.create(&CTX, ROOT_INO, b"n", 0o644).map(|_| ()));
    erofs(r.vfs.unlink(ROOT_INO, b"synced"));
    erofs(r.vfs.rename(ROOT_INO, b"synced", ROOT_INO, b"x", 0));
    erofs(r.vfs.setxattr(a.ino, b"user.a", b"b", 0));
    let rfh = r.vfs.open(a.ino).unwrap();
    erofs(r.vfs.write(rfh, 0, b"no").map(|_| ()));
    r.vfs.release(rfh).unwrap();
    // Not committed yet: the follower does not see it; after the commit it does.
    w.vfs.write(fh, 0, b"CHANGED").unwrap();
    w.vfs.release(fh).unwrap();
    write_file(&w.vfs, "second", b"two");
    assert!(!r.vfs.follow().unwrap());
    assert!(read(&r.vfs, "second").is_none());
    // sync_all, not commit: a commit records only chunks whose background upload finished.
    w.vfs.sync_all().unwrap();
    assert!(r.vfs.follow().unwrap());
    assert_eq!(read(&r.vfs, "second").unwrap(), b"two");
    assert_eq!(&read(&r.vfs, "synced").unwrap()[..7], b"CHANGED");
    // A fold (new snapshot) is followed too.
    for i in 0..FOLD_SEGMENTS + 1 {
        write_file(&w.vfs, &format!("f{i}"), b"z");
        w.vfs.commit().unwrap();
    }
    w.vfs.unlink(ROOT_INO, b"second").unwrap();
    w.vfs.commit().unwrap();
    assert!(r.vfs.follow().unwrap());
    assert!(read(&r.vfs, "second").is_none());
    assert_eq!(read(&r.vfs, "f3").unwrap(), b"z");
    drop(r);
    w.unmount().unwrap();
}

#[test]
fn sync_on_close_commits_at_close() {
    let mut fx = Fx::new();
    let (dw, dr) = (fx.dir(), fx.dir());
    let w = fx.open(&dw, |_| {}).unwrap();
    w.vfs.set_sync_on_close(true);
    let seq = fx.head().seq;
    write_file(&w.vfs, "closed", b"at close");
    assert!(fx.head().seq > seq, "close committed");
    // Big enough for its own chunk object, whose upload runs in the background.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    write_file(&w.vfs, "big", &big);
    let r = fx.open(&dr, |o| o.read_only = true).unwrap();
    assert_eq!(read(&r.vfs, "closed").unwrap(), b"at close");
    assert_eq!(
        read(&r.vfs, "big").unwrap(),
        big,
        "close waited for the upload"
    );
    // Without it, close leaves the commit to the timer.
    w.vfs.set_sync_on_close(false);
    let seq = fx.head().seq;
    write_file(&w.vfs, "later", b"x");
    assert_eq!(fx.head().seq, seq);
    w.unmount().unwrap();
}

/// Write the metadata of `n` files (in directories of 1000, one chunk reference each)
/// straight into the store, as a snapshot.
fn generate(fx: &Fx, n: u64) {
    let remote = fx.remote();
    let meta = SqliteMeta::open_in_memory().unwrap();
    remote.load_full(&meta).unwrap();
    let inode = |ino, kind, perm, size, nlink| SnapInode {
        inode: Inode {
            ino,
            kind,
            perm,
            uid: 1000,
            gid: 1000,
            size,
            atime: 1_700_000_000_000_000_000,
            mtime: 1_700_000_000_000_000_000,
            ctime: 1_700_000_000_000_000_000,
            nlink,
            rdev: 0,
        },
        target: None,
        inline: None,
    };
    let dirs = n.div_ceil(1000);
    let mut snap = Snapshot {
        version: 1,
        next_ino: 2 + dirs + n,
        ..Snapshot::default()
    };
    snap.inodes
        .push(inode(ROOT_INO, FileKind::Dir, 0o755, 0, 2 + dirs as u32));
    let mut cookie = 0;
    for d in 0..dirs {
        let ino = 2 + d;
        snap.inodes.push(inode(ino, FileKind::Dir, 0o755, 0, 2));
        cookie += 1;
        snap.dentries.push(SnapDentry {
            cookie,
            parent: ROOT_INO,
            name: format!("dir{d:04}").into_bytes(),
            ino,
        });
    }
    for f in 0..n {
        let ino = 2 + dirs + f;
        snap.inodes
            .push(inode(ino, FileKind::File, 0o644, 10_000, 1));
        cookie += 1;
        snap.dentries.push(SnapDentry {
            cookie,
            parent: 2 + f / 1000,
            name: format!("file-{f:07}.dat").into_bytes(),
            ino,
        });
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&ino.to_le_bytes());
        snap.chunks.push((
            ino,
            ChunkRef {
                idx: 0,
                id,
                plain_len: 10_000,
                stored_len: 12_288,
                digest: [7; 16],
                pack: None,
            },
        ));
    }
    meta.import(&snap).unwrap();
    remote.commit_snapshot(&meta).unwrap();
}

fn mount_time(n: u64) {
    let mut fx = Fx::new();
    let t = Instant::now();
    generate(&fx, n);
    let gen = t.elapsed();
    let d = fx.dir();
    let t = Instant::now();
    let v = fx.open(&d, |_| {}).unwrap();
    let took = t.elapsed();
    println!("{n} files: generated in {gen:.2?}, mounted from an empty cache dir in {took:.2?}");
    if n >= 1_000_000 {
        // Where the time goes: fetching and decoding the snapshot, then loading SQLite.
        let remote = fx.remote();
        let t = Instant::now();
        let head = remote.fetch_head().unwrap().unwrap().0;
        let snap = remote.fetch_snapshot(&head).unwrap();
        let fetch = t.elapsed();
        let t = Instant::now();
        SqliteMeta::open_in_memory().unwrap().import(&snap).unwrap();
        println!(
            "  of which: fetch + decode {fetch:.2?}, SQLite load (in memory) {:.2?}",
            t.elapsed()
        );
    }
    let (files, _) = (v.vfs.statfs().unwrap().files - (1 << 30), ());
    assert_eq!(files, 1 + n.div_ceil(1000) + n);
    let last = n - 1;
    let dir = v
        .vfs
        .lookup(ROOT_INO, format!("dir{:04}", last / 1000).as_bytes())
        .unwrap();
    let f = v
        .vfs
        .lookup(dir.ino, format!("file-{last:07}.dat").as_bytes())
        .unwrap();
    assert_eq!(f.size, 10_000);
    drop(v);
    // The target is 10 s on an idle machine (release build); this guard leaves room for a
    // loaded CI machine and catches a regression to per-row transactions (minutes).
    if n >= 1_000_000 {
        assert!(took < Duration::from_secs(30), "mount took {took:?}");
    }
}

#[test]
fn mount_time_many_files() {
    mount_time(20_000);
}

/// A mount from an empty cache dir reports how loading the metadata advances (what
/// `cryptbucket mount` shows as a bar on a big volume): rising, ending at its total.
#[test]
fn loading_metadata_reports_progress() {
    let mut fx = Fx::new();
    generate(&fx, 40_000);
    let seen = Arc::new(parking_lot::Mutex::new(Vec::<(u64, u64)>::new()));
    let d = fx.dir();
    let s = seen.clone();
    let v = fx
        .open(&d, move |o| {
            o.load_progress = Some(cryptbucket::meta::LoadProgress(Arc::new(move |d, t| {
                s.lock().push((d, t))
            })));
        })
        .unwrap();
    drop(v);
    let seen = seen.lock().clone();
    assert!(seen.len() >= 5, "a few reports for 40,000 files: {seen:?}");
    let total = seen[0].1;
    assert!(total >= 80_000, "inodes, entries and chunks count: {total}");
    assert!(seen.iter().all(|(_, t)| *t == total));
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "never goes back");
    assert_eq!(seen.last().copied(), Some((total, total)));
    // A mount of a cache dir that is up to date loads nothing and reports nothing.
    let again = Arc::new(parking_lot::Mutex::new(0u32));
    let a = again.clone();
    let v = fx
        .open(&d, move |o| {
            o.load_progress = Some(cryptbucket::meta::LoadProgress(Arc::new(move |_, _| {
                *a.lock() += 1
            })));
        })
        .unwrap();
    drop(v);
    assert_eq!(*again.lock(), 0);
}

#[test]
fn mount_time_one_million_files() {
    if std::env::var_os("CRYPTBUCKET_LONG_TESTS").is_none() {
        eprintln!("skipped: set CRYPTBUCKET_LONG_TESTS=1");
        return;
    }
    mount_time(1_000_000);
}
