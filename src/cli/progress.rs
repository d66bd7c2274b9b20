//! Progress for long operations (unmount waiting for uploads, fsck, gc, rekey, journal
//! replay): a bar with rate and ETA on a terminal, plain periodic lines otherwise (logs,
//! systemd, pipes), nothing with `-q`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;

/// What the counted units are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    #[allow(dead_code)] // fsck, gc and rekey count items as they land
    Items,
}

/// How often a non-terminal prints a line.
const LINE_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    bar: Option<ProgressBar>,
    plain: Option<Mutex<Plain>>,
    label: String,
    unit: Unit,
}

struct Plain {
    start: Instant,
    last: Instant,
    pos: u64,
    len: u64,
}

impl Progress {
    /// A progress display for `total` units (0 = unknown). Draws to stderr.
    pub fn new(label: &str, total: u64, unit: Unit) -> Progress {
        Self::with_mode(label, total, unit, std::io::stderr().is_terminal())
    }

    /// As `new`, choosing terminal (`true`) or plain-line output explicitly.
    pub fn with_mode(label: &str, total: u64, unit: Unit, terminal: bool) -> Progress {
        let label = label.to_string();
        if super::ui::quiet() {
            return Progress {
                bar: None,
                plain: None,
                label,
                unit,
            };
        }
        if terminal {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let counts = match unit {
                Unit::Bytes => "{bytes}/{total_bytes} ({bytes_per_sec}",
                Unit::Items => "{human_pos}/{human_len} ({per_sec}",
            };
            let template = format!("{{msg}} [{{bar:30}}] {counts}, ETA {{eta}})");
            if let Ok(style) = ProgressStyle::with_template(&template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.clone());
            bar.enable_steady_tick(Duration::from_millis(200));
            return Progress {
                bar: Some(bar),
                plain: None,
                label,
                unit,
            };
        }
        let now = Instant::now();
        Progress {
            bar: None,
            plain: Some(Mutex::new(Plain {
                start: now,
                last: now,
                pos: 0,
                len: total,
            })),
            label,
            unit,
        }
    }

    #[allow(dead_code)] // for fsck, gc and rekey as they land
    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
        if let Some(p) = &self.plain {
            let mut p = p.lock();
            p.pos += n;
            self.maybe_line(&mut p);
        }
    }

    #[allow(dead_code)] // for unmount and rekey progress
    pub fn set_position(&self, pos: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
        }
        if let Some(p) = &self.plain {
            let mut p = p.lock();
            p.pos = pos;
            self.maybe_line(&mut p);
        }
    }

    #[allow(dead_code)] // for unmount and rekey progress
    pub fn set_length(&self, len: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(len);
        }
        if let Some(p) = &self.plain {
            p.lock().len = len;
        }
    }

    /// Print a line above the bar (or as a plain line).
    #[allow(dead_code)] // for fsck, gc and rekey as they land
    pub fn println(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(msg),
            None if !super::ui::quiet() => eprintln!("{msg}"),
            None => {}
        }
    }

    /// Remove the bar and print a final summary line.
    pub fn finish(&self, msg: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if !super::ui::quiet() {
            eprintln!("{}: {msg}", self.label);
        }
    }

    fn maybe_line(&self, p: &mut Plain) {
        let now = Instant::now();
        if now.duration_since(p.last) < LINE_EVERY {
            return;
        }
        p.last = now;
        eprintln!(
            "{}",
            plain_line(&self.label, self.unit, p.pos, p.len, now - p.start)
        );
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

fn fmt_units(unit: Unit, n: u64) -> String {
    match unit {
        Unit::Bytes => HumanBytes(n).to_string(),
        Unit::Items => n.to_string(),
    }
}

/// "fsck: 1200/5000 (24%), 300/s, ETA 13s" — the line a log or pipe gets.
fn plain_line(label: &str, unit: Unit, pos: u64, len: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = pos as f64 / secs;
    let rate_s = match unit {
        Unit::Bytes => format!("{}/s", HumanBytes(rate as u64)),
        Unit::Items => format!("{rate:.0}/s"),
    };
    if len == 0 {
        return format!("{label}: {} done, {rate_s}", fmt_units(unit, pos));
    }
    let pct = pos.saturating_mul(100) / len;
    let eta = if rate > 0.0 && len > pos {
        format!(", ETA {}s", ((len - pos) as f64 / rate).ceil() as u64)
    } else {
        String::new()
    };
    format!(
        "{label}: {}/{} ({pct}%), {rate_s}{eta}",
        fmt_units(unit, pos),
        fmt_units(unit, len)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_line_reports_rate_and_eta() {
        let l = plain_line("fsck", Unit::Items, 100, 400, Duration::from_secs(10));
        assert_eq!(l, "fsck: 100/400 (25%), 10/s, ETA 30s");
        let l = plain_line("gc", Unit::Items, 7, 0, Duration::from_secs(1));
        assert_eq!(l, "gc: 7 done, 7/s");
        let l = plain_line(
            "unmount",
            Unit::Bytes,
            1 << 20,
            4 << 20,
            Duration::from_secs(1),
        );
        assert!(l.starts_with("unmount: 1.00 MiB/4.00 MiB (25%)"), "{l}");
        assert!(l.ends_with("ETA 3s"), "{l}");
    }
}
