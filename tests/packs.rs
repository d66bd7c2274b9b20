//! Packs: small files whose uploads wait at the same time are sealed into shared objects.
//! They read back after a remount with one download per object, `fsck --full` checks them
//! (damage in a pack is reported for the files whose bytes it touches), and an object stays
//! in the store until the last file in it is gone.

mod common;

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use common::*;
use cryptbucket::backend::local::LocalStore;
use cryptbucket::backend::{ObjectMeta, ObjectStore, PutMode, Result};
use cryptbucket::crypto::KeySource;
use cryptbucket::meta::{Ino, ROOT_INO};
use cryptbucket::vfs::Ctx;
use cryptbucket::volume::{self, Volume};

const PASS: &str = "pack test passphrase";
const CTX: Ctx = Ctx {
    uid: 1000,
    gid: 1000,
    umask: 0o022,
};
const FILES: usize = 40;

fn key() -> KeySource {
    KeySource::Passphrase(zeroize::Zeroizing::new(PASS.to_string()))
}

/// Holds chunk uploads while `held` (so they queue up, as behind a slow store) and counts
/// chunk GETs.
#[derive(Debug)]
struct Hold {
    inner: Arc<dyn ObjectStore>,
    held: AtomicBool,
    chunk_gets: AtomicU64,
    chunk_get_bytes: AtomicU64,
}

#[async_trait]
impl ObjectStore for Hold {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        while key.starts_with("d/") && self.held.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        self.inner.put(key, data, mode).await
    }
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        let got = self.inner.get(key, range).await;
        if key.starts_with("d/") {
            self.chunk_gets.fetch_add(1, Ordering::SeqCst);
            let n = got.as_ref().map_or(0, |b| b.len() as u64);
            self.chunk_get_bytes.fetch_add(n, Ordering::SeqCst);
        }
        got
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.inner.head(key).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }
    fn supports_conditional(&self) -> bool {
        self.inner.supports_conditional()
    }
    fn describe(&self) -> String {
        "hold".into()
    }
}

fn store_at(dir: &Path) -> Arc<Hold> {
    Arc::new(Hold {
        inner: Arc::new(LocalStore::open(dir).unwrap()),
        held: AtomicBool::new(false),
        chunk_gets: AtomicU64::new(0),
        chunk_get_bytes: AtomicU64::new(0),
    })
}

fn open(store: &Arc<Hold>, cache: &Path) -> Volume {
    let opts = volume::OpenOptions {
        cache_dir: Some(cache.to_path_buf()),
        // Unreferenced objects leave the store at the next commit.
        superseded_grace: std::time::Duration::ZERO,
        ..Default::default()
    };
    volume::open_with(volume::runtime().unwrap(), store.clone(), &key(), &opts).unwrap()
}

/// Chunk objects in the store directory.
fn objects(dir: &Path) -> BTreeSet<std::path::PathBuf> {
    let mut out = BTreeSet::new();
    let Ok(rd) = std::fs::read_dir(dir.join("d")) else {
        return out;
    };
    for sub in rd.flatten() {
        for f in std::fs::read_dir(sub.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            out.insert(f.path());
        }
    }
    out
}

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed as u8))
        .collect()
}

/// A file written by `setup`: name in /d, inode, contents.
type File = (String, Ino, Vec<u8>);

/// A volume with 64 KiB chunks (chunks up to 16 KiB are packed) and `FILES` files of
/// 5-13 KB in /d, written while the store held every upload: (store, files).
fn setup(dir: &Path) -> (Arc<Hold>, Vec<File>) {
    std::fs::create_dir_all(dir).unwrap();
    let store = store_at(dir);
    let rt = volume::runtime().unwrap();
    volume::create(&rt, store.clone(), small_chunk_params(), &key(), test_kdf()).unwrap();
    let cache = tempdir();
    let v = open(&store, cache.path());
    let d = v.vfs.mkdir(&CTX, ROOT_INO, b"d", 0o755).unwrap();
    store.held.store(true, Ordering::SeqCst);
    let mut files = Vec::new();
    for i in 0..FILES {
        let data = pattern(5000 + i * 200, i);
        let name = format!("f{i:02}");
        let (a, fh) = v.vfs.create(&CTX, d.ino, name.as_bytes(), 0o644).unwrap();
        v.vfs.write(fh, 0, &data).unwrap();
        v.vfs.release(fh).unwrap();
        files.push((name, a.ino, data));
    }
    store.held.store(false, Ordering::SeqCst);
    v.vfs.sync_all().unwrap();
    v.unmount().unwrap();
    (store, files)
}

/// A volume from `setup`, mounted, with all but every fourth file deleted and synced:
/// every pack is then about three quarters deleted files.
struct Sparse {
    _tmp: tempfile::TempDir,
    _cache: tempfile::TempDir,
    dir: std::path::PathBuf,
    store: Arc<Hold>,
    files: Vec<File>,
    v: Volume,
}

fn sparse() -> Sparse {
    let tmp = tempdir();
    let dir = tmp.path().join("store");
    let (store, files) = setup(&dir);
    let cache = tempdir();
    let v = open(&store, cache.path());
    let d = v.vfs.lookup(ROOT_INO, b"d").unwrap();
    for (i, (name, _, _)) in files.iter().enumerate() {
        if i % 4 != 0 {
            v.vfs.unlink(d.ino, name.as_bytes()).unwrap();
        }
    }
    v.vfs.sync_all().unwrap();
    Sparse {
        _tmp: tmp,
        _cache: cache,
        dir,
        store,
        files,
        v,
    }
}

fn fsck(dir: &Path, extra: &[&str]) -> Outcome {
    cb_with_passphrase("fsck", dir, PASS, extra)
}

/// `fsck --full` of the store at `dir` passes and finds nothing wrong.
fn assert_fsck_clean(dir: &Path) {
    let o = fsck(dir, &["--full"]);
    o.assert_ok();
    assert!(o.stdout.contains("0 errors"), "{o}");
}

/// Each of `files` reads back intact from the store alone (a fresh cache dir).
fn assert_read_back<'a>(store: &Arc<Hold>, files: impl IntoIterator<Item = &'a File>, when: &str) {
    let fresh = tempdir();
    let v = open(store, fresh.path());
    for (name, ino, data) in files {
        assert_eq!(&vfs_read_all(&v.vfs, *ino), data, "{name} {when}");
    }
    v.unmount().unwrap();
}

#[test]
fn small_files_share_objects_and_read_back_with_few_downloads() {
    let tmp = tempdir();
    let dir = tmp.path().join("store");
    let (store, files) = setup(&dir);
    let n = objects(&dir).len();
    // The first file goes alone (nothing else waits yet); the 39 queued behind the held
    // upload fill packs of at most 64 KiB: about 360 KB in 6-7 objects.
    assert!((3..=12).contains(&n), "{n} chunk objects for {FILES} files");

    // One file read on its own downloads its own bytes, not the whole pack around it.
    let fresh = tempdir();
    let v = open(&store, fresh.path());
    store.chunk_gets.store(0, Ordering::SeqCst);
    let (name, ino, data) = &files[FILES / 2];
    assert_eq!(&vfs_read_all(&v.vfs, *ino), data, "{name}");
    assert_eq!(store.chunk_gets.load(Ordering::SeqCst), 1);
    let got = store.chunk_get_bytes.load(Ordering::SeqCst);
    assert!(
        got < data.len() as u64 + 2 * 4096 + 1024,
        "{got} bytes downloaded for a file of {}",
        data.len()
    );
    v.unmount().unwrap();

    // A scan in directory order (grep -r, cp -r) fetches whole packs once it is
    // recognised (after two files): about one download per object.
    let fresh = tempdir();
    let v = open(&store, fresh.path());
    store.chunk_gets.store(0, Ordering::SeqCst);
    for (name, ino, data) in &files {
        assert_eq!(&vfs_read_all(&v.vfs, *ino), data, "{name}");
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let gets = store.chunk_gets.load(Ordering::SeqCst) as usize;
    assert!(gets <= n + 2, "{gets} chunk downloads for {n} objects");
    v.unmount().unwrap();

    let clean = fsck(&dir, &["--full"]);
    clean.assert_ok();
    assert!(clean.stdout.contains("0 errors"), "{clean}");
}

#[test]
fn fsck_reports_damage_in_a_pack_for_the_files_it_touches() {
    let tmp = tempdir();
    let dir = tmp.path().join("store");
    let (store, files) = setup(&dir);
    // The biggest object is a full pack; flip a byte early in it (its first block).
    let pack = objects(&dir)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&pack, bytes).unwrap();

    let quick = fsck(&dir, &[]);
    quick.assert_ok();
    let full = fsck(&dir, &["--full"]);
    assert_eq!(full.status.code(), Some(3), "{full}");
    let damaged: Vec<&str> = files
        .iter()
        .map(|f| f.0.as_str())
        .filter(|name| full.stdout.contains(&format!("error: /d/{name}: ")))
        .collect();
    // Block 0 (4 KiB) holds the start of the pack's first file, files are >= 5 KB: one.
    assert_eq!(damaged.len(), 1, "{damaged:?}: {full}");
    assert!(full.stdout.contains("authentication"), "{full}");

    // Reading: that file is an error (never other bytes), its neighbours read intact.
    let fresh = tempdir();
    let v = open(&store, fresh.path());
    for (name, ino, data) in &files {
        let fh = v.vfs.open(*ino).unwrap();
        let got = v.vfs.read(fh, 0, data.len() as u32);
        v.vfs.release(fh).unwrap();
        if name == damaged[0] {
            assert!(got.is_err(), "{name}: damaged bytes were served");
        } else {
            assert_eq!(&got.unwrap(), data, "{name}");
        }
    }
    v.unmount().unwrap();
}

#[test]
fn a_pack_stays_until_its_last_file_is_gone() {
    let tmp = tempdir();
    let dir = tmp.path().join("store");
    let (store, files) = setup(&dir);
    let before = objects(&dir).len();

    // Keep the first, one in the middle and the last file, delete the rest. The middle
    // one was queued with a whole pack's worth of others (only the first and the last
    // batch can be small), so its pack is now mostly dead.
    let keep = [0, FILES / 2, FILES - 1];
    let cache = tempdir();
    let v = open(&store, cache.path());
    let d = v.vfs.lookup(ROOT_INO, b"d").unwrap();
    for (i, (name, _, _)) in files.iter().enumerate() {
        if !keep.contains(&i) {
            v.vfs.unlink(d.ino, name.as_bytes()).unwrap();
        }
    }
    v.vfs.sync_all().unwrap();
    v.unmount().unwrap();
    let left = objects(&dir).len();
    assert!(
        (1..=3).contains(&left) && left < before,
        "{before} objects before, {left} after deleting all files but three"
    );

    // fsck says how much of the packs is dead weight now.
    let o = fsck(&dir, &[]);
    o.assert_ok();
    let line = o
        .stdout
        .lines()
        .find(|l| l.starts_with("packs: "))
        .unwrap_or_else(|| panic!("no pack line: {o}"));
    let dead: u64 = line
        .split("; ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(dead >= 4 * 5000, "{line}");

    // What is left still reads, from a fresh cache (so from the store).
    let fresh = tempdir();
    let v = open(&store, fresh.path());
    let d = v.vfs.lookup(ROOT_INO, b"d").unwrap();
    for (name, _, data) in keep.iter().map(|i| &files[*i]) {
        let ino = v.vfs.lookup(d.ino, name.as_bytes()).unwrap().ino;
        assert_eq!(&vfs_read_all(&v.vfs, ino), data, "{name}");
        v.vfs.unlink(d.ino, name.as_bytes()).unwrap();
    }
    v.vfs.sync_all().unwrap();
    v.unmount().unwrap();
    assert_eq!(
        objects(&dir).len(),
        0,
        "every object went with its last file"
    );
    fsck(&dir, &["--full"]).assert_ok();
}

#[test]
fn gc_on_a_live_mount_repacks_packs_that_are_mostly_deleted_files() {
    let Sparse {
        _tmp,
        _cache,
        dir,
        store,
        files,
        v,
    } = sparse();
    let kept: Vec<&File> = files.iter().step_by(4).collect();
    let before = objects(&dir).len();
    // A file held open keeps its pack as it is (its chunk refs live in memory).
    let held = &kept[kept.len() / 2];
    let fh = v.vfs.open(held.1).unwrap();

    let dry = v
        .vfs
        .collect_garbage(std::time::Duration::ZERO, true)
        .unwrap();
    assert!(dry.sparse_packs >= 2, "{dry:?}");
    assert_eq!(objects(&dir).len(), before, "a dry run changes nothing");
    let r = v
        .vfs
        .collect_garbage(std::time::Duration::ZERO, false)
        .unwrap();
    assert_eq!(r.sparse_packs, dry.sparse_packs, "{r:?} {dry:?}");
    assert!(r.sparse_bytes > 100_000, "{r:?}");
    assert_eq!(v.vfs.read(fh, 0, held.2.len() as u32).unwrap(), held.2);
    v.vfs.release(fh).unwrap();
    // Closed now: its pack is the one left to repack (at most one). A file's open state
    // is dropped opportunistically (try_lock at release), so under load it may outlive
    // the close for a moment: then the next gc repacks it.
    let mut left = u64::MAX;
    for _ in 0..20 {
        let again = v
            .vfs
            .collect_garbage(std::time::Duration::ZERO, false)
            .unwrap();
        assert!(again.sparse_packs <= 1, "{again:?}");
        left = v
            .vfs
            .collect_garbage(std::time::Duration::ZERO, true)
            .unwrap()
            .sparse_packs;
        if left == 0 {
            break;
        }
        let fh = v.vfs.open(held.1).unwrap();
        v.vfs.release(fh).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        left, 0,
        "the new packs are dense and the held file's pack was repacked"
    );
    for (name, ino, data) in &kept {
        assert_eq!(
            &vfs_read_all(&v.vfs, *ino),
            data,
            "{name} on the live mount"
        );
    }
    v.unmount().unwrap();
    let after = objects(&dir).len();
    assert!(
        after < before,
        "{before} objects before the repack, {after} after"
    );

    // From the store alone: every kept file reads back, and fsck finds no damage.
    assert_read_back(&store, kept.iter().copied(), "after a remount");
    assert_fsck_clean(&dir);
}

#[test]
fn background_repack_waits_for_enough_to_gain_stops_when_asked_and_fetches_each_pack_once() {
    let Sparse {
        _tmp,
        _cache,
        dir,
        store,
        files,
        v,
    } = sparse();
    let before = objects(&dir);
    let (packs, dead) = v.vfs.repack(true).unwrap();
    assert!(packs >= 2 && dead > 100_000, "{packs} {dead}");
    let go = AtomicBool::new(false);

    // Less to gain than the bound: nothing is read or written.
    let gets = store.chunk_gets.load(Ordering::SeqCst);
    assert_eq!(v.vfs.auto_repack(dead + 1, &go).unwrap(), None);
    assert_eq!(store.chunk_gets.load(Ordering::SeqCst), gets);
    assert_eq!(objects(&dir), before);

    // Asked to stop (the mount is unmounting): it stops before the first pack.
    let stop = AtomicBool::new(true);
    assert_eq!(v.vfs.auto_repack(dead, &stop).unwrap(), Some((0, 0)));
    assert_eq!(objects(&dir), before);

    let r = v.vfs.auto_repack(dead, &go).unwrap();
    assert_eq!(r, Some((packs, dead)));
    let fetched = store.chunk_gets.load(Ordering::SeqCst) - gets;
    assert!(
        fetched <= packs,
        "{fetched} chunk GETs for {packs} packs: one per pack, not one per file"
    );
    assert_eq!(
        v.vfs.repack(true).unwrap(),
        (0, 0),
        "the new packs are dense"
    );
    v.unmount().unwrap();
    assert!(objects(&dir).len() < before.len());
    assert_read_back(&store, files.iter().step_by(4), "after a remount");
}

#[test]
fn gc_of_an_unmounted_volume_repacks_too() {
    let Sparse {
        _tmp,
        _cache,
        dir,
        store,
        files,
        v,
    } = sparse();
    let (packs, dead) = v.vfs.repack(true).unwrap();
    assert!(packs >= 2, "{packs}");
    v.unmount().unwrap();
    let before = objects(&dir).len();

    // gc repacks from the volume's default cache dir, kept here in a temporary home.
    let home = tempdir();
    let gc = |extra: &[&str]| {
        let mut c = cb();
        c.arg("gc")
            .arg(&dir)
            .args(extra)
            .env("CRYPTBUCKET_PASSPHRASE", PASS)
            .env("XDG_CACHE_HOME", home.path());
        run(&mut c, CMD_TIMEOUT)
    };
    let dry = gc(&["--dry-run"]);
    dry.assert_ok();
    assert!(
        dry.stdout.contains(&format!(
            "would repack {packs} packs that are mostly deleted files ({dead} bytes"
        )),
        "{dry}"
    );
    assert_eq!(objects(&dir).len(), before, "a dry run changes nothing");
    // With --break-lease a crashed mount may hold uncommitted changes: no repack.
    let o = gc(&["--break-lease"]);
    o.assert_ok();
    assert!(
        o.stdout.contains(&format!("not repacking {packs} packs")),
        "{o}"
    );
    assert_eq!(objects(&dir).len(), before);
    let o = gc(&["--min-age", "0"]);
    o.assert_ok();
    assert!(o.stdout.contains(&format!("repacked {packs} packs")), "{o}");
    assert!(
        home.path().join("cryptbucket").is_dir(),
        "the repack ran in the default cache dir"
    );
    // The old packs are now unreferenced: the next gc deletes them.
    gc(&["--min-age", "0"]).assert_ok();
    let after = objects(&dir).len();
    assert!(after < before, "{before} objects before, {after} after");

    let fresh = tempdir();
    let v = open(&store, fresh.path());
    assert_eq!(
        v.vfs.repack(true).unwrap(),
        (0, 0),
        "the new packs are dense"
    );
    for (name, ino, data) in files.iter().step_by(4) {
        assert_eq!(&vfs_read_all(&v.vfs, *ino), data, "{name} after the repack");
    }
    v.unmount().unwrap();
    assert_fsck_clean(&dir);
}

#[test]
fn rekey_reseals_packs_whole_and_every_file_reads_back() {
    let tmp = tempdir();
    let dir = tmp.path().join("store");
    let (store, files) = setup(&dir);
    let before = objects(&dir);
    cb_with_passphrase("rekey", &dir, PASS, &[]).assert_ok();
    let after = objects(&dir);
    assert_eq!(after.len(), before.len(), "one new object per old one");
    assert!(
        after.is_disjoint(&before),
        "every object re-sealed under a new id"
    );

    let fresh = tempdir();
    let v = open(&store, fresh.path());
    for (name, ino, data) in &files {
        assert_eq!(&vfs_read_all(&v.vfs, *ino), data, "{name} after the rekey");
    }
    v.unmount().unwrap();
    fsck(&dir, &["--full"]).assert_ok();
}
