//! Command-line interface: argument types shared by subcommands, store and key resolution.

pub mod config;
pub mod control;
pub mod desktop;
pub mod exit;
pub mod extras;
pub mod fsck;
pub mod gc;
pub mod gen;
pub mod helper;
pub mod idle;
pub mod init;
pub mod key;
pub mod keychain;
pub mod kms;
pub mod logsink;
pub mod metrics;
pub mod mount;
pub mod notify;
pub mod passcmd;
pub mod passwd;
pub mod progress;
pub mod readahead;
pub mod rekey;
pub mod s3opts;
pub mod status;
pub mod sync;
pub mod testhooks;
pub mod ui;
pub mod unmount;

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use zeroize::Zeroizing;

use cryptbucket::backend::fault::{FaultConfig, FaultStore};
use cryptbucket::backend::local::LocalStore;
use cryptbucket::backend::retry::{RetryPolicy, RetryStore};
use cryptbucket::backend::s3::{S3Config, S3Store};
use cryptbucket::backend::sse::SseMode;
use cryptbucket::backend::ObjectStore;
use cryptbucket::crypto::KeySource;
use cryptbucket::volume::{HEADER_BACKUP_KEY, HEADER_KEY};

use exit::UsageError;

#[derive(Parser, Debug)]
#[command(
    name = "cryptbucket",
    version,
    about = "Mount an object-store bucket as an encrypted directory"
)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors (no progress or success messages).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Configuration file (default: ~/.config/cryptbucket/config.toml).
    #[arg(long, global = true, value_name = "FILE", env = "CRYPTBUCKET_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new encrypted volume in STORE.
    Init(init::InitArgs),
    /// Mount the volume in STORE at MOUNTPOINT.
    Mount(mount::MountArgs),
    /// Flush everything to the store and unmount MOUNTPOINT.
    Unmount(unmount::UnmountArgs),
    /// Write everything buffered by live mounts to the store (what syncfs cannot do for FUSE).
    Sync(sync::SyncArgs),
    /// Show what live mounts are doing (uploads waiting, last commit, backend requests).
    Status(status::StatusArgs),
    /// Print a shell completion script (e.g. `cryptbucket completions bash > /etc/bash_completion.d/cryptbucket`).
    Completions(gen::CompletionsArgs),
    /// Print the man page (roff): `cryptbucket manpage > /usr/local/share/man/man1/cryptbucket.1`.
    Manpage,
    /// Manage key slots: list, add (passphrase or keyfile), remove.
    Key(key::KeyCmd),
    /// Change a passphrase (rewrites its key slot only; data is not re-encrypted).
    Passwd(passwd::PasswdArgs),
    /// Check a volume from the bucket alone (header, metadata, chunks); --repair fixes.
    Fsck(fsck::FsckArgs),
    /// Delete chunk objects nothing references (older than a safety delay).
    Gc(gc::GcArgs),
    /// New master key: re-encrypt every chunk and metadata record (resumable; revokes old keys).
    Rekey(rekey::RekeyArgs),
}

#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// A local directory, s3://bucket[/prefix], or the name of a volume in the config file.
    pub store: String,
    /// S3 endpoint URL, for MinIO, Garage or any S3-compatible store.
    #[arg(long, env = "CRYPTBUCKET_ENDPOINT")]
    pub endpoint: Option<String>,
    /// S3 region (default: from the AWS configuration, else us-east-1).
    #[arg(long)]
    pub region: Option<String>,
    #[command(flatten)]
    pub s3: s3opts::S3Args,
    /// How long a store request keeps being retried while the store fails or is
    /// unreachable before the operation gives up (a mount then answers EIO, keeping what
    /// it buffered locally). Default 60.
    // No clap default: None means "not on the command line", so the config file can set it.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub io_timeout: Option<u64>,
}

/// Default for `--io-timeout`, in seconds.
pub const DEFAULT_IO_TIMEOUT_SECS: u64 = 60;

/// Wrap a store in retries within `--io-timeout`, and (tests only) in injected faults when
/// CRYPTBUCKET_TEST_FAULTS is set (see docs/CONFIGURATION.md).
fn with_retries<S: ObjectStore + 'static>(s: S, args: &StoreArgs) -> Result<Arc<dyn ObjectStore>> {
    let secs = args.io_timeout.unwrap_or(DEFAULT_IO_TIMEOUT_SECS);
    let policy = RetryPolicy::with_io_timeout(Duration::from_secs(secs));
    match std::env::var("CRYPTBUCKET_TEST_FAULTS") {
        Ok(spec) if !spec.is_empty() => {
            let cfg = FaultConfig::parse(&spec)
                .map_err(|e| anyhow::anyhow!("CRYPTBUCKET_TEST_FAULTS: {e}"))?;
            tracing::warn!("injecting store faults ({spec}): for tests only");
            Ok(Arc::new(RetryStore::with_policy(
                FaultStore::new(s, cfg),
                policy,
            )))
        }
        _ => Ok(Arc::new(RetryStore::with_policy(s, policy))),
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct KeyArgs {
    /// Read the passphrase from this file (first line). Also: CRYPTBUCKET_PASSPHRASE.
    #[arg(long, conflicts_with = "keyfile")]
    pub passphrase_file: Option<PathBuf>,
    /// Use a keyfile instead of a passphrase (init creates it, mode 0600, if missing).
    #[arg(long)]
    pub keyfile: Option<PathBuf>,
    /// Run CMD (with sh -c) and use the first line it prints as the passphrase.
    #[arg(long, value_name = "CMD", conflicts_with_all = ["keyfile", "passphrase_file"])]
    pub passphrase_command: Option<String>,
    /// Unlock with a KMS key slot (one KMS Decrypt). Also automatic when no passphrase or
    /// keyfile is given and the volume has a KMS slot.
    #[arg(long, conflicts_with_all = ["keyfile", "passphrase_file", "passphrase_command"])]
    pub kms: bool,
    /// KMS endpoint URL (default: AWS_ENDPOINT_URL_KMS, AWS_ENDPOINT_URL, else AWS).
    #[arg(long, value_name = "URL", env = "CRYPTBUCKET_KMS_ENDPOINT")]
    pub kms_endpoint: Option<String>,
}

/// The new secret for `key add` and `passwd`.
#[derive(Args, Debug, Clone)]
pub struct NewKeyArgs {
    /// Read the new passphrase from this file (first line). Also: CRYPTBUCKET_NEW_PASSPHRASE.
    #[arg(long, conflicts_with = "new_keyfile")]
    pub new_passphrase_file: Option<PathBuf>,
    /// (key add) Add a keyfile slot; FILE is created (32 random bytes, mode 0600) if missing.
    #[arg(long)]
    pub new_keyfile: Option<PathBuf>,
    /// (key add) Add an AWS KMS slot under this key (ARN, key id or alias/NAME).
    #[arg(long, value_name = "ARN", conflicts_with_all = ["new_keyfile", "new_passphrase_file"])]
    pub kms_key_id: Option<String>,
}

pub enum StoreLocation {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

pub fn parse_store(s: &str) -> Result<StoreLocation> {
    if let Some(rest) = s.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!(UsageError(format!(
                "{s}: missing bucket name; write the store as s3://bucket[/prefix]"
            )));
        }
        return Ok(StoreLocation::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        });
    }
    if s.contains("://") {
        bail!(UsageError(format!(
            "{s}: unsupported store; give a local directory, s3://bucket[/prefix], or a volume name from the config file"
        )));
    }
    Ok(StoreLocation::Local(PathBuf::from(s)))
}

/// Connect to the store, wrapped in retries. `create_local` makes a missing local directory.
pub fn open_store(
    rt: &tokio::runtime::Runtime,
    args: &StoreArgs,
    create_local: bool,
) -> Result<Arc<dyn ObjectStore>> {
    let store: Arc<dyn ObjectStore> = match parse_store(&args.store)? {
        StoreLocation::Local(dir) => {
            if args.endpoint.is_some() || args.s3.any() {
                bail!(UsageError("--endpoint, --sse*, --ca-bundle and --allow-insecure-http only apply to s3:// stores; drop them for a local directory".into()));
            }
            let s = if create_local {
                LocalStore::create(&dir)
            } else {
                LocalStore::open(&dir)
            };
            with_retries(
                s.with_context(|| format!("cannot use local store {}", dir.display()))?,
                args,
            )?
        }
        StoreLocation::S3 { bucket, prefix } => {
            let mut cfg = S3Config::new(bucket.clone(), args.endpoint.clone()).with_prefix(prefix);
            cfg.region = args.region.clone();
            args.s3.apply_transport(&mut cfg)?;
            // The header stays readable without the SSE-C key: it says whether one is needed.
            cfg.sse_c_exempt = vec![HEADER_KEY.to_string(), HEADER_BACKUP_KEY.to_string()];
            let (cli_mode, cli_key) = args.s3.sse()?;
            if create_local {
                // init: the command line decides (and init stores it in the header).
                cfg.sse = cli_mode.clone();
                cfg.sse_customer_key = cli_key.clone();
            }
            let mut s = rt
                .block_on(async {
                    tokio::time::timeout(Duration::from_secs(60), S3Store::connect(cfg)).await
                })
                .map_err(|_| anyhow::anyhow!("timed out connecting to the S3 store"))?
                .with_context(|| format!("cannot use S3 bucket {bucket}"))?;
            if !create_local {
                let stored = rt.block_on(cryptbucket::volume::peek_ext(&s))?;
                if let Some(ext) = stored {
                    let stored = SseMode::from_ext(&ext)?;
                    let (mode, key) = s3opts::resolve_sse(stored, cli_mode, cli_key)?;
                    s.set_sse(mode, key)?;
                } else {
                    s.set_sse(cli_mode, cli_key)?;
                }
            }
            with_retries(s, args)?
        }
    };
    Ok(store)
}

fn read_secret_file(path: &PathBuf, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    Ok(buf)
}

/// Read a keyfile, or (with `create`) make a new random one, mode 0600, if it does not exist.
pub fn keyfile_source(path: &PathBuf, create: bool) -> Result<KeySource> {
    if !path.exists() && create {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let bytes = cryptbucket::crypto::generate_keyfile_bytes();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create keyfile {}", path.display()))?;
        f.write_all(&bytes)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("cannot write keyfile {}", path.display()))?;
        eprintln!(
            "created keyfile {} (keep a copy somewhere safe: without it the volume cannot be opened)",
            path.display()
        );
        return Ok(KeySource::Keyfile(bytes));
    }
    let bytes = read_secret_file(path, "keyfile")?;
    if bytes.len() < 16 {
        bail!(
            "keyfile {} is too short ({} bytes; at least 16 needed)",
            path.display(),
            bytes.len()
        );
    }
    Ok(KeySource::Keyfile(bytes))
}

/// The first line of a passphrase file.
pub fn passphrase_file(path: &PathBuf) -> Result<KeySource> {
    let bytes = read_secret_file(path, "passphrase file")?;
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|_| {
            anyhow::anyhow!(
                "passphrase file {} is not UTF-8 text; save the passphrase as UTF-8 (or use it as a --keyfile)",
                path.display()
            )
        })?;
    let pass = Zeroizing::new(text.lines().next().unwrap_or("").to_string());
    drop(Zeroizing::new(text));
    check_pass(pass)
}

/// Resolve the new secret of `key add` / `passwd`: new keyfile (created if missing, when
/// `allow_keyfile`), new passphrase file, CRYPTBUCKET_NEW_PASSPHRASE, or a prompt (twice).
pub fn new_key_source(args: &NewKeyArgs, allow_keyfile: bool) -> Result<KeySource> {
    if let Some(path) = &args.new_keyfile {
        if !allow_keyfile {
            bail!(UsageError(
                "--new-keyfile is only for `key add`; `passwd` changes a passphrase".into()
            ));
        }
        return keyfile_source(path, true);
    }
    if let Some(path) = &args.new_passphrase_file {
        return passphrase_file(path);
    }
    if let Ok(p) = std::env::var("CRYPTBUCKET_NEW_PASSPHRASE") {
        std::env::remove_var("CRYPTBUCKET_NEW_PASSPHRASE");
        return check_pass(Zeroizing::new(p));
    }
    if !std::io::stdin().is_terminal() {
        bail!(UsageError("no new key: pass --new-passphrase-file FILE, --new-keyfile FILE, or set CRYPTBUCKET_NEW_PASSPHRASE (no terminal to ask on)".into()));
    }
    let p = Zeroizing::new(rpassword::prompt_password("New passphrase: ")?);
    let again = Zeroizing::new(rpassword::prompt_password("New passphrase (again): ")?);
    if *again != *p {
        bail!("the two passphrases differ; nothing was changed");
    }
    check_pass(p)
}

/// Resolve the key source: keyfile, passphrase file, environment, or terminal prompt.
/// `confirm` asks twice (init). `create_keyfile` makes a missing keyfile (init).
pub fn key_source(args: &KeyArgs, confirm: bool, create_keyfile: bool) -> Result<KeySource> {
    if let Some(path) = &args.keyfile {
        return keyfile_source(path, create_keyfile);
    }
    if let Some(path) = &args.passphrase_file {
        return passphrase_file(path);
    }
    if let Some(cmd) = &args.passphrase_command {
        return check_pass(passcmd::run(cmd)?);
    }
    if let Ok(p) = std::env::var("CRYPTBUCKET_PASSPHRASE") {
        std::env::remove_var("CRYPTBUCKET_PASSPHRASE");
        return check_pass(Zeroizing::new(p));
    }
    if !std::io::stdin().is_terminal() {
        bail!(UsageError("no passphrase: pass --passphrase-file FILE, --keyfile FILE, --passphrase-command CMD, or set CRYPTBUCKET_PASSPHRASE (no terminal to ask on)".into()));
    }
    let p = Zeroizing::new(rpassword::prompt_password("Passphrase: ")?);
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("Passphrase (again): ")?);
        if *again != *p {
            bail!("the two passphrases differ; nothing was created");
        }
    }
    check_pass(p)
}

fn check_pass(p: Zeroizing<String>) -> Result<KeySource> {
    if p.is_empty() {
        bail!(UsageError(
            "the passphrase is empty; type it (or fix the file, variable or command that supplies it)".into()
        ));
    }
    Ok(KeySource::Passphrase(p))
}
