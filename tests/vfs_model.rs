//! Property test of the whole vfs against a simple in-memory model: random sequences of
//! namespace and data operations (create, mkdir, write, truncate, rename, link, unlink,
//! rmdir, chmod, xattrs, remount) must give the same results (values and errnos) as the
//! model, and the final tree must match it exactly.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use cryptbucket::backend::memory::MemoryStore;
use cryptbucket::backend::ObjectStore;
use cryptbucket::crypto::{Argon2Params, Cipher, KeySource, VolumeParams};
use cryptbucket::meta::{FileKind, ROOT_INO};
use cryptbucket::vfs::{Ctx, SetAttr, Vfs};
use cryptbucket::volume::{self, Volume};

const CTX: Ctx = Ctx {
    uid: 0,
    gid: 0,
    umask: 0,
};
const NAMES: [&str; 4] = ["a", "b", "c", "d d"];

fn key() -> KeySource {
    KeySource::Passphrase(zeroize::Zeroizing::new("model".to_string()))
}

#[derive(Debug, Clone)]
enum MNode {
    File { data: Vec<u8> },
    Dir,
}

#[derive(Debug, Clone)]
struct MInode {
    node: MNode,
    perm: u32,
    nlink: u32,
    xattrs: BTreeMap<String, Vec<u8>>,
}

/// The model: inodes by id (ids are the vfs inode numbers, which are stable) and entries.
#[derive(Debug, Default)]
struct Model {
    inodes: BTreeMap<u64, MInode>,
    entries: BTreeMap<(u64, String), u64>,
}

impl Model {
    fn lookup(&self, dir: u64, name: &str) -> Option<u64> {
        self.entries.get(&(dir, name.to_string())).copied()
    }
    fn is_dir(&self, ino: u64) -> bool {
        matches!(self.inodes.get(&ino).map(|i| &i.node), Some(MNode::Dir))
    }
    fn children(&self, dir: u64) -> usize {
        self.entries.keys().filter(|(d, _)| *d == dir).count()
    }
    fn dirs(&self) -> Vec<u64> {
        self.inodes
            .iter()
            .filter(|(_, i)| matches!(i.node, MNode::Dir))
            .map(|(k, _)| *k)
            .collect()
    }
    fn files(&self) -> Vec<u64> {
        self.inodes
            .iter()
            .filter(|(_, i)| matches!(i.node, MNode::File { .. }))
            .map(|(k, _)| *k)
            .collect()
    }
    fn parent(&self, dir: u64) -> Option<u64> {
        self.entries
            .iter()
            .find(|(_, v)| **v == dir)
            .map(|((p, _), _)| *p)
    }
    /// Whether `a` is `b` or one of its ancestors.
    fn is_ancestor(&self, a: u64, mut b: u64) -> bool {
        loop {
            if a == b {
                return true;
            }
            match self.parent(b) {
                Some(p) => b = p,
                None => return false,
            }
        }
    }
    fn drop_link(&mut self, ino: u64) {
        let gone = {
            let i = self.inodes.get_mut(&ino).expect("model inode");
            i.nlink -= 1;
            i.nlink == 0
        };
        if gone {
            self.inodes.remove(&ino);
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Create(usize, usize),
    Mkdir(usize, usize),
    Write(usize, u32, u16, u8),
    Truncate(usize, u32),
    Rename(usize, usize, usize, usize),
    Link(usize, usize, usize),
    Unlink(usize, usize),
    Rmdir(usize, usize),
    Chmod(usize, u16),
    SetXattr(usize, usize, u8),
    RemoveXattr(usize, usize),
    Remount,
}

fn op() -> impl Strategy<Value = Op> {
    let d = 0usize..8;
    let n = 0usize..NAMES.len();
    prop_oneof![
        3 => (d.clone(), n.clone()).prop_map(|(a, b)| Op::Create(a, b)),
        2 => (d.clone(), n.clone()).prop_map(|(a, b)| Op::Mkdir(a, b)),
        3 => (0usize..8, 0u32..200_000, 1u16..20_000, any::<u8>()).prop_map(|(f, o, l, s)| Op::Write(f, o, l, s)),
        1 => (0usize..8, 0u32..150_000).prop_map(|(f, s)| Op::Truncate(f, s)),
        3 => (d.clone(), n.clone(), d.clone(), n.clone()).prop_map(|(a, b, c, e)| Op::Rename(a, b, c, e)),
        1 => (0usize..8, d.clone(), n.clone()).prop_map(|(f, a, b)| Op::Link(f, a, b)),
        2 => (d.clone(), n.clone()).prop_map(|(a, b)| Op::Unlink(a, b)),
        1 => (d.clone(), n.clone()).prop_map(|(a, b)| Op::Rmdir(a, b)),
        1 => (0usize..8, 0u16..0o7777).prop_map(|(f, m)| Op::Chmod(f, m)),
        1 => (0usize..8, 0usize..3, any::<u8>()).prop_map(|(f, x, v)| Op::SetXattr(f, x, v)),
        1 => (0usize..8, 0usize..3).prop_map(|(f, x)| Op::RemoveXattr(f, x)),
        1 => Just(Op::Remount),
    ]
}

fn pick(v: &[u64], i: usize) -> Option<u64> {
    if v.is_empty() {
        None
    } else {
        Some(v[i % v.len()])
    }
}

fn errno<T>(r: cryptbucket::vfs::Result<T>) -> Result<T, i32> {
    r.map_err(|e| e.errno())
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn read_file(vfs: &Vfs, ino: u64) -> Vec<u8> {
    let fh = vfs.open(ino).expect("open");
    let size = vfs.getattr(ino).expect("getattr").size;
    let d = vfs.read(fh, 0, size as u32 + 1).expect("read");
    vfs.release(fh).expect("release");
    d
}

struct Harness {
    store: Arc<dyn ObjectStore>,
    dirs: Vec<tempfile::TempDir>,
    vol: Option<Volume>,
}

impl Harness {
    fn new() -> Self {
        let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
        let rt = volume::runtime().expect("runtime");
        let params = VolumeParams {
            cipher: Cipher::XChaCha20Poly1305,
            chunk_size: 64 * 1024,
            block_size: 4096,
            ..VolumeParams::default()
        };
        let kdf = Argon2Params {
            m_kib: 8192,
            t: 1,
            p: 1,
        };
        volume::create(&rt, store.clone(), params, &key(), kdf).expect("create");
        let mut h = Harness {
            store,
            dirs: Vec::new(),
            vol: None,
        };
        h.remount();
        h
    }

    fn remount(&mut self) {
        if let Some(v) = self.vol.take() {
            v.unmount().expect("unmount");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let v = volume::open(
            volume::runtime().expect("runtime"),
            self.store.clone(),
            &key(),
            Some(dir.path().to_owned()),
        )
        .expect("open volume");
        self.dirs.push(dir);
        self.vol = Some(v);
    }

    fn vfs(&self) -> &Vfs {
        &self.vol.as_ref().expect("mounted").vfs
    }
}

fn apply(h: &mut Harness, m: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    let dirs = m.dirs();
    let files = m.files();
    let name = |i: usize| NAMES[i % NAMES.len()];
    match *op {
        Op::Create(d, n) => {
            let dir = pick(&dirs, d).unwrap_or(ROOT_INO);
            let got = errno(h.vfs().create(&CTX, dir, name(n).as_bytes(), 0o644));
            let want = if m.lookup(dir, name(n)).is_some() {
                Err(libc::EEXIST)
            } else {
                Ok(())
            };
            prop_assert_eq!(got.as_ref().map(|_| ()).map_err(|e| *e), want, "{:?}", op);
            if let Ok((a, fh)) = got {
                h.vfs().release(fh).expect("release");
                m.inodes.insert(
                    a.ino,
                    MInode {
                        node: MNode::File { data: Vec::new() },
                        perm: 0o644,
                        nlink: 1,
                        xattrs: BTreeMap::new(),
                    },
                );
                m.entries.insert((dir, name(n).to_string()), a.ino);
            }
        }
        Op::Mkdir(d, n) => {
            let dir = pick(&dirs, d).unwrap_or(ROOT_INO);
            let got = errno(h.vfs().mkdir(&CTX, dir, name(n).as_bytes(), 0o755));
            let want = if m.lookup(dir, name(n)).is_some() {
                Err(libc::EEXIST)
            } else {
                Ok(())
            };
            prop_assert_eq!(got.as_ref().map(|_| ()).map_err(|e| *e), want, "{:?}", op);
            if let Ok(a) = got {
                m.inodes.insert(
                    a.ino,
                    MInode {
                        node: MNode::Dir,
                        // New directories inherit the setgid bit of their parent.
                        perm: 0o755 | (m.inodes[&dir].perm & 0o2000),
                        nlink: 2,
                        xattrs: BTreeMap::new(),
                    },
                );
                m.entries.insert((dir, name(n).to_string()), a.ino);
            }
        }
        Op::Write(f, off, len, seed) => {
            let Some(ino) = pick(&files, f) else {
                return Ok(());
            };
            let buf = data(len as usize, seed);
            let fh = h.vfs().open(ino).expect("open");
            h.vfs().write(fh, off as u64, &buf).expect("write");
            h.vfs().release(fh).expect("release");
            if let Some(MInode {
                node: MNode::File { data },
                ..
            }) = m.inodes.get_mut(&ino)
            {
                let end = off as usize + buf.len();
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[off as usize..end].copy_from_slice(&buf);
            }
        }
        Op::Truncate(f, size) => {
            let Some(ino) = pick(&files, f) else {
                return Ok(());
            };
            h.vfs()
                .setattr(
                    ino,
                    SetAttr {
                        size: Some(size as u64),
                        ..SetAttr::default()
                    },
                )
                .expect("truncate");
            if let Some(MInode {
                node: MNode::File { data },
                ..
            }) = m.inodes.get_mut(&ino)
            {
                data.resize(size as usize, 0);
            }
        }
        Op::Rename(sd, sn, dd, dn) => {
            let (sdir, ddir) = (
                pick(&dirs, sd).unwrap_or(ROOT_INO),
                pick(&dirs, dd).unwrap_or(ROOT_INO),
            );
            let got =
                errno(
                    h.vfs()
                        .rename(sdir, name(sn).as_bytes(), ddir, name(dn).as_bytes(), 0),
                );
            let want = match m.lookup(sdir, name(sn)) {
                None => Err(libc::ENOENT),
                Some(src) => {
                    let dst = m.lookup(ddir, name(dn));
                    if m.is_dir(src) && sdir != ddir && m.is_ancestor(src, ddir) {
                        Err(libc::EINVAL)
                    } else if dst == Some(src) {
                        Ok(())
                    } else {
                        match dst {
                            None => Ok(()),
                            Some(d) => match (m.is_dir(src), m.is_dir(d)) {
                                (true, false) => Err(libc::ENOTDIR),
                                (false, true) => Err(libc::EISDIR),
                                (true, true) if m.children(d) > 0 => Err(libc::ENOTEMPTY),
                                _ => Ok(()),
                            },
                        }
                    }
                }
            };
            prop_assert_eq!(got, want, "{:?}", op);
            if want.is_ok() {
                let src = m.lookup(sdir, name(sn)).expect("src");
                let dst = m.lookup(ddir, name(dn));
                if dst != Some(src) {
                    if let Some(d) = dst {
                        m.entries.remove(&(ddir, name(dn).to_string()));
                        if m.is_dir(d) {
                            m.inodes.remove(&d);
                        } else {
                            m.drop_link(d);
                        }
                    }
                    m.entries.remove(&(sdir, name(sn).to_string()));
                    m.entries.insert((ddir, name(dn).to_string()), src);
                }
            }
        }
        Op::Link(f, d, n) => {
            let Some(ino) = pick(&files, f) else {
                return Ok(());
            };
            let dir = pick(&dirs, d).unwrap_or(ROOT_INO);
            let got = errno(h.vfs().link(ino, dir, name(n).as_bytes()));
            let want = if m.lookup(dir, name(n)).is_some() {
                Err(libc::EEXIST)
            } else {
                Ok(())
            };
            prop_assert_eq!(got.as_ref().map(|_| ()).map_err(|e| *e), want, "{:?}", op);
            if want.is_ok() {
                m.entries.insert((dir, name(n).to_string()), ino);
                m.inodes.get_mut(&ino).expect("inode").nlink += 1;
            }
        }
        Op::Unlink(d, n) => {
            let dir = pick(&dirs, d).unwrap_or(ROOT_INO);
            let got = errno(h.vfs().unlink(dir, name(n).as_bytes()));
            let want = match m.lookup(dir, name(n)) {
                None => Err(libc::ENOENT),
                Some(i) if m.is_dir(i) => Err(libc::EISDIR),
                Some(_) => Ok(()),
            };
            prop_assert_eq!(got, want, "{:?}", op);
            if want.is_ok() {
                let i = m
                    .entries
                    .remove(&(dir, name(n).to_string()))
                    .expect("entry");
                m.drop_link(i);
            }
        }
        Op::Rmdir(d, n) => {
            let dir = pick(&dirs, d).unwrap_or(ROOT_INO);
            let got = errno(h.vfs().rmdir(dir, name(n).as_bytes()));
            let want = match m.lookup(dir, name(n)) {
                None => Err(libc::ENOENT),
                Some(i) if !m.is_dir(i) => Err(libc::ENOTDIR),
                Some(i) if m.children(i) > 0 => Err(libc::ENOTEMPTY),
                Some(_) => Ok(()),
            };
            prop_assert_eq!(got, want, "{:?}", op);
            if want.is_ok() {
                let i = m
                    .entries
                    .remove(&(dir, name(n).to_string()))
                    .expect("entry");
                m.inodes.remove(&i);
            }
        }
        Op::Chmod(f, mode) => {
            let all: Vec<u64> = m.inodes.keys().copied().collect();
            let Some(ino) = pick(&all, f) else {
                return Ok(());
            };
            let a = h
                .vfs()
                .setattr(
                    ino,
                    SetAttr {
                        perm: Some(mode as u32),
                        ..SetAttr::default()
                    },
                )
                .expect("chmod");
            prop_assert_eq!(a.perm, mode as u32 & 0o7777);
            m.inodes.get_mut(&ino).expect("inode").perm = mode as u32 & 0o7777;
        }
        Op::SetXattr(f, x, v) => {
            let all: Vec<u64> = m.inodes.keys().copied().collect();
            let Some(ino) = pick(&all, f) else {
                return Ok(());
            };
            let xname = format!("user.x{x}");
            h.vfs()
                .setxattr(ino, xname.as_bytes(), &[v; 3], 0)
                .expect("setxattr");
            m.inodes
                .get_mut(&ino)
                .expect("inode")
                .xattrs
                .insert(xname, vec![v; 3]);
        }
        Op::RemoveXattr(f, x) => {
            let all: Vec<u64> = m.inodes.keys().copied().collect();
            let Some(ino) = pick(&all, f) else {
                return Ok(());
            };
            let xname = format!("user.x{x}");
            let got = errno(h.vfs().removexattr(ino, xname.as_bytes()));
            let had = m
                .inodes
                .get_mut(&ino)
                .expect("inode")
                .xattrs
                .remove(&xname)
                .is_some();
            prop_assert_eq!(
                got,
                if had { Ok(()) } else { Err(libc::ENODATA) },
                "{:?}",
                op
            );
        }
        Op::Remount => h.remount(),
    }
    Ok(())
}

/// Walk the vfs from the root and compare every entry and inode with the model.
fn compare(vfs: &Vfs, m: &Model) -> Result<(), TestCaseError> {
    let mut seen = 0usize;
    let mut stack = vec![ROOT_INO];
    while let Some(dir) = stack.pop() {
        let entries: Vec<_> = vfs
            .readdir(dir, 0, 10_000)
            .expect("readdir")
            .into_iter()
            .filter(|e| e.name != b"." && e.name != b"..")
            .collect();
        prop_assert_eq!(entries.len(), m.children(dir), "entries of dir {}", dir);
        for e in entries {
            seen += 1;
            let name = String::from_utf8(e.name.clone()).expect("utf8");
            let want = m.lookup(dir, &name);
            prop_assert_eq!(Some(e.ino), want, "entry {}/{}", dir, name);
            let mi = &m.inodes[&e.ino];
            let a = vfs.getattr(e.ino).expect("getattr");
            prop_assert_eq!(a.perm, mi.perm, "perm of {}", name);
            let want_nlink = match mi.node {
                // A directory's link count is 2 plus one per subdirectory ("..").
                MNode::Dir => {
                    2 + m
                        .entries
                        .iter()
                        .filter(|((d, _), i)| *d == e.ino && m.is_dir(**i))
                        .count() as u32
                }
                MNode::File { .. } => mi.nlink,
            };
            prop_assert_eq!(a.nlink, want_nlink, "nlink of {}", name);
            let names = vfs.listxattr(e.ino).expect("listxattr");
            let want_names: Vec<u8> = mi
                .xattrs
                .keys()
                .flat_map(|k| k.bytes().chain(std::iter::once(0)))
                .collect();
            prop_assert_eq!(names, want_names, "xattrs of {}", name);
            match &mi.node {
                MNode::Dir => {
                    prop_assert_eq!(e.kind, FileKind::Dir);
                    stack.push(e.ino);
                }
                MNode::File { data } => {
                    prop_assert_eq!(e.kind, FileKind::File);
                    prop_assert_eq!(a.size, data.len() as u64, "size of {}", name);
                    prop_assert!(read_file(vfs, e.ino) == *data, "contents of {}", name);
                }
            }
        }
    }
    prop_assert_eq!(seen, m.entries.len());
    Ok(())
}

fn cases() -> u32 {
    std::env::var("CRYPTBUCKET_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn vfs_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let mut h = Harness::new();
        let mut m = Model::default();
        m.inodes.insert(ROOT_INO, MInode { node: MNode::Dir, perm: 0o755, nlink: 2, xattrs: BTreeMap::new() });
        for op in &ops {
            apply(&mut h, &mut m, op)?;
        }
        compare(h.vfs(), &m)?;
        h.remount();
        compare(h.vfs(), &m)?;
    }
}
