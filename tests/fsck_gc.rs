//! `cryptbucket fsck` and `cryptbucket gc` on a local store: tampering (a deleted, a
//! truncated and a bit-flipped chunk) is reported with the file's path, `--repair` moves the
//! damaged files to /lost+found and a second check is clean; gc frees only old
//! unreferenced chunks, on an unmounted volume (under the writer lease) and on a live mount.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use common::*;
use cryptbucket::backend::local::LocalStore;
use cryptbucket::backend::ObjectStore;
use cryptbucket::crypto::KeySource;
use cryptbucket::meta::ROOT_INO;
use cryptbucket::vfs::{Ctx, Vfs};
use cryptbucket::volume;

const PASS: &str = "fsck test passphrase";
const CTX: Ctx = Ctx {
    uid: 1000,
    gid: 1000,
    umask: 0o022,
};

fn key() -> KeySource {
    KeySource::Passphrase(zeroize::Zeroizing::new(PASS.to_string()))
}

fn store_of(dir: &Path) -> Arc<dyn ObjectStore> {
    Arc::new(LocalStore::open(dir).unwrap())
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)).to_le_bytes()[1])
        .collect()
}

fn chunk_files(store: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    list_into(store, &store.join("d"), &mut out);
    out
}

/// Like `files_under`, but a live mount may delete objects (and their emptied directories)
/// while we walk: what vanishes meanwhile is simply not listed.
fn list_into(store: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => list_into(store, &p, out),
            Ok(_) => {
                let rel = p.strip_prefix(store).expect("under the store");
                out.insert(rel.to_string_lossy().into_owned());
            }
            Err(_) => {}
        }
    }
}

/// The chunk objects once a live mount's background uploads and deletes have settled.
fn settled_chunk_files(store: &Path) -> BTreeSet<String> {
    let mut last = chunk_files(store);
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = chunk_files(store);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the store's chunk objects never settled");
}

/// A volume with small chunks; returns for each file (name, content, its chunk object keys).
fn setup(store: &Path) -> Vec<(String, Vec<u8>, Vec<String>)> {
    let rt = volume::runtime().unwrap();
    std::fs::create_dir_all(store).unwrap();
    volume::create(
        &rt,
        store_of(store),
        small_chunk_params(),
        &key(),
        test_kdf(),
    )
    .unwrap();
    let cache = tempdir();
    let v = volume::open(
        volume::runtime().unwrap(),
        store_of(store),
        &key(),
        Some(cache.path().to_owned()),
    )
    .unwrap();
    let a = v.vfs.mkdir(&CTX, ROOT_INO, b"a", 0o755).unwrap();
    let mut out = Vec::new();
    for (i, (dir, name, size)) in [
        (a.ino, "one", 300_000),
        (a.ino, "two", 300_000),
        (ROOT_INO, "three", 100_000),
        (ROOT_INO, "four", 10),
        (ROOT_INO, "five", 200_000),
    ]
    .into_iter()
    .enumerate()
    {
        let before = chunk_files(store);
        let data = pattern(size, i as u32);
        let (_, fh) = v.vfs.create(&CTX, dir, name.as_bytes(), 0o644).unwrap();
        v.vfs.write(fh, 0, &data).unwrap();
        v.vfs.release(fh).unwrap();
        v.vfs.sync_all().unwrap();
        let mine: Vec<String> = chunk_files(store).difference(&before).cloned().collect();
        let path = if dir == ROOT_INO {
            name.to_string()
        } else {
            format!("a/{name}")
        };
        out.push((path, data, mine));
    }
    v.unmount().unwrap();
    out
}

fn fsck(store: &Path, extra: &[&str]) -> Outcome {
    cb_with_passphrase("fsck", store, PASS, extra)
}

fn gc(target: &Path, extra: &[&str]) -> Outcome {
    cb_with_passphrase("gc", target, PASS, extra)
}

fn read_path(vfs: &Vfs, path: &str) -> Vec<u8> {
    let mut ino = ROOT_INO;
    for part in path.split('/') {
        ino = vfs.lookup(ino, part.as_bytes()).unwrap().ino;
    }
    let fh = vfs.open(ino).unwrap();
    let size = vfs.getattr(ino).unwrap().size;
    let got = vfs.read(fh, 0, size as u32).unwrap();
    vfs.release(fh).unwrap();
    got
}

fn add_orphans(store: &Path, n: u8) -> Vec<String> {
    (0..n)
        .map(|i| {
            let id = cryptbucket::crypto::ChunkId([0xe0 + i; 16]);
            let key = id.object_key();
            write_file(&store.join(&key), &pattern(1000 + i as usize, 77));
            key
        })
        .collect()
}

#[test]
fn fsck_reports_tampering_by_path_and_repair_moves_damage_to_lost_found() {
    let dir = tempdir();
    let store = dir.path().join("store");
    let files = setup(&store);
    let clean = fsck(&store, &["--full"]);
    clean.assert_ok();
    assert!(clean.stdout.contains("0 errors"), "{clean}");
    let orphans = add_orphans(&store, 2);

    // Tamper: delete a chunk of a/one, truncate one of a/two, flip a byte in three's.
    let chunk = |name: &str| {
        let f = files.iter().find(|f| f.0 == name).unwrap();
        assert!(!f.2.is_empty(), "{name} has chunks");
        store.join(&f.2[0])
    };
    std::fs::remove_file(chunk("a/one")).unwrap();
    let two = chunk("a/two");
    let len = std::fs::metadata(&two).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&two)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let three = chunk("three");
    let mut bytes = std::fs::read(&three).unwrap();
    bytes[500] ^= 0x40;
    std::fs::write(&three, bytes).unwrap();

    let quick = fsck(&store, &[]);
    assert_eq!(quick.status.code(), Some(3), "{quick}");
    assert!(
        quick.stdout.contains("error: /a/one: ") && quick.stdout.contains("missing"),
        "{quick}"
    );
    assert!(
        quick.stdout.contains("error: /a/two: ") && quick.stdout.contains("wrong size"),
        "{quick}"
    );
    assert!(
        !quick.stdout.contains("/three"),
        "a flipped byte needs --full: {quick}"
    );
    assert!(quick.stdout.contains("2 orphan chunk objects"), "{quick}");

    let full = fsck(&store, &["--full", "--list-orphans"]);
    assert_eq!(full.status.code(), Some(3), "{full}");
    assert!(
        full.stdout.contains("error: /three: ") && full.stdout.contains("authentication"),
        "{full}"
    );
    assert!(full.stdout.contains("3 errors"), "{full}");
    for o in &orphans {
        assert!(
            full.stdout.contains(o.as_str()),
            "orphan {o} listed: {full}"
        );
    }
    assert!(!full.stdout.contains("/five"), "{full}");

    // --repair refuses while another writer holds the lease.
    let cache = tempdir();
    let live = volume::open(
        volume::runtime().unwrap(),
        store_of(&store),
        &key(),
        Some(cache.path().to_owned()),
    )
    .unwrap();
    let refused = fsck(&store, &["--full", "--repair"]);
    assert_eq!(refused.status.code(), Some(1), "{refused}");
    assert!(refused.stderr.contains("already mounted"), "{refused}");
    live.unmount().unwrap();

    let repair = fsck(&store, &["--full", "--repair"]);
    assert_eq!(repair.status.code(), Some(4), "{repair}");
    for p in ["/a/one", "/a/two", "/three"] {
        assert!(
            repair
                .stdout
                .contains(&format!("repaired: moved {p} to /lost+found/")),
            "{p}: {repair}"
        );
    }
    let again = fsck(&store, &["--full"]);
    assert_eq!(
        again.status.code(),
        Some(0),
        "repaired volume checks clean: {again}"
    );
    assert!(again.stdout.contains("already in /lost+found"), "{again}");
    assert!(again.stdout.contains("0 errors"), "{again}");

    // The healthy files are untouched; the damaged ones keep their intact ranges.
    let cache = tempdir();
    let v = volume::open(
        volume::runtime().unwrap(),
        store_of(&store),
        &key(),
        Some(cache.path().to_owned()),
    )
    .unwrap();
    for f in files.iter().filter(|f| f.0 == "five" || f.0 == "four") {
        assert_eq!(read_path(&v.vfs, &f.0), f.1, "{}", f.0);
    }
    let a = v.vfs.lookup(ROOT_INO, b"a").unwrap();
    assert!(v.vfs.lookup(a.ino, b"one").is_err(), "a/one moved away");
    let lf = v.vfs.lookup(ROOT_INO, b"lost+found").unwrap();
    let names: Vec<String> = v
        .vfs
        .readdir(lf.ino, 0, 100)
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("-a_one")), "{names:?}");
    v.unmount().unwrap();
}

#[test]
fn fsck_repairs_a_missing_header_copy() {
    let dir = tempdir();
    let store = dir.path().join("store");
    setup(&store);
    std::fs::remove_file(store.join("cryptbucket.json.bak")).unwrap();
    let o = fsck(&store, &[]);
    assert_eq!(o.status.code(), Some(3), "{o}");
    assert!(o.stdout.contains("cryptbucket.json.bak is missing"), "{o}");
    let o = fsck(&store, &["--repair"]);
    assert_eq!(o.status.code(), Some(4), "{o}");
    assert_eq!(
        std::fs::read(store.join("cryptbucket.json.bak")).unwrap(),
        std::fs::read(store.join("cryptbucket.json")).unwrap()
    );
    fsck(&store, &[]).assert_ok();
}

#[test]
fn gc_on_an_unmounted_volume_frees_only_old_unreferenced_chunks() {
    let dir = tempdir();
    let store = dir.path().join("store");
    let files = setup(&store);
    let referenced: BTreeSet<String> = files.iter().flat_map(|f| f.2.clone()).collect();
    let orphans = add_orphans(&store, 3);

    let young = gc(&store, &[]);
    young.assert_ok();
    assert!(
        young.stdout.contains("freed 0 unreferenced chunk objects"),
        "{young}"
    );
    assert!(
        young.stdout.contains("3 unreferenced but younger"),
        "{young}"
    );

    let dry = gc(&store, &["--min-age", "0", "--dry-run"]);
    dry.assert_ok();
    assert!(
        dry.stdout
            .contains("would free 3 unreferenced chunk objects (3003 bytes)"),
        "{dry}"
    );
    assert_eq!(chunk_files(&store).len(), referenced.len() + 3);

    // Refused while another writer holds the lease.
    let cache = tempdir();
    let live = volume::open(
        volume::runtime().unwrap(),
        store_of(&store),
        &key(),
        Some(cache.path().to_owned()),
    )
    .unwrap();
    let refused = gc(&store, &["--min-age", "0"]);
    refused.assert_clean_failure();
    assert!(refused.stderr.contains("already mounted"), "{refused}");
    live.unmount().unwrap();

    let done = gc(&store, &["--min-age", "0"]);
    done.assert_ok();
    assert!(
        done.stdout
            .contains("freed 3 unreferenced chunk objects (3003 bytes)"),
        "{done}"
    );
    assert_eq!(chunk_files(&store), referenced);
    for o in &orphans {
        assert!(!store.join(o).exists());
    }
    assert!(!store.join("lock").exists(), "gc released its lease");
    fsck(&store, &["--full"]).assert_ok();
}

#[test]
fn gc_on_a_live_mount_goes_through_the_daemon() {
    require_fuse!("gc_on_a_live_mount_goes_through_the_daemon");
    let _heavy = heavy_lock();
    let dir = tempdir();
    let store = dir.path().join("store");
    let vol = common::Volume::local(&store, Key::Passphrase(PASS.into()));
    vol.init();
    let mnt = dir.path().join("mnt");
    let cache = dir.path().join("cache");
    let m = vol.mount(&mnt, &cache);
    let big = pattern(3 * CHUNK + 5, 3);
    write_file(&mnt.join("big"), &big);
    write_file(&mnt.join("gone"), &pattern(CHUNK + 1, 4));
    std::fs::remove_file(mnt.join("gone")).unwrap();
    // Every upload finished and committed (`sync -f` would not reach the daemon), so the
    // orphans below are the only unreferenced chunks.
    run(cb().arg("sync").arg(&mnt), CMD_TIMEOUT).assert_ok();
    settled_chunk_files(&store);
    let orphans = add_orphans(&store, 2);
    let before = chunk_files(&store).len();

    let o = gc(&mnt, &["--min-age", "0"]);
    o.assert_ok();
    assert!(
        o.stdout
            .contains("freed 2 unreferenced chunk objects (2001 bytes)"),
        "{o}"
    );
    assert_eq!(chunk_files(&store).len(), before - 2);
    for k in &orphans {
        assert!(!store.join(k).exists());
    }
    assert_eq!(std::fs::read(mnt.join("big")).unwrap(), big);
    m.unmount();
    let o = fsck(&store, &["--full"]);
    o.assert_ok();
    assert!(o.stdout.contains("0 errors"), "{o}");
}
