//! The volume header `cryptbucket.json`: parameters, key slots, and a MAC over the body.
//!
//! Stored form (UTF-8 JSON):
//! `{"format_version": 1, "body": "<body JSON as a string>", "mac": "<64 hex>"}`.
//! The MAC is HMAC-SHA256(header-mac subkey, exact UTF-8 bytes of the body string), so the
//! authenticated bytes are unambiguous whatever whitespace surrounds the outer object.

use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::slot::{KmsSlotRef, Slot, SlotJson};
use super::{
    hex_array, random_array, Argon2Params, CryptoError, KeySource, VolumeKeys, VolumeParams,
    FORMAT_VERSION,
};

/// Largest header accepted (1 MiB); larger inputs are rejected before parsing.
pub const MAX_HEADER_LEN: usize = 1 << 20;
/// Most key slots a header may hold.
pub const MAX_SLOTS: usize = 32;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OuterJson {
    format_version: u8,
    body: String,
    mac: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyJson {
    format_version: u8,
    volume_id: String,
    created_unix: u64,
    params: VolumeParams,
    slots: Vec<SlotJson>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    ext: Map<String, Value>,
}

/// What can be learned from a header without a key (nothing here is authenticated).
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderInfo {
    pub format_version: u8,
    pub volume_id: [u8; 16],
    pub params: VolumeParams,
    /// One entry per slot: "passphrase" or "keyfile".
    pub slot_kinds: Vec<String>,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
}

/// A parsed, bounds-checked header. Its contents are authenticated only once
/// [`Header::unlock`] succeeds.
#[derive(Clone, Debug)]
pub struct Header {
    volume_id: [u8; 16],
    created_unix: u64,
    params: VolumeParams,
    slots: Vec<Slot>,
    ext: Map<String, Value>,
    body_text: String,
    mac: [u8; 32],
}

fn fmt_err(e: serde_json::Error) -> CryptoError {
    CryptoError::Format(format!("volume header: {e}"))
}

impl Header {
    /// Parse and bounds-check every field (sizes, hex lengths, slot count, KDF parameters,
    /// volume parameters). Does not authenticate.
    pub fn parse(bytes: &[u8]) -> Result<Header, CryptoError> {
        if bytes.len() > MAX_HEADER_LEN {
            return Err(CryptoError::Format(format!(
                "volume header of {} bytes exceeds {MAX_HEADER_LEN}",
                bytes.len()
            )));
        }
        // Read the version first so a future format gets a clear message.
        let loose: Map<String, Value> = serde_json::from_slice(bytes).map_err(fmt_err)?;
        match loose.get("format_version").and_then(Value::as_u64) {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(CryptoError::Format(format!(
                "volume header has format version {v}; this build reads version {FORMAT_VERSION}"
            )))
            }
            None => {
                return Err(CryptoError::Format(
                    "volume header has no format_version".into(),
                ))
            }
        }
        let outer: OuterJson = serde_json::from_value(Value::Object(loose)).map_err(fmt_err)?;
        let mac = hex_array::<32>(&outer.mac, "volume header mac")?;
        let body: BodyJson = serde_json::from_str(&outer.body).map_err(fmt_err)?;
        if body.format_version != FORMAT_VERSION {
            return Err(CryptoError::Format(format!(
                "volume header body has format version {}",
                body.format_version
            )));
        }
        let volume_id = hex_array::<16>(&body.volume_id, "volume id")?;
        body.params.check()?;
        if body.slots.is_empty() || body.slots.len() > MAX_SLOTS {
            return Err(CryptoError::Format(format!(
                "volume header has {} key slots; 1..={MAX_SLOTS} are allowed",
                body.slots.len()
            )));
        }
        let slots = body
            .slots
            .iter()
            .map(Slot::from_json)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Header {
            volume_id,
            created_unix: body.created_unix,
            params: body.params,
            slots,
            ext: body.ext,
            body_text: outer.body,
            mac,
        })
    }

    /// Key-free summary (for messages such as "this volume uses a keyfile").
    pub fn info(&self) -> HeaderInfo {
        HeaderInfo {
            format_version: FORMAT_VERSION,
            volume_id: self.volume_id,
            params: self.params.clone(),
            slot_kinds: self
                .slots
                .iter()
                .map(|s| s.kind.name().to_string())
                .collect(),
            created_unix: self.created_unix,
        }
    }

    /// Extension fields for other layers (e.g. SSE settings); authenticated by the MAC,
    /// so trust them only after [`Header::unlock`] succeeded on this header.
    pub fn ext(&self) -> &Map<String, Value> {
        &self.ext
    }

    /// Number of key slots.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The volume id (unauthenticated until [`Header::unlock`] succeeded).
    pub fn volume_id(&self) -> [u8; 16] {
        self.volume_id
    }

    /// The KMS slots: index, key id and the ciphertext blob to hand to KMS Decrypt.
    pub fn kms_slots(&self) -> Vec<(usize, KmsSlotRef)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.kms.clone().map(|k| (i, k)))
            .collect()
    }

    /// A header for a fresh master key (`rekey`): same volume id, parameters, creation time
    /// and extension fields; one slot per `(old slot index, new source)`, a passphrase slot
    /// keeping the Argon2 parameters of the old slot it replaces (`kdf` for new ones).
    /// `keys` must unlock this header. Returns the new header bytes and the new keys.
    pub fn rekeyed(
        &self,
        keys: &VolumeKeys,
        sources: &[(Option<usize>, &KeySource)],
        kdf: Argon2Params,
    ) -> Result<(Vec<u8>, VolumeKeys), CryptoError> {
        self.verify_mac(keys)?;
        if sources.is_empty() || sources.len() > MAX_SLOTS {
            return Err(CryptoError::InvalidArgument(format!(
                "a rekeyed header needs 1..={MAX_SLOTS} key slots"
            )));
        }
        let master = Zeroizing::new(random_array::<32>());
        let new = VolumeKeys::derive(master, self.volume_id, self.params.clone());
        let mut slots = Vec::with_capacity(sources.len());
        for (old, source) in sources {
            let k = old
                .and_then(|i| self.slots.get(i))
                .and_then(|s| s.kdf())
                .unwrap_or(kdf);
            slots.push(Slot::create(&new, source, k)?);
        }
        Ok((
            build(&new, self.created_unix, &slots, self.ext.clone())?,
            new,
        ))
    }

    /// Try every slot of the source's kind; on the first that unwraps the master key and
    /// passes the key commitment, verify the header MAC. Returns the slot index and keys.
    pub fn unlock_slot(&self, source: &KeySource) -> Result<(usize, VolumeKeys), CryptoError> {
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(keys) = slot.try_unlock(source, self.volume_id, &self.params)? {
                self.verify_mac(&keys)?;
                return Ok((i, keys));
            }
        }
        Err(CryptoError::WrongKey)
    }

    /// [`Header::unlock_slot`] without the index.
    pub fn unlock(&self, source: &KeySource) -> Result<VolumeKeys, CryptoError> {
        self.unlock_slot(source).map(|(_, k)| k)
    }

    /// Check the MAC (and that `keys` belong to this volume).
    pub fn verify_mac(&self, keys: &VolumeKeys) -> Result<(), CryptoError> {
        let want = keys.header_mac(self.body_text.as_bytes());
        if keys.volume_id != self.volume_id
            || !bool::from(want.ct_eq(&self.mac))
            || keys.params != self.params
        {
            return Err(CryptoError::Tampered("volume header".into()));
        }
        Ok(())
    }

    /// Serialize with `slots`, re-MACed with `keys`.
    fn build(&self, keys: &VolumeKeys, slots: &[Slot]) -> Result<Vec<u8>, CryptoError> {
        build(keys, self.created_unix, slots, self.ext.clone())
    }

    /// A copy of this header with one more slot for `source` (`cryptbucket key add`).
    pub fn with_added_slot(
        &self,
        keys: &VolumeKeys,
        source: &KeySource,
        kdf: Argon2Params,
    ) -> Result<Vec<u8>, CryptoError> {
        self.verify_mac(keys)?;
        if self.slots.len() >= MAX_SLOTS {
            return Err(CryptoError::InvalidArgument(format!(
                "the header already has {MAX_SLOTS} key slots"
            )));
        }
        let mut slots = self.slots.clone();
        slots.push(Slot::create(keys, source, kdf)?);
        self.build(keys, &slots)
    }

    /// A copy of this header without slot `index` (refuses to remove the last slot).
    pub fn without_slot(&self, keys: &VolumeKeys, index: usize) -> Result<Vec<u8>, CryptoError> {
        self.verify_mac(keys)?;
        if index >= self.slots.len() {
            return Err(CryptoError::InvalidArgument(format!("no key slot {index}")));
        }
        if self.slots.len() == 1 {
            return Err(CryptoError::InvalidArgument(
                "cannot remove the only key slot".into(),
            ));
        }
        let mut slots = self.slots.clone();
        slots.remove(index);
        self.build(keys, &slots)
    }

    /// A copy of this header with slot `index` replaced by one for `source` (`passwd`).
    pub fn with_replaced_slot(
        &self,
        keys: &VolumeKeys,
        index: usize,
        source: &KeySource,
        kdf: Argon2Params,
    ) -> Result<Vec<u8>, CryptoError> {
        self.verify_mac(keys)?;
        if index >= self.slots.len() {
            return Err(CryptoError::InvalidArgument(format!("no key slot {index}")));
        }
        let mut slots = self.slots.clone();
        slots[index] = Slot::create(keys, source, kdf)?;
        self.build(keys, &slots)
    }
}

fn build(
    keys: &VolumeKeys,
    created_unix: u64,
    slots: &[Slot],
    ext: Map<String, Value>,
) -> Result<Vec<u8>, CryptoError> {
    let body = BodyJson {
        format_version: FORMAT_VERSION,
        volume_id: hex::encode(keys.volume_id),
        created_unix,
        params: keys.params.clone(),
        slots: slots.iter().map(Slot::to_json).collect(),
        ext,
    };
    let body_text = serde_json::to_string(&body).map_err(fmt_err)?;
    let outer = OuterJson {
        format_version: FORMAT_VERSION,
        mac: hex::encode(keys.header_mac(body_text.as_bytes())),
        body: body_text,
    };
    let mut out = serde_json::to_vec_pretty(&outer).map_err(fmt_err)?;
    out.push(b'\n');
    if out.len() > MAX_HEADER_LEN {
        return Err(CryptoError::InvalidArgument(
            "volume header would exceed its size limit".into(),
        ));
    }
    Ok(out)
}

/// Create a new volume: fresh master key and volume id, one slot for `source`.
/// Returns the header bytes to store (as `cryptbucket.json` and `cryptbucket.json.bak`)
/// and the unlocked keys.
pub fn create_header(
    params: VolumeParams,
    source: &KeySource,
    kdf: Argon2Params,
) -> Result<(Vec<u8>, VolumeKeys), CryptoError> {
    create_header_with_ext(params, source, kdf, Map::new())
}

/// [`create_header`] with authenticated extension fields for other layers.
pub fn create_header_with_ext(
    params: VolumeParams,
    source: &KeySource,
    kdf: Argon2Params,
    ext: Map<String, Value>,
) -> Result<(Vec<u8>, VolumeKeys), CryptoError> {
    create_header_with_id(random_array(), params, source, kdf, ext)
}

/// [`create_header_with_ext`] for a volume id chosen beforehand (a KMS first slot binds its
/// data key to the volume id through the KMS encryption context, so the id must exist
/// before the data key does). Use [`new_volume_id`].
pub fn create_header_with_id(
    volume_id: [u8; 16],
    params: VolumeParams,
    source: &KeySource,
    kdf: Argon2Params,
    ext: Map<String, Value>,
) -> Result<(Vec<u8>, VolumeKeys), CryptoError> {
    params.check().map_err(|e| match e {
        CryptoError::Format(m) => CryptoError::InvalidArgument(m),
        other => other,
    })?;
    kdf.check()?;
    let master = Zeroizing::new(random_array::<32>());
    let keys = VolumeKeys::derive(master, volume_id, params);
    let slot = Slot::create(&keys, source, kdf)?;
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let bytes = build(&keys, created, &[slot], ext)?;
    Ok((bytes, keys))
}

/// A fresh random volume id.
pub fn new_volume_id() -> [u8; 16] {
    random_array()
}

/// Parse (bounds-checking everything before use), try each slot matching the source kind,
/// check the key commitment in constant time (`WrongKey` if none matches), derive keys,
/// and verify the header MAC (`Tampered("volume header")` if bad).
pub fn open_header(bytes: &[u8], source: &KeySource) -> Result<VolumeKeys, CryptoError> {
    Header::parse(bytes)?.unlock(source)
}

/// Key-free look at a header: version, volume id, params, slot kinds (unauthenticated).
pub fn peek_header(bytes: &[u8]) -> Result<HeaderInfo, CryptoError> {
    Header::parse(bytes).map(|h| h.info())
}

/// Header bytes with one more slot for `source`; `keys` must unlock `bytes`.
pub fn add_key_slot(
    bytes: &[u8],
    keys: &VolumeKeys,
    source: &KeySource,
    kdf: Argon2Params,
) -> Result<Vec<u8>, CryptoError> {
    Header::parse(bytes)?.with_added_slot(keys, source, kdf)
}

/// Header bytes without slot `index`; `keys` must unlock `bytes`. Note: a copy of the old
/// header still opens with the removed secret; only a rekey revokes it.
pub fn remove_key_slot(
    bytes: &[u8],
    keys: &VolumeKeys,
    index: usize,
) -> Result<Vec<u8>, CryptoError> {
    Header::parse(bytes)?.without_slot(keys, index)
}

#[cfg(test)]
mod tests;
