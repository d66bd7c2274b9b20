//! The metadata head record (`m/head`): which snapshot is current, chained by sequence
//! number and the hash of the previous head so rollback and forks can be detected.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{MetaError, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Head {
    /// Key epoch the records are sealed under (0 until rekey exists).
    pub epoch: u64,
    /// Increases by one with every commit.
    pub seq: u64,
    /// Hex SHA-256 of the previous head's sealed bytes ("" for the first).
    pub prev_hash: String,
    /// Object key of the snapshot this head points to, e.g. `m/snap/<hex>`.
    pub snapshot: String,
    /// Random id of the writer process (a new one per mount).
    pub writer: String,
    /// Unix seconds when written (informational).
    pub time: u64,
}

impl Head {
    pub fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| MetaError::Corrupt(format!("head: {e}")))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > 64 * 1024 {
            return Err(MetaError::Corrupt("head record too large".into()));
        }
        let h: Head = serde_json::from_slice(bytes)
            .map_err(|e| MetaError::Corrupt(format!("head does not parse: {e}")))?;
        let ok_key = h
            .snapshot
            .strip_prefix("m/snap/")
            .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok_key {
            return Err(MetaError::Corrupt(
                "head names an invalid snapshot key".into(),
            ));
        }
        Ok(h)
    }
}

/// Hash of a sealed record as stored, used to chain heads.
pub fn record_hash(sealed: &[u8]) -> String {
    hex::encode(Sha256::digest(sealed))
}
