//! End-to-end tests of everyday use: a volume named in a config file with a passphrase
//! command, `status --json` on a live mount (while data waits and after it is committed),
//! config errors and exit codes, `mount -t fuse.cryptbucket` and an fstab line, completions
//! and the man page.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

const PASS: &str = "everyday passphrase";

fn status_json(mnt: &Path) -> serde_json::Value {
    let o = run(cb().args(["status", "--json"]).arg(mnt), CMD_TIMEOUT);
    o.assert_ok();
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("status --json: {e}: {o}"))
}

/// Poll `status --json` until `ok` holds (at most 60 s).
fn wait_status(
    mnt: &Path,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        let st = status_json(mnt);
        if ok(&st) {
            return st;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "timed out waiting for {what}: {st}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Drop a file's pages from the kernel's page cache, then read it all (so the reads reach
/// the daemon).
const DROP_AND_READ: &str = "import os,sys\n\
fd=os.open(sys.argv[1], os.O_RDONLY)\n\
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)\n\
while os.read(fd, 1<<20): pass\n";

fn write_config(path: &Path, text: &str) {
    fs::write(path, text).expect("write config");
}

#[test]
fn config_volume_with_passphrase_command_and_status() {
    require_fuse!("config_volume_with_passphrase_command_and_status");
    let _lock = heavy_lock();
    let work = tempdir();
    let w = work.path();
    let cfg = w.join("config.toml");
    let mnt = w.join("mnt");
    fs::create_dir(&mnt).unwrap();
    fs::write(w.join("pass.txt"), format!("{PASS}\n")).unwrap();
    // Relative paths are relative to the config file's directory.
    write_config(
        &cfg,
        &format!(
            "[volumes.vault]\nstore = \"store\"\ncache_dir = \"cache\"\nmountpoint = \"mnt\"\n\
             passphrase_command = \"cat {}\"\n\
             # no timed commit during the test: it checks uncommitted changes\n\
             commit_interval = 3600\ncache_size = \"64M\"\n",
            w.join("pass.txt").display()
        ),
    );
    let cbc = || {
        let mut c = cb();
        c.env("CRYPTBUCKET_CONFIG", &cfg).current_dir(w);
        c
    };
    let o = run(cbc().args(["init", "vault"]), CMD_TIMEOUT);
    o.assert_ok();
    assert!(
        w.join("store/cryptbucket.json").is_file(),
        "init used the config's store: {o}"
    );

    // The passphrase really is checked: a command printing another one is refused.
    let wrong = w.join("wrong.toml");
    write_config(
        &wrong,
        &format!(
            "[volumes.vault]\nstore = \"{}\"\ncache_dir = \"{}\"\npassphrase_command = \"echo nope\"\n",
            w.join("store").display(),
            w.join("cache-wrong").display()
        ),
    );
    let o = run(
        cb().arg("--config")
            .arg(&wrong)
            .args(["mount", "vault"])
            .arg(&mnt),
        CMD_TIMEOUT,
    );
    o.assert_clean_failure()
        .assert_stderr_mentions(&["wrong passphrase"]);
    assert_eq!(o.status.code(), Some(1), "{o}");

    // A failing passphrase command is a clear error.
    write_config(
        &wrong,
        &format!(
            "[volumes.vault]\nstore = \"{}\"\npassphrase_command = \"exit 7\"\n",
            w.join("store").display()
        ),
    );
    let o = run(
        cb().arg("--config")
            .arg(&wrong)
            .args(["mount", "vault"])
            .arg(&mnt),
        CMD_TIMEOUT,
    );
    o.assert_clean_failure()
        .assert_stderr_mentions(&["exit code 7"]);

    // Mount by name: mountpoint and cache dir from the file. Uploads are throttled (about
    // 5 s for a 2 MiB chunk) so the test can watch them pending.
    let o = run(
        cbc()
            .args(["mount", "vault"])
            .env("CRYPTBUCKET_TEST_THROTTLE_BPS", "400000"),
        CMD_TIMEOUT,
    );
    let m = Mount::adopt(&mnt, &w.join("cache"));
    o.assert_ok();
    assert!(is_mounted(&mnt), "{o}");

    // Data waiting: a file held open by another process with 300 KiB written. (Not by this
    // process: every child it spawns would close an inherited copy of the descriptor, and a
    // FUSE close flushes.)
    let file = mnt.join("pending.bin");
    let mut writer = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import os,sys,time\n\
             fd=os.open(sys.argv[1], os.O_WRONLY|os.O_CREAT, 0o644)\n\
             os.write(fd, os.urandom(300*1024))\n\
             print('written', flush=True)\n\
             time.sleep(120)",
        )
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(writer.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "written");
    let st = status_json(&mnt);
    let _ = writer.kill();
    let _ = writer.wait();
    assert_eq!(
        st["mountpoint"],
        mnt.canonicalize().unwrap().to_str().unwrap()
    );
    assert_eq!(st["open_files"], 1, "{st}");
    assert!(
        st["dirty_bytes"].as_u64().unwrap() >= 300 * KIB as u64,
        "{st}"
    );
    assert_eq!(st["uncommitted_changes"], true, "{st}");
    assert!(st["last_commit"].is_null(), "{st}");
    assert_eq!(st["volume_id"].as_str().unwrap().len(), 32, "{st}");
    let before = st["backend"]["bytes_uploaded"].as_u64().unwrap();

    // After close and fsync everything is in the store.
    // The kernel sends RELEASE for a killed process (and for our own close) asynchronously.
    let wait_closed = || {
        let start = std::time::Instant::now();
        loop {
            let st = status_json(&mnt);
            if st["open_files"] == 0 || start.elapsed() > std::time::Duration::from_secs(10) {
                return st;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    wait_closed();
    fs::File::open(&file).unwrap().sync_all().unwrap();
    let st = wait_closed();
    assert_eq!(st["open_files"], 0, "{st}");
    assert_eq!(st["dirty_bytes"], 0, "{st}");
    assert_eq!(st["uncommitted_changes"], false, "{st}");
    assert!(st["last_commit"].as_f64().is_some(), "{st}");
    assert!(
        st["backend"]["bytes_uploaded"].as_u64().unwrap() >= before + 300 * KIB as u64,
        "{st}"
    );
    assert_eq!(st["backend"]["errors"], 0, "{st}");
    assert_eq!(fs::metadata(&file).unwrap().len(), 300 * KIB as u64);

    // The writer lease: held by this daemon, renewed in the store, not yet run out.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let lease = &st["lease"];
    assert_eq!(lease["state"], "held", "{st}");
    assert_eq!(lease["pid"], st["pid"], "{st}");
    assert!(
        lease["host"].as_str().is_some_and(|h| !h.is_empty()),
        "{st}"
    );
    assert!(
        lease["holder"].as_str().is_some_and(|h| !h.is_empty()),
        "{st}"
    );
    assert!(lease["last_renewed"].as_u64().unwrap() <= now, "{st}");
    assert!(lease["expires"].as_u64().unwrap() > now, "{st}");

    // Uploads pending: a 2 MiB file closed while uploads are throttled shows as waiting, with
    // its chunk queued or in flight, and all of it clears once the upload is done.
    let big = mnt.join("throttled.bin");
    let data = random_bytes(2 * MIB);
    fs::write(&big, &data).unwrap();
    let num = |st: &serde_json::Value, p: &str| {
        st.pointer(p)
            .and_then(|v| v.as_u64())
            .unwrap_or_else(|| panic!("{p} missing: {st}"))
    };
    let pending = wait_status(&mnt, "an upload in flight", |st| {
        num(st, "/files_waiting") > 0
            && num(st, "/uploads_queued") + num(st, "/backend/uploads_in_flight") > 0
    });
    assert!(num(&pending, "/dirty_bytes") > 0, "{pending}");
    let done = wait_status(&mnt, "uploads to finish", |st| {
        num(st, "/files_waiting") == 0
            && num(st, "/uploads_queued") == 0
            && num(st, "/backend/uploads_in_flight") == 0
    });
    assert_eq!(done["dirty_bytes"], 0, "{done}");
    assert!(
        num(&done, "/backend/bytes_uploaded")
            >= num(&pending, "/backend/bytes_uploaded") + 2 * MIB as u64,
        "the chunk was uploaded: {pending} then {done}"
    );

    // The disk cache: its bound, and reads counted as misses (from the store) and hits.
    // Dropping the file's pages from the kernel's cache makes each read reach the daemon.
    assert_eq!(
        done["cache"]["limit"],
        64u64 << 20,
        "the file's cache_size: {done}"
    );
    let misses_before = num(&done, "/cache/misses");
    let hits_before = num(&done, "/cache/hits");
    for _ in 0..2 {
        let o = run(
            Command::new("python3")
                .arg("-c")
                .arg(DROP_AND_READ)
                .arg(&big),
            CMD_TIMEOUT,
        );
        o.assert_ok();
    }
    let st = status_json(&mnt);
    assert!(
        num(&st, "/cache/misses") > misses_before,
        "first read from the store: {st}"
    );
    assert!(
        num(&st, "/cache/hits") > hits_before,
        "second read from the cache: {st}"
    );
    let rate = st["cache"]["hit_rate"].as_f64().expect("hit_rate");
    assert!(rate > 0.0 && rate < 1.0, "{st}");
    assert!(
        num(&st, "/cache/bytes") >= 2 * MIB as u64,
        "the chunk is in the disk cache: {st}"
    );
    assert!(num(&st, "/cache/bytes") <= num(&st, "/cache/limit"), "{st}");
    assert!(fs::read(&big).unwrap() == data, "content read back");

    // Without a mountpoint: every live mount, as an array; human output names the mount.
    let o = run(cb().args(["status", "--json"]), CMD_TIMEOUT);
    o.assert_ok();
    let all: serde_json::Value = serde_json::from_str(&o.stdout).expect("json array");
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|s| s["pid"] == st["pid"]),
        "{o}"
    );
    let o = run(cb().arg("status").arg(&mnt), CMD_TIMEOUT);
    o.assert_ok();
    assert!(
        o.stdout.contains("waiting to upload") && o.stdout.contains("last commit"),
        "{o}"
    );
    assert!(o.stdout.contains("lease:    held by this mount"), "{o}");
    assert!(
        o.stdout.contains("cache:    ") && o.stdout.contains("of 64.0 MiB on disk, hit rate "),
        "{o}"
    );

    m.unmount();
    let o = run(cb().arg("status").arg(&mnt), CMD_TIMEOUT);
    o.assert_clean_failure();
    assert_eq!(o.status.code(), Some(1), "{o}");

    // The maintenance commands take the volume's name too.
    let o = run(cbc().args(["fsck", "vault"]), CMD_TIMEOUT);
    assert!(o.ok(), "fsck by volume name: {o}");
    let o = run(cbc().args(["gc", "vault", "--dry-run"]), CMD_TIMEOUT);
    assert!(o.ok(), "gc by volume name: {o}");
}

#[test]
fn config_errors_are_usage_errors_naming_key_and_line() {
    let work = tempdir();
    let cfg = work.path().join("c.toml");
    write_config(&cfg, "[volumes.a]\nstore = \"/srv/a\"\nkeyfiel = \"/k\"\n");
    let o = run(
        cb().arg("--config").arg(&cfg).args(["mount", "a", "/tmp"]),
        CMD_TIMEOUT,
    );
    o.assert_clean_failure()
        .assert_stderr_mentions(&["keyfiel"]);
    assert!(o.stderr.contains("line 3"), "{o}");
    assert_eq!(o.status.code(), Some(2), "{o}");

    // A value that parses but makes no sense is told the same way.
    write_config(
        &cfg,
        "[volumes.a]\nstore = \"/srv/a\"\n# every 0 s?\ncommit_interval = 0\n",
    );
    let o = run(
        cb().arg("--config").arg(&cfg).args(["mount", "a", "/tmp"]),
        CMD_TIMEOUT,
    );
    o.assert_clean_failure().assert_stderr_mentions(&[
        "line 4",
        "key `commit_interval`",
        "1 to 3600",
    ]);
    assert_eq!(o.status.code(), Some(2), "{o}");

    write_config(&cfg, "[volumes.a]\nstore = \"/srv/a\"\n");
    let o = run(
        cb().arg("--config")
            .arg(&cfg)
            .current_dir(work.path())
            .args(["init", "nosuch"]),
        CMD_TIMEOUT,
    );
    o.assert_clean_failure()
        .assert_stderr_mentions(&["no volume named `nosuch`"]);
    assert_eq!(o.status.code(), Some(2), "{o}");

    let o = run(
        cb().arg("--config")
            .arg(work.path().join("missing.toml"))
            .args(["mount", "a", "/tmp"]),
        CMD_TIMEOUT,
    );
    assert_eq!(o.status.code(), Some(2), "{o}");
    o.assert_stderr_mentions(&["cannot read config file"]);

    // Usage errors from clap are 2 as well.
    let o = run(cb().args(["mount", "--no-such-flag"]), CMD_TIMEOUT);
    assert_eq!(o.status.code(), Some(2), "{o}");
}

/// Runs inside a private mount namespace, where a bind mount puts our binary at
/// /usr/local/bin/cryptbucket: mount(8) resets PATH to a fixed list before it runs
/// /sbin/mount.fuse (mount.fuse3), which runs `cryptbucket SOURCE MNT -o OPTS` through sh.
const MOUNT_SCRIPT: &str = r#"
set -eu
trap 'fusermount3 -uz "$MNT" 2>/dev/null || true' EXIT
mount --bind "$BINDIR" /usr/local/bin
echo "== mount -t fuse.cryptbucket"
mount -t fuse.cryptbucket "$STORE" "$MNT" -o "passphrase_command=cat $W/pass,cache_size=64M,cache_dir=$W/cache1,_netdev,nofail,x-systemd.automount,noatime"
awk -v m="$MNT" '$2 == m { print $3 }' /proc/self/mounts > "$W/fstype"
head -c 70000 /dev/urandom > "$W/data"
cp "$W/data" "$MNT/f"
cryptbucket status --json "$MNT" > "$W/status.json"
pid=$(sed -n 's/^  "pid": \([0-9]*\),*$/\1/p' "$W/status.json")
echo "== umount (daemon $pid uploads, then exits)"
umount "$MNT"
while kill -0 "$pid" 2>/dev/null && ! grep -q ') Z ' "/proc/$pid/stat" 2>/dev/null; do sleep 0.05; done
echo "== mount -T fstab"
# A space in an fstab field is written \040.
printf '%s %s fuse.cryptbucket passphrase_command=cat\\040%s,idle_timeout=2s,cache_dir=%s,_netdev,nofail,x-systemd.automount 0 0\n' \
    "$STORE" "$MNT" "$W/pass" "$W/cache2" > "$W/fstab"
mount -T "$W/fstab" "$MNT"
cmp "$W/data" "$MNT/f"
echo "== idle_timeout=2s unmounts it"
i=0
while awk -v m="$MNT" '$2 == m { found = 1 } END { exit !found }' /proc/self/mounts; do
    i=$((i + 1)); [ "$i" -lt 300 ] || { echo "idle_timeout=2s did not unmount" >&2; exit 1; }
    sleep 0.1
done
echo "== bad option"
if mount -t fuse.cryptbucket "$STORE" "$MNT" -o bogus_option 2> "$W/bad.err"; then
    echo "bogus_option was accepted" >&2; exit 1
fi
cat "$W/bad.err" >&2
echo DONE
"#;

#[test]
fn mount_t_fuse_cryptbucket_and_fstab_line() {
    require_fuse!("mount_t_fuse_cryptbucket_and_fstab_line");
    // SAFETY: getuid cannot fail.
    let root = unsafe { libc::getuid() } == 0;
    if !root || !have_tool("unshare") || !Path::new("/sbin/mount.fuse3").exists() {
        note_skip(
            "mount_t_fuse_cryptbucket_and_fstab_line",
            "needs root, unshare(1) and mount.fuse3 (fuse3)",
        );
        return;
    }
    let _lock = heavy_lock();
    let work = tempdir();
    let w = work.path();
    let store = w.join("store");
    Volume::local(&store, Key::Passphrase(PASS.into())).init();
    fs::write(w.join("pass"), format!("{PASS}\n")).unwrap();
    let bindir = w.join("bin");
    fs::create_dir(&bindir).unwrap();
    std::os::unix::fs::symlink(bin(), bindir.join("cryptbucket")).unwrap();
    let mnt = w.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let o = run(
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                MOUNT_SCRIPT,
            ])
            .env("W", w)
            .env("STORE", &store)
            .env("MNT", &mnt)
            .env("BINDIR", &bindir),
        CMD_TIMEOUT,
    );
    assert!(o.ok() && o.stdout.contains("DONE"), "{o}");
    // Mounted directly by root, fuser reports the kernel type `fuse` (through fusermount3 it
    // is `fuse.cryptbucket`); either way it is our FUSE mount and it was found via the helper.
    let fstype = fs::read_to_string(w.join("fstype")).unwrap();
    assert!(fstype.trim().starts_with("fuse"), "{fstype:?} {o}");
    assert!(o.stderr.contains("bogus_option"), "{o}");
    // cache_size= reached the daemon.
    let st: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(w.join("status.json")).unwrap()).unwrap();
    assert_eq!(st["cache"]["limit"], 64u64 << 20, "{st}");
    assert!(o.stdout.contains("== idle_timeout=2s unmounts it"), "{o}");
    assert!(!is_mounted(&mnt));
}

#[test]
fn completions_and_man_page() {
    let o = run(cb().args(["completions", "bash"]), CMD_TIMEOUT);
    o.assert_ok();
    assert!(
        o.stdout.contains("cryptbucket") && o.stdout.contains("--passphrase-command"),
        "{o}"
    );
    let o = run(cb().args(["completions", "zsh"]), CMD_TIMEOUT);
    o.assert_ok();
    assert!(o.stdout.contains("#compdef cryptbucket"), "{o}");
    let o = run(cb().arg("manpage"), CMD_TIMEOUT);
    o.assert_ok();
    assert!(
        o.stdout.starts_with(".ie") || o.stdout.contains(".TH cryptbucket"),
        "{o}"
    );
    for word in [
        "CRYPTBUCKET MOUNT",
        "CRYPTBUCKET STATUS",
        "passphrase\\-command",
    ] {
        assert!(o.stdout.contains(word), "man page lacks {word}");
    }
}

/// A background mount says where it logs; `-q` silences that; the log starts with the lines
/// logged before the mount was ready; RUST_LOG=debug adds debug lines to it.
#[test]
fn background_mount_logs_to_its_file_and_says_where() {
    require_fuse!("background_mount_logs_to_its_file_and_says_where");
    let _lock = heavy_lock();
    let work = tempdir();
    let w = work.path();
    let vol = Volume::local(&w.join("store"), Key::Keyfile(w.join("vol.key")));
    vol.init();
    let mnt = w.join("mnt");
    let cache = w.join("cache");
    fs::create_dir(&mnt).unwrap();
    let mount = |extra: &[&str], rust_log: Option<&str>| {
        let mut c = vol.cmd("mount", &[&vol.store, mnt.to_str().unwrap()]);
        c.arg("--cache-dir").arg(&cache).args(extra);
        match rust_log {
            Some(v) => c.env("RUST_LOG", v),
            None => c.env_remove("RUST_LOG"),
        };
        let o = run(&mut c, CMD_TIMEOUT);
        let m = Mount::adopt(&mnt, &cache);
        o.assert_ok();
        assert!(is_mounted(&mnt), "{o}");
        (o, m)
    };
    let log = cache.join("cryptbucket.log");
    let log_text = |from: usize| fs::read_to_string(&log).expect("log file")[from..].to_string();

    // Default: says where it is mounted and where it logs; info lines only.
    let (o, m) = mount(&[], None);
    let canon = mnt.canonicalize().unwrap();
    assert!(
        o.stdout.contains(&format!(
            "mounted at {} (log: {})",
            canon.display(),
            log.canonicalize().unwrap().display()
        )),
        "{o}"
    );
    fs::write(mnt.join("f"), b"logged").unwrap();
    m.unmount();
    let first = log_text(0);
    // Logged before the mount was ready (while stderr still went to `mount`), kept anyway.
    assert!(first.contains("INFO mounted volume"), "{first}");
    assert!(
        first.contains("all data and metadata are in the store"),
        "{first}"
    );
    assert!(
        !first.contains(" DEBUG "),
        "no debug lines by default: {first}"
    );

    // -q: nothing on stdout or stderr.
    let (o, m) = mount(&["-q"], None);
    assert!(
        o.stdout.trim().is_empty() && o.stderr.trim().is_empty(),
        "{o}"
    );
    m.unmount();

    // RUST_LOG=debug: debug lines in the log (the FUSE requests, among others).
    let before = fs::metadata(&log).unwrap().len() as usize;
    let (_o, m) = mount(&[], Some("debug"));
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"logged");
    m.unmount();
    let debug = log_text(before);
    assert!(debug.contains("INFO mounted volume"), "{debug}");
    assert!(
        debug.lines().filter(|l| l.contains(" DEBUG ")).count() >= 3,
        "{debug}"
    );
}
