//! The two supported AEADs (AES-256-GCM, XChaCha20-Poly1305) behind one small interface.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use chacha20poly1305::aead::generic_array::GenericArray;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::XChaCha20Poly1305;

use super::TAG_LEN;

/// Content cipher of a volume (chunks and records). Key slots always use XChaCha20-Poly1305.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Cipher {
    /// AES-256-GCM, 96-bit nonce; uses hardware AES where present.
    #[serde(rename = "aes256gcm")]
    Aes256Gcm,
    /// XChaCha20-Poly1305, 192-bit nonce; constant time without hardware support.
    #[serde(rename = "xchacha20poly1305")]
    XChaCha20Poly1305,
}

/// Hardware AES is common and per-chunk / per-record keys make the 96-bit nonce a non-issue.
pub const DEFAULT_CIPHER: Cipher = Cipher::Aes256Gcm;

impl Cipher {
    /// Canonical name, as stored in the header.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes256Gcm => "aes256gcm",
            Cipher::XChaCha20Poly1305 => "xchacha20poly1305",
        }
    }

    /// Nonce length in bytes (12 for AES-GCM, 24 for XChaCha20-Poly1305).
    pub fn nonce_len(self) -> usize {
        match self {
            Cipher::Aes256Gcm => 12,
            Cipher::XChaCha20Poly1305 => 24,
        }
    }
}

impl std::fmt::Display for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Cipher {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "aes256gcm" | "aes-256-gcm" => Ok(Cipher::Aes256Gcm),
            "xchacha20poly1305" | "xchacha20-poly1305" => Ok(Cipher::XChaCha20Poly1305),
            _ => Err(format!(
                "unknown cipher {s:?}: valid values are aes256gcm (alias aes-256-gcm) and \
                 xchacha20poly1305 (alias xchacha20-poly1305)"
            )),
        }
    }
}

/// A keyed AEAD instance. Both implementations zeroize or hold only transient key state;
/// callers keep the raw key in `Zeroizing` storage.
pub(crate) enum Aead {
    Aes(Box<LessSafeKey>),
    XChaCha(Box<XChaCha20Poly1305>),
}

/// The 96-bit AES-GCM nonce from the first 12 bytes of `n` (callers pass at least that).
fn aes_nonce(n: &[u8]) -> Nonce {
    let mut a = [0u8; 12];
    a.copy_from_slice(&n[..12]);
    Nonce::assume_unique_for_key(a)
}

/// The AEAD failed to authenticate (the caller says what).
#[derive(Debug)]
pub(crate) struct AuthFailed;

impl Aead {
    pub(crate) fn new(cipher: Cipher, key: &[u8; 32]) -> Self {
        match cipher {
            Cipher::Aes256Gcm => {
                // A 32-byte key is always valid for AES-256-GCM.
                let k = UnboundKey::new(&AES_256_GCM, key)
                    .unwrap_or_else(|_| panic!("AES-256-GCM rejected a 32-byte key"));
                Aead::Aes(Box::new(LessSafeKey::new(k)))
            }
            Cipher::XChaCha20Poly1305 => Aead::XChaCha(Box::new(XChaCha20Poly1305::new(
                GenericArray::from_slice(key),
            ))),
        }
    }

    fn cipher(&self) -> Cipher {
        match self {
            Aead::Aes(_) => Cipher::Aes256Gcm,
            Aead::XChaCha(_) => Cipher::XChaCha20Poly1305,
        }
    }

    /// Nonce for `counter`: the u32 little-endian, zero-padded to the cipher's nonce length.
    pub(crate) fn counter_nonce(&self, counter: u32) -> [u8; 24] {
        let mut n = [0u8; 24];
        n[..4].copy_from_slice(&counter.to_le_bytes());
        n
    }

    /// Encrypt `buf` in place; returns the tag. `nonce` must be at least the nonce length
    /// (only the first `nonce_len` bytes are used).
    pub(crate) fn seal_in_place(&self, nonce: &[u8], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let n = &nonce[..self.cipher().nonce_len()];
        // Encryption fails only for inputs longer than the AEAD limit (64 GiB), which the
        // format never produces.
        const TOO_LONG: &str = "AEAD encryption failed: message exceeds the cipher's limit";
        match self {
            Aead::Aes(c) => {
                let mut t = [0u8; TAG_LEN];
                let nonce = aes_nonce(n);
                match c.seal_in_place_separate_tag(nonce, Aad::from(aad), buf) {
                    Ok(tag) => t.copy_from_slice(tag.as_ref()),
                    Err(_) => panic!("{TOO_LONG}"),
                }
                t
            }
            Aead::XChaCha(c) => {
                match c.encrypt_in_place_detached(GenericArray::from_slice(n), aad, buf) {
                    Ok(t) => t.into(),
                    Err(_) => panic!("{TOO_LONG}"),
                }
            }
        }
    }

    /// Decrypt `buf` in place after checking `tag`. On failure `buf` holds garbage.
    pub(crate) fn open_in_place(
        &self,
        nonce: &[u8],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<(), AuthFailed> {
        let n = &nonce[..self.cipher().nonce_len()];
        if tag.len() != TAG_LEN {
            return Err(AuthFailed);
        }
        match self {
            Aead::Aes(c) => c
                .open_in_place_separate_tag(aes_nonce(n), Aad::from(aad), tag, buf)
                .map(|_| ())
                .map_err(|_| AuthFailed),
            Aead::XChaCha(c) => c
                .decrypt_in_place_detached(
                    GenericArray::from_slice(n),
                    aad,
                    buf,
                    GenericArray::from_slice(tag),
                )
                .map_err(|_| AuthFailed),
        }
    }

    /// Decrypt `ct` into `out` (same length) after checking `tag`; AES-GCM reads the
    /// ciphertext once instead of copying it first. On failure `out` holds garbage.
    pub(crate) fn open_into(
        &self,
        nonce: &[u8],
        aad: &[u8],
        ct: &[u8],
        tag: &[u8],
        out: &mut [u8],
    ) -> Result<(), AuthFailed> {
        if ct.len() != out.len() {
            return Err(AuthFailed);
        }
        match self {
            Aead::Aes(c) => {
                let n = &nonce[..self.cipher().nonce_len()];
                if tag.len() != TAG_LEN {
                    return Err(AuthFailed);
                }
                c.open_separate_gather(aes_nonce(n), Aad::from(aad), ct, tag, out)
                    .map_err(|_| AuthFailed)
            }
            Aead::XChaCha(_) => {
                out.copy_from_slice(ct);
                self.open_in_place(nonce, aad, out, tag)
            }
        }
    }

    /// Seal `plaintext` into a new `ciphertext || tag` vector.
    pub(crate) fn seal(&self, nonce: &[u8], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        let tag = self.seal_in_place(nonce, aad, &mut out);
        out.extend_from_slice(&tag);
        out
    }

    /// Open `ciphertext || tag` into a new plaintext vector.
    #[cfg(test)]
    pub(crate) fn open(
        &self,
        nonce: &[u8],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, AuthFailed> {
        if sealed.len() < TAG_LEN {
            return Err(AuthFailed);
        }
        let (ct, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let mut out = ct.to_vec();
        self.open_in_place(nonce, aad, &mut out, tag)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in [Cipher::Aes256Gcm, Cipher::XChaCha20Poly1305] {
            assert_eq!(c.to_string().parse::<Cipher>().unwrap(), c);
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{c}\""));
            assert_eq!(serde_json::from_str::<Cipher>(&json).unwrap(), c);
        }
        assert_eq!("aes-256-gcm".parse::<Cipher>().unwrap(), Cipher::Aes256Gcm);
        assert_eq!(
            "xchacha20-poly1305".parse::<Cipher>().unwrap(),
            Cipher::XChaCha20Poly1305
        );
        let err = "rot13".parse::<Cipher>().unwrap_err();
        assert!(err.contains("aes256gcm") && err.contains("xchacha20poly1305"));
        assert_eq!(DEFAULT_CIPHER, Cipher::Aes256Gcm);
    }

    #[test]
    fn seal_open_and_tamper() {
        for c in [Cipher::Aes256Gcm, Cipher::XChaCha20Poly1305] {
            let a = Aead::new(c, &[7u8; 32]);
            let n = a.counter_nonce(3);
            let s = a.seal(&n, b"aad", b"hello");
            assert_eq!(s.len(), 5 + TAG_LEN);
            assert_eq!(a.open(&n, b"aad", &s).unwrap(), b"hello");
            assert!(a.open(&n, b"aae", &s).is_err());
            assert!(a.open(&a.counter_nonce(4), b"aad", &s).is_err());
            let mut bad = s.clone();
            bad[0] ^= 1;
            assert!(a.open(&n, b"aad", &bad).is_err());
            assert!(a.open(&n, b"aad", &s[..10]).is_err());
            let other = Aead::new(c, &[8u8; 32]);
            assert!(other.open(&n, b"aad", &s).is_err());
            // Out of place: same plaintext, same checks.
            let (ct, tag) = s.split_at(5);
            let mut out = [0u8; 5];
            a.open_into(&n, b"aad", ct, tag, &mut out).unwrap();
            assert_eq!(&out, b"hello");
            assert!(a.open_into(&n, b"aae", ct, tag, &mut out).is_err());
            assert!(a.open_into(&n, b"aad", &bad[..5], tag, &mut out).is_err());
            assert!(a.open_into(&n, b"aad", ct, &tag[1..], &mut out).is_err());
            assert!(a.open_into(&n, b"aad", ct, tag, &mut [0u8; 4]).is_err());
        }
    }
}
