//! Recycled buffers for object bodies.
//!
//! A streamed read downloads one chunk object (4 MiB by default) after another, and each
//! body used to be a fresh allocation: glibc hands memory that size back to the kernel when
//! it is freed, so every download faulted its pages in again (about a third of a 1 GiB
//! stream's pages, ~10 % of the daemon's CPU in a cold S3 read). A body taken from here goes
//! back when the last `Bytes` that points into it is dropped, and the next download fills
//! pages that are already resident.

use std::sync::OnceLock;

use bytes::Bytes;
use parking_lot::Mutex;

/// Bodies smaller than this are ordinary allocations (malloc keeps and reuses those).
const MIN_POOLED: usize = 256 << 10;
/// Most bytes kept idle in the pool: a read-ahead window's worth of downloads in turn.
const MAX_IDLE_BYTES: usize = 32 << 20;
/// Bigger buffers are not kept (one would take half the idle budget).
const MAX_POOLED: usize = 16 << 20;
/// New buffers are rounded up to this, so bodies of padded, slightly different sizes fit
/// each other's buffers.
const ROUND: usize = 64 << 10;

pub(crate) struct BufPool {
    free: Mutex<Vec<Vec<u8>>>,
    max_idle: usize,
}

impl BufPool {
    const fn new(max_idle: usize) -> Self {
        BufPool {
            free: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    /// An empty buffer with room for `len` bytes: the smallest idle one that fits, or a
    /// new one.
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        if len < MIN_POOLED {
            return Vec::with_capacity(len);
        }
        let mut free = self.free.lock();
        // At most a quarter more than asked: memory is accounted by body length (the
        // read-ahead bound), so a much bigger buffer would be memory nobody counts.
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len && b.capacity() <= len + len / 4)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        match best {
            Some(i) => free.swap_remove(i),
            None => Vec::with_capacity(len.div_ceil(ROUND) * ROUND),
        }
    }

    fn give(&self, mut buf: Vec<u8>) {
        if !(MIN_POOLED..=MAX_POOLED).contains(&buf.capacity()) {
            return;
        }
        buf.clear();
        let mut free = self.free.lock();
        let idle: usize = free.iter().map(Vec::capacity).sum();
        if idle + buf.capacity() <= self.max_idle {
            free.push(buf);
        }
    }

    #[cfg(test)]
    fn idle_bytes(&self) -> usize {
        self.free.lock().iter().map(Vec::capacity).sum()
    }
}

/// The pool every store's bodies come from.
pub(crate) fn pool() -> &'static BufPool {
    static POOL: OnceLock<BufPool> = OnceLock::new();
    POOL.get_or_init(|| BufPool::new(MAX_IDLE_BYTES))
}

/// Owner of a body: gives the buffer back when the last `Bytes` using it is dropped.
struct Pooled {
    buf: Vec<u8>,
    pool: &'static BufPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

/// `buf` as `Bytes` whose memory returns to the pool after use.
pub(crate) fn freeze(buf: Vec<u8>) -> Bytes {
    freeze_into(pool(), buf)
}

fn freeze_into(pool: &'static BufPool, buf: Vec<u8>) -> Bytes {
    if buf.capacity() < MIN_POOLED {
        return Bytes::from(buf);
    }
    Bytes::from_owner(Pooled { buf, pool })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaked(max_idle: usize) -> &'static BufPool {
        Box::leak(Box::new(BufPool::new(max_idle)))
    }

    #[test]
    fn a_body_returns_its_buffer_when_its_last_slice_is_dropped() {
        let p = leaked(8 << 20);
        let mut b = p.take(3 << 20);
        assert_eq!(b.capacity(), 3 << 20);
        b.extend_from_slice(&vec![7u8; 3 << 20]);
        let ptr = b.as_ptr();
        let bytes = freeze_into(p, b);
        let part = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(p.idle_bytes(), 0, "a slice still uses the buffer");
        assert_eq!(&part[..], &[7u8; 10]);
        drop(part);
        assert_eq!(p.idle_bytes(), 3 << 20);
        // The next body that fits gets the same memory, empty.
        let again = p.take((3 << 20) - 5);
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty());
        assert_eq!(p.idle_bytes(), 0);
    }

    #[test]
    fn idle_memory_is_bounded_and_small_bodies_are_not_pooled() {
        let p = leaked(8 << 20);
        let bodies: Vec<Bytes> = (0..4)
            .map(|_| {
                let mut b = p.take(3 << 20);
                b.resize(3 << 20, 1);
                freeze_into(p, b)
            })
            .collect();
        drop(bodies);
        assert_eq!(
            p.idle_bytes(),
            6 << 20,
            "only what fits under the bound is kept"
        );
        // The smallest buffer that fits is picked, not the first.
        p.give(Vec::with_capacity(1 << 20));
        assert_eq!(p.take(1 << 20).capacity(), 1 << 20);
        let small = p.take(1000);
        assert!(small.capacity() < MIN_POOLED);
        drop(freeze_into(p, small));
        assert_eq!(p.idle_bytes(), 6 << 20);
        // A buffer much bigger than the body is not handed out, nor a huge one kept.
        assert_eq!(
            p.take(1 << 20).capacity(),
            1 << 20,
            "a new one, not a 3 MiB one"
        );
        assert_eq!(p.idle_bytes(), 6 << 20);
        p.give(Vec::with_capacity(MAX_POOLED + 1));
        assert_eq!(p.idle_bytes(), 6 << 20);
    }
}
