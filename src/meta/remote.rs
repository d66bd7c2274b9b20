//! The metadata's home in the bucket: sealed snapshots under `m/snap/`, journal segments
//! under `m/log/`, and `m/head` naming the current snapshot and the segments after it.
//! A commit normally writes one small segment; every so often a full snapshot folds the
//! segments away. Superseded objects are deleted only after a grace period.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use super::journal::Segment;
use super::records::{record_hash, Head, SegmentRef};
use super::snapshot::Snapshot;
use super::{MetaError, Result, SqliteMeta};
use crate::backend::{BackendError, ObjectStore, PutMode};
use crate::crypto::{ChunkId, RecordKind, VolumeKeys};

pub const HEAD_KEY: &str = "m/head";
/// Fold the journal into a new snapshot once the head names this many segments...
pub const FOLD_SEGMENTS: usize = 64;
/// ...or once they add up to this many sealed bytes.
pub const FOLD_BYTES: u64 = 8 << 20;
/// Superseded snapshots, segments and unreferenced chunks stay in the store this long, so a
/// reader that fetched an older head (a mount loading, a follower) still finds them.
pub const SUPERSEDED_GRACE: Duration = Duration::from_secs(600);
/// Appended to every refusal about the store's metadata.
pub const OVERRIDE_HINT: &str = "if the store's current state is what you want, mount with --accept-store-state to adopt it (changes after the damage are lost)";

/// Renamed from `head_seq` with packs: a release from before them finds no local head,
/// reloads from the store and refuses its version 2 records, instead of reading packed
/// chunk rows of this database as whole objects (see `SqliteMeta` `migrate`).
pub(crate) const ST_SEQ: &str = super::sqlite::HEAD_SEQ_KEY;
const ST_HASH: &str = "head_hash";
const ST_SNAP: &str = "head_snapshot";
/// JSON of the last head this machine wrote or loaded.
const ST_HEAD: &str = "head_json";
/// A commit whose head PUT may have reached the store before the local bookkeeping did.
const ST_PENDING: &str = "pending_commit";
/// "1": the next commit must be a full snapshot (the journal chain was adopted broken).
const ST_FORCE_SNAPSHOT: &str = "force_snapshot";
const CHUNK_GARBAGE: &str = "chunk:";

pub struct RemoteMeta {
    store: Arc<dyn ObjectStore>,
    keys: Arc<VolumeKeys>,
    rt: Handle,
    writer: String,
    lock: Mutex<()>,
    /// The writer lease that fences commits (None: unfenced, e.g. at init).
    lease: Mutex<Option<Arc<super::lease::Lease>>>,
    grace: Mutex<Duration>,
    accept_store_state: AtomicBool,
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

#[derive(Serialize, Deserialize)]
struct Pending {
    hash: String,
    mark: i64,
    head: Head,
}

/// A problem found in the chain, and whether it is an object missing from the store.
type Problem = (String, bool);

/// What reading the chain named by a head gave: everything up to the first problem.
struct Chain {
    snapshot: Snapshot,
    segments: Vec<Segment>,
    problem: Option<Problem>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn refused(problem: &str) -> MetaError {
    MetaError::Refused(format!("{problem}; refusing to mount: {OVERRIDE_HINT}"))
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
            grace: Mutex::new(SUPERSEDED_GRACE),
            accept_store_state: AtomicBool::new(false),
        }
    }

    pub fn set_lease(&self, lease: Arc<super::lease::Lease>) {
        *self.lease.lock() = Some(lease);
    }

    /// How long superseded objects stay in the store (tests shorten it).
    pub fn set_grace(&self, grace: Duration) {
        *self.grace.lock() = grace;
    }

    /// Adopt the store's state instead of refusing a rollback, fork or broken journal.
    pub fn set_accept_store_state(&self, yes: bool) {
        self.accept_store_state.store(yes, Ordering::SeqCst);
    }

    fn get(&self, key: &str) -> Result<Option<Bytes>> {
        match self.rt.block_on(self.store.get(key, None)) {
            Ok(b) => Ok(Some(b)),
            Err(BackendError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Read and open `m/head`; `None` if the volume has none.
    pub fn fetch_head(&self) -> Result<Option<(Head, String)>> {
        let Some(sealed) = self.get(HEAD_KEY)? else {
            return Ok(None);
        };
        let plain = self.keys.open_record(RecordKind::Head, &sealed)?;
        Ok(Some((Head::decode(&plain)?, record_hash(&sealed))))
    }

    /// The snapshot named by `head`, checked against it.
    pub fn fetch_snapshot(&self, head: &Head) -> Result<Snapshot> {
        let sealed = self.get(&head.snapshot)?;
        self.check_snapshot(head, sealed.as_deref())
            .map_err(|(p, _)| refused(&p))
    }

    fn check_snapshot(
        &self,
        head: &Head,
        sealed: Option<&[u8]>,
    ) -> std::result::Result<Snapshot, Problem> {
        let what = format!(
            "the metadata snapshot {} named by m/head (commit {})",
            head.snapshot, head.seq
        );
        let Some(sealed) = sealed else {
            return Err((format!("{what} is missing from the store"), true));
        };
        if !head.snapshot_hash.is_empty() && record_hash(sealed) != head.snapshot_hash {
            return Err((
                format!("{what} was replaced: its bytes do not match the hash in m/head"),
                false,
            ));
        }
        let snap = self
            .keys
            .open_record(RecordKind::Snapshot, sealed)
            .map_err(MetaError::from)
            .and_then(|p| Snapshot::decode(&p))
            .map_err(|e| (format!("{what} cannot be read: {e}"), false))?;
        if head.snapshot_seq != 0 && snap.seq != head.snapshot_seq {
            return Err((
                format!(
                    "{what} holds commit {} where m/head expects commit {}: it was replaced",
                    snap.seq, head.snapshot_seq
                ),
                false,
            ));
        }
        Ok(snap)
    }

    /// Check segment `r` (as named by `head`) against its sealed bytes and the hash of the
    /// record before it.
    fn check_segment(
        &self,
        head: &Head,
        r: &SegmentRef,
        sealed: Option<&[u8]>,
        prev_hash: &str,
    ) -> std::result::Result<Segment, Problem> {
        let what = format!("journal segment {} (commit {})", r.key, r.seq);
        let Some(sealed) = sealed else {
            return Err((
                format!("{what} named by m/head is missing from the store"),
                true,
            ));
        };
        let seg = self
            .keys
            .open_record(RecordKind::Journal, sealed)
            .map_err(MetaError::from)
            .and_then(|p| Segment::decode(&p))
            .map_err(|e| (format!("{what} cannot be read: {e}"), false))?;
        if seg.seq < r.seq {
            return Err((
                format!(
                    "{what} holds commit {} again: an older segment was replayed in its place",
                    seg.seq
                ),
                false,
            ));
        }
        if seg.seq > r.seq {
            return Err((
                format!(
                    "{what} holds commit {}: the journal segments were reordered",
                    seg.seq
                ),
                false,
            ));
        }
        if record_hash(sealed) != r.hash {
            return Err((
                format!("{what} was replaced: its bytes do not match the hash in m/head"),
                false,
            ));
        }
        if (!prev_hash.is_empty() && seg.prev_hash != prev_hash) || seg.snapshot != head.snapshot {
            return Err((
                format!("{what} does not follow the record before it: the journal chain is broken"),
                false,
            ));
        }
        Ok(seg)
    }

    /// Fetch many objects at once (segments are small and many; latency dominates).
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        let store = self.store.clone();
        let keys = keys.to_vec();
        self.rt.block_on(async move {
            let sem = Arc::new(tokio::sync::Semaphore::new(16));
            let mut set = tokio::task::JoinSet::new();
            for (i, k) in keys.into_iter().enumerate() {
                let store = store.clone();
                let sem = sem.clone();
                set.spawn(async move {
                    let _permit = sem.acquire().await;
                    (i, store.get(&k, None).await)
                });
            }
            let mut out = vec![None; set.len()];
            while let Some(j) = set.join_next().await {
                let (i, r) = j.map_err(|e| MetaError::Corrupt(format!("fetch task: {e}")))?;
                out[i] = match r {
                    Ok(b) => Some(b),
                    Err(BackendError::NotFound(_)) => None,
                    Err(e) => return Err(e.into()),
                };
            }
            Ok(out)
        })
    }

    /// Segments `refs` (all named by `head`), checked in order starting after the record
    /// whose hash is `prev`; stops at the first problem.
    fn read_segments(
        &self,
        head: &Head,
        refs: &[SegmentRef],
        mut prev: String,
    ) -> Result<(Vec<Segment>, Option<Problem>)> {
        let keys: Vec<String> = refs.iter().map(|r| r.key.clone()).collect();
        let bodies = self.get_many(&keys)?;
        let mut out = Vec::new();
        for (r, b) in refs.iter().zip(bodies) {
            match self.check_segment(head, r, b.as_deref(), &prev) {
                Ok(s) => out.push(s),
                Err(p) => return Ok((out, Some(p))),
            }
            prev = r.hash.clone();
        }
        Ok((out, None))
    }

    fn read_chain(&self, head: &Head) -> Result<Chain> {
        let sealed = self.get(&head.snapshot)?;
        let snapshot = self
            .check_snapshot(head, sealed.as_deref())
            .map_err(|(p, _)| refused(&p))?;
        let (segments, problem) =
            self.read_segments(head, &head.segments, head.snapshot_hash.clone())?;
        Ok(Chain {
            snapshot,
            segments,
            problem,
        })
    }

    /// The store's head and its whole chain, retrying when an object vanished because a
    /// writer moved the head on meanwhile. A problem is an error unless `accept`.
    fn read_current(&self, accept: bool) -> Result<(Head, String, Chain)> {
        let mut tries = 0;
        loop {
            let (head, hash) = self.fetch_head()?.ok_or_else(|| {
                MetaError::Refused(format!(
                    "the volume at {} has no metadata head (m/head is missing)",
                    self.store.describe()
                ))
            })?;
            let chain = self.read_chain(&head)?;
            if let Some((problem, missing)) = &chain.problem {
                tries += 1;
                if *missing && tries < 3 {
                    if let Some((_, h2)) = self.fetch_head()? {
                        if h2 != hash {
                            continue;
                        }
                    }
                }
                if !accept {
                    return Err(refused(problem));
                }
                tracing::warn!(
                    "adopting the store's metadata despite: {problem} (--accept-store-state); \
                     {} of {} journal segments applied",
                    chain.segments.len(),
                    head.segments.len()
                );
            }
            return Ok((head, hash, chain));
        }
    }

    fn local_seq(&self, meta: &SqliteMeta) -> Result<Option<u64>> {
        meta.get_state(ST_SEQ)?
            .map(|v| {
                v.try_into()
                    .map(u64::from_le_bytes)
                    .map_err(|_| MetaError::Corrupt("local head_seq".into()))
            })
            .transpose()
    }

    fn local_head(&self, meta: &SqliteMeta) -> Result<Option<Head>> {
        Ok(meta
            .get_state(ST_HEAD)?
            .and_then(|v| serde_json::from_slice::<Head>(&v).ok()))
    }

    /// Compare the local database with the bucket's head; refuse a bucket that went back
    /// in time or forked relative to what this machine last committed or saw.
    pub fn classify(&self, meta: &SqliteMeta, head: &Head, head_hash: &str) -> Result<LocalState> {
        let Some(seq) = self.local_seq(meta)? else {
            return Ok(LocalState::Missing);
        };
        if !meta.has_root()? {
            return Ok(LocalState::Missing);
        }
        let hash = meta.get_state(ST_HASH)?.unwrap_or_default();
        let accept = self.accept_store_state.load(Ordering::SeqCst);
        let problem = if seq > head.seq {
            format!(
                "the store's metadata (commit {}) is older than what this machine last wrote \
                 or saw (commit {seq}): the bucket was rolled back or another copy was restored",
                head.seq
            )
        } else if seq == head.seq && hash != head_hash.as_bytes() {
            format!(
                "the store's metadata commit {} differs from the one this machine wrote or saw: \
                 the bucket was forked or tampered with",
                head.seq
            )
        } else if seq == head.seq {
            return Ok(LocalState::Current);
        } else {
            return Ok(LocalState::Behind);
        };
        if !accept {
            return Err(refused(&problem));
        }
        tracing::warn!("adopting the store's metadata despite: {problem} (--accept-store-state)");
        Ok(LocalState::Behind)
    }

    fn head_state(head: &Head, hash: &str) -> Result<Vec<(&'static str, Vec<u8>)>> {
        Ok(vec![
            (ST_SEQ, head.seq.to_le_bytes().to_vec()),
            (ST_HASH, hash.as_bytes().to_vec()),
            (ST_SNAP, head.snapshot.as_bytes().to_vec()),
            (
                ST_HEAD,
                serde_json::to_vec(head).map_err(|e| MetaError::Corrupt(e.to_string()))?,
            ),
            (ST_PENDING, Vec::new()),
        ])
    }

    /// Load a chain into `meta`, recording `head` as the local head. With a broken chain
    /// (adopted), the local head keeps only the segments applied and the next commit is a
    /// full snapshot.
    fn install(&self, meta: &SqliteMeta, head: &Head, hash: &str, chain: &Chain) -> Result<()> {
        let mut local = head.clone();
        let mut state = Self::head_state(head, hash)?;
        if chain.problem.is_some() {
            local.segments.truncate(chain.segments.len());
            state.retain(|(k, _)| *k != ST_HEAD);
            state.push((
                ST_HEAD,
                serde_json::to_vec(&local).map_err(|e| MetaError::Corrupt(e.to_string()))?,
            ));
            state.push((ST_FORCE_SNAPSHOT, b"1".to_vec()));
        }
        meta.load_state(&chain.snapshot, &chain.segments, &state)
    }

    /// Adopt the bucket's snapshot and journal as the local database (strict: any problem in
    /// the chain is an error unless the store's state is accepted).
    pub fn load_into(&self, meta: &SqliteMeta, head: &Head, head_hash: &str) -> Result<()> {
        let chain = self.read_chain(head)?;
        if let Some((p, _)) = &chain.problem {
            if !self.accept_store_state.load(Ordering::SeqCst) {
                return Err(refused(p));
            }
        }
        self.install(meta, head, head_hash, &chain)
    }

    /// Bring `meta` (a volume's local database) up to the store at mount. Returns whether
    /// the local state was replaced from the store.
    pub fn open_local(&self, meta: &SqliteMeta) -> Result<bool> {
        let accept = self.accept_store_state.load(Ordering::SeqCst);
        let (head, hash) = self.fetch_head()?.ok_or_else(|| {
            MetaError::Refused(format!(
                "the volume at {} has no metadata head (m/head is missing)",
                self.store.describe()
            ))
        })?;
        // Our own last commit may have reached the store just before a crash.
        if let Some(p) = meta
            .get_state(ST_PENDING)?
            .filter(|v| !v.is_empty())
            .and_then(|v| serde_json::from_slice::<Pending>(&v).ok())
        {
            if p.hash == hash {
                meta.finish_commit(p.mark, &Self::head_state(&p.head, &p.hash)?)?;
            } else {
                meta.set_state(ST_PENDING, b"")?;
            }
        }
        match self.classify(meta, &head, &hash)? {
            LocalState::Current => Ok(false),
            state => {
                if state == LocalState::Missing {
                    tracing::info!("no local metadata: loading it from the store (rollback protection starts from what the store says)");
                } else {
                    tracing::info!(
                        "the store has other metadata (commit {}): loading it",
                        head.seq
                    );
                }
                let (head, hash, chain) = self.read_current(accept)?;
                self.install(meta, &head, &hash, &chain)?;
                Ok(true)
            }
        }
    }

    /// Load the store's complete state into `meta` (a fresh database), exactly as a mount
    /// from an empty cache directory does. Any problem in the chain is an error.
    pub fn load_full(&self, meta: &SqliteMeta) -> Result<Head> {
        let (head, hash, chain) = self.read_current(false)?;
        self.install(meta, &head, &hash, &chain)?;
        Ok(head)
    }

    /// For a read-only mount that follows the store: pick up a new head. Applies only the
    /// new segments when the head extends the one loaded, else reloads. Returns whether
    /// anything changed.
    pub fn refresh(&self, meta: &SqliteMeta) -> Result<bool> {
        let _guard = self.lock.lock();
        let Some((head, hash)) = self.fetch_head()? else {
            return Ok(false);
        };
        if meta.get_state(ST_HASH)?.as_deref() == Some(hash.as_bytes()) {
            return Ok(false);
        }
        if let Some(seq) = self.local_seq(meta)? {
            if head.seq < seq {
                return Err(MetaError::Refused(format!(
                    "the store's metadata went back from commit {seq} to {}: not following it",
                    head.seq
                )));
            }
        }
        if let Some(local) = self.local_head(meta)? {
            let n = local.segments.len();
            if local.snapshot == head.snapshot
                && head.segments.len() >= n
                && head.segments[..n] == local.segments[..]
            {
                let (segs, problem) =
                    self.read_segments(&head, &head.segments[n..], local.tip_hash().to_string())?;
                if problem.is_none() {
                    meta.apply_segments(&segs, &Self::head_state(&head, &hash)?)?;
                    return Ok(true);
                }
            }
        }
        let (head, hash, chain) = self.read_current(false)?;
        self.install(meta, &head, &hash, &chain)?;
        Ok(true)
    }

    /// Fetch and authenticate every record of the store's chain (head, snapshot, each
    /// segment) and check the tree they build; returns every problem found (empty: sound).
    pub fn check_chain(&self) -> Result<Vec<String>> {
        let Some((head, hash)) = (match self.fetch_head() {
            Ok(h) => h,
            Err(MetaError::Store(e)) => return Err(MetaError::Store(e)),
            Err(e) => return Ok(vec![format!("m/head cannot be read: {e}")]),
        }) else {
            return Ok(vec!["m/head is missing".into()]);
        };
        let mut problems = Vec::new();
        let sealed = self.get(&head.snapshot)?;
        let snap = match self.check_snapshot(&head, sealed.as_deref()) {
            Ok(s) => Some(s),
            Err((p, _)) => {
                problems.push(p);
                None
            }
        };
        let keys: Vec<String> = head.segments.iter().map(|r| r.key.clone()).collect();
        let bodies = self.get_many(&keys)?;
        let mut segs = Vec::new();
        let mut prev = head.snapshot_hash.clone();
        for (r, b) in head.segments.iter().zip(bodies) {
            match self.check_segment(&head, r, b.as_deref(), &prev) {
                Ok(s) => segs.push(s),
                Err((p, _)) => problems.push(p),
            }
            prev = r.hash.clone();
        }
        if let (Some(snapshot), true) = (snap, problems.is_empty()) {
            let meta = SqliteMeta::open_in_memory()?;
            let chain = Chain {
                snapshot,
                segments: segs,
                problem: None,
            };
            self.install(&meta, &head, &hash, &chain)?;
            problems.extend(meta.check_tree()?);
        }
        Ok(problems)
    }

    /// Write the changes since the last commit to the store: a journal segment, or a full
    /// snapshot when the journal is long enough to fold. Returns chunk ids whose grace
    /// period is over (the caller deletes them, then calls [`forget_chunks`](Self::forget_chunks)).
    pub fn commit(&self, meta: &SqliteMeta) -> Result<Vec<[u8; 16]>> {
        self.commit_inner(meta, false)
    }

    /// Commit a full snapshot now, whatever the journal's length (e.g. after a rekey).
    pub fn commit_snapshot(&self, meta: &SqliteMeta) -> Result<Vec<[u8; 16]>> {
        self.commit_inner(meta, true)
    }

    fn commit_inner(&self, meta: &SqliteMeta, force: bool) -> Result<Vec<[u8; 16]>> {
        let _guard = self.lock.lock();
        if let Some(lease) = self.lease.lock().clone() {
            lease.check()?;
        }
        let prev_seq = self.local_seq(meta)?.unwrap_or(0);
        let prev_hash = meta
            .get_state(ST_HASH)?
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        let local = self.local_head(meta)?;
        let fold = force
            || meta.get_state(ST_FORCE_SNAPSHOT)?.as_deref() == Some(b"1")
            || local.as_ref().is_none_or(|h| {
                h.segments.len() >= FOLD_SEGMENTS
                    || h.segments.iter().map(|s| s.size).sum::<u64>() >= FOLD_BYTES
            });
        let time = now_secs();
        let seq = prev_seq + 1;
        let mut superseded = Vec::new();
        let (head, mark, dead) = match (fold, local) {
            (false, Some(local)) => {
                let (mut seg, mark, dead) = meta.export_changes()?;
                if seg.is_empty() {
                    self.retire_chunks(meta, &dead)?;
                    return self.due_garbage(meta);
                }
                seg.epoch = local.epoch;
                seg.seq = seq;
                seg.prev_hash = local.tip_hash().to_string();
                seg.writer = self.writer.clone();
                seg.snapshot = local.snapshot.clone();
                let sealed = self.keys.seal_record(RecordKind::Journal, &seg.encode()?)?;
                let key = format!("m/log/{}", ChunkId::random().to_hex());
                let r = SegmentRef {
                    key: key.clone(),
                    seq,
                    hash: record_hash(&sealed),
                    size: sealed.len() as u64,
                };
                self.rt.block_on(
                    self.store
                        .put(&key, Bytes::from(sealed), PutMode::Overwrite),
                )?;
                let mut head = local;
                head.seq = seq;
                head.prev_hash = prev_hash;
                head.segments.push(r);
                head.writer = self.writer.clone();
                head.time = time;
                (head, mark, dead)
            }
            (_, local) => {
                let (mut snap, dead, mark) = meta.export_marked()?;
                snap.seq = seq;
                let sealed = self
                    .keys
                    .seal_record(RecordKind::Snapshot, &snap.encode()?)?;
                let snap_hash = record_hash(&sealed);
                let key = format!("m/snap/{}", ChunkId::random().to_hex());
                self.rt.block_on(
                    self.store
                        .put(&key, Bytes::from(sealed), PutMode::Overwrite),
                )?;
                match local {
                    Some(l) => {
                        superseded.push(l.snapshot.clone());
                        superseded.extend(l.segments.iter().map(|s| s.key.clone()));
                    }
                    None => superseded.extend(
                        meta.get_state(ST_SNAP)?
                            .map(|v| String::from_utf8_lossy(&v).into_owned()),
                    ),
                }
                let head = Head {
                    epoch: 0,
                    seq,
                    prev_hash,
                    snapshot: key,
                    snapshot_hash: snap_hash,
                    snapshot_seq: seq,
                    segments: Vec::new(),
                    writer: self.writer.clone(),
                    time,
                };
                (head, mark, dead)
            }
        };
        let sealed_head = self.keys.seal_record(RecordKind::Head, &head.encode()?)?;
        let hash = record_hash(&sealed_head);
        let pending = Pending {
            hash: hash.clone(),
            mark,
            head: head.clone(),
        };
        meta.set_state(
            ST_PENDING,
            &serde_json::to_vec(&pending).map_err(|e| MetaError::Corrupt(e.to_string()))?,
        )?;
        self.rt.block_on(
            self.store
                .put(HEAD_KEY, Bytes::from(sealed_head), PutMode::Overwrite),
        )?;
        let mut state = Self::head_state(&head, &hash)?;
        if fold {
            state.push((ST_FORCE_SNAPSHOT, Vec::new()));
        }
        meta.finish_commit(mark, &state)?;
        let due = now_secs() + self.grace.lock().as_secs();
        superseded.retain(|k| k != &head.snapshot);
        meta.add_garbage(&superseded, due)?;
        self.retire_chunks(meta, &dead)?;
        self.due_garbage(meta)
    }

    /// Chunks no committed metadata references: deleted once the grace period is over.
    fn retire_chunks(&self, meta: &SqliteMeta, dead: &[[u8; 16]]) -> Result<()> {
        if dead.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = dead
            .iter()
            .map(|id| format!("{CHUNK_GARBAGE}{}", hex::encode(id)))
            .collect();
        meta.add_garbage(&keys, now_secs() + self.grace.lock().as_secs())?;
        meta.forget_dead(dead)
    }

    /// Delete superseded metadata objects that are due; return the due chunk ids.
    fn due_garbage(&self, meta: &SqliteMeta) -> Result<Vec<[u8; 16]>> {
        let mut chunks = Vec::new();
        let mut done = Vec::new();
        for key in meta.due_garbage(now_secs())? {
            if let Some(h) = key.strip_prefix(CHUNK_GARBAGE) {
                match hex::decode(h)
                    .ok()
                    .and_then(|v| <[u8; 16]>::try_from(v).ok())
                {
                    Some(id) => chunks.push(id),
                    None => done.push(key),
                }
                continue;
            }
            match self.rt.block_on(self.store.delete(&key)) {
                Ok(()) | Err(BackendError::NotFound(_)) => done.push(key),
                Err(e) => tracing::warn!("could not delete superseded {key}: {e}"),
            }
        }
        // Packs still in use are sorted out by the caller that deletes (`Vfs::commit`),
        // which also knows which packs are being recorded.
        meta.forget_garbage(&done)?;
        Ok(chunks)
    }

    /// Chunks a superseded head still references, kept through the grace period for
    /// readers of that head; the commit path deletes them when due.
    pub fn chunks_in_grace(&self, meta: &SqliteMeta) -> Result<Vec<[u8; 16]>> {
        Ok(meta
            .pending_garbage()?
            .iter()
            .filter_map(|k| k.strip_prefix(CHUNK_GARBAGE))
            .filter_map(|h| hex::decode(h).ok())
            .filter_map(|v| <[u8; 16]>::try_from(v).ok())
            .collect())
    }

    /// The caller deleted these chunks (returned by a commit).
    pub fn forget_chunks(&self, meta: &SqliteMeta, ids: &[[u8; 16]]) -> Result<()> {
        let keys: Vec<String> = ids
            .iter()
            .map(|id| format!("{CHUNK_GARBAGE}{}", hex::encode(id)))
            .collect();
        meta.forget_garbage(&keys)
    }
}
