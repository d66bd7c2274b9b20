//! Write-back on a real mount: data acknowledged by write(2) survives `kill -9` of the
//! daemon and reaches the store at the next mount with the same cache dir.

mod common;

use std::fs;
use std::io::Write;
use std::time::Duration;

use common::*;

const PASS: &str = "writeback passphrase";

#[test]
fn kill_9_loses_no_acknowledged_write() {
    require_fuse!("kill_9_loses_no_acknowledged_write");
    let _lock = heavy_lock();
    let work = tempdir();
    let w = work.path();
    let store = w.join("store");
    let vol = Volume::local(&store, Key::Passphrase(PASS.into()));
    vol.init();
    let (mnt, cache) = (w.join("mnt"), w.join("cache"));
    let m = vol.mount(&mnt, &cache);
    let pid = daemon_pid(&mnt);

    // Closed just before the kill: its upload may still be queued.
    let closed = random_bytes(3 * CHUNK + 12345);
    write_file(&mnt.join("closed.bin"), &closed);
    // Still open at the kill, its last chunk partly written (open, not yet uploaded).
    let open_data = random_bytes(CHUNK + CHUNK / 2);
    let mut f = fs::File::create(mnt.join("open.bin")).unwrap();
    for piece in open_data.chunks(256 * 1024) {
        f.write_all(piece).unwrap();
    }
    // SAFETY: sending a signal to the daemon process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    drop(f);
    std::thread::sleep(Duration::from_millis(300));
    let _ = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(&mnt)
        .status();
    m.forget();
    // Emptied staging files are kept for reuse while mounted: count those holding data.
    let staged = fs::read_dir(cache.join("staging"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.metadata().is_ok_and(|m| m.len() > 0))
                .count()
        })
        .unwrap_or(0);
    assert!(staged > 0, "the open chunk must have been staged on disk");

    // Same cache dir: recovery uploads and commits what was staged.
    let m = vol.mount(&mnt, &cache);
    assert_eq!(fs::read(mnt.join("open.bin")).unwrap(), open_data);
    assert_eq!(fs::read(mnt.join("closed.bin")).unwrap(), closed);
    m.unmount();
    assert_eq!(
        fs::read_dir(cache.join("staging"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );

    // The store alone has it all.
    let fresh = w.join("fresh");
    let m = vol.mount(&mnt, &fresh);
    assert_eq!(fs::read(mnt.join("open.bin")).unwrap(), open_data);
    assert_eq!(fs::read(mnt.join("closed.bin")).unwrap(), closed);
    m.unmount();
}
