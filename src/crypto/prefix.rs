//! The plaintext prefix every sealed binary object starts with: magic, version, kind.

use super::{CryptoError, FORMAT_VERSION};

/// Magic bytes at the start of every sealed binary object.
pub const MAGIC: [u8; 4] = *b"CBKT";
/// Length of the prefix: magic (4) || format version (1) || object kind (1).
pub const PREFIX_LEN: usize = 6;

/// Object kinds (the sixth prefix byte).
pub const KIND_CHUNK: u8 = 1;
pub const KIND_HEAD: u8 = 2;
pub const KIND_SNAPSHOT: u8 = 3;
pub const KIND_JOURNAL: u8 = 4;
pub const KIND_STAGING: u8 = 5;
pub const KIND_LEASE: u8 = 6;
pub const KIND_REKEY: u8 = 7;

/// The prefix for an object of `kind` in the current format version.
pub fn prefix(kind: u8) -> [u8; PREFIX_LEN] {
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], FORMAT_VERSION, kind]
}

/// Check the prefix of `bytes` names the current version and `kind`; `what` names the
/// object in errors. A wrong magic or version is `Format`; a wrong kind is `Tampered` (an
/// object of another kind was served in this one's place).
pub fn check_prefix(bytes: &[u8], kind: u8, what: &str) -> Result<(), CryptoError> {
    if bytes.len() < PREFIX_LEN || bytes[..4] != MAGIC {
        return Err(CryptoError::Format(format!(
            "{what}: not a cryptbucket object (bad magic)"
        )));
    }
    if bytes[4] != FORMAT_VERSION {
        return Err(CryptoError::Format(format!(
            "{what}: unsupported format version {} (this build reads {FORMAT_VERSION})",
            bytes[4]
        )));
    }
    if bytes[5] != kind {
        return Err(CryptoError::Tampered(format!(
            "{what} (object kind {} where kind {kind} was expected)",
            bytes[5]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_bytes() {
        assert_eq!(prefix(KIND_SNAPSHOT), [b'C', b'B', b'K', b'T', 1, 3]);
        check_prefix(&prefix(KIND_CHUNK), KIND_CHUNK, "x").unwrap();
        assert!(matches!(
            check_prefix(&prefix(KIND_CHUNK), KIND_HEAD, "x"),
            Err(CryptoError::Tampered(_))
        ));
        assert!(matches!(
            check_prefix(b"CBKX\x01\x01", KIND_CHUNK, "x"),
            Err(CryptoError::Format(_))
        ));
        assert!(matches!(
            check_prefix(b"CBKT\x02\x01", KIND_CHUNK, "x"),
            Err(CryptoError::Format(_))
        ));
        assert!(matches!(
            check_prefix(b"CBK", KIND_CHUNK, "x"),
            Err(CryptoError::Format(_))
        ));
    }
}
