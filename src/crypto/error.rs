//! The single error type of the crypto layer.

/// Everything that can go wrong while sealing, opening or parsing.
///
/// The messages never contain secret material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// No key slot of the header accepts the passphrase or keyfile.
    #[error("wrong passphrase or keyfile: no key slot accepts it")]
    WrongKey,
    /// Authentication failed: the bytes were modified, truncated, swapped or replayed in
    /// the wrong place. The string names the object.
    #[error("authentication failed: {0} was modified or is not what was stored")]
    Tampered(String),
    /// The bytes are malformed or use an unsupported format.
    #[error("malformed or unsupported data: {0}")]
    Format(String),
    /// KDF parameters outside the accepted bounds (when creating or when reading a header).
    #[error("key derivation parameters out of bounds: {0}")]
    KdfParams(String),
    /// The caller passed an argument the format cannot represent (a programming error or
    /// a bad user choice such as an empty passphrase), not a problem with stored data.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}
