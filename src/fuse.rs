//! The FUSE adapter: translates kernel requests into vfs calls and answers from a worker
//! pool, so a slow store never blocks the FUSE loop. No filesystem logic lives here.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow,
};

use crate::meta::FileKind;
use crate::pool::Pool;
use crate::vfs::{Attr, Ctx, SetAttr, SetTime, Vfs, VfsError};

/// How long the kernel may keep names and attributes without asking again. A writable
/// mount is the volume's only writer (the lease) and every change passes through it, so the
/// kernel's caches stay right for long; a read-only mount can follow another machine's
/// writes (`--follow`), which the kernel cannot see: it asks again after a second.
static TTL: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
const TTL_WRITER: Duration = Duration::from_secs(30);
const TTL_READER: Duration = Duration::from_secs(1);

fn ttl() -> &'static Duration {
    TTL.get().unwrap_or(&TTL_READER)
}
const WORKERS: usize = 16;

pub struct FuseFs {
    vfs: Arc<Vfs>,
    pool: Pool,
    /// FUSE_HANDLE_KILLPRIV_V2 was agreed at init: set-ID bits on write, truncate and chown
    /// are ours to clear (and the kernel stops asking for `security.capability` before
    /// every write).
    killpriv: bool,
    /// For telling the kernel that attributes it caches changed behind its back (set once
    /// the session runs; see `notify_slot`).
    notifier: Arc<OnceLock<fuser::Notifier>>,
}

/// Not in fuser 0.15's constants (protocol 7.33).
const FUSE_HANDLE_KILLPRIV_V2: u32 = 1 << 28;
/// WRITE flag under FUSE_HANDLE_KILLPRIV_V2: the writer lacks CAP_FSETID.
const FUSE_WRITE_KILL_SUIDGID: u32 = 1 << 2;

/// `--spin-us` default and bound; see docs/DESIGN.md ("FUSE thread polls before it sleeps").
pub const DEFAULT_SPIN_US: u64 = 50;
pub const SPIN_US_MAX: u64 = 10_000;

/// Make the session's /dev/fuse non-blocking and let its reader poll `us` microseconds for
/// the next request before sleeping (vendor/fuser/PATCHED.md). Without it, every request
/// wakes the reader from sleep. Call before the session starts.
pub fn set_spin<FS: fuser::Filesystem>(session: &fuser::Session<FS>, us: u64) {
    use std::os::fd::{AsFd, AsRawFd};
    if us == 0 {
        return;
    }
    let fd = session.as_fd().as_raw_fd();
    // SAFETY: fcntl on a descriptor the session owns and keeps open; only the flags change.
    let ok = unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        fl >= 0 && libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) == 0
    };
    if ok {
        fuser::set_receive_spin(Duration::from_micros(us));
    } else {
        tracing::warn!(
            "cannot make /dev/fuse non-blocking ({}); the FUSE thread sleeps between requests",
            std::io::Error::last_os_error()
        );
    }
}

impl FuseFs {
    pub fn new(vfs: Arc<Vfs>) -> Self {
        let _ = TTL.set(if vfs.is_read_only() {
            TTL_READER
        } else {
            TTL_WRITER
        });
        FuseFs {
            vfs,
            pool: Pool::new("fuse-worker", WORKERS),
            killpriv: false,
            notifier: Arc::new(OnceLock::new()),
        }
    }

    /// Where the mount puts its session's notifier once it is mounted.
    pub fn notify_slot(&self) -> Arc<OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => SetTime::At(match st.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i64,
            Err(e) => -(e.duration().as_nanos() as i64),
        }),
    }
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn fattr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: a.ino,
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
        crtime: time(a.ctime),
        kind: kind(a.kind),
        perm: a.perm as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 65536,
        flags: 0,
    }
}

fn ctx(req: &Request<'_>, umask: u32) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
        umask,
    }
}

fn errno(op: &str, e: &VfsError) -> i32 {
    if e.is_serious() {
        tracing::error!("{op}: {e}");
    }
    e.errno()
}

macro_rules! fail {
    ($reply:expr, $op:expr, $e:expr) => {
        $reply.error(errno($op, &$e))
    };
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        // READDIRPLUS: a listing carries every entry's attributes, so `ls -l`, `find` and a
        // stat of each entry need no LOOKUP round trip each. AUTO lets the kernel fall back
        // to plain READDIR when nobody looks at the attributes.
        use fuser::consts::{FUSE_DO_READDIRPLUS, FUSE_READDIRPLUS_AUTO};
        if config.add_capabilities(FUSE_DO_READDIRPLUS).is_ok() {
            let _ = config.add_capabilities(FUSE_READDIRPLUS_AUTO);
        }
        // Without it the kernel asks for `security.capability` (GETXATTR) before every
        // WRITE: 2-4 extra round trips per small file in an untar.
        self.killpriv = config.add_capabilities(FUSE_HANDLE_KILLPRIV_V2).is_ok();
        Ok(())
    }

    // lookup and getattr read only local metadata: answered here when that cannot wait for
    // a file busy with I/O, saving two thread switches each (`find`, `stat`, `rsync`).
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        if let Some(r) = self.vfs.lookup_nowait(parent, name.as_bytes()) {
            return reply_entry(reply, "lookup", r);
        }
        let vfs = self.vfs.clone();
        let name = name.as_bytes().to_vec();
        self.pool
            .run(move || reply_entry(reply, "lookup", vfs.lookup(parent, &name)));
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        if let Some(r) = self.vfs.getattr_nowait(ino) {
            return reply_attr(reply, "getattr", r);
        }
        let vfs = self.vfs.clone();
        self.pool
            .run(move || reply_attr(reply, "getattr", vfs.getattr(ino)));
    }

    fn setattr(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let vfs = self.vfs.clone();
        let s = SetAttr {
            perm: mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            // What the kernel's FATTR_KILL_SUIDGID would say (fuser does not pass it):
            // always on chown, on truncate unless the caller is root (CAP_FSETID).
            kill_setid: self.killpriv
                && (uid.is_some() || gid.is_some() || (size.is_some() && req.uid() != 0)),
        };
        // chmod, chown and utimens (tar, cp -a, rsync set all three per file) answered here
        // unless they change the size or would wait for a busy file.
        if let Some(r) = vfs.setattr_nowait(ino, &s) {
            return reply_attr(reply, "setattr", r);
        }
        self.pool
            .run(move || reply_attr(reply, "setattr", vfs.setattr(ino, s)));
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        let vfs = self.vfs.clone();
        self.pool.run(move || match vfs.readlink(ino) {
            Ok(t) => reply.data(&t),
            Err(e) => fail!(reply, "readlink", e),
        });
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let vfs = self.vfs.clone();
        let c = ctx(req, umask);
        let name = name.as_bytes().to_vec();
        self.pool
            .run(move || reply_entry(reply, "mknod", vfs.mknod(&c, parent, &name, mode, rdev)));
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let vfs = self.vfs.clone();
        let c = ctx(req, umask);
        let name = name.as_bytes().to_vec();
        self.pool
            .run(move || reply_entry(reply, "mkdir", vfs.mkdir(&c, parent, &name, mode)));
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let vfs = self.vfs.clone();
        let name = name.as_bytes().to_vec();
        self.pool
            .run(move || reply_empty(reply, "unlink", vfs.unlink(parent, &name)));
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let vfs = self.vfs.clone();
        let name = name.as_bytes().to_vec();
        self.pool
            .run(move || reply_empty(reply, "rmdir", vfs.rmdir(parent, &name)));
    }

    fn symlink(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let vfs = self.vfs.clone();
        let c = ctx(req, 0);
        let name = link_name.as_bytes().to_vec();
        let target = target.as_os_str().as_bytes().to_vec();
        self.pool
            .run(move || reply_entry(reply, "symlink", vfs.symlink(&c, parent, &name, &target)));
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let vfs = self.vfs.clone();
        let name = name.as_bytes().to_vec();
        let newname = newname.as_bytes().to_vec();
        self.pool.run(
            move || match vfs.rename(parent, &name, newparent, &newname, flags) {
                Ok(()) => reply.ok(),
                Err(e) => fail!(reply, "rename", e),
            },
        );
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let vfs = self.vfs.clone();
        let newname = newname.as_bytes().to_vec();
        self.pool
            .run(move || reply_entry(reply, "link", vfs.link(ino, newparent, &newname)));
    }

    // open, and flush/release of a file with nothing to upload (`grep -r`, `cp` sources),
    // are answered here too when they cannot wait.
    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.vfs.open_nowait(ino) {
            Some(Ok(fh)) => return reply.opened(fh, 0),
            Some(Err(e)) => return fail!(reply, "open", e),
            None => {}
        }
        let vfs = self.vfs.clone();
        self.pool.run(move || match vfs.open(ino) {
            Ok(fh) => reply.opened(fh, 0),
            Err(e) => fail!(reply, "open", e),
        });
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        // A stream served from read-ahead (or cached blocks) is answered here.
        match self.vfs.read_nowait(fh, offset.max(0) as u64, size) {
            Some(Ok(d)) => return reply.data(&d),
            Some(Err(e)) => return fail!(reply, "read", e),
            None => {}
        }
        let vfs = self.vfs.clone();
        self.pool
            .run(move || match vfs.read(fh, offset.max(0) as u64, size) {
                Ok(d) => reply.data(&d),
                Err(e) => fail!(reply, "read", e),
            });
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let off = offset.max(0) as u64;
        // Set-ID bits to clear first (rare): done by a worker, with the write.
        let kill = self.killpriv
            && write_flags & FUSE_WRITE_KILL_SUIDGID != 0
            && self.vfs.has_setid(ino).unwrap_or(true);
        if !kill {
            match self.vfs.write_nowait(fh, off, data) {
                Some(Ok(n)) => return reply.written(n),
                Some(Err(e)) => return fail!(reply, "write", e),
                None => {}
            }
        }
        let vfs = self.vfs.clone();
        let data = data.to_vec();
        let notifier = self.notifier.clone();
        self.pool.run(move || {
            let res = if kill {
                // The kernel keeps the old mode cached: make it ask again (attributes only,
                // a negative offset), before it sees the write's reply.
                vfs.kill_setid(ino).inspect(|()| {
                    if let Some(n) = notifier.get() {
                        let _ = n.inval_inode(ino, -1, 0);
                    }
                })
            } else {
                Ok(())
            };
            match res.and_then(|()| vfs.write(fh, off, &data)) {
                Ok(n) => reply.written(n),
                Err(e) => fail!(reply, "write", e),
            }
        });
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _lo: u64, reply: ReplyEmpty) {
        if let Some(r) = self.vfs.flush_nowait(fh) {
            return reply_empty(reply, "flush", r);
        }
        let vfs = self.vfs.clone();
        self.pool
            .run(move || reply_empty(reply, "flush", vfs.flush(fh)));
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(r) = self.vfs.release_nowait(fh) {
            return reply_empty(reply, "release", r);
        }
        let vfs = self.vfs.clone();
        self.pool
            .run(move || reply_empty(reply, "release", vfs.release(fh)));
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _ds: bool, reply: ReplyEmpty) {
        let vfs = self.vfs.clone();
        self.pool
            .run(move || reply_empty(reply, "fsync", vfs.fsync(fh)));
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let vfs = self.vfs.clone();
        self.pool.run(move || match vfs.readdir(ino, offset, 512) {
            Ok(entries) => {
                for e in entries {
                    if reply.add(e.ino, e.next, kind(e.kind), OsStr::from_bytes(&e.name)) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => fail!(reply, "readdir", e),
        });
    }

    fn readdirplus(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let vfs = self.vfs.clone();
        // Fill the kernel's buffer (4 KiB to 128 KiB, from the reader's getdents size: ~25
        // to ~800 entries) in batches, so a big directory costs few round trips.
        self.pool.run(move || {
            let mut off = offset;
            loop {
                let entries = match vfs.readdirplus(ino, off, 64) {
                    Ok(entries) => entries,
                    Err(e) if off == offset => return fail!(reply, "readdirplus", e),
                    // Entries already added are good: send them, the next call reports it.
                    Err(_) => break,
                };
                if entries.is_empty() {
                    break;
                }
                for (e, a) in entries {
                    let name = OsStr::from_bytes(&e.name);
                    if reply.add(e.ino, e.next, name, ttl(), &fattr(&a), 0) {
                        return reply.ok();
                    }
                    off = e.next;
                }
            }
            reply.ok()
        });
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        let vfs = self.vfs.clone();
        self.pool
            .run(move || reply_empty(reply, "fsyncdir", vfs.commit()));
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let vfs = self.vfs.clone();
        self.pool.run(move || match vfs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bfree, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
            ),
            Err(e) => fail!(reply, "statfs", e),
        });
    }

    fn setxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let vfs = self.vfs.clone();
        let name = name.as_bytes().to_vec();
        let value = value.to_vec();
        self.pool
            .run(move || reply_empty(reply, "setxattr", vfs.setxattr(ino, &name, &value, flags)));
    }

    fn getxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        if !Vfs::xattr_may_exist(name.as_bytes()) {
            // Answered here: no worker hand-off, no database read.
            return fail!(reply, "getxattr", VfsError::NoAttr);
        }
        let vfs = self.vfs.clone();
        let name = name.as_bytes().to_vec();
        self.pool.run(move || match vfs.getxattr(ino, &name) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => fail!(reply, "getxattr", e),
        });
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        let vfs = self.vfs.clone();
        self.pool.run(move || match vfs.listxattr(ino) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => fail!(reply, "listxattr", e),
        });
    }

    fn removexattr(&mut self, _req: &Request<'_>, ino: u64, name: &OsStr, reply: ReplyEmpty) {
        let vfs = self.vfs.clone();
        let name = name.as_bytes().to_vec();
        self.pool
            .run(move || reply_empty(reply, "removexattr", vfs.removexattr(ino, &name)));
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let vfs = self.vfs.clone();
        if offset < 0 || length <= 0 {
            reply.error(libc::EINVAL);
            return;
        }
        self.pool.run(
            move || match vfs.fallocate(fh, offset as u64, length as u64, mode) {
                Ok(()) => reply.ok(),
                Err(e) => fail!(reply, "fallocate", e),
            },
        );
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        // A new file is a metadata insert and a fresh open state: nothing that can wait on
        // the store, so it is answered here.
        match self
            .vfs
            .create(&ctx(req, umask), parent, name.as_bytes(), mode)
        {
            Ok((a, fh)) => reply.created(ttl(), &fattr(&a), 0, fh, 0),
            Err(e) => fail!(reply, "create", e),
        }
    }
}

fn reply_entry(reply: ReplyEntry, op: &str, r: crate::vfs::Result<Attr>) {
    match r {
        Ok(a) => reply.entry(ttl(), &fattr(&a), 0),
        Err(e) => fail!(reply, op, e),
    }
}

fn reply_attr(reply: ReplyAttr, op: &str, r: crate::vfs::Result<Attr>) {
    match r {
        Ok(a) => reply.attr(ttl(), &fattr(&a)),
        Err(e) => fail!(reply, op, e),
    }
}

fn reply_empty(reply: ReplyEmpty, op: &str, r: crate::vfs::Result<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => fail!(reply, op, e),
    }
}

fn xattr_reply(reply: ReplyXattr, v: &[u8], size: u32) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if v.len() > size as usize {
        reply.error(libc::ERANGE);
    } else {
        reply.data(v);
    }
}
