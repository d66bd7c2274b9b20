//! Exit codes: 0 success, 1 an operation failed, 2 a usage or configuration error (what clap
//! also returns for a bad command line). docs/CONFIGURATION.md documents them.

pub const FAILURE: i32 = 1;
pub const USAGE: i32 = 2;
/// `fsck`: errors were found and (some) are left.
pub const PROBLEMS: i32 = 3;
/// `fsck --repair`: errors were found and all were repaired.
pub const REPAIRED: i32 = 4;

/// An error in how the command was called or configured: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The exit code for an error returned by a subcommand.
pub fn code_for(e: &anyhow::Error) -> i32 {
    if e.chain().any(|c| c.downcast_ref::<UsageError>().is_some()) {
        USAGE
    } else {
        FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_map_to_2_even_with_context() {
        let e = anyhow::Error::new(UsageError("bad".into())).context("while mounting");
        assert_eq!(code_for(&e), USAGE);
        assert_eq!(code_for(&anyhow::anyhow!("disk full")), FAILURE);
    }
}
