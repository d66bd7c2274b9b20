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

use super::{open_store, KeyArgs, StoreArgs};

/// Commit metadata to the store at least this often while mounted.
const COMMIT_INTERVAL: Duration = Duration::from_secs(30);
/// Renew the writer lease this often (a third of its lifetime).
const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(20);

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
    #[arg(long, hide = true)]
    pub daemon_child: bool,
}

fn check_mountpoint(p: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(p).with_context(|| {
        format!(
            "mountpoint {} does not exist (create an empty directory first)",
            p.display()
        )
    })?;
    if !meta.is_dir() {
        bail!("mountpoint {} is not a directory", p.display());
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
        return serve(&args, &mountpoint, key, true);
    }
    let mnt = check_mountpoint(&mountpoint)?;
    let key = super::kms::resolve_key_once(&args.store, &args.key)?;
    if args.foreground {
        return serve(&args, &mountpoint, key, false);
    }
    spawn_daemon(&mnt, key)
}

/// Start the serving child with the same arguments, hand it the key on stdin, and wait
/// until it reports the mount ready (or fails).
fn spawn_daemon(mnt: &Path, key: KeySource) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find our own executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .arg("--daemon-child")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("cannot start the mount daemon")?;
    {
        let mut stdin = child.stdin.take().context("daemon stdin")?;
        stdin.write_all(&key.handoff_bytes())?;
    }
    let stdout = child.stdout.take().context("daemon stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
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
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    eprint!("{err}");
    if status.success() {
        bail!("the mount daemon exited before the mount was ready");
    }
    std::process::exit(status.code().unwrap_or(1));
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

fn serve(args: &MountArgs, mountpoint: &Path, key: KeySource, child: bool) -> Result<()> {
    if child {
        // SAFETY: detaching from the parent's session has no memory-safety effect.
        unsafe { libc::setsid() };
    }
    let mnt = check_mountpoint(mountpoint)?;
    let rt = cryptbucket::volume::runtime()?;
    let counting = super::metrics::CountingStore::new(open_store(&rt, &args.store, false)?);
    let counters = counting.counters.clone();
    let open_opts = cryptbucket::volume::OpenOptions {
        cache_dir: args.cache_dir.clone(),
        break_lease: args.break_lease,
        ..Default::default()
    };
    let vol = cryptbucket::volume::open_with(rt, Arc::new(counting), &key, &open_opts)?;
    drop(key);
    let log_path = vol.cache_dir.join("cryptbucket.log");
    let mut opts = vec![
        MountOption::FSName(format!("cryptbucket:{}", args.store.store)),
        MountOption::Subtype("cryptbucket".into()),
        MountOption::DefaultPermissions,
        MountOption::RW,
    ];
    if args.allow_other {
        opts.push(MountOption::AllowOther);
    }
    let fs = FuseFs::new(vol.vfs.clone());
    let session = fuser::spawn_mount2(fs, &mnt, &opts).with_context(|| {
        format!(
            "cannot mount at {} (is fuse3 installed and /dev/fuse usable?)",
            mnt.display()
        )
    })?;
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
    };
    if let Err(e) = super::control::start(info, vol.vfs.clone(), counters) {
        tracing::warn!("no status for this mount: {e:#}");
    }
    tracing::info!("mounted volume {} at {}", vol.volume_id, mnt.display());
    super::notify::ready(&format!("mounted at {}", mnt.display()));
    if child {
        println!("READY {}", log_path.display());
        std::io::stdout().flush()?;
        redirect_output(&log_path)?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let mut last_commit = Instant::now();
    let mut last_renew = Instant::now();
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
        if last_renew.elapsed() > LEASE_RENEW_INTERVAL {
            if let Err(e) = vol.lease.renew() {
                tracing::warn!("could not renew the writer lease: {e}");
            }
            last_renew = Instant::now();
        }
        if last_commit.elapsed() > COMMIT_INTERVAL {
            if let Err(e) = vol.vfs.commit() {
                tracing::warn!("periodic commit failed (will retry): {e}");
            }
            last_commit = Instant::now();
        }
    }
    drop(session);
    let _ = std::fs::remove_file(super::control::socket_path(&mnt));
    tracing::info!("unmounted; writing everything to the store");
    let res = flush_with_retries(&vol.vfs);
    match &res {
        Ok(()) => {
            vol.lease.release();
            let _ = std::fs::remove_file(&pidf);
            tracing::info!("all data and metadata are in the store");
            // Everything is durable; skip the runtime's slow teardown of idle workers.
            std::process::exit(0);
        }
        Err(e) => {
            let _ = std::fs::write(pidf.with_extension("err"), format!("{e:#}"));
            let _ = std::fs::remove_file(&pidf);
        }
    }
    res
}

fn flush_with_retries(vfs: &cryptbucket::vfs::Vfs) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
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

/// After the parent has seen READY: stdout to /dev/null, stderr (and so the log) to a file.
fn redirect_output(log: &Path) -> Result<()> {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open log {}", log.display()))?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    // SAFETY: dup2 onto the standard descriptors of this process.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
        libc::dup2(f.as_raw_fd(), 2);
    }
    Ok(())
}
