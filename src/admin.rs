//! Key-slot administration of a stored volume (`key list|add|remove`, `passwd`): read the
//! header with its etag, change its slots (the crypto layer re-MACs it), and write it back —
//! the main header conditionally (If-Match on the etag read) where the store supports it,
//! then its backup. No data or metadata object is touched: the master key does not change.

use std::sync::Arc;

use bytes::Bytes;

use crate::backend::kms::KmsClient;
use crate::backend::{BackendError, ObjectStore, PutMode};
use crate::crypto::{Argon2Params, Header, KeySource, KmsSlotRef, VolumeKeys};
use crate::volume::{header_error, Result, VolumeError, HEADER_BACKUP_KEY, HEADER_KEY};

/// The header as read from the store, with what is needed to replace it safely.
#[derive(Debug, Clone)]
pub struct StoredHeader {
    pub bytes: Vec<u8>,
    /// Etag of `cryptbucket.json` when read (None when it was missing and the backup was used).
    pub etag: Option<String>,
    /// Whether `cryptbucket.json` was missing and the bytes come from the backup.
    pub from_backup: bool,
}

/// One key slot as `key list` shows it (kinds are readable without a key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub index: usize,
    pub kind: String,
}

/// Read `cryptbucket.json` with its etag (or, if it is missing, the backup).
pub fn load_header(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
) -> Result<StoredHeader> {
    let desc = store.describe();
    let st = |e| VolumeError::Store(desc.clone(), e);
    match rt.block_on(store.head(HEADER_KEY)) {
        Ok(meta) => {
            let bytes = rt.block_on(store.get(HEADER_KEY, None)).map_err(st)?;
            Ok(StoredHeader {
                bytes: bytes.to_vec(),
                etag: meta.etag,
                from_backup: false,
            })
        }
        Err(BackendError::NotFound(_)) => match rt.block_on(store.get(HEADER_BACKUP_KEY, None)) {
            Ok(b) => {
                tracing::warn!(
                    "{HEADER_KEY} is missing from {desc}; using its backup {HEADER_BACKUP_KEY}"
                );
                Ok(StoredHeader {
                    bytes: b.to_vec(),
                    etag: None,
                    from_backup: true,
                })
            }
            Err(BackendError::NotFound(_)) => Err(VolumeError::NoVolume(desc)),
            Err(e) => Err(st(e)),
        },
        Err(e) => Err(st(e)),
    }
}

/// Parse the stored header and unlock it with `source`: the header, the index of the slot
/// that accepted the key, and the keys.
fn unlock(
    store: &Arc<dyn ObjectStore>,
    stored: &StoredHeader,
    source: &KeySource,
) -> Result<(Header, usize, VolumeKeys)> {
    let desc = store.describe();
    let header = Header::parse(&stored.bytes).map_err(|e| header_error(&desc, &stored.bytes, e))?;
    let (index, keys) = header
        .unlock_slot(source)
        .map_err(|e| header_error(&desc, &stored.bytes, e))?;
    Ok((header, index, keys))
}

/// Replace the header read as `old` with `new`: the main object first (If-Match on its etag,
/// or If-None-Match when it was missing, where the store honours conditions), then the backup.
pub fn write_header(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    old: &StoredHeader,
    new: Vec<u8>,
) -> Result<()> {
    let desc = store.describe();
    let mode = match (&old.etag, store.supports_conditional()) {
        (_, false) => PutMode::Overwrite,
        (Some(etag), true) => PutMode::IfMatch(etag.clone()),
        (None, true) => PutMode::Create,
    };
    let new = Bytes::from(new);
    match rt.block_on(store.put(HEADER_KEY, new.clone(), mode)) {
        Ok(_) => {}
        Err(BackendError::PreconditionFailed(_)) => return Err(VolumeError::HeaderChanged(desc)),
        Err(e) => return Err(VolumeError::Store(desc, e)),
    }
    rt.block_on(store.put(HEADER_BACKUP_KEY, new, PutMode::Overwrite))
        .map_err(|e| VolumeError::Store(format!("{desc} (writing the backup {HEADER_BACKUP_KEY}; the main header was updated, run the command again to refresh it)"), e))?;
    Ok(())
}

/// The slots of the volume (kinds only; nothing is authenticated without a key).
pub fn list_slots(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
) -> Result<Vec<SlotInfo>> {
    let desc = store.describe();
    let stored = load_header(rt, store)?;
    let header = Header::parse(&stored.bytes).map_err(|e| header_error(&desc, &stored.bytes, e))?;
    Ok(header
        .info()
        .slot_kinds
        .into_iter()
        .enumerate()
        .map(|(index, kind)| SlotInfo { index, kind })
        .collect())
}

/// Add a slot for `new` (unlocking with `current`). Returns the new slot's index.
pub fn add_slot(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    current: &KeySource,
    new: &KeySource,
    kdf: Argon2Params,
) -> Result<usize> {
    let stored = load_header(rt, store)?;
    let (header, _, keys) = unlock(store, &stored, current)?;
    if header.unlock_slot(new).is_ok() {
        return Err(crate::crypto::CryptoError::InvalidArgument(format!(
            "the new {} already opens this volume (no slot added)",
            new.kind()
        ))
        .into());
    }
    let bytes = header.with_added_slot(&keys, new, kdf)?;
    write_header(rt, store, &stored, bytes)?;
    Ok(header.slot_count())
}

/// Remove slot `index` (unlocking with `current`); the last slot cannot be removed.
/// Returns whether the removed slot is the one `current` opened.
pub fn remove_slot(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    current: &KeySource,
    index: usize,
) -> Result<bool> {
    let stored = load_header(rt, store)?;
    let (header, used, keys) = unlock(store, &stored, current)?;
    let bytes = header.without_slot(&keys, index)?;
    write_header(rt, store, &stored, bytes)?;
    Ok(used == index)
}

/// Replace the passphrase slot that `current` (a passphrase) opens with one for `new`.
/// Returns the slot's index. Only the header changes.
pub fn change_passphrase(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    current: &KeySource,
    new: &KeySource,
    kdf: Argon2Params,
) -> Result<usize> {
    if !matches!(current, KeySource::Passphrase(_)) || !matches!(new, KeySource::Passphrase(_)) {
        return Err(crate::crypto::CryptoError::InvalidArgument(
            "passwd changes a passphrase: give the current passphrase (not a keyfile); to replace a keyfile use `key add` then `key remove`".into(),
        )
        .into());
    }
    let stored = load_header(rt, store)?;
    let (header, index, keys) = unlock(store, &stored, current)?;
    let bytes = header.with_replaced_slot(&keys, index, new, kdf)?;
    write_header(rt, store, &stored, bytes)?;
    Ok(index)
}

/// Add a KMS slot: one GenerateDataKey under `key_id` (AES_256); the data key wraps the
/// master key. Returns the new slot's index.
pub fn add_kms_slot(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    kms: &KmsClient,
    current: &KeySource,
    key_id: &str,
) -> Result<usize> {
    let stored = load_header(rt, store)?;
    let (header, _, keys) = unlock(store, &stored, current)?;
    let dk = rt
        .block_on(kms.generate_data_key(key_id, &keys.volume_id()))
        .map_err(|e| VolumeError::Store("KMS".into(), e))?;
    let bytes = header.with_added_slot(&keys, &KeySource::Kms(dk), Argon2Params::MINIMUM)?;
    write_header(rt, store, &stored, bytes)?;
    Ok(header.slot_count())
}

/// The KMS slots of the volume in `store` (index, key id, blob), read without a key.
pub fn kms_slots(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
) -> Result<Vec<(usize, KmsSlotRef)>> {
    let desc = store.describe();
    let stored = load_header(rt, store)?;
    let header = Header::parse(&stored.bytes).map_err(|e| header_error(&desc, &stored.bytes, e))?;
    Ok(header.kms_slots())
}

/// Unlock material from a KMS slot: exactly one KMS Decrypt when it works (the first KMS
/// slot, or the one whose key id is `prefer`); on failure the next KMS slot is tried, and
/// if none works every failure is reported.
pub fn kms_key_source(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    kms: &KmsClient,
    prefer: Option<&str>,
) -> Result<KeySource> {
    let desc = store.describe();
    let stored = load_header(rt, store)?;
    let header = Header::parse(&stored.bytes).map_err(|e| header_error(&desc, &stored.bytes, e))?;
    kms_source_for(rt, &header, kms, prefer, &desc)
}

fn kms_source_for(
    rt: &tokio::runtime::Runtime,
    header: &Header,
    kms: &KmsClient,
    prefer: Option<&str>,
    desc: &str,
) -> Result<KeySource> {
    let mut slots = header.kms_slots();
    if let Some(p) = prefer {
        slots.retain(|(_, s)| s.key_id == p);
    }
    if slots.is_empty() {
        return Err(VolumeError::Kms(match prefer {
            Some(p) => format!("the volume in {desc} has no KMS key slot for key {p}"),
            None => format!(
                "the volume in {desc} has no KMS key slot (add one with `key add --kms-key-id`)"
            ),
        }));
    }
    let mut errors = Vec::new();
    for (i, s) in &slots {
        match rt.block_on(kms.decrypt(&s.key_id, &s.blob, &header.volume_id())) {
            Ok(k) => return Ok(KeySource::Kms(k)),
            Err(e) => errors.push(format!("slot {i} ({}): {e}", s.key_id)),
        }
    }
    Err(VolumeError::Kms(format!(
        "no KMS key slot of the volume in {desc} could be unlocked: {}",
        errors.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryStore;
    use crate::crypto::{create_header, VolumeParams};
    use zeroize::Zeroizing;

    fn pass(s: &str) -> KeySource {
        KeySource::Passphrase(Zeroizing::new(s.to_string()))
    }

    fn setup() -> (tokio::runtime::Runtime, Arc<dyn ObjectStore>) {
        let rt = crate::volume::runtime().expect("runtime");
        let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
        let (h, _) = create_header(VolumeParams::default(), &pass("one"), Argon2Params::MINIMUM)
            .expect("header");
        for k in [HEADER_KEY, HEADER_BACKUP_KEY] {
            rt.block_on(store.put(k, Bytes::from(h.clone()), PutMode::Overwrite))
                .expect("put");
        }
        (rt, store)
    }

    #[test]
    fn add_list_remove_and_last_slot_refused() {
        let (rt, store) = setup();
        let kf = KeySource::Keyfile(Zeroizing::new(vec![7u8; 32]));
        assert_eq!(
            add_slot(&rt, &store, &pass("one"), &kf, Argon2Params::MINIMUM).expect("add"),
            1
        );
        let kinds: Vec<String> = list_slots(&rt, &store)
            .expect("list")
            .into_iter()
            .map(|s| s.kind)
            .collect();
        assert_eq!(kinds, ["passphrase", "keyfile"]);
        // The same key twice is refused; a wrong current key is refused.
        assert!(add_slot(&rt, &store, &kf, &pass("one"), Argon2Params::MINIMUM).is_err());
        assert!(matches!(
            add_slot(
                &rt,
                &store,
                &pass("nope"),
                &pass("two"),
                Argon2Params::MINIMUM
            ),
            Err(VolumeError::WrongKey { .. })
        ));
        // Header and backup are identical after every change.
        let main = rt.block_on(store.get(HEADER_KEY, None)).expect("get");
        let bak = rt
            .block_on(store.get(HEADER_BACKUP_KEY, None))
            .expect("get");
        assert_eq!(main, bak);
        // Remove the passphrase slot with the keyfile; then the keyfile slot is the last one.
        assert!(!remove_slot(&rt, &store, &kf, 0).expect("remove"));
        assert!(matches!(
            crate::volume::unlock(&rt, &store, &pass("one")),
            Err(VolumeError::WrongKey { .. })
        ));
        crate::volume::unlock(&rt, &store, &kf).expect("keyfile still opens");
        let err = remove_slot(&rt, &store, &kf, 0).expect_err("last slot");
        assert!(err.to_string().contains("only key slot"), "{err}");
        assert_eq!(list_slots(&rt, &store).expect("list").len(), 1);
    }

    #[test]
    fn passwd_replaces_one_slot() {
        let (rt, store) = setup();
        add_slot(
            &rt,
            &store,
            &pass("one"),
            &pass("two"),
            Argon2Params::MINIMUM,
        )
        .expect("add");
        assert_eq!(
            change_passphrase(
                &rt,
                &store,
                &pass("two"),
                &pass("three"),
                Argon2Params::MINIMUM
            )
            .expect("passwd"),
            1
        );
        assert!(crate::volume::unlock(&rt, &store, &pass("two")).is_err());
        let a = crate::volume::unlock(&rt, &store, &pass("one")).expect("one");
        let b = crate::volume::unlock(&rt, &store, &pass("three")).expect("three");
        assert_eq!(a.volume_id(), b.volume_id());
        assert_eq!(list_slots(&rt, &store).expect("list").len(), 2);
        let kf = KeySource::Keyfile(Zeroizing::new(vec![7u8; 32]));
        assert!(change_passphrase(&rt, &store, &kf, &pass("x"), Argon2Params::MINIMUM).is_err());
    }

    #[test]
    fn concurrent_change_is_detected() {
        let (rt, store) = setup();
        let stored = load_header(&rt, &store).expect("load");
        // Someone else rewrites the header after we read it.
        rt.block_on(store.put(
            HEADER_KEY,
            Bytes::from(stored.bytes.clone()),
            PutMode::Overwrite,
        ))
        .expect("put");
        let err = write_header(&rt, &store, &stored, stored.bytes.clone()).expect_err("stale etag");
        assert!(matches!(err, VolumeError::HeaderChanged(_)), "{err}");
        // A missing main header is recreated from the backup, and only if still missing.
        rt.block_on(store.delete(HEADER_KEY)).expect("delete");
        let stored = load_header(&rt, &store).expect("load backup");
        assert!(stored.from_backup && stored.etag.is_none());
        add_slot(
            &rt,
            &store,
            &pass("one"),
            &pass("two"),
            Argon2Params::MINIMUM,
        )
        .expect("add");
        assert_eq!(list_slots(&rt, &store).expect("list").len(), 2);
        rt.block_on(store.head(HEADER_KEY))
            .expect("main header back");
    }
}
