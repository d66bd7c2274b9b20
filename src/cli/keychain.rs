//! The desktop keyring (Secret Service on Linux: GNOME Keyring, KWallet, KeePassXC) as a
//! passphrase source. Saving is always an explicit choice (`mount --remember-passphrase`,
//! `key remember`); once saved, `mount` uses it before prompting. Entries are keyed by the
//! resolved store (service "cryptbucket", account = `account()`), so a config-file name and
//! the store it points to share one entry.

use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use zeroize::Zeroizing;

use super::exit::UsageError;
use super::StoreArgs;

pub const SERVICE: &str = "cryptbucket";

/// A Secret Service that shows an unlock dialog may take a while; one that never answers
/// must not hang a mount at boot.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(120);

/// The account name of a store: an absolute path, or s3://bucket/prefix plus the endpoint.
pub fn account(store: &StoreArgs) -> String {
    match super::parse_store(&store.store) {
        Ok(super::StoreLocation::Local(dir)) => std::fs::canonicalize(&dir)
            .unwrap_or(dir)
            .to_string_lossy()
            .into_owned(),
        Ok(super::StoreLocation::S3 { bucket, prefix }) => {
            let mut a = format!("s3://{bucket}/{prefix}");
            if let Some(ep) = &store.endpoint {
                a.push_str(&format!(" at {}", ep.trim_end_matches('/')));
            }
            a
        }
        Err(_) => store.store.clone(),
    }
}

/// Run a keyring call on its own thread: the Secret Service client drives its own async
/// runtime, and a dead or dialog-blocked service must end in an error, not a hang.
fn with_timeout<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> keyring::Result<T> + Send + 'static,
) -> Result<keyring::Result<T>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("cb-keyring".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| anyhow!("cannot start the keyring thread: {e}"))?;
    rx.recv_timeout(timeout).map_err(|_| {
        anyhow!(
            "the desktop keyring did not answer within {}s (is an unlock dialog waiting, or is the Secret Service hung?)",
            timeout.as_secs()
        )
    })
}

/// Turn a keyring error into what happened, why, and what to do.
pub fn explain(e: keyring::Error, doing: &str) -> anyhow::Error {
    match e {
        keyring::Error::NoStorageAccess(inner) => anyhow!(UsageError(format!(
            "cannot {doing}: the desktop keyring is locked or refused access ({inner}); unlock it (log in to the desktop session) and retry, or use --passphrase-file / --passphrase-command instead"
        ))),
        keyring::Error::PlatformFailure(inner) => anyhow!(UsageError(format!(
            "cannot {doing}: no desktop keyring (Secret Service) is reachable ({inner}); this needs a desktop session with GNOME Keyring, KWallet or KeePassXC running on the session D-Bus — on a server use --passphrase-file, --passphrase-command or CRYPTBUCKET_PASSPHRASE instead"
        ))),
        keyring::Error::BadEncoding(_) => anyhow!(
            "cannot {doing}: the saved entry is not a UTF-8 passphrase; run `cryptbucket key forget STORE` and save it again"
        ),
        keyring::Error::Ambiguous(_) => anyhow!(
            "cannot {doing}: the keyring holds several entries for this store; remove the extra ones with your keyring manager (service \"{SERVICE}\")"
        ),
        other => anyhow!("cannot {doing}: {other}"),
    }
}

/// The saved passphrase in `entry`, or None when there is none.
pub fn get(entry: &keyring::Entry) -> keyring::Result<Option<Zeroizing<String>>> {
    match entry.get_password() {
        Ok(p) => Ok(Some(Zeroizing::new(p))),
        Err(keyring::Error::NoEntry) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Remove the entry; false if there was none.
pub fn delete(entry: &keyring::Entry) -> keyring::Result<bool> {
    match entry.delete_credential() {
        Ok(()) => Ok(true),
        Err(keyring::Error::NoEntry) => Ok(false),
        Err(e) => Err(e),
    }
}

fn entry(account: &str) -> keyring::Result<keyring::Entry> {
    keyring::Entry::new(SERVICE, account)
}

/// The passphrase saved for `account`, if a keyring is reachable and has one. Never an
/// error: a missing or locked keyring only means we prompt as usual.
pub fn lookup(account: &str) -> Option<Zeroizing<String>> {
    if std::env::var_os("CRYPTBUCKET_NO_KEYRING").is_some() {
        return None;
    }
    let acc = account.to_string();
    match with_timeout(LOOKUP_TIMEOUT, move || get(&entry(&acc)?)) {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            tracing::debug!("no passphrase from the desktop keyring: {e}");
            None
        }
        Err(e) => {
            tracing::warn!("{e:#}; asking for the passphrase instead");
            None
        }
    }
}

/// Save `pass` for `account` (replacing an older one).
pub fn save(account: &str, pass: &str) -> Result<()> {
    let acc = account.to_string();
    let pass = Zeroizing::new(pass.to_string());
    with_timeout(CHANGE_TIMEOUT, move || entry(&acc)?.set_password(&pass))?
        .map_err(|e| explain(e, "save the passphrase in the desktop keyring"))
}

/// Forget the passphrase saved for `account`; false if none was saved.
pub fn forget(account: &str) -> Result<bool> {
    let acc = account.to_string();
    with_timeout(CHANGE_TIMEOUT, move || delete(&entry(&acc)?))?
        .map_err(|e| explain(e, "remove the passphrase from the desktop keyring"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mock_entry(acc: &str) -> keyring::Entry {
        let builder = keyring::mock::default_credential_builder();
        let cred = builder.build(None, SERVICE, acc).expect("mock credential");
        keyring::Entry::new_with_credential(cred)
    }

    #[test]
    fn save_get_forget_through_the_mock_store() {
        let e = mock_entry("/tmp/store");
        assert_eq!(get(&e).expect("get"), None, "nothing saved yet");
        e.set_password("correct horse").expect("set");
        assert_eq!(
            get(&e).expect("get").as_deref().map(String::as_str),
            Some("correct horse")
        );
        assert!(delete(&e).expect("delete"));
        assert!(!delete(&e).expect("second delete"), "already gone");
        assert_eq!(get(&e).expect("get"), None);
    }

    #[test]
    fn keyring_failures_say_what_to_do() {
        let e = mock_entry("/tmp/store");
        let mock: &keyring::mock::MockCredential = e
            .get_credential()
            .downcast_ref()
            .expect("a mock credential");
        mock.set_error(keyring::Error::PlatformFailure(
            "org.freedesktop.DBus.Error.ServiceUnknown".into(),
        ));
        let err = get(&e).expect_err("injected failure");
        let msg = format!("{:#}", explain(err, "read the passphrase"));
        assert!(
            msg.contains("no desktop keyring (Secret Service) is reachable"),
            "{msg}"
        );
        assert!(msg.contains("--passphrase-file"), "{msg}");
        let locked = explain(keyring::Error::NoStorageAccess("locked".into()), "save");
        assert!(format!("{locked}").contains("unlock it"));
        assert_eq!(
            super::super::exit::code_for(&locked),
            super::super::exit::USAGE
        );
    }

    #[test]
    fn account_names_the_resolved_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = StoreArgs {
            store: dir.path().join(".").to_string_lossy().into_owned(),
            endpoint: None,
            region: None,
            s3: Default::default(),
            io_timeout: None,
        };
        let canon = std::fs::canonicalize(dir.path()).expect("canon");
        assert_eq!(account(&args), canon.to_string_lossy());
        args.store = "s3://bkt/some/prefix".into();
        args.endpoint = Some("http://127.0.0.1:9000/".into());
        assert_eq!(
            account(&args),
            "s3://bkt/some/prefix at http://127.0.0.1:9000"
        );
    }
}
