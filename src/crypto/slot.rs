//! Key slots: each wraps the master key under a key-encryption key (KEK) derived from a
//! passphrase (Argon2id), a keyfile (HKDF) or an AWS KMS data key (HKDF), and commits to
//! the master key.
//!
//! Wrapping always uses XChaCha20-Poly1305 with a random 24-byte nonce, AAD =
//! "cryptbucket key slot" || format version || volume id || kind byte (1 passphrase,
//! 2 keyfile, 3 kms). A KMS slot also stores the KMS key id and the ciphertext blob of its
//! data key; KEK = HKDF-SHA256(salt, data key, "kms"). Commitment = HMAC-SHA256(commit subkey, "cryptbucket key commitment" ||
//! volume id), compared in constant time before the unwrapped key is used.

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::cipher::Aead;
use super::kdf::{argon2id, hkdf};
use super::keys::{MAX_KMS_BLOB_LEN, MAX_KMS_KEY_ID_LEN, MIN_KEYFILE_LEN};
use super::{
    hex_array, random_array, Argon2Params, Cipher, CryptoError, KeySource, VolumeKeys,
    VolumeParams, FORMAT_VERSION,
};

const SLOT_AAD_PREFIX: &[u8] = b"cryptbucket key slot";
const WRAPPED_LEN: usize = 32 + 16;

/// How a slot's KEK is derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    Passphrase,
    Keyfile,
    Kms,
}

impl SlotKind {
    pub fn name(self) -> &'static str {
        match self {
            SlotKind::Passphrase => "passphrase",
            SlotKind::Keyfile => "keyfile",
            SlotKind::Kms => "kms",
        }
    }

    fn byte(self) -> u8 {
        match self {
            SlotKind::Passphrase => 1,
            SlotKind::Keyfile => 2,
            SlotKind::Kms => 3,
        }
    }

    fn of(source: &KeySource) -> SlotKind {
        match source {
            KeySource::Passphrase(_) => SlotKind::Passphrase,
            KeySource::Keyfile(_) => SlotKind::Keyfile,
            KeySource::Kms(_) => SlotKind::Kms,
        }
    }
}

/// A slot as stored in the header body (all binary fields lowercase hex).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SlotJson {
    kind: String,
    salt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kdf: Option<Argon2Params>,
    nonce: String,
    wrapped: String,
    commitment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kms_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kms_blob: Option<String>,
}

/// What a KMS slot names: the key and the ciphertext blob to send to KMS Decrypt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsSlotRef {
    pub key_id: String,
    pub blob: Vec<u8>,
}

/// A parsed, bounds-checked slot.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    pub(crate) kind: SlotKind,
    salt: [u8; 16],
    kdf: Option<Argon2Params>,
    nonce: [u8; 24],
    wrapped: [u8; WRAPPED_LEN],
    commitment: [u8; 32],
    pub(crate) kms: Option<KmsSlotRef>,
}

fn wrap_aad(volume_id: &[u8; 16], kind: SlotKind) -> Vec<u8> {
    let mut a = Vec::with_capacity(SLOT_AAD_PREFIX.len() + 18);
    a.extend_from_slice(SLOT_AAD_PREFIX);
    a.push(FORMAT_VERSION);
    a.extend_from_slice(volume_id);
    a.push(kind.byte());
    a
}

fn kek(
    kind: SlotKind,
    source: &KeySource,
    salt: &[u8; 16],
    kdf: Option<&Argon2Params>,
) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    match (kind, source, kdf) {
        (SlotKind::Passphrase, KeySource::Passphrase(p), Some(params)) => {
            argon2id(p.as_bytes(), salt, params)
        }
        (SlotKind::Keyfile, KeySource::Keyfile(bytes), None) => {
            if bytes.len() < MIN_KEYFILE_LEN {
                return Err(CryptoError::InvalidArgument(format!(
                    "keyfile has {} bytes; at least {MIN_KEYFILE_LEN} are required",
                    bytes.len()
                )));
            }
            Ok(hkdf(salt, bytes, &[b"keyfile"]))
        }
        (SlotKind::Kms, KeySource::Kms(k), None) => Ok(hkdf(salt, k.data_key.as_ref(), &[b"kms"])),
        _ => Err(CryptoError::InvalidArgument(
            "key source does not match the slot kind".into(),
        )),
    }
}

impl Slot {
    /// Parse and bounds-check a stored slot.
    pub(crate) fn from_json(j: &SlotJson) -> Result<Slot, CryptoError> {
        let kind = match j.kind.as_str() {
            "passphrase" => SlotKind::Passphrase,
            "keyfile" => SlotKind::Keyfile,
            "kms" => SlotKind::Kms,
            other => {
                return Err(CryptoError::Format(format!(
                    "key slot kind {:?} is not supported by this build",
                    other.chars().take(32).collect::<String>()
                )))
            }
        };
        match (kind, &j.kdf) {
            (SlotKind::Passphrase, Some(p)) => p.check()?,
            (SlotKind::Passphrase, None) => {
                return Err(CryptoError::Format(
                    "passphrase slot without kdf parameters".into(),
                ))
            }
            (SlotKind::Keyfile | SlotKind::Kms, Some(_)) => {
                return Err(CryptoError::Format(format!(
                    "{} slot with kdf parameters",
                    kind.name()
                )))
            }
            (SlotKind::Keyfile | SlotKind::Kms, None) => {}
        }
        let kms = match (kind, &j.kms_key_id, &j.kms_blob) {
            (SlotKind::Kms, Some(id), Some(blob)) => {
                if id.is_empty() || id.len() > MAX_KMS_KEY_ID_LEN {
                    return Err(CryptoError::Format("kms slot key id length".into()));
                }
                if blob.is_empty() || blob.len() > 2 * MAX_KMS_BLOB_LEN {
                    return Err(CryptoError::Format("kms slot blob length".into()));
                }
                let blob = hex::decode(blob)
                    .map_err(|_| CryptoError::Format("kms slot blob: not valid hex".into()))?;
                Some(KmsSlotRef {
                    key_id: id.clone(),
                    blob,
                })
            }
            (SlotKind::Kms, _, _) => {
                return Err(CryptoError::Format(
                    "kms slot without key id or blob".into(),
                ))
            }
            (_, None, None) => None,
            _ => {
                return Err(CryptoError::Format(format!(
                    "{} slot with kms fields",
                    kind.name()
                )))
            }
        };
        Ok(Slot {
            kind,
            salt: hex_array(&j.salt, "key slot salt")?,
            kdf: j.kdf,
            nonce: hex_array(&j.nonce, "key slot nonce")?,
            wrapped: hex_array(&j.wrapped, "key slot wrapped key")?,
            commitment: hex_array(&j.commitment, "key slot commitment")?,
            kms,
        })
    }

    pub(crate) fn to_json(&self) -> SlotJson {
        SlotJson {
            kind: self.kind.name().to_string(),
            salt: hex::encode(self.salt),
            kdf: self.kdf,
            nonce: hex::encode(self.nonce),
            wrapped: hex::encode(self.wrapped),
            commitment: hex::encode(self.commitment),
            kms_key_id: self.kms.as_ref().map(|k| k.key_id.clone()),
            kms_blob: self.kms.as_ref().map(|k| hex::encode(&k.blob)),
        }
    }

    /// A new slot wrapping `keys`' master key for `source`.
    pub(crate) fn create(
        keys: &VolumeKeys,
        source: &KeySource,
        kdf: Argon2Params,
    ) -> Result<Slot, CryptoError> {
        let kind = SlotKind::of(source);
        let kdf = match source {
            KeySource::Passphrase(p) => {
                kdf.check()?;
                if p.is_empty() {
                    return Err(CryptoError::InvalidArgument(
                        "the passphrase is empty".into(),
                    ));
                }
                Some(kdf)
            }
            KeySource::Keyfile(_) | KeySource::Kms(_) => None,
        };
        let kms = match source {
            KeySource::Kms(k) => Some(KmsSlotRef {
                key_id: k.key_id.clone(),
                blob: k.blob.clone(),
            }),
            _ => None,
        };
        let salt: [u8; 16] = random_array();
        let nonce: [u8; 24] = random_array();
        let kek = kek(kind, source, &salt, kdf.as_ref())?;
        let aead = Aead::new(Cipher::XChaCha20Poly1305, &kek);
        let sealed = aead.seal(
            &nonce,
            &wrap_aad(&keys.volume_id, kind),
            keys.master.as_ref(),
        );
        let mut wrapped = [0u8; WRAPPED_LEN];
        wrapped.copy_from_slice(&sealed);
        Ok(Slot {
            kind,
            salt,
            kdf,
            nonce,
            wrapped,
            commitment: keys.commitment(),
            kms,
        })
    }

    /// The Argon2 parameters of a passphrase slot (kept when `rekey` re-wraps it).
    pub(crate) fn kdf(&self) -> Option<Argon2Params> {
        self.kdf
    }

    /// Try to unlock this slot: `Ok(None)` if the source is of another kind or does not
    /// unwrap the key or the unwrapped key fails the commitment.
    pub(crate) fn try_unlock(
        &self,
        source: &KeySource,
        volume_id: [u8; 16],
        params: &VolumeParams,
    ) -> Result<Option<VolumeKeys>, CryptoError> {
        if SlotKind::of(source) != self.kind {
            return Ok(None);
        }
        // A KMS data key belongs to exactly one blob: skip the other KMS slots.
        if let (KeySource::Kms(k), Some(r)) = (source, &self.kms) {
            if k.blob != r.blob {
                return Ok(None);
            }
        }
        let kek = kek(self.kind, source, &self.salt, self.kdf.as_ref())?;
        let aead = Aead::new(Cipher::XChaCha20Poly1305, &kek);
        let mut master = Zeroizing::new([0u8; 32]);
        master.copy_from_slice(&self.wrapped[..32]);
        let aad = wrap_aad(&volume_id, self.kind);
        if aead
            .open_in_place(&self.nonce, &aad, master.as_mut(), &self.wrapped[32..])
            .is_err()
        {
            return Ok(None);
        }
        let keys = VolumeKeys::derive(master, volume_id, params.clone());
        if bool::from(keys.commitment().ct_eq(&self.commitment)) {
            Ok(Some(keys))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> VolumeKeys {
        VolumeKeys::from_parts_for_tests([5; 32], [6; 16], VolumeParams::default())
    }

    fn pass(s: &str) -> KeySource {
        KeySource::Passphrase(Zeroizing::new(s.to_string()))
    }

    #[test]
    fn passphrase_and_keyfile_slots() {
        let k = keys();
        let p = k.params().clone();
        let kf = KeySource::Keyfile(Zeroizing::new(vec![3u8; 32]));
        let sp = Slot::create(&k, &pass("pw"), Argon2Params::MINIMUM).unwrap();
        let sk = Slot::create(&k, &kf, Argon2Params::MINIMUM).unwrap();
        // JSON round trip.
        let sp = Slot::from_json(&sp.to_json()).unwrap();
        let sk = Slot::from_json(&sk.to_json()).unwrap();
        assert!(sk.to_json().kdf.is_none());
        let u = sp.try_unlock(&pass("pw"), [6; 16], &p).unwrap().unwrap();
        assert_eq!(*u.master, *k.master);
        let u = sk.try_unlock(&kf, [6; 16], &p).unwrap().unwrap();
        assert_eq!(*u.master, *k.master);
        // Wrong secrets, wrong kind, wrong volume id.
        assert!(sp.try_unlock(&pass("pW"), [6; 16], &p).unwrap().is_none());
        assert!(sp.try_unlock(&kf, [6; 16], &p).unwrap().is_none());
        assert!(sk.try_unlock(&pass("pw"), [6; 16], &p).unwrap().is_none());
        let kf2 = KeySource::Keyfile(Zeroizing::new(vec![4u8; 32]));
        assert!(sk.try_unlock(&kf2, [6; 16], &p).unwrap().is_none());
        assert!(sk.try_unlock(&kf, [7; 16], &p).unwrap().is_none());
        // Short keyfile, empty passphrase, out-of-bounds KDF.
        let short = KeySource::Keyfile(Zeroizing::new(vec![1u8; 15]));
        assert!(matches!(
            sk.try_unlock(&short, [6; 16], &p),
            Err(CryptoError::InvalidArgument(_))
        ));
        assert!(matches!(
            Slot::create(&k, &short, Argon2Params::MINIMUM),
            Err(CryptoError::InvalidArgument(_))
        ));
        assert!(matches!(
            Slot::create(&k, &pass(""), Argon2Params::MINIMUM),
            Err(CryptoError::InvalidArgument(_))
        ));
        let weak = Argon2Params {
            m_kib: 1024,
            ..Argon2Params::MINIMUM
        };
        assert!(matches!(
            Slot::create(&k, &pass("pw"), weak),
            Err(CryptoError::KdfParams(_))
        ));
    }

    #[test]
    fn commitment_checked() {
        let k = keys();
        let s = Slot::create(&k, &pass("pw"), Argon2Params::MINIMUM).unwrap();
        let mut j = s.to_json();
        let mut c = hex_array::<32>(&j.commitment, "c").unwrap();
        c[31] ^= 1;
        j.commitment = hex::encode(c);
        let s = Slot::from_json(&j).unwrap();
        assert!(s
            .try_unlock(&pass("pw"), [6; 16], k.params())
            .unwrap()
            .is_none());
    }

    #[test]
    fn parse_bounds() {
        let k = keys();
        let good = Slot::create(&k, &pass("pw"), Argon2Params::MINIMUM)
            .unwrap()
            .to_json();
        let mut j = good.clone();
        j.kdf = Some(Argon2Params {
            m_kib: 1 << 30,
            ..Argon2Params::MINIMUM
        });
        assert!(matches!(
            Slot::from_json(&j),
            Err(CryptoError::KdfParams(_))
        ));
        let mut j = good.clone();
        j.kdf = Some(Argon2Params {
            t: 0,
            ..Argon2Params::MINIMUM
        });
        assert!(matches!(
            Slot::from_json(&j),
            Err(CryptoError::KdfParams(_))
        ));
        let mut j = good.clone();
        j.kdf = None;
        assert!(matches!(Slot::from_json(&j), Err(CryptoError::Format(_))));
        let mut j = good.clone();
        j.kind = "kms".into();
        assert!(matches!(Slot::from_json(&j), Err(CryptoError::Format(_))));
        let mut j = good.clone();
        j.salt.push('0');
        assert!(matches!(Slot::from_json(&j), Err(CryptoError::Format(_))));
        let mut j = good.clone();
        j.wrapped = "zz".repeat(48);
        assert!(matches!(Slot::from_json(&j), Err(CryptoError::Format(_))));
        let mut j = good;
        j.nonce.truncate(46);
        assert!(matches!(Slot::from_json(&j), Err(CryptoError::Format(_))));
    }

    fn kms(blob: u8, dk: u8) -> KeySource {
        KeySource::Kms(
            super::super::KmsKey::new(
                "alias/test".into(),
                vec![blob; 40],
                Zeroizing::new(vec![dk; 32]),
            )
            .unwrap(),
        )
    }

    #[test]
    fn kms_slots() {
        let k = keys();
        let p = k.params().clone();
        let s = Slot::create(&k, &kms(1, 2), Argon2Params::MINIMUM).unwrap();
        let j = s.to_json();
        assert_eq!(j.kind, "kms");
        assert!(j.kdf.is_none());
        assert_eq!(j.kms_key_id.as_deref(), Some("alias/test"));
        let s = Slot::from_json(&j).unwrap();
        let u = s.try_unlock(&kms(1, 2), [6; 16], &p).unwrap().unwrap();
        assert_eq!(*u.master, *k.master);
        // Another data key for the same blob, or another blob, does not open it.
        assert!(s.try_unlock(&kms(1, 3), [6; 16], &p).unwrap().is_none());
        assert!(s.try_unlock(&kms(9, 2), [6; 16], &p).unwrap().is_none());
        assert!(s.try_unlock(&pass("pw"), [6; 16], &p).unwrap().is_none());
        // Fields are required for kms slots and refused elsewhere.
        let mut bad = j.clone();
        bad.kms_blob = None;
        assert!(matches!(Slot::from_json(&bad), Err(CryptoError::Format(_))));
        let mut bad = j.clone();
        bad.kms_key_id = Some(String::new());
        assert!(matches!(Slot::from_json(&bad), Err(CryptoError::Format(_))));
        let mut bad = j.clone();
        bad.kms_blob = Some("ab".repeat(MAX_KMS_BLOB_LEN + 1));
        assert!(matches!(Slot::from_json(&bad), Err(CryptoError::Format(_))));
        let mut pj = Slot::create(&k, &pass("pw"), Argon2Params::MINIMUM)
            .unwrap()
            .to_json();
        pj.kms_key_id = j.kms_key_id.clone();
        pj.kms_blob = j.kms_blob.clone();
        assert!(matches!(Slot::from_json(&pj), Err(CryptoError::Format(_))));
        // A data key of the wrong size is refused up front.
        assert!(
            super::super::KmsKey::new("k".into(), vec![1], Zeroizing::new(vec![0; 16])).is_err()
        );
    }

    #[test]
    fn handoff_round_trip() {
        for src in [
            pass("pässword"),
            KeySource::Keyfile(Zeroizing::new(vec![7; 33])),
            kms(4, 5),
        ] {
            let b = src.handoff_bytes();
            let back = KeySource::from_handoff(&b).unwrap();
            assert_eq!(*back.handoff_bytes(), *b);
            assert_eq!(back.kind(), src.kind());
        }
        assert!(KeySource::from_handoff(b"").is_err());
        assert!(KeySource::from_handoff(b"M\x05\x00ab").is_err());
        assert!(!format!("{:?}", kms(4, 5)).contains("5, 5"));
    }
}
