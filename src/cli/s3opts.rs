//! S3-only options shared by every subcommand: server-side encryption (`--sse`,
//! `--sse-c-key-file`, ...) and transport security (`--ca-bundle`, `--allow-insecure-http`),
//! and how the SSE mode stored in a volume combines with the one given on the command line.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;

use cryptbucket::backend::s3::S3Config;
use cryptbucket::backend::sse::{SseCustomerKey, SseMode};

#[derive(Args, Debug, Clone, Default)]
pub struct S3Args {
    /// (S3) Server-side encryption on top of ours: AES256 (SSE-S3), aws:kms (SSE-KMS) or
    /// aws:kms:dsse (DSSE-KMS). Stored at init; at mount it overrides the stored mode for
    /// objects written from then on.
    #[arg(long, value_name = "MODE", conflicts_with = "sse_c_key_file")]
    pub sse: Option<String>,
    /// (S3) KMS key id, ARN or alias for --sse aws:kms / aws:kms:dsse (default: aws/s3).
    #[arg(long, value_name = "ID")]
    pub sse_kms_key_id: Option<String>,
    /// (S3) With --sse aws:kms: use an S3 Bucket Key (far fewer KMS requests).
    #[arg(long)]
    pub bucket_key: bool,
    /// (S3) SSE-C: a file holding a 256-bit key (32 bytes, 64 hex digits or base64), sent
    /// with every request and never stored. Needed for every use of an SSE-C volume.
    #[arg(long, value_name = "FILE")]
    pub sse_c_key_file: Option<PathBuf>,
    /// (S3) Trust the PEM certificates in FILE (a private CA) instead of the system roots.
    #[arg(long, value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,
    /// (S3) Allow plain http:// to a host other than this machine (not recommended).
    #[arg(long)]
    pub allow_insecure_http: bool,
}

impl S3Args {
    /// Whether any S3-only option was given (they make no sense for a local directory).
    pub fn any(&self) -> bool {
        self.sse.is_some()
            || self.sse_kms_key_id.is_some()
            || self.bucket_key
            || self.sse_c_key_file.is_some()
            || self.ca_bundle.is_some()
            || self.allow_insecure_http
    }

    /// The SSE mode and SSE-C key given on the command line.
    pub fn sse(&self) -> Result<(Option<SseMode>, Option<Arc<SseCustomerKey>>)> {
        if let Some(path) = &self.sse_c_key_file {
            if self.sse_kms_key_id.is_some() || self.bucket_key {
                bail!(super::exit::UsageError("--sse-kms-key-id and --bucket-key do not apply to SSE-C; drop them, or use --sse aws:kms".into()));
            }
            let bytes = zeroize::Zeroizing::new(
                std::fs::read(path)
                    .with_context(|| format!("cannot read SSE-C key file {}", path.display()))?,
            );
            let key = SseCustomerKey::from_file_bytes(&bytes)
                .with_context(|| format!("SSE-C key file {}", path.display()))?;
            return Ok((Some(SseMode::CustomerKey), Some(Arc::new(key))));
        }
        match &self.sse {
            Some(m) => Ok((
                Some(SseMode::from_flag(
                    m,
                    self.sse_kms_key_id.clone(),
                    self.bucket_key,
                )?),
                None,
            )),
            None if self.sse_kms_key_id.is_some() || self.bucket_key => {
                bail!("--sse-kms-key-id and --bucket-key need --sse aws:kms (or aws:kms:dsse)")
            }
            None => Ok((None, None)),
        }
    }

    /// Fill the transport options of `cfg` (CA bundle read and checked here).
    pub fn apply_transport(&self, cfg: &mut S3Config) -> Result<()> {
        cfg.allow_insecure_http = self.allow_insecure_http;
        if let Some(path) = &self.ca_bundle {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read CA bundle {}", path.display()))?;
            cryptbucket::backend::tls::check_ca_bundle(&pem)
                .with_context(|| format!("--ca-bundle {}", path.display()))?;
            cfg.ca_bundle = Some(pem);
        }
        Ok(())
    }
}

/// Combine the SSE mode stored in the volume with the command line's.
pub fn resolve_sse(
    stored: Option<SseMode>,
    cli_mode: Option<SseMode>,
    cli_key: Option<Arc<SseCustomerKey>>,
) -> Result<(Option<SseMode>, Option<Arc<SseCustomerKey>>)> {
    let name = |m: &Option<SseMode>| {
        m.as_ref()
            .map_or("no server-side encryption".to_string(), SseMode::describe)
    };
    match (&stored, cli_key) {
        (Some(SseMode::CustomerKey), None) => {
            bail!("this volume uses SSE-C; pass --sse-c-key-file")
        }
        (Some(SseMode::CustomerKey), Some(key)) => Ok((Some(SseMode::CustomerKey), Some(key))),
        (_, Some(_)) => bail!(
            "this volume does not use SSE-C (it uses {}); drop --sse-c-key-file",
            name(&stored)
        ),
        (_, None) => match cli_mode {
            Some(m) if stored.as_ref() != Some(&m) => {
                eprintln!(
                    "note: objects written now use {} (the volume was created with {})",
                    m.describe(),
                    name(&stored)
                );
                Ok((Some(m), None))
            }
            Some(m) => Ok((Some(m), None)),
            None => Ok((stored, None)),
        },
    }
}
