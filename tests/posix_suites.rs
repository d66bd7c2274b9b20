//! External POSIX suites on a real cryptbucket mount: pjdfstest and fsx (issue 4).
//!
//! - `pjdfstest_local`: pjdfstest 0.2.2 with tests/pjdfstest.toml on a fresh local-backend
//!   volume mounted with `--allow-other` (pjdfstest switches to the users `nobody` and `tests`,
//!   so it must run as root and they must reach the mount). Fails on any test that fails and is
//!   not an expected failure in the config; warns about expected failures that now pass.
//! - `fsx_local`: fsx 0.3.2 with tests/fsx.toml, 100,000 operations on a local-backend mount.
//! - `fsx_s3`: 20,000 operations on an S3-backend mount (needs $CRYPTBUCKET_TEST_S3_ENDPOINT).
//!
//! `CRYPTBUCKET_LONG_TESTS=1` multiplies the fsx operation counts by 10. The fsx seed is random
//! and printed; `CRYPTBUCKET_FSX_SEED=N` replays one. On a miscompare fsx's operation log is in
//! the panic message and its artifacts (the expected file contents) are kept under
//! `$CARGO_TARGET_TMPDIR/fsx-*`.
//!
//! scripts/test.sh installs both tools (`cargo install`) and creates the users; without them
//! (or without root for pjdfstest, or without FUSE) the tests pass with a skip note.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const PASS: &str = "correct horse battery staple";

/// Where the committed suite configurations live.
fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// An external tool from PATH or from cargo's bin directory (where `cargo install` puts it,
/// which is not always on PATH in a test environment).
fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(c) = cargo_home {
        dirs.push(c.join("bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn long_tests() -> bool {
    std::env::var("CRYPTBUCKET_LONG_TESTS").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The last lines of the daemon's log, for failure messages.
fn log_tail(m: &Mount, lines: usize) -> String {
    let log = fs::read_to_string(m.log_path()).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Chunk size of the volumes fsx runs on (tests/fsx.toml explains).
const FSX_CHUNK: &str = "262144";

/// Create `vol`, with `--chunk-size CHUNK` when given.
fn init_volume(vol: &Volume, chunk_size: Option<&str>) {
    let mut c = vol.cmd("init", &[&vol.store]);
    if let Some(cs) = chunk_size {
        c.args(["--chunk-size", cs]);
    }
    run(&mut c, CMD_TIMEOUT).assert_ok();
}

/// A work directory (mode 0755, so that the users pjdfstest switches to can reach the mount
/// point inside it) with a fresh local-backend volume mounted at `<work>/mnt`.
fn local_mount(chunk_size: Option<&str>, extra: &[&str]) -> (tempfile::TempDir, Mount) {
    let work = tempdir();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let vol = Volume::local(&work.path().join("store"), Key::Passphrase(PASS.into()));
    init_volume(&vol, chunk_size);
    let m = vol.mount_with(&work.path().join("mnt"), &work.path().join("cache"), extra);
    (work, m)
}

// ------------------------------------------------------------------------------------------------
// pjdfstest

/// What pjdfstest printed for one test case.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Ok,
    Skipped,
    Failed,
    ExpectedFailure,
    UnexpectedPass,
}

#[derive(Debug)]
struct Case {
    name: String,
    verdict: Verdict,
    /// The indented lines that follow the verdict line: the failure message or skip reasons.
    details: Vec<String>,
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte(@..~)
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parse pjdfstest's output: one `NAME <padding> VERDICT` line per case, followed by
/// tab-indented details; a final `Summary: ...` line.
fn parse_pjdfstest(out: &str) -> (Vec<Case>, Option<String>) {
    let mut cases: Vec<Case> = Vec::new();
    let mut summary = None;
    for raw in out.lines() {
        let line = strip_ansi(raw);
        if line.starts_with('\t') || line.starts_with(' ') {
            if let Some(c) = cases.last_mut() {
                c.details.push(line.trim().to_owned());
            }
            continue;
        }
        let t = line.trim_end();
        if t.starts_with("Summary:") {
            summary = Some(t.to_owned());
            continue;
        }
        let Some((name, rest)) = t.split_once(' ') else {
            if let Some(c) = cases.last_mut() {
                c.details.push(t.to_owned());
            }
            continue;
        };
        let verdict = match rest.trim() {
            "ok" => Verdict::Ok,
            "skipped" => Verdict::Skipped,
            "FAILED" => Verdict::Failed,
            "failed as expected" => Verdict::ExpectedFailure,
            "PASSED UNEXPECTEDLY" => Verdict::UnexpectedPass,
            _ => {
                // A continuation line (e.g. a backtrace) that is not indented.
                if let Some(c) = cases.last_mut() {
                    c.details.push(t.to_owned());
                }
                continue;
            }
        };
        cases.push(Case {
            name: name.to_owned(),
            verdict,
            details: Vec::new(),
        });
    }
    (cases, summary)
}

/// The `expected_failures = [...]` list of tests/pjdfstest.toml (a plain array of strings,
/// one per line, with `#` comments).
fn expected_failures(config: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut inside = false;
    for line in config.lines() {
        let l = line.split('#').next().unwrap_or("").trim();
        if !inside {
            if let Some(rest) = l.strip_prefix("expected_failures") {
                inside = true;
                let rest = rest.trim_start_matches([' ', '=', '[']);
                for part in rest.split(',') {
                    let p = part.trim().trim_end_matches(']').trim().trim_matches('"');
                    if !p.is_empty() {
                        out.insert(p.to_owned());
                    }
                }
                if rest.contains(']') {
                    inside = false;
                }
            }
            continue;
        }
        for part in l.split(',') {
            let p = part.trim().trim_end_matches(']').trim().trim_matches('"');
            if !p.is_empty() {
                out.insert(p.to_owned());
            }
        }
        if l.contains(']') {
            inside = false;
        }
    }
    out
}

/// The expected failures docs/SEMANTICS.md lists: the `- `case`: reason` lines of the
/// paragraph that starts with "Expected failures" in section "pjdfstest results".
fn documented_failures(docs: &str) -> BTreeSet<String> {
    let section = docs
        .split("## pjdfstest results")
        .nth(1)
        .expect("docs/SEMANTICS.md has a section \"## pjdfstest results\"");
    let section = section.split("\n## ").next().unwrap_or(section);
    let para = section
        .split("\n\n")
        .find(|p| p.trim_start().starts_with("Expected failures"))
        .expect("section \"pjdfstest results\" has a paragraph starting \"Expected failures\"");
    para.lines()
        .filter_map(|l| l.strip_prefix("- `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

/// Every expected failure in tests/pjdfstest.toml has its reason in docs/SEMANTICS.md
/// ("pjdfstest results"), and the docs list none that the config does not.
#[test]
fn pjdfstest_expected_failures_are_documented() {
    let config = fs::read_to_string(repo_file("tests/pjdfstest.toml")).unwrap();
    let docs = fs::read_to_string(repo_file("docs/SEMANTICS.md")).unwrap();
    let expected = expected_failures(&config);
    let documented = documented_failures(&docs);
    let undocumented: Vec<&String> = expected.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "expected failures in tests/pjdfstest.toml without a reason in docs/SEMANTICS.md: \
         {undocumented:?}"
    );
    let unlisted: Vec<&String> = documented.difference(&expected).collect();
    assert!(
        unlisted.is_empty(),
        "docs/SEMANTICS.md lists expected pjdfstest failures that tests/pjdfstest.toml does \
         not: {unlisted:?}"
    );
}

#[test]
fn pjdfstest_parser() {
    let out = "\u{1b}[34mchmod::ok\u{1b}[0m    \u{1b}[32mok\u{1b}[0m\n\
               mkdir::x                          FAILED\n\
               \tassertion `left == right` failed\n\
               \x20 left: 1\n\
               open::y   skipped\n\
               \trequires features: posix_fallocate\n\
               a::b   failed as expected\n\
               c::d PASSED UNEXPECTEDLY\n\
               \n\
               Summary: 1 failed, 1 skipped, 1 passed, 1 expected failures, 5 total\n";
    let (cases, summary) = parse_pjdfstest(out);
    let got: Vec<(&str, Verdict)> = cases
        .iter()
        .map(|c| (c.name.as_str(), c.verdict.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("chmod::ok", Verdict::Ok),
            ("mkdir::x", Verdict::Failed),
            ("open::y", Verdict::Skipped),
            ("a::b", Verdict::ExpectedFailure),
            ("c::d", Verdict::UnexpectedPass),
        ]
    );
    assert_eq!(cases[1].details.len(), 2);
    assert!(summary.unwrap().contains("5 total"));
    let cfg = "expected_failures = [\n  # why\n  \"a::b\", # reason\n  \"c::d\",\n]\nx = [\"e\"]\n";
    assert_eq!(
        expected_failures(cfg),
        ["a::b", "c::d"].into_iter().map(String::from).collect()
    );
    assert_eq!(
        expected_failures("expected_failures = [\"x::y\"]\n"),
        ["x::y"].into_iter().map(String::from).collect()
    );
    let docs = "## pjdfstest results\nintro `not::this`\n\nExpected failures, one line each:\n\
                - `a::b`: why\n- `c::d::regular`: why\n\n- `not::this`: either\n## Next\n";
    assert_eq!(
        documented_failures(docs),
        ["a::b", "c::d::regular"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}

#[test]
fn pjdfstest_local() {
    const NAME: &str = "pjdfstest_local";
    require_fuse!(NAME);
    if !is_root() {
        note_skip(
            NAME,
            "needs root (pjdfstest switches users; chown and mknod tests need root)",
        );
        return;
    }
    let Some(pjdfstest) = find_tool("pjdfstest") else {
        note_skip(
            NAME,
            "pjdfstest is not installed (scripts/test.sh installs it)",
        );
        return;
    };
    for user in ["nobody", "tests"] {
        let known = Command::new("id")
            .arg(user)
            .output()
            .is_ok_and(|o| o.status.success());
        if !known {
            note_skip(
                NAME,
                &format!("user {user} is missing (scripts/test.sh creates it)"),
            );
            return;
        }
    }
    let _lock = heavy_lock();
    let (work, m) = local_mount(None, &["--allow-other"]);
    // A second, distinct file system for the EXDEV cases: the local disk under the work dir.
    let secondary = work.path().join("secondary");
    fs::create_dir(&secondary).unwrap();
    fs::set_permissions(&secondary, fs::Permissions::from_mode(0o755)).unwrap();
    // The erofs cases remount the mount read-only and back with `mount -o remount,ro MNT`.
    // mount(8) hands a `fuse` file system to the mount.fuse helper, which cannot remount (it
    // tries to run the source as a command); `mount -i` (no helper) does the plain
    // mount(2) MS_REMOUNT the cases want. Give pjdfstest a PATH whose `mount` adds -i.
    let real_mount = find_tool("mount").expect("mount(8) is installed");
    let bin_dir = work.path().join("bin");
    fs::create_dir(&bin_dir).unwrap();
    fs::write(
        bin_dir.join("mount"),
        format!("#!/bin/sh\nexec '{}' -i \"$@\"\n", real_mount.display()),
    )
    .unwrap();
    fs::set_permissions(bin_dir.join("mount"), fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::join_paths(
        std::iter::once(bin_dir.clone()).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )),
    )
    .unwrap();
    let config = repo_file("tests/pjdfstest.toml");
    let text = fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("\nallow_remount = false"),
        "tests/pjdfstest.toml should say `allow_remount = false` (the erofs cases run apart)"
    );
    // The erofs cases run first, in a pjdfstest process of their own: remounting read-only
    // fails with EBUSY while any file on the mount is open for writing, and some pjdfstest
    // 0.2.2 cases leak such descriptors (open::einval_invalid_combination and
    // posix_fallocate::affected_only_create_flags never close what they open), so in the
    // full run every erofs case after them would fail for pjdfstest's own reason.
    let erofs_config = work.path().join("pjdfstest-erofs.toml");
    fs::write(
        &erofs_config,
        text.replace("\nallow_remount = false", "\nallow_remount = true"),
    )
    .unwrap();
    let pjd = |config: &Path, patterns: &[&str]| {
        run(
            Command::new(&pjdfstest)
                .arg("-c")
                .arg(config)
                .arg("-p")
                .arg(&m.path)
                .arg("-s")
                .arg(&secondary)
                .args(patterns)
                .current_dir(&m.path)
                .env("PATH", &path)
                .env("NO_COLOR", "1")
                // A failure's panic message is enough; pjdfstest's own backtraces are noise.
                .env("RUST_BACKTRACE", "0"),
            Duration::from_secs(600),
        )
    };
    let erofs = pjd(&erofs_config, &["erofs"]);
    let (erofs_cases, erofs_summary) = parse_pjdfstest(&erofs.stdout);
    assert!(
        erofs_summary.is_some() && !erofs_cases.is_empty(),
        "pjdfstest (erofs cases) did not finish: {erofs}\n--- daemon log (tail) ---\n{}",
        log_tail(&m, 40)
    );
    let o = pjd(&config, &[]);
    let (mut cases, summary) = parse_pjdfstest(&o.stdout);
    // Merge: the full run skipped the erofs cases (allow_remount = false).
    for c in cases.iter_mut() {
        if c.verdict == Verdict::Skipped {
            if let Some(e) = erofs_cases.iter().find(|e| e.name == c.name) {
                c.verdict = e.verdict.clone();
                c.details = e.details.clone();
            }
        }
    }
    let count = |v: Verdict| cases.iter().filter(|c| c.verdict == v).count();
    let failed: Vec<&Case> = cases
        .iter()
        .filter(|c| c.verdict == Verdict::Failed)
        .collect();
    let unexpected_pass: Vec<&Case> = cases
        .iter()
        .filter(|c| c.verdict == Verdict::UnexpectedPass)
        .collect();
    eprintln!(
        "pjdfstest on {}: {} ok, {} skipped, {} FAILED, {} failed as expected, {} passed \
         unexpectedly ({} cases, {:.1?} + {:.1?} for the erofs cases)",
        m.path.display(),
        count(Verdict::Ok),
        count(Verdict::Skipped),
        failed.len(),
        count(Verdict::ExpectedFailure),
        unexpected_pass.len(),
        cases.len(),
        o.elapsed,
        erofs.elapsed,
    );
    eprintln!(
        "pjdfstest (erofs cases): {}",
        erofs_summary.as_deref().unwrap_or("")
    );
    eprintln!(
        "pjdfstest (all, erofs skipped): {}",
        summary.as_deref().unwrap_or("(no summary line)")
    );
    for c in cases.iter().filter(|c| c.verdict == Verdict::Skipped) {
        eprintln!(
            "pjdfstest skipped {}: {}",
            c.name,
            c.details.first().map(String::as_str).unwrap_or("")
        );
    }
    for c in &unexpected_pass {
        eprintln!(
            "WARNING: pjdfstest {} now passes: remove it from expected_failures in \
             tests/pjdfstest.toml and from docs/SEMANTICS.md",
            c.name
        );
    }
    let mut report = String::new();
    for c in &failed {
        report.push_str(&format!("FAILED {}\n", c.name));
        for d in &c.details {
            report.push_str(&format!("    {d}\n"));
        }
    }
    if !report.is_empty() {
        eprintln!("{report}");
    }
    let alive = fs::metadata(&m.path).is_ok();
    assert!(
        alive && summary.is_some(),
        "pjdfstest did not finish (mount alive: {alive}): {o}\n--- daemon log (tail) ---\n{}",
        log_tail(&m, 40)
    );
    assert!(
        failed.is_empty(),
        "{} pjdfstest case(s) failed that are not expected failures in tests/pjdfstest.toml:\n\
         {report}--- daemon log (tail) ---\n{}",
        failed.len(),
        log_tail(&m, 40)
    );
    assert!(
        !o.stderr.contains("panicked") && !erofs.stderr.contains("panicked"),
        "pjdfstest itself panicked: {o}\n{erofs}"
    );
    m.unmount();
    drop(work);
}

// ------------------------------------------------------------------------------------------------
// fsx

fn fsx_seed() -> u64 {
    match std::env::var("CRYPTBUCKET_FSX_SEED") {
        Ok(s) if !s.is_empty() => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CRYPTBUCKET_FSX_SEED={s} is not a u64")),
        _ => {
            let b = random_bytes(4);
            u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
    }
}

/// Run fsx with tests/fsx.toml on `<mount>/fsx.bin` for `ops` operations.
fn run_fsx(test: &str, m: &Mount, ops: u64, timeout: Duration) {
    let fsx = find_tool("fsx").expect("checked by the caller");
    let seed = fsx_seed();
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fsx-{test}-{seed}"));
    let _ = fs::remove_dir_all(&artifacts);
    fs::create_dir_all(&artifacts).unwrap();
    eprintln!(
        "{test}: fsx seed {seed}, {ops} operations (replay: CRYPTBUCKET_FSX_SEED={seed} \
         cargo test --test posix_suites {test})"
    );
    let o = run(
        Command::new(&fsx)
            .arg("-f")
            .arg(repo_file("tests/fsx.toml"))
            .arg("-N")
            .arg(ops.to_string())
            .arg("-S")
            .arg(seed.to_string())
            .arg("-P")
            .arg(&artifacts)
            .arg(m.path.join("fsx.bin"))
            .env("NO_COLOR", "1"),
        timeout,
    );
    eprintln!("{test}: fsx finished in {:.1?}: {}", o.elapsed, o.status);
    assert!(
        o.ok() && o.stdout.contains("All operations completed A-OK!"),
        "{test}: fsx failed (seed {seed}, {ops} operations; artifacts in {}): {o}\n\
         --- daemon log (tail) ---\n{}",
        artifacts.display(),
        log_tail(m, 40)
    );
    let _ = fs::remove_dir_all(&artifacts);
}

fn fsx_ops(default: u64) -> u64 {
    if long_tests() {
        default * 10
    } else {
        default
    }
}

#[test]
fn fsx_local() {
    const NAME: &str = "fsx_local";
    require_fuse!(NAME);
    if find_tool("fsx").is_none() {
        note_skip(NAME, "fsx is not installed (scripts/test.sh installs it)");
        return;
    }
    let _lock = heavy_lock();
    let (work, m) = local_mount(Some(FSX_CHUNK), &[]);
    let ops = fsx_ops(100_000);
    run_fsx(
        NAME,
        &m,
        ops,
        Duration::from_secs(60) + Duration::from_millis(ops * 5),
    );
    m.unmount();
    drop(work);
}

#[test]
fn fsx_s3() {
    const NAME: &str = "fsx_s3";
    require_fuse!(NAME);
    if find_tool("fsx").is_none() {
        note_skip(NAME, "fsx is not installed (scripts/test.sh installs it)");
        return;
    }
    let Some(endpoint) = s3_endpoint() else {
        note_skip(NAME, "CRYPTBUCKET_TEST_S3_ENDPOINT is not set");
        return;
    };
    let _lock = heavy_lock();
    let bucket = unique_bucket("fsx");
    s3_create_bucket(&endpoint, &bucket);
    let work = tempdir();
    let vol = Volume::s3(
        format!("s3://{bucket}/fsx"),
        &endpoint,
        Key::Passphrase(PASS.into()),
    );
    init_volume(&vol, Some(FSX_CHUNK));
    let m = vol.mount(&work.path().join("mnt"), &work.path().join("cache"));
    let ops = fsx_ops(20_000);
    run_fsx(
        NAME,
        &m,
        ops,
        Duration::from_secs(60) + Duration::from_millis(ops * 10),
    );
    m.unmount();
    drop(work);
}

// ------------------------------------------------------------------------------------------------
// set-ID bits (FUSE_HANDLE_KILLPRIV_V2: the daemon clears them, not the kernel)

/// Octal permission bits of `p` as the mount reports them.
fn perm_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Run `sh -c script` as the user nobody.
fn as_nobody(script: &str) {
    let st = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .status()
        .unwrap();
    assert!(st.success(), "as nobody: {script}");
}

/// Linux's rules: chown clears set-user-ID and a group-executable file's set-group-ID bit;
/// a write or truncate clears them only when the caller lacks CAP_FSETID (root keeps them).
#[test]
fn set_id_bits_are_cleared_on_chown_and_unprivileged_write_and_truncate() {
    const NAME: &str = "set_id_bits_are_cleared_on_chown_and_unprivileged_write_and_truncate";
    require_fuse!(NAME);
    if !is_root() || find_tool("setpriv").is_none() {
        note_skip(NAME, "needs root and setpriv (to write as another user)");
        return;
    }
    let (_work, m) = local_mount(None, &["--allow-other"]);
    let f = m.path.join("f");
    fs::write(&f, b"x").unwrap();
    let chmod = |mode: u32| fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
    chmod(0o6755);
    std::os::unix::fs::chown(&f, Some(0), Some(0)).unwrap();
    assert_eq!(perm_of(&f), 0o755, "chown (even by root) clears both bits");

    chmod(0o6777);
    fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(0)
        .unwrap();
    assert_eq!(perm_of(&f), 0o6777, "root's truncate keeps them");
    fs::write(&f, b"root").unwrap();
    assert_eq!(perm_of(&f), 0o6777, "root's write keeps them");

    let q = f.display();
    as_nobody(&format!("echo y >> '{q}'"));
    assert_eq!(perm_of(&f), 0o777, "an unprivileged write clears both");
    assert_eq!(fs::read(&f).unwrap(), b"rooty\n");

    chmod(0o4777);
    as_nobody(&format!("truncate -s 1 '{q}'"));
    assert_eq!(
        perm_of(&f),
        0o777,
        "an unprivileged truncate clears set-user-ID"
    );
    assert_eq!(fs::metadata(&f).unwrap().len(), 1);
    m.unmount();
}
