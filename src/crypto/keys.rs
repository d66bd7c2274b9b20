//! Key material: chunk ids, key sources, and the subkey hierarchy of an unlocked volume.
//!
//! ```text
//! PRK        = HKDF-SHA256-Extract(salt = "cryptbucket v1" || volume_id, ikm = master key)
//! header-mac = HKDF-Expand(PRK, "header-mac", 32)
//! metadata   = HKDF-Expand(PRK, "metadata", 32)
//! staging    = HKDF-Expand(PRK, "staging", 32)
//! commit     = HKDF-Expand(PRK, "commit", 32)
//! chunk key  = HKDF-Expand(PRK, "chunk" || volume_id || chunk_id, 32)
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::kdf::{hkdf_expand, hkdf_extract};
use super::{random_array, CryptoError, VolumeParams};

/// Salt prefix of the master-key HKDF extract (the volume id follows it).
pub(crate) const HKDF_SALT_PREFIX: &[u8] = b"cryptbucket v1";
/// Message prefix of the key commitment (the volume id follows it).
pub(crate) const COMMITMENT_MSG: &[u8] = b"cryptbucket key commitment";

/// Identity of a chunk: 128 random bits, never reused for different contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 16]);

impl ChunkId {
    /// A fresh random id (from the OS CSPRNG).
    pub fn random() -> Self {
        ChunkId(random_array())
    }

    /// 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse exactly 32 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, CryptoError> {
        super::hex_array(s, "chunk id").map(ChunkId)
    }

    /// Object key in the bucket: `d/<first byte, 2 hex>/<32 hex>`.
    pub fn object_key(&self) -> String {
        format!("d/{:02x}/{}", self.0[0], self.to_hex())
    }
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Secret material handed to the header code. Both variants zeroize on drop.
///
/// - `Passphrase`: its UTF-8 bytes, as typed (no Unicode normalization), go through
///   Argon2id with the slot's salt and parameters.
/// - `Keyfile`: the whole file's bytes (any length >= 16; 32 random bytes recommended, see
///   [`generate_keyfile_bytes`]) go through HKDF-SHA256 with the slot's salt, so any file of
///   enough entropy works, but a short or guessable file is as weak as its content.
/// - `Kms`: a data key that AWS KMS returned for one KMS slot (GenerateDataKey when the
///   slot is made, Decrypt of the slot's stored ciphertext blob at unlock).
pub enum KeySource {
    Passphrase(Zeroizing<String>),
    Keyfile(Zeroizing<Vec<u8>>),
    Kms(KmsKey),
}

impl KeySource {
    /// Slot kind name: "passphrase", "keyfile" or "kms".
    pub fn kind(&self) -> &'static str {
        match self {
            KeySource::Passphrase(_) => "passphrase",
            KeySource::Keyfile(_) => "keyfile",
            KeySource::Kms(_) => "kms",
        }
    }

    /// Bytes that hand this source to another process of ours (the mount daemon, over a
    /// pipe): a tag byte, then the secret. Zeroized on drop.
    pub fn handoff_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut v = Zeroizing::new(Vec::new());
        match self {
            KeySource::Passphrase(p) => {
                v.push(b'P');
                v.extend_from_slice(p.as_bytes());
            }
            KeySource::Keyfile(k) => {
                v.push(b'K');
                v.extend_from_slice(k);
            }
            KeySource::Kms(k) => {
                // 'M', key id length (u16 LE), key id, data key (32), blob.
                v.push(b'M');
                let id = k.key_id.as_bytes();
                v.extend_from_slice(&(id.len() as u16).to_le_bytes());
                v.extend_from_slice(id);
                v.extend_from_slice(k.data_key.as_ref());
                v.extend_from_slice(&k.blob);
            }
        }
        v
    }

    /// The inverse of [`KeySource::handoff_bytes`].
    pub fn from_handoff(bytes: &[u8]) -> Result<KeySource, CryptoError> {
        let bad = || CryptoError::InvalidArgument("malformed key hand-off".into());
        match bytes.split_first() {
            Some((b'P', rest)) => Ok(KeySource::Passphrase(Zeroizing::new(
                String::from_utf8(rest.to_vec()).map_err(|_| bad())?,
            ))),
            Some((b'K', rest)) => Ok(KeySource::Keyfile(Zeroizing::new(rest.to_vec()))),
            Some((b'M', rest)) => {
                let n = u16::from_le_bytes(
                    rest.get(..2)
                        .ok_or_else(bad)?
                        .try_into()
                        .map_err(|_| bad())?,
                ) as usize;
                let id = rest.get(2..2 + n).ok_or_else(bad)?;
                let dk = rest.get(2 + n..2 + n + 32).ok_or_else(bad)?;
                let blob = rest.get(2 + n + 32..).ok_or_else(bad)?;
                Ok(KeySource::Kms(KmsKey::new(
                    String::from_utf8(id.to_vec()).map_err(|_| bad())?,
                    blob.to_vec(),
                    Zeroizing::new(dk.to_vec()),
                )?))
            }
            _ => Err(bad()),
        }
    }
}

/// Longest KMS key id (ARN or alias) a slot may name.
pub const MAX_KMS_KEY_ID_LEN: usize = 2048;
/// Longest KMS ciphertext blob a slot may hold (AES_256 data keys give ~184 bytes).
pub const MAX_KMS_BLOB_LEN: usize = 6144;

/// A KMS data key with what names it: the key id it was made under and the ciphertext
/// blob KMS returned (stored in the slot). The plaintext data key is zeroized on drop and
/// never leaves this module except through [`KeySource::handoff_bytes`].
pub struct KmsKey {
    pub(crate) key_id: String,
    pub(crate) blob: Vec<u8>,
    pub(crate) data_key: Zeroizing<[u8; 32]>,
}

impl KmsKey {
    /// Take the plaintext data key KMS returned (must be 32 bytes: KeySpec AES_256).
    pub fn new(
        key_id: String,
        blob: Vec<u8>,
        plaintext: Zeroizing<Vec<u8>>,
    ) -> Result<KmsKey, CryptoError> {
        if plaintext.len() != 32 {
            return Err(CryptoError::InvalidArgument(format!(
                "KMS returned a data key of {} bytes; 32 (AES_256) expected",
                plaintext.len()
            )));
        }
        if key_id.is_empty() || key_id.len() > MAX_KMS_KEY_ID_LEN {
            return Err(CryptoError::InvalidArgument(
                "KMS key id is empty or too long".into(),
            ));
        }
        if blob.is_empty() || blob.len() > MAX_KMS_BLOB_LEN {
            return Err(CryptoError::InvalidArgument(format!(
                "KMS ciphertext blob of {} bytes (1..={MAX_KMS_BLOB_LEN} allowed)",
                blob.len()
            )));
        }
        let mut data_key = Zeroizing::new([0u8; 32]);
        data_key.copy_from_slice(&plaintext);
        Ok(KmsKey {
            key_id,
            blob,
            data_key,
        })
    }

    /// The KMS key id (ARN, key id or alias) as given when the slot was made.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

impl std::fmt::Debug for KmsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KmsKey{{key_id: {:?}, ..}}", self.key_id)
    }
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySource::{}(..)", self.kind())
    }
}

/// Minimum keyfile length in bytes.
pub const MIN_KEYFILE_LEN: usize = 16;

/// 32 fresh random bytes for a new keyfile (the caller writes it with mode 0600).
pub fn generate_keyfile_bytes() -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(vec![0u8; 32]);
    super::fill_random(&mut v);
    v
}

/// The unlocked volume: everything derived from the master key. Zeroizes on drop.
pub struct VolumeKeys {
    pub(super) volume_id: [u8; 16],
    pub(super) params: VolumeParams,
    pub(super) master: Zeroizing<[u8; 32]>,
    pub(super) prk: Zeroizing<[u8; 32]>,
    pub(super) header_mac_key: Zeroizing<[u8; 32]>,
    pub(super) metadata_key: Zeroizing<[u8; 32]>,
    pub(super) staging_key: Zeroizing<[u8; 32]>,
    pub(super) commit_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for VolumeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VolumeKeys{..}")
    }
}

impl VolumeKeys {
    /// Derive every subkey from `master`.
    pub(crate) fn derive(
        master: Zeroizing<[u8; 32]>,
        volume_id: [u8; 16],
        params: VolumeParams,
    ) -> Self {
        let mut salt = Vec::with_capacity(HKDF_SALT_PREFIX.len() + 16);
        salt.extend_from_slice(HKDF_SALT_PREFIX);
        salt.extend_from_slice(&volume_id);
        let prk = hkdf_extract(&salt, master.as_ref());
        VolumeKeys {
            volume_id,
            params,
            header_mac_key: hkdf_expand(&prk, &[b"header-mac"]),
            metadata_key: hkdf_expand(&prk, &[b"metadata"]),
            staging_key: hkdf_expand(&prk, &[b"staging"]),
            commit_key: hkdf_expand(&prk, &[b"commit"]),
            master,
            prk,
        }
    }

    /// Build keys from a known master key, for format test vectors only. Real volumes get
    /// their keys from [`super::open_header`] or [`super::create_header`].
    #[doc(hidden)]
    pub fn from_parts_for_tests(
        master: [u8; 32],
        volume_id: [u8; 16],
        params: VolumeParams,
    ) -> Self {
        Self::derive(Zeroizing::new(master), volume_id, params)
    }

    /// The volume id (also the name of the local state directory).
    pub fn volume_id(&self) -> [u8; 16] {
        self.volume_id
    }

    /// The authenticated volume parameters.
    pub fn params(&self) -> &VolumeParams {
        &self.params
    }

    /// Per-chunk key: HKDF-Expand(PRK, "chunk" || volume_id || chunk_id).
    pub(crate) fn chunk_key(&self, id: &ChunkId) -> Zeroizing<[u8; 32]> {
        hkdf_expand(&self.prk, &[b"chunk", &self.volume_id, &id.0])
    }

    /// The id a chunk gets when `rekey` re-seals chunk `old` under this (new) master key:
    /// the first 16 bytes of HKDF-Expand(PRK, "rekey chunk id" || old id). Deterministic,
    /// so a resumed rekey re-seals the same plaintext under the same id and key (same
    /// nonces, same bytes: no nonce is ever used for two plaintexts).
    pub fn rekeyed_chunk_id(&self, old: &ChunkId) -> ChunkId {
        let full = hkdf_expand(&self.prk, &[b"rekey chunk id", &old.0]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&full[..16]);
        ChunkId(id)
    }

    /// Key commitment: HMAC-SHA256(commit key, "cryptbucket key commitment" || volume_id).
    pub(crate) fn commitment(&self) -> [u8; 32] {
        hmac_sha256(&self.commit_key, &[COMMITMENT_MSG, &self.volume_id])
    }

    /// Header MAC: HMAC-SHA256(header-mac key, body bytes).
    pub(crate) fn header_mac(&self, body: &[u8]) -> [u8; 32] {
        hmac_sha256(&self.header_mac_key, &[body])
    }
}

/// HMAC-SHA256 over the concatenation of `parts`.
pub(crate) fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_id_hex_and_key() {
        let id = ChunkId([0xab; 16]);
        assert_eq!(id.to_hex(), "ab".repeat(16));
        assert_eq!(ChunkId::from_hex(&id.to_hex()).unwrap(), id);
        assert_eq!(ChunkId::from_hex(&"AB".repeat(16)).unwrap(), id);
        assert_eq!(id.object_key(), format!("d/ab/{}", "ab".repeat(16)));
        let id2 = ChunkId([0x05; 16]);
        assert!(id2.object_key().starts_with("d/05/0505"));
        for bad in [
            "",
            "ab",
            &"ab".repeat(17),
            &"zz".repeat(16),
            &"é".repeat(16),
        ] {
            assert!(matches!(
                ChunkId::from_hex(bad),
                Err(CryptoError::Format(_))
            ));
        }
        assert_ne!(ChunkId::random(), ChunkId::random());
    }

    #[test]
    fn subkeys_are_distinct_and_bound_to_volume() {
        let p = VolumeParams::default();
        let a = VolumeKeys::from_parts_for_tests([1; 32], [2; 16], p.clone());
        let b = VolumeKeys::from_parts_for_tests([1; 32], [3; 16], p.clone());
        let keys = [
            *a.header_mac_key,
            *a.metadata_key,
            *a.staging_key,
            *a.commit_key,
            *a.chunk_key(&ChunkId([0; 16])),
            *a.chunk_key(&ChunkId([1; 16])),
            *b.metadata_key,
            *b.chunk_key(&ChunkId([0; 16])),
        ];
        for i in 0..keys.len() {
            for j in i + 1..keys.len() {
                assert_ne!(keys[i], keys[j], "{i} {j}");
            }
        }
        assert_ne!(a.commitment(), b.commitment());
        assert_eq!(format!("{a:?}"), "VolumeKeys{..}");
        let src = KeySource::Passphrase(Zeroizing::new("secret".into()));
        assert!(!format!("{src:?}").contains("secret"));
    }

    #[test]
    fn keyfile_bytes() {
        let k = generate_keyfile_bytes();
        assert_eq!(k.len(), 32);
        assert_ne!(*k, *generate_keyfile_bytes());
    }

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn volume_keys_send_sync() {
        assert_send_sync::<VolumeKeys>();
    }
}
