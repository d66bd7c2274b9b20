use std::{
    fs::File,
    io,
    os::{
        fd::{AsFd, BorrowedFd},
        unix::prelude::AsRawFd,
    },
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use libc::{c_int, c_void, size_t};

use crate::reply::ReplySender;

/// cryptbucket: how long `Channel::receive` keeps polling a non-blocking device after the
/// last request before it sleeps.
static RECEIVE_SPIN_NS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// cryptbucket: this thread sent a reply since its last `receive`.
    static REPLIED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// cryptbucket: set the time a session reading a non-blocking `/dev/fuse` keeps polling for
/// the next request before it sleeps in poll(2). Has no effect on a blocking device.
pub fn set_receive_spin(spin: Duration) {
    let ns = u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX);
    RECEIVE_SPIN_NS.store(ns, Ordering::Relaxed);
}

/// A raw communication channel to the FUSE kernel driver
#[derive(Debug)]
pub struct Channel(Arc<File>);

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Channel {
    /// Create a new communication channel to the kernel driver by mounting the
    /// given path. The kernel driver will delegate filesystem operations of
    /// the given path to the channel.
    pub(crate) fn new(device: Arc<File>) -> Self {
        Self(device)
    }

    /// Receives data up to the capacity of the given buffer (can block).
    ///
    /// cryptbucket: on a non-blocking device, keep reading for the spin time set with
    /// `set_receive_spin`, then sleep in poll(2) until a request is ready. Only after a
    /// request this thread answered itself: its caller is likely to ask again at once,
    /// while one handed to another thread is answered later (and that thread needs the CPU).
    pub fn receive(&self, buffer: &mut [u8]) -> io::Result<usize> {
        let spin = if REPLIED.with(|r| r.replace(false)) {
            Duration::from_nanos(RECEIVE_SPIN_NS.load(Ordering::Relaxed))
        } else {
            Duration::ZERO
        };
        let mut idle_since: Option<Instant> = None;
        loop {
            match self.read_once(buffer) {
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                r => return r,
            }
            if idle_since.get_or_insert_with(Instant::now).elapsed() < spin {
                std::hint::spin_loop();
                continue;
            }
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // An unmount wakes it too (POLLERR); the next read then fails with ENODEV.
            if unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }

    fn read_once(&self, buffer: &mut [u8]) -> io::Result<usize> {
        let rc = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                buffer.as_ptr() as *mut c_void,
                buffer.len() as size_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as usize)
        }
    }

    /// Returns a sender object for this channel. The sender object can be
    /// used to send to the channel. Multiple sender objects can be used
    /// and they can safely be sent to other threads.
    pub fn sender(&self) -> ChannelSender {
        // Since write/writev syscalls are threadsafe, we can simply create
        // a sender by using the same file and use it in other threads.
        ChannelSender(self.0.clone())
    }
}

#[derive(Clone, Debug)]
pub struct ChannelSender(Arc<File>);

impl ReplySender for ChannelSender {
    fn send(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<()> {
        let rc = unsafe {
            libc::writev(
                self.0.as_raw_fd(),
                bufs.as_ptr() as *const libc::iovec,
                bufs.len() as c_int,
            )
        };
        REPLIED.with(|r| r.set(true));
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            debug_assert_eq!(bufs.iter().map(|b| b.len()).sum::<usize>(), rc as usize);
            Ok(())
        }
    }
}
