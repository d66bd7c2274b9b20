//! A small thread pool: up to a fixed number of named threads taking jobs from one queue.
//! The FUSE adapter answers requests from one, the write-back uploads run on another.
//!
//! A job wakes a thread only when one is idle, and a busy thread takes the next job without
//! sleeping; threads are started as the queue needs them, up to the limit. (On this VM a
//! wake-up of an idle CPU is an IPI and a VM exit. Uploads used to be a runtime task plus a
//! blocking-pool hop, three wake-ups per chunk; a shared `Mutex<Receiver>` woke two threads
//! per FUSE request.) If no thread can be started at all, jobs run on the caller's thread
//! rather than never.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

type Job = Box<dyn FnOnce() + Send>;

pub struct Pool {
    shared: Arc<Shared>,
    name: &'static str,
    max: usize,
    nice: i32,
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

impl Pool {
    /// A pool of at most `max` threads named `name-N`.
    pub fn new(name: &'static str, max: usize) -> Self {
        Pool {
            shared: Arc::new(Shared {
                q: Mutex::new(Queue::default()),
                cv: Condvar::new(),
            }),
            name,
            max: max.max(1),
            nice: 0,
        }
    }

    /// Threads run `nice` steps below the process's priority (background work: on a
    /// 2-core machine, uploads at the FUSE thread's priority made every metadata request
    /// of an untar wait behind them).
    pub fn with_nice(mut self, nice: i32) -> Self {
        self.nice = nice;
        self
    }

    /// Run `job` on a pool thread, in submission order as threads free up.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        let mut q = self.shared.q.lock();
        q.jobs.push_back(Box::new(job));
        if q.idle > 0 {
            self.shared.cv.notify_one();
            return;
        }
        if q.threads >= self.max {
            return;
        }
        let (shared, nice) = (self.shared.clone(), self.nice);
        let spawned = std::thread::Builder::new()
            .name(format!("{}-{}", self.name, q.threads))
            .spawn(move || {
                set_nice(nice);
                work(&shared)
            });
        match spawned {
            Ok(_) => q.threads += 1,
            Err(e) if q.threads == 0 => {
                // No worker at all: run it here rather than never.
                tracing::error!("could not start a {} thread: {e}", self.name);
                let job = q.jobs.pop_back();
                drop(q);
                if let Some(job) = job {
                    job();
                }
            }
            Err(e) => tracing::warn!("could not start another {} thread: {e}", self.name),
        }
    }
}

/// Lower the calling thread's priority to `nice` steps below the process's (its main
/// thread's): a worker started from another niced worker (a retried upload) must not
/// compound the two. Linux's nice is per thread: other threads keep theirs.
fn set_nice(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: getpid, gettid, getpriority and setpriority have no memory preconditions;
    // errno is cleared first because -1 is also a valid priority.
    let rc = unsafe {
        *libc::__errno_location() = 0;
        let base = libc::getpriority(libc::PRIO_PROCESS, libc::getpid() as libc::id_t);
        if base == -1 && *libc::__errno_location() != 0 {
            -1
        } else {
            let tid = libc::gettid() as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, (base + nice).min(19))
        }
    };
    if rc != 0 {
        tracing::debug!(
            "cannot lower a pool thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn work(shared: &Shared) {
    let mut q = shared.q.lock();
    loop {
        if let Some(job) = q.jobs.pop_front() {
            drop(q);
            // A panicking job (a bug) must not take the thread, and its count, with it.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                tracing::error!("a job of the thread pool panicked");
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

impl Drop for Pool {
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

    fn nice_of_this_thread() -> i32 {
        // SAFETY: getpriority/gettid have no memory preconditions.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[test]
    fn threads_run_below_the_process_priority() {
        let before = nice_of_this_thread();
        let pool = Pool::new("test-nice", 1).with_nice(7);
        let (tx, rx) = std::sync::mpsc::channel();
        pool.run(move || {
            let _ = tx.send(nice_of_this_thread());
        });
        let n = rx.recv_timeout(Duration::from_secs(20)).expect("job ran");
        // Lowering the priority needs no privilege, so it must have taken.
        assert_eq!(n, (before + 7).min(19));
        assert_eq!(
            nice_of_this_thread(),
            before,
            "only the pool's threads change"
        );
    }

    #[test]
    fn runs_every_job_with_at_most_max_threads() {
        let pool = Pool::new("test", 3);
        let done = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        for _ in 0..50 {
            let (done, running, peak) = (done.clone(), running.clone(), peak.clone());
            pool.run(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
                running.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
            });
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
        let pool = Pool::new("test", 2);
        let shared = pool.shared.clone();
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..4 {
            let done = done.clone();
            pool.run(move || {
                std::thread::sleep(Duration::from_millis(5));
                done.fetch_add(1, Ordering::SeqCst);
            });
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
