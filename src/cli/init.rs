//! `cryptbucket init`: create a volume.

use anyhow::{Context, Result};
use clap::Args;

use cryptbucket::crypto::{argon2_params_from_env, Cipher, VolumeParams};

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
}

pub fn run(mut args: InitArgs) -> Result<()> {
    let name = args.store.store.clone();
    super::config::apply(&mut args.store, &mut args.key)?;
    let key = key_source(&args.key, true, true)?;
    let rt = cryptbucket::volume::runtime()?;
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
    let id = cryptbucket::volume::create_with_ext(
        &rt,
        store.clone(),
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
