//! The upload pool: a few plain threads taking sealed-chunk uploads from one queue.
//!
//! Each upload used to be a runtime task that took a permit and then hopped to the blocking
//! pool: three thread wake-ups per chunk, the first paid by the FUSE thread at close(). On
//! this VM a wake-up of an idle CPU is an IPI and a VM exit, and an untar of small files
//! spent a fifth of the daemon's CPU on them. Here a job wakes a thread only when one is
//! idle, and a busy worker takes the next job without sleeping; threads are started as the
//! queue needs them, up to the limit.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

type Job = Box<dyn FnOnce() + Send>;

pub struct UploadPool {
    shared: Arc<Shared>,
    max: usize,
}

struct Shared {
    q: Mutex<Queue>,
    cv: Condvar,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    threads: usize,
    idle: usize,
    closed: bool,
}

impl UploadPool {
    pub fn new(max: usize) -> Self {
        UploadPool {
            shared: Arc::new(Shared {
                q: Mutex::new(Queue::default()),
                cv: Condvar::new(),
            }),
            max: max.max(1),
        }
    }

    /// Run `job` on a worker, in submission order as workers free up.
    pub fn submit(&self, job: Job) {
        let mut q = self.shared.q.lock();
        q.jobs.push_back(job);
        if q.idle > 0 {
            self.shared.cv.notify_one();
            return;
        }
        if q.threads >= self.max {
            return;
        }
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("cb-upload".into())
            .spawn(move || work(&shared));
        match spawned {
            Ok(_) => q.threads += 1,
            Err(e) if q.threads == 0 => {
                // No worker at all: run it here rather than never.
                tracing::error!("could not start an upload thread: {e}");
                let job = q.jobs.pop_back();
                drop(q);
                if let Some(job) = job {
                    job();
                }
            }
            Err(e) => tracing::warn!("could not start another upload thread: {e}"),
        }
    }
}

fn work(shared: &Shared) {
    let mut q = shared.q.lock();
    loop {
        if let Some(job) = q.jobs.pop_front() {
            drop(q);
            // A panicking job (a bug) must not take the worker, and its count, with it.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                tracing::error!("an upload job panicked");
            }
            q = shared.q.lock();
            continue;
        }
        if q.closed {
            q.threads -= 1;
            return;
        }
        q.idle += 1;
        shared.cv.wait(&mut q);
        q.idle -= 1;
    }
}

impl Drop for UploadPool {
    /// Workers finish the queue, then exit.
    fn drop(&mut self) {
        self.shared.q.lock().closed = true;
        self.shared.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    #[test]
    fn runs_every_job_with_at_most_max_threads() {
        let pool = UploadPool::new(3);
        let done = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        for _ in 0..50 {
            let (done, running, peak) = (done.clone(), running.clone(), peak.clone());
            pool.submit(Box::new(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
                running.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        let t = Instant::now();
        while done.load(Ordering::SeqCst) < 50 && t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(done.load(Ordering::SeqCst), 50);
        let p = peak.load(Ordering::SeqCst);
        assert!((1..=3).contains(&p), "peak concurrency {p}");
        assert!(pool.shared.q.lock().threads <= 3);
    }

    #[test]
    fn workers_exit_after_the_pool_is_dropped_and_the_queue_is_done() {
        let pool = UploadPool::new(2);
        let shared = pool.shared.clone();
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..4 {
            let done = done.clone();
            pool.submit(Box::new(move || {
                std::thread::sleep(Duration::from_millis(5));
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        drop(pool);
        let t = Instant::now();
        while shared.q.lock().threads > 0 && t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(done.load(Ordering::SeqCst), 4, "queued jobs still run");
        assert_eq!(shared.q.lock().threads, 0);
    }
}
