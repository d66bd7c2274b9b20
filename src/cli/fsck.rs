//! `cryptbucket fsck STORE [--full] [--repair]`: check a volume from the bucket alone.
//! Exit codes (docs/CONFIGURATION.md): 0 no errors (orphans and warnings may be listed),
//! 1 the check could not run, 2 usage, 3 errors found and left, 4 errors found and all
//! repaired.

use anyhow::{Context, Result};
use clap::Args;

use cryptbucket::fsck::{self, Event, FsckOptions};

use super::exit;
use super::progress::{Progress, Unit};
use super::{key_source, open_store, KeyArgs, StoreArgs};

#[derive(Args, Debug)]
pub struct FsckArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Also download every chunk and authenticate every block (reads the whole volume).
    #[arg(long)]
    pub full: bool,
    /// Fix what can be fixed without losing data: rewrite a damaged header copy from the
    /// intact one, move damaged files to /lost+found. Takes the writer lease: refused while
    /// the volume is mounted.
    #[arg(long)]
    pub repair: bool,
    /// With --repair: take over a writer lease that expired (its mount is gone).
    #[arg(long, requires = "repair")]
    pub break_lease: bool,
    /// List every orphan chunk object (default: only how many).
    #[arg(long)]
    pub list_orphans: bool,
}

/// A private scratch cache dir for the repair's own metadata copy, removed afterwards.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let p = std::env::temp_dir().join(format!(
            "cryptbucket-fsck-{}",
            cryptbucket::crypto::ChunkId::random().to_hex()
        ));
        std::fs::create_dir(&p).with_context(|| format!("cannot create {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Draws the library's progress events with the shared progress display.
pub(super) struct Bar(Option<Progress>);

impl Bar {
    pub(super) fn new() -> Self {
        Bar(None)
    }

    pub(super) fn event(&mut self, e: Event) {
        match e {
            Event::Phase(label, total, bytes) => {
                if let Some(p) = self.0.take() {
                    p.finish("");
                }
                let unit = if bytes { Unit::Bytes } else { Unit::Items };
                self.0 = Some(Progress::new(label, total, unit));
            }
            Event::Advance(n) => {
                if let Some(p) = &self.0 {
                    p.inc(n);
                }
            }
        }
    }

    pub(super) fn done(&mut self) {
        if let Some(p) = self.0.take() {
            p.finish("");
        }
    }
}

pub fn run(mut args: FsckArgs) -> Result<()> {
    // A volume name from the config file, as for mount.
    super::config::apply(&mut args.store, &mut args.key)?;
    let rt = cryptbucket::volume::runtime()?;
    let store = open_store(&rt, &args.store, false)?;
    let key = key_source(&args.key, false, false)?;
    // With --repair the lease is taken first, so nothing changes between check and repair.
    let (vol, _tmp) = if args.repair {
        let tmp = TempDir::new()?;
        let opts = cryptbucket::volume::OpenOptions {
            cache_dir: Some(tmp.0.clone()),
            break_lease: args.break_lease,
            ..Default::default()
        };
        let vrt = cryptbucket::volume::runtime()?;
        let vol = cryptbucket::volume::open_with(vrt, store.clone(), &key, &opts)
            .context("cannot take the volume for repair")?;
        (Some(vol), Some(tmp))
    } else {
        (None, None)
    };
    let mut bar = Bar::new();
    let report = fsck::check(
        &rt,
        &store,
        &key,
        FsckOptions { full: args.full },
        &mut |e| bar.event(e),
    );
    bar.done();
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            if let Some(v) = vol {
                v.lease.release();
            }
            return Err(e.into());
        }
    };
    for f in &report.findings {
        println!("{f}");
    }
    if !report.orphans.is_empty() {
        let bytes: u64 = report.orphans.iter().map(|o| o.size).sum();
        println!(
            "{} orphan chunk objects ({bytes} bytes) are referenced by no metadata (normal after a crash or during uploads; `cryptbucket gc` removes them)",
            report.orphans.len()
        );
        if args.list_orphans {
            for o in &report.orphans {
                println!("  orphan {} ({} bytes)", o.key, o.size);
            }
        }
    }
    if report.packs > 0 {
        println!(
            "packs: {} objects hold small files together; {} bytes in them belong to deleted files (freed with each pack's last file)",
            report.packs, report.pack_dead_bytes
        );
    }
    let errors = report.errors();
    println!(
        "checked commit {}: {} files, {} chunks ({} bytes of data){}; {} errors, {} warnings",
        report.head_seq.map_or("-".into(), |s| s.to_string()),
        report.files,
        report.chunks,
        report.chunk_bytes,
        if args.full {
            format!(", {} bytes authenticated", report.verified_bytes)
        } else {
            String::new()
        },
        errors,
        report.findings.len() - errors,
    );
    let mut code = if errors > 0 { exit::PROBLEMS } else { 0 };
    if let Some(vol) = vol {
        let mut fixed = Vec::new();
        let res = (|| -> Result<()> {
            fixed.extend(fsck::repair_header(&rt, &store, &report)?);
            fixed.extend(fsck::repair_files(&vol, &report)?);
            Ok(())
        })();
        let unmounted = vol.unmount();
        res?;
        unmounted.context("could not write the repaired metadata")?;
        for line in &fixed {
            println!("repaired: {line}");
        }
        let unfixable = report.findings.iter().any(|f| {
            f.severity == fsck::Severity::Error
                && matches!(
                    f.problem,
                    fsck::Problem::Metadata | fsck::Problem::HeaderCopiesDiffer
                )
        });
        if errors > 0 && !unfixable {
            code = exit::REPAIRED;
        }
    }
    if code != 0 {
        // Findings are printed; the code says what kind of outcome this was.
        std::process::exit(code);
    }
    Ok(())
}
