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
    /// Packs at least half of whose bytes belong to deleted files: rewritten without them
    /// on a live mount (or, in a dry run or on an unmounted volume, found).
    #[serde(default)]
    pub sparse_packs: u64,
    /// The bytes of deleted files in those packs (freed once the old packs' grace period
    /// after the next commit is over).
    #[serde(default)]
    pub sparse_bytes: u64,
}

/// Whether a pack of `len` bytes whose files still use `live` of them is worth rewriting.
pub fn is_sparse(live: u64, len: u64) -> bool {
    live.saturating_mul(2) <= len
}

/// The sparse packs among committed chunk references: (packs, bytes of deleted files).
pub fn sparse_in(chunks: &[(u64, crate::meta::ChunkRef)]) -> (u64, u64) {
    let mut packs: std::collections::HashMap<[u8; 16], (u64, u64)> = Default::default();
    for (_, c) in chunks.iter().filter(|(_, c)| c.pack.is_some()) {
        let e = packs.entry(c.id).or_insert((0, c.obj_len()));
        e.0 += c.plain_len;
    }
    packs
        .values()
        .filter(|(live, len)| is_sparse(*live, *len))
        .fold((0, 0), |(n, b), (live, len)| (n + 1, b + len - live))
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
                foreign: 1,
                ..GcReport::default()
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

    #[test]
    fn a_pack_is_sparse_when_its_files_use_at_most_half_of_it() {
        use crate::meta::{ChunkRef, PackSlot};
        let r = |id: u8, len: u64, pack: Option<u64>| ChunkRef {
            idx: 0,
            id: [id; 16],
            plain_len: len,
            stored_len: 0,
            digest: [0; 16],
            pack: pack.map(|l| PackSlot { off: 0, len: l }),
        };
        let chunks = vec![
            (1, r(1, 300, Some(1000))),
            (2, r(1, 200, Some(1000))), // pack 1: 500 of 1000 used: sparse
            (3, r(2, 600, Some(1000))), // pack 2: 600 used: kept
            (4, r(3, 10, None)),        // a chunk of its own is never a pack
        ];
        assert_eq!(sparse_in(&chunks), (1, 500));
        assert!(is_sparse(0, 10) && !is_sparse(6, 10));
    }
}
