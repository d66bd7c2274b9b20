//! Key derivation: Argon2id for passphrases (with bounded parameters) and HKDF-SHA256.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use super::CryptoError;

/// Argon2id cost parameters, stored in each passphrase slot.
///
/// Bounds (checked when creating a slot and again when reading one, so a tampered header
/// can neither demand absurd memory nor downgrade the cost to nothing):
/// `m_kib` in [8192, 4194304] (8 MiB .. 4 GiB), `t` in [1, 20], `p` in [1, 64].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes (time cost).
    pub t: u32,
    /// Lanes (parallelism).
    pub p: u32,
}

impl Argon2Params {
    pub const MIN_M_KIB: u32 = 8192;
    pub const MAX_M_KIB: u32 = 4 * 1024 * 1024;
    pub const MIN_T: u32 = 1;
    pub const MAX_T: u32 = 20;
    pub const MIN_P: u32 = 1;
    pub const MAX_P: u32 = 64;

    /// The cheapest parameters the format accepts (for tests only: weak against guessing).
    pub const MINIMUM: Argon2Params = Argon2Params {
        m_kib: Self::MIN_M_KIB,
        t: Self::MIN_T,
        p: Self::MIN_P,
    };

    /// Check the bounds; `KdfParams` names the offending value.
    pub fn check(&self) -> Result<(), CryptoError> {
        fn within(name: &str, v: u32, lo: u32, hi: u32) -> Result<(), CryptoError> {
            if v < lo || v > hi {
                return Err(CryptoError::KdfParams(format!(
                    "argon2id {name} = {v} is outside [{lo}, {hi}]"
                )));
            }
            Ok(())
        }
        within("m_kib", self.m_kib, Self::MIN_M_KIB, Self::MAX_M_KIB)?;
        within("t", self.t, Self::MIN_T, Self::MAX_T)?;
        within("p", self.p, Self::MIN_P, Self::MAX_P)?;
        Ok(())
    }
}

impl Default for Argon2Params {
    /// RFC 9106 second recommended option: 64 MiB, 3 passes, 4 lanes.
    fn default() -> Self {
        Argon2Params {
            m_kib: 65536,
            t: 3,
            p: 4,
        }
    }
}

/// `CRYPTBUCKET_TEST_FAST_KDF=1` selects [`Argon2Params::MINIMUM`] (tests); otherwise the
/// default parameters.
pub fn argon2_params_from_env() -> Argon2Params {
    match std::env::var("CRYPTBUCKET_TEST_FAST_KDF") {
        Ok(v) if v == "1" => Argon2Params::MINIMUM,
        _ => Argon2Params::default(),
    }
}

/// Argon2id (version 0x13) of `passphrase` with `salt`, 32-byte output. Checks bounds first.
pub(crate) fn argon2id(
    passphrase: &[u8],
    salt: &[u8],
    params: &Argon2Params,
) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    params.check()?;
    let p = argon2::Params::new(params.m_kib, params.t, params.p, Some(32))
        .map_err(|e| CryptoError::KdfParams(format!("argon2id rejected the parameters: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut out = Zeroizing::new([0u8; 32]);
    a.hash_password_into(passphrase, salt, out.as_mut())
        .map_err(|e| CryptoError::KdfParams(format!("argon2id failed: {e}")))?;
    Ok(out)
}

/// HKDF-SHA256 extract: PRK = HMAC-SHA256(salt, ikm).
pub(crate) fn hkdf_extract(salt: &[u8], ikm: &[u8]) -> Zeroizing<[u8; 32]> {
    let (mut prk, _) = Hkdf::<Sha256>::extract(Some(salt), ikm);
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&prk);
    prk.as_mut_slice().zeroize();
    out
}

/// HKDF-SHA256 expand of a 32-byte PRK to 32 bytes, `info` given as concatenated parts.
pub(crate) fn hkdf_expand(prk: &[u8; 32], info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    // A 32-byte PRK is always valid and 32 bytes is far below the 255*32 output limit.
    let hk = match Hkdf::<Sha256>::from_prk(prk) {
        Ok(h) => h,
        Err(_) => unreachable!("a 32-byte PRK is valid for HKDF-SHA256"),
    };
    if hk.expand_multi_info(info, out.as_mut()).is_err() {
        unreachable!("32 bytes is a valid HKDF-SHA256 output length");
    }
    out
}

/// Full HKDF-SHA256 (extract then expand) to 32 bytes.
pub(crate) fn hkdf(salt: &[u8], ikm: &[u8], info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let prk = hkdf_extract(salt, ikm);
    hkdf_expand(&prk, info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert!(Argon2Params::default().check().is_ok());
        assert!(Argon2Params::MINIMUM.check().is_ok());
        for bad in [
            Argon2Params {
                m_kib: 8191,
                ..Argon2Params::MINIMUM
            },
            Argon2Params {
                m_kib: 4 * 1024 * 1024 + 1,
                ..Argon2Params::MINIMUM
            },
            Argon2Params {
                t: 0,
                ..Argon2Params::MINIMUM
            },
            Argon2Params {
                t: 21,
                ..Argon2Params::MINIMUM
            },
            Argon2Params {
                p: 0,
                ..Argon2Params::MINIMUM
            },
            Argon2Params {
                p: 65,
                ..Argon2Params::MINIMUM
            },
        ] {
            assert!(
                matches!(bad.check(), Err(CryptoError::KdfParams(_))),
                "{bad:?}"
            );
            assert!(matches!(
                argon2id(b"pw", &[0u8; 16], &bad),
                Err(CryptoError::KdfParams(_))
            ));
        }
    }

    #[test]
    fn argon2id_deterministic_and_salted() {
        let a = argon2id(b"pw", &[1u8; 16], &Argon2Params::MINIMUM).unwrap();
        let b = argon2id(b"pw", &[1u8; 16], &Argon2Params::MINIMUM).unwrap();
        let c = argon2id(b"pw", &[2u8; 16], &Argon2Params::MINIMUM).unwrap();
        let d = argon2id(b"pX", &[1u8; 16], &Argon2Params::MINIMUM).unwrap();
        assert_eq!(*a, *b);
        assert_ne!(*a, *c);
        assert_ne!(*a, *d);
    }

    #[test]
    fn hkdf_rfc5869_case1() {
        // RFC 5869 test case 1 (first 32 bytes of OKM).
        let ikm = [0x0bu8; 22];
        let salt = hex::decode("000102030405060708090a0b0c").unwrap();
        let info = hex::decode("f0f1f2f3f4f5f6f7f8f9").unwrap();
        let prk = hkdf_extract(&salt, &ikm);
        assert_eq!(
            hex::encode(*prk),
            "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
        );
        let okm = hkdf_expand(&prk, &[&info[..4], &info[4..]]);
        assert_eq!(
            hex::encode(*okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        );
    }

    #[test]
    fn env_switch() {
        // Only reads the variable; the default is what we get without it.
        let p = argon2_params_from_env();
        assert!(p == Argon2Params::default() || p == Argon2Params::MINIMUM);
    }
}
