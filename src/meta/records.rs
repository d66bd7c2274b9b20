//! The metadata head record (`m/head`): which snapshot is current and which journal segments
//! follow it, chained by sequence number and the hash of the previous head so rollback,
//! forks and tampered segments can be detected.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{MetaError, Result};

/// More segments than this in one head is a bug or an attack (the writer folds far earlier).
pub const MAX_HEAD_SEGMENTS: usize = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Head {
    /// Key epoch the records are sealed under (0 until rekey exists).
    pub epoch: u64,
    /// Increases by one with every commit.
    pub seq: u64,
    /// Hex SHA-256 of the previous head's sealed bytes ("" for the first).
    pub prev_hash: String,
    /// Object key of the snapshot this head builds on, e.g. `m/snap/<hex>`.
    pub snapshot: String,
    /// Hex SHA-256 of that snapshot's sealed bytes ("" in heads written before the journal).
    #[serde(default)]
    pub snapshot_hash: String,
    /// The commit the snapshot folds in (0 in heads written before the journal).
    #[serde(default)]
    pub snapshot_seq: u64,
    /// Journal segments written after the snapshot, oldest first; their sequence numbers are
    /// `snapshot_seq + 1 ..= seq`.
    #[serde(default)]
    pub segments: Vec<SegmentRef>,
    /// Random id of the writer process (a new one per mount).
    pub writer: String,
    /// Unix seconds when written (informational).
    pub time: u64,
}

/// One journal segment as named by the head.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SegmentRef {
    /// `m/log/<32 hex>`.
    pub key: String,
    pub seq: u64,
    /// Hex SHA-256 of the segment's sealed bytes.
    pub hash: String,
    /// Sealed size in bytes (decides when to fold segments into a snapshot).
    #[serde(default)]
    pub size: u64,
}

fn is_key(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_hash(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Head {
    pub fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| MetaError::Corrupt(format!("head: {e}")))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > 4 << 20 {
            return Err(MetaError::Corrupt("head record too large".into()));
        }
        let h: Head = serde_json::from_slice(bytes)
            .map_err(|e| MetaError::Corrupt(format!("head does not parse: {e}")))?;
        if !is_key(&h.snapshot, "m/snap/") {
            return Err(MetaError::Corrupt(
                "head names an invalid snapshot key".into(),
            ));
        }
        if !h.snapshot_hash.is_empty() && !is_hash(&h.snapshot_hash) {
            return Err(MetaError::Corrupt(
                "head has an invalid snapshot hash".into(),
            ));
        }
        if h.segments.len() > MAX_HEAD_SEGMENTS {
            return Err(MetaError::Corrupt("head names too many segments".into()));
        }
        // The head is authenticated, so this only catches a writer bug; the segments' own
        // contents are checked against these entries when they are read.
        let mut expect = h.snapshot_seq;
        for s in &h.segments {
            expect += 1;
            if !is_key(&s.key, "m/log/") || !is_hash(&s.hash) || s.seq != expect {
                return Err(MetaError::Corrupt(format!(
                    "head lists an invalid journal segment entry ({})",
                    s.key
                )));
            }
        }
        if !h.segments.is_empty() && expect != h.seq {
            return Err(MetaError::Corrupt(
                "head's last journal segment does not match its sequence number".into(),
            ));
        }
        Ok(h)
    }

    /// Hash of the newest record of the chain (the last segment, else the snapshot).
    pub fn tip_hash(&self) -> &str {
        self.segments
            .last()
            .map_or(self.snapshot_hash.as_str(), |s| s.hash.as_str())
    }
}

/// Hash of a sealed record as stored, used to chain heads, snapshots and segments.
pub fn record_hash(sealed: &[u8]) -> String {
    hex::encode(Sha256::digest(sealed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_from_before_the_journal_still_decode() {
        let old = br#"{"epoch":0,"seq":7,"prev_hash":"","snapshot":"m/snap/0123456789abcdef0123456789abcdef","writer":"w","time":1}"#;
        let h = Head::decode(old).unwrap();
        assert_eq!(h.seq, 7);
        assert!(h.segments.is_empty() && h.snapshot_hash.is_empty());
        assert_eq!(h.tip_hash(), "");
    }

    #[test]
    fn segment_entries_must_be_consecutive_and_end_at_seq() {
        let seg = |seq| SegmentRef {
            key: "m/log/0123456789abcdef0123456789abcdef".into(),
            seq,
            hash: "a".repeat(64),
            size: 1,
        };
        let mut h = Head {
            epoch: 0,
            seq: 5,
            prev_hash: String::new(),
            snapshot: "m/snap/0123456789abcdef0123456789abcdef".into(),
            snapshot_hash: "b".repeat(64),
            snapshot_seq: 3,
            segments: vec![seg(4), seg(5)],
            writer: "w".into(),
            time: 0,
        };
        assert!(Head::decode(&h.encode().unwrap()).is_ok());
        h.segments = vec![seg(5), seg(4)];
        assert!(Head::decode(&h.encode().unwrap()).is_err());
        h.segments = vec![seg(4)];
        assert!(Head::decode(&h.encode().unwrap()).is_err());
    }
}
