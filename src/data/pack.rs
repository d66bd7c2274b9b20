//! Packing: small chunks that wait for an upload at the same time are sealed together as one
//! object (a pack), so an untar of thousands of small files costs a few PUTs, and reading
//! the tree back a few GETs, instead of one of each per file. A pack is an ordinary chunk
//! object (one id, one key, blocks sealed as usual); each member's reference says where
//! its bytes sit in the pack's plaintext (`ChunkRef::pack`).
//!
//! Nothing waits to fill a pack: a packer takes every small chunk queued when it starts
//! (up to one chunk size), so a lone file is uploaded at once and on its own, and a burst
//! of files that arrives while an upload runs goes out together in the next one.

use std::collections::VecDeque;

use parking_lot::Mutex;

use super::chunks::{Answer, Pending, Produce};

/// A small chunk waiting for a packer.
pub(super) struct Job {
    pub idx: u64,
    /// Plaintext length the caller expects `produce` to yield (decides what fits a pack).
    pub len: u64,
    pub produce: Produce,
    pub done: Answer,
    pub pending: Pending,
}

#[derive(Default)]
pub(super) struct PackQueue {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    jobs: VecDeque<Job>,
    /// Sum of the queued jobs' lengths.
    bytes: u64,
    /// Packers started and not yet stopped.
    running: usize,
}

impl PackQueue {
    /// Queue a job; true when the caller must start a packer: none runs, or a whole pack
    /// is waiting and fewer than `max` run (a store with slow PUTs gets parallel packs).
    pub fn push(&self, job: Job, full: u64, max: usize) -> bool {
        let mut q = self.inner.lock();
        q.bytes += job.len;
        q.jobs.push_back(job);
        let start = q.running == 0 || (q.bytes >= full && q.running < max);
        if start {
            q.running += 1;
        }
        start
    }

    /// The next batch for a running packer: queued jobs in order while they fit in `full`
    /// bytes (always at least one). None when the queue is empty, and the packer then
    /// counts as stopped (under the same lock as `push`, so no job is left without one).
    pub fn take(&self, full: u64) -> Option<Vec<Job>> {
        let mut q = self.inner.lock();
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(j) = q.jobs.front() {
            if !batch.is_empty() && bytes + j.len > full {
                break;
            }
            bytes += j.len;
            if let Some(j) = q.jobs.pop_front() {
                batch.push(j);
            }
        }
        q.bytes -= bytes;
        if batch.is_empty() {
            q.running -= 1;
            return None;
        }
        Some(batch)
    }
}

/// Split produced members into groups that each fit in `full` bytes, in order (a member
/// longer than its job said goes into a group of its own).
pub(super) fn groups<T>(
    parts: Vec<(T, std::sync::Arc<Vec<u8>>)>,
    full: u64,
) -> Vec<Vec<(T, std::sync::Arc<Vec<u8>>)>> {
    let mut out: Vec<Vec<(T, std::sync::Arc<Vec<u8>>)>> = Vec::new();
    let mut bytes = 0u64;
    for (t, d) in parts {
        let n = d.len() as u64;
        match out.last_mut() {
            Some(g) if bytes + n <= full => {
                bytes += n;
                g.push((t, d));
            }
            _ => {
                bytes = n;
                out.push(vec![(t, d)]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    fn job(len: u64) -> Job {
        Job {
            idx: 0,
            len,
            produce: Box::new(|| Ok(Arc::new(Vec::new()))),
            done: Answer::new(Box::new(|_| false)),
            pending: Pending::new(Arc::new(AtomicU64::new(1))),
        }
    }

    #[test]
    fn a_packer_starts_for_the_first_job_and_for_each_full_pack_waiting() {
        let q = PackQueue::default();
        assert!(q.push(job(10), 100, 2), "nothing runs: start one");
        assert!(
            !q.push(job(10), 100, 2),
            "one runs and less than a pack waits"
        );
        assert!(
            q.push(job(90), 100, 2),
            "a whole pack waits: a second packer"
        );
        assert!(!q.push(job(100), 100, 2), "at most two");
        let b = q.take(100).unwrap();
        assert_eq!(b.iter().map(|j| j.len).collect::<Vec<_>>(), [10, 10]);
        let b = q.take(100).unwrap();
        assert_eq!(b.iter().map(|j| j.len).collect::<Vec<_>>(), [90]);
        let b = q.take(100).unwrap();
        assert_eq!(b.iter().map(|j| j.len).collect::<Vec<_>>(), [100]);
        assert!(q.take(100).is_none());
        assert!(q.take(100).is_none());
        assert!(
            q.push(job(1), 100, 2),
            "both stopped: the next job starts one again"
        );
    }

    #[test]
    fn an_answer_is_given_once_even_when_its_job_is_dropped() {
        use std::sync::atomic::Ordering;
        let calls = Arc::new(AtomicU64::new(0));
        let errs = Arc::new(AtomicU64::new(0));
        let mk = || {
            let (c, e) = (calls.clone(), errs.clone());
            Answer::new(Box::new(move |r| {
                c.fetch_add(1, Ordering::SeqCst);
                if r.is_err() {
                    e.fetch_add(1, Ordering::SeqCst);
                }
                true
            }))
        };
        let given = mk();
        assert!(given.give(Err(crate::data::DataError::Local("x".into()))));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "given: called once, not again on drop"
        );
        // A job that unwinds (a panicking packer) drops its answer unanswered.
        drop(mk());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            errs.load(Ordering::SeqCst),
            2,
            "the dropped one got an error"
        );
    }

    #[test]
    fn groups_keep_order_and_never_exceed_a_pack() {
        let parts: Vec<(u32, Arc<Vec<u8>>)> = [40, 50, 20, 150, 5]
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u32, Arc::new(vec![0u8; *n])))
            .collect();
        let g = groups(parts, 100);
        let ids: Vec<Vec<u32>> = g.iter().map(|g| g.iter().map(|p| p.0).collect()).collect();
        assert_eq!(ids, vec![vec![0, 1], vec![2], vec![3], vec![4]]);
    }
}
