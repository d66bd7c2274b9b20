//! Desktop notifications (`--notify`): tell the person at the desk when the mount hits a
//! problem it cannot fix by retrying — the store unreachable for minutes, commits failing,
//! the writer lease lost, the final flush failing. Sent through `notify-send` (libnotify)
//! when it is installed; without it the log says so once and nothing else changes.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Default time the store must keep failing before we notify.
const UNREACHABLE_AFTER: Duration = Duration::from_secs(120);

/// Failed periodic commits in a row before we notify (30 s apart: about a minute).
const COMMIT_FAILURES: u32 = 2;

/// Problems we notify about, each at most once until it clears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    Unreachable,
    Commit,
    Lease,
}

pub struct Notifier {
    enabled: bool,
    mountpoint: PathBuf,
    log: Option<PathBuf>,
    active: Vec<Problem>,
    commit_failures: u32,
    missing_told: bool,
}

/// The unreachable threshold; CRYPTBUCKET_TEST_NOTIFY_AFTER_MS shortens it in tests.
pub fn unreachable_after() -> Duration {
    std::env::var("CRYPTBUCKET_TEST_NOTIFY_AFTER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(UNREACHABLE_AFTER)
}

impl Notifier {
    pub fn new(enabled: bool, mountpoint: PathBuf, log: Option<PathBuf>) -> Notifier {
        Notifier {
            enabled,
            mountpoint,
            log,
            active: Vec::new(),
            commit_failures: 0,
            missing_told: false,
        }
    }

    fn where_to_look(&self) -> String {
        match &self.log {
            Some(l) => format!("Details: {}", l.display()),
            None => "Details: the daemon's log".into(),
        }
    }

    /// The store's state as seen by the last requests: `failing` is how long every request
    /// has failed, with the last error.
    pub fn store_state(&mut self, failing: Option<(Duration, String)>) {
        match failing {
            Some((d, err)) if d >= unreachable_after() => {
                let body = format!(
                    "{}: the store has not answered for {}s ({err}). New writes wait in the local cache and are uploaded when it is back. {}",
                    self.mountpoint.display(),
                    d.as_secs(),
                    self.where_to_look()
                );
                self.raise(
                    Problem::Unreachable,
                    "cryptbucket: store unreachable",
                    &body,
                );
            }
            Some(_) => {}
            None => {
                if self.clear(Problem::Unreachable) {
                    let body = format!("{}: the store answers again.", self.mountpoint.display());
                    self.send("cryptbucket: store reachable again", &body, "normal");
                }
            }
        }
    }

    pub fn commit_result(&mut self, err: Option<&str>) {
        match err {
            Some(e) => {
                self.commit_failures += 1;
                if self.commit_failures >= COMMIT_FAILURES {
                    let body = format!(
                        "{}: changes could not be committed to the store {} times in a row ({e}). They are kept locally and retried. {}",
                        self.mountpoint.display(),
                        self.commit_failures,
                        self.where_to_look()
                    );
                    self.raise(Problem::Commit, "cryptbucket: commits failing", &body);
                }
            }
            None => {
                self.commit_failures = 0;
                self.clear(Problem::Commit);
            }
        }
    }

    pub fn lease_result(&mut self, err: Option<&str>) {
        match err {
            Some(e) => {
                let body = format!(
                    "{}: could not renew the writer lease ({e}); another machine may take the volume over. {}",
                    self.mountpoint.display(),
                    self.where_to_look()
                );
                self.raise(Problem::Lease, "cryptbucket: writer lease at risk", &body);
            }
            None => {
                self.clear(Problem::Lease);
            }
        }
    }

    /// A failure with no retry left (the final flush).
    pub fn fatal(&mut self, summary: &str, detail: &str) {
        let body = format!(
            "{}: {detail}. {}",
            self.mountpoint.display(),
            self.where_to_look()
        );
        self.send(summary, &body, "critical");
    }

    fn raise(&mut self, p: Problem, summary: &str, body: &str) {
        if self.active.contains(&p) {
            return;
        }
        tracing::error!("{body}");
        self.active.push(p);
        self.send(summary, body, "critical");
    }

    fn clear(&mut self, p: Problem) -> bool {
        let was = self.active.contains(&p);
        self.active.retain(|x| *x != p);
        was
    }

    fn send(&mut self, summary: &str, body: &str, urgency: &str) {
        if !self.enabled {
            return;
        }
        let res = Command::new("notify-send")
            .arg("--app-name=cryptbucket")
            .arg(format!("--urgency={urgency}"))
            .arg("--icon=drive-harddisk")
            .arg(summary)
            .arg(body)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match res {
            Ok(mut child) => {
                // Reap it in the background; a hung notification daemon must not stall us.
                std::thread::spawn(move || child.wait());
            }
            Err(e) if !self.missing_told => {
                self.missing_told = true;
                tracing::warn!(
                    "--notify is on but notify-send cannot run ({e}); install libnotify-bin (Debian/Ubuntu) or libnotify (Fedora/Arch) for desktop notifications"
                );
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_each_problem_once_until_it_clears() {
        let mut n = Notifier::new(false, "/mnt/x".into(), None);
        let long = Some((Duration::from_secs(600), "timeout".to_string()));
        n.store_state(Some((Duration::from_secs(1), "timeout".into())));
        assert!(
            n.active.is_empty(),
            "a short outage is not worth a notification"
        );
        n.store_state(long.clone());
        n.store_state(long.clone());
        assert_eq!(n.active, vec![Problem::Unreachable]);
        n.store_state(None);
        assert!(n.active.is_empty());
        n.commit_result(Some("boom"));
        assert!(n.active.is_empty(), "one failed commit is retried quietly");
        n.commit_result(Some("boom"));
        assert_eq!(n.active, vec![Problem::Commit]);
        n.commit_result(None);
        assert!(n.active.is_empty());
    }
}
