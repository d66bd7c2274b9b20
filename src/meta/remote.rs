//! The metadata's home in the bucket: sealed snapshots under `m/snap/`, and `m/head`
//! naming the current one. Commits write a new snapshot, then move the head.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::runtime::Handle;

use super::records::{record_hash, Head};
use super::snapshot::Snapshot;
use super::{MetaError, Result, SqliteMeta};
use crate::backend::{BackendError, ObjectStore, PutMode};
use crate::crypto::{ChunkId, RecordKind, VolumeKeys};

pub const HEAD_KEY: &str = "m/head";
const ST_SEQ: &str = "head_seq";
const ST_HASH: &str = "head_hash";
const ST_SNAP: &str = "head_snapshot";

pub struct RemoteMeta {
    store: Arc<dyn ObjectStore>,
    keys: Arc<VolumeKeys>,
    rt: Handle,
    writer: String,
    lock: Mutex<()>,
    /// The writer lease that fences commits (None: unfenced, e.g. at init).
    lease: Mutex<Option<Arc<super::lease::Lease>>>,
}

/// How the local database relates to the bucket's head.
#[derive(Debug, PartialEq, Eq)]
pub enum LocalState {
    /// No usable local copy: load the bucket's snapshot.
    Missing,
    /// The local copy is at the bucket's head (possibly with uncommitted changes on top).
    Current,
    /// The bucket moved on (another machine wrote): load its snapshot.
    Behind,
}

impl RemoteMeta {
    pub fn new(store: Arc<dyn ObjectStore>, keys: Arc<VolumeKeys>, rt: Handle) -> Self {
        RemoteMeta {
            store,
            keys,
            rt,
            writer: ChunkId::random().to_hex(),
            lock: Mutex::new(()),
            lease: Mutex::new(None),
        }
    }

    pub fn set_lease(&self, lease: Arc<super::lease::Lease>) {
        *self.lease.lock() = Some(lease);
    }

    /// Read and open `m/head`; `None` if the volume has none.
    pub fn fetch_head(&self) -> Result<Option<(Head, String)>> {
        let sealed = match self.rt.block_on(self.store.get(HEAD_KEY, None)) {
            Ok(b) => b,
            Err(BackendError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let plain = self.keys.open_record(RecordKind::Head, &sealed)?;
        Ok(Some((Head::decode(&plain)?, record_hash(&sealed))))
    }

    pub fn fetch_snapshot(&self, head: &Head) -> Result<Snapshot> {
        let sealed = match self.rt.block_on(self.store.get(&head.snapshot, None)) {
            Ok(b) => b,
            Err(BackendError::NotFound(_)) => {
                return Err(MetaError::Refused(format!(
                    "the metadata snapshot {} named by m/head is missing from the store",
                    head.snapshot
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let plain = self.keys.open_record(RecordKind::Snapshot, &sealed)?;
        Snapshot::decode(&plain)
    }

    /// Compare the local database with the bucket's head; refuse a bucket that went back
    /// in time or forked relative to what this machine last committed or saw.
    pub fn classify(&self, meta: &SqliteMeta, head: &Head, head_hash: &str) -> Result<LocalState> {
        let Some(seq) = meta.get_state(ST_SEQ)? else {
            return Ok(LocalState::Missing);
        };
        if !meta.has_root()? {
            return Ok(LocalState::Missing);
        }
        let seq = u64::from_le_bytes(
            seq.try_into()
                .map_err(|_| MetaError::Corrupt("local head_seq".into()))?,
        );
        let hash = meta.get_state(ST_HASH)?.unwrap_or_default();
        if seq > head.seq {
            return Err(MetaError::Refused(format!(
                "the store's metadata (commit {}) is older than what this machine last wrote \
                 (commit {seq}): the bucket was rolled back or another copy was restored",
                head.seq
            )));
        }
        if seq == head.seq {
            if hash != head_hash.as_bytes() {
                return Err(MetaError::Refused(format!(
                    "the store's metadata commit {} differs from the one this machine wrote: \
                     the bucket was forked or tampered with",
                    head.seq
                )));
            }
            return Ok(LocalState::Current);
        }
        Ok(LocalState::Behind)
    }

    /// Adopt the bucket's snapshot as the local database.
    pub fn load_into(&self, meta: &SqliteMeta, head: &Head, head_hash: &str) -> Result<()> {
        let snap = self.fetch_snapshot(head)?;
        meta.import(&snap)?;
        self.remember(meta, head.seq, head_hash, &head.snapshot)
    }

    fn remember(&self, meta: &SqliteMeta, seq: u64, hash: &str, snap: &str) -> Result<()> {
        meta.set_state(ST_SEQ, &seq.to_le_bytes())?;
        meta.set_state(ST_HASH, hash.as_bytes())?;
        meta.set_state(ST_SNAP, snap.as_bytes())
    }

    /// Write a full snapshot and point the head at it. Returns the dead chunk ids that
    /// no committed metadata references any more (safe to delete now).
    pub fn commit(&self, meta: &SqliteMeta) -> Result<Vec<[u8; 16]>> {
        let _guard = self.lock.lock();
        if let Some(lease) = self.lease.lock().clone() {
            lease.check()?;
        }
        let (snap, dead) = meta.export()?;
        let sealed = self
            .keys
            .seal_record(RecordKind::Snapshot, &snap.encode()?)?;
        let snap_key = format!("m/snap/{}", ChunkId::random().to_hex());
        self.rt.block_on(
            self.store
                .put(&snap_key, Bytes::from(sealed), PutMode::Overwrite),
        )?;
        let prev_seq = match meta.get_state(ST_SEQ)? {
            Some(v) => u64::from_le_bytes(
                v.try_into()
                    .map_err(|_| MetaError::Corrupt("local head_seq".into()))?,
            ),
            None => 0,
        };
        let prev_hash = meta
            .get_state(ST_HASH)?
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        let prev_snap = meta
            .get_state(ST_SNAP)?
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        let head = Head {
            epoch: 0,
            seq: prev_seq + 1,
            prev_hash,
            snapshot: snap_key.clone(),
            writer: self.writer.clone(),
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let sealed_head = self.keys.seal_record(RecordKind::Head, &head.encode()?)?;
        let hash = record_hash(&sealed_head);
        self.rt.block_on(
            self.store
                .put(HEAD_KEY, Bytes::from(sealed_head), PutMode::Overwrite),
        )?;
        self.remember(meta, head.seq, &hash, &snap_key)?;
        if let Some(old) = prev_snap.filter(|s| s != &snap_key) {
            if let Err(e) = self.rt.block_on(self.store.delete(&old)) {
                tracing::warn!("could not delete old snapshot {old}: {e}");
            }
        }
        Ok(dead)
    }
}
