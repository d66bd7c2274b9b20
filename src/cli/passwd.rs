//! `cryptbucket passwd`: change one passphrase (rewrites one key slot; no data is touched).

use anyhow::{bail, Context, Result};
use clap::Args;

use cryptbucket::crypto::argon2_params_from_env;

use super::{key_source, new_key_source, open_store, KeyArgs, NewKeyArgs, StoreArgs};

#[derive(Args, Debug)]
pub struct PasswdArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub new: NewKeyArgs,
}

pub fn run(mut args: PasswdArgs) -> Result<()> {
    // A volume name from the config file, as for mount.
    super::config::apply(&mut args.store, &mut args.key)?;
    if args.key.keyfile.is_some() || args.new.new_keyfile.is_some() {
        bail!(super::exit::UsageError(
            "passwd changes a passphrase; to replace a keyfile use `key add` and `key remove`"
                .into()
        ));
    }
    let current = key_source(&args.key, false, false)?;
    let new = new_key_source(&args.new, false)?;
    let rt = cryptbucket::volume::runtime()?;
    let s = open_store(&rt, &args.store, false)?;
    let index =
        cryptbucket::admin::change_passphrase(&rt, &s, &current, &new, argon2_params_from_env())
            .context("passwd failed")?;
    println!("changed the passphrase of key slot {index} (no data was re-encrypted)");
    Ok(())
}
