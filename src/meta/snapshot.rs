//! The logical snapshot of the metadata (not a SQLite file image), as stored in the bucket:
//! JSON, zstd-compressed, then sealed by the crypto layer.

use std::io::Read;

use serde::{Deserialize, Serialize};

use super::{
    hex_bytes, hex_opt_bytes, ChunkRef, FileKind, Ino, Inode, MetaError, Result, ROOT_INO,
};

/// Refuse to inflate a snapshot beyond this (bucket contents are attacker input).
pub const MAX_SNAPSHOT_BYTES: u64 = 8 << 30;
/// Without packed chunks; see `super::record_version`.
pub const SNAPSHOT_VERSION: u32 = super::RECORD_VERSION_PLAIN;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub version: u32,
    /// The commit this snapshot folds in (0 in snapshots written before the journal).
    #[serde(default)]
    pub seq: u64,
    pub next_ino: u64,
    pub inodes: Vec<SnapInode>,
    pub dentries: Vec<SnapDentry>,
    pub chunks: Vec<(Ino, ChunkRef)>,
    pub xattrs: Vec<SnapXattr>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapInode {
    #[serde(flatten)]
    pub inode: Inode,
    #[serde(with = "hex_opt_bytes", default)]
    pub target: Option<Vec<u8>>,
    #[serde(with = "hex_opt_bytes", default)]
    pub inline: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapDentry {
    pub cookie: u64,
    pub parent: Ino,
    #[serde(with = "hex_bytes")]
    pub name: Vec<u8>,
    pub ino: Ino,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapXattr {
    pub ino: Ino,
    #[serde(with = "hex_bytes")]
    pub name: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub value: Vec<u8>,
}

impl Snapshot {
    pub fn encode(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(self)
            .map_err(|e| MetaError::Corrupt(format!("encoding snapshot: {e}")))?;
        zstd::bulk::compress(&json, 3)
            .map_err(|e| MetaError::Corrupt(format!("compressing snapshot: {e}")))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut json = Vec::new();
        zstd::stream::read::Decoder::new(bytes)
            .map_err(|e| MetaError::Corrupt(format!("snapshot: {e}")))?
            .take(MAX_SNAPSHOT_BYTES + 1)
            .read_to_end(&mut json)
            .map_err(|e| MetaError::Corrupt(format!("snapshot does not decompress: {e}")))?;
        if json.len() as u64 > MAX_SNAPSHOT_BYTES {
            return Err(MetaError::Corrupt("snapshot too large".into()));
        }
        let snap: Snapshot = serde_json::from_slice(&json)
            .map_err(|e| MetaError::Corrupt(format!("snapshot does not parse: {e}")))?;
        snap.validate()?;
        Ok(snap)
    }

    /// Structural checks so a decoded snapshot cannot leave the tree dangling.
    pub fn validate(&self) -> Result<()> {
        super::check_record("snapshot", self.version, self.chunks.iter().map(|(_, c)| c))?;
        let kinds: std::collections::HashMap<Ino, FileKind> = self
            .inodes
            .iter()
            .map(|i| (i.inode.ino, i.inode.kind))
            .collect();
        if kinds.get(&ROOT_INO) != Some(&FileKind::Dir) {
            return Err(MetaError::Corrupt("snapshot has no root directory".into()));
        }
        for d in &self.dentries {
            if kinds.get(&d.parent) != Some(&FileKind::Dir) || !kinds.contains_key(&d.ino) {
                return Err(MetaError::Corrupt(format!(
                    "snapshot entry {} -> {} is dangling",
                    d.parent, d.ino
                )));
            }
            if d.name.is_empty() || d.name.len() > 255 || d.name.contains(&b'/') {
                return Err(MetaError::Corrupt(
                    "snapshot entry has an invalid name".into(),
                ));
            }
        }
        for (ino, _) in &self.chunks {
            if kinds.get(ino) != Some(&FileKind::File) {
                return Err(MetaError::Corrupt(format!(
                    "snapshot chunk belongs to non-file {ino}"
                )));
            }
        }
        if self.inodes.iter().any(|i| i.inode.ino >= self.next_ino) {
            return Err(MetaError::Corrupt("snapshot next_ino too small".into()));
        }
        Ok(())
    }
}
