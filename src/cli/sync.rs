//! `cryptbucket sync MOUNTPOINT...`: make everything written to a live mount durable in the
//! store, like fsync of every file. syncfs(2) and `sync` cannot do this for a FUSE mount:
//! Linux forwards syncfs only to virtiofs daemons (FUSE_SYNCFS), so ours never hears of it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::control;

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Mountpoints of live cryptbucket mounts of this user.
    #[arg(required = true)]
    pub mountpoints: Vec<PathBuf>,
}

pub fn run(args: SyncArgs) -> Result<()> {
    for m in &args.mountpoints {
        let (mnt, sock) = control::socket_of(m)?;
        let r = control::sync(&sock).with_context(|| format!("cannot sync {}", mnt.display()))?;
        if !super::ui::quiet() {
            if r.read_only {
                eprintln!("{}: read-only mount, nothing to write", mnt.display());
            } else {
                eprintln!(
                    "{}: everything written is in the store ({:.2} s)",
                    mnt.display(),
                    r.secs
                );
            }
        }
    }
    Ok(())
}
