//! Disk cache of chunk objects exactly as stored (sealed), bounded in bytes, least recently
//! used first out. Every entry is clean (a copy of an object in the bucket), so eviction
//! never loses data; a damaged entry fails authentication when opened and is refetched.
//! Entries are `<dir>/<chunk id hex>`; the index is rebuilt from the directory at start,
//! oldest access (file mtime) first, so the cache survives restarts.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

/// Default bound of the disk cache (`--cache-size`).
pub const DEFAULT_CACHE_SIZE: u64 = 2 << 30;

pub struct DiskCache {
    dir: PathBuf,
    limit: u64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<[u8; 16], (u64, u64)>,
    lru: BTreeMap<u64, [u8; 16]>,
    bytes: u64,
    tick: u64,
}

impl Inner {
    fn touch(&mut self, id: &[u8; 16]) {
        self.tick += 1;
        let t = self.tick;
        if let Some(e) = self.map.get_mut(id) {
            self.lru.remove(&e.1);
            e.1 = t;
            self.lru.insert(t, *id);
        }
    }
}

impl DiskCache {
    pub fn open(dir: &Path, limit: u64) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for e in fs::read_dir(dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(m) = e.metadata() else { continue };
            let mut id = [0u8; 16];
            if name.len() != 32 || hex::decode_to_slice(&name, &mut id).is_err() {
                // A temporary file of an interrupted insert.
                let _ = fs::remove_file(e.path());
                continue;
            }
            let when = m.modified().ok();
            found.push((when, id, m.len()));
        }
        found.sort_by_key(|f| f.0);
        let mut inner = Inner::default();
        for (_, id, len) in found {
            inner.tick += 1;
            inner.map.insert(id, (len, inner.tick));
            inner.lru.insert(inner.tick, id);
            inner.bytes += len;
        }
        let dc = DiskCache {
            dir: dir.to_owned(),
            limit,
            inner: Mutex::new(inner),
        };
        dc.evict(0);
        Ok(dc)
    }

    fn path(&self, id: &[u8; 16]) -> PathBuf {
        self.dir.join(hex::encode(id))
    }

    pub fn contains(&self, id: &[u8; 16]) -> bool {
        self.inner.lock().map.contains_key(id)
    }

    pub fn bytes(&self) -> u64 {
        self.inner.lock().bytes
    }

    /// The bound in bytes (`--cache-size`).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes `range` of the cached object, if cached and long enough.
    pub fn read(&self, id: &[u8; 16], range: std::ops::Range<u64>) -> Option<Vec<u8>> {
        {
            let mut g = self.inner.lock();
            let len = g.map.get(id)?.0;
            if range.end > len {
                return None;
            }
            g.touch(id);
        }
        let f = fs::File::open(self.path(id)).ok()?;
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        f.read_exact_at(&mut buf, range.start).ok()?;
        Some(buf)
    }

    /// Store a whole object (written to a temporary name, then renamed: never half an entry).
    pub fn insert(&self, id: &[u8; 16], bytes: &[u8]) {
        let len = bytes.len() as u64;
        if len > self.limit / 4 || self.contains(id) {
            return;
        }
        self.evict(len);
        let path = self.path(id);
        let tmp = path.with_extension("tmp");
        let ok = fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(bytes))
            .and_then(|_| fs::rename(&tmp, &path));
        if let Err(e) = ok {
            let _ = fs::remove_file(&tmp);
            tracing::debug!("disk cache: cannot store a chunk: {e}");
            return;
        }
        let mut g = self.inner.lock();
        g.tick += 1;
        let t = g.tick;
        if let Some(old) = g.map.insert(*id, (len, t)) {
            g.lru.remove(&old.1);
            g.bytes -= old.0;
        }
        g.lru.insert(t, *id);
        g.bytes += len;
    }

    /// Drop an entry (it failed authentication, or the chunk was deleted).
    pub fn remove(&self, id: &[u8; 16]) {
        let mut g = self.inner.lock();
        if let Some((len, t)) = g.map.remove(id) {
            g.lru.remove(&t);
            g.bytes -= len;
            let _ = fs::remove_file(self.path(id));
        }
    }

    fn evict(&self, room: u64) {
        let mut g = self.inner.lock();
        while g.bytes + room > self.limit {
            let Some((_, id)) = g.lru.pop_first() else {
                break;
            };
            if let Some((len, _)) = g.map.remove(&id) {
                g.bytes -= len;
                let _ = fs::remove_file(self.path(&id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_lru_that_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), 1000).unwrap();
        for i in 0..5u8 {
            c.insert(&[i; 16], &[i; 200]);
        }
        assert_eq!(c.read(&[0; 16], 10..20), Some(vec![0; 10]));
        c.insert(&[9; 16], &[9; 200]);
        assert!(c.bytes() <= 1000);
        assert!(c.contains(&[0; 16]), "recently read entry kept");
        assert!(!c.contains(&[1; 16]), "least recently used entry evicted");
        assert_eq!(c.read(&[9; 16], 150..250), None, "past the end");
        drop(c);
        let c = DiskCache::open(dir.path(), 1000).unwrap();
        assert_eq!(c.read(&[9; 16], 0..3), Some(vec![9; 3]));
        c.remove(&[9; 16]);
        assert!(!c.contains(&[9; 16]));
    }
}
