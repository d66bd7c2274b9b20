//! Shared helpers for the end-to-end tests: run the real `cryptbucket` binary with timeouts,
//! mount guards that never leave a dead FUSE mount behind, tree builders and comparators, and a
//! small S3 client for the test server.
//!
//! Conventions (see also tests/e2e_mount.rs):
//! - every temporary directory is named `cryptbucket-e2e-*`, so scripts/test.sh can find and
//!   unmount anything a killed test left behind;
//! - every child process runs with stdin closed and stdout/stderr sent to files (not pipes: a
//!   daemonized mount may keep inherited pipes open forever), under a hard timeout;
//! - tests that need FUSE call `require_fuse!()` first and pass with a note when it is missing.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;
/// Default plaintext block size of a volume (DESIGN.md).
pub const BLOCK: usize = 64 * KIB;
/// Default chunk size of a volume (DESIGN.md).
pub const CHUNK: usize = 4 * MIB;

/// Timeout for a command that should be quick (init, a failing mount, unmount).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout for shell tools that move a lot of data through a mount (cp -a, diff -r).
pub const BULK_TIMEOUT: Duration = Duration::from_secs(240);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cryptbucket")
}

/// A temporary directory with the `cryptbucket-e2e-` prefix.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cryptbucket-e2e-")
        .tempdir()
        .expect("create temp dir")
}

// ------------------------------------------------------------------------------------------------
// Skipping and serialization

/// Why FUSE mounts cannot run here, or None when they can.
pub fn fuse_unavailable() -> Option<String> {
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
    {
        return Some("/dev/fuse is missing or not usable".into());
    }
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").is_file()))
        .unwrap_or(false);
    if !found {
        return Some("fusermount3 is not installed (apt-get install fuse3)".into());
    }
    None
}

/// Record that a test was skipped: printed now, and appended to $CRYPTBUCKET_TEST_SKIP_LOG so
/// scripts/test.sh can list it in its summary (test harnesses hide a passing test's output).
pub fn note_skip(test: &str, why: &str) {
    eprintln!("SKIP {test}: {why}");
    if let Some(log) = std::env::var_os("CRYPTBUCKET_TEST_SKIP_LOG") {
        if let Ok(mut f) = fs::OpenOptions::new().append(true).create(true).open(log) {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}

/// Return early (the test passes) when FUSE is not usable here.
#[macro_export]
macro_rules! require_fuse {
    ($name:expr) => {
        if let Some(why) = $crate::common::fuse_unavailable() {
            $crate::common::note_skip($name, &why);
            return;
        }
    };
}

/// Held by the heavy mount tests so that only one of them runs at a time, across threads
/// (cargo test) and across processes (cargo nextest): an flock on a file in the temp dir.
pub struct HeavyLock(fs::File);

pub fn heavy_lock() -> HeavyLock {
    use std::os::fd::AsRawFd;
    let path = std::env::temp_dir().join("cryptbucket-e2e-heavy.lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .expect("open lock file");
    // SAFETY: flock on a valid, owned file descriptor.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {}", path.display());
    HeavyLock(f) // closing the file releases the lock
}

// ------------------------------------------------------------------------------------------------
// Running commands

/// What a finished child process left behind.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub what: String,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
    /// Panic with the full context unless the command succeeded.
    pub fn assert_ok(&self) -> &Self {
        assert!(self.ok(), "command failed: {self}");
        self.assert_no_panic();
        self
    }
    /// Panic unless the command failed cleanly: non-zero exit (not a signal), a message on
    /// stderr, no panic.
    pub fn assert_clean_failure(&self) -> &Self {
        assert!(!self.ok(), "command unexpectedly succeeded: {self}");
        assert!(
            self.status.code().is_some(),
            "command died from a signal: {self}"
        );
        assert!(
            self.stderr.to_lowercase().contains("error"),
            "no error message on stderr: {self}"
        );
        self.assert_no_panic();
        self
    }
    pub fn assert_no_panic(&self) -> &Self {
        assert!(
            !self.stderr.contains("panicked") && !self.stdout.contains("panicked"),
            "the binary panicked: {self}"
        );
        assert_ne!(
            self.status.code(),
            Some(101),
            "exit code 101 (panic): {self}"
        );
        self
    }
    /// Panic unless stderr mentions one of `words` (case-insensitive).
    pub fn assert_stderr_mentions(&self, words: &[&str]) -> &Self {
        let e = self.stderr.to_lowercase();
        assert!(
            words.iter().any(|w| e.contains(&w.to_lowercase())),
            "stderr should mention one of {words:?}: {self}"
        );
        self
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` -> {} after {:.1?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Run `cmd` to completion, killing it and panicking if it takes longer than `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Outcome {
    let what = format!("{cmd:?}");
    let out = tempfile::tempfile().expect("temp file");
    let err = tempfile::tempfile().expect("temp file");
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(err.try_clone().expect("dup"));
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let read = |f: &fs::File| read_back(f);
            panic!(
                "command hung for more than {timeout:?} and was killed: {what}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                read(&out),
                read(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        status,
        stdout: read_back(&out),
        stderr: read_back(&err),
        elapsed: start.elapsed(),
        what,
    }
}

fn read_back(f: &fs::File) -> String {
    use std::io::Seek;
    let mut f = f.try_clone().expect("dup");
    let mut s = Vec::new();
    let _ = f.seek(std::io::SeekFrom::Start(0));
    let _ = f.read_to_end(&mut s);
    String::from_utf8_lossy(&s).into_owned()
}

/// Run a shell tool (cp, diff, tar, git, ...) and require success.
pub fn tool(args: &[&str], timeout: Duration) -> Outcome {
    let o = run(Command::new(args[0]).args(&args[1..]), timeout);
    assert!(o.ok(), "tool failed: {o}");
    o
}

pub fn have_tool(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A `cryptbucket` command with a test-friendly environment: fast KDF, test S3 credentials
/// unless the caller's environment has some, and no inherited passphrase.
pub fn cb() -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(bin());
    c.env("CRYPTBUCKET_TEST_FAST_KDF", "1")
        .env_remove("CRYPTBUCKET_PASSPHRASE");
    // A new session has no controlling terminal, so a passphrase prompt (which opens /dev/tty)
    // fails instead of waiting for a developer's keyboard.
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ] {
        if std::env::var_os(k).is_none() {
            c.env(k, v);
        }
    }
    c
}

// ------------------------------------------------------------------------------------------------
// Volumes and mounts

/// How a volume is unlocked.
#[derive(Clone, Debug)]
pub enum Key {
    /// No key option and no passphrase variable (stdin is closed, so nothing to prompt on).
    Nothing,
    /// Given through the CRYPTBUCKET_PASSPHRASE environment variable.
    Passphrase(String),
    /// `--keyfile FILE`.
    Keyfile(PathBuf),
}

/// A volume location plus the key that opens it.
#[derive(Clone, Debug)]
pub struct Volume {
    /// Local path or s3://bucket[/prefix].
    pub store: String,
    pub endpoint: Option<String>,
    pub key: Key,
}

impl Volume {
    pub fn local(store: &Path, key: Key) -> Self {
        Volume {
            store: store.to_str().expect("utf-8 path").to_owned(),
            endpoint: None,
            key,
        }
    }

    pub fn s3(store: String, endpoint: &str, key: Key) -> Self {
        Volume {
            store,
            endpoint: Some(endpoint.to_owned()),
            key,
        }
    }

    /// The same volume opened with another key.
    pub fn with_key(&self, key: Key) -> Self {
        Volume {
            key,
            ..self.clone()
        }
    }

    /// `cryptbucket SUBCMD [positional...] STORE-options key-options`.
    pub fn cmd(&self, sub: &str, positional: &[&str]) -> Command {
        let mut c = cb();
        c.arg(sub).args(positional);
        if let Some(ep) = &self.endpoint {
            c.args(["--endpoint", ep, "--region", "us-east-1"]);
        }
        match &self.key {
            Key::Nothing => {}
            Key::Passphrase(p) => {
                c.env("CRYPTBUCKET_PASSPHRASE", p);
            }
            Key::Keyfile(f) => {
                c.arg("--keyfile").arg(f);
            }
        }
        c
    }

    pub fn try_init(&self) -> Outcome {
        run(&mut self.cmd("init", &[&self.store]), CMD_TIMEOUT)
    }

    pub fn init(&self) {
        self.try_init().assert_ok();
    }

    pub fn try_mount(&self, mnt: &Path, cache: &Path) -> Outcome {
        self.try_mount_with(mnt, cache, &[])
    }

    /// `try_mount` with extra mount options (e.g. `--allow-other`).
    pub fn try_mount_with(&self, mnt: &Path, cache: &Path, extra: &[&str]) -> Outcome {
        let mut c = self.cmd("mount", &[&self.store, mnt.to_str().expect("utf-8 path")]);
        c.arg("--cache-dir").arg(cache).args(extra);
        run(&mut c, CMD_TIMEOUT)
    }

    /// Mount in the background (the command returns once the mount is ready).
    pub fn mount(&self, mnt: &Path, cache: &Path) -> Mount {
        self.mount_with(mnt, cache, &[])
    }

    /// `mount` with extra mount options (e.g. `--allow-other`).
    pub fn mount_with(&self, mnt: &Path, cache: &Path, extra: &[&str]) -> Mount {
        fs::create_dir_all(mnt).expect("create mountpoint");
        let o = self.try_mount_with(mnt, cache, extra);
        // Guard first, so a half-made mount is cleaned up even when the asserts below fail.
        let guard = Mount {
            path: mnt.to_path_buf(),
            cache: cache.to_path_buf(),
            live: true,
        };
        o.assert_ok();
        assert!(
            is_mounted(mnt),
            "`mount` returned success but {} is not in /proc/self/mountinfo",
            mnt.display()
        );
        guard
    }
}

/// A live mount; dropping it without `unmount()` detaches it with `fusermount3 -uz`.
pub struct Mount {
    pub path: PathBuf,
    pub cache: PathBuf,
    live: bool,
}

impl Mount {
    /// Guard a mount made some other way (mount(8), a config file), so a failing test still
    /// detaches it.
    pub fn adopt(path: &Path, cache: &Path) -> Mount {
        Mount {
            path: path.to_path_buf(),
            cache: cache.to_path_buf(),
            live: true,
        }
    }

    /// The mount was taken down some other way (umount(8)).
    pub fn forget(mut self) {
        self.live = false;
    }

    /// The daemon's log file (background mode writes `<cache-dir>/cryptbucket.log`).
    pub fn log_path(&self) -> PathBuf {
        self.cache.join("cryptbucket.log")
    }

    /// `cryptbucket unmount MNT` must flush, unmount and return after the daemon exits.
    pub fn unmount(mut self) {
        let o = run(cb().arg("unmount").arg(&self.path), CMD_TIMEOUT);
        if !o.ok() {
            let log = fs::read_to_string(self.log_path()).unwrap_or_default();
            panic!("unmount failed: {o}\n--- daemon log ---\n{log}");
        }
        o.assert_no_panic();
        assert!(
            !is_mounted(&self.path),
            "{} still mounted after `cryptbucket unmount`",
            self.path.display()
        );
        self.live = false;
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.live && is_mounted(&self.path) {
            eprintln!("cleanup: fusermount3 -uz {}", self.path.display());
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.path)
                .stdin(Stdio::null())
                .status();
        }
    }
}

/// The pid of the daemon serving `mnt` (from `cryptbucket status --json`).
pub fn daemon_pid(mnt: &Path) -> i32 {
    let o = run(cb().arg("status").arg(mnt).arg("--json"), CMD_TIMEOUT);
    o.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("status json");
    v["pid"].as_i64().expect("pid") as i32
}

/// Is `path` a mount point right now (per /proc/self/mountinfo)?
pub fn is_mounted(path: &Path) -> bool {
    let want = fs::canonicalize(path.parent().unwrap_or(Path::new("/")))
        .unwrap_or_else(|_| path.parent().unwrap_or(Path::new("/")).to_path_buf())
        .join(path.file_name().unwrap_or_default());
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .map(|m| unescape_mountinfo(m) == want.to_string_lossy())
            .unwrap_or(false)
    })
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ------------------------------------------------------------------------------------------------
// Data and trees

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    for part in v.chunks_mut(MIB) {
        getrandom::getrandom(part).expect("getrandom");
    }
    v
}

pub fn write_file(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).expect("mkdir -p");
    }
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// What one entry of a tree is, for comparisons.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    File {
        sha256: String,
        size: u64,
        mode: u32,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: PathBuf,
    },
}

/// Every entry under `root` (relative path -> kind, content hash or link target, mode),
/// without following symlinks.
pub fn snapshot_tree(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
    let rd = fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
    for e in rd {
        let e = e.expect("dir entry");
        let p = e.path();
        let rel = p.strip_prefix(root).expect("prefix").to_path_buf();
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        let mode = md.permissions().mode() & 0o7777;
        if md.file_type().is_symlink() {
            let target = fs::read_link(&p).expect("readlink");
            out.insert(rel, Entry::Symlink { target });
        } else if md.is_dir() {
            out.insert(rel, Entry::Dir { mode });
            walk(root, &p, out);
        } else {
            out.insert(
                rel,
                Entry::File {
                    sha256: sha256_file(&p),
                    size: md.len(),
                    mode,
                },
            );
        }
    }
}

pub fn sha256_file(p: &Path) -> String {
    let mut f = fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Assert that two trees hold the same entries, contents, modes and symlink targets:
/// `diff -r` (contents, symlinks compared as links) plus our own walk.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let o = run(
        Command::new("diff")
            .args(["-r", "--no-dereference"])
            .arg(expected)
            .arg(actual),
        BULK_TIMEOUT,
    );
    assert!(o.ok(), "diff -r found differences: {o}");
    let a = snapshot_tree(expected);
    let b = snapshot_tree(actual);
    for (path, e) in &a {
        match b.get(path) {
            None => panic!("{} missing from {}", path.display(), actual.display()),
            Some(got) => assert_eq!(e, got, "entry {} differs", path.display()),
        }
    }
    for path in b.keys() {
        assert!(
            a.contains_key(path),
            "unexpected extra entry {}",
            path.display()
        );
    }
}

/// Modification times (whole seconds) of the regular files under `root`.
pub fn file_mtimes(root: &Path) -> BTreeMap<PathBuf, i64> {
    snapshot_tree(root)
        .into_iter()
        .filter(|(_, e)| matches!(e, Entry::File { .. }))
        .map(|(p, _)| {
            let m = fs::symlink_metadata(root.join(&p)).expect("lstat").mtime();
            (p, m)
        })
        .collect()
}

/// (relative path -> sha256) of every file under a local store directory, to prove that a
/// refused command wrote nothing.
pub fn store_digest(root: &Path) -> BTreeMap<PathBuf, String> {
    snapshot_tree(root)
        .into_iter()
        .filter_map(|(p, e)| match e {
            Entry::File { sha256, .. } => Some((p, sha256)),
            Entry::Symlink { target } => Some((p, format!("-> {}", target.display()))),
            Entry::Dir { .. } => None,
        })
        .collect()
}

/// Every regular file under `root` (absolute paths), sorted.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = snapshot_tree(root)
        .into_iter()
        .filter(|(_, e)| matches!(e, Entry::File { .. }))
        .map(|(p, _)| root.join(p))
        .collect();
    v.sort();
    v
}

/// Copy a whole local store (to tamper with a copy and keep the original pristine).
pub fn copy_store(from: &Path, to: &Path) {
    tool(
        &[
            "cp",
            "-a",
            from.to_str().expect("utf-8"),
            to.to_str().expect("utf-8"),
        ],
        CMD_TIMEOUT,
    );
}

// ------------------------------------------------------------------------------------------------
// S3 test server

/// The S3 test server's endpoint, when scripts/test.sh (or the caller) started one.
pub fn s3_endpoint() -> Option<String> {
    std::env::var("CRYPTBUCKET_TEST_S3_ENDPOINT")
        .ok()
        .filter(|s| !s.is_empty())
}

/// A bucket name no other test run uses.
pub fn unique_bucket(tag: &str) -> String {
    let r = random_bytes(6);
    format!("cb-e2e-{tag}-{}", hex::encode(r))
}

fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let creds = aws_sdk_s3::config::Credentials::new(
        std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "test".into()),
        std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "test".into()),
        None,
        None,
        "cryptbucket-e2e",
    );
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

pub fn s3_create_bucket(endpoint: &str, bucket: &str) {
    let client = s3_client(endpoint);
    block_on(async {
        tokio::time::timeout(
            Duration::from_secs(30),
            client.create_bucket().bucket(bucket).send(),
        )
        .await
        .expect("create_bucket timed out")
        .unwrap_or_else(|e| panic!("create bucket {bucket}: {e:?}"));
    });
}

/// (key -> sha256) of every object in the bucket, to prove that a refused command wrote nothing.
pub fn s3_digest(endpoint: &str, bucket: &str) -> BTreeMap<String, String> {
    let client = s3_client(endpoint);
    block_on(async {
        let mut out = BTreeMap::new();
        let mut pages = client
            .list_objects_v2()
            .bucket(bucket)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.unwrap_or_else(|e| panic!("list {bucket}: {e:?}"));
            for o in page.contents() {
                let key = o.key().unwrap_or_default().to_owned();
                let body = client
                    .get_object()
                    .bucket(bucket)
                    .key(&key)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("get {key}: {e:?}"))
                    .body
                    .collect()
                    .await
                    .expect("read body")
                    .into_bytes();
                out.insert(key, hex::encode(Sha256::digest(&body)));
            }
        }
        out
    })
}

/// Volume parameters for library-level tests: 64 KiB chunks of 4 KiB blocks, so a few
/// hundred KB of data spans many chunks (and chunks up to 16 KiB are packed).
pub fn small_chunk_params() -> cryptbucket::crypto::VolumeParams {
    cryptbucket::crypto::VolumeParams {
        chunk_size: 64 * 1024,
        block_size: 4096,
        ..Default::default()
    }
}

/// A cheap Argon2id for tests that create volumes.
pub fn test_kdf() -> cryptbucket::crypto::Argon2Params {
    cryptbucket::crypto::Argon2Params {
        m_kib: 8192,
        t: 1,
        p: 1,
    }
}

/// The whole contents of a file, through the vfs.
pub fn vfs_read_all(vfs: &cryptbucket::vfs::Vfs, ino: u64) -> Vec<u8> {
    let size = vfs.getattr(ino).expect("getattr").size;
    let fh = vfs.open(ino).expect("open");
    let out = vfs.read(fh, 0, size as u32).expect("read");
    vfs.release(fh).expect("release");
    out
}

/// Run `cryptbucket SUB TARGET EXTRA...` with the passphrase in the environment.
pub fn cb_with_passphrase(sub: &str, target: &Path, pass: &str, extra: &[&str]) -> Outcome {
    let mut c = cb();
    c.arg(sub)
        .arg(target)
        .args(extra)
        .env("CRYPTBUCKET_PASSPHRASE", pass);
    run(&mut c, CMD_TIMEOUT)
}
