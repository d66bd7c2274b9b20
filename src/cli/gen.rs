//! `cryptbucket completions SHELL` and `cryptbucket manpage`: generated from the CLI itself.

use anyhow::Result;
use clap::{Args, CommandFactory};
use clap_complete::Shell;

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: Shell,
}

/// Die quietly when stdout is closed early (`cryptbucket manpage | head`), like other tools.
/// Only for commands that just print: the daemon must never die of SIGPIPE.
pub fn default_sigpipe() {
    // SAFETY: restoring the default disposition of a signal.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

pub fn completions(args: CompletionsArgs) -> Result<()> {
    default_sigpipe();
    let mut cmd = super::Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "cryptbucket", &mut std::io::stdout());
    Ok(())
}

/// The man page (roff) for cryptbucket(1), with one section per subcommand.
pub fn manpage() -> Result<()> {
    default_sigpipe();
    let cmd = super::Cli::command();
    let mut out = std::io::stdout();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render(&mut out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        use std::io::Write;
        writeln!(out, ".SH \"CRYPTBUCKET {}\"", sub.get_name().to_uppercase())?;
        let sub = sub
            .clone()
            .bin_name(format!("cryptbucket {}", sub.get_name()));
        let m = clap_mangen::Man::new(sub);
        m.render_synopsis_section(&mut out)?;
        m.render_options_section(&mut out)?;
    }
    Ok(())
}
