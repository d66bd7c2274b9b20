//! Record sealing for metadata (head, snapshots, journal segments) and local staging files.
//!
//! Layout: `prefix(6) || salt(32) || ciphertext || tag(16)`. Record key =
//! HKDF-SHA256(salt = salt, ikm = base key, info = "record" || kind byte), where the base
//! key is the metadata key (or the staging key for staging records). The key is fresh per
//! record (random 256-bit salt), so the nonce is all zero. AAD = the 6 prefix bytes.

use super::cipher::Aead;
use super::kdf::hkdf;
use super::prefix::{
    check_prefix, prefix, KIND_HEAD, KIND_JOURNAL, KIND_LEASE, KIND_REKEY, KIND_SNAPSHOT,
    KIND_STAGING, PREFIX_LEN,
};
use super::{random_array, CryptoError, VolumeKeys, TAG_LEN};

/// What a record is; sealed into its prefix, key derivation and AAD, so a record of one
/// kind never opens as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// `m/head`: pointer to the newest snapshot and journal position.
    Head,
    /// `m/snap/<id>`: metadata snapshot.
    Snapshot,
    /// `m/log/<id>`: journal segment.
    Journal,
    /// A local staging file (sealed with the staging key, never uploaded).
    Staging,
    /// `lock`: the writer lease (holder, host, pid, expiry).
    Lease,
    /// `m/rekey`: progress of a `rekey` (old chunk id -> re-sealed chunk), new key.
    Rekey,
}

impl RecordKind {
    /// The object kind byte of the prefix (head=2, snapshot=3, journal=4, staging=5, lease=6,
    /// rekey=7).
    pub fn object_kind(self) -> u8 {
        match self {
            RecordKind::Head => KIND_HEAD,
            RecordKind::Snapshot => KIND_SNAPSHOT,
            RecordKind::Journal => KIND_JOURNAL,
            RecordKind::Staging => KIND_STAGING,
            RecordKind::Lease => KIND_LEASE,
            RecordKind::Rekey => KIND_REKEY,
        }
    }

    /// Human name for messages.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Head => "head record",
            RecordKind::Snapshot => "snapshot record",
            RecordKind::Journal => "journal record",
            RecordKind::Staging => "staging record",
            RecordKind::Lease => "lease record",
            RecordKind::Rekey => "rekey progress record",
        }
    }
}

/// Largest plaintext a record may hold (1 GiB); larger sealed inputs are rejected unread.
pub const MAX_RECORD_PLAINTEXT: usize = 1 << 30;
/// Length of the random per-record salt.
pub const RECORD_SALT_LEN: usize = 32;
/// Bytes a record adds to its plaintext.
pub const RECORD_OVERHEAD: usize = PREFIX_LEN + RECORD_SALT_LEN + TAG_LEN;

impl VolumeKeys {
    fn record_aead(&self, kind: RecordKind, salt: &[u8]) -> Aead {
        let base = match kind {
            RecordKind::Staging => &self.staging_key,
            _ => &self.metadata_key,
        };
        let key = hkdf(salt, base.as_ref(), &[b"record", &[kind.object_kind()]]);
        Aead::new(self.params.cipher, &key)
    }

    /// Seal a metadata record (head, snapshot, journal segment, local staging file).
    pub fn seal_record(&self, kind: RecordKind, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(plaintext.len() + RECORD_OVERHEAD);
        self.seal_record_into(kind, &[plaintext], &mut out)?;
        Ok(out)
    }

    /// [`VolumeKeys::seal_record`] of the concatenation of `parts`, appended to `out`: the
    /// same bytes, without gathering the plaintext into a buffer of its own first (staging
    /// seals every write: a header and the data, framed by a length).
    pub fn seal_record_into(
        &self,
        kind: RecordKind,
        parts: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > MAX_RECORD_PLAINTEXT {
            return Err(CryptoError::InvalidArgument(format!(
                "{} of {len} bytes exceeds the {MAX_RECORD_PLAINTEXT}-byte limit",
                kind.name(),
            )));
        }
        let pre = prefix(kind.object_kind());
        let salt: [u8; RECORD_SALT_LEN] = random_array();
        let aead = self.record_aead(kind, &salt);
        out.reserve(len + RECORD_OVERHEAD);
        out.extend_from_slice(&pre);
        out.extend_from_slice(&salt);
        let start = out.len();
        for p in parts {
            out.extend_from_slice(p);
        }
        let tag = aead.seal_in_place(&[0u8; 24], &pre, &mut out[start..]);
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Open a record sealed by [`VolumeKeys::seal_record`] with the same `kind`.
    pub fn open_record(&self, kind: RecordKind, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let what = kind.name();
        if sealed.len() > MAX_RECORD_PLAINTEXT + RECORD_OVERHEAD {
            return Err(CryptoError::Format(format!(
                "{what} of {} bytes exceeds the size limit",
                sealed.len()
            )));
        }
        check_prefix(sealed, kind.object_kind(), what)?;
        if sealed.len() < RECORD_OVERHEAD {
            return Err(CryptoError::Tampered(format!("{what} (truncated)")));
        }
        let (pre, rest) = sealed.split_at(PREFIX_LEN);
        let (salt, body) = rest.split_at(RECORD_SALT_LEN);
        let (ct, tag) = body.split_at(body.len() - TAG_LEN);
        let aead = self.record_aead(kind, salt);
        let mut out = ct.to_vec();
        aead.open_in_place(&[0u8; 24], pre, &mut out, tag)
            .map_err(|_| CryptoError::Tampered(what.to_string()))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Cipher, VolumeParams};

    const KINDS: [RecordKind; 5] = [
        RecordKind::Head,
        RecordKind::Snapshot,
        RecordKind::Journal,
        RecordKind::Staging,
        RecordKind::Lease,
    ];

    fn keys(c: Cipher) -> VolumeKeys {
        let p = VolumeParams {
            cipher: c,
            ..VolumeParams::default()
        };
        VolumeKeys::from_parts_for_tests([1; 32], [2; 16], p)
    }

    #[test]
    fn sealing_parts_into_a_buffer_is_sealing_their_concatenation_after_it() {
        for c in [Cipher::Aes256Gcm, Cipher::XChaCha20Poly1305] {
            let k = keys(c);
            let (head, data) = (&b"header"[..], &[9u8; 5000][..]);
            let mut out = b"LEN:".to_vec();
            k.seal_record_into(RecordKind::Staging, &[head, data, b""], &mut out)
                .unwrap();
            assert_eq!(&out[..4], b"LEN:", "what was in the buffer stays");
            assert_eq!(out.len(), 4 + head.len() + data.len() + RECORD_OVERHEAD);
            let opened = k.open_record(RecordKind::Staging, &out[4..]).unwrap();
            assert_eq!(opened, [head, data].concat());
            // Bound to its kind like any record.
            assert!(k.open_record(RecordKind::Journal, &out[4..]).is_err());
        }
    }

    #[test]
    fn round_trip_and_fresh_salt() {
        for c in [Cipher::Aes256Gcm, Cipher::XChaCha20Poly1305] {
            let k = keys(c);
            for kind in KINDS {
                for pt in [&b""[..], b"x", &[7u8; 10000]] {
                    let s = k.seal_record(kind, pt).unwrap();
                    assert_eq!(s.len(), pt.len() + RECORD_OVERHEAD);
                    assert_eq!(s[5], kind.object_kind());
                    assert_eq!(k.open_record(kind, &s).unwrap(), pt);
                    let s2 = k.seal_record(kind, pt).unwrap();
                    assert_ne!(s, s2);
                }
            }
        }
    }

    #[test]
    fn wrong_kind_wrong_key_tamper() {
        let k = keys(Cipher::Aes256Gcm);
        for kind in KINDS {
            let s = k.seal_record(kind, b"some metadata").unwrap();
            for other in KINDS {
                if other == kind {
                    continue;
                }
                assert!(matches!(
                    k.open_record(other, &s),
                    Err(CryptoError::Tampered(_))
                ));
                // Even with the prefix rewritten to the other kind.
                let mut re = s.clone();
                re[5] = other.object_kind();
                assert!(matches!(
                    k.open_record(other, &re),
                    Err(CryptoError::Tampered(_))
                ));
            }
            for i in 0..s.len() {
                let mut bad = s.clone();
                bad[i] ^= 1;
                let r = k.open_record(kind, &bad);
                assert!(
                    matches!(
                        r,
                        Err(CryptoError::Tampered(_)) | Err(CryptoError::Format(_))
                    ),
                    "byte {i}: {r:?}"
                );
            }
            assert!(matches!(
                k.open_record(kind, &s[..s.len() - 1]),
                Err(CryptoError::Tampered(_))
            ));
            assert!(matches!(
                k.open_record(kind, &s[..RECORD_OVERHEAD - 1]),
                Err(CryptoError::Tampered(_))
            ));
            assert!(matches!(
                k.open_record(kind, &s[..3]),
                Err(CryptoError::Format(_))
            ));
            let other_vol = VolumeKeys::from_parts_for_tests([1; 32], [3; 16], k.params().clone());
            assert!(matches!(
                other_vol.open_record(kind, &s),
                Err(CryptoError::Tampered(_))
            ));
            assert!(matches!(
                keys(Cipher::XChaCha20Poly1305).open_record(kind, &s),
                Err(CryptoError::Tampered(_))
            ));
        }
    }
}
