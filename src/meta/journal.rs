//! Journal segments (`m/log/<id>`): the logical changes of one commit, as current rows of
//! every key that changed since the previous commit plus tombstones for keys that are gone.
//! Applying a segment is idempotent: it sets those keys to their state at the commit.
//! JSON, zstd-compressed, then sealed by the crypto layer as a journal record.

use std::io::Read;

use serde::{Deserialize, Serialize};

use super::snapshot::{SnapDentry, SnapInode, SnapXattr};
use super::{hex_bytes, ChunkRef, Ino, MetaError, Result};

/// Without packed chunks; see `super::record_version`.
pub const SEGMENT_VERSION: u32 = super::RECORD_VERSION_PLAIN;
/// Refuse to inflate a segment beyond this (bucket contents are attacker input).
pub const MAX_SEGMENT_BYTES: u64 = 4 << 30;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Segment {
    pub version: u32,
    /// Key epoch (as in the head).
    pub epoch: u64,
    /// The commit this segment is; the head that names it has the same `seq` or a later one.
    pub seq: u64,
    /// Hex SHA-256 of the previous record's sealed bytes: the previous segment, or the
    /// snapshot for the first segment after it.
    pub prev_hash: String,
    /// Writer id of the mount that wrote it.
    pub writer: String,
    /// The snapshot this segment builds on.
    pub snapshot: String,
    pub next_ino: u64,
    pub inodes: Vec<SnapInode>,
    pub dentries: Vec<SnapDentry>,
    pub chunks: Vec<(Ino, ChunkRef)>,
    pub xattrs: Vec<SnapXattr>,
    pub removed_inodes: Vec<Ino>,
    /// Directory entries are keyed by their cookie.
    pub removed_dentries: Vec<u64>,
    /// (inode, chunk index).
    pub removed_chunks: Vec<(Ino, u64)>,
    pub removed_xattrs: Vec<RemovedXattr>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RemovedXattr {
    pub ino: Ino,
    #[serde(with = "hex_bytes")]
    pub name: Vec<u8>,
}

impl Segment {
    /// Number of changed keys it carries.
    pub fn len(&self) -> usize {
        self.inodes.len()
            + self.dentries.len()
            + self.chunks.len()
            + self.xattrs.len()
            + self.removed_inodes.len()
            + self.removed_dentries.len()
            + self.removed_chunks.len()
            + self.removed_xattrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn encode(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(self)
            .map_err(|e| MetaError::Corrupt(format!("encoding journal segment: {e}")))?;
        zstd::bulk::compress(&json, 3)
            .map_err(|e| MetaError::Corrupt(format!("compressing journal segment: {e}")))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut json = Vec::new();
        zstd::stream::read::Decoder::new(bytes)
            .map_err(|e| MetaError::Corrupt(format!("journal segment: {e}")))?
            .take(MAX_SEGMENT_BYTES + 1)
            .read_to_end(&mut json)
            .map_err(|e| MetaError::Corrupt(format!("journal segment does not decompress: {e}")))?;
        if json.len() as u64 > MAX_SEGMENT_BYTES {
            return Err(MetaError::Corrupt("journal segment too large".into()));
        }
        let seg: Segment = serde_json::from_slice(&json)
            .map_err(|e| MetaError::Corrupt(format!("journal segment does not parse: {e}")))?;
        seg.validate()?;
        Ok(seg)
    }

    /// Row-level checks (the tree-level ones need the whole state: see `SqliteMeta::check_tree`).
    pub fn validate(&self) -> Result<()> {
        super::check_record(
            "journal segment",
            self.version,
            self.chunks.iter().map(|(_, c)| c),
        )?;
        for d in &self.dentries {
            if d.name.is_empty() || d.name.len() > 255 || d.name.contains(&b'/') {
                return Err(MetaError::Corrupt(
                    "journal segment entry has an invalid name".into(),
                ));
            }
        }
        if self.inodes.iter().any(|i| i.inode.ino >= self.next_ino) {
            return Err(MetaError::Corrupt(
                "journal segment next_ino too small".into(),
            ));
        }
        Ok(())
    }
}
