//! End-to-end tests: the built `cryptbucket` binary on a real FUSE mount.
//!
//! What they need: /dev/fuse and fusermount3 (tests that mount skip with a note otherwise), and
//! for the S3 cases an S3 server at $CRYPTBUCKET_TEST_S3_ENDPOINT (scripts/test.sh starts one).
//! Mounts run in background mode, so the daemon's log is `<cache-dir>/cryptbucket.log`; the
//! tamper test reads it there. Heavy tests take a cross-process lock so only one runs at a time.
//! Every command runs under a timeout; every mount is detached by a guard if a test fails.

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const PASS: &str = "correct horse battery staple";

// ------------------------------------------------------------------------------------------------
// Round trip

/// The tree the round trips copy onto a mount: every size class around block and chunk
/// boundaries, one big random file, nested directories, awkward names, symlinks, modes.
fn build_tree(root: &Path, big: usize) {
    let sizes = [
        ("empty", 0),
        ("one", 1),
        ("block-1", BLOCK - 1),
        ("block", BLOCK),
        ("block+1", BLOCK + 1),
        ("chunk-1", CHUNK - 1),
        ("chunk", CHUNK),
        ("chunk+1", CHUNK + 1),
    ];
    for (name, n) in sizes {
        write_file(&root.join(format!("sizes/{name}.bin")), &random_bytes(n));
    }
    write_file(&root.join("big.bin"), &random_bytes(big));
    write_file(&root.join("a/b/c/deep.txt"), b"deep\n");
    write_file(&root.join("a/b/c/d/e/f/g/deeper.bin"), &random_bytes(3000));
    write_file(
        &root.join("dir with spaces/é 日本 file.txt"),
        "non-ASCII name, non-ASCII content: é 日本 ☃\n".as_bytes(),
    );
    write_file(
        &root.join("dir with spaces/ünïcødé ☃/nested file.bin"),
        &random_bytes(10 * KIB),
    );
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    write_file(&root.join("exec.sh"), b"#!/bin/sh\necho hi\n");
    fs::set_permissions(root.join("exec.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    write_file(&root.join("private.txt"), b"only me\n");
    fs::set_permissions(root.join("private.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    symlink("sizes/one.bin", root.join("link-rel")).unwrap();
    symlink("../a/b", root.join("dir with spaces/link-up")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
    symlink("/etc/hostname", root.join("link-abs")).unwrap();
    symlink("dir with spaces/é 日本 file.txt", root.join("link é 日本")).unwrap();
}

/// Deterministic bytes, so the same edit can be applied to the mount and to a reference copy.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed as usize) % 251) as u8)
        .collect()
}

fn pwrite(path: &Path, off: u64, data: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, off)
        .unwrap_or_else(|e| panic!("pwrite {}: {e}", path.display()));
    f.sync_all().unwrap();
}

fn append(path: &Path, data: &[u8]) {
    let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(data)
        .unwrap_or_else(|e| panic!("append {}: {e}", path.display()));
}

fn set_len(path: &Path, len: usize) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len as u64)
        .unwrap_or_else(|e| panic!("truncate {} to {len}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// The POSIX edits of the issue, applied identically to `root` (a mount or a local reference).
fn edit_tree(root: &Path) {
    // Overwrite in place: inside a block, across a block boundary, across a chunk boundary.
    pwrite(&root.join("sizes/block.bin"), 5, b"hello");
    pwrite(&root.join("big.bin"), 1_000_000, &pattern(100 * KIB, 1));
    pwrite(
        &root.join("sizes/chunk+1.bin"),
        (CHUNK - 10) as u64,
        b"0123456789ABCDEFGHIJ",
    );
    // Append.
    append(&root.join("sizes/block+1.bin"), &pattern(3000, 2));
    append(&root.join("a/b/c/deep.txt"), b"more\n");
    // Truncate down, up, and down-then-up (the gap must read back as zeros).
    set_len(&root.join("sizes/chunk.bin"), CHUNK / 2 + 7);
    set_len(&root.join("sizes/one.bin"), 2 * BLOCK + 3);
    set_len(&root.join("sizes/chunk-1.bin"), 100);
    set_len(&root.join("sizes/chunk-1.bin"), 3 * BLOCK + 5);
    // Rename a file, and a whole directory with everything in it.
    fs::rename(root.join("sizes/block-1.bin"), root.join("a/renamed.bin")).unwrap();
    fs::rename(root.join("a/b"), root.join("moved-b")).unwrap();
    // rmdir, unlink, chmod, new and removed symlinks, a new file.
    fs::remove_dir(root.join("empty-dir")).unwrap();
    fs::remove_file(root.join("sizes/empty.bin")).unwrap();
    fs::remove_file(root.join("link-rel")).unwrap();
    symlink("moved-b/c", root.join("link-to-moved")).unwrap();
    chmod(&root.join("big.bin"), 0o640);
    chmod(&root.join("moved-b"), 0o700);
    chmod(&root.join("a/renamed.bin"), 0o755);
    write_file(&root.join("moved-b/new.txt"), b"created after the rename\n");
}

/// A small tar archive with files, directories, a symlink and a mode.
fn make_tarball(work: &Path) -> PathBuf {
    let src = work.join("tar-src");
    write_file(&src.join("t/one.txt"), b"one\n");
    write_file(&src.join("t/sub dir/two.bin"), &random_bytes(70 * KIB));
    symlink("one.txt", src.join("t/link")).unwrap();
    chmod(&src.join("t/one.txt"), 0o444);
    let tar = work.join("t.tar");
    tool(
        &[
            "tar",
            "-C",
            src.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            "t",
        ],
        CMD_TIMEOUT,
    );
    tar
}

/// A small git repository with two commits.
fn make_git_repo(work: &Path) -> PathBuf {
    let repo = work.join("repo");
    write_file(&repo.join("README"), b"hello\n");
    write_file(&repo.join("src/lib.rs"), b"pub fn f() {}\n");
    let r = repo.to_str().unwrap();
    let git = |args: &[&str]| {
        let mut full = vec![
            "git",
            "-C",
            r,
            "-c",
            "user.name=e2e",
            "-c",
            "user.email=e2e@example.invalid",
            "-c",
            "init.defaultBranch=main",
        ];
        full.extend_from_slice(args);
        tool(&full, CMD_TIMEOUT);
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "first"]);
    write_file(&repo.join("src/more.rs"), &pattern(20 * KIB, 3));
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "second"]);
    repo
}

fn git_check(clone: &Path) {
    let c = clone.to_str().unwrap();
    let status = tool(
        &[
            "git",
            "-c",
            "safe.directory=*",
            "-C",
            c,
            "status",
            "--porcelain",
        ],
        CMD_TIMEOUT,
    );
    assert!(
        status.stdout.trim().is_empty(),
        "git status of the clone on the mount is not clean:\n{}",
        status.stdout
    );
    tool(
        &[
            "git",
            "-c",
            "safe.directory=*",
            "-C",
            c,
            "fsck",
            "--full",
            "--strict",
        ],
        BULK_TIMEOUT,
    );
}

/// Copy a tree on, unmount, remount with a fresh cache (another machine), compare; edit it
/// with POSIX calls, tar, rsync and git; unmount, remount fresh again, compare again.
fn round_trip(vol: &Volume, work: &Path, big: usize) {
    let src = work.join("src");
    build_tree(&src, big);
    let reference = work.join("ref");
    let tarball = make_tarball(work);
    let repo = make_git_repo(work);
    let mnt = work.join("mnt");
    let tree = mnt.join("tree");

    vol.init();

    // Session 1: copy the tree on.
    let m = vol.mount(&mnt, &work.join("cache1"));
    tool(
        &["cp", "-a", src.to_str().unwrap(), tree.to_str().unwrap()],
        BULK_TIMEOUT,
    );
    m.unmount();

    // Session 2, as on another machine: everything is there, byte for byte.
    let m = vol.mount(&mnt, &work.join("cache2"));
    assert_same_tree(&src, &tree);
    assert_eq!(
        file_mtimes(&src),
        file_mtimes(&tree),
        "cp -a preserved mtimes, the volume should too"
    );

    // Edit the mount and a local reference copy the same way.
    tool(
        &[
            "cp",
            "-a",
            src.to_str().unwrap(),
            reference.to_str().unwrap(),
        ],
        BULK_TIMEOUT,
    );
    for root in [&reference, &tree] {
        edit_tree(root);
        let dest = root.join("tarx");
        fs::create_dir(&dest).unwrap();
        tool(
            &[
                "tar",
                "-xf",
                tarball.to_str().unwrap(),
                "-C",
                dest.to_str().unwrap(),
            ],
            BULK_TIMEOUT,
        );
    }
    if have_tool("rsync") {
        for root in [&reference, &tree] {
            let from = format!("{}/", src.join("dir with spaces").display());
            let to = root.join("rsynced");
            tool(&["rsync", "-a", &from, to.to_str().unwrap()], BULK_TIMEOUT);
        }
    } else {
        note_skip("round_trip rsync -a step", "rsync is not installed");
    }
    assert_same_tree(&reference, &tree);

    let clone = mnt.join("clone");
    tool(
        &[
            "git",
            "clone",
            "-q",
            repo.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
        BULK_TIMEOUT,
    );
    git_check(&clone);
    m.unmount();

    // Session 3, fresh cache again: the edits persisted.
    let m = vol.mount(&mnt, &work.join("cache3"));
    assert_same_tree(&reference, &tree);
    git_check(&clone);
    m.unmount();
}

#[test]
fn round_trip_local() {
    require_fuse!("round_trip_local");
    let _lock = heavy_lock();
    let work = tempdir();
    let vol = Volume::local(&work.path().join("store"), Key::Passphrase(PASS.to_owned()));
    round_trip(&vol, work.path(), 50 * MIB);
}

#[test]
fn round_trip_s3() {
    require_fuse!("round_trip_s3");
    let Some(endpoint) = s3_endpoint() else {
        note_skip("round_trip_s3", "CRYPTBUCKET_TEST_S3_ENDPOINT is not set");
        return;
    };
    let _lock = heavy_lock();
    let work = tempdir();
    let bucket = unique_bucket("rt");
    s3_create_bucket(&endpoint, &bucket);
    let keyfile = work.path().join("vol.key");
    // moto keeps objects in memory: 20 MiB instead of 50.
    let vol = Volume::s3(
        format!("s3://{bucket}/vols/one"),
        &endpoint,
        Key::Keyfile(keyfile),
    );
    round_trip(&vol, work.path(), 20 * MIB);
}

// ------------------------------------------------------------------------------------------------
// Nothing leaks

/// A hasher for 16-byte windows of random data: their low 8 bytes are already uniform.
#[derive(Default)]
struct WindowHasher(u64);
impl std::hash::Hasher for WindowHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            self.0 ^= (*b as u64) << ((i % 8) * 8);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 ^= v as u64 ^ (v >> 64) as u64;
    }
}
type Windows = HashSet<u128, std::hash::BuildHasherDefault<WindowHasher>>;

fn window(b: &[u8]) -> u128 {
    u128::from_le_bytes(b.try_into().unwrap())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn nothing_leaks_to_the_store() {
    require_fuse!("nothing_leaks_to_the_store");
    let _lock = heavy_lock();
    let work = tempdir();
    let store = work.path().join("store");
    let vol = Volume::local(&store, Key::Passphrase(PASS.to_owned()));
    vol.init();

    let names = [
        "secret-dir-Kp3",
        "secret-name-Xq7.txt",
        "secret-small-Jh2.txt",
        "secret-text-Mn4.txt",
        "secret-ünï-名前.bin",
        "secret-link-Zz9",
        "secret-target-Wv5",
    ];
    let big = random_bytes(3 * BLOCK * 8 + 12345); // ~1.5 MiB: many blocks, one chunk
    let small = random_bytes(100); // small enough to live inline in the metadata
    let text = "TOP-SECRET-PAYLOAD: the eagle lands at midnight, bring the usual. "
        .repeat(40)
        .into_bytes(); // compressible, in case something compresses before sealing
    let nonascii = random_bytes(BLOCK + 1);

    let mnt = work.path().join("mnt");
    let m = vol.mount(&mnt, &work.path().join("cache"));
    let dir = mnt.join("secret-dir-Kp3");
    fs::create_dir(&dir).unwrap();
    write_file(&dir.join("secret-name-Xq7.txt"), &big);
    write_file(&mnt.join("secret-small-Jh2.txt"), &small);
    write_file(&mnt.join("secret-text-Mn4.txt"), &text);
    write_file(&dir.join("secret-ünï-名前.bin"), &nonascii);
    symlink("secret-target-Wv5", mnt.join("secret-link-Zz9")).unwrap();
    m.unmount();

    let mut windows = Windows::default();
    for content in [&big, &small, &text, &nonascii] {
        for w in content.windows(16) {
            windows.insert(window(w));
        }
    }
    let objects = files_under(&store);
    assert!(!objects.is_empty(), "the store holds no objects");
    let mut stored_bytes = 0;
    for obj in &objects {
        let rel = obj
            .strip_prefix(&store)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for name in names {
            assert!(
                !rel.contains(name),
                "object key {rel} contains the name {name}"
            );
        }
        assert!(
            !rel.contains("secret"),
            "object key {rel} contains a name part"
        );
        for name in names {
            let stem: String = name.chars().take(11).collect(); // e.g. "secret-name"
            assert!(!rel.contains(&stem), "object key {rel} contains {stem}");
        }
        let data = fs::read(obj).unwrap();
        stored_bytes += data.len();
        for name in names {
            assert!(
                !contains(&data, name.as_bytes()),
                "object {rel} contains the file name {name}"
            );
        }
        if let Some(pos) = data.windows(16).position(|w| windows.contains(&window(w))) {
            panic!("object {rel} contains 16 bytes of file content at offset {pos}");
        }
    }
    assert!(
        stored_bytes >= big.len(),
        "the store holds {stored_bytes} bytes, less than the {} written",
        big.len()
    );
}

// ------------------------------------------------------------------------------------------------
// Tamper

/// Read `path` block by block in a helper thread (a hung daemon must not hang the test).
/// Every successful read must return exactly the expected bytes; the errors are returned.
fn read_all_blocks(path: &Path, expected: &[u8]) -> Vec<(u64, std::io::Error)> {
    let path = path.to_path_buf();
    let expected = expected.to_vec();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut errors = Vec::new();
        match fs::File::open(&path) {
            Err(e) => errors.push((0, e)),
            Ok(f) => {
                let mut buf = vec![0u8; BLOCK];
                for off in (0..expected.len()).step_by(BLOCK) {
                    let want = &expected[off..(off + BLOCK).min(expected.len())];
                    let got = &mut buf[..want.len()];
                    match f.read_exact_at(got, off as u64) {
                        Ok(()) => assert!(got == want, "WRONG DATA returned at offset {off}"),
                        Err(e) => errors.push((off as u64, e)),
                    }
                }
            }
        }
        let _ = tx.send(errors);
    });
    rx.recv_timeout(Duration::from_secs(90))
        .expect("reading the tampered file hung, or returned wrong data (see panic above)")
}

fn object_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn tamper_chunk_objects_gives_eio() {
    require_fuse!("tamper_chunk_objects_gives_eio");
    let _lock = heavy_lock();
    let work = tempdir();
    let w = work.path();
    let store = w.join("store");
    let vol = Volume::local(&store, Key::Keyfile(w.join("vol.key")));
    vol.init();
    let data = random_bytes(2 * CHUNK + 5000); // two full chunks and a short one
    let mnt = w.join("mnt");
    let m = vol.mount(&mnt, &w.join("cache0"));
    write_file(&mnt.join("victim.bin"), &data);
    m.unmount();

    let chunks = files_under(&store.join("d"));
    assert!(
        chunks.len() >= 2,
        "expected at least two chunk objects under d/, found {chunks:?}"
    );
    let size = |p: &Path| fs::metadata(p).unwrap().len();
    let largest = chunks.iter().max_by_key(|p| size(p)).unwrap().clone();

    // Sanity: an untouched copy reads back fine with a fresh cache.
    let pristine = w.join("pristine");
    copy_store(&store, &pristine);
    let m = Volume::local(&pristine, vol.key.clone()).mount(&mnt, &w.join("cache-pristine"));
    assert!(read_all_blocks(&mnt.join("victim.bin"), &data).is_empty());
    m.unmount();

    type Tamper = Box<dyn Fn(&Path) -> Vec<String>>;
    let rel = |p: &Path| p.strip_prefix(&store).unwrap().to_path_buf();
    let flip_rel = rel(&largest);
    let flip: Tamper = Box::new(move |root: &Path| {
        let p = root.join(&flip_rel);
        let mut b = fs::read(&p).unwrap();
        let i = b.len() / 2;
        b[i] ^= 0x01;
        fs::write(&p, b).unwrap();
        vec![object_name(&p)]
    });
    // Swap two chunk objects, of the same size when there are two.
    let mut by_size = chunks.clone();
    by_size.sort_by_key(|p| std::cmp::Reverse(size(p)));
    let (x, y) = (rel(&by_size[0]), rel(&by_size[1]));
    let swap: Tamper = Box::new(move |root: &Path| {
        let (a, b) = (root.join(&x), root.join(&y));
        let tmp = root.join("swap.tmp");
        fs::rename(&a, &tmp).unwrap();
        fs::rename(&b, &a).unwrap();
        fs::rename(&tmp, &b).unwrap();
        vec![object_name(&a), object_name(&b)]
    });
    let trunc_rel = rel(&largest);
    let truncate: Tamper = Box::new(move |root: &Path| {
        let p = root.join(&trunc_rel);
        let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(f.metadata().unwrap().len() / 2).unwrap();
        vec![object_name(&p)]
    });

    for (case, tamper) in [("flip", flip), ("swap", swap), ("truncate", truncate)] {
        let copy = w.join(format!("store-{case}"));
        copy_store(&store, &copy);
        let names = tamper(&copy);
        let cache = w.join(format!("cache-{case}"));
        let m = Volume::local(&copy, vol.key.clone()).mount(&mnt, &cache);
        let errors = read_all_blocks(&mnt.join("victim.bin"), &data);
        let log_path = m.log_path();
        m.unmount();
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            !errors.is_empty(),
            "{case}: the whole file read back fine after tampering with {names:?}"
        );
        for (off, e) in &errors {
            assert_eq!(
                e.raw_os_error(),
                Some(libc::EIO),
                "{case}: read at offset {off} failed with {e:?}, expected EIO"
            );
        }
        assert!(
            names.iter().any(|n| log.contains(n.as_str())),
            "{case}: the daemon log {} does not name the tampered object {names:?}:\n{log}",
            log_path.display()
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Wrong keys

/// A mount that must be refused: clean failure, and nothing mounted afterwards.
fn expect_mount_refused(vol: &Volume, mnt: &Path, cache: &Path) -> Outcome {
    let o = vol.try_mount(mnt, cache);
    if is_mounted(mnt) {
        let _ = Command::new("fusermount3").arg("-uz").arg(mnt).status();
        panic!("{} got mounted although it should not: {o}", mnt.display());
    }
    o.assert_clean_failure();
    o
}

#[test]
fn wrong_passphrase_or_keyfile_is_refused() {
    let work = tempdir();
    let w = work.path();
    let mnt = w.join("mnt");
    fs::create_dir(&mnt).unwrap();

    // Passphrase volume.
    let store = w.join("store-pass");
    let vol = Volume::local(&store, Key::Passphrase(PASS.to_owned()));
    vol.init();
    let before = store_digest(&store);
    expect_mount_refused(
        &vol.with_key(Key::Passphrase("wrong horse battery staple".into())),
        &mnt,
        &w.join("cache1"),
    )
    .assert_stderr_mentions(&["passphrase"]);
    // No key at all and no terminal to ask on: a clear error, not a hang.
    expect_mount_refused(&vol.with_key(Key::Nothing), &mnt, &w.join("cache2"))
        .assert_stderr_mentions(&["passphrase", "key"]);
    assert_eq!(
        store_digest(&store),
        before,
        "a refused mount changed the store"
    );

    // Keyfile volume.
    let store = w.join("store-key");
    let vol = Volume::local(&store, Key::Keyfile(w.join("right.key")));
    vol.init();
    let right = fs::read(w.join("right.key")).expect("init --keyfile creates the keyfile");
    let wrong_key = w.join("wrong.key");
    let mut wrong = random_bytes(right.len().max(32));
    if wrong == right {
        wrong[0] ^= 1;
    }
    write_file(&wrong_key, &wrong);
    chmod(&wrong_key, 0o600);
    let before = store_digest(&store);
    expect_mount_refused(&vol.with_key(Key::Keyfile(wrong_key)), &mnt, &w.join("c3"))
        .assert_stderr_mentions(&["key"]);
    expect_mount_refused(
        &vol.with_key(Key::Passphrase(PASS.to_owned())),
        &mnt,
        &w.join("c4"),
    )
    .assert_stderr_mentions(&["passphrase", "key"]);
    assert_eq!(
        store_digest(&store),
        before,
        "a refused mount changed the store"
    );
    assert!(fs::read_dir(&mnt).unwrap().next().is_none());
}

// ------------------------------------------------------------------------------------------------
// Bad targets

#[test]
fn bad_local_targets_fail_cleanly() {
    let work = tempdir();
    let w = work.path();
    let key = Key::Passphrase(PASS.to_owned());

    // mount of a STORE that does not exist: refused, and not created.
    let missing = w.join("no-such-store");
    let mnt = w.join("mnt");
    fs::create_dir(&mnt).unwrap();
    expect_mount_refused(&Volume::local(&missing, key.clone()), &mnt, &w.join("c1"))
        .assert_stderr_mentions(&["no-such-store", "not exist", "no such", "not found"]);
    assert!(!missing.exists(), "a failed mount created the store dir");

    // init of a STORE directory that does not exist yet creates it (documented choice).
    let fresh = w.join("fresh-store");
    let vol = Volume::local(&fresh, key.clone());
    vol.init();
    assert!(fresh.join("cryptbucket.json").is_file());

    // Missing mountpoint.
    let o = expect_mount_refused(&vol, &w.join("no-such-mnt"), &w.join("c2"));
    o.assert_stderr_mentions(&["no-such-mnt", "mountpoint", "mount point"]);
    assert!(!w.join("no-such-mnt").exists());

    // Non-empty mountpoint: refused, its contents untouched.
    write_file(&mnt.join("precious.txt"), b"keep me\n");
    expect_mount_refused(&vol, &mnt, &w.join("c3")).assert_stderr_mentions(&["empty"]);
    assert_eq!(fs::read(mnt.join("precious.txt")).unwrap(), b"keep me\n");

    // A mountpoint that is a regular file.
    let file = w.join("a-file");
    write_file(&file, b"x");
    expect_mount_refused(&vol, &file, &w.join("c4"));
}

#[test]
fn unreachable_s3_endpoint_fails_within_30s() {
    let work = tempdir();
    let mnt = work.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let vol = Volume::s3(
        "s3://cb-e2e-unreachable".into(),
        "http://127.0.0.1:1",
        Key::Passphrase(PASS.to_owned()),
    );
    let limit = Duration::from_secs(30);
    let o = run(&mut vol.cmd("init", &[&vol.store]), limit);
    o.assert_clean_failure();
    let mut c = vol.cmd("mount", &[&vol.store, mnt.to_str().unwrap()]);
    c.arg("--cache-dir").arg(work.path().join("cache"));
    let o = run(&mut c, limit);
    if is_mounted(&mnt) {
        let _ = Command::new("fusermount3").arg("-uz").arg(&mnt).status();
        panic!("mounted an unreachable store: {o}");
    }
    o.assert_clean_failure();
}

#[test]
fn s3_missing_bucket_and_existing_volume() {
    let Some(endpoint) = s3_endpoint() else {
        note_skip(
            "s3_missing_bucket_and_existing_volume",
            "CRYPTBUCKET_TEST_S3_ENDPOINT is not set",
        );
        return;
    };
    let work = tempdir();
    let w = work.path();
    let mnt = w.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let limit = Duration::from_secs(30);

    // A bucket that does not exist: init and mount fail with a message naming it.
    let missing = unique_bucket("missing");
    let vol = Volume::s3(
        format!("s3://{missing}"),
        &endpoint,
        Key::Passphrase(PASS.to_owned()),
    );
    let o = run(&mut vol.cmd("init", &[&vol.store]), limit);
    o.assert_clean_failure()
        .assert_stderr_mentions(&[&missing, "bucket"]);
    let mut c = vol.cmd("mount", &[&vol.store, mnt.to_str().unwrap()]);
    c.arg("--cache-dir").arg(w.join("c1"));
    let o = run(&mut c, limit);
    assert!(!is_mounted(&mnt), "mounted a missing bucket: {o}");
    o.assert_clean_failure()
        .assert_stderr_mentions(&[&missing, "bucket"]);

    // init refuses a prefix that already holds a volume, and leaves it untouched.
    let bucket = unique_bucket("exists");
    s3_create_bucket(&endpoint, &bucket);
    let vol = Volume::s3(
        format!("s3://{bucket}/v"),
        &endpoint,
        Key::Passphrase(PASS.to_owned()),
    );
    vol.init();
    let before = s3_digest(&endpoint, &bucket);
    assert!(!before.is_empty(), "init wrote nothing to the bucket");
    vol.try_init()
        .assert_clean_failure()
        .assert_stderr_mentions(&["already", "exists"]);
    vol.with_key(Key::Keyfile(w.join("k")))
        .try_init()
        .assert_clean_failure()
        .assert_stderr_mentions(&["already", "exists"]);
    assert_eq!(
        s3_digest(&endpoint, &bucket),
        before,
        "a refused init changed the bucket"
    );
}

// ------------------------------------------------------------------------------------------------
// init on an existing volume

#[test]
fn init_refuses_an_existing_volume() {
    let work = tempdir();
    let w = work.path();
    let store = w.join("store");
    let vol = Volume::local(&store, Key::Passphrase(PASS.to_owned()));
    vol.init();
    let before = store_digest(&store);
    assert!(before.contains_key(Path::new("cryptbucket.json")));

    vol.try_init()
        .assert_clean_failure()
        .assert_stderr_mentions(&["already", "exists"]);
    vol.with_key(Key::Passphrase("another passphrase".into()))
        .try_init()
        .assert_clean_failure()
        .assert_stderr_mentions(&["already", "exists"]);
    let keyfile = w.join("new.key");
    vol.with_key(Key::Keyfile(keyfile))
        .try_init()
        .assert_clean_failure()
        .assert_stderr_mentions(&["already", "exists"]);
    assert_eq!(
        store_digest(&store),
        before,
        "a refused init changed the store"
    );
}

/// flock and POSIX record locks work between processes on one mount (the kernel keeps them;
/// cryptbucket implements no lock operations).
#[test]
fn flock_and_posix_locks_conflict_within_one_mount() {
    require_fuse!("flock_and_posix_locks_conflict_within_one_mount");
    let work = tempdir();
    let vol = Volume::local(&work.path().join("store"), Key::Passphrase(PASS.to_owned()));
    vol.init();
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = vol.mount(&mnt, &work.path().join("cache"));
    let f = mnt.join("locked");
    write_file(&f, b"x");
    let a = std::fs::File::open(&f).unwrap();
    let b = std::fs::File::open(&f).unwrap();
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock/fcntl on descriptors we own.
    unsafe {
        assert_eq!(libc::flock(a.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
        assert_eq!(
            libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB),
            -1
        );
        assert_eq!(libc::flock(a.as_raw_fd(), libc::LOCK_UN), 0);
        assert_eq!(libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
        libc::flock(b.as_raw_fd(), libc::LOCK_UN);
    }
    // POSIX record locks are per process: a child must see the parent's write lock.
    let rw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f)
        .unwrap();
    let lock = libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 1,
        l_pid: 0,
    };
    // SAFETY: fcntl with a valid struct; fork in a test process only runs async-signal-safe
    // calls in the child before _exit.
    unsafe {
        assert_eq!(libc::fcntl(rw.as_raw_fd(), libc::F_SETLK, &lock), 0);
        let pid = libc::fork();
        if pid == 0 {
            let rc = libc::fcntl(rw.as_raw_fd(), libc::F_SETLK, &lock);
            libc::_exit(if rc == -1 { 7 } else { 0 });
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        assert_eq!(
            libc::WEXITSTATUS(status),
            7,
            "child got a conflicting POSIX lock"
        );
    }
    drop((a, b, rw));
    m.unmount();
}

// ------------------------------------------------------------------------------------------------
// The FUSE thread's polling (--spin-us)

/// CPU seconds (user + system) the process has used so far.
fn cpu_secs(pid: i32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("daemon stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here (0-based 11, 12).
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// One small-file burst: create, write, chmod, stat and read back, as tar or cp do.
fn small_file_burst(dir: &Path, n: usize) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let p = dir.join(format!("f{i}"));
        fs::write(&p, format!("file {i}")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), format!("file {i}"));
    }
}

#[test]
fn the_fuse_thread_stops_polling_when_requests_stop() {
    require_fuse!("the_fuse_thread_stops_polling_when_requests_stop");
    let work = tempdir();
    let w = work.path();
    let vol = Volume::local(&w.join("store"), Key::Passphrase(PASS.into()));
    vol.init();
    for spin in ["10000", "0"] {
        let (mnt, cache) = (w.join(format!("mnt{spin}")), w.join(format!("cache{spin}")));
        let m = vol.mount_with(&mnt, &cache, &["--spin-us", spin]);
        let pid = daemon_pid(&mnt);
        small_file_burst(&mnt.join(format!("d{spin}")), 300);
        // Let the commit of the burst and any upload finish, then watch an idle mount. A
        // reader that kept polling would burn one CPU second per second here.
        std::thread::sleep(Duration::from_millis(1500));
        let before = cpu_secs(pid);
        std::thread::sleep(Duration::from_secs(2));
        let used = cpu_secs(pid) - before;
        assert!(
            used < 0.5,
            "--spin-us {spin}: idle daemon used {used:.2} s of CPU in 2 s"
        );
        // Still serving after the idle spell.
        small_file_burst(&mnt.join(format!("e{spin}")), 20);
        m.unmount();
    }
    let m = vol.mount(&w.join("mnt"), &w.join("cache"));
    for spin in ["10000", "0"] {
        let d = w.join("mnt").join(format!("e{spin}"));
        assert_eq!(fs::read_to_string(d.join("f19")).unwrap(), "file 19");
    }
    m.unmount();
}

#[test]
fn an_idle_mount_repacks_small_files_in_the_background() {
    require_fuse!("an_idle_mount_repacks_small_files_in_the_background");
    let _lock = heavy_lock();
    let work = tempdir();
    let w = work.path();
    let store = w.join("store");
    let vol = Volume::local(&store, Key::Passphrase(PASS.into()));
    vol.init();
    let mnt = w.join("mnt");
    let cache = w.join("cache");
    fs::create_dir_all(&mnt).unwrap();
    let mut c = vol.cmd("mount", &[&vol.store, mnt.to_str().unwrap()]);
    c.arg("--cache-dir")
        .arg(&cache)
        .args(["--repack-interval", "1s"])
        .env("CRYPTBUCKET_TEST_REPACK_MIN_BYTES", "1");
    let o = run(&mut c, CMD_TIMEOUT);
    let m = Mount::adopt(&mnt, &cache);
    o.assert_ok();
    // Small files (too big to be stored inline) written in a burst share objects (packs);
    // deleting three in four leaves
    // packs that are mostly deleted files.
    let files: Vec<(PathBuf, Vec<u8>)> = (0..400)
        .map(|i| (mnt.join(format!("f{i:03}")), pattern(6000 + i, i as u8)))
        .collect();
    for (p, data) in &files {
        fs::write(p, data).unwrap();
    }
    run(cb().arg("sync").arg(&mnt), CMD_TIMEOUT).assert_ok();
    for (p, _) in files.iter().skip(1).step_by(4) {
        fs::remove_file(p).unwrap();
    }
    for (p, _) in files.iter().skip(2).step_by(4) {
        fs::remove_file(p).unwrap();
    }
    for (p, _) in files.iter().skip(3).step_by(4) {
        fs::remove_file(p).unwrap();
    }
    let log = m.log_path();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let line = loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text
            .lines()
            .find(|l| l.contains("background repack: rewrote"))
        {
            break l.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no background repack within 30 s of idling:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!line.contains("rewrote 0 packs"), "{line}");
    for (p, data) in files.iter().step_by(4) {
        assert_eq!(
            &fs::read(p).unwrap(),
            data,
            "{} after the repack",
            p.display()
        );
    }
    m.unmount();
    // What the repack committed reads back from the store alone, and nothing is damaged.
    let m = vol.mount(&mnt, &w.join("cache2"));
    for (p, data) in files.iter().step_by(4) {
        assert_eq!(
            &fs::read(p).unwrap(),
            data,
            "{} after a remount",
            p.display()
        );
    }
    m.unmount();
    let o = run(&mut vol.cmd("fsck", &[&vol.store, "--full"]), CMD_TIMEOUT);
    o.assert_ok();
    assert!(o.stdout.contains("0 errors"), "{o}");
}

/// The read-ahead window (`read_ahead_kb` of the mount's bdi), found through mountinfo.
fn read_ahead_kb(mnt: &Path) -> u32 {
    let mnt = fs::canonicalize(mnt).unwrap();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dev = info
        .lines()
        .rev()
        .filter(|l| l.split(' ').nth(4) == mnt.to_str())
        .find_map(|l| l.split(' ').nth(2))
        .expect("the mount in mountinfo");
    let v = fs::read_to_string(format!("/sys/class/bdi/{dev}/read_ahead_kb")).unwrap();
    v.trim().parse().unwrap()
}

#[test]
fn a_mount_widens_the_kernel_read_ahead_window() {
    require_fuse!("a_mount_widens_the_kernel_read_ahead_window");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: setting read_ahead_kb needs root");
        return;
    }
    let work = tempdir();
    let w = work.path();
    let vol = Volume::local(&w.join("store"), Key::Passphrase(PASS.into()));
    vol.init();
    let mnt = w.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let m = vol.mount(&mnt, &w.join("cache"));
    assert_eq!(read_ahead_kb(&mnt), 1024, "the default window");
    // A big file read through 1 MiB requests comes back whole.
    let data = pattern(9 << 20, 7);
    fs::write(mnt.join("big"), &data).unwrap();
    m.unmount();
    for (flag, want) in [("512", 512), ("0", 128)] {
        let mut c = vol.cmd("mount", &[&vol.store, mnt.to_str().unwrap()]);
        let cache = w.join(format!("cache-{flag}"));
        c.arg("--cache-dir")
            .arg(&cache)
            .args(["--read-ahead-kb", flag]);
        let o = run(&mut c, CMD_TIMEOUT);
        let m = Mount::adopt(&mnt, &cache);
        o.assert_ok();
        assert_eq!(read_ahead_kb(&mnt), want, "--read-ahead-kb {flag}");
        assert!(
            fs::read(mnt.join("big")).unwrap() == data,
            "read back with {flag}"
        );
        m.unmount();
    }
}
