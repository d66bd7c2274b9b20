//! `cryptbucket key list|add|remove`: manage the key slots of a volume (header only).

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use cryptbucket::crypto::argon2_params_from_env;

use super::kms::resolve_key;
use super::{new_key_source, open_store, KeyArgs, NewKeyArgs, StoreArgs};

#[derive(Args, Debug)]
pub struct KeyCmd {
    #[command(subcommand)]
    pub cmd: KeySub,
}

#[derive(Subcommand, Debug)]
pub enum KeySub {
    /// List the key slots of the volume in STORE (no key needed).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Add a key slot (a passphrase, a keyfile, or AWS KMS with --kms-key-id); the current
    /// key unlocks the volume.
    Add {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        new: NewKeyArgs,
    },
    /// Save the passphrase of the volume in STORE in the desktop keyring (after checking it
    /// opens the volume); `mount` then uses it without asking.
    Remember {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Remove the passphrase saved for STORE from the desktop keyring.
    Forget {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove key slot SLOT (its number in `key list`); the last slot cannot be removed.
    Remove {
        #[command(flatten)]
        store: StoreArgs,
        /// Slot number, as shown by `key list`.
        slot: usize,
        #[command(flatten)]
        key: KeyArgs,
    },
}

pub fn run(args: KeyCmd) -> Result<()> {
    let rt = cryptbucket::volume::runtime()?;
    match args.cmd {
        KeySub::Remember { mut store, mut key } => {
            super::config::apply(&mut store, &mut key)?;
            super::extras::remember(&rt, &store, &key)?;
        }
        KeySub::Forget { mut store } => {
            super::config::apply(&mut store, &mut KeyArgs::default())?;
            super::extras::forget(&store)?;
        }
        KeySub::List { store } => {
            let s = open_store(&rt, &store, false)?;
            let slots = cryptbucket::admin::list_slots(&rt, &s)?;
            println!("volume in {}: {} key slot(s)", s.describe(), slots.len());
            let kms = cryptbucket::admin::kms_slots(&rt, &s)?;
            for slot in slots {
                match kms.iter().find(|(i, _)| *i == slot.index) {
                    Some((_, k)) => println!("  slot {}: kms ({})", slot.index, k.key_id),
                    None => println!("  slot {}: {}", slot.index, slot.kind),
                }
            }
        }
        KeySub::Add { store, key, new } => {
            let s = open_store(&rt, &store, false)?;
            let current = resolve_key(&rt, &s, &store, &key)?;
            if let Some(key_id) = &new.kms_key_id {
                let kms = super::kms::client(&rt, &store, &key, Some(key_id))?;
                let index = cryptbucket::admin::add_kms_slot(&rt, &s, &kms, &current, key_id)
                    .context("key add failed")?;
                println!("added key slot {index} (kms, key {key_id})");
                return Ok(());
            }
            let new = new_key_source(&new, true)?;
            let index =
                cryptbucket::admin::add_slot(&rt, &s, &current, &new, argon2_params_from_env())
                    .context("key add failed")?;
            println!("added key slot {index} ({})", new.kind());
        }
        KeySub::Remove { store, slot, key } => {
            let s = open_store(&rt, &store, false)?;
            let current = resolve_key(&rt, &s, &store, &key)?;
            let own = cryptbucket::admin::remove_slot(&rt, &s, &current, slot)
                .context("key remove failed")?;
            println!("removed key slot {slot}");
            if own {
                eprintln!("note: that was the slot of the key you unlocked with; it no longer opens the volume");
            }
            eprintln!("note: a copy of the old header still opens with the removed key; only `rekey` revokes it");
        }
    }
    Ok(())
}
