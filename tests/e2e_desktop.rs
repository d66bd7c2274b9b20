//! End-to-end tests of desktop use: `--idle-timeout` on a real mount, desktop notifications
//! through a fake `notify-send`, and the terminal side through a pseudo-terminal (expectrl):
//! the passphrase prompt does not echo, `init` asks twice, `unmount` shows a progress bar.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use expectrl::{Eof, Regex, Session, WaitStatus};

const PASS: &str = "desk-passphrase-xyzzy";

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A command for a pseudo-terminal session: not `cb()`, whose setsid would fight the one
/// the PTY spawner does to make the terminal controlling.
fn pty_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env("CRYPTBUCKET_TEST_FAST_KDF", "1")
        .env("CRYPTBUCKET_NO_KEYRING", "1")
        .env_remove("CRYPTBUCKET_PASSPHRASE")
        .env("TERM", "xterm");
    c
}

fn spawn(cmd: Command) -> Session {
    let mut s = Session::spawn(cmd).expect("spawn in a pty");
    s.set_expect_timeout(Some(Duration::from_secs(60)));
    s
}

/// Everything the session prints until it exits, and its exit code.
fn finish(s: &mut Session, seen: &mut Vec<u8>) -> i32 {
    let cap = s.expect(Eof).expect("end of output");
    seen.extend_from_slice(cap.before());
    for m in cap.matches() {
        seen.extend_from_slice(m);
    }
    match s.get_process().wait().expect("wait") {
        WaitStatus::Exited(_, code) => code,
        other => panic!("unexpected end: {other:?}"),
    }
}

fn expect(s: &mut Session, re: &str, seen: &mut Vec<u8>) {
    let cap = match s.expect(Regex(re)) {
        Ok(c) => c,
        Err(e) => {
            let rest = s
                .expect(Eof)
                .map(|c| c.as_bytes().to_vec())
                .unwrap_or_default();
            panic!(
                "expected /{re}/ ({e}); got so far:\n{}{}",
                String::from_utf8_lossy(seen),
                String::from_utf8_lossy(&rest)
            )
        }
    };
    seen.extend_from_slice(cap.before());
    for m in cap.matches() {
        seen.extend_from_slice(m);
    }
}

fn local_volume(w: &Path) -> Volume {
    Volume::local(&w.join("store"), Key::Passphrase(PASS.into()))
}

#[test]
fn init_asks_twice_and_refuses_a_mismatch() {
    let work = tempdir();
    let store = work.path().join("store");
    let store_s = store.to_str().expect("utf-8");

    let mut s = spawn(pty_cmd(&["init", store_s]));
    let mut seen = Vec::new();
    expect(&mut s, "Passphrase: ", &mut seen);
    s.send_line("first-one").expect("type");
    expect(&mut s, r"Passphrase \(again\): ", &mut seen);
    s.send_line("second-one").expect("type");
    let code = finish(&mut s, &mut seen);
    let out = String::from_utf8_lossy(&seen).into_owned();
    assert_ne!(code, 0, "a mismatch must fail: {out}");
    assert!(out.contains("the two passphrases differ"), "{out}");
    assert!(
        !out.contains("first-one") && !out.contains("second-one"),
        "echoed: {out}"
    );
    assert!(
        !store.join("cryptbucket.json").exists(),
        "nothing may be created"
    );

    let mut s = spawn(pty_cmd(&["init", store_s]));
    let mut seen = Vec::new();
    expect(&mut s, "Passphrase: ", &mut seen);
    s.send_line(PASS).expect("type");
    expect(&mut s, r"\(again\): ", &mut seen);
    s.send_line(PASS).expect("type");
    let code = finish(&mut s, &mut seen);
    let out = String::from_utf8_lossy(&seen).into_owned();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("created volume"), "{out}");
    assert!(!out.contains(PASS), "the passphrase was echoed: {out}");
    assert!(store.join("cryptbucket.json").is_file());
}

#[test]
fn passphrase_prompt_does_not_echo() {
    require_fuse!("passphrase_prompt_does_not_echo");
    let _lock = heavy_lock();
    let work = tempdir();
    let w = work.path();
    let vol = local_volume(w);
    vol.init();
    let mnt = w.join("mnt");
    fs::create_dir(&mnt).expect("mkdir");
    let cache = w.join("cache");

    // A wrong passphrase first: refused with a clear message, nothing mounted.
    let args = [
        "mount",
        &vol.store,
        mnt.to_str().expect("utf-8"),
        "--cache-dir",
        cache.to_str().expect("utf-8"),
    ];
    let mut s = spawn(pty_cmd(&args));
    let mut seen = Vec::new();
    expect(&mut s, "Passphrase: ", &mut seen);
    s.send_line("not-the-passphrase").expect("type");
    let code = finish(&mut s, &mut seen);
    let out = String::from_utf8_lossy(&seen).into_owned();
    assert_ne!(code, 0, "{out}");
    assert!(
        out.to_lowercase().contains("passphrase") || out.contains("key"),
        "{out}"
    );
    assert!(!out.contains("not-the-passphrase"), "echoed: {out}");
    assert!(!is_mounted(&mnt));

    let mut s = spawn(pty_cmd(&args));
    let mut seen = Vec::new();
    expect(&mut s, "Passphrase: ", &mut seen);
    s.send_line(PASS).expect("type");
    let code = finish(&mut s, &mut seen);
    let guard = Mount::adopt(&mnt, &cache);
    let out = String::from_utf8_lossy(&seen).into_owned();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("mounted at"), "{out}");
    assert!(!out.contains(PASS), "the passphrase was echoed: {out}");
    assert!(is_mounted(&mnt));
    guard.unmount();
}

// Close hands the chunk to the background uploader (throttled here), so the unmount has
// something to wait for and must show it.
#[test]
fn unmount_shows_a_progress_bar_while_uploading() {
    require_fuse!("unmount_shows_a_progress_bar_while_uploading");
    let _lock = heavy_lock();
    let work = tempdir();
    let w = work.path();
    let vol = local_volume(w);
    // One 16 MiB chunk: the whole file stays dirty until it is closed.
    run(
        &mut vol.cmd("init", &[&vol.store, "--chunk-size", "16777216"]),
        CMD_TIMEOUT,
    )
    .assert_ok();
    let mnt = w.join("mnt");
    let cache = w.join("cache");
    let mut c = vol.cmd("mount", &[&vol.store, mnt.to_str().expect("utf-8")]);
    fs::create_dir_all(&mnt).expect("mkdir");
    c.arg("--cache-dir")
        .arg(&cache)
        .env("CRYPTBUCKET_TEST_THROTTLE_BPS", "3000000");
    let o = run(&mut c, CMD_TIMEOUT);
    let guard = Mount::adopt(&mnt, &cache);
    o.assert_ok();

    let data = random_bytes(12 * MIB);
    let mut f = fs::File::create(mnt.join("big.bin")).expect("create");
    f.write_all(&data).expect("write");

    // Detach while the file is still open; the daemon finishes when it is closed.
    let mut s = spawn(pty_cmd(&[
        "unmount",
        "--lazy",
        mnt.to_str().expect("utf-8"),
    ]));
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(f); // close: the 12 MiB upload starts (about 4 s at 3 MB/s)
    });
    let mut seen = Vec::new();
    expect(
        &mut s,
        r"unmount: uploading \[[=> ]+\] [0-9.]+ [KMG]?i?B/1[12]\.[0-9]+ MiB",
        &mut seen,
    );
    expect(&mut s, "written to the store", &mut seen);
    let code = finish(&mut s, &mut seen);
    closer.join().expect("closer");
    let out = String::from_utf8_lossy(&seen).into_owned();
    assert_eq!(code, 0, "{out}");
    assert!(!is_mounted(&mnt), "{out}");
    guard.forget();

    // Everything reached the store.
    let m = vol.mount(&mnt, &cache);
    assert!(
        fs::read(mnt.join("big.bin")).expect("read back") == data,
        "content differs"
    );
    m.unmount();
}

#[test]
fn idle_timeout_unmounts_and_commits() {
    require_fuse!("idle_timeout_unmounts_and_commits");
    let _lock = heavy_lock();
    let work = tempdir();
    let w = work.path();
    let vol = local_volume(w);
    vol.init();
    let mnt = w.join("mnt");
    let cache = w.join("cache");
    let m = vol.mount_with(&mnt, &cache, &["--idle-timeout", "2s"]);
    fs::write(mnt.join("note.txt"), b"written before going idle").expect("write");

    // An open file keeps it mounted past the timeout, even with no requests.
    let held = fs::File::open(mnt.join("note.txt")).expect("open");
    std::thread::sleep(Duration::from_secs(4));
    assert!(is_mounted(&mnt), "unmounted with a file open");
    drop(held);

    let start = Instant::now();
    wait_for("the idle unmount", Duration::from_secs(30), || {
        !is_mounted(&mnt)
    });
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "unmounted too early"
    );
    m.forget();
    let log_done = |l: &PathBuf| {
        fs::read_to_string(l)
            .map(|t| t.contains("all data and metadata are in the store"))
            .unwrap_or(false)
    };
    let log = cache.join("cryptbucket.log");
    wait_for("the daemon's clean exit", Duration::from_secs(30), || {
        log_done(&log)
    });
    let text = fs::read_to_string(&log).expect("log");
    assert!(text.contains("--idle-timeout"), "{text}");

    let m = vol.mount(&mnt, &cache);
    assert_eq!(
        fs::read(mnt.join("note.txt")).expect("read"),
        b"written before going idle"
    );
    m.unmount();
}

#[test]
fn notify_send_reports_an_unreachable_store() {
    require_fuse!("notify_send_reports_an_unreachable_store");
    let _lock = heavy_lock();
    let work = tempdir();
    let w = work.path();
    let vol = local_volume(w);
    vol.init();

    // A fake notify-send that records its arguments, first on PATH.
    let bin_dir = w.join("bin");
    fs::create_dir(&bin_dir).expect("mkdir");
    let record = w.join("notifications.txt");
    let fake = bin_dir.join("notify-send");
    fs::write(
        &fake,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done >> '{}'\necho --- >> '{}'\n",
            record.display(),
            record.display()
        ),
    )
    .expect("write fake");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let fail = w.join("store-down");
    let mnt = w.join("mnt");
    let cache = w.join("cache");
    fs::create_dir_all(&mnt).expect("mkdir");
    let mut c = vol.cmd("mount", &[&vol.store, mnt.to_str().expect("utf-8")]);
    c.arg("--cache-dir")
        .arg(&cache)
        .arg("--notify")
        .env("PATH", &path)
        .env("CRYPTBUCKET_TEST_FAIL_FILE", &fail)
        .env("CRYPTBUCKET_TEST_NOTIFY_AFTER_MS", "1000");
    let o = run(&mut c, CMD_TIMEOUT);
    let guard = Mount::adopt(&mnt, &cache);
    o.assert_ok();

    fs::write(mnt.join("before.txt"), b"ok").expect("write while the store is up");
    fs::write(&fail, b"").expect("take the store down");
    // This close must upload and fails; the store has now been failing.
    let _ = fs::write(mnt.join("during.txt"), vec![7u8; 100_000]);
    let read = || fs::read_to_string(&record).unwrap_or_default();
    wait_for(
        "an 'unreachable' notification",
        Duration::from_secs(20),
        || read().contains("store unreachable"),
    );
    let text = read();
    assert!(text.contains("--app-name=cryptbucket"), "{text}");
    assert!(text.contains("--urgency=critical"), "{text}");
    assert!(text.contains(&mnt.display().to_string()), "{text}");
    assert!(
        text.contains("CRYPTBUCKET_TEST_FAIL_FILE"),
        "names the error: {text}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        read().matches("cryptbucket: store unreachable").count(),
        1,
        "one notification per outage: {}",
        read()
    );

    fs::remove_file(&fail).expect("bring the store back");
    // Big enough to be its own chunk object: the upload at close is a request that
    // succeeds, which is what ends the outage (an inline file would make none).
    let after = vec![9u8; 100_000];
    fs::write(mnt.join("after.txt"), &after).expect("write after recovery");
    wait_for(
        "a 'reachable again' notification",
        Duration::from_secs(20),
        || read().contains("reachable again"),
    );
    guard.unmount();
    let m = vol.mount(&mnt, &cache);
    assert_eq!(fs::read(mnt.join("after.txt")).expect("read"), after);
    m.unmount();
}

#[test]
fn keyring_without_a_secret_service_is_a_clear_error() {
    let work = tempdir();
    let w = work.path();
    let vol = local_volume(w);
    vol.init();
    let run_dir = w.join("run");
    fs::create_dir(&run_dir).expect("mkdir");
    let headless = |c: &mut Command| {
        c.env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env("XDG_RUNTIME_DIR", &run_dir);
    };
    let mut c = vol.cmd("key", &["remember", &vol.store]);
    headless(&mut c);
    let o = run(&mut c, CMD_TIMEOUT);
    o.assert_clean_failure();
    assert_eq!(o.status.code(), Some(2), "{o}");
    o.assert_stderr_mentions(&["no desktop keyring (secret service) is reachable"]);
    o.assert_stderr_mentions(&["--passphrase-file"]);

    // A mount on such a box just does not find a saved passphrase and goes on as usual.
    let mut c = vol
        .with_key(Key::Nothing)
        .cmd("mount", &[&vol.store, "/nonexistent-mnt"]);
    headless(&mut c);
    let o = run(&mut c, CMD_TIMEOUT);
    o.assert_clean_failure();
    assert!(!o.stderr.contains("keyring"), "no keyring noise: {o}");
}

/// A real Secret Service: gnome-keyring in a private D-Bus session (skipped where they are
/// not installed: `apt-get install gnome-keyring dbus`).
#[test]
fn keyring_remember_mount_forget_with_gnome_keyring() {
    require_fuse!("keyring_remember_mount_forget_with_gnome_keyring");
    if !have_tool("gnome-keyring-daemon") || !have_tool("dbus-run-session") {
        note_skip(
            "keyring_remember_mount_forget_with_gnome_keyring",
            "gnome-keyring-daemon or dbus-run-session not installed",
        );
        return;
    }
    let _lock = heavy_lock();
    let work = tempdir();
    let w = work.path();
    let vol = local_volume(w);
    vol.init();
    let mnt = w.join("mnt");
    fs::create_dir(&mnt).expect("mkdir");
    let cache = w.join("cache");
    let home = w.join("home");
    fs::create_dir(&home).expect("mkdir");
    let script = format!(
        r#"set -u
exec 2>&1
# A fresh login keyring (created by --unlock with this password), in the foreground so
# we know its pid and can stop it.
printf 'keyring-login\n' | gnome-keyring-daemon --foreground --unlock --components=secrets >/dev/null 2>&1 &
KR=$!
sleep 1
CB={bin}
S={store}
echo "== forget-nothing"; $CB key forget "$S"; echo "rc=$?"
echo "== remember"; CRYPTBUCKET_PASSPHRASE={pass} $CB key remember "$S" </dev/null; echo "rc=$?"
echo "== remember-wrong"; CRYPTBUCKET_PASSPHRASE=wrong $CB key remember "$S" </dev/null; echo "rc=$?"
echo "== mount"; $CB mount "$S" {mnt} --cache-dir {cache} </dev/null; echo "rc=$?"
cat {mnt}/hello.txt 2>/dev/null; echo
$CB unmount {mnt}; echo "unmount rc=$?"
echo "== forget"; $CB key forget "$S"; echo "rc=$?"
echo "== mount-after-forget"; $CB mount "$S" {mnt} --cache-dir {cache} </dev/null; echo "rc=$?"
kill "$KR"
"#,
        bin = bin(),
        store = vol.store,
        pass = PASS,
        mnt = mnt.display(),
        cache = cache.display(),
    );
    // Put a file in the volume first, to read back through the keyring-unlocked mount.
    let m = vol.mount(&mnt, &cache);
    fs::write(mnt.join("hello.txt"), b"unlocked by the keyring").expect("write");
    m.unmount();

    let mut c = Command::new("dbus-run-session");
    c.args(["--", "sh", "-c", &script])
        .env("HOME", &home)
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("XDG_RUNTIME_DIR", w)
        .env("CRYPTBUCKET_TEST_FAST_KDF", "1")
        .env_remove("CRYPTBUCKET_PASSPHRASE")
        .env_remove("CRYPTBUCKET_NO_KEYRING");
    let o = run(&mut c, BULK_TIMEOUT);
    let guard = Mount::adopt(&mnt, &cache);
    let out = format!("{}\n{}", o.stdout, o.stderr);
    let section = |name: &str| -> String {
        let start = out
            .find(&format!("== {name}\n"))
            .unwrap_or_else(|| panic!("{name}: {out}"));
        let rest = &out[start + name.len() + 4..];
        rest[..rest.find("== ").unwrap_or(rest.len())].to_string()
    };
    assert!(section("forget-nothing").contains("rc=2"), "{out}");
    assert!(section("remember").contains("rc=0"), "{out}");
    let wrong = section("remember-wrong");
    assert!(
        wrong.contains("rc=1") && wrong.contains("nothing was saved"),
        "{out}"
    );
    let mounted = section("mount");
    assert!(mounted.contains("rc=0"), "{out}");
    assert!(mounted.contains("unlocked by the keyring"), "{out}");
    assert!(mounted.contains("unmount rc=0"), "{out}");
    assert!(section("forget").contains("rc=0"), "{out}");
    let after = section("mount-after-forget");
    assert!(
        after.contains("no passphrase") && !after.contains("rc=0"),
        "{out}"
    );
    assert!(
        !out.contains(PASS),
        "the passphrase leaked into output: {out}"
    );
    assert!(!is_mounted(&mnt));
    guard.forget();
}
