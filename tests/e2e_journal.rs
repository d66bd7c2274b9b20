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
