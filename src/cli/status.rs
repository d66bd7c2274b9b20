//! `cryptbucket status [MOUNTPOINT] [--json]`: ask live mounts through their control sockets.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::Args;

use super::control::{self, LeaseReport, Status};
use super::mount::runtime_dir;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// A mountpoint (default: every live mount of this user).
    pub mountpoint: Option<PathBuf>,
    /// Machine-readable output: one JSON object for MOUNTPOINT, else a JSON array.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: StatusArgs) -> Result<()> {
    super::gen::default_sigpipe();
    if let Some(m) = &args.mountpoint {
        let (_, sock) = control::socket_of(m)?;
        let st = control::query(&sock)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&st)?);
        } else {
            print!("{}", human(&st));
        }
        return Ok(());
    }
    let mut all = Vec::new();
    if let Ok(rd) = std::fs::read_dir(runtime_dir()) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "sock") {
                match control::query(&p) {
                    Ok(st) => all.push(st),
                    Err(e) => tracing::debug!("skipping {}: {e:#}", p.display()),
                }
            }
        }
    }
    all.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else if all.is_empty() {
        println!("no cryptbucket mounts");
    } else {
        for st in &all {
            print!("{}", human(st));
        }
    }
    Ok(())
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

pub fn human(st: &Status) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let commit = match st.last_commit {
        Some(t) => format!("{} ago", duration((now - t).max(0.0) as u64)),
        None => "none yet".into(),
    };
    let pending = if st.uncommitted_changes {
        "changes waiting to be committed"
    } else {
        "everything committed"
    };
    let b = &st.backend;
    let c = &st.cache;
    let hits = match c.hit_rate {
        Some(r) => format!(
            "hit rate {:.0}% ({} of {} chunk reads answered locally)",
            r * 100.0,
            c.hits,
            c.hits + c.misses
        ),
        None => "hit rate: no reads yet".into(),
    };
    format!(
        "{}\n  store:    {} (volume {})\n  daemon:   pid {}, up {}, log {}\n  \
         writes:   {} open files, {} in {} files waiting to upload, {} chunks queued, {} uploads in flight\n  \
         metadata: {pending}; last commit {commit}\n  \
         cache:    {} of {} on disk, {hits}\n  \
         lease:    {}\n  \
         backend:  {} requests, {} errors, {} up, {} down\n",
        st.mountpoint.display(),
        st.store,
        st.volume_id,
        st.pid,
        duration(st.uptime_secs),
        st.log
            .as_ref()
            .map(|l| l.display().to_string())
            .unwrap_or_else(|| "stderr".into()),
        st.open_files,
        bytes(st.dirty_bytes),
        st.files_waiting,
        st.uploads_queued,
        b.uploads_in_flight,
        bytes(c.bytes),
        bytes(c.limit),
        lease(&st.lease, now as u64),
        b.requests,
        b.errors,
        bytes(b.bytes_uploaded),
        bytes(b.bytes_downloaded),
    )
}

fn lease(l: &LeaseReport, now: u64) -> String {
    let who = match (&l.host, l.pid) {
        (Some(h), Some(p)) => format!("{h}, pid {p}"),
        _ => "this mount".into(),
    };
    let renewed = match l.last_renewed {
        Some(t) => format!("renewed {} ago", duration(now.saturating_sub(t))),
        None => "never written to the store".into(),
    };
    match l.state.as_str() {
        "held" => format!(
            "held by this mount ({who}), {renewed}, valid {} more",
            duration(l.expires.unwrap_or(now).saturating_sub(now))
        ),
        "expired" => format!(
            "EXPIRED: not renewed in the store in time (unreachable?), {renewed}; retried every 20s"
        ),
        "lost" => "LOST: another mount took the writer lease; changes here stay local".into(),
        "none" => "none (read-only mount)".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(3 * 3600 + 120), "3h 2m");
    }

    #[test]
    fn lease_states_read_well() {
        let mut l = LeaseReport {
            state: "held".into(),
            holder: Some("ab12".into()),
            host: Some("laptop".into()),
            pid: Some(42),
            since: Some(900),
            last_renewed: Some(990),
            expires: Some(1050),
        };
        assert_eq!(
            lease(&l, 1000),
            "held by this mount (laptop, pid 42), renewed 10s ago, valid 50s more"
        );
        l.state = "expired".into();
        assert!(lease(&l, 1100).starts_with("EXPIRED"));
        let ro = LeaseReport {
            state: "none".into(),
            ..Default::default()
        };
        assert_eq!(lease(&ro, 1000), "none (read-only mount)");
    }
}
