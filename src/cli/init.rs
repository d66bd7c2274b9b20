//! `cryptbucket init`: create a volume.

use anyhow::{Context, Result};
use clap::Args;

use cryptbucket::crypto::{argon2_params_from_env, Cipher, KeySource, VolumeParams};

use super::{key_source, open_store, KeyArgs, StoreArgs};

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Cipher for data and metadata: aes256gcm (default; hardware AES) or xchacha20poly1305.
    #[arg(long)]
    pub cipher: Option<Cipher>,
    /// Chunk size in bytes (default 4 MiB).
    #[arg(long)]
    pub chunk_size: Option<u32>,
    /// Make the first key slot an AWS KMS slot under this key (ARN, key id or alias/NAME)
    /// instead of a passphrase or keyfile.
    #[arg(long, value_name = "ARN", conflicts_with_all = ["keyfile", "passphrase_file", "passphrase_command"])]
    pub kms_key_id: Option<String>,
}

pub fn run(mut args: InitArgs) -> Result<()> {
    let name = args.store.store.clone();
    super::config::apply(&mut args.store, &mut args.key)?;
    let rt = cryptbucket::volume::runtime()?;
    let volume_id = cryptbucket::crypto::new_volume_id();
    let key = match &args.kms_key_id {
        Some(key_id) => {
            let kms = super::kms::client(&rt, &args.store, &args.key, Some(key_id))?;
            KeySource::Kms(
                rt.block_on(kms.generate_data_key(key_id, &volume_id))
                    .context("init failed: KMS GenerateDataKey")?,
            )
        }
        None => key_source(&args.key, true, true)?,
    };
    let store = open_store(&rt, &args.store, true)?;
    let mut params = VolumeParams::default();
    if let Some(c) = args.cipher {
        params.cipher = c;
    }
    if let Some(cs) = args.chunk_size {
        params.chunk_size = cs;
    }
    let mut ext = serde_json::Map::new();
    let (sse, _) = args.store.s3.sse()?;
    if let Some(mode) = &sse {
        mode.to_ext(&mut ext)?;
    }
    let id = cryptbucket::volume::create_with_id(
        &rt,
        store.clone(),
        volume_id,
        params.clone(),
        &key,
        argon2_params_from_env(),
        ext,
    )
    .context("init failed")?;
    if let Some(mode) = &sse {
        println!("server-side encryption: {}", mode.describe());
    }
    println!(
        "created volume {id} in {} (cipher {})\nmount it with: cryptbucket mount {} MOUNTPOINT",
        store.describe(),
        params.cipher,
        name
    );
    Ok(())
}
