//! `cryptbucket rekey`: a new master key, every chunk and metadata record re-sealed under it
//! (resumable: run it again after an interruption), with a progress bar.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use cryptbucket::crypto::{argon2_params_from_env, KeySource};
use cryptbucket::rekey::{RekeyEvent, RekeyRequest};

use super::progress::{Progress, Unit};
use super::{keyfile_source, open_store, passphrase_file, KeyArgs, StoreArgs};

#[derive(Args, Debug)]
pub struct RekeyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Keep another passphrase slot: read its passphrase from FILE (repeatable).
    #[arg(long, value_name = "FILE")]
    pub extra_passphrase_file: Vec<PathBuf>,
    /// Keep another keyfile slot: its keyfile (repeatable).
    #[arg(long, value_name = "FILE")]
    pub extra_keyfile: Vec<PathBuf>,
    /// Remove the passphrase and keyfile slots whose secret was not given (instead of
    /// refusing). KMS slots are always kept (each gets a new data key).
    #[arg(long)]
    pub drop_other_slots: bool,
}

pub fn run(mut args: RekeyArgs) -> Result<()> {
    super::config::apply(&mut args.store, &mut args.key)?;
    let rt = cryptbucket::volume::runtime()?;
    let store = open_store(&rt, &args.store, false)?;
    let source = super::kms::resolve_key(&rt, &store, &args.store, &args.key)?;
    let mut extra = Vec::new();
    for p in &args.extra_passphrase_file {
        extra.push(passphrase_file(p)?);
    }
    for p in &args.extra_keyfile {
        extra.push(keyfile_source(p, false)?);
    }
    let kms_slots = cryptbucket::admin::kms_slots(&rt, &store)?;
    let kms = if kms_slots.is_empty() && !matches!(source, KeySource::Kms(_)) {
        None
    } else {
        let first = kms_slots.first().map(|(_, s)| s.key_id.clone());
        Some(super::kms::client(
            &rt,
            &args.store,
            &args.key,
            first.as_deref(),
        )?)
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let req = RekeyRequest {
        source: &source,
        extra: &extra,
        drop_others: args.drop_other_slots,
        kms: kms.as_ref(),
        kdf: argon2_params_from_env(),
        holder: format!("rekey@{host}"),
    };
    let started = Instant::now();
    let mut bar: Option<Progress> = None;
    let report = cryptbucket::rekey::rekey(&rt, &store, &req, &mut |ev| match ev {
        RekeyEvent::Step(s) => match &bar {
            Some(b) => b.println(&s),
            None if !super::ui::quiet() => eprintln!("{s}"),
            None => {}
        },
        RekeyEvent::Total { bytes, .. } => {
            bar = Some(Progress::new("re-encrypting", bytes, Unit::Bytes));
        }
        RekeyEvent::Chunk(n) => {
            if let Some(b) = &bar {
                b.inc(n);
            }
        }
    })
    .context("rekey failed")?;
    if let Some(b) = &bar {
        b.finish("re-encrypted");
    }
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    if report.resumed {
        println!("finished the interrupted rekey");
    }
    println!(
        "rekeyed {}: {} chunks ({:.1} MB) re-encrypted in {:.1} s ({:.0} objects/s, {:.1} MB/s); {} old objects deleted; {} key slot(s)",
        store.describe(),
        report.chunks,
        report.bytes as f64 / 1e6,
        secs,
        report.chunks as f64 / secs,
        report.bytes as f64 / 1e6 / secs,
        report.deleted_old,
        report.slots
    );
    if !report.dropped_slots.is_empty() {
        let list: Vec<String> = report.dropped_slots.iter().map(|i| i.to_string()).collect();
        eprintln!(
            "note: key slot(s) {} of the old header were removed (--drop-other-slots); add them again with `key add`",
            list.join(", ")
        );
    }
    Ok(())
}
