//! Mount options for everyday desktop use (idle timeout, notifications, the keyring) and the
//! glue `mount` calls for them, kept out of mount.rs so that file stays small.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use zeroize::Zeroizing;

use cryptbucket::crypto::KeySource;

use super::mount::MountArgs;
use super::{key_source, keychain};

#[derive(Args, Debug, Clone, Default)]
pub struct DeskArgs {
    /// Unmount after this long with no file-system activity and no open or unsaved files
    /// (e.g. 15m, 1h30m; 0 = never). Config: idle_timeout.
    #[arg(long, value_name = "DURATION", value_parser = super::idle::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Show a desktop notification (notify-send) when the mount hits a problem it cannot
    /// fix by retrying. Config: notify = true.
    #[arg(long, conflicts_with = "no_notify")]
    pub notify: bool,
    /// No desktop notifications, even if the config file turns them on.
    #[arg(long)]
    pub no_notify: bool,
    /// After a successful mount, save the passphrase in the desktop keyring (Secret
    /// Service); later mounts use it without asking. Undo: `cryptbucket key forget STORE`.
    #[arg(long, conflicts_with = "keyfile")]
    pub remember_passphrase: bool,
}

/// Whether the command line or the environment already chose a key source.
/// The key for `mount`: an explicit source, else a passphrase saved in the desktop keyring,
/// else the prompt. Also what to save in the keyring once the mount works.
pub fn mount_key(args: &MountArgs) -> Result<(KeySource, Option<Remember>)> {
    let account = keychain::account(&args.store);
    if !super::kms::explicit_secret(&args.key) && !args.key.kms && !args.desk.remember_passphrase {
        if let Some(p) = keychain::lookup(&account) {
            tracing::info!("using the passphrase saved in the desktop keyring for {account}");
            return Ok((KeySource::Passphrase(p), None));
        }
    }
    // A KMS slot (with --kms, or when the volume has one and no secret was given), else
    // the prompt.
    let key = super::kms::resolve_key_once(&args.store, &args.key)?;
    let remember = match (&key, args.desk.remember_passphrase) {
        (KeySource::Passphrase(p), true) => Some(Remember {
            account,
            pass: p.clone(),
        }),
        _ => None,
    };
    Ok((key, remember))
}

/// A passphrase to save once it has opened the volume.
pub struct Remember {
    account: String,
    pass: Zeroizing<String>,
}

impl Remember {
    /// Save it; a keyring failure does not undo the mount, it is reported.
    pub fn save(self) {
        match keychain::save(&self.account, &self.pass) {
            Ok(()) => {
                if !super::ui::quiet() {
                    eprintln!(
                        "passphrase saved in the desktop keyring (forget it with: cryptbucket key forget {})",
                        self.account
                    );
                }
            }
            Err(e) => eprintln!("warning: mounted, but {e:#}"),
        }
    }
}

/// Fill idle timeout and notifications from the config file where the command line is silent.
pub fn apply_config(args: &mut MountArgs, idle: Option<Duration>, notify: Option<bool>) {
    if args.desk.idle_timeout.is_none() {
        args.desk.idle_timeout = idle;
    }
    if !args.desk.notify && !args.desk.no_notify {
        args.desk.notify = notify.unwrap_or(false);
    }
}

/// Whether our stderr is the journal stream systemd gave us (JOURNAL_STREAM=dev:ino), so a
/// daemon under systemd logs to journald instead of a file.
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let v = v.to_string_lossy();
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: fstat fills a plain struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev == dev && st.st_ino == ino
}

/// `key remember`: check the passphrase opens the volume, then save it.
pub fn remember(
    rt: &tokio::runtime::Runtime,
    store: &super::StoreArgs,
    key: &super::KeyArgs,
) -> Result<()> {
    let source = key_source(key, false, false)?;
    let KeySource::Passphrase(pass) = &source else {
        anyhow::bail!(super::exit::UsageError(
            "only a passphrase can be saved in the desktop keyring, not a keyfile (keep the keyfile itself safe instead)".into()
        ));
    };
    let s = super::open_store(rt, store, false)?;
    cryptbucket::volume::unlock(rt, &s, &source)
        .map_err(anyhow::Error::new)
        .map_err(|e| e.context("nothing was saved in the keyring"))?;
    let account = keychain::account(store);
    keychain::save(&account, pass)?;
    if !super::ui::quiet() {
        println!("saved the passphrase for {account} in the desktop keyring; `cryptbucket mount` uses it without asking\nforget it with: cryptbucket key forget {}", store.store);
    }
    Ok(())
}

/// `key forget`: remove a saved passphrase.
pub fn forget(store: &super::StoreArgs) -> Result<()> {
    let account = keychain::account(store);
    if keychain::forget(&account)? {
        if !super::ui::quiet() {
            println!("removed the passphrase for {account} from the desktop keyring");
        }
        Ok(())
    } else {
        anyhow::bail!(super::exit::UsageError(format!(
            "no passphrase is saved in the desktop keyring for {account} (nothing to forget)"
        )))
    }
}
