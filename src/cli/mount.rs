//! `cryptbucket mount`: unlock the volume, mount it, and serve until unmounted. Without
//! `--foreground` a child process serves and the command returns once the mount is ready.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use fuser::MountOption;
use zeroize::Zeroizing;

use cryptbucket::crypto::KeySource;
use cryptbucket::fuse::FuseFs;
use cryptbucket::meta::lease::LEASE_RENEW_INTERVAL;

use super::{open_store, KeyArgs, StoreArgs};

/// Default for `--commit-interval`: a journal segment is cheap, so commit often.
pub const DEFAULT_COMMIT_INTERVAL_SECS: u64 = 5;
/// A `--follow` mount looks for a new metadata head this often.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Args, Debug)]
pub struct MountArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// An existing, empty directory (default: the volume's `mountpoint` in the config file).
    pub mountpoint: Option<PathBuf>,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Stay in the foreground (logs go to stderr).
    #[arg(short, long)]
    pub foreground: bool,
    /// Where local state lives (metadata database, log). Default: per volume under
    /// $XDG_CACHE_HOME/cryptbucket/.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Let other users reach the mount (implies kernel permission checks).
    #[arg(long)]
    pub allow_other: bool,
    /// Take over the writer lease of a mount that is gone (its lease expired).
    #[arg(long)]
    pub break_lease: bool,
    #[command(flatten)]
    pub desk: super::extras::DeskArgs,
    /// Mount without the writer lease (works while another machine writes); every change
    /// fails with EROFS.
    #[arg(long)]
    pub read_only: bool,
    /// With --read-only: pick up the writer's new commits every few seconds.
    #[arg(long, requires = "read_only")]
    pub follow: bool,
    /// Adopt the store's metadata even if it went back in time, forked, or lost or reordered
    /// journal segments (the mount is refused otherwise). Changes after the damage are lost.
    #[arg(long)]
    pub accept_store_state: bool,
    /// Commit metadata to the store at least this often while there are changes, in
    /// seconds (default 5).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub commit_interval: Option<u64>,
    /// close() returns only after the file's data and metadata are in the store (as fsync).
    #[arg(long)]
    pub sync_on_close: bool,
    /// Most bytes of written data staged on the cache disk while uploads catch up (suffix
    /// K, M, G; default 1G). Writers wait beyond it, and whenever the cache disk would keep
    /// less than 256 MiB free.
    #[arg(long, value_parser = parse_size)]
    pub staging_size: Option<u64>,
    /// Bound of the disk cache of sealed chunks in the cache dir (suffix K, M, G; default
    /// 2G; least recently used chunks are evicted).
    #[arg(long, value_parser = parse_size)]
    pub cache_size: Option<u64>,
    /// After answering a request, the FUSE thread keeps polling for the next one this many
    /// microseconds before it sleeps (default 50; 0 = sleep at once). Waking a sleeping
    /// CPU costs tens of microseconds on a VM, once per request of a tar or cp.
    #[arg(long, value_name = "MICROS",
          value_parser = clap::value_parser!(u64).range(0..=cryptbucket::fuse::SPIN_US_MAX))]
    pub spin_us: Option<u64>,
    /// While the mount has been idle this long, rewrite the packs of small files that are
    /// at least half deleted files, once they hold 16 MiB or more that could be freed
    /// (e.g. 15m, 1h; default 15m; 0 = never: only `cryptbucket gc` repacks).
    #[arg(long, value_name = "DURATION", value_parser = super::idle::parse_duration)]
    pub repack_interval: Option<Duration>,
    /// Kernel read-ahead window of the mount in KiB (default 1024; 0 = keep the kernel's
    /// 128). Sequential reads then reach the daemon as 1 MiB requests instead of 128 KiB.
    /// Setting it needs root (it is the mount's `read_ahead_kb` in sysfs); otherwise the
    /// kernel's window stays and the log says so.
    #[arg(long, value_name = "KB",
          value_parser = clap::value_parser!(u32).range(0..=super::readahead::READ_AHEAD_KB_MAX as i64))]
    pub read_ahead_kb: Option<u32>,
    #[arg(long, hide = true)]
    pub daemon_child: bool,
}

/// Idle time before a mount rewrites its sparse packs (`--repack-interval`).
const DEFAULT_REPACK_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// A FUSE request this recent stops a background repack (after the pack in hand).
const REPACK_YIELD: Duration = Duration::from_secs(1);

fn log_repack(r: cryptbucket::vfs::Result<Option<(u64, u64)>>) {
    match r {
        Ok(Some((packs, bytes))) => tracing::info!(
            "background repack: rewrote {packs} packs of small files; {bytes} bytes of deleted files in them are freed after the grace period"
        ),
        Ok(None) => tracing::debug!("background repack: too little to gain"),
        Err(e) => tracing::warn!("background repack failed (will try again later): {e}"),
    }
}

/// Run one background repack (src/vfs/repack.rs) on its own thread: it reads and uploads
/// for as long as it takes, and the serving loop must keep renewing the lease meanwhile.
fn start_repack(
    vfs: Arc<cryptbucket::vfs::Vfs>,
    stop: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    // Tests lower the bound to see a repack of a few small files.
    let min = std::env::var("CRYPTBUCKET_TEST_REPACK_MIN_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cryptbucket::vfs::AUTO_REPACK_MIN_BYTES);
    let run = move || log_repack(vfs.auto_repack(min, &stop));
    match std::thread::Builder::new().name("repack".into()).spawn(run) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!("cannot start the background repack: {e}");
            None
        }
    }
}

pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size (examples: 512M, 2G)"))
}

fn check_mountpoint(p: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(p).with_context(|| {
        format!(
            "mountpoint {} does not exist (create an empty directory first)",
            p.display()
        )
    })?;
    if !meta.is_dir() {
        bail!(
            "mountpoint {} is not a directory; give an empty directory (mkdir it first)",
            p.display()
        );
    }
    let mut entries =
        std::fs::read_dir(p).with_context(|| format!("cannot read mountpoint {}", p.display()))?;
    if entries.next().is_some() {
        bail!(
            "mountpoint {} is not empty (mounting would hide its contents); use an empty directory",
            p.display()
        );
    }
    Ok(std::fs::canonicalize(p)?)
}

pub fn run(mut args: MountArgs) -> Result<()> {
    let mountpoint = super::config::apply_mount(&mut args)?;
    if args.daemon_child {
        let key = read_key_from_stdin()?;
        return serve(&args, &mountpoint, key, None);
    }
    let mnt = check_mountpoint(&mountpoint)?;
    let (key, remember) = super::extras::mount_key(&args)?;
    if args.foreground {
        return serve(&args, &mountpoint, key, remember);
    }
    spawn_daemon(&mnt, key)?;
    if let Some(r) = remember {
        r.save();
    }
    Ok(())
}

/// Start the serving child with the same arguments, hand it the key on stdin, and wait
/// until it reports the mount ready (or fails).
fn spawn_daemon(mnt: &Path, key: KeySource) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find our own executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .arg("--daemon-child")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // Under systemd the daemon logs straight to the journal, errors before READY included.
    if super::extras::stderr_is_journal() {
        cmd.stderr(Stdio::inherit());
    } else {
        cmd.stderr(Stdio::piped());
    }
    let mut child = cmd.spawn().context("cannot start the mount daemon")?;
    {
        let mut stdin = child.stdin.take().context("daemon stdin")?;
        stdin.write_all(&key.handoff_bytes())?;
    }
    // Drained all along: a daemon logging a lot before it is ready (RUST_LOG=trace) must not
    // block on a full pipe. Shown only if the mount fails.
    let errors = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = e.read_to_end(&mut buf);
            buf
        })
    });
    let stdout = child.stdout.take().context("daemon stdout")?;
    let mut stdout = BufReader::new(stdout);
    let mut line = String::new();
    let mut bar: Option<super::progress::Progress> = None;
    loop {
        line.clear();
        stdout.read_line(&mut line)?;
        let Some((done, total)) = parse_progress(&line) else {
            break;
        };
        // Only a big load gets a bar: most mounts load in well under a second.
        if bar.is_none() && total >= LOAD_BAR_ROWS && !super::ui::quiet() {
            bar = Some(super::progress::Progress::new(
                "loading metadata",
                total,
                super::progress::Unit::Items,
            ));
        }
        if let Some(b) = &bar {
            b.set_position(done);
        }
    }
    if let Some(b) = &bar {
        b.finish("metadata loaded");
    }
    if let Some(log) = line.trim().strip_prefix("READY ") {
        if super::ui::quiet() {
            return Ok(());
        }
        println!(
            "mounted at {} (log: {log})\nstop with: cryptbucket unmount {}",
            mnt.display(),
            mnt.display()
        );
        return Ok(());
    }
    let status = child.wait()?;
    if let Some(t) = errors {
        let err = t.join().unwrap_or_default();
        let _ = std::io::stderr().write_all(&err);
    }
    if status.success() {
        bail!("the mount daemon exited before the mount was ready; run the same command with --foreground -v to see why");
    }
    std::process::exit(status.code().unwrap_or(1));
}

/// Rows (inodes, entries, chunk references) above which a mount shows loading progress.
const LOAD_BAR_ROWS: u64 = 200_000;

/// `PROGRESS done total` from the daemon child.
fn parse_progress(line: &str) -> Option<(u64, u64)> {
    let mut it = line.trim().strip_prefix("PROGRESS ")?.split(' ');
    let done = it.next()?.parse().ok()?;
    let total = it.next()?.parse().ok()?;
    Some((done, total))
}

fn read_key_from_stdin() -> Result<KeySource> {
    let mut buf = Zeroizing::new(Vec::new());
    std::io::stdin().read_to_end(&mut buf)?;
    KeySource::from_handoff(&buf).context("no key received from the parent process")
}

pub fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("cryptbucket"),
        // SAFETY: getuid cannot fail.
        _ if unsafe { libc::getuid() } == 0 && Path::new("/run").is_dir() => {
            PathBuf::from("/run/cryptbucket")
        }
        // SAFETY: getuid cannot fail.
        _ => std::env::temp_dir().join(format!("cryptbucket-{}", unsafe { libc::getuid() })),
    }
}

/// File naming the daemon serving a mountpoint, so `unmount` can wait for it.
pub fn pid_file(mnt: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    use std::os::unix::ffi::OsStrExt;
    let h = hex::encode(Sha256::digest(mnt.as_os_str().as_bytes()));
    runtime_dir().join(format!("{}.pid", &h[..32]))
}

fn serve(
    args: &MountArgs,
    mountpoint: &Path,
    key: KeySource,
    remember: Option<super::extras::Remember>,
) -> Result<()> {
    let child = args.daemon_child;
    if child {
        // SAFETY: detaching from the parent's session has no memory-safety effect.
        unsafe { libc::setsid() };
    }
    let mnt = check_mountpoint(mountpoint)?;
    // glibc gives each busy thread its own malloc arena; with FUSE workers, tokio workers
    // and upload tasks passing MiB-sized buffers around, that alone cost ~100 MiB of RSS.
    // SAFETY: mallopt only tunes the allocator; called before the worker threads start.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    let rt = cryptbucket::volume::runtime()?;
    let counting = super::metrics::CountingStore::new(super::testhooks::wrap(open_store(
        &rt,
        &args.store,
        false,
    )?));
    let counters = counting.counters.clone();
    let open_opts = cryptbucket::volume::OpenOptions {
        cache_dir: args.cache_dir.clone(),
        break_lease: args.break_lease,
        read_only: args.read_only,
        accept_store_state: args.accept_store_state,
        staging_limit: args
            .staging_size
            .unwrap_or(cryptbucket::data::staging::DEFAULT_STAGING_LIMIT),
        cache_size: args
            .cache_size
            .unwrap_or(cryptbucket::data::diskcache::DEFAULT_CACHE_SIZE),
        // The background daemon tells the waiting `cryptbucket mount` how loading goes.
        load_progress: child.then(|| {
            cryptbucket::meta::LoadProgress(Arc::new(|done, total| {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "PROGRESS {done} {total}");
                let _ = out.flush();
            }))
        }),
        ..Default::default()
    };
    let vol = cryptbucket::volume::open_with(rt, Arc::new(counting), &key, &open_opts)?;
    drop(key);
    let journal = child && super::extras::stderr_is_journal();
    let log_path = if journal {
        PathBuf::from("the systemd journal")
    } else {
        vol.cache_dir.join("cryptbucket.log")
    };
    let mut opts = vec![
        MountOption::FSName(format!("cryptbucket:{}", args.store.store)),
        MountOption::Subtype("cryptbucket".into()),
        MountOption::DefaultPermissions,
        if args.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    vol.vfs.set_sync_on_close(args.sync_on_close);
    let commit_interval =
        Duration::from_secs(args.commit_interval.unwrap_or(DEFAULT_COMMIT_INTERVAL_SECS));
    if args.allow_other {
        opts.push(MountOption::AllowOther);
    }
    let activity = super::idle::Activity::new();
    let fuse_fs = FuseFs::new(vol.vfs.clone());
    let notify = fuse_fs.notify_slot();
    let fs = super::idle::Watched::new(fuse_fs, activity.clone());
    let session = fuser::Session::new(fs, &mnt, &opts).with_context(|| {
        format!(
            "cannot mount at {} (is fuse3 installed and /dev/fuse usable?)",
            mnt.display()
        )
    })?;
    cryptbucket::fuse::set_spin(
        &session,
        args.spin_us.unwrap_or(cryptbucket::fuse::DEFAULT_SPIN_US),
    );
    let session = session.spawn().context("cannot start the FUSE session")?;
    let _ = notify.set(session.notifier());
    super::readahead::apply(&mnt, args.read_ahead_kb);
    let pidf = pid_file(&mnt);
    let _ = std::fs::create_dir_all(runtime_dir());
    let _ = std::fs::remove_file(pidf.with_extension("err"));
    std::fs::write(&pidf, std::process::id().to_string())
        .with_context(|| format!("cannot write {}", pidf.display()))?;
    let info = super::control::Info {
        mountpoint: mnt.clone(),
        store: args.store.store.clone(),
        volume_id: vol.volume_id.clone(),
        cache_dir: vol.cache_dir.clone(),
        log: child.then(|| log_path.clone()),
        flush_until: Default::default(),
    };
    let flush_until = info.flush_until.clone();
    let mut notifier =
        super::desktop::Notifier::new(args.desk.notify, mnt.clone(), info.log.clone());
    if let Err(e) =
        super::control::start(info, vol.vfs.clone(), counters.clone(), vol.lease.clone())
    {
        tracing::warn!("no status for this mount: {e:#}");
    }
    tracing::info!("mounted volume {} at {}", vol.volume_id, mnt.display());
    super::notify::ready(&format!("mounted at {}", mnt.display()));
    if let Some(r) = remember {
        r.save();
    }
    if child {
        // The log file exists before the parent names it (a test saw it missing otherwise).
        let log = if journal {
            None
        } else {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .with_context(|| format!("cannot open log {}", log_path.display()))?;
            Some((f, log_path.as_path()))
        };
        println!("READY {}", log_path.display());
        std::io::stdout().flush()?;
        redirect_output(log)?;
    }
    let idle_timeout = args.desk.idle_timeout.unwrap_or(Duration::ZERO);

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let repack_every = match args.repack_interval {
        _ if args.read_only => None,
        None => Some(DEFAULT_REPACK_INTERVAL),
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    };
    // The running background repack and its stop flag.
    let mut repacker: Option<(std::thread::JoinHandle<()>, Arc<AtomicBool>)> = None;
    let mut last_repack = Instant::now();
    let mut last_commit = Instant::now();
    let mut last_renew = Instant::now();
    let mut last_follow = Instant::now();
    while !session.guard.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
        if stop.swap(false, Ordering::SeqCst) {
            tracing::info!("signal received: unmounting {}", mnt.display());
            match Command::new("fusermount3").arg("-u").arg(&mnt).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => tracing::warn!(
                    "cannot unmount yet ({}); still serving",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => tracing::warn!("cannot run fusermount3: {e}; still serving"),
            }
        }
        // Seal idle write-back chunks and retry failed uploads.
        vol.vfs.tick();
        if args.follow && last_follow.elapsed() > FOLLOW_INTERVAL {
            match vol.vfs.follow() {
                Ok(true) => tracing::debug!("picked up new metadata from the store"),
                Ok(false) => {}
                Err(e) => tracing::warn!("could not follow the store's metadata: {e}"),
            }
            last_follow = Instant::now();
        }
        if vol.lease.is_held() && last_renew.elapsed() > LEASE_RENEW_INTERVAL {
            let r = vol.lease.renew();
            if let Err(e) = &r {
                tracing::warn!("could not renew the writer lease: {e}");
            }
            notifier.lease_result(r.err().map(|e| e.to_string()).as_deref());
            last_renew = Instant::now();
        }
        if !args.read_only && last_commit.elapsed() > commit_interval {
            let r = vol.vfs.commit();
            if let Err(e) = &r {
                tracing::warn!("periodic commit failed (will retry): {e}");
            }
            notifier.commit_result(r.err().map(|e| e.to_string()).as_deref());
            last_commit = Instant::now();
        }
        if let Some(every) = repack_every {
            match &repacker {
                // The mount is in use again: the repack yields after the pack in hand.
                Some((h, stop)) if !h.is_finished() && activity.idle_for() < REPACK_YIELD => {
                    stop.store(true, Ordering::SeqCst);
                }
                Some((h, _)) if !h.is_finished() => {}
                _ if last_repack.elapsed() >= every && activity.idle_for() >= every => {
                    last_repack = Instant::now();
                    let stop = Arc::new(AtomicBool::new(false));
                    repacker = start_repack(vol.vfs.clone(), stop.clone()).map(|h| (h, stop));
                }
                _ => {}
            }
        }
        notifier.store_state(counters.failing());
        if idle_due(idle_timeout, &activity, &vol.vfs) {
            tracing::info!(
                "idle for {}s (--idle-timeout): unmounting {}",
                activity.idle_for().as_secs(),
                mnt.display()
            );
            if let Err(e) = fusermount_u(&mnt) {
                tracing::info!("idle, but cannot unmount yet ({e}); still serving");
                // Wait a full period before trying again.
                activity.touch();
            }
        }
    }
    drop(session);
    // The serving loop renewed the lease; the repack's last pack and the final flush can
    // take longer than the lease lives (a slow store, retries).
    let renewer = vol
        .lease
        .is_held()
        .then(|| vol.lease.renew_in_background(LEASE_RENEW_INTERVAL));
    // A background repack stops after the pack it is copying; its swaps are then committed
    // with everything else.
    if let Some((h, stop)) = repacker {
        stop.store(true, Ordering::SeqCst);
        let _ = h.join();
    }
    tracing::info!("unmounted; writing everything to the store");
    let res = flush_with_retries(&vol.vfs, &flush_until);
    // No renewal may follow the release below.
    drop(renewer);
    // The socket outlives the FUSE session so `unmount` can show the final upload's progress.
    let _ = std::fs::remove_file(super::control::socket_path(&mnt));
    match &res {
        Ok(()) => {
            vol.lease.release();
            let _ = std::fs::remove_file(&pidf);
            tracing::info!("all data and metadata are in the store");
            // Everything is durable; skip the runtime's slow teardown of idle workers.
            std::process::exit(0);
        }
        Err(e) => {
            notifier.fatal(
                "cryptbucket: unmounted with data not saved",
                "could not write everything to the store; the rest is kept in the cache dir and written at the next mount",
            );
            let _ = std::fs::write(pidf.with_extension("err"), format!("{e:#}"));
            let _ = std::fs::remove_file(&pidf);
        }
    }
    res
}

/// How long the final flush after unmount keeps retrying a store that refuses it.
const FINAL_FLUSH_RETRY: Duration = Duration::from_secs(300);

fn flush_with_retries(
    vfs: &cryptbucket::vfs::Vfs,
    until: &std::sync::atomic::AtomicU64,
) -> Result<()> {
    let deadline = Instant::now() + FINAL_FLUSH_RETRY;
    let end = (std::time::SystemTime::now() + FINAL_FLUSH_RETRY)
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    until.store(end, std::sync::atomic::Ordering::Relaxed);
    loop {
        match vfs.shutdown() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing::warn!("final flush failed, retrying: {e}");
                std::thread::sleep(Duration::from_secs(2));
            }
            Err(e) => {
                return Err(anyhow::anyhow!(e).context(
                    "could not write everything to the store; local metadata is kept in the cache dir and is committed at the next mount",
                ))
            }
        }
    }
}

fn idle_due(
    timeout: Duration,
    activity: &super::idle::Activity,
    vfs: &cryptbucket::vfs::Vfs,
) -> bool {
    if timeout.is_zero() || activity.idle_for() < timeout {
        return false;
    }
    let s = vfs.stats();
    super::idle::should_unmount(timeout, activity.idle_for(), s.open_files, s.dirty_bytes)
}

fn fusermount_u(mnt: &Path) -> Result<()> {
    let o = Command::new("fusermount3")
        .arg("-u")
        .arg(mnt)
        .output()
        .context("cannot run fusermount3")?;
    if !o.status.success() {
        bail!("{}", String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(())
}

/// After the parent has seen READY: stdout to /dev/null, stderr (and so the log) to a file,
/// or left alone when it is the systemd journal (`log` None).
fn redirect_output(log: Option<(std::fs::File, &Path)>) -> Result<()> {
    use std::os::unix::io::AsRawFd;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    // SAFETY: dup2 onto the standard descriptors of this process.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
    }
    if let Some((f, log)) = log {
        // The lines logged before this point go first.
        super::logsink::switch(|| {
            // SAFETY: as above.
            if unsafe { libc::dup2(f.as_raw_fd(), 2) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
        .with_context(|| format!("cannot log to {}", log.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_progress;

    #[test]
    fn progress_lines_from_the_daemon() {
        assert_eq!(parse_progress("PROGRESS 5 10\n"), Some((5, 10)));
        assert_eq!(parse_progress("READY /x/cryptbucket.log\n"), None);
        assert_eq!(parse_progress("PROGRESS x 10"), None);
        assert_eq!(parse_progress(""), None);
    }
}
