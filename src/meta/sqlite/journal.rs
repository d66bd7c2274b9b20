//! The SQLite side of the journal: triggers that log which keys changed since the last
//! commit, turning that log into a segment, applying segments, and loading a snapshot fast.

use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};

use super::super::journal::{RemovedXattr, Segment, SEGMENT_VERSION};
use super::super::snapshot::{SnapDentry, SnapInode, SnapXattr, Snapshot};
use super::{row_inode, Cached, FileKind, MetaError, Result, SqliteMeta, INODE_COLS};

// Table codes in `changes`: 1 inodes (a = ino), 2 dentries (a = cookie), 3 chunks (a = ino,
// b = idx), 4 xattrs (a = ino, b = name). A key is logged once, under its newest id. A
// commit exports the keys logged up to a mark (the highest id then, kept in `log_mark`) and
// clears exactly those ids once it reached the store. So a change is logged (the old entry
// replaced by one with a new id) only when the key has no entry above the last mark; one
// above it is still waiting for the next commit and covers the change, and the trigger's
// WHEN clause skips its body: no change-log pages written (an untarred file's three setattrs
// and its size update each rewrote three: the entry, its index and the id sequence). Without
// a `log_mark` row every change is logged anew.
macro_rules! log_key {
    ($tbl:literal, $a:expr, $b:expr) => {
        concat!(
            "DELETE FROM changes WHERE tbl=",
            $tbl,
            " AND a=",
            $a,
            " AND b=",
            $b,
            ";",
            "INSERT INTO changes(tbl, a, b) VALUES (",
            $tbl,
            ", ",
            $a,
            ", ",
            $b,
            ");"
        )
    };
}

/// SQL true when the key has an entry logged after the last export mark.
macro_rules! logged_after_mark {
    ($tbl:literal, $a:expr, $b:expr) => {
        concat!(
            "EXISTS (SELECT 1 FROM changes WHERE tbl=",
            $tbl,
            " AND a=",
            $a,
            " AND b=",
            $b,
            " AND id > COALESCE((SELECT m FROM log_mark WHERE one=1), 9223372036854775807))"
        )
    };
}

macro_rules! triggers {
    ($name:literal, $table:literal, $tbl:literal, $a:literal, $bnew:literal, $bold:literal) => {
        concat!(
            "CREATE TRIGGER IF NOT EXISTS cb_",
            $name,
            "_ins AFTER INSERT ON ",
            $table,
            " WHEN NOT ",
            logged_after_mark!($tbl, concat!("NEW.", $a), $bnew),
            " BEGIN ",
            log_key!($tbl, concat!("NEW.", $a), $bnew),
            " END;",
            "CREATE TRIGGER IF NOT EXISTS cb_",
            $name,
            "_del AFTER DELETE ON ",
            $table,
            " WHEN NOT ",
            logged_after_mark!($tbl, concat!("OLD.", $a), $bold),
            " BEGIN ",
            log_key!($tbl, concat!("OLD.", $a), $bold),
            " END;",
            // Both keys (the same one unless the row's key changed) must be covered to skip.
            "CREATE TRIGGER IF NOT EXISTS cb_",
            $name,
            "_upd AFTER UPDATE ON ",
            $table,
            " WHEN NOT (",
            logged_after_mark!($tbl, concat!("OLD.", $a), $bold),
            " AND ",
            logged_after_mark!($tbl, concat!("NEW.", $a), $bnew),
            ") BEGIN ",
            log_key!($tbl, concat!("OLD.", $a), $bold),
            log_key!($tbl, concat!("NEW.", $a), $bnew),
            " END;"
        )
    };
}

pub(super) const TRIGGERS: &str = concat!(
    triggers!("inodes", "inodes", "1", "ino", "0", "0"),
    triggers!("dentries", "dentries", "2", "cookie", "0", "0"),
    triggers!("chunks", "chunks", "3", "ino", "NEW.idx", "OLD.idx"),
    triggers!("xattrs", "xattrs", "4", "ino", "NEW.name", "OLD.name"),
);

/// Run before `TRIGGERS` at every open, so a database made by an older version gets the
/// current triggers.
pub(super) const DROP_TRIGGERS: &str = "
DROP TRIGGER IF EXISTS cb_inodes_ins; DROP TRIGGER IF EXISTS cb_inodes_del; DROP TRIGGER IF EXISTS cb_inodes_upd;
DROP TRIGGER IF EXISTS cb_dentries_ins; DROP TRIGGER IF EXISTS cb_dentries_del; DROP TRIGGER IF EXISTS cb_dentries_upd;
DROP TRIGGER IF EXISTS cb_chunks_ins; DROP TRIGGER IF EXISTS cb_chunks_del; DROP TRIGGER IF EXISTS cb_chunks_upd;
DROP TRIGGER IF EXISTS cb_xattrs_ins; DROP TRIGGER IF EXISTS cb_xattrs_del; DROP TRIGGER IF EXISTS cb_xattrs_upd;
";

const DROP_FOR_BULK: &str = "
DROP INDEX IF EXISTS dentries_ino; DROP INDEX IF EXISTS dentries_parent_cookie;
DROP INDEX IF EXISTS chunks_packed;
DELETE FROM inodes; DELETE FROM dentries; DELETE FROM chunks; DELETE FROM xattrs;
DELETE FROM dead_chunks; DELETE FROM changes;
";

const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS dentries_ino ON dentries(ino);
CREATE INDEX IF NOT EXISTS dentries_parent_cookie ON dentries(parent, cookie);
CREATE INDEX IF NOT EXISTS chunks_packed ON chunks(id) WHERE pack_len IS NOT NULL;
";

/// Mark the change log for an export: entries up to the returned id go into it, and a key
/// changed from now on is logged anew if its entry is at or below the mark (see `log_key!`).
/// Called with the connection locked for the whole export.
pub(super) fn set_log_mark(conn: &Connection) -> Result<i64> {
    let mark: i64 = conn.row("SELECT COALESCE(MAX(id), 0) FROM changes", [], |r| r.get(0))?;
    conn.exec(
        "INSERT OR REPLACE INTO log_mark(one, m) VALUES (1, ?1)",
        [mark],
    )?;
    Ok(mark)
}

fn set_state_tx(tx: &Connection, state: &[(&str, Vec<u8>)]) -> Result<()> {
    let mut st = tx.prepare_cached("INSERT OR REPLACE INTO state(key, value) VALUES (?1, ?2)")?;
    for (k, v) in state {
        st.execute(params![k, v])?;
    }
    Ok(())
}

fn insert_inode(st: &mut rusqlite::CachedStatement<'_>, si: &SnapInode) -> Result<()> {
    let i = &si.inode;
    st.execute(params![
        i.ino as i64,
        i.kind.to_i64(),
        i.perm as i64,
        i.uid as i64,
        i.gid as i64,
        i.size as i64,
        i.atime,
        i.mtime,
        i.ctime,
        i.nlink as i64,
        si.target,
        si.inline,
        i.rdev as i64
    ])?;
    Ok(())
}

const INS_INODE: &str = "INSERT OR REPLACE INTO inodes(ino, kind, perm, uid, gid, size, atime, mtime, ctime, nlink, target, inline, rdev)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";
const INS_DENTRY: &str =
    "INSERT OR REPLACE INTO dentries(cookie, parent, name, ino) VALUES (?1, ?2, ?3, ?4)";
const INS_XATTR: &str = "INSERT OR REPLACE INTO xattrs(ino, name, value) VALUES (?1, ?2, ?3)";

fn insert_rows(
    tx: &Connection,
    inodes: &[SnapInode],
    dentries: &[SnapDentry],
    chunks: &[(u64, super::ChunkRef)],
    xattrs: &[SnapXattr],
) -> Result<()> {
    insert_rows_reporting(tx, inodes, dentries, chunks, xattrs, &mut |_| {})
}

/// Rows between two progress reports of a bulk load.
const REPORT_EVERY: usize = 16384;

fn insert_rows_reporting(
    tx: &Connection,
    inodes: &[SnapInode],
    dentries: &[SnapDentry],
    chunks: &[(u64, super::ChunkRef)],
    xattrs: &[SnapXattr],
    report: &mut dyn FnMut(u64),
) -> Result<()> {
    let mut st = tx.prepare_cached(INS_INODE)?;
    for (i, si) in inodes.iter().enumerate() {
        insert_inode(&mut st, si)?;
        if i % REPORT_EVERY == 0 {
            report(i as u64);
        }
    }
    let base = inodes.len();
    let mut st = tx.prepare_cached(INS_DENTRY)?;
    for (i, d) in dentries.iter().enumerate() {
        if i % REPORT_EVERY == 0 {
            report((base + i) as u64);
        }
        st.execute(params![
            d.cookie as i64,
            d.parent as i64,
            d.name,
            d.ino as i64
        ])?;
    }
    let base = inodes.len() + dentries.len();
    let mut st = tx.prepare_cached(super::INS_CHUNK)?;
    for (i, (ino, c)) in chunks.iter().enumerate() {
        if i % REPORT_EVERY == 0 {
            report((base + i) as u64);
        }
        super::insert_chunk(&mut st, *ino, c)?;
    }
    let mut st = tx.prepare_cached(INS_XATTR)?;
    for x in xattrs {
        st.execute(params![x.ino as i64, x.name, x.value])?;
    }
    Ok(())
}

/// Set every key a segment names to its state at that commit (idempotent).
fn apply_segment_tx(tx: &Connection, seg: &Segment) -> Result<()> {
    let mut st = tx.prepare_cached("DELETE FROM inodes WHERE ino=?1")?;
    for ino in &seg.removed_inodes {
        st.execute([*ino as i64])?;
    }
    let mut st = tx.prepare_cached("DELETE FROM dentries WHERE cookie=?1")?;
    for c in &seg.removed_dentries {
        st.execute([*c as i64])?;
    }
    let mut st = tx.prepare_cached("DELETE FROM chunks WHERE ino=?1 AND idx=?2")?;
    for (ino, idx) in &seg.removed_chunks {
        st.execute([*ino as i64, *idx as i64])?;
    }
    let mut st = tx.prepare_cached("DELETE FROM xattrs WHERE ino=?1 AND name=?2")?;
    for x in &seg.removed_xattrs {
        st.execute(params![x.ino as i64, x.name])?;
    }
    // Removals first: an entry's (parent, name) may have moved to another cookie. Any
    // remaining clash is with a row this segment also rewrites, so REPLACE is exact.
    insert_rows(tx, &seg.inodes, &seg.dentries, &seg.chunks, &seg.xattrs)?;
    tx.exec(
        "INSERT OR REPLACE INTO state(key, value) VALUES ('next_ino', ?1)",
        params![seg.next_ino.to_le_bytes().to_vec()],
    )?;
    Ok(())
}

impl SqliteMeta {
    /// Whether there are changes not yet in any commit.
    pub fn has_changes(&self) -> Result<bool> {
        self.read(|c| {
            Ok(c.row("SELECT 1 FROM changes LIMIT 1", [], |_| Ok(()))
                .optional()?
                .is_some())
        })
    }

    /// The changes since the last commit as a segment body (header fields left empty), the
    /// change-log mark it includes, and the chunk ids no current row references.
    pub fn export_changes(&self) -> Result<(Segment, i64, Vec<[u8; 16]>)> {
        let conn = self.conn.lock();
        let mark = set_log_mark(&conn)?;
        let tx = conn.unchecked_transaction()?;
        let mut seg = Segment {
            version: SEGMENT_VERSION,
            ..Segment::default()
        };
        let keys: Vec<(i64, i64, Value)> = {
            let mut st = tx.prepare("SELECT tbl, a, b FROM changes WHERE id <= ?1 ORDER BY id")?;
            let rows = st.query_map([mark], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut q_inode = tx.prepare_cached(&format!(
            "SELECT {INODE_COLS}, target, inline FROM inodes WHERE ino=?1"
        ))?;
        let mut q_dentry =
            tx.prepare_cached("SELECT parent, name, ino FROM dentries WHERE cookie=?1")?;
        let mut q_chunk = tx.prepare_cached(&format!(
            "SELECT {} FROM chunks WHERE ino=?1 AND idx=?2",
            super::CHUNK_COLS
        ))?;
        let mut q_xattr = tx.prepare_cached("SELECT value FROM xattrs WHERE ino=?1 AND name=?2")?;
        for (tbl, a, b) in keys {
            match (tbl, b) {
                (1, _) => {
                    let row = q_inode
                        .query_row([a], |r| {
                            let (i, k) = row_inode(r)?;
                            Ok((i, k, r.get(11)?, r.get(12)?))
                        })
                        .optional()?;
                    match row {
                        Some((mut inode, kind, target, inline)) => {
                            inode.kind = FileKind::from_i64(kind)?;
                            seg.inodes.push(SnapInode {
                                inode,
                                target,
                                inline,
                            });
                        }
                        None => seg.removed_inodes.push(a as u64),
                    }
                }
                (2, _) => {
                    let row = q_dentry
                        .query_row([a], |r| {
                            Ok((
                                r.get::<_, i64>(0)?,
                                r.get::<_, Vec<u8>>(1)?,
                                r.get::<_, i64>(2)?,
                            ))
                        })
                        .optional()?;
                    match row {
                        Some((parent, name, ino)) => seg.dentries.push(SnapDentry {
                            cookie: a as u64,
                            parent: parent as u64,
                            name,
                            ino: ino as u64,
                        }),
                        None => seg.removed_dentries.push(a as u64),
                    }
                }
                (3, Value::Integer(idx)) => {
                    let row = q_chunk
                        .query_row([a, idx], |r| super::chunk_cols(r, 0))
                        .optional()?;
                    match row {
                        Some(cols) => seg.chunks.push((a as u64, super::chunk_ref_of(cols)?)),
                        None => seg.removed_chunks.push((a as u64, idx as u64)),
                    }
                }
                (4, Value::Blob(name)) => {
                    let row: Option<Vec<u8>> = q_xattr
                        .query_row(params![a, name], |r| r.get(0))
                        .optional()?;
                    match row {
                        Some(value) => seg.xattrs.push(SnapXattr {
                            ino: a as u64,
                            name,
                            value,
                        }),
                        None => seg.removed_xattrs.push(RemovedXattr {
                            ino: a as u64,
                            name,
                        }),
                    }
                }
                _ => return Err(MetaError::Corrupt(format!("change log entry {tbl}"))),
            }
        }
        let next: Vec<u8> = tx
            .row("SELECT value FROM state WHERE key='next_ino'", [], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| MetaError::Corrupt("next_ino missing".into()))?;
        seg.next_ino = u64::from_le_bytes(
            next.try_into()
                .map_err(|_| MetaError::Corrupt("next_ino".into()))?,
        );
        let dead = super::dead_ids(&tx)?;
        seg.version = super::super::record_version(seg.chunks.iter().map(|(_, c)| c));
        drop((q_inode, q_dentry, q_chunk, q_xattr));
        drop(tx);
        Ok((seg, mark, dead))
    }

    /// After a commit reached the store: forget the change-log entries it carried (ids up to
    /// `mark`) and record the new local head, in one transaction.
    pub fn finish_commit(&self, mark: i64, state: &[(&str, Vec<u8>)]) -> Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        tx.exec("DELETE FROM changes WHERE id <= ?1", [mark])?;
        set_state_tx(&tx, state)?;
        tx.commit()?;
        Ok(())
    }

    /// Replace the whole tree with a snapshot's contents plus the segments after it, and
    /// record `state`, in one transaction. Bulk path: no change logging, indexes built after.
    pub fn load_state(
        &self,
        snap: &Snapshot,
        segments: &[Segment],
        state: &[(&str, Vec<u8>)],
    ) -> Result<()> {
        let progress = self.load_progress.lock().clone();
        let rows = (snap.inodes.len() + snap.dentries.len() + snap.chunks.len()) as u64;
        let total = rows + snap.xattrs.len() as u64 + segments.len() as u64;
        let mut report = |done: u64| {
            if let Some(p) = &progress {
                (p.0)(done, total);
            }
        };
        self.write(|tx| {
            tx.execute_batch(DROP_TRIGGERS)?;
            tx.execute_batch(DROP_FOR_BULK)?;
            insert_rows_reporting(
                tx,
                &snap.inodes,
                &snap.dentries,
                &snap.chunks,
                &snap.xattrs,
                &mut report,
            )?;
            tx.exec(
                "INSERT OR REPLACE INTO state(key, value) VALUES ('next_ino', ?1)",
                params![snap.next_ino.to_le_bytes().to_vec()],
            )?;
            for (i, seg) in segments.iter().enumerate() {
                report(rows + snap.xattrs.len() as u64 + i as u64);
                apply_segment_tx(tx, seg)?;
            }
            tx.execute_batch(INDEXES)?;
            tx.execute_batch(TRIGGERS)?;
            set_state_tx(tx, state)?;
            report(total);
            Ok(())
        })
    }

    /// Replace the whole tree with a snapshot's contents.
    pub fn import(&self, snap: &Snapshot) -> Result<()> {
        self.load_state(snap, &[], &[])
    }

    /// Apply segments on top of the current tree and record `state`, in one transaction.
    /// Local changes made before stay logged; the segments' own rows are not logged.
    pub fn apply_segments(&self, segments: &[Segment], state: &[(&str, Vec<u8>)]) -> Result<()> {
        self.write(|tx| {
            let before: i64 =
                tx.row("SELECT COALESCE(MAX(id), 0) FROM changes", [], |r| r.get(0))?;
            for seg in segments {
                apply_segment_tx(tx, seg)?;
            }
            tx.exec("DELETE FROM changes WHERE id > ?1", [before])?;
            set_state_tx(tx, state)?;
            Ok(())
        })
    }

    /// Check that the tree is whole: a root directory, every entry between existing inodes
    /// under a directory, chunks only on regular files. Returns the problems found.
    pub fn check_tree(&self) -> Result<Vec<String>> {
        self.read(|c| {
            let mut out = Vec::new();
            let root: Option<i64> = c
                .row("SELECT kind FROM inodes WHERE ino=1", [], |r| r.get(0))
                .optional()?;
            if root != Some(FileKind::Dir.to_i64()) {
                out.push("no root directory".to_string());
            }
            let n: i64 = c.row(
                "SELECT COUNT(*) FROM dentries d LEFT JOIN inodes p ON p.ino=d.parent
                 LEFT JOIN inodes i ON i.ino=d.ino WHERE p.kind IS NOT 2 OR i.ino IS NULL",
                [],
                |r| r.get(0),
            )?;
            if n > 0 {
                out.push(format!("{n} directory entries are dangling"));
            }
            let n: i64 = c.row(
                "SELECT COUNT(*) FROM chunks c LEFT JOIN inodes i ON i.ino=c.ino WHERE i.kind IS NOT 1",
                [],
                |r| r.get(0),
            )?;
            if n > 0 {
                out.push(format!("{n} chunk references belong to no regular file"));
            }
            Ok(out)
        })
    }

    /// Objects to delete once `due` (Unix seconds) has passed.
    pub fn add_garbage(&self, keys: &[String], due: u64) -> Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                // An object that dies again (a pack whose member was recorded after it
                // first looked dead) gets the later deadline: a reader of the newer head
                // keeps its whole grace period.
                "INSERT INTO garbage(key, due) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET due = MAX(due, excluded.due)",
            )?;
            for k in keys {
                st.execute(params![k, due as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Garbage whose grace period is over at `now` (Unix seconds).
    pub fn due_garbage(&self, now: u64) -> Result<Vec<String>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT key FROM garbage WHERE due <= ?1 LIMIT 10000")?;
            let rows = st.query_map([now as i64], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Every object waiting for its grace period to end, due or not.
    pub fn pending_garbage(&self) -> Result<Vec<String>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT key FROM garbage")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    pub fn forget_garbage(&self, keys: &[String]) -> Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached("DELETE FROM garbage WHERE key=?1")?;
            for k in keys {
                st.execute([k])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{FileKind, SqliteMeta};
    use crate::meta::ROOT_INO;

    fn log_len(m: &SqliteMeta) -> i64 {
        m.conn
            .lock()
            .query_row("SELECT COUNT(*) FROM changes", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_change_after_an_export_survives_that_commit_and_repeats_log_once() {
        let m = SqliteMeta::open_in_memory().unwrap();
        m.init_root(0o755, 0, 0, 1).unwrap();
        let f = m
            .create(ROOT_INO, b"f", FileKind::File, 0o644, 0, 0, 2, None, 0)
            .unwrap();
        let (seg, mark, _) = m.export_changes().unwrap();
        assert!(seg.inodes.iter().any(|i| i.inode.ino == f.ino));

        // Changed while that commit is on its way: its entry is at or below the mark, so it
        // must be logged anew or finish_commit would clear it unexported.
        let mut i = m.get_inode(f.ino).unwrap();
        i.perm = 0o600;
        m.set_attrs(&i).unwrap();
        m.finish_commit(mark, &[]).unwrap();
        let (seg, mark, _) = m.export_changes().unwrap();
        let got: Vec<u32> = seg
            .inodes
            .iter()
            .filter(|i| i.inode.ino == f.ino)
            .map(|i| i.inode.perm)
            .collect();
        assert_eq!(
            got,
            vec![0o600],
            "the change after the export is in the next one"
        );
        m.finish_commit(mark, &[]).unwrap();
        assert_eq!(log_len(&m), 0);

        // Between exports, repeated changes of one key keep one entry.
        for p in [0o640, 0o644, 0o600] {
            i.perm = p;
            m.set_attrs(&i).unwrap();
        }
        assert_eq!(log_len(&m), 1);
        let (seg, _, _) = m.export_changes().unwrap();
        assert_eq!(seg.inodes.len(), 1);
        assert_eq!(seg.inodes[0].inode.perm, 0o600);
    }

    #[test]
    fn a_packed_object_is_dead_only_when_its_last_chunk_goes_and_segments_say_so() {
        use crate::meta::{ChunkRef, PackSlot, RECORD_VERSION_PACKS, RECORD_VERSION_PLAIN};
        let m = SqliteMeta::open_in_memory().unwrap();
        m.init_root(0o755, 0, 0, 1).unwrap();
        let mk = |name: &[u8]| {
            m.create(ROOT_INO, name, FileKind::File, 0o644, 0, 0, 2, None, 0)
                .unwrap()
        };
        let (a, b, c) = (mk(b"a"), mk(b"b"), mk(b"c"));
        let (_, mark, _) = m.export_changes().unwrap();
        m.finish_commit(mark, &[]).unwrap();
        let packed = |off, len| ChunkRef {
            idx: 0,
            id: [9; 16],
            plain_len: len,
            stored_len: 3000,
            digest: [1; 16],
            pack: Some(PackSlot { off, len: 2500 }),
        };
        let solo = ChunkRef {
            id: [5; 16],
            pack: None,
            ..packed(0, 1000)
        };
        let record = |i: &crate::meta::Inode, refs: &[ChunkRef], size| {
            let mut i = m.get_inode(i.ino).unwrap();
            i.size = size;
            m.update_file(&i, refs, u64::MAX, None).unwrap();
        };
        record(&a, &[packed(0, 1000)], 1000);
        record(&b, &[packed(1000, 1500)], 1500);
        record(&c, std::slice::from_ref(&solo), 1000);
        let (seg, mark, _) = m.export_changes().unwrap();
        assert_eq!(seg.version, RECORD_VERSION_PACKS, "it holds packed chunks");
        m.finish_commit(mark, &[]).unwrap();

        // Truncating a file to nothing drops its chunks.
        m.update_file(&m.get_inode(a.ino).unwrap(), &[], 0, None)
            .unwrap();
        m.update_file(&m.get_inode(c.ino).unwrap(), &[], 0, None)
            .unwrap();
        assert_eq!(
            m.dead_chunks().unwrap(),
            vec![[5; 16]],
            "b still uses the pack"
        );
        assert_eq!(m.packs_in_use(&[[9; 16], [5; 16]]).unwrap(), vec![[9; 16]]);
        let (seg, mark, dead) = m.export_changes().unwrap();
        assert_eq!(dead, vec![[5; 16]]);
        assert_eq!(
            seg.version, RECORD_VERSION_PLAIN,
            "only removals: no pack in it"
        );
        m.finish_commit(mark, &[]).unwrap();
        m.forget_dead(&dead).unwrap();

        m.update_file(&m.get_inode(b.ino).unwrap(), &[], 0, None)
            .unwrap();
        assert_eq!(
            m.dead_chunks().unwrap(),
            vec![[9; 16]],
            "its last chunk went"
        );
        assert!(m.packs_in_use(&[[9; 16]]).unwrap().is_empty());
    }

    #[test]
    fn the_local_head_key_moves_so_an_older_release_reloads_from_the_store() {
        let m = SqliteMeta::open_in_memory().unwrap();
        let conn = m.conn.lock();
        conn.execute(
            "INSERT OR REPLACE INTO state(key, value) VALUES ('head_seq', x'0700000000000000')",
            [],
        )
        .unwrap();
        super::super::migrate(&conn).unwrap();
        let keys: Vec<String> = conn
            .prepare("SELECT key FROM state WHERE key LIKE 'head_seq%'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(keys, vec![super::super::HEAD_SEQ_KEY.to_string()]);
        // Run again (every open does): nothing left to move, the value stays.
        super::super::migrate(&conn).unwrap();
        let v: Vec<u8> = conn
            .query_row(
                "SELECT value FROM state WHERE key=?1",
                [super::super::HEAD_SEQ_KEY],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(v, 7u64.to_le_bytes());
    }
}
