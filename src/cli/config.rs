//! The configuration file: named volumes (store, endpoint, region, AWS profile, cache dir,
//! key source, mountpoint) in TOML, and how they fill in what the command line left out.

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
            v.check(name, origin)?;
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

impl VolumeConfig {
    fn check(&self, name: &str, origin: &Path) -> Result<()> {
        let keys = [
            self.kms,
            self.keyfile.is_some(),
            self.passphrase_file.is_some(),
            self.passphrase_command.is_some(),
        ];
        if keys.iter().filter(|k| **k).count() > 1 {
            bail!(UsageError(format!(
                "in config file {}: volume `{name}` sets more than one of kms, keyfile, passphrase_file, passphrase_command (pick one)",
                origin.display()
            )));
        }
        if let Some(t) = &self.idle_timeout {
            if let Err(e) = super::idle::parse_duration(t) {
                bail!(UsageError(format!(
                    "in config file {}: volume `{name}`, key `idle_timeout`: {e}",
                    origin.display()
                )));
            }
        }
        if self
            .commit_interval
            .is_some_and(|s| !(1..=3600).contains(&s))
        {
            bail!(UsageError(format!(
                "in config file {}: volume `{name}`: commit_interval must be 1 to 3600 seconds",
                origin.display()
            )));
        }
        if self.store.is_empty() {
            bail!(UsageError(format!(
                "in config file {}: volume `{name}` has an empty `store`",
                origin.display()
            )));
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
