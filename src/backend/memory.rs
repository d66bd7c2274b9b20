//! In-memory `ObjectStore`: a mutex-guarded sorted map, used by unit tests and as the
//! reference behaviour the other stores are checked against.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use super::{BackendError, ObjectMeta, ObjectStore, PutMode, Result};

#[derive(Debug, Clone)]
struct Entry {
    data: Bytes,
    etag: String,
    modified: SystemTime,
}

/// A store that keeps every object in memory. Conditional puts are honoured.
#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Entry>>,
    /// Bumped on every successful put, so etags differ even for identical content.
    counter: AtomicU64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of stored objects (handy in tests).
    pub fn len(&self) -> usize {
        self.objects.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.lock().is_empty()
    }
}

/// Resolve an optional range against an object's size (shared by the stores here).
pub(crate) fn resolve_range(key: &str, range: Option<Range<u64>>, size: u64) -> Result<Range<u64>> {
    match range {
        None => Ok(0..size),
        Some(r) => {
            if r.start >= size || r.end < r.start {
                Err(BackendError::InvalidRange {
                    key: key.to_string(),
                    range: r,
                    size,
                })
            } else {
                Ok(r.start..r.end.min(size))
            }
        }
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        let mut objects = self.objects.lock();
        match (&mode, objects.get(key)) {
            (PutMode::Create, Some(_)) => {
                return Err(BackendError::PreconditionFailed(key.to_string()));
            }
            (PutMode::IfMatch(want), Some(e)) if &e.etag != want => {
                return Err(BackendError::PreconditionFailed(key.to_string()));
            }
            (PutMode::IfMatch(_), None) => {
                return Err(BackendError::PreconditionFailed(key.to_string()));
            }
            _ => {}
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let etag = format!("\"m{:x}-{:x}\"", n, data.len());
        let size = data.len() as u64;
        let modified = SystemTime::now();
        objects.insert(
            key.to_string(),
            Entry {
                data,
                etag: etag.clone(),
                modified,
            },
        );
        Ok(ObjectMeta {
            key: key.to_string(),
            size,
            etag: Some(etag),
            modified: Some(modified),
        })
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        let objects = self.objects.lock();
        let e = objects
            .get(key)
            .ok_or_else(|| BackendError::NotFound(key.to_string()))?;
        let r = resolve_range(key, range, e.data.len() as u64)?;
        Ok(e.data.slice(r.start as usize..r.end as usize))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let objects = self.objects.lock();
        let e = objects
            .get(key)
            .ok_or_else(|| BackendError::NotFound(key.to_string()))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: e.data.len() as u64,
            etag: Some(e.etag.clone()),
            modified: Some(e.modified),
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.objects.lock().remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let objects = self.objects.lock();
        Ok(objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| ObjectMeta {
                key: k.clone(),
                size: e.data.len() as u64,
                etag: Some(e.etag.clone()),
                modified: Some(e.modified),
            })
            .collect())
    }

    fn supports_conditional(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        "memory store".to_string()
    }
}
