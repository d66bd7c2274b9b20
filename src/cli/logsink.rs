//! The daemon's log writer. A background daemon's stderr is a pipe to the `mount` command
//! until the mount is ready, and the log file after that. Lines logged before then (unlock,
//! lease, warnings) go to the pipe, so a failed mount shows them, and are also kept here, so
//! the log file starts with them instead of losing them.

use std::io::Write;

use parking_lot::Mutex;

/// Most bytes kept (a `RUST_LOG=trace` start against S3 logs a lot).
const CAP: usize = 4 << 20;

/// Some while capturing. Held while writing, so no line lands between the switch of stderr
/// and the replay.
static CAPTURE: Mutex<Option<Vec<u8>>> = Mutex::new(None);

/// Keep a copy of every log line from now on (the background daemon, before it is ready).
pub fn start_capture() {
    *CAPTURE.lock() = Some(Vec::new());
}

/// The tracing writer: stderr, plus the copy while capturing.
pub struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut g = CAPTURE.lock();
        if let Some(v) = g.as_mut() {
            if v.len() + buf.len() <= CAP {
                v.extend_from_slice(buf);
            }
        }
        // The parent may have gone (it exits once the mount is ready): the line is kept above.
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Point stderr elsewhere with `redirect` (the log file), then write what was captured
/// into it, and stop capturing.
pub fn switch(redirect: impl FnOnce() -> std::io::Result<()>) -> std::io::Result<()> {
    let mut g = CAPTURE.lock();
    redirect()?;
    if let Some(v) = g.take() {
        std::io::stderr().write_all(&v)?;
    }
    Ok(())
}
