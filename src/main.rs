//! The `cryptbucket` binary: parse the command line, run, report errors plainly.

mod cli;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() {
    let args = cli::Cli::parse();
    let level = match args.verbose {
        0 => "cryptbucket=info",
        1 => "cryptbucket=debug",
        _ => "cryptbucket=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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
        cli::Command::Key(a) => cli::key::run(a),
        cli::Command::Passwd(a) => cli::passwd::run(a),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
