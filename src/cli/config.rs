//! The configuration file: named volumes (store, endpoint, region, AWS profile, cache dir
//! and sizes, key source, mountpoint, S3 transport and SSE options) in TOML, and how they fill in what the command line left out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::exit::UsageError;
use super::mount::MountArgs;
use super::{KeyArgs, StoreArgs};

/// The whole file: `[volumes.NAME]` tables and nothing else.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumeConfig>,
}

/// One named volume. Every field but `store` is optional; docs/CONFIGURATION.md lists them.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    /// A local directory, or s3://bucket[/prefix].
    pub store: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// AWS profile (sets AWS_PROFILE unless the environment already has one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mountpoint: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyfile: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passphrase_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passphrase_command: Option<String>,
    /// Unlock with the volume's KMS key slot (`--kms`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kms: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_other: bool,
    /// Unmount after this long idle ("15m", "1h30m"; see --idle-timeout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Desktop notifications on errors that retrying cannot fix (--notify).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify: Option<bool>,
    /// Seconds between metadata commits (`--commit-interval`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_interval: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sync_on_close: bool,
    /// Bound of the disk cache of chunks ("2G"; `--cache-size`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_size: Option<String>,
    /// Cap on staged written data ("1G"; `--staging-size`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staging_size: Option<String>,
    /// Microseconds the FUSE thread polls for the next request before sleeping (`--spin-us`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spin_us: Option<u64>,
    /// Seconds a store request keeps being retried (`--io-timeout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_timeout: Option<u64>,
    /// Idle time before sparse packs are rewritten ("15m", "0" = never; `--repack-interval`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repack_interval: Option<String>,
    /// Kernel read-ahead window in KiB (0 = the kernel's; `--read-ahead-kb`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_ahead_kb: Option<u32>,
    /// (S3) PEM file of trusted CA certificates, replacing the system roots (`--ca-bundle`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<PathBuf>,
    /// (S3) Server-side encryption mode: AES256, aws:kms, aws:kms:dsse (`--sse`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sse: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sse_kms_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bucket_key: bool,
    /// (S3) SSE-C key file (`--sse-c-key-file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sse_c_key_file: Option<PathBuf>,
}

/// `--config FILE` as given on the command line (set once by main).
static CONFIG_PATH: OnceLock<Option<PathBuf>> = OnceLock::new();

pub fn set_path(p: Option<PathBuf>) {
    let _ = CONFIG_PATH.set(p);
}

/// The default location: `$XDG_CONFIG_HOME/cryptbucket/config.toml`.
pub fn default_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("cryptbucket").join("config.toml"))
}

impl Config {
    pub fn parse(text: &str, origin: &Path) -> Result<Config> {
        let mut cfg: Config = toml::from_str(text)
            .map_err(|e| UsageError(format!("in config file {}: {e}", origin.display())))?;
        let base = origin.parent().unwrap_or(Path::new("/"));
        for (name, v) in cfg.volumes.iter_mut() {
            if let Err(p) = v.check() {
                bail!(UsageError(describe(text, origin, name, &p)));
            }
            v.resolve_paths(base);
        }
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| UsageError(format!("cannot read config file {}: {e}", path.display())))?;
        Config::parse(&text, path)
    }

    /// The file given with --config (must exist), else the default one if it exists.
    pub fn load_selected() -> Result<Option<(PathBuf, Config)>> {
        if let Some(Some(p)) = CONFIG_PATH.get() {
            return Ok(Some((p.clone(), Config::load(p)?)));
        }
        match default_path() {
            Some(p) if p.exists() => {
                let c = Config::load(&p)?;
                Ok(Some((p, c)))
            }
            _ => Ok(None),
        }
    }
}

/// A value the parser accepted but that makes no sense: which keys it is about (the first
/// is the one pointed at; none: the whole volume) and why.
#[derive(Debug)]
struct Problem {
    keys: Vec<&'static str>,
    msg: String,
}

fn problem(keys: &[&'static str], msg: impl Into<String>) -> Problem {
    Problem {
        keys: keys.to_vec(),
        msg: msg.into(),
    }
}

impl VolumeConfig {
    fn check(&self) -> std::result::Result<(), Problem> {
        let key_sources: Vec<&'static str> = [
            ("kms", self.kms),
            ("keyfile", self.keyfile.is_some()),
            ("passphrase_file", self.passphrase_file.is_some()),
            ("passphrase_command", self.passphrase_command.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        if key_sources.len() > 1 {
            return Err(Problem {
                msg: format!(
                    "sets more than one key source ({}); pick one of kms, keyfile, passphrase_file, passphrase_command",
                    key_sources.join(", ")
                ),
                keys: key_sources,
            });
        }
        if let Some(t) = &self.idle_timeout {
            super::idle::parse_duration(t).map_err(|e| problem(&["idle_timeout"], e))?;
        }
        if let Some(t) = &self.repack_interval {
            super::idle::parse_duration(t).map_err(|e| problem(&["repack_interval"], e))?;
        }
        if self
            .commit_interval
            .is_some_and(|s| !(1..=3600).contains(&s))
        {
            return Err(problem(&["commit_interval"], "must be 1 to 3600 seconds"));
        }
        for (key, v) in [
            ("cache_size", &self.cache_size),
            ("staging_size", &self.staging_size),
        ] {
            if let Some(Err(e)) = v.as_deref().map(super::mount::parse_size) {
                return Err(problem(&[key], e));
            }
        }
        if self
            .spin_us
            .is_some_and(|us| us > cryptbucket::fuse::SPIN_US_MAX)
        {
            let max = cryptbucket::fuse::SPIN_US_MAX;
            return Err(problem(
                &["spin_us"],
                format!("must be 0 to {max} microseconds"),
            ));
        }
        if self
            .read_ahead_kb
            .is_some_and(|kb| kb > super::readahead::READ_AHEAD_KB_MAX)
        {
            let max = super::readahead::READ_AHEAD_KB_MAX;
            return Err(problem(
                &["read_ahead_kb"],
                format!("must be 0 to {max} KiB"),
            ));
        }
        if self.io_timeout == Some(0) {
            return Err(problem(&["io_timeout"], "must be at least 1 second"));
        }
        if self.sse.is_some() && self.sse_c_key_file.is_some() {
            return Err(problem(
                &["sse_c_key_file", "sse"],
                "both sse and sse_c_key_file are set (SSE-C is its own mode; pick one)",
            ));
        }
        if let Some(mode) = &self.sse {
            cryptbucket::backend::sse::SseMode::from_flag(
                mode,
                self.sse_kms_key_id.clone(),
                self.bucket_key,
            )
            .map_err(|e| problem(&["sse"], e.to_string()))?;
        } else if self.sse_kms_key_id.is_some() || self.bucket_key {
            let key = if self.bucket_key {
                "bucket_key"
            } else {
                "sse_kms_key_id"
            };
            return Err(problem(
                &[key],
                "sse_kms_key_id and bucket_key need sse = \"aws:kms\" (or \"aws:kms:dsse\")",
            ));
        }
        if self.store.is_empty() {
            return Err(problem(
                &["store"],
                "is empty: give a directory or s3://bucket[/prefix]",
            ));
        }
        if !self.store.starts_with("s3://") {
            let s3_only = [
                ("ca_bundle", self.ca_bundle.is_some()),
                ("sse", self.sse.is_some()),
                ("sse_kms_key_id", self.sse_kms_key_id.is_some()),
                ("bucket_key", self.bucket_key),
                ("sse_c_key_file", self.sse_c_key_file.is_some()),
            ];
            if let Some((key, _)) = s3_only.iter().find(|k| k.1) {
                return Err(problem(
                    &[key],
                    "only applies to s3:// stores, and this one is a local directory",
                ));
            }
        }
        Ok(())
    }

    /// `~/` means the home directory; relative paths are relative to the config file.
    fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.cache_dir,
            &mut self.mountpoint,
            &mut self.keyfile,
            &mut self.passphrase_file,
            &mut self.ca_bundle,
            &mut self.sse_c_key_file,
        ]
        .into_iter()
        .flatten()
        {
            *p = expand(p, base);
        }
        if !self.store.contains("://") {
            self.store = expand(Path::new(&self.store), base)
                .to_string_lossy()
                .into_owned();
        }
    }
}

/// A problem found after parsing, told like a parse error: the file, the line, the key,
/// and the line itself with the key underlined.
fn describe(text: &str, origin: &Path, volume: &str, p: &Problem) -> String {
    let first = p.keys.first().copied();
    let key = first.map(|k| format!(", key `{k}`")).unwrap_or_default();
    // Point at the key the message is about, else at the volume's table.
    let spot = match first {
        Some(k) => locate(text, volume, Some(k)),
        None => None,
    }
    .or_else(|| locate(text, volume, None));
    let Some(span) = spot else {
        return format!(
            "in config file {}: volume `{volume}`{key}: {}",
            origin.display(),
            p.msg
        );
    };
    let line_no = text[..span.start].matches('\n').count() + 1;
    let line_start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let col = text[line_start..span.start].chars().count();
    let width = text[span.start..span.end.min(line_start + line.len())]
        .chars()
        .count()
        .max(1);
    let gutter = " ".repeat(line_no.to_string().len());
    format!(
        "in config file {}: line {line_no}, volume `{volume}`{key}: {}\n{gutter} |\n{line_no} | {line}\n{gutter} | {}{}",
        origin.display(),
        p.msg,
        " ".repeat(col),
        "^".repeat(width)
    )
}

/// Byte range of `key` in the table of volume `volume` (or of the volume's own name).
fn locate(text: &str, volume: &str, key: Option<&str>) -> Option<std::ops::Range<usize>> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    fn find<'a, 'i>(
        t: &'a DeTable<'i>,
        name: &str,
    ) -> Option<(std::ops::Range<usize>, &'a toml::Spanned<DeValue<'i>>)> {
        t.iter()
            .find(|(k, _)| k.get_ref() == name)
            .map(|(k, v)| (k.span(), v))
    }
    let (_, vols) = find(doc.get_ref(), "volumes")?;
    let DeValue::Table(vols) = vols.get_ref() else {
        return None;
    };
    let (vspan, vol) = find(vols, volume)?;
    let Some(key) = key else {
        return Some(vspan);
    };
    let DeValue::Table(t) = vol.get_ref() else {
        return None;
    };
    find(t, key).map(|(span, _)| span)
}

fn expand(p: &Path, base: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~") {
        if let Some(home) = dirs::home_dir() {
            return home.join(rest);
        }
    }
    if p.is_relative() {
        return base.join(p);
    }
    p.to_path_buf()
}

/// Whether a STORE argument is a volume name to look up (no `/`, no scheme).
pub fn looks_like_name(s: &str) -> bool {
    !s.is_empty() && !s.contains('/') && !s.contains("://") && s != "." && s != ".."
}

/// What the configuration adds to one command.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub cache_dir: Option<PathBuf>,
    pub mountpoint: Option<PathBuf>,
    pub allow_other: bool,
    pub profile: Option<String>,
    pub idle_timeout: Option<std::time::Duration>,
    pub notify: Option<bool>,
    pub commit_interval: Option<u64>,
    pub sync_on_close: bool,
    pub cache_size: Option<u64>,
    pub staging_size: Option<u64>,
    pub spin_us: Option<u64>,
    pub repack_interval: Option<std::time::Duration>,
    pub read_ahead_kb: Option<u32>,
}

/// If `store.store` names a volume of the configuration, replace it with that volume's store
/// and fill in every option the command line left out. Command-line flags (and
/// CRYPTBUCKET_PASSPHRASE / AWS_PROFILE from the environment) win over the file.
pub fn apply(store: &mut StoreArgs, key: &mut KeyArgs) -> Result<Applied> {
    if !looks_like_name(&store.store) {
        return Ok(Applied::default());
    }
    let Some((path, cfg)) = Config::load_selected()? else {
        return Ok(Applied::default());
    };
    let Some(v) = cfg.volumes.get(&store.store) else {
        if Path::new(&store.store).exists() {
            return Ok(Applied::default()); // a local directory in the current directory
        }
        let names: Vec<&str> = cfg.volumes.keys().map(String::as_str).collect();
        bail!(UsageError(format!(
            "no volume named `{}` in config file {} (it has: {}); for a local directory of that name write ./{}",
            store.store,
            path.display(),
            if names.is_empty() { "none".to_string() } else { names.join(", ") },
            store.store
        )));
    };
    tracing::debug!("volume `{}` from {}", store.store, path.display());
    let applied = merge(
        v,
        store,
        key,
        std::env::var_os("CRYPTBUCKET_PASSPHRASE").is_some(),
    );
    if let Some(p) = &applied.profile {
        if std::env::var_os("AWS_PROFILE").is_none() {
            std::env::set_var("AWS_PROFILE", p);
        }
    }
    Ok(applied)
}

/// Fill `store`/`key` from `v` where the command line left them empty.
pub fn merge(
    v: &VolumeConfig,
    store: &mut StoreArgs,
    key: &mut KeyArgs,
    env_pass: bool,
) -> Applied {
    store.store = v.store.clone();
    if store.endpoint.is_none() {
        store.endpoint = v.endpoint.clone();
    }
    if store.region.is_none() {
        store.region = v.region.clone();
    }
    let cli_key = key.keyfile.is_some()
        || key.passphrase_file.is_some()
        || key.passphrase_command.is_some()
        || env_pass;
    if !cli_key && !key.kms {
        key.keyfile = v.keyfile.clone();
        key.passphrase_file = v.passphrase_file.clone();
        key.passphrase_command = v.passphrase_command.clone();
        key.kms = v.kms;
    }
    if key.kms_endpoint.is_none() {
        key.kms_endpoint = v.kms_endpoint.clone();
    }
    if store.io_timeout.is_none() {
        store.io_timeout = v.io_timeout;
    }
    let s3 = &mut store.s3;
    if s3.ca_bundle.is_none() {
        s3.ca_bundle = v.ca_bundle.clone();
    }
    // As with key sources, an SSE option on the command line replaces the file's SSE
    // settings as a whole (mixing them could combine SSE-C with --sse).
    let cli_sse = s3.sse.is_some()
        || s3.sse_c_key_file.is_some()
        || s3.sse_kms_key_id.is_some()
        || s3.bucket_key;
    if !cli_sse {
        s3.sse = v.sse.clone();
        s3.sse_kms_key_id = v.sse_kms_key_id.clone();
        s3.bucket_key = v.bucket_key;
        s3.sse_c_key_file = v.sse_c_key_file.clone();
    }
    // Checked when the file was parsed.
    let size = |t: &Option<String>| t.as_deref().and_then(|t| super::mount::parse_size(t).ok());
    Applied {
        cache_dir: v.cache_dir.clone(),
        mountpoint: v.mountpoint.clone(),
        allow_other: v.allow_other,
        profile: v.profile.clone(),
        idle_timeout: v
            .idle_timeout
            .as_deref()
            .and_then(|t| super::idle::parse_duration(t).ok()),
        notify: v.notify,
        commit_interval: v.commit_interval,
        sync_on_close: v.sync_on_close,
        cache_size: size(&v.cache_size),
        staging_size: size(&v.staging_size),
        spin_us: v.spin_us,
        repack_interval: v
            .repack_interval
            .as_deref()
            .and_then(|t| super::idle::parse_duration(t).ok()),
        read_ahead_kb: v.read_ahead_kb,
    }
}

/// Apply the configuration to `mount`, returning the mountpoint (from the command line, else
/// from the volume's `mountpoint`).
pub fn apply_mount(args: &mut MountArgs) -> Result<PathBuf> {
    let applied = apply(&mut args.store, &mut args.key)?;
    if args.cache_dir.is_none() {
        args.cache_dir = applied.cache_dir;
    }
    args.allow_other |= applied.allow_other;
    super::extras::apply_config(args, applied.idle_timeout, applied.notify);
    args.sync_on_close |= applied.sync_on_close;
    if args.commit_interval.is_none() {
        args.commit_interval = applied.commit_interval;
    }
    if args.cache_size.is_none() {
        args.cache_size = applied.cache_size;
    }
    if args.staging_size.is_none() {
        args.staging_size = applied.staging_size;
    }
    if args.spin_us.is_none() {
        args.spin_us = applied.spin_us;
    }
    if args.repack_interval.is_none() {
        args.repack_interval = applied.repack_interval;
    }
    if args.read_ahead_kb.is_none() {
        args.read_ahead_kb = applied.read_ahead_kb;
    }
    if args.mountpoint.is_none() {
        args.mountpoint = applied.mountpoint;
    }
    match &args.mountpoint {
        Some(m) => Ok(m.clone()),
        None => bail!(UsageError(format!(
            "no MOUNTPOINT: give one after {} (or set `mountpoint` for this volume in the config file)",
            args.store.store
        ))),
    }
}

#[cfg(test)]
mod tests;
