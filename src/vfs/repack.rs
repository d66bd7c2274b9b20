//! Repacking: a pack is freed only with its last file, so `gc` on a live mount rewrites the
//! packs that are at least half deleted files, copying the chunks still in use into new
//! packs (through the normal upload path) and pointing their files at the copies.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use super::{Result, Vfs};
use crate::gc::is_sparse;
use crate::meta::{ChunkRef, Ino};

/// Bytes of deleted files in sparse packs below which a background repack does nothing:
/// freeing less is not worth its downloads and uploads.
pub const AUTO_REPACK_MIN_BYTES: u64 = 16 << 20;

/// Bytes of chunks being copied at once (each is read into memory first).
const REPACK_IN_FLIGHT: u64 = 64 << 20;

impl Vfs {
    /// Rewrite (or, with `dry_run`, count) the sparse packs: (packs, bytes of deleted files
    /// in them). A pack with a file that is open or has writes pending is left for later.
    pub fn repack(&self, dry_run: bool) -> Result<(u64, u64)> {
        let r = self.repack_if(dry_run, 0, &AtomicBool::new(false))?;
        Ok(r.unwrap_or_default())
    }

    /// The background repack of a mount: when the sparse packs hold at least `min_bytes`
    /// of deleted files, rewrite them, stopping between packs once `stop` is set. None
    /// when there is too little to gain for the downloads and uploads it costs.
    pub fn auto_repack(&self, min_bytes: u64, stop: &AtomicBool) -> Result<Option<(u64, u64)>> {
        self.repack_if(false, min_bytes, stop)
    }

    fn repack_if(
        &self,
        dry_run: bool,
        min_bytes: u64,
        stop: &AtomicBool,
    ) -> Result<Option<(u64, u64)>> {
        // A second repack waits and then finds the packs the first one rewrote dense.
        let _one = (!dry_run).then(|| self.repacking.lock());
        // Each sparse pack with the bytes of deleted files in it.
        let sparse: Vec<(Vec<(Ino, ChunkRef)>, u64)> = self
            .meta
            .sparse_packs()?
            .into_iter()
            .filter_map(|members| {
                let len = members[0].1.obj_len();
                let live: u64 = members.iter().map(|(_, c)| c.plain_len).sum();
                let open = members.iter().any(|(ino, _)| self.wb.is_tracked(*ino));
                (is_sparse(live, len) && !open).then_some((members, len - live))
            })
            .collect();
        let dead: u64 = sparse.iter().map(|(_, d)| d).sum();
        if dry_run {
            return Ok(Some((sparse.len() as u64, dead)));
        }
        if dead < min_bytes {
            return Ok(None);
        }
        let (mut packs, mut bytes) = (0, 0);
        let (tx, rx) = mpsc::channel::<u64>();
        let mut in_flight = 0u64;
        let mut waiting = 0usize;
        for (members, pack_dead) in sparse {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            // Opened since the listing: its refs are in memory now (the swap refuses too).
            if members.iter().any(|(ino, _)| self.wb.is_tracked(*ino)) {
                continue;
            }
            if members.len() > 1 {
                // One GET for the whole pack instead of a ranged one per member: the reads
                // below wait for this download.
                self.data.prefetch(vec![members[0].1.clone()], false);
            }
            // Every live chunk is read first: a damaged pack is left whole, for fsck to
            // report, and not counted as repacked.
            let read: std::result::Result<Vec<Arc<Vec<u8>>>, _> = members
                .iter()
                .map(|(_, c)| self.data.read(c, 0, c.plain_len).map(Arc::new))
                .collect();
            let datas = match read {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!("repack: cannot read a pack (left as it is): {e}");
                    continue;
                }
            };
            packs += 1;
            bytes += pack_dead;
            for ((ino, old), data) in members.into_iter().zip(datas) {
                let n = old.plain_len;
                let (wb, tx) = (self.wb.clone(), tx.clone());
                self.data.upload_async(
                    old.idx,
                    n,
                    Box::new(move || Ok(data)),
                    Box::new(move |res: crate::data::Result<ChunkRef>| {
                        let kept = match res {
                            Ok(new) => wb.swap_repacked(ino, &old, &new),
                            Err(e) => {
                                tracing::warn!("repack: upload failed (pack kept as it is): {e}");
                                false
                            }
                        };
                        let _ = tx.send(n);
                        kept
                    }),
                );
                in_flight += n;
                waiting += 1;
                while in_flight > REPACK_IN_FLIGHT {
                    let Ok(done) = rx.recv() else { break };
                    in_flight -= done;
                    waiting -= 1;
                }
            }
        }
        drop(tx);
        for _ in 0..waiting {
            if rx.recv().is_err() {
                break;
            }
        }
        if packs > 0 {
            self.commit()?;
        }
        Ok(Some((packs, bytes)))
    }
}
