//! End-to-end: the journal on real FUSE mounts. A writer fsyncs; a read-only mount from
//! another cache dir (the writer holds the lease) reads exactly that content, refuses
//! changes with EROFS, and with --follow picks up the writer's later commits.

mod common;

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn fsync_reaches_a_read_only_follower() {
    require_fuse!("fsync_reaches_a_read_only_follower");
    let _heavy = heavy_lock();
    let work = tempdir();
    let w = work.path();
    let store = w.join("store");
    let vol = Volume::local(&store, Key::Passphrase("journal e2e".into()));
    vol.init();
    let (mw, mr) = (w.join("mw"), w.join("mr"));
    fs::create_dir(&mw).unwrap();
    fs::create_dir(&mr).unwrap();
    let writer = vol.mount_with(&mw, &w.join("cache-w"), &["--commit-interval", "3600"]);
    let data = random_bytes(300_000);
    {
        let mut f = fs::File::create(mw.join("synced.bin")).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    // The lease is held: read-write is refused, read-only is not.
    vol.try_mount(&mr, &w.join("cache-r"))
        .assert_stderr_mentions(&["already mounted", "--read-only"]);
    let reader = vol.mount_with(&mr, &w.join("cache-r"), &["--read-only", "--follow"]);
    assert_eq!(fs::read(mr.join("synced.bin")).unwrap(), data);
    let err = fs::write(mr.join("new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    // Closed but not fsynced (and a 1 h timer): not in the store, so not on the follower.
    fs::write(mw.join("closed-only"), b"not yet").unwrap();
    {
        let mut f = fs::File::create(mw.join("second")).unwrap();
        f.write_all(b"second file").unwrap();
        f.sync_all().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while fs::read(mr.join("second")).ok().as_deref() != Some(&b"second file"[..]) {
        assert!(
            Instant::now() < deadline,
            "the follower never saw the new commit"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // fsync committed every change made before it, the closed file included.
    assert_eq!(fs::read(mr.join("closed-only")).unwrap(), b"not yet");
    reader.unmount();
    writer.unmount();
}

/// `cryptbucket sync` (syncfs(2) never reaches a FUSE daemon): data written and never
/// fsynced — in a file still open, a closed file, a rename and a delete — is in the store
/// once it returns, as a read-only mount from another cache dir shows.
#[test]
fn cryptbucket_sync_makes_unsynced_writes_durable() {
    require_fuse!("cryptbucket_sync_makes_unsynced_writes_durable");
    let _heavy = heavy_lock();
    let work = tempdir();
    let w = work.path();
    let store = w.join("store");
    let vol = Volume::local(&store, Key::Passphrase("sync e2e".into()));
    vol.init();
    let (mw, mr) = (w.join("mw"), w.join("mr"));
    fs::create_dir(&mr).unwrap();
    // A 1 h commit timer: only the sync can commit during the test.
    let writer = vol.mount_with(&mw, &w.join("cache-w"), &["--commit-interval", "3600"]);
    let big = random_bytes(9 << 20); // three chunks of the default 4 MiB
    let mut open = fs::File::create(mw.join("still-open")).unwrap();
    open.write_all(&big).unwrap();
    fs::write(mw.join("small"), b"inline at close").unwrap();
    fs::write(mw.join("old-name"), b"renamed").unwrap();
    fs::rename(mw.join("old-name"), mw.join("new-name")).unwrap();
    fs::write(mw.join("gone"), b"deleted").unwrap();
    fs::remove_file(mw.join("gone")).unwrap();

    // Nothing committed yet: a reader sees an empty volume.
    let reader = vol.mount_with(&mr, &w.join("cache-r1"), &["--read-only"]);
    assert!(!mr.join("still-open").exists() && !mr.join("small").exists());
    reader.unmount();

    let o = run(cb().arg("sync").arg(&mw), CMD_TIMEOUT);
    o.assert_ok();
    assert!(
        o.stderr.contains("everything written is in the store"),
        "{o}"
    );
    let st = run(cb().args(["status", "--json"]).arg(&mw), CMD_TIMEOUT);
    st.assert_ok();
    let st: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(st["dirty_bytes"], 0, "{st}");
    assert_eq!(st["uncommitted_changes"], false, "{st}");

    let reader = vol.mount_with(&mr, &w.join("cache-r2"), &["--read-only"]);
    assert_eq!(fs::read(mr.join("still-open")).unwrap(), big);
    assert_eq!(fs::read(mr.join("small")).unwrap(), b"inline at close");
    assert_eq!(fs::read(mr.join("new-name")).unwrap(), b"renamed");
    assert!(!mr.join("old-name").exists() && !mr.join("gone").exists());
    // A read-only mount has nothing to write: sync says so and succeeds.
    let o = run(cb().arg("sync").arg(&mr), CMD_TIMEOUT);
    o.assert_ok();
    assert!(o.stderr.contains("read-only"), "{o}");
    reader.unmount();
    drop(open);
    writer.unmount();

    // Not a mount: a clear error, exit 1.
    let o = run(cb().arg("sync").arg(w), CMD_TIMEOUT);
    o.assert_clean_failure();
    assert!(o.stderr.contains("not a cryptbucket mount"), "{o}");
}

/// `cryptbucket sync` while the store is down: exit 1 with a clear message and nothing
/// lost; once the store is back the next sync makes it all durable.
#[test]
fn cryptbucket_sync_fails_while_the_store_is_down_and_keeps_the_data() {
    require_fuse!("cryptbucket_sync_fails_while_the_store_is_down_and_keeps_the_data");
    let _heavy = heavy_lock();
    let work = tempdir();
    let w = work.path();
    let store = w.join("store");
    let vol = Volume::local(&store, Key::Passphrase("sync down e2e".into()));
    vol.init();
    let (mw, mr, cache) = (w.join("mw"), w.join("mr"), w.join("cache-w"));
    fs::create_dir(&mw).unwrap();
    let fail = w.join("store-down");
    let mut c = vol.cmd("mount", &[&vol.store, mw.to_str().unwrap()]);
    c.arg("--cache-dir")
        .arg(&cache)
        .args(["--commit-interval", "3600", "--io-timeout", "2"])
        .env("CRYPTBUCKET_TEST_FAIL_FILE", &fail);
    let o = run(&mut c, CMD_TIMEOUT);
    let writer = Mount::adopt(&mw, &cache);
    o.assert_ok();

    fs::write(&fail, b"").unwrap();
    let data = random_bytes(5 << 20);
    fs::write(mw.join("written-while-down"), &data).unwrap();
    let o = run(cb().arg("sync").arg(&mw), CMD_TIMEOUT);
    o.assert_clean_failure();
    assert_eq!(o.status.code(), Some(1), "{o}");
    assert!(
        o.stderr.contains("sync failed (the data stays staged)"),
        "{o}"
    );
    assert_eq!(fs::read(mw.join("written-while-down")).unwrap(), data);

    fs::remove_file(&fail).unwrap();
    run(cb().arg("sync").arg(&mw), CMD_TIMEOUT).assert_ok();
    let reader = vol.mount_with(&mr, &w.join("cache-r"), &["--read-only"]);
    assert_eq!(fs::read(mr.join("written-while-down")).unwrap(), data);
    reader.unmount();
    writer.unmount();
}

/// A sync waiting for slow uploads does not block the control socket: `status` answers
/// meanwhile (unmount's progress bar and monitoring depend on it).
#[test]
fn status_answers_while_a_sync_waits_for_uploads() {
    require_fuse!("status_answers_while_a_sync_waits_for_uploads");
    let _heavy = heavy_lock();
    let work = tempdir();
    let w = work.path();
    let store = w.join("store");
    let vol = Volume::local(&store, Key::Passphrase("sync status e2e".into()));
    vol.init();
    let (mnt, cache) = (w.join("mnt"), w.join("cache"));
    fs::create_dir(&mnt).unwrap();
    let mut c = vol.cmd("mount", &[&vol.store, mnt.to_str().unwrap()]);
    c.arg("--cache-dir")
        .arg(&cache)
        .env("CRYPTBUCKET_TEST_THROTTLE_BPS", "1000000"); // a 4 MiB chunk takes ~4 s
    let o = run(&mut c, CMD_TIMEOUT);
    let m = Mount::adopt(&mnt, &cache);
    o.assert_ok();
    fs::write(mnt.join("slow"), random_bytes((8 << 20) + 100)).unwrap();
    let t = Instant::now();
    let mut sync = cb()
        .arg("sync")
        .arg(&mnt)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        sync.try_wait().unwrap().is_none(),
        "sync returned before the uploads"
    );
    let q = Instant::now();
    let st = run(cb().args(["status", "--json"]).arg(&mnt), CMD_TIMEOUT);
    st.assert_ok();
    assert!(
        q.elapsed() < Duration::from_secs(2),
        "status waited for the sync"
    );
    let st: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert!(st["dirty_bytes"].as_u64().unwrap() > 0, "{st}");
    assert!(sync.wait().unwrap().success(), "sync failed");
    assert!(
        t.elapsed() > Duration::from_secs(2),
        "sync did not wait for the uploads"
    );
    let st = run(cb().args(["status", "--json"]).arg(&mnt), CMD_TIMEOUT);
    let st: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(st["dirty_bytes"], 0, "{st}");
    assert_eq!(st["uncommitted_changes"], false, "{st}");
    m.unmount();
}
