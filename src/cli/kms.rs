//! KMS key slots from the command line: the KMS client settings, and which key source
//! unlocks a volume (a KMS slot with `--kms`, or automatically when no passphrase or keyfile
//! is given and the volume has a KMS slot).

use std::sync::Arc;

use anyhow::{Context, Result};

use cryptbucket::backend::kms::{KmsClient, KmsConfig};
use cryptbucket::backend::ObjectStore;
use cryptbucket::crypto::KeySource;

use super::{key_source, open_store, KeyArgs, StoreArgs};

/// The region named by a key ARN (`arn:aws:kms:REGION:ACCOUNT:key/ID`), if it is one.
fn arn_region(key_id: &str) -> Option<String> {
    let parts: Vec<&str> = key_id.split(':').collect();
    (parts.len() >= 6 && parts[0] == "arn" && parts[2] == "kms" && !parts[3].is_empty())
        .then(|| parts[3].to_string())
}

/// A KMS client: endpoint from `--kms-endpoint` (else the AWS environment), region from the
/// key ARN, else `--region`, else the AWS chain; TLS settings as for the S3 store.
pub fn client(
    rt: &tokio::runtime::Runtime,
    store: &StoreArgs,
    key: &KeyArgs,
    key_id: Option<&str>,
) -> Result<KmsClient> {
    let ca_bundle = match &store.s3.ca_bundle {
        Some(p) => Some(
            std::fs::read(p).with_context(|| format!("cannot read CA bundle {}", p.display()))?,
        ),
        None => None,
    };
    let cfg = KmsConfig {
        endpoint: key.kms_endpoint.clone(),
        region: key_id.and_then(arn_region).or_else(|| store.region.clone()),
        ca_bundle,
        allow_insecure_http: store.s3.allow_insecure_http,
        interceptors: Vec::new(),
    };
    Ok(rt.block_on(KmsClient::connect(cfg))?)
}

/// Whether the user named a passphrase or keyfile source (flags, file, or environment).
pub fn explicit_secret(key: &KeyArgs) -> bool {
    key.keyfile.is_some()
        || key.passphrase_file.is_some()
        || key.passphrase_command.is_some()
        || std::env::var_os("CRYPTBUCKET_PASSPHRASE").is_some()
}

/// The key that unlocks the volume in `store`: a KMS slot (one Decrypt) with `--kms`, or when
/// no secret was given and the volume has a KMS slot; else a passphrase or keyfile.
pub fn resolve_key(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    sargs: &StoreArgs,
    key: &KeyArgs,
) -> Result<KeySource> {
    if !key.kms && explicit_secret(key) {
        return key_source(key, false, false);
    }
    let slots = cryptbucket::admin::kms_slots(rt, store)?;
    if slots.is_empty() && !key.kms {
        return key_source(key, false, false);
    }
    let first = slots.first().map(|(_, s)| s.key_id.clone());
    let kms = client(rt, sargs, key, first.as_deref())?;
    if !key.kms {
        tracing::info!("no passphrase or keyfile given: unlocking with the volume's KMS key slot");
    }
    cryptbucket::admin::kms_key_source(rt, store, &kms, None).map_err(|e| {
        anyhow::anyhow!(e).context(if key.kms {
            "cannot unlock with KMS"
        } else {
            "cannot unlock with KMS (the volume has a KMS key slot and no passphrase or keyfile was given; pass --passphrase-file or --keyfile to use another slot)"
        })
    })
}

/// [`resolve_key`] for commands that have no store open yet: the store is opened only when
/// a KMS slot may be used.
pub fn resolve_key_once(sargs: &StoreArgs, key: &KeyArgs) -> Result<KeySource> {
    if !key.kms && explicit_secret(key) {
        return key_source(key, false, false);
    }
    let rt = cryptbucket::volume::runtime()?;
    let store = open_store(&rt, sargs, false)?;
    resolve_key(&rt, &store, sargs, key)
}

#[cfg(test)]
mod tests {
    use super::arn_region;

    #[test]
    fn region_from_arn() {
        assert_eq!(
            arn_region("arn:aws:kms:eu-west-3:111122223333:key/1234").as_deref(),
            Some("eu-west-3")
        );
        assert_eq!(arn_region("alias/backup"), None);
        assert_eq!(arn_region("1234abcd-12ab-34cd-56ef-1234567890ab"), None);
    }
}
