//! The SQLite metadata engine: the local, authoritative copy of the tree between commits.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::snapshot::{SnapDentry, SnapInode, SnapXattr, Snapshot};
use super::{ChunkRef, DirEntry, FileKind, Ino, Inode, MetaError, Result, ROOT_INO};

mod journal;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS inodes(
  ino INTEGER PRIMARY KEY, kind INTEGER NOT NULL, perm INTEGER NOT NULL,
  uid INTEGER NOT NULL, gid INTEGER NOT NULL, size INTEGER NOT NULL,
  atime INTEGER NOT NULL, mtime INTEGER NOT NULL, ctime INTEGER NOT NULL,
  nlink INTEGER NOT NULL, target BLOB, inline BLOB, rdev INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS dentries(
  cookie INTEGER PRIMARY KEY AUTOINCREMENT, parent INTEGER NOT NULL, name BLOB NOT NULL,
  ino INTEGER NOT NULL, UNIQUE(parent, name));
CREATE INDEX IF NOT EXISTS dentries_ino ON dentries(ino);
CREATE INDEX IF NOT EXISTS dentries_parent_cookie ON dentries(parent, cookie);
CREATE TABLE IF NOT EXISTS chunks(
  ino INTEGER NOT NULL, idx INTEGER NOT NULL, id BLOB NOT NULL, plain_len INTEGER NOT NULL,
  stored_len INTEGER NOT NULL, digest BLOB NOT NULL, pack_off INTEGER, pack_len INTEGER,
  PRIMARY KEY(ino, idx));
CREATE TABLE IF NOT EXISTS xattrs(
  ino INTEGER NOT NULL, name BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY(ino, name));
CREATE TABLE IF NOT EXISTS dead_chunks(id BLOB PRIMARY KEY);
CREATE TABLE IF NOT EXISTS state(key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS changes(
  id INTEGER PRIMARY KEY AUTOINCREMENT, tbl INTEGER NOT NULL, a INTEGER NOT NULL, b NOT NULL);
CREATE INDEX IF NOT EXISTS changes_key ON changes(tbl, a, b);
CREATE TABLE IF NOT EXISTS garbage(key TEXT PRIMARY KEY, due INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS staged(name TEXT PRIMARY KEY, ino INTEGER NOT NULL, idx INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS log_mark(one INTEGER PRIMARY KEY CHECK (one = 1), m INTEGER NOT NULL);
";

/// SQLite-backed metadata. All access goes through one connection behind a mutex;
/// each public method is one transaction.
pub struct SqliteMeta {
    conn: Mutex<Connection>,
    /// Bumped on every change, so the committer knows whether a snapshot is due.
    generation: AtomicU64,
    /// Told how a bulk load (`load_state`) advances.
    pub(crate) load_progress: Mutex<Option<super::LoadProgress>>,
}

impl std::fmt::Debug for SqliteMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteMeta")
    }
}

/// Statements are prepared once per connection and reused: parsing them again on every call
/// was a visible share of the CPU of a small-file workload.
pub(super) trait Cached {
    fn exec<P: rusqlite::Params>(&self, sql: &str, p: P) -> rusqlite::Result<usize>;
    fn row<T, P, F>(&self, sql: &str, p: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec<P: rusqlite::Params>(&self, sql: &str, p: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(p)
    }

    fn row<T, P, F>(&self, sql: &str, p: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(p, f)
    }
}

fn row_inode(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Inode, i64)> {
    Ok((
        Inode {
            ino: r.get::<_, i64>(0)? as u64,
            kind: FileKind::File,
            perm: r.get::<_, i64>(2)? as u32,
            uid: r.get::<_, i64>(3)? as u32,
            gid: r.get::<_, i64>(4)? as u32,
            size: r.get::<_, i64>(5)? as u64,
            atime: r.get(6)?,
            mtime: r.get(7)?,
            ctime: r.get(8)?,
            nlink: r.get::<_, i64>(9)? as u32,
            rdev: r.get::<_, i64>(10)? as u32,
        },
        r.get(1)?,
    ))
}

const INODE_COLS: &str = "ino, kind, perm, uid, gid, size, atime, mtime, ctime, nlink, rdev";

fn get_inode_tx(tx: &Connection, ino: Ino) -> Result<Inode> {
    let row = tx
        .row(
            &format!("SELECT {INODE_COLS} FROM inodes WHERE ino = ?1"),
            [ino as i64],
            row_inode,
        )
        .optional()?;
    let (mut inode, kind) = row.ok_or(MetaError::NotFound)?;
    inode.kind = FileKind::from_i64(kind)?;
    Ok(inode)
}

fn put_inode_tx(tx: &Connection, i: &Inode) -> Result<()> {
    tx.exec(
        "UPDATE inodes SET perm=?2, uid=?3, gid=?4, size=?5, atime=?6, mtime=?7, ctime=?8, nlink=?9 WHERE ino=?1",
        params![
            i.ino as i64,
            i.perm as i64,
            i.uid as i64,
            i.gid as i64,
            i.size as i64,
            i.atime,
            i.mtime,
            i.ctime,
            i.nlink as i64
        ],
    )?;
    Ok(())
}

fn lookup_tx(tx: &Connection, parent: Ino, name: &[u8]) -> Result<Option<Ino>> {
    Ok(tx
        .row(
            "SELECT ino FROM dentries WHERE parent=?1 AND name=?2",
            params![parent as i64, name],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map(|v| v as u64))
}

fn remove_entry_tx(tx: &Connection, parent: Ino, name: &[u8]) -> Result<()> {
    tx.exec(
        "DELETE FROM dentries WHERE parent=?1 AND name=?2",
        params![parent as i64, name],
    )?;
    Ok(())
}

fn touch_dir_tx(tx: &Connection, dir: Ino, now: i64, nlink_delta: i64) -> Result<()> {
    tx.exec(
        "UPDATE inodes SET mtime=?2, ctime=?2, nlink=nlink+?3 WHERE ino=?1",
        params![dir as i64, now, nlink_delta],
    )?;
    Ok(())
}

fn mark_chunks_dead_tx(tx: &Connection, ino: Ino, from_idx: u64) -> Result<()> {
    tx.exec(
        "INSERT OR IGNORE INTO dead_chunks(id) SELECT id FROM chunks WHERE ino=?1 AND idx>=?2",
        params![ino as i64, from_idx as i64],
    )?;
    tx.exec(
        "DELETE FROM chunks WHERE ino=?1 AND idx>=?2",
        params![ino as i64, from_idx as i64],
    )?;
    Ok(())
}

fn is_empty_dir_tx(tx: &Connection, ino: Ino) -> Result<bool> {
    let n: i64 = tx.row(
        "SELECT COUNT(*) FROM (SELECT 1 FROM dentries WHERE parent=?1 LIMIT 1)",
        [ino as i64],
        |r| r.get(0),
    )?;
    Ok(n == 0)
}

/// Parent of a directory (directories have exactly one entry).
fn parent_of_dir_tx(tx: &Connection, ino: Ino) -> Result<Option<Ino>> {
    Ok(tx
        .row(
            "SELECT parent FROM dentries WHERE ino=?1",
            [ino as i64],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map(|v| v as u64))
}

/// The columns of a chunk reference, in the order `chunk_cols` reads them.
pub(super) const CHUNK_COLS: &str = "idx, id, plain_len, stored_len, digest, pack_off, pack_len";

/// A chunk reference's columns (see `CHUNK_COLS`), from column `at` on.
type ChunkCols = (i64, Vec<u8>, i64, i64, Vec<u8>, Option<i64>, Option<i64>);

fn chunk_cols(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<ChunkCols> {
    Ok((
        r.get(at)?,
        r.get(at + 1)?,
        r.get(at + 2)?,
        r.get(at + 3)?,
        r.get(at + 4)?,
        r.get(at + 5)?,
        r.get(at + 6)?,
    ))
}

pub(super) fn chunk_ref_of(
    (idx, id, plain_len, stored_len, digest, off, len): ChunkCols,
) -> Result<ChunkRef> {
    let pack = match (off, len) {
        (Some(off), Some(len)) => Some(super::PackSlot {
            off: off as u64,
            len: len as u64,
        }),
        (None, None) => None,
        _ => return Err(MetaError::Corrupt("chunk row half packed".into())),
    };
    Ok(ChunkRef {
        idx: idx as u64,
        id: id
            .try_into()
            .map_err(|_| MetaError::Corrupt("chunk id length".into()))?,
        plain_len: plain_len as u64,
        stored_len: stored_len as u64,
        digest: digest
            .try_into()
            .map_err(|_| MetaError::Corrupt("chunk digest length".into()))?,
        pack,
    })
}

/// The pack columns of a chunk row (NULL for a chunk with an object of its own).
pub(super) fn pack_cols(c: &ChunkRef) -> (Option<i64>, Option<i64>) {
    match c.pack {
        Some(p) => (Some(p.off as i64), Some(p.len as i64)),
        None => (None, None),
    }
}

/// Insert-or-replace one chunk row of `ino`.
pub(super) const INS_CHUNK: &str =
    "INSERT OR REPLACE INTO chunks(ino, idx, id, plain_len, stored_len, digest, pack_off, pack_len)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

pub(super) fn insert_chunk(
    st: &mut rusqlite::CachedStatement<'_>,
    ino: Ino,
    c: &ChunkRef,
) -> Result<()> {
    let (off, len) = pack_cols(c);
    st.execute(params![
        ino as i64,
        c.idx as i64,
        &c.id[..],
        c.plain_len as i64,
        c.stored_len as i64,
        &c.digest[..],
        off,
        len
    ])?;
    Ok(())
}

/// A packed object stays alive while any row references it: ids of `dead_chunks` that a
/// packed row still names are not dead yet (the partial index `chunks_packed` answers it).
const DEAD_IDS: &str = "SELECT id FROM dead_chunks d
     WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.id = d.id AND c.pack_len IS NOT NULL)";

fn dead_ids(c: &Connection) -> Result<Vec<[u8; 16]>> {
    let mut st = c.prepare_cached(DEAD_IDS)?;
    let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
    let mut out = Vec::new();
    for r in rows {
        if let Ok(id) = <[u8; 16]>::try_from(r?) {
            out.push(id);
        }
    }
    Ok(out)
}

/// The state key of the local head's commit number (see `remote::ST_SEQ`).
pub(crate) const HEAD_SEQ_KEY: &str = "head_seq_v2";

/// Columns and index added with packs, for a database made by an older version; and the
/// local head's key renamed, so an older release run on this database afterwards reloads
/// it from the store (where records holding packs are version 2, which it refuses) rather
/// than read packed rows as whole objects. A `head_seq` present wins: it was written by an
/// older release after the last run of this one.
fn migrate(conn: &Connection) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO state(key, value) SELECT ?1, value FROM state WHERE key='head_seq'",
        [HEAD_SEQ_KEY],
    )?;
    conn.execute("DELETE FROM state WHERE key='head_seq'", [])?;
    let has: i64 = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('chunks') WHERE name='pack_off'",
        [],
        |r| r.get(0),
    )?;
    if has == 0 {
        conn.execute_batch(
            "ALTER TABLE chunks ADD COLUMN pack_off INTEGER; ALTER TABLE chunks ADD COLUMN pack_len INTEGER;",
        )?;
    }
    conn.execute_batch(CHUNKS_PACKED_INDEX)?;
    Ok(())
}

/// Which rows share a packed object; partial, so a chunk with an object of its own costs
/// no index entry.
pub(super) const CHUNKS_PACKED_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS chunks_packed ON chunks(id) WHERE pack_len IS NOT NULL;";

impl SqliteMeta {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        Self::setup(conn)
    }

    pub fn open_in_memory() -> Result<Self> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(conn: Connection) -> Result<Self> {
        // Only this process opens the database (the cache dir is flock'ed): exclusive
        // locking saves two fcntl locks per transaction and keeps the WAL index in memory
        // instead of a shared -shm file (set before the first WAL access for that).
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        // 2 KiB pages for a new database (an existing one keeps its size): a create or
        // setattr changes a few rows in several B-trees, and each changed page is one WAL
        // frame written, checksummed and later checkpointed; halving the frames made an
        // untar 15-25 % faster (see DESIGN "Metadata").
        conn.pragma_update(None, "page_size", 2048)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // WAL + NORMAL: every commit survives a daemon crash; a power loss can only lose the
        // newest un-fsynced changes, never consistency (fsync() durability is the bucket's).
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // The default 2 MiB page cache makes loading a large snapshot (index building)
        // several times slower; 64 MiB is an upper bound, used only as the tree grows.
        conn.pragma_update(None, "cache_size", -65536)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.set_prepared_statement_cache_capacity(128);
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        conn.execute_batch(journal::DROP_TRIGGERS)?;
        conn.execute_batch(journal::TRIGGERS)?;
        // As if an export happened now (always safe: it only makes changes log anew), for a
        // new database and one from a version without the mark.
        conn.execute_batch(
            "INSERT OR IGNORE INTO log_mark(one, m) SELECT 1, COALESCE(MAX(id), 0) FROM changes",
        )?;
        Ok(SqliteMeta {
            conn: Mutex::new(conn),
            generation: AtomicU64::new(0),
            load_progress: Mutex::new(None),
        })
    }

    /// Report the progress of the next bulk loads to `p` (None: stop reporting).
    pub fn set_load_progress(&self, p: Option<super::LoadProgress>) {
        *self.load_progress.lock() = p;
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        self.changed();
        Ok(out)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.conn.lock();
        f(&conn)
    }

    pub fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.read(|c| {
            Ok(
                c.row("SELECT value FROM state WHERE key=?1", [key], |r| r.get(0))
                    .optional()?,
            )
        })
    }

    /// State changes (commit bookkeeping) do not count as metadata changes.
    pub fn set_state(&self, key: &str, value: &[u8]) -> Result<()> {
        let conn = self.conn.lock();
        conn.exec(
            "INSERT OR REPLACE INTO state(key, value) VALUES (?1, ?2)",
            params![key, value],
        )?;
        Ok(())
    }

    pub fn has_root(&self) -> Result<bool> {
        self.read(|c| {
            Ok(c.row(
                "SELECT 1 FROM inodes WHERE ino=?1",
                [ROOT_INO as i64],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
        })
    }

    /// Create the root directory of a new volume.
    pub fn init_root(&self, perm: u32, uid: u32, gid: u32, now: i64) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO inodes(ino, kind, perm, uid, gid, size, atime, mtime, ctime, nlink)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?6, ?6, 2)",
                params![
                    ROOT_INO as i64,
                    FileKind::Dir.to_i64(),
                    perm as i64,
                    uid as i64,
                    gid as i64,
                    now
                ],
            )?;
            tx.exec(
                "INSERT OR REPLACE INTO state(key, value) VALUES ('next_ino', ?1)",
                params![(ROOT_INO + 1).to_le_bytes().to_vec()],
            )?;
            Ok(())
        })
    }

    pub fn get_inode(&self, ino: Ino) -> Result<Inode> {
        self.read(|c| get_inode_tx(c, ino))
    }

    /// Store what setattr changes: mode, owner and times. Size and link count are left
    /// alone: they belong to write-back and to namespace operations, which may have moved
    /// on since the caller read the inode.
    pub fn set_attrs(&self, i: &Inode) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "UPDATE inodes SET perm=?2, uid=?3, gid=?4, atime=?5, mtime=?6, ctime=?7 WHERE ino=?1",
                params![
                    i.ino as i64,
                    i.perm as i64,
                    i.uid as i64,
                    i.gid as i64,
                    i.atime,
                    i.mtime,
                    i.ctime
                ],
            )?;
            Ok(())
        })
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Inode> {
        self.read(|c| {
            let ino = lookup_tx(c, parent, name)?.ok_or(MetaError::NotFound)?;
            get_inode_tx(c, ino)
        })
    }

    pub fn symlink_target(&self, ino: Ino) -> Result<Vec<u8>> {
        self.read(|c| {
            let t: Option<Vec<u8>> = c
                .row(
                    "SELECT target FROM inodes WHERE ino=?1",
                    [ino as i64],
                    |r| r.get(0),
                )
                .optional()?
                .ok_or(MetaError::NotFound)?;
            t.ok_or(MetaError::Invalid("not a symlink"))
        })
    }

    /// Create a new inode and its entry in `parent`.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        perm: u32,
        uid: u32,
        gid: u32,
        now: i64,
        target: Option<&[u8]>,
        rdev: u32,
    ) -> Result<Inode> {
        self.write(|tx| {
            let p = get_inode_tx(tx, parent)?;
            if p.kind != FileKind::Dir {
                return Err(MetaError::NotDir);
            }
            if lookup_tx(tx, parent, name)?.is_some() {
                return Err(MetaError::Exists);
            }
            let next: Vec<u8> = tx.row(
                "SELECT value FROM state WHERE key='next_ino'",
                [],
                |r| r.get(0),
            )?;
            let ino = u64::from_le_bytes(
                next.try_into()
                    .map_err(|_| MetaError::Corrupt("next_ino".into()))?,
            );
            tx.exec(
                "UPDATE state SET value=?1 WHERE key='next_ino'",
                params![(ino + 1).to_le_bytes().to_vec()],
            )?;
            let (nlink, size) = match kind {
                FileKind::Dir => (2, 0),
                FileKind::Symlink => (1, target.map_or(0, |t| t.len() as u64)),
                _ => (1, 0),
            };
            tx.exec(
                "INSERT INTO inodes(ino, kind, perm, uid, gid, size, atime, mtime, ctime, nlink, target, rdev)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?7, ?8, ?9, ?10)",
                params![
                    ino as i64,
                    kind.to_i64(),
                    perm as i64,
                    uid as i64,
                    gid as i64,
                    size as i64,
                    now,
                    nlink,
                    target,
                    rdev as i64
                ],
            )?;
            tx.exec(
                "INSERT INTO dentries(parent, name, ino) VALUES (?1, ?2, ?3)",
                params![parent as i64, name, ino as i64],
            )?;
            touch_dir_tx(tx, parent, now, if kind == FileKind::Dir { 1 } else { 0 })?;
            get_inode_tx(tx, ino)
        })
    }

    /// Add a hard link to a non-directory.
    pub fn link(&self, ino: Ino, parent: Ino, name: &[u8], now: i64) -> Result<Inode> {
        self.write(|tx| {
            let mut i = get_inode_tx(tx, ino)?;
            if i.kind == FileKind::Dir {
                return Err(MetaError::Invalid("hard link to a directory"));
            }
            if get_inode_tx(tx, parent)?.kind != FileKind::Dir {
                return Err(MetaError::NotDir);
            }
            if lookup_tx(tx, parent, name)?.is_some() {
                return Err(MetaError::Exists);
            }
            tx.exec(
                "INSERT INTO dentries(parent, name, ino) VALUES (?1, ?2, ?3)",
                params![parent as i64, name, ino as i64],
            )?;
            i.nlink += 1;
            i.ctime = now;
            put_inode_tx(tx, &i)?;
            touch_dir_tx(tx, parent, now, 0)?;
            Ok(i)
        })
    }

    /// Remove a non-directory entry. Returns the inode with its new link count; the caller
    /// deletes it (with `delete_inode`) once it has no links and no open handles.
    pub fn unlink(&self, parent: Ino, name: &[u8], now: i64) -> Result<Inode> {
        self.write(|tx| {
            let ino = lookup_tx(tx, parent, name)?.ok_or(MetaError::NotFound)?;
            let mut i = get_inode_tx(tx, ino)?;
            if i.kind == FileKind::Dir {
                return Err(MetaError::IsDir);
            }
            remove_entry_tx(tx, parent, name)?;
            i.nlink = i.nlink.saturating_sub(1);
            i.ctime = now;
            put_inode_tx(tx, &i)?;
            touch_dir_tx(tx, parent, now, 0)?;
            Ok(i)
        })
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8], now: i64) -> Result<()> {
        self.write(|tx| {
            let ino = lookup_tx(tx, parent, name)?.ok_or(MetaError::NotFound)?;
            let i = get_inode_tx(tx, ino)?;
            if i.kind != FileKind::Dir {
                return Err(MetaError::NotDir);
            }
            if !is_empty_dir_tx(tx, ino)? {
                return Err(MetaError::NotEmpty);
            }
            remove_entry_tx(tx, parent, name)?;
            delete_inode_tx(tx, ino)?;
            touch_dir_tx(tx, parent, now, -1)?;
            Ok(())
        })
    }

    /// Rename with POSIX replace semantics. `noreplace` fails if the target exists;
    /// `exchange` swaps the two entries. Returns a replaced non-directory inode (with its
    /// new link count) so the caller can delete it when unused.
    #[allow(clippy::too_many_arguments)]
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        noreplace: bool,
        exchange: bool,
        now: i64,
    ) -> Result<Option<Inode>> {
        self.write(|tx| {
            let src = lookup_tx(tx, parent, name)?.ok_or(MetaError::NotFound)?;
            let src_i = get_inode_tx(tx, src)?;
            if get_inode_tx(tx, newparent)?.kind != FileKind::Dir {
                return Err(MetaError::NotDir);
            }
            let dst = lookup_tx(tx, newparent, newname)?;
            if src_i.kind == FileKind::Dir && parent != newparent {
                // Refuse to move a directory into its own subtree.
                let mut cur = Some(newparent);
                while let Some(c) = cur {
                    if c == src {
                        return Err(MetaError::Invalid("directory moved into itself"));
                    }
                    if c == ROOT_INO {
                        break;
                    }
                    cur = parent_of_dir_tx(tx, c)?;
                }
            }
            if dst == Some(src) {
                return Ok(None);
            }
            if exchange {
                let dst = dst.ok_or(MetaError::NotFound)?;
                let dst_i = get_inode_tx(tx, dst)?;
                tx.exec(
                    "UPDATE dentries SET ino=?3 WHERE parent=?1 AND name=?2",
                    params![parent as i64, name, dst as i64],
                )?;
                tx.exec(
                    "UPDATE dentries SET ino=?3 WHERE parent=?1 AND name=?2",
                    params![newparent as i64, newname, src as i64],
                )?;
                let (a, b) = (src_i.kind == FileKind::Dir, dst_i.kind == FileKind::Dir);
                if parent != newparent && a != b {
                    let d = if a { 1 } else { -1 };
                    touch_dir_tx(tx, newparent, now, d)?;
                    touch_dir_tx(tx, parent, now, -d)?;
                } else {
                    touch_dir_tx(tx, newparent, now, 0)?;
                    touch_dir_tx(tx, parent, now, 0)?;
                }
                return Ok(None);
            }
            let mut replaced = None;
            if let Some(dst) = dst {
                if noreplace {
                    return Err(MetaError::Exists);
                }
                let mut dst_i = get_inode_tx(tx, dst)?;
                match (src_i.kind == FileKind::Dir, dst_i.kind == FileKind::Dir) {
                    (true, false) => return Err(MetaError::NotDir),
                    (false, true) => return Err(MetaError::IsDir),
                    (true, true) => {
                        if !is_empty_dir_tx(tx, dst)? {
                            return Err(MetaError::NotEmpty);
                        }
                        remove_entry_tx(tx, newparent, newname)?;
                        delete_inode_tx(tx, dst)?;
                        touch_dir_tx(tx, newparent, now, -1)?;
                    }
                    (false, false) => {
                        remove_entry_tx(tx, newparent, newname)?;
                        dst_i.nlink = dst_i.nlink.saturating_sub(1);
                        dst_i.ctime = now;
                        put_inode_tx(tx, &dst_i)?;
                        replaced = Some(dst_i);
                    }
                }
            }
            tx.exec(
                "UPDATE dentries SET parent=?3, name=?4 WHERE parent=?1 AND name=?2",
                params![parent as i64, name, newparent as i64, newname],
            )?;
            let d = if src_i.kind == FileKind::Dir { 1 } else { 0 };
            if parent != newparent {
                touch_dir_tx(tx, parent, now, -d)?;
                touch_dir_tx(tx, newparent, now, d)?;
            } else {
                touch_dir_tx(tx, parent, now, 0)?;
            }
            tx.exec(
                "UPDATE inodes SET ctime=?2 WHERE ino=?1",
                params![src as i64, now],
            )?;
            Ok(replaced)
        })
    }

    /// Entries of `dir` with cookie greater than `after`, in cookie order.
    /// Like `readdir`, with each entry's inode (one query for a whole READDIRPLUS batch).
    pub fn readdir_plus(
        &self,
        dir: Ino,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(DirEntry, Inode)>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT i.ino, i.kind, i.perm, i.uid, i.gid, i.size, i.atime, i.mtime, i.ctime,
                        i.nlink, i.rdev, d.cookie, d.name
                 FROM dentries d JOIN inodes i ON i.ino=d.ino
                 WHERE d.parent=?1 AND d.cookie>?2 ORDER BY d.cookie LIMIT ?3",
            )?;
            let rows = st.query_map(params![dir as i64, after as i64, limit as i64], |r| {
                let (inode, kind) = row_inode(r)?;
                Ok((inode, kind, r.get::<_, i64>(11)?, r.get::<_, Vec<u8>>(12)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (mut inode, kind, cookie, name) = row?;
                inode.kind = FileKind::from_i64(kind)?;
                let e = DirEntry {
                    cookie: cookie as u64,
                    name,
                    ino: inode.ino,
                    kind: inode.kind,
                };
                out.push((e, inode));
            }
            Ok(out)
        })
    }

    pub fn readdir(&self, dir: Ino, after: u64, limit: usize) -> Result<Vec<DirEntry>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT d.cookie, d.name, d.ino, i.kind FROM dentries d JOIN inodes i ON i.ino=d.ino
                 WHERE d.parent=?1 AND d.cookie>?2 ORDER BY d.cookie LIMIT ?3",
            )?;
            let rows = st.query_map(params![dir as i64, after as i64, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (cookie, name, ino, kind) = row?;
                out.push(DirEntry {
                    cookie: cookie as u64,
                    name,
                    ino: ino as u64,
                    kind: FileKind::from_i64(kind)?,
                });
            }
            Ok(out)
        })
    }

    /// Parent directory of a directory inode (root is its own parent).
    pub fn parent_of(&self, dir: Ino) -> Result<Ino> {
        if dir == ROOT_INO {
            return Ok(ROOT_INO);
        }
        self.read(|c| parent_of_dir_tx(c, dir)?.ok_or(MetaError::NotFound))
    }

    pub fn chunks(&self, ino: Ino) -> Result<Vec<ChunkRef>> {
        self.read(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {CHUNK_COLS} FROM chunks WHERE ino=?1 ORDER BY idx"
            ))?;
            let rows = st.query_map([ino as i64], |r| chunk_cols(r, 0))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(chunk_ref_of(row?)?);
            }
            Ok(out)
        })
    }

    /// Where `ino` is listed (one of its names, for a hard link): its parent and cookie.
    pub fn position_of(&self, ino: Ino) -> Result<Option<(Ino, u64)>> {
        self.read(|c| {
            Ok(c.row(
                "SELECT parent, cookie FROM dentries WHERE ino=?1 LIMIT 1",
                [ino as i64],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .optional()?)
        })
    }

    /// The first chunk of each of the next `n` entries of `parent` after `cookie` that have
    /// one, with the entry's cookie.
    pub fn next_first_chunks(
        &self,
        parent: Ino,
        cookie: u64,
        n: usize,
    ) -> Result<Vec<(u64, ChunkRef)>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT d.cookie, c.idx, c.id, c.plain_len, c.stored_len, c.digest, c.pack_off, c.pack_len
                 FROM dentries d JOIN chunks c ON c.ino=d.ino AND c.idx=0
                 WHERE d.parent=?1 AND d.cookie>?2 ORDER BY d.cookie LIMIT ?3",
            )?;
            let rows = st.query_map(params![parent as i64, cookie as i64, n as i64], |r| {
                Ok((r.get::<_, i64>(0)?, chunk_cols(r, 1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (cookie, cols) = row?;
                out.push((cookie as u64, chunk_ref_of(cols)?));
            }
            Ok(out)
        })
    }

    pub fn inline_data(&self, ino: Ino) -> Result<Option<Vec<u8>>> {
        self.read(|c| {
            Ok(c.row(
                "SELECT inline FROM inodes WHERE ino=?1",
                [ino as i64],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
        })
    }

    /// Atomically record a file's new contents layout: chunk refs replaced from `chunks`,
    /// chunks at or past `keep_below` dropped, inline data set, and size/mtime/ctime updated
    /// (only those: perm, owner and nlink belong to other operations).
    /// Replaced chunk ids go to the dead list, to be deleted after the next commit.
    pub fn update_file(
        &self,
        inode: &Inode,
        chunks: &[ChunkRef],
        keep_below: u64,
        inline: Option<&[u8]>,
    ) -> Result<()> {
        self.write(|tx| {
            mark_chunks_dead_tx(tx, inode.ino, keep_below)?;
            for c in chunks {
                tx.exec(
                    "INSERT OR IGNORE INTO dead_chunks(id) SELECT id FROM chunks WHERE ino=?1 AND idx=?2",
                    params![inode.ino as i64, c.idx as i64],
                )?;
                insert_chunk(&mut tx.prepare_cached(INS_CHUNK)?, inode.ino, c)?;
            }
            // Only the columns a file's data owns: the inode was read before a background
            // upload finished, and a chmod, chown or link since must not be undone.
            tx.exec(
                "UPDATE inodes SET inline=?2, size=?3, mtime=?4, ctime=MAX(ctime, ?5) WHERE ino=?1",
                params![
                    inode.ino as i64,
                    inline,
                    inode.size as i64,
                    inode.mtime,
                    inode.ctime
                ],
            )?;
            Ok(())
        })
    }

    /// Write-back staging: which local staging file holds pending writes to which chunk.
    /// Bookkeeping only (not metadata the bucket sees), so it does not bump the generation.
    pub fn add_staged(&self, name: &str, ino: Ino, idx: u64) -> Result<()> {
        let conn = self.conn.lock();
        conn.exec(
            "INSERT OR REPLACE INTO staged(name, ino, idx) VALUES (?1, ?2, ?3)",
            params![name, ino as i64, idx as i64],
        )?;
        Ok(())
    }

    pub fn remove_staged(&self, name: &str) -> Result<()> {
        let conn = self.conn.lock();
        conn.exec("DELETE FROM staged WHERE name=?1", params![name])?;
        Ok(())
    }

    /// Every staging file recorded, as (name, ino, chunk index), oldest first.
    pub fn list_staged(&self) -> Result<Vec<(String, Ino, u64)>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT name, ino, idx FROM staged ORDER BY rowid")?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for r in rows {
                let (n, i, x) = r?;
                out.push((n, i as u64, x as u64));
            }
            Ok(out)
        })
    }

    /// Remove an inode with no links left, and everything it owns.
    pub fn delete_inode(&self, ino: Ino) -> Result<()> {
        self.write(|tx| delete_inode_tx(tx, ino))
    }

    /// Inodes with no links (left over when the daemon stopped with unlinked files open).
    pub fn orphans(&self) -> Result<Vec<Ino>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT ino FROM inodes WHERE nlink=0")?;
            let rows = st.query_map([], |r| r.get::<_, i64>(0))?;
            let mut out = Vec::new();
            for r in rows {
                out.push(r? as u64);
            }
            Ok(out)
        })
    }

    /// Chunk objects the local rows no longer reference (deleted after the next commit).
    pub fn dead_chunks(&self) -> Result<Vec<[u8; 16]>> {
        self.read(dead_ids)
    }

    /// Packs whose files reference at most half of their bytes (the rest belongs to
    /// deleted or rewritten files), each with every chunk still in it.
    pub fn sparse_packs(&self) -> Result<Vec<Vec<(Ino, ChunkRef)>>> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT ino, {CHUNK_COLS} FROM chunks WHERE pack_len IS NOT NULL AND id IN
                   (SELECT id FROM chunks WHERE pack_len IS NOT NULL
                    GROUP BY id HAVING SUM(plain_len) * 2 <= MAX(pack_len))
                 ORDER BY id"
            ))?;
            let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, chunk_cols(r, 1)?)))?;
            let mut out: Vec<Vec<(Ino, ChunkRef)>> = Vec::new();
            for row in rows {
                let (ino, cols) = row?;
                let c = chunk_ref_of(cols)?;
                match out.last_mut() {
                    Some(g) if g[0].1.id == c.id => g.push((ino as u64, c)),
                    _ => out.push(vec![(ino as u64, c)]),
                }
            }
            Ok(out)
        })
    }

    /// Point chunk `new.idx` of `ino` at `new` if it still is `old` (a repacked copy of the
    /// same bytes); the old object is then dead unless other rows still use it. Returns
    /// whether it was replaced.
    pub fn replace_chunk(&self, ino: Ino, old: &ChunkRef, new: &ChunkRef) -> Result<bool> {
        self.write(|tx| {
            let cur: Option<Vec<u8>> = tx
                .row(
                    "SELECT id FROM chunks WHERE ino=?1 AND idx=?2",
                    params![ino as i64, old.idx as i64],
                    |r| r.get(0),
                )
                .optional()?;
            if cur.as_deref() != Some(&old.id[..]) || new.idx != old.idx {
                return Ok(false);
            }
            tx.exec(
                "INSERT OR IGNORE INTO dead_chunks(id) VALUES (?1)",
                [&old.id[..]],
            )?;
            insert_chunk(&mut tx.prepare_cached(INS_CHUNK)?, ino, new)?;
            Ok(true)
        })
    }

    /// Of these object ids, the ones a packed row still references (kept alive).
    pub fn packs_in_use(&self, ids: &[[u8; 16]]) -> Result<Vec<[u8; 16]>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT 1 FROM chunks WHERE id=?1 AND pack_len IS NOT NULL LIMIT 1",
            )?;
            let mut out = Vec::new();
            for id in ids {
                if st.exists([&id[..]])? {
                    out.push(*id);
                }
            }
            Ok(out)
        })
    }

    pub fn forget_dead(&self, ids: &[[u8; 16]]) -> Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        for id in ids {
            tx.exec("DELETE FROM dead_chunks WHERE id=?1", [id.to_vec()])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// (number of inodes, sum of file sizes) for statfs.
    pub fn usage(&self) -> Result<(u64, u64)> {
        self.read(|c| {
            Ok(c.row(
                "SELECT COUNT(*), COALESCE(SUM(CASE WHEN kind=1 THEN size ELSE 0 END), 0) FROM inodes",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )?)
        })
    }

    pub fn get_xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
        self.read(|c| {
            Ok(c.row(
                "SELECT value FROM xattrs WHERE ino=?1 AND name=?2",
                params![ino as i64, name],
                |r| r.get(0),
            )
            .optional()?)
        })
    }

    /// `create`: fail if present; `replace`: fail if absent.
    pub fn set_xattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        create: bool,
        replace: bool,
        now: i64,
    ) -> Result<()> {
        self.write(|tx| {
            let exists = tx
                .row(
                    "SELECT 1 FROM xattrs WHERE ino=?1 AND name=?2",
                    params![ino as i64, name],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if create && exists {
                return Err(MetaError::Exists);
            }
            if replace && !exists {
                return Err(MetaError::NotFound);
            }
            tx.exec(
                "INSERT OR REPLACE INTO xattrs(ino, name, value) VALUES (?1, ?2, ?3)",
                params![ino as i64, name, value],
            )?;
            tx.exec(
                "UPDATE inodes SET ctime=?2 WHERE ino=?1",
                params![ino as i64, now],
            )?;
            Ok(())
        })
    }

    pub fn list_xattrs(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT name FROM xattrs WHERE ino=?1 ORDER BY name")?;
            let rows = st.query_map([ino as i64], |r| r.get::<_, Vec<u8>>(0))?;
            let mut out = Vec::new();
            for r in rows {
                out.push(r?);
            }
            Ok(out)
        })
    }

    pub fn remove_xattr(&self, ino: Ino, name: &[u8], now: i64) -> Result<()> {
        self.write(|tx| {
            let n = tx.exec(
                "DELETE FROM xattrs WHERE ino=?1 AND name=?2",
                params![ino as i64, name],
            )?;
            if n == 0 {
                return Err(MetaError::NotFound);
            }
            tx.exec(
                "UPDATE inodes SET ctime=?2 WHERE ino=?1",
                params![ino as i64, now],
            )?;
            Ok(())
        })
    }

    /// A consistent logical copy of the whole tree, plus the dead chunk ids at that moment.
    pub fn export(&self) -> Result<(Snapshot, Vec<[u8; 16]>)> {
        self.export_marked().map(|(s, d, _)| (s, d))
    }

    /// [`export`](Self::export), plus the change-log mark it includes (see `finish_commit`).
    pub fn export_marked(&self) -> Result<(Snapshot, Vec<[u8; 16]>, i64)> {
        let conn = self.conn.lock();
        let mark = journal::set_log_mark(&conn)?;
        let tx = conn.unchecked_transaction()?;
        let mut snap = Snapshot {
            version: super::snapshot::SNAPSHOT_VERSION,
            ..Snapshot::default()
        };
        {
            let mut st = tx.prepare(&format!(
                "SELECT {INODE_COLS}, target, inline FROM inodes ORDER BY ino"
            ))?;
            let rows = st.query_map([], |r| {
                let (i, k) = row_inode(r)?;
                Ok((
                    i,
                    k,
                    r.get::<_, Option<Vec<u8>>>(11)?,
                    r.get::<_, Option<Vec<u8>>>(12)?,
                ))
            })?;
            for row in rows {
                let (mut inode, kind, target, inline) = row?;
                inode.kind = FileKind::from_i64(kind)?;
                snap.inodes.push(SnapInode {
                    inode,
                    target,
                    inline,
                });
            }
            let mut st =
                tx.prepare("SELECT cookie, parent, name, ino FROM dentries ORDER BY cookie")?;
            let rows = st.query_map([], |r| {
                Ok(SnapDentry {
                    cookie: r.get::<_, i64>(0)? as u64,
                    parent: r.get::<_, i64>(1)? as u64,
                    name: r.get(2)?,
                    ino: r.get::<_, i64>(3)? as u64,
                })
            })?;
            for r in rows {
                snap.dentries.push(r?);
            }
            let mut st = tx.prepare("SELECT ino, name, value FROM xattrs ORDER BY ino, name")?;
            let rows = st.query_map([], |r| {
                Ok(SnapXattr {
                    ino: r.get::<_, i64>(0)? as u64,
                    name: r.get(1)?,
                    value: r.get(2)?,
                })
            })?;
            for r in rows {
                snap.xattrs.push(r?);
            }
        }
        // Everything below is read under the same lock as the tree above: a chunk
        // replaced concurrently must not be both referenced by this snapshot and in
        // its dead list (it would be deleted while the stored head still needs it).
        {
            let mut st = tx.prepare(&format!(
                "SELECT ino, {CHUNK_COLS} FROM chunks ORDER BY ino, idx"
            ))?;
            let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, chunk_cols(r, 1)?)))?;
            for row in rows {
                let (ino, cols) = row?;
                snap.chunks.push((ino as u64, chunk_ref_of(cols)?));
            }
        }
        let next: Vec<u8> = tx
            .row("SELECT value FROM state WHERE key='next_ino'", [], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| MetaError::Corrupt("next_ino missing".into()))?;
        snap.next_ino = u64::from_le_bytes(
            next.try_into()
                .map_err(|_| MetaError::Corrupt("next_ino".into()))?,
        );
        let dead = dead_ids(&tx)?;
        snap.version = super::record_version(snap.chunks.iter().map(|(_, c)| c));
        drop(tx);
        drop(conn);
        Ok((snap, dead, mark))
    }
}

fn delete_inode_tx(tx: &Connection, ino: Ino) -> Result<()> {
    mark_chunks_dead_tx(tx, ino, 0)?;
    tx.exec("DELETE FROM xattrs WHERE ino=?1", [ino as i64])?;
    tx.exec("DELETE FROM inodes WHERE ino=?1", [ino as i64])?;
    Ok(())
}
