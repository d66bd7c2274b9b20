//! The data path: sealed chunk objects in the store and a bounded memory cache of
//! opened blocks in front of them.

pub mod cache;
pub mod chunks;

pub use chunks::ChunkStore;

use crate::backend::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The stored object is missing, truncated or fails authentication. Never retried:
    /// serving anything but an error would hand wrong data to the application.
    #[error("chunk object {key} is damaged: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("store: {0}")]
    Backend(#[from] BackendError),
    #[error("crypto: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
}

pub type Result<T> = std::result::Result<T, DataError>;
