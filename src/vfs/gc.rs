//! `cryptbucket gc` on a live mount: the mount knows every chunk it references, committed
//! or not, so it decides what is garbage (see `crate::gc` for the safety rule).

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use super::{Result, Vfs};
use crate::gc::{plan, GcReport};

impl Vfs {
    /// Delete the chunk objects that neither the committed nor the local metadata
    /// references and that are older than `min_age`; `dry_run` only reports.
    pub fn collect_garbage(&self, min_age: Duration, dry_run: bool) -> Result<GcReport> {
        // The old packs this replaces wait out their grace period like any dead chunk.
        let (sparse_packs, sparse_bytes) = self.repack(dry_run)?;
        // List first: a chunk recorded after the listing is then seen as referenced.
        let listing = self.data.list_objects()?;
        let now = SystemTime::now();
        // The local metadata is the committed head plus changes on top; chunks those
        // changes replaced are still referenced by the head until the next commit, and
        // the commit path deletes them itself.
        let (snap, dead) = self.meta.export()?;
        let mut referenced: HashSet<[u8; 16]> = snap.chunks.iter().map(|(_, c)| c.id).collect();
        referenced.extend(dead);
        // Chunks only older heads reference wait out their grace period (a follower may
        // still read them); the commit path deletes them when it ends.
        referenced.extend(self.remote.chunks_in_grace(&self.meta)?);
        let (doomed, mut report) = plan(&listing, &referenced, min_age, now);
        report.sparse_packs = sparse_packs;
        report.sparse_bytes = sparse_bytes;
        if !dry_run && !doomed.is_empty() {
            let ids: Vec<[u8; 16]> = doomed
                .iter()
                .filter_map(|o| crate::gc::chunk_id_of_key(&o.key))
                .collect();
            self.data.delete_many(&ids)?;
        }
        tracing::info!(
            "gc: {} unreferenced chunk objects ({} bytes) {}; {} younger than {:?} kept",
            report.objects,
            report.bytes,
            if dry_run { "found" } else { "deleted" },
            report.kept_young,
            min_age
        );
        Ok(report)
    }
}
