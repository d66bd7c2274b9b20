//! `cryptbucket unmount`: unmount, then wait until the daemon has written everything.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use super::mount::pid_file;

#[derive(Args, Debug)]
pub struct UnmountArgs {
    pub mountpoint: PathBuf,
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
        bail!("{} is not mounted", mnt.display());
    }
    let pidf = pid_file(&mnt);
    let pid: Option<i32> = std::fs::read_to_string(&pidf)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(&mnt)
        .output()
        .context("cannot run fusermount3 (install the fuse3 package)")?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        if msg.contains("busy") {
            bail!(
                "{} is busy: close the files open on it (and leave the directory), then retry",
                mnt.display()
            );
        }
        bail!("cannot unmount {}: {}", mnt.display(), msg.trim());
    }
    if let Some(pid) = pid {
        let start = Instant::now();
        let mut told = false;
        while alive(pid) {
            if !told && start.elapsed() > Duration::from_secs(1) {
                eprintln!("waiting for cryptbucket (pid {pid}) to finish writing to the store...");
                told = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let errf = pidf.with_extension("err");
    if let Ok(err) = std::fs::read_to_string(&errf) {
        let _ = std::fs::remove_file(&errf);
        bail!("unmounted, but the final flush failed: {err}");
    }
    Ok(())
}
