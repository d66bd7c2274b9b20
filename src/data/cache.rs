//! Memory cache of opened (plaintext) blocks, bounded in bytes, least recently used first out.

use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

type Key = ([u8; 16], u32);

pub struct BlockCache {
    inner: Mutex<Inner>,
}

struct Inner {
    lru: LruCache<Key, Arc<Vec<u8>>>,
    bytes: usize,
    limit: usize,
}

impl BlockCache {
    pub fn new(limit_bytes: usize) -> Self {
        BlockCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
                limit: limit_bytes,
            }),
        }
    }

    pub fn get(&self, chunk: &[u8; 16], block: u32) -> Option<Arc<Vec<u8>>> {
        self.inner.lock().lru.get(&(*chunk, block)).cloned()
    }

    pub fn insert(&self, chunk: [u8; 16], block: u32, data: Arc<Vec<u8>>) {
        let mut g = self.inner.lock();
        if data.len() > g.limit {
            return;
        }
        g.bytes += data.len();
        if let Some(old) = g.lru.put((chunk, block), data) {
            g.bytes -= old.len();
        }
        while g.bytes > g.limit {
            match g.lru.pop_lru() {
                Some((_, v)) => g.bytes -= v.len(),
                None => break,
            }
        }
    }

    /// Drop every block of a chunk (it was deleted or replaced).
    pub fn forget_chunk(&self, chunk: &[u8; 16]) {
        let mut g = self.inner.lock();
        let keys: Vec<Key> = g
            .lru
            .iter()
            .filter(|(k, _)| &k.0 == chunk)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some(v) = g.lru.pop(&k) {
                g.bytes -= v.len();
            }
        }
    }

    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_to_stay_within_limit() {
        let c = BlockCache::new(100);
        for i in 0..10u32 {
            c.insert([0; 16], i, Arc::new(vec![0; 30]));
        }
        assert!(c.bytes() <= 100);
        assert!(c.get(&[0; 16], 9).is_some());
        assert!(c.get(&[0; 16], 0).is_none());
        c.forget_chunk(&[0; 16]);
        assert_eq!(c.bytes(), 0);
    }
}
