//! `cryptbucket gc STORE|MOUNTPOINT`: delete chunk objects nothing references, older than a
//! safety delay. On a live mount (MOUNTPOINT, or STORE while it is mounted here) the mount
//! does it over its control socket; otherwise gc takes the writer lease itself.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use clap::Args;
use tokio::task::JoinSet;

use cryptbucket::gc::{plan, GcReport, CHUNK_PREFIX, DEFAULT_MIN_AGE};
use cryptbucket::meta::lease::{Lease, DEFAULT_LEASE_TTL, LEASE_RENEW_INTERVAL};
use cryptbucket::meta::remote::RemoteMeta;

use super::{control, key_source, open_store, KeyArgs, StoreArgs};

#[derive(Args, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Safety delay: only chunks written longer ago than this many seconds are deleted,
    /// so an upload a writer has not recorded yet is never collected.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_MIN_AGE.as_secs())]
    pub min_age: u64,
    /// Only report what would be deleted.
    #[arg(long)]
    pub dry_run: bool,
    /// (Unmounted volume) take over a writer lease that expired (its mount is gone).
    #[arg(long)]
    pub break_lease: bool,
}

fn print(r: &GcReport, dry: bool, min_age: u64) {
    print_freed(r, dry, min_age);
    print_repacked(r, dry);
}

fn print_freed(r: &GcReport, dry: bool, min_age: u64) {
    println!(
        "{} {} unreferenced chunk objects ({} bytes); {} unreferenced but younger than {min_age} s kept; {} referenced",
        if dry { "would free" } else { "freed" },
        r.objects,
        r.bytes,
        r.kept_young,
        r.referenced
    );
}

fn print_repacked(r: &GcReport, dry: bool) {
    if r.sparse_packs > 0 {
        let what = if dry { "would repack" } else { "repacked" };
        println!(
            "{what} {} packs that are mostly deleted files ({} bytes to free: the old packs go at the first commit or gc after their 10-minute grace period)",
            r.sparse_packs, r.sparse_bytes
        );
    }
}

pub fn run(mut args: GcArgs) -> Result<()> {
    let min_age = Duration::from_secs(args.min_age);
    // A live mount of this user at that path: let the daemon do it.
    if let Ok(mnt) = std::fs::canonicalize(&args.store.store) {
        let sock = control::socket_path(&mnt);
        if sock.exists() {
            let r = control::gc(&sock, args.min_age, args.dry_run)?;
            print(&r, args.dry_run, args.min_age);
            return Ok(());
        }
    }
    // A volume name from the config file, as for mount.
    super::config::apply(&mut args.store, &mut args.key)?;
    let rt = cryptbucket::volume::runtime()?;
    let store = open_store(&rt, &args.store, false)?;
    let key = key_source(&args.key, false, false)?;
    let keys = std::sync::Arc::new(cryptbucket::volume::unlock(&rt, &store, &key)?);
    drop(key);
    let holder = format!("gc-{}", cryptbucket::crypto::ChunkId::random().to_hex());
    let lease = std::sync::Arc::new(Lease::acquire(
        store.clone(),
        keys.clone(),
        rt.handle().clone(),
        &holder,
        DEFAULT_LEASE_TTL,
        args.break_lease,
    )
    .context("cannot take the writer lease (if the volume is mounted, run gc with its mountpoint on that machine)")?);
    // A collection of many objects outlasts the lease.
    let renewer = lease.renew_in_background(LEASE_RENEW_INTERVAL);
    let res = (|| -> Result<GcReport> {
        let listing = rt.block_on(store.list(CHUNK_PREFIX))?;
        let now = SystemTime::now();
        let remote = RemoteMeta::new(store.clone(), keys.clone(), rt.handle().clone());
        let (_head, snap) = cryptbucket::fsck::load_committed(&remote)?;
        let referenced: HashSet<[u8; 16]> = snap.chunks.iter().map(|(_, c)| c.id).collect();
        let (doomed, mut report) = plan(&listing, &referenced, min_age, now);
        (report.sparse_packs, report.sparse_bytes) = cryptbucket::gc::sparse_in(&snap.chunks);
        if !args.dry_run {
            let progress = super::progress::Progress::new(
                "deleting",
                doomed.len() as u64,
                super::progress::Unit::Items,
            );
            for batch in doomed.chunks(32) {
                // Keep the lease fresh through a long collection.
                lease.check()?;
                rt.block_on(async {
                    let mut set = JoinSet::new();
                    for o in batch {
                        let store = store.clone();
                        let key = o.key.clone();
                        set.spawn(async move { store.delete(&key).await });
                    }
                    while let Some(r) = set.join_next().await {
                        r.map_err(|e| anyhow::anyhow!("delete task: {e}"))??;
                    }
                    anyhow::Ok(())
                })?;
                progress.inc(batch.len() as u64);
            }
            progress.finish("");
        }
        Ok(report)
    })();
    drop(renewer);
    lease.release();
    let mut report = res?;
    print_freed(&report, args.dry_run, args.min_age);
    if args.dry_run || report.sparse_packs == 0 {
        print_repacked(&report, args.dry_run);
        return Ok(());
    }
    if args.break_lease {
        // The mount whose lease was broken may have crashed with changes it never
        // committed; moving the head now would make its cache dir drop them at its next
        // mount. Collecting garbage above never moves the head.
        println!(
            "not repacking {} packs that are mostly deleted files ({} bytes): --break-lease was given, so a crashed mount may still hold uncommitted changes; mount the volume (from that cache dir if it is on this machine) and run gc again",
            report.sparse_packs, report.sparse_bytes
        );
        return Ok(());
    }
    (report.sparse_packs, report.sparse_bytes) = repack_offline(rt, store, keys)?;
    print_repacked(&report, false);
    Ok(())
}

/// Repack an unmounted volume: open it as a mount would, without FUSE, in the volume's
/// default cache dir (where a mount keeps it unless told otherwise: the metadata is loaded
/// from the store only the first time, and the old packs' deletion schedule stays there
/// for the next mount or gc to carry out), run the live mount's repack, commit, let go.
fn repack_offline(
    rt: tokio::runtime::Runtime,
    store: std::sync::Arc<dyn cryptbucket::backend::ObjectStore>,
    keys: std::sync::Arc<cryptbucket::crypto::VolumeKeys>,
) -> Result<(u64, u64)> {
    let vol = cryptbucket::volume::open_unlocked(rt, store, keys, &Default::default())
        .context("cannot open the volume to repack it")?;
    let renewer = vol.lease.renew_in_background(LEASE_RENEW_INTERVAL);
    let r = vol.vfs.repack(false);
    let shut = vol.vfs.shutdown();
    drop(renewer);
    vol.lease.release();
    shut.context("cannot commit the repack")?;
    Ok(r?)
}
