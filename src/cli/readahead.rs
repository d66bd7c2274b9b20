//! The kernel read-ahead window of a mount (`--read-ahead-kb`).
//!
//! A FUSE mount's backing device starts with the kernel's 128 KiB window, and FUSE can only
//! lower it at init, so a sequential read arrives as 128 KiB READ requests: 8,192 round trips
//! per GiB, each a wake-up, a decrypt call and a reply. The window is the bdi's
//! `read_ahead_kb` in sysfs, which only root may write.

use std::io;
use std::path::Path;

/// The window set after mounting unless `--read-ahead-kb` says otherwise.
pub const DEFAULT_READ_AHEAD_KB: u32 = 1024;
/// Largest accepted value: 16 MiB, four chunks.
pub const READ_AHEAD_KB_MAX: u32 = 16 * 1024;

/// The `MAJOR:MINOR` device of the mount at `mnt` (an absolute, canonical path), from a
/// `/proc/self/mountinfo` text; the last match wins, as a later mount hides an earlier one.
pub fn mount_device(mountinfo: &str, mnt: &Path) -> Option<String> {
    let want = mnt.to_str()?;
    mountinfo.lines().rev().find_map(|line| {
        let mut f = line.split(' ');
        let dev = f.nth(2)?;
        let _root = f.next()?;
        let point = unescape(f.next()?);
        (point == want).then(|| dev.to_string())
    })
}

/// mountinfo writes space, tab, newline and backslash in paths as octal escapes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        let byte = octal
            .map(|d| d.iter().fold(0u16, |n, c| n * 8 + u16::from(c - b'0')))
            .and_then(|n| u8::try_from(n).ok());
        match byte {
            Some(v) if b[i] == b'\\' => {
                out.push(v);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Set the mount's kernel read-ahead window (`--read-ahead-kb`); a refusal only costs speed.
pub fn apply(mnt: &Path, kb: Option<u32>) {
    let kb = kb.unwrap_or(DEFAULT_READ_AHEAD_KB);
    if kb == 0 {
        return;
    }
    // The kernel lowers the window to the INIT reply's max_readahead when that reply comes,
    // so it is set after: a stat of the root waits for INIT to be answered.
    let _ = std::fs::metadata(mnt);
    match set(mnt, kb) {
        Ok(before) => tracing::debug!("read-ahead window {before} -> {kb} KiB"),
        Err(e) => tracing::info!(
            "read-ahead window stays at the kernel's default ({e}; setting --read-ahead-kb needs root)"
        ),
    }
}

/// Set the read-ahead window of the mount at `mnt` to `kb` KiB; returns the value before.
fn set(mnt: &Path, kb: u32) -> io::Result<u32> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dev = mount_device(&info, mnt).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "mount not found in /proc/self/mountinfo",
        )
    })?;
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    let before = std::fs::read_to_string(&path)?
        .trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: {e}")))?;
    std::fs::write(&path, kb.to_string())?;
    Ok(before)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
95 22 0:52 / /mnt/my\\040vault rw,nosuid,nodev,relatime shared:50 - fuse.cryptbucket cryptbucket:/srv/a rw,user_id=0,group_id=0
96 22 0:53 / /mnt/b rw,nosuid,nodev,relatime shared:51 - fuse.cryptbucket cryptbucket:/srv/b rw
97 22 0:54 / /mnt/b rw,nosuid,nodev,relatime shared:52 - fuse.cryptbucket cryptbucket:/srv/c rw
";

    #[test]
    fn the_mounts_device_is_found_by_its_unescaped_path() {
        assert_eq!(
            mount_device(INFO, Path::new("/mnt/my vault")).as_deref(),
            Some("0:52")
        );
        assert_eq!(mount_device(INFO, Path::new("/")).as_deref(), Some("254:0"));
    }

    #[test]
    fn a_mount_on_top_of_another_wins() {
        assert_eq!(
            mount_device(INFO, Path::new("/mnt/b")).as_deref(),
            Some("0:54")
        );
    }

    #[test]
    fn no_mount_no_device() {
        assert_eq!(mount_device(INFO, Path::new("/mnt")), None);
        assert_eq!(mount_device(INFO, Path::new("/mnt/my\\040vault")), None);
        assert_eq!(mount_device("garbage\n\n1 2\n", Path::new("/")), None);
    }

    #[test]
    fn octal_escapes_decode() {
        assert_eq!(unescape(r"a\134b\011c\012"), "a\\b\tc\n");
        assert_eq!(unescape(r"trailing\04"), r"trailing\04");
        assert_eq!(unescape(r"big\777"), r"big\777");
    }
}
