//! `--passphrase-command CMD`: the passphrase is the first line CMD prints on stdout (like
//! gocryptfs -extpass), run through `sh -c` with our stdin and stderr so it can prompt.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use zeroize::Zeroizing;

pub fn run(cmd: &str) -> Result<Zeroizing<String>> {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::inherit())
        .stderr(Stdio::inherit())
        .stdout(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run the passphrase command `{cmd}`"))?;
    let stdout = Zeroizing::new(out.stdout);
    if !out.status.success() {
        let how = match out.status.code() {
            Some(c) => format!("exit code {c}"),
            None => "killed by a signal".to_string(),
        };
        bail!("the passphrase command `{cmd}` failed ({how}); nothing was unlocked");
    }
    let text = std::str::from_utf8(&stdout)
        .map_err(|_| anyhow::anyhow!("the passphrase command `{cmd}` printed non-UTF-8 bytes"))?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        bail!("the passphrase command `{cmd}` printed nothing on stdout");
    }
    Ok(Zeroizing::new(line.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_of_stdout() {
        let p = run("printf 'secret one\\nsecond line\\n'").expect("runs");
        assert_eq!(p.as_str(), "secret one");
    }

    #[test]
    fn failure_and_empty_output_are_errors() {
        let e = run("echo oops; exit 3").expect_err("must fail");
        assert!(format!("{e:#}").contains("exit code 3"), "{e:#}");
        let e = run("true").expect_err("must fail");
        assert!(format!("{e:#}").contains("printed nothing"), "{e:#}");
    }
}
