//! `cryptbucket fsck`: check a stored volume from the bucket alone, and repair what can be
//! repaired without losing data.
//!
//! Checks, in order: both header copies open with the key; the metadata (head and the
//! snapshot it names, authenticated) loads; every chunk the metadata references exists
//! with exactly the stored size its plaintext length implies (`chunk_stored_len`); with
//! `full`, every such chunk is downloaded and every block authenticated against the
//! metadata's digest. Chunk objects nothing references are listed as orphans (normal after
//! a crash or while a mount is uploading; `gc` deletes them).
//!
//! Repair rules (docs/DESIGN.md): a damaged header copy is rewritten from the intact one; a
//! file with a missing, wrongly sized or unauthentic chunk has every name of it moved into
//! `/lost+found` (as `<ino>-<its path with / replaced by _>`), its chunk map untouched: its
//! intact ranges stay readable, its damaged ones keep failing with EIO instead of reading
//! as something it never held, and no object is deleted. Damaged files already in
//! `/lost+found` are reported as warnings, so a repaired volume checks clean. Orphans are
//! left to `gc`. Damaged metadata is not repaired (nothing trustworthy to rebuild from).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

use crate::backend::{BackendError, ObjectMeta, ObjectStore, PutMode};
use crate::crypto::{self, chunk_stored_len, ChunkId, KeySource, VolumeKeys};
use crate::gc::{chunk_id_of_key, CHUNK_PREFIX};
use crate::meta::records::Head;
use crate::meta::remote::RemoteMeta;
use crate::meta::snapshot::Snapshot;
use crate::meta::{ChunkRef, FileKind, Ino, ROOT_INO};
use crate::vfs::Ctx;
use crate::volume::{Volume, VolumeError, HEADER_BACKUP_KEY, HEADER_KEY};

pub const LOST_FOUND: &str = "lost+found";
/// Chunks verified at once with `--full`.
const PARALLEL: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Problem {
    HeaderMissing(String),
    HeaderDamaged(String),
    HeaderCopiesDiffer,
    Metadata,
    ChunkMissing,
    ChunkWrongSize,
    ChunkUnauthentic,
    ChunkUnreadable,
    VolumeChanged,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub problem: Problem,
    /// The file concerned (first of its names), when there is one.
    pub path: Option<String>,
    pub detail: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match &self.path {
            Some(p) => write!(f, "{sev}: /{p}: {}", self.detail),
            None => write!(f, "{sev}: {}", self.detail),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct FsckOptions {
    /// Download and authenticate every referenced chunk.
    pub full: bool,
}

/// Progress events, so the command line can draw a bar without this module knowing how.
pub enum Event<'a> {
    /// A new phase: its label, how much work (bytes when `bytes`, else items).
    Phase(&'a str, u64, bool),
    Advance(u64),
}

/// A damaged file: every name it has, for the repair.
#[derive(Debug, Clone)]
pub struct DamagedFile {
    pub ino: Ino,
    /// (parent, name, path) of each name.
    pub links: Vec<(Ino, Vec<u8>, String)>,
}

#[derive(Debug, Default)]
pub struct FsckReport {
    pub findings: Vec<Finding>,
    pub orphans: Vec<ObjectMeta>,
    pub files: u64,
    pub chunks: u64,
    pub chunk_bytes: u64,
    /// Bytes downloaded and authenticated (`full`).
    pub verified_bytes: u64,
    /// Pack objects, and the plaintext bytes in them no file references any more (freed
    /// only with a pack's last file).
    pub packs: u64,
    pub pack_dead_bytes: u64,
    pub head_seq: Option<u64>,
    /// Files with damaged chunks outside /lost+found (what `repair` moves).
    pub damaged: Vec<DamagedFile>,
    /// Header copies to rewrite from the intact one: (damaged key, intact bytes).
    pub header_fix: Option<(String, Vec<u8>)>,
}

impl FsckReport {
    pub fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count()
    }

    fn add(&mut self, severity: Severity, problem: Problem, path: Option<String>, detail: String) {
        self.findings.push(Finding {
            severity,
            problem,
            path,
            detail,
        });
    }
}

/// Read the committed metadata: the head, its snapshot and every journal segment after it,
/// authenticated and replayed (the same path a mount uses), as one snapshot.
///
/// This is the single place fsck and gc read the volume's metadata from the bucket.
pub fn load_committed(remote: &RemoteMeta) -> crate::meta::Result<(Head, Snapshot)> {
    // The snapshot alone is stale: the journal segments after it carry the newest files,
    // and a chunk only they reference must never look like an orphan to gc.
    let meta = crate::meta::SqliteMeta::open_in_memory()?;
    let head = remote.load_full(&meta)?;
    let (snap, _dead) = meta.export()?;
    Ok((head, snap))
}

/// Paths of every name of every inode, built from the snapshot's directory entries.
fn paths(snap: &Snapshot) -> HashMap<Ino, Vec<(Ino, Vec<u8>, String)>> {
    let mut parent: HashMap<Ino, (Ino, &[u8])> = HashMap::new();
    for d in &snap.dentries {
        // Directories have one name; for files every name is collected below.
        parent.entry(d.ino).or_insert((d.parent, &d.name));
    }
    let dir_path = |mut ino: Ino| -> String {
        let mut parts = Vec::new();
        let mut guard = 0;
        while ino != ROOT_INO && guard < 4096 {
            match parent.get(&ino) {
                Some((p, n)) => {
                    parts.push(String::from_utf8_lossy(n).into_owned());
                    ino = *p;
                }
                None => {
                    parts.push(format!("?{ino}"));
                    break;
                }
            }
            guard += 1;
        }
        parts.reverse();
        parts.join("/")
    };
    let mut out: HashMap<Ino, Vec<(Ino, Vec<u8>, String)>> = HashMap::new();
    for d in &snap.dentries {
        let dir = dir_path(d.parent);
        let name = String::from_utf8_lossy(&d.name);
        let path = if dir.is_empty() {
            name.into_owned()
        } else {
            format!("{dir}/{name}")
        };
        out.entry(d.ino)
            .or_default()
            .push((d.parent, d.name.clone(), path));
    }
    out
}

/// Check the volume in `store` with `source` (see the module doc). Store failures that stop
/// the check are errors; everything found is in the report.
pub fn check(
    rt: &Runtime,
    store: &Arc<dyn ObjectStore>,
    source: &KeySource,
    opts: FsckOptions,
    progress: &mut dyn FnMut(Event),
) -> Result<FsckReport, VolumeError> {
    let desc = store.describe();
    let st = |e| VolumeError::Store(desc.clone(), e);
    let mut report = FsckReport::default();

    // 1. Header copies.
    let mut copies: Vec<(&str, Option<Bytes>)> = Vec::new();
    for key in [HEADER_KEY, HEADER_BACKUP_KEY] {
        match rt.block_on(store.get(key, None)) {
            Ok(b) => copies.push((key, Some(b))),
            Err(BackendError::NotFound(_)) => copies.push((key, None)),
            Err(e) => return Err(st(e)),
        }
    }
    let mut keys: Option<VolumeKeys> = None;
    let mut good: Option<Bytes> = None;
    let mut bad: Vec<&str> = Vec::new();
    for (key, bytes) in &copies {
        let Some(bytes) = bytes else {
            report.add(
                Severity::Error,
                Problem::HeaderMissing(key.to_string()),
                None,
                format!("header copy {key} is missing"),
            );
            bad.push(key);
            continue;
        };
        if good.as_ref().is_some_and(|g| g == bytes) {
            continue;
        }
        match crypto::open_header(bytes, source) {
            Ok(k) => {
                if keys.is_none() {
                    keys = Some(k);
                    good = Some(bytes.clone());
                } else {
                    report.add(
                        Severity::Warning,
                        Problem::HeaderCopiesDiffer,
                        None,
                        format!("header copies differ (both open with this key); {key} differs from {HEADER_KEY}"),
                    );
                }
            }
            Err(e) => {
                let e = crate::volume::header_error(&desc, bytes, e);
                report.add(
                    Severity::Error,
                    Problem::HeaderDamaged(key.to_string()),
                    None,
                    format!("header copy {key} does not open: {e}"),
                );
                bad.push(key);
            }
        }
    }
    let Some(keys) = keys else {
        // Neither copy opens: either the key is wrong or both are damaged. Say which is
        // likelier instead of listing two errors.
        return match copies.iter().find_map(|(_, b)| b.clone()) {
            Some(b) => match crypto::open_header(&b, source) {
                Err(e) => Err(crate::volume::header_error(&desc, &b, e)),
                Ok(_) => Err(VolumeError::BadHeader(desc, "no header copy opens".into())),
            },
            None => Err(VolumeError::NoVolume(desc)),
        };
    };
    if let (Some(g), [b]) = (good, bad.as_slice()) {
        report.header_fix = Some((b.to_string(), g.to_vec()));
    }
    let keys = Arc::new(keys);
    let params = keys.params().clone();

    // 2. Metadata.
    let remote = RemoteMeta::new(store.clone(), keys.clone(), rt.handle().clone());
    match remote.check_chain() {
        Ok(problems) => {
            for p in problems {
                report.add(Severity::Error, Problem::Metadata, None, p);
            }
        }
        Err(e) => report.add(
            Severity::Error,
            Problem::Metadata,
            None,
            format!("the metadata chain cannot be checked: {e}"),
        ),
    }
    let (head, snap) = match load_committed(&remote) {
        Ok(v) => v,
        Err(e) => {
            report.add(
                Severity::Error,
                Problem::Metadata,
                None,
                format!("the metadata does not load: {e}"),
            );
            return Ok(report);
        }
    };
    report.head_seq = Some(head.seq);

    // 3. Referenced chunks against the listing.
    progress(Event::Phase("listing chunk objects", 0, false));
    let listing = rt.block_on(store.list(CHUNK_PREFIX)).map_err(st)?;
    let stored: HashMap<[u8; 16], &ObjectMeta> = listing
        .iter()
        .filter_map(|o| chunk_id_of_key(&o.key).map(|id| (id, o)))
        .collect();
    let names = paths(&snap);
    let path_of = |ino: Ino| -> String {
        names
            .get(&ino)
            .and_then(|v| v.first())
            .map(|(_, _, p)| p.clone())
            .unwrap_or_else(|| format!("<unlinked inode {ino}>"))
    };
    let kinds: HashMap<Ino, FileKind> = snap
        .inodes
        .iter()
        .map(|i| (i.inode.ino, i.inode.kind))
        .collect();
    report.files = kinds.values().filter(|k| **k == FileKind::File).count() as u64;
    let mut damaged: BTreeMap<Ino, ()> = BTreeMap::new();
    let mut referenced: HashSet<[u8; 16]> = HashSet::new();
    // One entry per object (a pack is verified once), and every chunk each object holds.
    let mut to_verify: Vec<(Ino, ChunkRef)> = Vec::new();
    let mut members: HashMap<[u8; 16], Vec<(Ino, ChunkRef)>> = HashMap::new();
    progress(Event::Phase(
        "checking chunk references",
        snap.chunks.len() as u64,
        false,
    ));
    for (ino, c) in &snap.chunks {
        progress(Event::Advance(1));
        referenced.insert(c.id);
        report.chunks += 1;
        report.chunk_bytes += c.plain_len;
        let key = ChunkId(c.id).object_key();
        let want = chunk_stored_len(&params, c.obj_len());
        match stored.get(&c.id) {
            None => {
                report.add(
                    Severity::Error,
                    Problem::ChunkMissing,
                    Some(path_of(*ino)),
                    format!(
                        "chunk {} (bytes {}..) is missing: {key}",
                        c.idx,
                        c.idx * params.chunk_size as u64
                    ),
                );
                damaged.insert(*ino, ());
            }
            Some(o) if o.size != want || c.stored_len != want => {
                report.add(
                    Severity::Error,
                    Problem::ChunkWrongSize,
                    Some(path_of(*ino)),
                    format!(
                        "chunk {} has the wrong size: {key} holds {} bytes, {want} expected",
                        c.idx, o.size
                    ),
                );
                damaged.insert(*ino, ());
            }
            Some(_) => {
                let m = members.entry(c.id).or_default();
                match m.first() {
                    None => to_verify.push((*ino, c.clone())),
                    // Every reference to one object must describe it the same way, or
                    // verifying the first would vouch for the others.
                    Some((_, f))
                        if (f.obj_len(), f.stored_len, f.digest, f.pack.is_some())
                            != (c.obj_len(), c.stored_len, c.digest, c.pack.is_some()) =>
                    {
                        report.add(
                            Severity::Error,
                            Problem::ChunkWrongSize,
                            Some(path_of(*ino)),
                            format!(
                                "chunk {} describes {key} unlike the other files in it",
                                c.idx
                            ),
                        );
                        damaged.insert(*ino, ());
                        continue;
                    }
                    Some(_) => {}
                }
                m.push((*ino, c.clone()));
            }
        }
    }

    for (_, m) in members.iter().filter(|(_, m)| m[0].1.pack.is_some()) {
        report.packs += 1;
        let live: u64 = m.iter().map(|(_, c)| c.plain_len).sum();
        report.pack_dead_bytes += m[0].1.obj_len().saturating_sub(live);
    }

    // 4. Full verification.
    if opts.full {
        let total: u64 = to_verify
            .iter()
            .map(|(_, c)| chunk_stored_len(&params, c.obj_len()))
            .sum();
        progress(Event::Phase("verifying chunks", total, true));
        for batch in to_verify.chunks(PARALLEL) {
            let results = rt.block_on(async {
                let mut set = JoinSet::new();
                for (i, (_, c)) in batch.iter().enumerate() {
                    let store = store.clone();
                    let key = ChunkId(c.id).object_key();
                    set.spawn(async move { (i, store.get(&key, None).await) });
                }
                let mut out = Vec::new();
                while let Some(r) = set.join_next().await {
                    if let Ok(r) = r {
                        out.push(r);
                    }
                }
                out
            });
            if results.len() != batch.len() {
                return Err(st(BackendError::Other("a verification task failed".into())));
            }
            for (i, got) in results {
                let (_, c) = &batch[i];
                let key = ChunkId(c.id).object_key();
                let mut object = None;
                let failure = match got {
                    Ok(bytes) => {
                        progress(Event::Advance(bytes.len() as u64));
                        report.verified_bytes += bytes.len() as u64;
                        let res = keys.open_chunk(&ChunkId(c.id), c.obj_len(), &c.digest, &bytes);
                        object = Some(bytes);
                        match res {
                            Ok(_) => None,
                            Err(e) => Some((
                                Problem::ChunkUnauthentic,
                                format!("({key}) fails authentication: {e}"),
                            )),
                        }
                    }
                    Err(BackendError::NotFound(_)) => {
                        Some((Problem::ChunkMissing, format!("is missing: {key}")))
                    }
                    Err(e) if e.is_transient() => return Err(st(e)),
                    Err(e) => Some((
                        Problem::ChunkUnreadable,
                        format!("({key}) cannot be read: {e}"),
                    )),
                };
                let Some((problem, what)) = failure else {
                    continue;
                };
                for (ino, m) in members.get(&c.id).into_iter().flatten() {
                    // A pack's damage hits only the chunks whose blocks it touches.
                    if let (Some(_), Some(bytes)) = (&m.pack, &object) {
                        if member_intact(&keys, m, bytes) {
                            continue;
                        }
                    }
                    let idx = m.idx;
                    report.add(
                        Severity::Error,
                        problem.clone(),
                        Some(path_of(*ino)),
                        format!("chunk {idx} {what}"),
                    );
                    damaged.insert(*ino, ());
                }
            }
        }
    }

    // Files already moved to /lost+found by an earlier repair are known damage.

    let lf_ino = snap
        .dentries
        .iter()
        .find(|d| d.parent == ROOT_INO && d.name == LOST_FOUND.as_bytes())
        .map(|d| d.ino);
    for ino in damaged.keys() {
        let links = names.get(ino).cloned().unwrap_or_default();
        let in_lf = !links.is_empty() && links.iter().all(|(p, _, _)| Some(*p) == lf_ino);
        if in_lf {
            for f in report.findings.iter_mut() {
                if f.path.as_deref() == Some(path_of(*ino).as_str()) {
                    f.severity = Severity::Warning;
                    f.detail.push_str(" (already in /lost+found)");
                }
            }
        } else {
            report.damaged.push(DamagedFile { ino: *ino, links });
        }
    }

    // 5. Orphans.
    report.orphans = listing
        .iter()
        .filter(|o| chunk_id_of_key(&o.key).is_some_and(|id| !referenced.contains(&id)))
        .cloned()
        .collect();

    // The check read one consistent head; say so if a live mount moved it meanwhile.
    if let Ok(Some((now_head, _))) = remote.fetch_head() {
        if now_head.seq != head.seq {
            report.add(
                Severity::Warning,
                Problem::VolumeChanged,
                None,
                format!(
                    "the volume changed during the check (commit {} -> {}): a live mount is writing; findings about missing chunks may be stale",
                    head.seq, now_head.seq
                ),
            );
        }
    }
    Ok(report)
}

/// Rewrite a damaged or missing header copy from the intact one. Returns what was done.
pub fn repair_header(
    rt: &Runtime,
    store: &Arc<dyn ObjectStore>,
    report: &FsckReport,
) -> Result<Option<String>, VolumeError> {
    let Some((key, bytes)) = &report.header_fix else {
        return Ok(None);
    };
    rt.block_on(store.put(key, Bytes::from(bytes.clone()), PutMode::Overwrite))
        .map_err(|e| VolumeError::Store(store.describe(), e))?;
    Ok(Some(format!(
        "rewrote header copy {key} from the intact copy"
    )))
}

/// Move every damaged file's names into /lost+found on an open volume (which holds the
/// writer lease), then commit. Returns one line per move.
pub fn repair_files(vol: &Volume, report: &FsckReport) -> Result<Vec<String>, VolumeError> {
    let mut done = Vec::new();
    if report.damaged.is_empty() {
        return Ok(done);
    }
    let vfs = &vol.vfs;
    let lf = match vfs.lookup(ROOT_INO, LOST_FOUND.as_bytes()) {
        Ok(a) => a.ino,
        Err(_) => {
            // SAFETY: getuid/getgid cannot fail.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            let ctx = Ctx {
                uid,
                gid,
                umask: 0o077,
            };
            vfs.mkdir(&ctx, ROOT_INO, LOST_FOUND.as_bytes(), 0o700)?.ino
        }
    };
    for f in &report.damaged {
        for (parent, name, path) in &f.links {
            let mut new = format!("{}-{}", f.ino, path.replace('/', "_")).into_bytes();
            new.truncate(crate::vfs::NAME_MAX);
            // Cut at a char boundary so the name stays valid UTF-8 when it was.
            while std::str::from_utf8(&new).is_err() && !new.is_empty() {
                new.pop();
            }
            vfs.rename(*parent, name, lf, &new, libc::RENAME_NOREPLACE)?;
            done.push(format!(
                "moved /{path} to /{LOST_FOUND}/{}",
                String::from_utf8_lossy(&new)
            ));
        }
    }
    vfs.sync_all()?;
    Ok(done)
}

/// Whether the blocks of a packed chunk open, from its whole stored object.
fn member_intact(keys: &VolumeKeys, c: &ChunkRef, object: &[u8]) -> bool {
    if c.plain_len == 0 {
        return false;
    }
    let p = keys.params();
    let bs = u64::from(p.block_size);
    let first = c.obj_off() / bs;
    let last = (c.obj_off() + c.plain_len - 1) / bs;
    let n = (last - first + 1) as u32;
    let r = crypto::chunk_block_range(p, c.obj_len(), first as u32, n);
    object
        .get(r.start as usize..r.end as usize)
        .is_some_and(|got| {
            keys.open_chunk_range(&ChunkId(c.id), c.obj_len(), &c.digest, first as u32, n, got)
                .is_ok()
        })
}
