//! The object-store abstraction: one small async trait every store implements.
//!
//! Nothing above this module knows which store it talks to. Keys are plain
//! strings made of `[a-z0-9/._-]`; values are opaque byte strings.

mod bufpool;
pub mod fault;
pub mod kms;
pub mod local;
pub mod memory;
pub mod retry;
pub mod s3;
pub mod sse;
pub mod tls;

use std::fmt::Debug;
use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

/// Errors a store can report. `Transient` errors are retried by the retry wrapper;
/// everything else is final.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("object not found: {0}")]
    NotFound(String),
    #[error("precondition failed (object changed or already exists): {0}")]
    PreconditionFailed(String),
    #[error("bucket or directory does not exist: {0}")]
    StoreNotFound(String),
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("store unreachable or temporarily failing: {0}")]
    Transient(String),
    #[error("invalid range {range:?} for object {key} of size {size}")]
    InvalidRange {
        key: String,
        range: Range<u64>,
        size: u64,
    },
    #[error("store error: {0}")]
    Other(String),
}

impl BackendError {
    pub fn is_transient(&self) -> bool {
        matches!(self, BackendError::Transient(_))
    }
}

pub type Result<T> = std::result::Result<T, BackendError>;

/// What a store knows about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// Opaque version tag usable with `PutMode::IfMatch`.
    pub etag: Option<String>,
    /// When the object was last written, as the store reports it (`None`: unknown). `gc`
    /// uses it to leave recently uploaded chunks alone.
    pub modified: Option<SystemTime>,
}

/// How a put treats an existing object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutMode {
    /// Replace whatever is there.
    Overwrite,
    /// Fail with `PreconditionFailed` if the key exists (If-None-Match: *).
    Create,
    /// Fail with `PreconditionFailed` unless the current etag matches (If-Match).
    IfMatch(String),
}

#[async_trait]
pub trait ObjectStore: Send + Sync + Debug {
    /// Store `data` under `key`. Returns the new object's metadata (with etag).
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta>;
    /// Read the whole object, or `range` of it (end exclusive, clamped to the size;
    /// a range starting at or past the end is `InvalidRange`).
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes>;
    async fn head(&self, key: &str) -> Result<ObjectMeta>;
    /// Delete `key`; deleting a missing key succeeds.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Every object whose key starts with `prefix`, sorted by key (pagination is internal).
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;
    /// Whether `PutMode::Create`/`IfMatch` are honoured by this store.
    fn supports_conditional(&self) -> bool;
    /// A human description for messages, e.g. `s3://bucket/prefix at http://...`.
    fn describe(&self) -> String;
}
