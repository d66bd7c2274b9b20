//! Garbage collection of chunk objects: which stored chunks nothing references any more.
//!
//! Safety rule (docs/DESIGN.md): a chunk is collected only if (1) no metadata we know of
//! references it — the committed head, and on a live mount also the local, not yet
//! committed metadata and its pending deletions — and (2) the store says it was last
//! written longer than the safety delay ago. (2) protects uploads in flight: a writer
//! uploads a chunk first and records it in its metadata afterwards, so a young unreferenced
//! chunk may be about to become referenced. Objects of unknown age are never collected.
//! The listing is taken *before* the set of references, so a chunk that becomes
//! referenced in between is seen as referenced.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use crate::backend::ObjectMeta;
use crate::crypto::ChunkId;

/// Where chunk objects live in the bucket (see `ChunkId::object_key`).
pub const CHUNK_PREFIX: &str = "d/";
/// Default safety delay: far longer than any upload-to-commit interval of a live writer.
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(3600);

/// The chunk id of an object key `d/xx/<32 hex>`, if it is one.
pub fn chunk_id_of_key(key: &str) -> Option<[u8; 16]> {
    let rest = key.strip_prefix(CHUNK_PREFIX)?;
    let (dir, hex) = rest.split_once('/')?;
    let id = ChunkId::from_hex(hex).ok()?;
    (id.object_key() == key && dir.len() == 2).then_some(id.0)
}

/// What a collection decided (and, once done, freed).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcReport {
    /// Chunk objects deleted (or, in a dry run, that would be).
    pub objects: u64,
    pub bytes: u64,
    /// Unreferenced chunks left alone because they are younger than the safety delay.
    pub kept_young: u64,
    /// Chunk objects still referenced.
    pub referenced: u64,
    /// Objects under the chunk prefix that are not chunk objects (never touched).
    pub foreign: u64,
}

/// Decide which listed chunk objects to delete. Returns (objects to delete, report).
pub fn plan(
    listing: &[ObjectMeta],
    referenced: &HashSet<[u8; 16]>,
    min_age: Duration,
    now: SystemTime,
) -> (Vec<ObjectMeta>, GcReport) {
    let mut report = GcReport::default();
    let mut doomed = Vec::new();
    for o in listing {
        let Some(id) = chunk_id_of_key(&o.key) else {
            report.foreign += 1;
            continue;
        };
        if referenced.contains(&id) {
            report.referenced += 1;
            continue;
        }
        let old_enough = o
            .modified
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= min_age);
        if !old_enough {
            report.kept_young += 1;
            continue;
        }
        report.objects += 1;
        report.bytes += o.size;
        doomed.push(o.clone());
    }
    (doomed, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(id: [u8; 16], age_s: Option<u64>, now: SystemTime) -> ObjectMeta {
        ObjectMeta {
            key: ChunkId(id).object_key(),
            size: 100,
            etag: None,
            modified: age_s.map(|a| now - Duration::from_secs(a)),
        }
    }

    #[test]
    fn only_old_unreferenced_chunks_are_planned() {
        let now = SystemTime::now();
        let listing = vec![
            obj([1; 16], Some(7200), now), // referenced
            obj([2; 16], Some(7200), now), // garbage
            obj([3; 16], Some(10), now),   // young
            obj([4; 16], None, now),       // unknown age
            ObjectMeta {
                key: "d/zz/not-a-chunk".into(),
                size: 1,
                etag: None,
                modified: Some(now - Duration::from_secs(9999)),
            },
        ];
        let referenced: HashSet<[u8; 16]> = [[1; 16]].into_iter().collect();
        let (doomed, r) = plan(&listing, &referenced, DEFAULT_MIN_AGE, now);
        assert_eq!(doomed.len(), 1);
        assert_eq!(doomed[0].key, ChunkId([2; 16]).object_key());
        assert_eq!(
            r,
            GcReport {
                objects: 1,
                bytes: 100,
                kept_young: 2,
                referenced: 1,
                foreign: 1
            }
        );
        let (doomed, _) = plan(&listing, &referenced, Duration::ZERO, now);
        assert_eq!(
            doomed.len(),
            2,
            "min age 0 still spares the unknown-age object"
        );
    }

    #[test]
    fn parses_chunk_keys() {
        let id = ChunkId([0xab; 16]);
        assert_eq!(chunk_id_of_key(&id.object_key()), Some([0xab; 16]));
        assert_eq!(chunk_id_of_key("d/00/abab"), None);
        assert_eq!(chunk_id_of_key(&format!("d/00/{}", id.to_hex())), None);
    }
}
