//! Read-ahead buffer: sealed chunks downloaded ahead of a sequential reader, held in memory
//! (bounded in bytes) until the reader reaches them. A stream does not go through the disk
//! cache: writing every streamed byte to disk and reading it back cost a third of the
//! daemon's CPU, and a long stream would evict the disk cache's useful entries (scan
//! resistance, like a page cache's use-once policy).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

/// Bytes of sealed chunks held ahead of readers (16 default chunks).
pub const AHEAD_LIMIT: u64 = 64 << 20;

/// A chunk not read for this long is dropped when room is needed (an abandoned stream).
const STALE: Duration = Duration::from_secs(30);

struct Entry {
    sealed: Bytes,
    /// When a reader last used it; None while nobody has.
    used: Option<u64>,
    since: Instant,
}

#[derive(Default)]
struct State {
    ready: HashMap<[u8; 16], Entry>,
    loading: HashSet<[u8; 16]>,
    /// Ready plus reserved for loads in flight.
    bytes: u64,
    clock: u64,
}

impl State {
    /// A downloaded chunk for a reader, marked as just used (it stays until room is needed).
    fn take(&mut self, id: &[u8; 16]) -> Option<Bytes> {
        self.clock += 1;
        let now = self.clock;
        let e = self.ready.get_mut(id)?;
        e.used = Some(now);
        Some(e.sealed.clone())
    }

    /// Make room for `len` more bytes by dropping chunks a reader has moved past (least
    /// recently used first) or that nobody came for.
    fn make_room(&mut self, len: u64) -> bool {
        while self.bytes + len > AHEAD_LIMIT {
            let victim = self
                .ready
                .iter()
                .filter_map(|(id, e)| match e.used {
                    Some(t) => Some((t, *id)),
                    None if e.since.elapsed() > STALE => Some((0, *id)),
                    None => None,
                })
                .min();
            let Some((_, id)) = victim else {
                return false;
            };
            if let Some(e) = self.ready.remove(&id) {
                self.bytes = self.bytes.saturating_sub(e.sealed.len() as u64);
            }
        }
        true
    }
}

#[derive(Default)]
pub struct Ahead {
    st: Mutex<State>,
    cv: Condvar,
}

impl Ahead {
    /// Reserve room for a download of `len` bytes of chunk `id`; false when it is already
    /// here or on its way, or the buffer is full of chunks not read yet.
    pub fn start(&self, id: &[u8; 16], len: u64) -> bool {
        let mut st = self.st.lock();
        if st.ready.contains_key(id) || st.loading.contains(id) || !st.make_room(len) {
            return false;
        }
        st.loading.insert(*id);
        st.bytes += len;
        true
    }

    /// A download started with `start(id, len)` finished: `got` is the sealed chunk (`len`
    /// bytes), or None when it failed (the reader then fetches it itself and reports why).
    pub fn finish(&self, id: &[u8; 16], len: u64, got: Option<Bytes>) {
        let mut st = self.st.lock();
        st.loading.remove(id);
        match got {
            Some(sealed) => {
                let e = Entry {
                    sealed,
                    used: None,
                    since: Instant::now(),
                };
                st.ready.insert(*id, e);
            }
            None => st.bytes = st.bytes.saturating_sub(len),
        }
        self.cv.notify_all();
    }

    /// The sealed chunk `id` if it was read ahead, waiting for a download in flight. It stays
    /// (other reads of the same chunk arrive at once) until room is needed.
    pub fn get(&self, id: &[u8; 16]) -> Option<Bytes> {
        let mut st = self.st.lock();
        while st.loading.contains(id) {
            // The download has its own retry deadline; the timeout only re-checks.
            self.cv.wait_for(&mut st, Duration::from_secs(1));
        }
        st.take(id)
    }

    /// `get` without waiting: None also while the download is in flight.
    pub fn get_ready(&self, id: &[u8; 16]) -> Option<Bytes> {
        let mut st = self.st.lock();
        if st.loading.contains(id) {
            return None;
        }
        st.take(id)
    }

    /// Drop a chunk (deleted, or found damaged).
    pub fn forget(&self, id: &[u8; 16]) {
        let mut st = self.st.lock();
        if let Some(e) = st.ready.remove(id) {
            st.bytes = st.bytes.saturating_sub(e.sealed.len() as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_evicts_what_readers_passed() {
        let a = Ahead::default();
        let (x, y, z) = ([1; 16], [2; 16], [3; 16]);
        let half = AHEAD_LIMIT / 2;
        assert!(a.start(&x, half));
        assert!(!a.start(&x, 1), "already loading");
        a.finish(&x, half, Some(Bytes::from(vec![7; half as usize])));
        assert!(a.start(&y, half));
        assert!(!a.start(&z, half), "full of chunks nobody read yet");
        a.finish(&y, half, None);
        assert!(a.get(&y).is_none(), "a failed load is not served");
        assert_eq!(a.get(&x).map(|b| b.len() as u64), Some(half));
        assert!(
            a.get(&x).is_some(),
            "served again to the next read of the chunk"
        );
        assert!(a.start(&y, half), "a failed load freed its room");
        a.finish(&y, half, Some(Bytes::from(vec![8; half as usize])));
        assert!(a.start(&z, half), "x was read: it makes room");
        assert!(a.get(&x).is_none());
        assert!(a.get(&y).is_some());
    }
}
