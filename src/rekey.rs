//! `rekey`: replace the master key of a stored volume and re-seal everything under it.
//!
//! Objects of a rekey in progress (see docs/FORMAT.md):
//! - `cryptbucket.json.rekey`: the complete new header (new master key, re-wrapped slots),
//!   written first, so the new key survives a crash wrapped like the old one;
//! - `m/rekey`: progress, sealed with the new key: old chunk id -> re-sealed chunk.
//!
//! Steps, each safe to repeat after a kill at any point:
//! 1. take the writer lease (refused while the volume is mounted);
//! 2. re-seal every chunk of the current snapshot under a new id
//!    (`VolumeKeys::rekeyed_chunk_id`: deterministic, so a repeat writes the same bytes),
//!    checkpointing `m/rekey` now and then;
//! 3. write a fresh full snapshot under the new key and move `m/head` to it (the meta layer's
//!    `SqliteMeta::import` + `RemoteMeta::commit`);
//! 4. release the lease, replace `cryptbucket.json` (If-Match) and its backup with the new
//!    header, delete `cryptbucket.json.rekey`;
//! 5. delete the old chunks, old metadata records, and `m/rekey` last.
//!
//! Old objects are deleted only in step 5, after the new header is in place.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::admin::{load_header, write_header};
use crate::backend::kms::KmsClient;
use crate::backend::{BackendError, ObjectStore, PutMode};
use crate::crypto::{Argon2Params, ChunkId, Header, KeySource, RecordKind, VolumeKeys};
use crate::meta::lease::{Lease, DEFAULT_LEASE_TTL};
use crate::meta::remote::{RemoteMeta, HEAD_KEY};
use crate::meta::{ChunkRef, SqliteMeta};
use crate::volume::{header_error, Result, VolumeError};

/// The new header while a rekey is in progress.
pub const PENDING_HEADER_KEY: &str = "cryptbucket.json.rekey";
/// Rekey progress (sealed with the new key).
pub const PROGRESS_KEY: &str = "m/rekey";
/// Chunks re-sealed in parallel.
const IN_FLIGHT: usize = 8;
/// Write `m/rekey` at least this often while chunks are being re-sealed.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

/// What the rekey reports as it goes.
#[derive(Debug, Clone)]
pub enum RekeyEvent {
    /// A step started (for a message).
    Step(String),
    /// Chunks to re-seal in this run (already done ones excluded): count and plaintext bytes.
    Total { chunks: u64, bytes: u64 },
    /// One chunk re-sealed: its plaintext bytes.
    Chunk(u64),
}

/// What the caller supplies.
pub struct RekeyRequest<'a> {
    /// Unlocks the current header (and, on a resume, the pending one).
    pub source: &'a KeySource,
    /// Secrets of other passphrase/keyfile slots to keep (each re-wrapped).
    pub extra: &'a [KeySource],
    /// Drop the passphrase/keyfile slots not covered by `source` and `extra`.
    pub drop_others: bool,
    /// Needed when the volume has KMS slots (each gets a new data key) or `source` is KMS.
    pub kms: Option<&'a KmsClient>,
    /// Argon2 parameters for slots whose old parameters are unknown.
    pub kdf: Argon2Params,
    /// Holder name for the writer lease (stable across runs on one machine, so a killed run's
    /// lease is taken over by the next).
    pub holder: String,
}

/// What a finished rekey did.
#[derive(Debug, Clone, Default)]
pub struct RekeyReport {
    pub chunks: u64,
    pub bytes: u64,
    pub resumed: bool,
    pub slots: usize,
    pub dropped_slots: Vec<usize>,
    pub deleted_old: u64,
}

/// Progress record: old chunk id (hex) -> (new id, stored length, digest).
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Progress {
    done: BTreeMap<String, NewChunk>,
    /// Set once the new snapshot and head are written: then only the switch and the cleanup
    /// are left.
    #[serde(default)]
    committed: bool,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Copy)]
struct NewChunk {
    #[serde(with = "crate::meta::hex_array16")]
    id: [u8; 16],
    stored_len: u64,
    #[serde(with = "crate::meta::hex_array16")]
    digest: [u8; 16],
}

fn st(desc: &str) -> impl Fn(BackendError) -> VolumeError + '_ {
    move |e| VolumeError::Store(desc.to_string(), e)
}

fn kms_err(e: BackendError) -> VolumeError {
    VolumeError::Kms(e.to_string())
}

/// Test hook: SIGKILL ourselves after this many re-sealed chunks (the resume test).
fn kill_after() -> Option<u64> {
    std::env::var("CRYPTBUCKET_TEST_REKEY_KILL_AFTER")
        .ok()
        .and_then(|v| v.parse().ok())
}

async fn get_opt(
    store: &dyn ObjectStore,
    key: &str,
) -> std::result::Result<Option<Bytes>, BackendError> {
    match store.get(key, None).await {
        Ok(b) => Ok(Some(b)),
        Err(BackendError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The key source that opens `pending` for the user who opened the old header with
/// `source`: the same passphrase or keyfile, or a Decrypt of the pending header's KMS slot.
fn pending_source(
    rt: &tokio::runtime::Runtime,
    pending: &Header,
    source: &KeySource,
    kms: Option<&KmsClient>,
) -> Result<Option<KeySource>> {
    let KeySource::Kms(k) = source else {
        return Ok(None);
    };
    let kms = kms.ok_or_else(|| VolumeError::Kms("a KMS client is needed".into()))?;
    let slot = pending
        .kms_slots()
        .into_iter()
        .find(|(_, s)| s.key_id == k.key_id())
        .ok_or_else(|| {
            VolumeError::Kms("the pending rekey header has no slot for this KMS key".into())
        })?;
    Ok(Some(KeySource::Kms(
        rt.block_on(kms.decrypt(&slot.1.key_id, &slot.1.blob, &pending.volume_id()))
            .map_err(kms_err)?,
    )))
}

/// Run (or resume) a rekey of the volume in `store`.
pub fn rekey(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    req: &RekeyRequest<'_>,
    on: &mut dyn FnMut(RekeyEvent),
) -> Result<RekeyReport> {
    let desc = store.describe();
    let stored = load_header(rt, store)?;
    let header = Header::parse(&stored.bytes).map_err(|e| header_error(&desc, &stored.bytes, e))?;
    let (used, cur_keys) = header
        .unlock_slot(req.source)
        .map_err(|e| header_error(&desc, &stored.bytes, e))?;
    let cur_keys = Arc::new(cur_keys);
    // Before anything is written: refused while the volume is mounted.
    let lease = Arc::new(Lease::acquire(
        store.clone(),
        cur_keys.clone(),
        rt.handle().clone(),
        &req.holder,
        DEFAULT_LEASE_TTL,
        false,
    )?);
    let released = std::cell::Cell::new(false);
    let res = run(
        rt, store, req, &stored, &header, used, cur_keys, &lease, &released, on,
    );
    if !released.get() {
        lease.release();
    }
    res
}

#[allow(clippy::too_many_arguments)]
fn run(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    req: &RekeyRequest<'_>,
    stored: &crate::admin::StoredHeader,
    header: &Header,
    used: usize,
    cur_keys: Arc<VolumeKeys>,
    lease: &Arc<Lease>,
    released: &std::cell::Cell<bool>,
    on: &mut dyn FnMut(RekeyEvent),
) -> Result<RekeyReport> {
    let desc = store.describe();
    let mut report = RekeyReport {
        slots: header.slot_count(),
        ..Default::default()
    };

    let pending = rt
        .block_on(get_opt(store.as_ref(), PENDING_HEADER_KEY))
        .map_err(st(&desc))?;
    if pending.as_deref() == Some(stored.bytes.as_slice()) {
        // Killed right after the switch: only the cleanup is left.
        rt.block_on(store.delete(PENDING_HEADER_KEY))
            .map_err(st(&desc))?;
    }
    let Some(pending) = pending.filter(|p| p.as_ref() != stored.bytes.as_slice()) else {
        // No rekey in progress, or one whose header switch is done: finish its cleanup.
        if let Some(n) = cleanup(rt, store, &cur_keys, on)? {
            report.resumed = true;
            report.deleted_old = n;
            return Ok(report);
        }
        return start(
            rt, store, req, stored, header, used, cur_keys, lease, released, report, on,
        );
    };
    report.resumed = true;
    on(RekeyEvent::Step("resuming the rekey in progress".into()));
    let ph = Header::parse(&pending).map_err(|e| header_error(&desc, &pending, e))?;
    let psrc = pending_source(rt, &ph, req.source, req.kms)?;
    let new_keys = ph
        .unlock(psrc.as_ref().unwrap_or(req.source))
        .map_err(|e| header_error(&format!("{desc} ({PENDING_HEADER_KEY})"), &pending, e))?;
    report.slots = ph.slot_count();
    let new_keys = Arc::new(new_keys);
    let pending = pending.to_vec();
    finish(
        rt, store, stored, pending, cur_keys, new_keys, lease, released, report, on,
    )
}

#[allow(clippy::too_many_arguments)]
fn start(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    req: &RekeyRequest<'_>,
    stored: &crate::admin::StoredHeader,
    header: &Header,
    used: usize,
    cur_keys: Arc<VolumeKeys>,
    lease: &Arc<Lease>,
    released: &std::cell::Cell<bool>,
    mut report: RekeyReport,
    on: &mut dyn FnMut(RekeyEvent),
) -> Result<RekeyReport> {
    let desc = store.describe();
    // Which source re-wraps which slot.
    let kms_slots = header.kms_slots();
    let mut fresh_kms = Vec::new();
    if !kms_slots.is_empty() {
        let kms = req.kms.ok_or_else(|| {
            VolumeError::Kms("the volume has KMS key slots: rekey needs KMS to re-wrap them".into())
        })?;
        for (i, s) in &kms_slots {
            on(RekeyEvent::Step(format!(
                "new data key for KMS slot {i} ({})",
                s.key_id
            )));
            fresh_kms.push((
                *i,
                KeySource::Kms(
                    rt.block_on(kms.generate_data_key(&s.key_id, &header.volume_id()))
                        .map_err(kms_err)?,
                ),
            ));
        }
    }
    let mut sources: Vec<(Option<usize>, &KeySource)> = Vec::new();
    let mut covered = HashSet::new();
    for (i, s) in &fresh_kms {
        sources.push((Some(*i), s));
        covered.insert(*i);
    }
    if !matches!(req.source, KeySource::Kms(_)) {
        sources.push((Some(used), req.source));
        covered.insert(used);
    }
    for extra in req.extra {
        let (i, _) = header
            .unlock_slot(extra)
            .map_err(|e| header_error(&desc, &stored.bytes, e))?;
        if covered.insert(i) {
            sources.push((Some(i), extra));
        }
    }
    sources.sort_by_key(|(i, _)| *i);
    let missing: Vec<usize> = (0..header.slot_count())
        .filter(|i| !covered.contains(i))
        .collect();
    if !missing.is_empty() && !req.drop_others {
        let kinds = header.info().slot_kinds;
        let list: Vec<String> = missing
            .iter()
            .map(|i| format!("slot {i} ({})", kinds.get(*i).map_or("?", |s| s.as_str())))
            .collect();
        return Err(VolumeError::Crypto(
            crate::crypto::CryptoError::InvalidArgument(format!(
                "rekey must re-wrap every key slot, and it has no secret for {}: pass each one's \
             --extra-passphrase-file / --extra-keyfile, or --drop-other-slots to remove them",
                list.join(", ")
            )),
        ));
    }
    report.dropped_slots = missing;
    report.slots = sources.len();
    let (bytes, new_keys) = header.rekeyed(&cur_keys, &sources, req.kdf)?;
    match rt.block_on(store.put(
        PENDING_HEADER_KEY,
        Bytes::from(bytes.clone()),
        PutMode::Create,
    )) {
        Ok(_) => {}
        Err(BackendError::PreconditionFailed(_)) => return Err(VolumeError::HeaderChanged(desc)),
        Err(e) => return Err(VolumeError::Store(desc, e)),
    }
    let new_keys = Arc::new(new_keys);
    finish(
        rt, store, stored, bytes, cur_keys, new_keys, lease, released, report, on,
    )
}

#[allow(clippy::too_many_arguments)]
fn finish(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    stored: &crate::admin::StoredHeader,
    pending: Vec<u8>,
    cur_keys: Arc<VolumeKeys>,
    new_keys: Arc<VolumeKeys>,
    lease: &Arc<Lease>,
    released: &std::cell::Cell<bool>,
    mut report: RekeyReport,
    on: &mut dyn FnMut(RekeyEvent),
) -> Result<RekeyReport> {
    let desc = store.describe();
    if new_keys.volume_id() != cur_keys.volume_id() {
        return Err(VolumeError::BadHeader(
            desc,
            format!("{PENDING_HEADER_KEY} belongs to another volume"),
        ));
    }
    let mut progress = read_progress(rt, store, &new_keys)?.unwrap_or_default();
    if !progress.committed {
        reseal_and_commit(
            rt,
            store,
            &cur_keys,
            &new_keys,
            lease,
            &mut progress,
            &mut report,
            on,
        )?;
    }
    on(RekeyEvent::Step("switching to the new header".into()));
    // The lease record is sealed with the old key: drop it before that key goes away.
    lease.release();
    released.set(true);
    write_header(rt, store, stored, pending)?;
    rt.block_on(store.delete(PENDING_HEADER_KEY))
        .map_err(st(&desc))?;
    report.deleted_old = cleanup(rt, store, &new_keys, on)?.unwrap_or(0);
    Ok(report)
}

fn read_progress(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    keys: &VolumeKeys,
) -> Result<Option<Progress>> {
    let desc = store.describe();
    let Some(sealed) = rt
        .block_on(get_opt(store.as_ref(), PROGRESS_KEY))
        .map_err(st(&desc))?
    else {
        return Ok(None);
    };
    let plain = keys.open_record(RecordKind::Rekey, &sealed)?;
    let json = zstd::bulk::decompress(&plain, 1 << 30)
        .map_err(|e| VolumeError::BadHeader(desc.clone(), format!("{PROGRESS_KEY}: {e}")))?;
    serde_json::from_slice(&json)
        .map(Some)
        .map_err(|e| VolumeError::BadHeader(desc, format!("{PROGRESS_KEY}: {e}")))
}

fn write_progress(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    keys: &VolumeKeys,
    p: &Progress,
) -> Result<()> {
    let desc = store.describe();
    let json = serde_json::to_vec(p)
        .map_err(|e| VolumeError::BadHeader(desc.clone(), format!("{PROGRESS_KEY}: {e}")))?;
    let packed = zstd::bulk::compress(&json, 3)
        .map_err(|e| VolumeError::BadHeader(desc.clone(), format!("{PROGRESS_KEY}: {e}")))?;
    let sealed = keys.seal_record(RecordKind::Rekey, &packed)?;
    rt.block_on(store.put(PROGRESS_KEY, Bytes::from(sealed), PutMode::Overwrite))
        .map_err(st(&desc))?;
    Ok(())
}

/// Re-seal one chunk under the new key; returns its new place.
async fn reseal_one(
    store: Arc<dyn ObjectStore>,
    old: Arc<VolumeKeys>,
    new: Arc<VolumeKeys>,
    c: ChunkRef,
) -> std::result::Result<NewChunk, VolumeError> {
    let desc = store.describe();
    let id = ChunkId(c.id);
    let object = store
        .get(&id.object_key(), None)
        .await
        .map_err(|e| VolumeError::Store(desc.clone(), e))?;
    let new_id = new.rekeyed_chunk_id(&id);
    let sealed = tokio::task::spawn_blocking(move || -> std::result::Result<_, VolumeError> {
        let plain =
            zeroize::Zeroizing::new(old.open_chunk(&id, c.obj_len(), &c.digest, &object)?);
        Ok(new.seal_chunk(&new_id, &plain)?)
    })
    .await
    .map_err(|e| VolumeError::Kms(format!("re-sealing task failed: {e}")))??;
    let stored_len = sealed.bytes.len() as u64;
    let digest = sealed.digest;
    store
        .put(
            &new_id.object_key(),
            Bytes::from(sealed.bytes),
            PutMode::Overwrite,
        )
        .await
        .map_err(|e| VolumeError::Store(desc, e))?;
    Ok(NewChunk {
        id: new_id.0,
        stored_len,
        digest,
    })
}

#[allow(clippy::too_many_arguments)]
fn reseal_and_commit(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    cur_keys: &Arc<VolumeKeys>,
    new_keys: &Arc<VolumeKeys>,
    lease: &Arc<Lease>,
    progress: &mut Progress,
    report: &mut RekeyReport,
    on: &mut dyn FnMut(RekeyEvent),
) -> Result<()> {
    on(RekeyEvent::Step("reading the metadata".into()));
    let old_remote = RemoteMeta::new(store.clone(), cur_keys.clone(), rt.handle().clone());
    let (head, hash) = old_remote.fetch_head()?.ok_or_else(|| {
        VolumeError::Meta(crate::meta::MetaError::Refused(format!(
            "the volume at {} has no metadata head (m/head is missing)",
            store.describe()
        )))
    })?;
    let meta = SqliteMeta::open_in_memory()?;
    old_remote.load_into(&meta, &head, &hash)?;
    let (mut snap, _) = meta.export()?;

    let mut todo = Vec::new();
    let mut seen = HashSet::new();
    for (_, c) in &snap.chunks {
        if !progress.done.contains_key(&hex::encode(c.id)) && seen.insert(c.id) {
            todo.push(c.clone());
        }
    }
    let total_bytes: u64 = todo.iter().map(|c| c.obj_len()).sum();
    on(RekeyEvent::Total {
        chunks: todo.len() as u64,
        bytes: total_bytes,
    });
    let kill = kill_after();
    let mut last_checkpoint = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut queue = todo.into_iter();
    loop {
        while set.len() < IN_FLIGHT {
            let Some(c) = queue.next() else { break };
            let fut = reseal_one(store.clone(), cur_keys.clone(), new_keys.clone(), c.clone());
            set.spawn_on(async move { (c, fut.await) }, rt.handle());
        }
        let Some(joined) = rt.block_on(set.join_next()) else {
            break;
        };
        let (c, res) =
            joined.map_err(|e| VolumeError::Kms(format!("re-sealing task failed: {e}")))?;
        let nc = res?;
        progress.done.insert(hex::encode(c.id), nc);
        report.chunks += 1;
        report.bytes += c.obj_len();
        on(RekeyEvent::Chunk(c.obj_len()));
        if kill.is_some_and(|k| report.chunks >= k) {
            // SAFETY: kill(2) on our own pid; the test hook for an abrupt death.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        if last_checkpoint.elapsed() > CHECKPOINT_EVERY {
            write_progress(rt, store, new_keys, progress)?;
            last_checkpoint = Instant::now();
        }
    }
    // A pack keeps its members' places: the same plaintext is sealed under the new id.
    // Every old id with its new place is recorded before the head moves, so the cleanup
    // knows what to delete even after a crash.
    write_progress(rt, store, new_keys, progress)?;
    on(RekeyEvent::Step(
        "writing the metadata under the new key".into(),
    ));
    for (_, c) in snap.chunks.iter_mut() {
        let n = progress.done.get(&hex::encode(c.id)).ok_or_else(|| {
            VolumeError::Kms(format!("chunk {} was not re-sealed", hex::encode(c.id)))
        })?;
        c.id = n.id;
        c.stored_len = n.stored_len;
        c.digest = n.digest;
    }
    meta.import(&snap)?;
    let new_remote = RemoteMeta::new(store.clone(), new_keys.clone(), rt.handle().clone());
    new_remote.set_lease(lease.clone());
    // A full snapshot: a journal segment would chain onto records sealed with the old key.
    new_remote.commit_snapshot(&meta)?;
    progress.committed = true;
    write_progress(rt, store, new_keys, progress)?;
    Ok(())
}

/// After the switch: delete the old chunks named in `m/rekey`, metadata records the new key
/// does not open, then `m/rekey`. `None` when no rekey left anything to clean.
fn cleanup(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    keys: &Arc<VolumeKeys>,
    on: &mut dyn FnMut(RekeyEvent),
) -> Result<Option<u64>> {
    let desc = store.describe();
    let Some(progress) = read_progress(rt, store, keys)? else {
        return Ok(None);
    };
    if !progress.committed {
        return Ok(None);
    }
    on(RekeyEvent::Step(
        "deleting the objects sealed with the old key".into(),
    ));
    let mut n = 0;
    for old in progress.done.keys() {
        let id = ChunkId::from_hex(old)?;
        match rt.block_on(store.delete(&id.object_key())) {
            Ok(()) | Err(BackendError::NotFound(_)) => n += 1,
            Err(e) => return Err(VolumeError::Store(desc, e)),
        }
    }
    // Snapshots other than the head's, and journal segments from before the switch.
    let remote = RemoteMeta::new(store.clone(), keys.clone(), rt.handle().clone());
    let current = remote.fetch_head()?.map(|(h, _)| h.snapshot);
    let listed = rt.block_on(store.list("m/")).map_err(st(&desc))?;
    for key in listed {
        let key = key.key;
        if key == HEAD_KEY || key == PROGRESS_KEY || Some(&key) == current.as_ref() {
            continue;
        }
        let stale = if key.starts_with("m/snap/") {
            true
        } else if key.starts_with("m/log/") {
            match rt.block_on(store.get(&key, None)) {
                Ok(b) => keys.open_record(RecordKind::Journal, &b).is_err(),
                Err(_) => false,
            }
        } else {
            false
        };
        if stale {
            match rt.block_on(store.delete(&key)) {
                Ok(()) | Err(BackendError::NotFound(_)) => n += 1,
                Err(e) => return Err(VolumeError::Store(desc, e)),
            }
        }
    }
    rt.block_on(store.delete(PROGRESS_KEY)).map_err(st(&desc))?;
    Ok(Some(n))
}
