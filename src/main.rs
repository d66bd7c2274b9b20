//! The `cryptbucket` binary: parse the command line, run, report errors plainly.

mod cli;

use clap::{CommandFactory, Parser};
use tracing_subscriber::EnvFilter;

fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let subcommands: Vec<String> = cli::Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .chain(["help".to_string()])
        .collect();
    if cli::helper::is_helper_call(&argv, &subcommands) {
        // mount(8) / mount.fuse3 calling convention: becomes `cryptbucket mount ...`.
        if let Err(e) = cli::helper::run(&argv) {
            eprintln!("error: {e:#}");
            std::process::exit(cli::exit::code_for(&e));
        }
        return;
    }
    // A panic is a bug: say so plainly; the Rust details only with RUST_BACKTRACE set.
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        std::panic::set_hook(Box::new(|info| {
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            eprintln!(
                "error: internal error: cryptbucket panicked (a bug): {msg}
please report it; run with RUST_BACKTRACE=1 for details"
            );
        }));
    }
    let args = cli::Cli::parse();
    cli::config::set_path(args.config.clone());
    cli::ui::set_quiet(args.quiet);
    let level = match args.verbose {
        _ if args.quiet => "cryptbucket=warn",
        0 => "cryptbucket=info",
        1 => "cryptbucket=debug",
        _ => "cryptbucket=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // A background daemon's first lines belong in its log file too (see logsink).
    if argv.iter().any(|a| a == "--daemon-child") && !cli::extras::stderr_is_journal() {
        cli::logsink::start_capture();
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| cli::logsink::Sink)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    // Keep key material out of core dumps and away from ptrace by other users.
    // SAFETY: prctl with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let res = match args.cmd {
        cli::Command::Init(a) => cli::init::run(a),
        cli::Command::Mount(a) => cli::mount::run(a),
        cli::Command::Unmount(a) => cli::unmount::run(a),
        cli::Command::Status(a) => cli::status::run(a),
        cli::Command::Sync(a) => cli::sync::run(a),
        cli::Command::Completions(a) => cli::gen::completions(a),
        cli::Command::Manpage => cli::gen::manpage(),
        cli::Command::Key(a) => cli::key::run(a),
        cli::Command::Passwd(a) => cli::passwd::run(a),
        cli::Command::Fsck(a) => cli::fsck::run(a),
        cli::Command::Gc(a) => cli::gc::run(a),
        cli::Command::Rekey(a) => cli::rekey::run(a),
    };
    if let Err(e) = res {
        eprintln!("error: {}", error_chain(&e));
        std::process::exit(cli::exit::code_for(&e));
    }
}

/// The error and its causes on one line, skipping causes whose text a previous level
/// already included (our error types often embed their source's message).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if out.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}
