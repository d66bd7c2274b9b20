//! The data path: sealed chunk objects in the store, a bounded memory cache of opened
//! blocks in front of them, the write-back upload pool and the local staging area.

pub mod ahead;
pub mod cache;
pub mod chunks;
pub mod diskcache;
mod pack;
pub mod staging;

pub use chunks::{CacheStats, ChunkStore, UPLOAD_WORKERS};
pub use diskcache::DiskCache;
pub use staging::Staging;

use crate::backend::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The stored object is missing, truncated or fails authentication. Never retried:
    /// serving anything but an error would hand wrong data to the application.
    #[error("chunk object {key} is damaged: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("store: {0}")]
    Backend(#[from] BackendError),
    /// The local staging or cache directory failed.
    #[error("local disk: {0}")]
    Local(String),
    #[error("crypto: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
}

impl DataError {
    /// The same error for each of several requests it failed (the chunks of one pack).
    pub fn shared(&self) -> DataError {
        match self {
            DataError::Corrupt { key, reason } => DataError::Corrupt {
                key: key.clone(),
                reason: reason.clone(),
            },
            DataError::Backend(e) => DataError::Backend(e.clone()),
            DataError::Local(m) => DataError::Local(m.clone()),
            DataError::Crypto(e) => DataError::Local(format!("crypto: {e}")),
        }
    }
}

pub type Result<T> = std::result::Result<T, DataError>;
