//! `cryptbucket unmount`: unmount, then wait until the daemon has written everything.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use super::control::Status;
use super::mount::pid_file;
use super::progress::{Progress, Unit};

#[derive(Args, Debug)]
pub struct UnmountArgs {
    pub mountpoint: PathBuf,
    /// Detach now even if files are open (fusermount3 -z); the daemon finishes writing once
    /// the last of them is closed, and this command waits for that.
    #[arg(long)]
    pub lazy: bool,
}

fn is_mounted(mnt: &std::path::Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let want = mnt.to_string_lossy();
    mounts.lines().any(|l| {
        l.split(' ')
            .nth(1)
            .map(|p| p.replace("\\040", " ") == want)
            .unwrap_or(false)
    })
}

/// Whether `pid` still runs (a zombie waiting for its reaper has finished its work).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub fn run(args: UnmountArgs) -> Result<()> {
    let mnt = std::fs::canonicalize(&args.mountpoint)
        .with_context(|| format!("{}: no such directory", args.mountpoint.display()))?;
    if !is_mounted(&mnt) {
        bail!(
            "{} is not mounted (nothing to do; `cryptbucket status` lists live mounts)",
            mnt.display()
        );
    }
    let pidf = pid_file(&mnt);
    let pid: Option<i32> = std::fs::read_to_string(&pidf)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let sock = super::control::socket_path(&mnt);
    let before = super::control::query(&sock).ok();
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u");
    if args.lazy {
        cmd.arg("-z");
    }
    let out = cmd
        .arg(&mnt)
        .output()
        .context("cannot run fusermount3 (install the fuse3 package)")?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        if msg.contains("busy") {
            bail!(
                "{} is busy: a process has a file open on it or its current directory inside it; close those (`fuser -vm {}` lists them) and retry, or use --lazy to detach now and finish when they are closed",
                mnt.display(),
                mnt.display()
            );
        }
        bail!("cannot unmount {}: {}", mnt.display(), msg.trim());
    }
    if let Some(pid) = pid {
        wait_for_daemon(pid, &sock, before);
    }
    let errf = pidf.with_extension("err");
    if let Ok(err) = std::fs::read_to_string(&errf) {
        let _ = std::fs::remove_file(&errf);
        bail!("unmounted, but the final flush failed: {err}");
    }
    Ok(())
}

/// Wait until the daemon has exited, showing the upload of what was still dirty as a
/// progress bar (plain lines when stderr is not a terminal). The numbers come from the
/// daemon's control socket, which stays up until its final flush is done.
fn wait_for_daemon(pid: i32, sock: &std::path::Path, before: Option<Status>) {
    let start = Instant::now();
    let base = before.as_ref().map(|s| s.backend.bytes_uploaded);
    let mut bar: Option<Progress> = None;
    let mut told = false;
    let (mut said_error, mut said_stall) = (false, false);
    let (mut last_pos, mut moved) = (0u64, Instant::now());
    let mut total = 0u64;
    while alive(pid) {
        std::thread::sleep(Duration::from_millis(100));
        if start.elapsed() < Duration::from_millis(500) {
            continue;
        }
        let Ok(st) = super::control::query(sock) else {
            if !told && bar.is_none() && start.elapsed() > Duration::from_secs(1) {
                eprintln!("waiting for cryptbucket (pid {pid}) to finish writing to the store...");
                told = true;
            }
            continue;
        };
        let (pos, len) = upload_progress(base, &st, total);
        if pos != last_pos {
            (last_pos, moved) = (pos, Instant::now());
        }
        // Said once per outage: the requests themselves are retried for --io-timeout
        // before they count as failed, so a stall is noticed first.
        let stalled =
            (st.dirty_bytes > 0 && moved.elapsed() >= STALL).then(|| moved.elapsed().as_secs());
        let say = match (&st.store_failing, stalled) {
            (Some(f), _) if !said_error => {
                said_error = true;
                said_stall = true;
                Some(trouble_message(Trouble::Failing(f), &st, now_secs()))
            }
            (None, Some(secs)) if !said_stall => {
                said_stall = true;
                Some(trouble_message(Trouble::Stalled(secs), &st, now_secs()))
            }
            (None, None) => {
                (said_error, said_stall) = (false, false);
                None
            }
            _ => None,
        };
        if let Some(msg) = say {
            match &bar {
                Some(b) => b.println(&msg),
                None => eprintln!("{msg}"),
            }
        }
        total = len;
        let busy = st.dirty_bytes > 0 || st.backend.uploads_in_flight > 0;
        if bar.is_none() && (busy || len > 0) {
            bar = Some(Progress::new("unmount: uploading", len, Unit::Bytes));
        }
        if let Some(b) = &bar {
            b.set_length(len);
            b.set_position(pos);
        }
    }
    if let Some(b) = bar {
        b.set_position(total);
        b.finish(&format!(
            "{} written to the store",
            indicatif::HumanBytes(total)
        ));
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// No upload progress for this long while data waits: say so.
const STALL: Duration = Duration::from_secs(10);

enum Trouble<'a> {
    /// Every request has failed (after its retries) for a while.
    Failing(&'a super::control::StoreFailing),
    /// Nothing uploaded for this many seconds while data waits.
    Stalled(u64),
}

/// What `unmount` says while the daemon's final upload does not get through: why, until
/// when it retries, and what happens to the data after that.
fn trouble_message(t: Trouble<'_>, st: &Status, now: u64) -> String {
    let what = match t {
        Trouble::Failing(f) => format!(
            "requests to the store keep failing{}: {}",
            match f.for_secs {
                0 => String::new(),
                n => format!(" (for {n} s)"),
            },
            f.error
        ),
        Trouble::Stalled(secs) => format!(
            "nothing could be uploaded for {secs} s: the store is slow or unreachable (the daemon's log says why{})",
            st.log
                .as_ref()
                .map(|l| format!(": {}", l.display()))
                .unwrap_or_default()
        ),
    };
    let retry = match st.final_flush_until {
        Some(t) => format!("it keeps retrying for {} s more", t.saturating_sub(now)),
        None => "it keeps retrying".into(),
    };
    format!(
        "unmount: {what}\n  {retry}; after that the data stays staged in {} and is uploaded at the next mount. Ctrl-C stops waiting here (the daemon keeps trying).",
        st.cache_dir.display()
    )
}

/// Bytes uploaded since unmount began, and the total to upload: what is uploaded plus what
/// is still dirty, never shrinking below an earlier total.
fn upload_progress(base: Option<u64>, st: &Status, prev_total: u64) -> (u64, u64) {
    let uploaded = base.map_or(0, |b| st.backend.bytes_uploaded.saturating_sub(b));
    let total = (uploaded + st.dirty_bytes).max(prev_total).max(uploaded);
    (uploaded, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(uploaded: u64, dirty: u64) -> Status {
        serde_json::from_value(serde_json::json!({
            "mountpoint": "/m", "store": "/s", "volume_id": "v", "pid": 1,
            "cache_dir": "/c", "log": null, "started": 0, "uptime_secs": 0,
            "open_files": 0, "dirty_bytes": dirty, "uncommitted_changes": false,
            "last_commit": null,
            "backend": {"requests": 0, "errors": 0, "bytes_uploaded": uploaded,
                        "bytes_downloaded": 0, "uploads_in_flight": 0}
        }))
        .expect("status")
    }

    #[test]
    fn a_failing_final_flush_says_why_until_when_and_where_the_data_stays() {
        let mut s = st(0, 100);
        s.cache_dir = "/var/cache/cb".into();
        s.log = Some("/var/cache/cb/cryptbucket.log".into());
        s.final_flush_until = Some(1300);
        let f = crate::cli::control::StoreFailing {
            for_secs: 7,
            error: "store unreachable or temporarily failing: connection refused".into(),
        };
        let m = trouble_message(Trouble::Failing(&f), &s, 1000);
        assert!(m.contains("connection refused"), "{m}");
        assert!(m.contains("keep failing (for 7 s)"), "{m}");
        assert!(m.contains("300 s more"), "{m}");
        assert!(m.contains("staged in /var/cache/cb"), "{m}");
        assert!(m.contains("next mount"), "{m}");
        let m = trouble_message(Trouble::Stalled(12), &s, 2000);
        assert!(m.contains("for 12 s"), "{m}");
        assert!(m.contains("cryptbucket.log"), "{m}");
        assert!(m.contains("0 s more"), "{m}");
        s.final_flush_until = None;
        assert!(trouble_message(Trouble::Stalled(12), &s, 0).contains("it keeps retrying;"));
    }

    #[test]
    fn progress_counts_from_the_start_of_unmount() {
        assert_eq!(upload_progress(Some(100), &st(100, 1000), 0), (0, 1000));
        assert_eq!(upload_progress(Some(100), &st(600, 500), 1000), (500, 1000));
        // Dirty data drops to zero as the last chunk lands: the total does not shrink.
        assert_eq!(upload_progress(Some(100), &st(1100, 0), 1000), (1000, 1000));
        assert_eq!(upload_progress(None, &st(5000, 10), 0), (0, 10));
    }
}
