//! Server-side encryption for the S3 backend, on top of cryptbucket's own client-side
//! encryption: SSE-S3, SSE-KMS (optionally with S3 Bucket Keys), DSSE-KMS, SSE-C.
//!
//! The chosen mode is stored in the volume header's authenticated `ext` JSON under `"sse"`
//! (never the SSE-C key). [`SseCustomerKey`] is one of the two places where key material
//! leaves `crypto` (see docs/DESIGN.md): it is opaque, zeroized on drop, and never printed.

use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::BackendError;

/// The key under which the SSE mode sits in the header's `ext` object.
pub const EXT_KEY: &str = "sse";

/// Which server-side encryption S3 applies to the objects we write.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "mode", deny_unknown_fields)]
pub enum SseMode {
    /// SSE-S3: `x-amz-server-side-encryption: AES256`.
    #[serde(rename = "AES256")]
    S3,
    /// SSE-KMS: `aws:kms`, an optional key id (else the account's `aws/s3` key), optionally
    /// with S3 Bucket Keys (far fewer KMS calls).
    #[serde(rename = "aws:kms")]
    Kms {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kms_key_id: Option<String>,
        #[serde(default)]
        bucket_key: bool,
    },
    /// DSSE-KMS: two layers of server-side encryption, `aws:kms:dsse`.
    #[serde(rename = "aws:kms:dsse")]
    Dsse {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kms_key_id: Option<String>,
    },
    /// SSE-C: the customer's 256-bit key is sent with every request (never stored).
    #[serde(rename = "SSE-C")]
    CustomerKey,
}

impl SseMode {
    /// Parse the `--sse` value plus its modifiers.
    pub fn from_flag(
        mode: &str,
        kms_key_id: Option<String>,
        bucket_key: bool,
    ) -> Result<SseMode, BackendError> {
        let no_kms_opts = |m: SseMode| {
            if kms_key_id.is_some() || bucket_key {
                Err(BackendError::Other(format!(
                    "--sse-kms-key-id and --bucket-key go with --sse aws:kms (or aws:kms:dsse for the key id), not {mode}"
                )))
            } else {
                Ok(m)
            }
        };
        match mode {
            "AES256" | "aes256" | "sse-s3" => no_kms_opts(SseMode::S3),
            "aws:kms" => Ok(SseMode::Kms {
                kms_key_id,
                bucket_key,
            }),
            "aws:kms:dsse" if bucket_key => Err(BackendError::Other(
                "--bucket-key does not apply to DSSE-KMS (aws:kms:dsse)".into(),
            )),
            "aws:kms:dsse" => Ok(SseMode::Dsse { kms_key_id }),
            other => Err(BackendError::Other(format!(
                "unknown --sse mode {other:?}: use AES256, aws:kms or aws:kms:dsse (SSE-C: --sse-c-key-file)"
            ))),
        }
    }

    /// A short human name.
    pub fn describe(&self) -> String {
        match self {
            SseMode::S3 => "SSE-S3 (AES256)".into(),
            SseMode::Kms {
                kms_key_id,
                bucket_key,
            } => format!(
                "SSE-KMS (key {}{})",
                kms_key_id.as_deref().unwrap_or("aws/s3"),
                if *bucket_key { ", S3 Bucket Key" } else { "" }
            ),
            SseMode::Dsse { kms_key_id } => format!(
                "DSSE-KMS (key {})",
                kms_key_id.as_deref().unwrap_or("aws/s3")
            ),
            SseMode::CustomerKey => "SSE-C".into(),
        }
    }

    /// The mode stored in a header's `ext` (None when the volume uses no SSE).
    pub fn from_ext(ext: &Map<String, Value>) -> Result<Option<SseMode>, BackendError> {
        match ext.get(EXT_KEY) {
            None => Ok(None),
            Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| {
                BackendError::Other(format!(
                    "the volume header names a server-side encryption this build does not know: {e}"
                ))
            }),
        }
    }

    /// Record this mode in a header's `ext`.
    pub fn to_ext(&self, ext: &mut Map<String, Value>) -> Result<(), BackendError> {
        let v = serde_json::to_value(self)
            .map_err(|e| BackendError::Other(format!("cannot encode SSE settings: {e}")))?;
        ext.insert(EXT_KEY.into(), v);
        Ok(())
    }
}

/// An SSE-C customer key: exactly 256 bits. Opaque: no accessor returns the raw bytes, and
/// `Debug` prints nothing of it.
pub struct SseCustomerKey {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SseCustomerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SseCustomerKey(..)")
    }
}

impl SseCustomerKey {
    /// From the contents of a key file: 32 raw bytes, or 64 hex digits, or the base64 of 32
    /// bytes (surrounding whitespace ignored in the text forms).
    pub fn from_file_bytes(bytes: &[u8]) -> Result<SseCustomerKey, BackendError> {
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() == 32 {
            key.copy_from_slice(bytes);
            return Ok(SseCustomerKey { key });
        }
        let bad = || {
            BackendError::Other(
                "an SSE-C key file must hold exactly 32 bytes, 64 hex digits, or the base64 of 32 bytes"
                    .into(),
            )
        };
        let text = std::str::from_utf8(bytes).map_err(|_| bad())?.trim();
        if text.len() == 64 && hex::decode_to_slice(text, key.as_mut()).is_ok() {
            return Ok(SseCustomerKey { key });
        }
        let decoded = Zeroizing::new(aws_smithy_types::base64::decode(text).map_err(|_| bad())?);
        if decoded.len() != 32 {
            return Err(bad());
        }
        key.copy_from_slice(&decoded);
        Ok(SseCustomerKey { key })
    }

    /// The `x-amz-server-side-encryption-customer-key` header value (base64 of the key).
    pub(crate) fn header_key(&self) -> Zeroizing<String> {
        Zeroizing::new(aws_smithy_types::base64::encode(self.key.as_ref()))
    }

    /// The `x-amz-server-side-encryption-customer-key-MD5` value (base64 of the key's MD5),
    /// which S3 uses to check the key arrived intact.
    pub fn header_key_md5(&self) -> String {
        use md5::{Digest, Md5};
        aws_smithy_types::base64::encode(Md5::digest(self.key.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_ext_round_trip() {
        let m = SseMode::from_flag("aws:kms", Some("alias/x".into()), true).expect("kms");
        let mut ext = Map::new();
        m.to_ext(&mut ext).expect("to ext");
        assert_eq!(
            ext[EXT_KEY],
            serde_json::json!({"mode": "aws:kms", "kms_key_id": "alias/x", "bucket_key": true})
        );
        assert_eq!(SseMode::from_ext(&ext).expect("parse"), Some(m));
        assert_eq!(SseMode::from_ext(&Map::new()).expect("none"), None);
        assert!(SseMode::from_flag("AES256", Some("k".into()), false).is_err());
        assert!(SseMode::from_flag("aws:kms:dsse", None, true).is_err());
        assert!(SseMode::from_flag("rot13", None, false).is_err());
        ext.insert(EXT_KEY.into(), serde_json::json!({"mode": "future"}));
        assert!(SseMode::from_ext(&ext).is_err());
    }

    #[test]
    fn customer_key_forms_and_md5() {
        let raw = [7u8; 32];
        let a = SseCustomerKey::from_file_bytes(&raw).expect("raw");
        let b = SseCustomerKey::from_file_bytes(format!("{}\n", hex::encode(raw)).as_bytes())
            .expect("hex");
        let c = SseCustomerKey::from_file_bytes(aws_smithy_types::base64::encode(raw).as_bytes())
            .expect("b64");
        assert_eq!(*a.header_key(), *b.header_key());
        assert_eq!(*a.header_key(), *c.header_key());
        assert_eq!(a.header_key_md5(), c.header_key_md5());
        // MD5 of 32 bytes of 0x07, base64 (computed independently with python's hashlib).
        assert_eq!(a.header_key_md5(), "y4HAEFCYWuvAXWFTtA1Qpg==");
        assert!(SseCustomerKey::from_file_bytes(&[1u8; 31]).is_err());
        assert!(SseCustomerKey::from_file_bytes(b"short").is_err());
        assert_eq!(format!("{a:?}"), "SseCustomerKey(..)");
    }
}
