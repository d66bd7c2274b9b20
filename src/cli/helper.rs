//! The mount(8) helper conventions: `mount -t fuse.cryptbucket STORE MNT -o OPTS` and fstab
//! lines. mount(8) runs `/sbin/mount.fuse.cryptbucket STORE MNT -o OPTS` if that exists, else
//! mount.fuse3, which runs `cryptbucket STORE MNT -o OPTS` from PATH. Both forms land here and
//! are translated into `cryptbucket mount STORE MNT --flags`.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use anyhow::{bail, Result};

use super::exit::UsageError;

/// Options that only mean something to mount(8), fstab or systemd, or that are the default.
const IGNORED: &[&str] = &[
    "rw",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "defaults",
    "_netdev",
    "nofail",
    "async",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "lazytime",
    "default_permissions",
];

/// Whether this invocation follows the mount helper convention: called as `mount.cryptbucket`
/// or `mount.fuse.cryptbucket`, or as `cryptbucket SOURCE MOUNTPOINT ... -o OPTS` (mount.fuse3
/// always passes `-o`) where SOURCE is not one of our subcommands.
pub fn is_helper_call(argv: &[OsString], subcommands: &[String]) -> bool {
    let name = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.starts_with("mount.") {
        return true;
    }
    let Some(first) = argv.get(1).and_then(|a| a.to_str()) else {
        return false;
    };
    argv.len() >= 5
        && !first.starts_with('-')
        && !subcommands.iter().any(|s| s == first)
        && argv[3..].iter().any(|a| a == "-o")
}

/// What the helper should do.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Run `cryptbucket` with these arguments (after the program name).
    Mount(Vec<OsString>),
    /// `-f` (fake): check the arguments, mount nothing.
    Fake,
}

/// Translate helper arguments (without the program name) into a `cryptbucket mount` command.
pub fn translate(args: &[OsString]) -> Result<Plan> {
    let mut positional: Vec<&OsStr> = Vec::new();
    let mut opts: Vec<String> = Vec::new();
    let mut fake = false;
    let mut verbose = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-o") => match it.next().and_then(|o| o.to_str()) {
                Some(o) => opts.extend(o.split(',').map(str::to_string)),
                None => bail!(UsageError("-o needs a list of options".into())),
            },
            Some("-t") | Some("-N") => {
                it.next();
            }
            Some("-n") | Some("-s") => {}
            Some("-v") => verbose = true,
            Some("-f") => fake = true,
            Some(s) if s.starts_with('-') => {
                bail!(UsageError(format!("mount helper: unknown flag {s}")))
            }
            _ => positional.push(a),
        }
    }
    let [source, mountpoint] = positional[..] else {
        bail!(UsageError(
            "usage: mount.cryptbucket STORE MOUNTPOINT [-o options] (STORE: a directory, s3://bucket[/prefix], or a volume name from the config file)"
                .into()
        ));
    };
    let mut out: Vec<OsString> = vec!["mount".into(), source.into(), mountpoint.into()];
    if verbose {
        out.push("-v".into());
    }
    for o in opts.iter().filter(|o| !o.is_empty()) {
        let (k, v) = match o.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (o.as_str(), None),
        };
        let flag = match k {
            "keyfile" => "--keyfile",
            "passphrase_file" => "--passphrase-file",
            // Options are split on commas first, so the command cannot contain one.
            "passphrase_command" => "--passphrase-command",
            "cache_size" => "--cache-size",
            "staging_size" => "--staging-size",
            "spin_us" => "--spin-us",
            "repack_interval" => "--repack-interval",
            "read_ahead_kb" => "--read-ahead-kb",
            "idle_timeout" => "--idle-timeout",
            "io_timeout" => "--io-timeout",
            "cache_dir" => "--cache-dir",
            "config" => "--config",
            "endpoint" => "--endpoint",
            "region" => "--region",
            "allow_other" if v.is_none() => {
                out.push("--allow-other".into());
                continue;
            }
            "commit_interval" => "--commit-interval",
            "ro" | "follow" | "sync_on_close" if v.is_none() => {
                out.push(
                    match k {
                        "ro" => "--read-only",
                        "follow" => "--follow",
                        _ => "--sync-on-close",
                    }
                    .into(),
                );
                continue;
            }
            _ if IGNORED.contains(&k) && v.is_none() => continue,
            _ if k.starts_with("x-") || k.starts_with("X-") || k == "comment" => continue,
            _ => bail!(UsageError(format!(
                "unknown mount option `{o}` (known: keyfile=, passphrase_file=, passphrase_command=, cache_dir=, cache_size=, staging_size=, spin_us=, config=, endpoint=, region=, commit_interval=, idle_timeout=, io_timeout=, repack_interval=, read_ahead_kb=, allow_other, ro, follow, sync_on_close; see docs/CONFIGURATION.md)"
            ))),
        };
        match v {
            Some(v) if !v.is_empty() => {
                out.push(flag.into());
                out.push(v.into());
            }
            _ => bail!(UsageError(format!(
                "mount option `{k}` needs a value ({k}=...)"
            ))),
        }
    }
    if fake {
        return Ok(Plan::Fake);
    }
    Ok(Plan::Mount(out))
}

/// Run the helper: translate, then replace this process with `cryptbucket mount ...`.
pub fn run(argv: &[OsString]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    match translate(argv.get(1..).unwrap_or(&[]))? {
        Plan::Fake => Ok(()),
        Plan::Mount(args) => {
            let exe = std::env::current_exe()
                .map_err(|e| anyhow::anyhow!("cannot find our own executable: {e}"))?;
            let err = std::process::Command::new(exe)
                .arg0("cryptbucket")
                .args(args)
                .exec();
            bail!("cannot run cryptbucket mount: {err}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn subs() -> Vec<String> {
        vec!["mount".into(), "init".into(), "status".into()]
    }

    #[test]
    fn recognises_both_calling_conventions() {
        let s = subs();
        assert!(is_helper_call(
            &os(&["/sbin/mount.fuse.cryptbucket", "/s", "/m"]),
            &s
        ));
        assert!(is_helper_call(
            &os(&["mount.cryptbucket", "/s", "/m", "-o", "rw"]),
            &s
        ));
        assert!(is_helper_call(
            &os(&["cryptbucket", "/s", "/m", "-o", "dev,suid"]),
            &s
        ));
        assert!(!is_helper_call(
            &os(&["cryptbucket", "mount", "/s", "/m", "-o", "x"]),
            &s
        ));
        assert!(!is_helper_call(&os(&["cryptbucket", "/s", "/m"]), &s));
        assert!(!is_helper_call(&os(&["cryptbucket", "--help"]), &s));
    }

    #[test]
    fn options_become_flags_and_fstab_options_are_ignored() {
        let plan = translate(&os(&[
            "/srv/vault",
            "/mnt/v",
            "-o",
            "rw,_netdev,nofail,x-systemd.automount,x-systemd.idle-timeout=60,noauto,dev,suid,keyfile=/k,cache_dir=/c,allow_other",
        ]))
        .expect("translate");
        assert_eq!(
            plan,
            Plan::Mount(os(&[
                "mount",
                "/srv/vault",
                "/mnt/v",
                "--keyfile",
                "/k",
                "--cache-dir",
                "/c",
                "--allow-other"
            ]))
        );
        assert_eq!(
            translate(&os(&["a", "/m", "-f", "-o", "rw"])).expect("fake"),
            Plan::Fake
        );
    }

    #[test]
    fn bad_options_are_usage_errors_naming_the_option() {
        for (opts, word) in [
            ("rw,bogus=1", "bogus=1"),
            ("ro=1", "ro=1"),
            ("keyfile", "keyfile"),
        ] {
            let e = translate(&os(&["/s", "/m", "-o", opts])).expect_err(opts);
            assert!(format!("{e}").contains(word), "{opts}: {e}");
            assert_eq!(super::super::exit::code_for(&e), 2);
        }
        assert!(translate(&os(&["/s"])).is_err());
        assert_eq!(
            translate(&os(&[
                "/s",
                "/m",
                "-o",
                "passphrase_command=pass show cb/nas,cache_size=10G,idle_timeout=15m,staging_size=512M,spin_us=0,io_timeout=30,repack_interval=0,read_ahead_kb=0",
            ]))
            .expect("translate"),
            Plan::Mount(os(&[
                "mount",
                "/s",
                "/m",
                "--passphrase-command",
                "pass show cb/nas",
                "--cache-size",
                "10G",
                "--idle-timeout",
                "15m",
                "--staging-size",
                "512M",
                "--spin-us",
                "0",
                "--io-timeout",
                "30",
                "--repack-interval",
                "0",
                "--read-ahead-kb",
                "0"
            ]))
        );
        let e = translate(&os(&["/s", "/m", "-o", "idle_timeout="])).expect_err("empty");
        assert!(format!("{e}").contains("idle_timeout=..."), "{e}");
        assert_eq!(
            translate(&os(&["/s", "/m", "-o", "ro,follow,commit_interval=9"])).expect("ro"),
            Plan::Mount(os(&[
                "mount",
                "/s",
                "/m",
                "--read-only",
                "--follow",
                "--commit-interval",
                "9"
            ]))
        );
    }
}
