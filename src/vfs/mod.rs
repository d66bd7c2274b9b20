//! The filesystem itself, independent of FUSE: inodes, handles, POSIX rules, and when
//! data and metadata move to the store. Every method is synchronous and thread-safe.

mod error;
mod files;
mod gc;
mod repack;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

pub use error::{Result, VfsError};
use files::{OpenFile, WriteBack};
pub use repack::AUTO_REPACK_MIN_BYTES;

use crate::data::{CacheStats, ChunkStore, Staging};
use crate::meta::remote::RemoteMeta;
use crate::meta::{FileKind, Ino, Inode, SqliteMeta};

pub const NAME_MAX: usize = 255;
pub const XATTR_NAME_MAX: usize = 255;
pub const XATTR_SIZE_MAX: usize = 65536;

/// Who is asking: used for ownership of new inodes.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub umask: u32,
}

/// Attributes as the kernel wants them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileKind,
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: i64,
    pub mtime: i64,
    pub ctime: i64,
    pub rdev: u32,
}

/// A requested time change.
#[derive(Debug, Clone, Copy)]
pub enum SetTime {
    Now,
    At(i64),
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// Also clear a regular file's set-user-ID bit, and its set-group-ID bit when it is
    /// group-executable (what Linux does on chown, and on truncate or write by a caller
    /// without CAP_FSETID; the FUSE adapter asks for it when the kernel leaves that to us).
    pub kill_setid: bool,
}

/// `perm` without the bits a write, truncate or chown removes (see `SetAttr::kill_setid`).
pub fn without_setid(perm: u32) -> u32 {
    let sgid = if perm & 0o010 != 0 { 0o2000 } else { 0 };
    perm & !(0o4000 | sgid)
}

/// Whether `i` is a regular file with bits that `without_setid` removes.
fn has_setid_bits(i: &Inode) -> bool {
    i.kind == FileKind::File && without_setid(i.perm) != i.perm
}

#[derive(Debug, Clone)]
pub struct ReadDirEntry {
    pub ino: Ino,
    pub kind: FileKind,
    pub name: Vec<u8>,
    /// Offset to resume after this entry.
    pub next: i64,
}

#[derive(Debug, Clone)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(VfsError::NameTooLong);
    }
    if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
        return Err(VfsError::Invalid("file name"));
    }
    Ok(())
}

pub struct Vfs {
    meta: Arc<SqliteMeta>,
    data: Arc<ChunkStore>,
    remote: Arc<RemoteMeta>,
    /// Per-inode state of open files and of files with uploads pending (write-back).
    wb: Arc<WriteBack>,
    handles: Mutex<HashMap<u64, Ino>>,
    next_fh: AtomicU64,
    committed_gen: AtomicU64,
    /// When the last commit reached the store (ns since the epoch; 0 = not yet).
    last_commit_ns: AtomicI64,
    read_only: bool,
    /// close() (FUSE flush) commits the metadata before returning (`--sync-on-close`).
    sync_on_close: std::sync::atomic::AtomicBool,
    /// The last file opened, to recognise a scan of a directory (grep -r, cp -r, rsync).
    scan: Mutex<files::Scan>,
    /// Held by a repack: `gc` and the background repack never copy the same packs twice.
    repacking: Mutex<()>,
}

/// Cheap, read-only counters for `cryptbucket status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VfsStats {
    pub open_files: usize,
    /// Bytes written but not yet in the store (staged on local disk).
    pub dirty_bytes: u64,
    /// Files with data staged and not yet uploaded.
    pub files_waiting: usize,
    /// Chunks sealed and queued for or being uploaded.
    pub uploads_in_flight: u64,
    /// Bytes in local staging files (sealed with the staging key).
    pub staged_bytes: u64,
    /// Whether the metadata has changes not yet committed to the store.
    pub uncommitted: bool,
    pub last_commit_ns: Option<i64>,
    /// Disk cache use and how often reads were answered locally.
    pub cache: CacheStats,
}

/// An inode's attributes as the metadata has them (no open-file state).
fn stored_attr(inode: Inode) -> Attr {
    Attr {
        ino: inode.ino,
        kind: inode.kind,
        perm: inode.perm,
        nlink: inode.nlink,
        uid: inode.uid,
        gid: inode.gid,
        size: inode.size,
        atime: inode.atime,
        mtime: inode.mtime,
        ctime: inode.ctime,
        rdev: inode.rdev,
    }
}

impl Vfs {
    pub fn new(
        meta: Arc<SqliteMeta>,
        data: Arc<ChunkStore>,
        remote: Arc<RemoteMeta>,
        staging: Arc<Staging>,
        read_only: bool,
        in_sync: bool,
    ) -> Result<Self> {
        let vfs = Vfs {
            wb: Arc::new(WriteBack::new(meta.clone(), data.clone(), staging)),
            meta,
            data,
            remote,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            scan: Mutex::new(files::Scan::default()),
            repacking: Mutex::new(()),
            committed_gen: AtomicU64::new(u64::MAX),
            last_commit_ns: AtomicI64::new(0),
            read_only,
            sync_on_close: std::sync::atomic::AtomicBool::new(false),
        };
        if in_sync {
            vfs.mark_clean();
        }
        // Files unlinked while open when the daemon last stopped.
        if !read_only {
            for ino in vfs.meta.orphans()? {
                vfs.meta.delete_inode(ino)?;
            }
        }
        Ok(vfs)
    }

    fn writable(&self) -> Result<()> {
        if self.read_only {
            return Err(VfsError::ReadOnly);
        }
        Ok(())
    }

    /// The write-back counter to read before reading inodes passed to `attr_since`.
    fn drops(&self) -> u64 {
        self.wb.drops.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn attr_of(&self, inode: Inode) -> Attr {
        self.attr_since(0, inode)
    }

    /// `inode` as the kernel should see it: overlaid with its open state, if any. `drops`
    /// is `self.drops()` read before `inode` was, or 0 when unknown.
    fn attr_since(&self, drops: u64, inode: Inode) -> Attr {
        let mut a = stored_attr(inode);
        self.overlay(drops, &mut a, true);
        a
    }

    /// Overlay a file's open state on `a`; false (and `a` unchanged) when `wait` is off
    /// and the state is locked.
    fn overlay(&self, drops: u64, a: &mut Attr, wait: bool) -> bool {
        if a.kind != FileKind::File {
            return true;
        }
        let of = self.wb.open.lock().get(&a.ino).cloned();
        let st = match &of {
            Some(of) if wait => Some(of.lock_state()),
            Some(of) => match of.try_lock_state() {
                Some(st) => Some(st),
                None => return false,
            },
            None => None,
        };
        // Write-back may have recorded the file's size and mtime (and cleared them from its
        // open state, or dropped that) after the inode was read: read them again then.
        if drops == 0 || self.drops() != drops {
            if let Ok(fresh) = self.meta.get_inode(a.ino) {
                a.size = fresh.size;
                a.mtime = fresh.mtime;
                a.ctime = fresh.ctime;
            }
        }
        if let Some(st) = st {
            st.overlay(a);
        }
        true
    }

    /// `getattr` for the FUSE thread itself: local metadata only, and `None` instead of
    /// waiting for a file busy with a write (which may be fetching a chunk).
    pub fn getattr_nowait(&self, ino: Ino) -> Option<Result<Attr>> {
        let drops = self.drops();
        match self.meta.get_inode(ino) {
            Ok(i) => self.nowait(drops, i),
            Err(e) => Some(Err(e.into())),
        }
    }

    /// `lookup` for the FUSE thread itself (see `getattr_nowait`).
    pub fn lookup_nowait(&self, parent: Ino, name: &[u8]) -> Option<Result<Attr>> {
        if name.len() > NAME_MAX || name == b"." || name == b".." {
            return Some(self.lookup(parent, name));
        }
        let drops = self.drops();
        match self.meta.lookup(parent, name) {
            Ok(i) => self.nowait(drops, i),
            Err(e) => Some(Err(e.into())),
        }
    }

    fn nowait(&self, drops: u64, inode: Inode) -> Option<Result<Attr>> {
        let mut a = stored_attr(inode);
        self.overlay(drops, &mut a, false).then_some(Ok(a))
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        let drops = self.drops();
        Ok(self.attr_since(drops, self.meta.get_inode(ino)?))
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        if name.len() > NAME_MAX {
            return Err(VfsError::NameTooLong);
        }
        if name == b"." {
            return self.getattr(parent);
        }
        if name == b".." {
            return self.getattr(self.meta.parent_of(parent)?);
        }
        let drops = self.drops();
        Ok(self.attr_since(drops, self.meta.lookup(parent, name)?))
    }

    fn new_owner(&self, ctx: &Ctx, parent: Ino, perm: u32, dir: bool) -> Result<(u32, u32, u32)> {
        let p = self.meta.get_inode(parent)?;
        let mut perm = perm & 0o7777 & !ctx.umask;
        let gid = if p.perm & 0o2000 != 0 {
            if dir {
                perm |= 0o2000;
            }
            p.gid
        } else {
            ctx.gid
        };
        Ok((perm, ctx.uid, gid))
    }

    /// Create an inode of `kind` named `name` in `parent`, owned as POSIX says.
    #[allow(clippy::too_many_arguments)]
    fn make(
        &self,
        ctx: &Ctx,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        target: Option<&[u8]>,
        rdev: u32,
    ) -> Result<crate::meta::Inode> {
        self.writable()?;
        check_name(name)?;
        let (perm, uid, gid) = self.new_owner(ctx, parent, mode, kind == FileKind::Dir)?;
        // Symlinks are always 0777 (their mode is never checked).
        let perm = if kind == FileKind::Symlink {
            0o777
        } else {
            perm
        };
        Ok(self
            .meta
            .create(parent, name, kind, perm, uid, gid, now_ns(), target, rdev)?)
    }

    pub fn mkdir(&self, ctx: &Ctx, parent: Ino, name: &[u8], mode: u32) -> Result<Attr> {
        let i = self.make(ctx, parent, name, FileKind::Dir, mode, None, 0)?;
        Ok(self.attr_of(i))
    }

    /// Create and open a regular file.
    pub fn create(&self, ctx: &Ctx, parent: Ino, name: &[u8], mode: u32) -> Result<(Attr, u64)> {
        // A new inode cannot predate anything write-back recorded: no re-read needed.
        let drops = self.drops();
        let i = self.make(ctx, parent, name, FileKind::File, mode, None, 0)?;
        let fh = self.open_handle(i.ino)?;
        Ok((self.attr_since(drops, i), fh))
    }

    /// mknod: regular files, FIFOs, sockets and device nodes (stored as metadata only).
    pub fn mknod(&self, ctx: &Ctx, parent: Ino, name: &[u8], mode: u32, rdev: u32) -> Result<Attr> {
        let (kind, rdev) = match mode & libc::S_IFMT {
            0 | libc::S_IFREG => {
                let (a, fh) = self.create(ctx, parent, name, mode)?;
                self.release(fh)?;
                return Ok(a);
            }
            libc::S_IFIFO => (FileKind::Fifo, 0),
            libc::S_IFSOCK => (FileKind::Socket, 0),
            libc::S_IFCHR => (FileKind::CharDevice, rdev),
            libc::S_IFBLK => (FileKind::BlockDevice, rdev),
            _ => return Err(VfsError::Invalid("mknod file type")),
        };
        let i = self.make(ctx, parent, name, kind, mode, None, rdev)?;
        Ok(self.attr_of(i))
    }

    pub fn symlink(&self, ctx: &Ctx, parent: Ino, name: &[u8], target: &[u8]) -> Result<Attr> {
        self.writable()?;
        check_name(name)?;
        if target.is_empty() || target.len() > 4096 {
            return Err(VfsError::Invalid("symlink target"));
        }
        let i = self.make(ctx, parent, name, FileKind::Symlink, 0o777, Some(target), 0)?;
        Ok(self.attr_of(i))
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        Ok(self.meta.symlink_target(ino)?)
    }

    pub fn link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> Result<Attr> {
        self.writable()?;
        check_name(newname)?;
        let i = self.meta.link(ino, newparent, newname, now_ns())?;
        Ok(self.attr_of(i))
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.writable()?;
        let i = self.meta.unlink(parent, name, now_ns())?;
        self.maybe_delete(i)
    }

    /// Delete an inode that lost its last name, unless it is still open.
    fn maybe_delete(&self, i: Inode) -> Result<()> {
        if i.nlink == 0 && self.wb.discard_unopened(i.ino) {
            self.meta.delete_inode(i.ino)?;
        }
        Ok(())
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.writable()?;
        if name == b"." {
            return Err(VfsError::Invalid("rmdir ."));
        }
        if name == b".." {
            return Err(VfsError::NotEmpty);
        }
        Ok(self.meta.rmdir(parent, name, now_ns())?)
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: u32,
    ) -> Result<()> {
        self.writable()?;
        check_name(newname)?;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 || (noreplace && exchange)
        {
            return Err(VfsError::Invalid("rename flags"));
        }
        let replaced = self.meta.rename(
            parent,
            name,
            newparent,
            newname,
            noreplace,
            exchange,
            now_ns(),
        )?;
        if let Some(i) = replaced {
            self.maybe_delete(i)?;
        }
        Ok(())
    }

    pub fn setattr(&self, ino: Ino, s: SetAttr) -> Result<Attr> {
        self.writable()?;
        if let Some(size) = s.size {
            self.truncate(ino, size)?;
        }
        let of = self.wb.open.lock().get(&ino).cloned();
        let st = of.as_ref().map(|of| of.lock_state());
        self.set_attrs(ino, &s, st)
    }

    /// Whether `ino` is a regular file with bits a write by an unprivileged caller clears.
    pub fn has_setid(&self, ino: Ino) -> Result<bool> {
        Ok(has_setid_bits(&self.meta.get_inode(ino)?))
    }

    /// Clear the set-ID bits a write by an unprivileged caller removes (see `has_setid`).
    pub fn kill_setid(&self, ino: Ino) -> Result<()> {
        if self.has_setid(ino)? {
            let s = SetAttr {
                kill_setid: true,
                ..SetAttr::default()
            };
            self.setattr(ino, s)?;
        }
        Ok(())
    }

    /// `setattr` for the FUSE thread itself: mode, owner and times only touch local
    /// metadata; `None` for a size change or a file whose state is busy (a write that may
    /// be fetching a chunk).
    pub fn setattr_nowait(&self, ino: Ino, s: &SetAttr) -> Option<Result<Attr>> {
        if s.size.is_some() {
            return None;
        }
        if let Err(e) = self.writable() {
            return Some(Err(e));
        }
        let of = self.wb.open.lock().get(&ino).cloned();
        let st = match &of {
            Some(of) => Some(of.try_lock_state()?),
            None => None,
        };
        Some(self.set_attrs(ino, s, st))
    }

    /// Mode, owner and times, with the file's open state (if any) locked by the caller.
    fn set_attrs(
        &self,
        ino: Ino,
        s: &SetAttr,
        mut st: Option<parking_lot::MutexGuard<'_, files::FileState>>,
    ) -> Result<Attr> {
        let now = now_ns();
        let drops = self.drops();
        let mut i = self.meta.get_inode(ino)?;
        let mut changed = false;
        if let Some(p) = s.perm {
            i.perm = p & 0o7777;
            changed = true;
        }
        if let Some(u) = s.uid {
            i.uid = u;
            changed = true;
        }
        if let Some(g) = s.gid {
            i.gid = g;
            changed = true;
        }
        if s.kill_setid && has_setid_bits(&i) {
            i.perm = without_setid(i.perm);
            changed = true;
        }
        let resolve = |t: SetTime| match t {
            SetTime::Now => now,
            SetTime::At(v) => v,
        };
        if let Some(t) = s.atime {
            i.atime = resolve(t);
            changed = true;
        }
        if let Some(t) = s.mtime {
            i.mtime = resolve(t);
            changed = true;
            if let Some(st) = st.as_mut() {
                st.set_mtime(i.mtime);
            }
        }
        if changed {
            i.ctime = now;
            // Not the size: write-back records it as uploads finish (never covering a chunk
            // still pending; the open-file state shows the full size meanwhile).
            self.meta.set_attrs(&i)?;
        }
        let mut a = stored_attr(self.meta.get_inode(ino)?);
        match st {
            Some(st) => st.overlay(&mut a),
            None => {
                self.overlay(drops, &mut a, true);
            }
        }
        Ok(a)
    }

    pub fn readdir(&self, dir: Ino, offset: i64, max: usize) -> Result<Vec<ReadDirEntry>> {
        let d = self.meta.get_inode(dir)?;
        if d.kind != FileKind::Dir {
            return Err(VfsError::NotDir);
        }
        let mut out = Vec::new();
        if offset < 1 {
            out.push(ReadDirEntry {
                ino: dir,
                kind: FileKind::Dir,
                name: b".".to_vec(),
                next: 1,
            });
        }
        if offset < 2 {
            out.push(ReadDirEntry {
                ino: self.meta.parent_of(dir)?,
                kind: FileKind::Dir,
                name: b"..".to_vec(),
                next: 2,
            });
        }
        let after = (offset.max(2) - 2) as u64;
        for e in self.meta.readdir(dir, after, max)? {
            out.push(ReadDirEntry {
                ino: e.ino,
                kind: e.kind,
                name: e.name,
                next: e.cookie as i64 + 2,
            });
        }
        Ok(out)
    }

    /// `readdir` with each entry's attributes (READDIRPLUS: the kernel needs no LOOKUP
    /// afterwards for `ls -l`, `find`, `stat` of every entry).
    pub fn readdirplus(
        &self,
        dir: Ino,
        offset: i64,
        max: usize,
    ) -> Result<Vec<(ReadDirEntry, Attr)>> {
        let drops = self.drops();
        let d = self.meta.get_inode(dir)?;
        if d.kind != FileKind::Dir {
            return Err(VfsError::NotDir);
        }
        let mut out = Vec::new();
        if offset < 1 {
            let e = ReadDirEntry {
                ino: dir,
                kind: FileKind::Dir,
                name: b".".to_vec(),
                next: 1,
            };
            out.push((e, self.attr_of(d)));
        }
        if offset < 2 {
            let p = self.getattr(self.meta.parent_of(dir)?)?;
            let e = ReadDirEntry {
                ino: p.ino,
                kind: FileKind::Dir,
                name: b"..".to_vec(),
                next: 2,
            };
            out.push((e, p));
        }
        let after = (offset.max(2) - 2) as u64;
        for (e, inode) in self.meta.readdir_plus(dir, after, max)? {
            let a = self.attr_since(drops, inode);
            let e = ReadDirEntry {
                ino: e.ino,
                kind: e.kind,
                name: e.name,
                next: e.cookie as i64 + 2,
            };
            out.push((e, a));
        }
        Ok(out)
    }

    pub fn statfs(&self) -> Result<StatFs> {
        let (files, bytes) = self.meta.usage()?;
        let bsize = 4096u64;
        // An object store has no fixed capacity: report a large, constant total.
        let total = 1u64 << 40;
        let used = bytes.div_ceil(bsize).min(total);
        Ok(StatFs {
            blocks: total,
            bfree: total - used,
            files: files + (1 << 30),
            ffree: 1 << 30,
            bsize: bsize as u32,
            namelen: NAME_MAX as u32,
        })
    }

    /// Only `user.` attributes can be stored: any other name is known absent without a
    /// lookup. (The kernel asks for `security.capability` before every write.)
    pub fn xattr_may_exist(name: &[u8]) -> bool {
        name.starts_with(b"user.")
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.meta.get_inode(ino)?;
        self.meta.get_xattr(ino, name)?.ok_or(VfsError::NoAttr)
    }

    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        self.writable()?;
        if name.is_empty() || name.len() > XATTR_NAME_MAX {
            return Err(VfsError::Range);
        }
        if value.len() > XATTR_SIZE_MAX {
            return Err(VfsError::TooBig);
        }
        if !name.starts_with(b"user.") {
            return Err(VfsError::NotSupported);
        }
        let create = flags & libc::XATTR_CREATE != 0;
        let replace = flags & libc::XATTR_REPLACE != 0;
        self.meta.get_inode(ino)?;
        self.meta
            .set_xattr(ino, name, value, create, replace, now_ns())
            .map_err(|e| match e {
                crate::meta::MetaError::NotFound => VfsError::NoAttr,
                other => other.into(),
            })
    }

    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        self.meta.get_inode(ino)?;
        let mut out = Vec::new();
        for n in self.meta.list_xattrs(ino)? {
            out.extend_from_slice(&n);
            out.push(0);
        }
        Ok(out)
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.writable()?;
        self.meta
            .remove_xattr(ino, name, now_ns())
            .map_err(|e| match e {
                crate::meta::MetaError::NotFound => VfsError::NoAttr,
                other => other.into(),
            })
    }

    /// Declare the local metadata identical to the store's head (it was just loaded from
    /// it), so an unchanged mount writes nothing at unmount.
    pub fn mark_clean(&self) {
        self.committed_gen
            .store(self.meta.generation(), Ordering::SeqCst);
    }

    /// Write the metadata to the store if it changed since the last commit, then delete
    /// chunks that no committed metadata references any more.
    pub fn commit(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let gen = self.meta.generation();
        if self.committed_gen.load(Ordering::SeqCst) == gen {
            return Ok(());
        }
        let mut dead = self.remote.commit(&self.meta)?;
        self.committed_gen.store(gen, Ordering::SeqCst);
        self.last_commit_ns.store(now_ns(), Ordering::SeqCst);
        // A pack whose members are being recorded right now stays in the garbage list
        // (due) and is looked at again at the next commit. The set is read before the
        // rows: a pack whose recording ended after it is seen in use below.
        let busy = self.data.recording_packs();
        dead.retain(|id| !busy.contains(id));
        let alive = self.meta.packs_in_use(&dead)?;
        if !alive.is_empty() {
            dead.retain(|id| !alive.contains(id));
            self.remote.forget_chunks(&self.meta, &alive)?;
        }
        if !dead.is_empty() {
            match self.data.delete_many(&dead) {
                Ok(()) => self.remote.forget_chunks(&self.meta, &dead)?,
                Err(e) => tracing::warn!("could not delete {} unused chunks: {e}", dead.len()),
            }
        }
        Ok(())
    }

    pub fn set_sync_on_close(&self, yes: bool) {
        self.sync_on_close.store(yes, Ordering::SeqCst);
    }

    pub fn sync_on_close(&self) -> bool {
        self.sync_on_close.load(Ordering::SeqCst)
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Read-only mounts: pick up the store's newest metadata (new journal segments or a new
    /// snapshot). Returns whether anything changed.
    pub fn follow(&self) -> Result<bool> {
        if !self.read_only {
            return Ok(false);
        }
        Ok(self.remote.refresh(&self.meta)?)
    }

    /// Flush every file with data pending, wait for its uploads, and commit: what
    /// `cryptbucket sync` (over the control socket) and unmount need. (The kernel never
    /// sends syncfs to a FUSE daemon other than virtiofs.)
    pub fn sync_all(&self) -> Result<()> {
        let files: Vec<(Ino, Arc<OpenFile>)> = self
            .wb
            .open
            .lock()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (ino, of) in files {
            self.flush_and_wait(ino, &of)?;
        }
        self.commit()
    }

    /// Called once when the filesystem is unmounted: everything reaches the store.
    pub fn shutdown(&self) -> Result<()> {
        self.sync_all()?;
        // Deletes of superseded uploads finish too, so nothing runs after unmount.
        self.data.wait_idle();
        // A clean unmount leaves no staging file behind, not even empty ones.
        self.wb.staging.clear_pool();
        Ok(())
    }

    pub fn stats(&self) -> VfsStats {
        let files: Vec<Arc<OpenFile>> = self.wb.open.lock().values().cloned().collect();
        let last = self.last_commit_ns.load(Ordering::SeqCst);
        let (mut uploads, mut waiting) = (0, 0);
        for f in &files {
            let (n, pending) = f.uploads();
            uploads += n;
            waiting += pending as usize;
        }
        VfsStats {
            open_files: self.handles.lock().len(),
            dirty_bytes: files.iter().map(|f| f.dirty_bytes()).sum(),
            files_waiting: waiting,
            uploads_in_flight: uploads,
            staged_bytes: self.wb.staging.bytes(),
            uncommitted: self.meta.generation() != self.committed_gen.load(Ordering::SeqCst),
            last_commit_ns: (last != 0).then_some(last),
            cache: self.data.cache_stats(),
        }
    }
}
