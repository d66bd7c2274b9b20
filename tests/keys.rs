//! Key management through the real binary: `key list|add|remove` and `passwd`, on a local
//! directory and on the S3 test server. `passwd` must change the header and nothing else.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cryptbucket::backend::local::LocalStore;
use cryptbucket::backend::ObjectStore;
use cryptbucket::crypto::{Argon2Params, KeySource, VolumeParams};
use cryptbucket::meta::ROOT_INO;
use cryptbucket::vfs::Ctx;
use cryptbucket::volume::{self, VolumeError};

use common::{
    run, s3_create_bucket, s3_digest, s3_endpoint, store_digest, tempdir, unique_bucket, Key,
    Volume, CMD_TIMEOUT,
};

const CTX: Ctx = Ctx {
    uid: 1000,
    gid: 1000,
    umask: 0o022,
};

fn pass(s: &str) -> KeySource {
    KeySource::Passphrase(zeroize::Zeroizing::new(s.to_string()))
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

/// A local volume holding a multi-chunk file and a small (inline) one, made with the library.
fn local_volume_with_files(root: &Path, passphrase: &str) -> Arc<dyn ObjectStore> {
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::create(root).expect("local store"));
    let rt = volume::runtime().expect("runtime");
    let params = VolumeParams {
        chunk_size: 64 * 1024,
        block_size: 4096,
        ..VolumeParams::default()
    };
    volume::create(
        &rt,
        store.clone(),
        params,
        &pass(passphrase),
        Argon2Params::MINIMUM,
    )
    .expect("create");
    let cache = tempdir();
    let v = volume::open(
        volume::runtime().expect("runtime"),
        store.clone(),
        &pass(passphrase),
        Some(cache.path().to_owned()),
    )
    .expect("open");
    let (attr, fh) = v
        .vfs
        .create(&CTX, ROOT_INO, b"big", 0o644)
        .expect("create big");
    v.vfs.write(fh, 0, &data(200_000)).expect("write");
    v.vfs.release(fh).expect("release");
    let (_, fh) = v
        .vfs
        .create(&CTX, ROOT_INO, b"small", 0o644)
        .expect("create small");
    v.vfs.write(fh, 0, b"hello").expect("write");
    v.vfs.release(fh).expect("release");
    v.unmount().expect("unmount");
    assert!(attr.ino > ROOT_INO);
    store
}

fn read_big(store: &Arc<dyn ObjectStore>, key: &KeySource) -> Vec<u8> {
    let cache = tempdir();
    let v = volume::open(
        volume::runtime().expect("runtime"),
        store.clone(),
        key,
        Some(cache.path().to_owned()),
    )
    .expect("open");
    let ino = v.vfs.lookup(ROOT_INO, b"big").expect("lookup").ino;
    let fh = v.vfs.open(ino).expect("open file");
    let mut out = Vec::new();
    loop {
        let got = v.vfs.read(fh, out.len() as u64, 1 << 20).expect("read");
        if got.is_empty() {
            break;
        }
        out.extend_from_slice(&got);
    }
    v.vfs.release(fh).expect("release");
    v.unmount().expect("unmount");
    out
}

fn without_headers(d: BTreeMap<PathBuf, String>) -> BTreeMap<PathBuf, String> {
    d.into_iter()
        .filter(|(p, _)| !p.to_string_lossy().starts_with("cryptbucket.json"))
        .collect()
}

#[test]
fn passwd_rewrites_the_header_and_no_data_object() {
    let dir = tempdir();
    let root = dir.path().join("store");
    let store = local_volume_with_files(&root, "old secret");
    let before = store_digest(&root);
    let data_before = without_headers(before.clone());
    assert!(
        data_before.keys().any(|p| p.starts_with("d")),
        "the fixture has chunk objects: {data_before:?}"
    );
    let vol = Volume::local(&root, Key::Passphrase("old secret".into()));
    let mut c = vol.cmd("passwd", &[&vol.store]);
    c.env("CRYPTBUCKET_NEW_PASSPHRASE", "new secret");
    run(&mut c, CMD_TIMEOUT).assert_ok();

    let after = store_digest(&root);
    assert_eq!(
        data_before,
        without_headers(after.clone()),
        "passwd changed a data object"
    );
    let h = |d: &BTreeMap<PathBuf, String>, k: &str| d.get(Path::new(k)).cloned();
    assert_ne!(
        h(&before, "cryptbucket.json"),
        h(&after, "cryptbucket.json")
    );
    assert_eq!(
        h(&after, "cryptbucket.json"),
        h(&after, "cryptbucket.json.bak"),
        "backup rewritten too"
    );

    assert_eq!(read_big(&store, &pass("new secret")), data(200_000));
    let rt = volume::runtime().expect("runtime");
    assert!(matches!(
        volume::unlock(&rt, &store, &pass("old secret")),
        Err(VolumeError::WrongKey { .. })
    ));
    // passwd with the old passphrase is now refused, and writes nothing.
    let mut c = vol.cmd("passwd", &[&vol.store]);
    c.env("CRYPTBUCKET_NEW_PASSPHRASE", "third");
    run(&mut c, CMD_TIMEOUT)
        .assert_clean_failure()
        .assert_stderr_mentions(&["wrong passphrase"]);
    assert_eq!(after, store_digest(&root));
}

#[test]
fn key_add_list_remove_local() {
    let dir = tempdir();
    let root = dir.path().join("store");
    let vol = Volume::local(&root, Key::Passphrase("first".into()));
    vol.init();
    let kf = dir.path().join("second.key");
    let mut c = vol.cmd("key", &["add", &vol.store]);
    c.arg("--new-keyfile").arg(&kf);
    let o = run(&mut c, CMD_TIMEOUT);
    o.assert_ok();
    assert!(o.stdout.contains("added key slot 1 (keyfile)"), "{o}");
    assert_eq!(std::fs::read(&kf).expect("keyfile created").len(), 32);

    let list = run(
        &mut Volume::local(&root, Key::Nothing).cmd("key", &["list", &vol.store]),
        CMD_TIMEOUT,
    );
    list.assert_ok();
    assert!(
        list.stdout.contains("slot 0: passphrase") && list.stdout.contains("slot 1: keyfile"),
        "{list}"
    );

    // A wrong current key adds nothing.
    let before = store_digest(&root);
    let mut c = vol
        .with_key(Key::Passphrase("wrong".into()))
        .cmd("key", &["add", &vol.store]);
    c.env("CRYPTBUCKET_NEW_PASSPHRASE", "x");
    run(&mut c, CMD_TIMEOUT)
        .assert_clean_failure()
        .assert_stderr_mentions(&["wrong passphrase"]);
    assert_eq!(before, store_digest(&root));

    // Remove the passphrase slot using the keyfile; the keyfile alone remains and is the last.
    let by_kf = vol.with_key(Key::Keyfile(kf.clone()));
    run(
        &mut by_kf.cmd("key", &["remove", &vol.store, "0"]),
        CMD_TIMEOUT,
    )
    .assert_ok();
    let before = store_digest(&root);
    run(
        &mut by_kf.cmd("key", &["remove", &vol.store, "0"]),
        CMD_TIMEOUT,
    )
    .assert_clean_failure()
    .assert_stderr_mentions(&["only key slot"]);
    assert_eq!(
        before,
        store_digest(&root),
        "a refused remove writes nothing"
    );
    let list = run(
        &mut Volume::local(&root, Key::Nothing).cmd("key", &["list", &vol.store]),
        CMD_TIMEOUT,
    );
    assert!(
        list.stdout.contains("1 key slot(s)") && list.stdout.contains("slot 0: keyfile"),
        "{list}"
    );
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(&root).expect("open"));
    let rt = volume::runtime().expect("runtime");
    assert!(volume::unlock(&rt, &store, &pass("first")).is_err());
    assert_eq!(
        before.get(Path::new("cryptbucket.json")),
        before.get(Path::new("cryptbucket.json.bak"))
    );
}

#[test]
fn key_add_and_passwd_on_s3() {
    let Some(ep) = s3_endpoint() else {
        common::note_skip(
            "key_add_and_passwd_on_s3",
            "CRYPTBUCKET_TEST_S3_ENDPOINT not set",
        );
        return;
    };
    let bucket = unique_bucket("keys");
    s3_create_bucket(&ep, &bucket);
    let vol = Volume::s3(
        format!("s3://{bucket}/v"),
        &ep,
        Key::Passphrase("one".into()),
    );
    vol.init();
    let before = s3_digest(&ep, &bucket);
    let mut c = vol.cmd("key", &["add", &vol.store]);
    c.env("CRYPTBUCKET_NEW_PASSPHRASE", "two");
    run(&mut c, CMD_TIMEOUT).assert_ok();
    let mut c = vol
        .with_key(Key::Passphrase("two".into()))
        .cmd("passwd", &[&vol.store]);
    c.env("CRYPTBUCKET_NEW_PASSPHRASE", "three");
    run(&mut c, CMD_TIMEOUT).assert_ok();
    let after = s3_digest(&ep, &bucket);
    let strip = |d: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        d.iter()
            .filter(|(k, _)| !k.starts_with("v/cryptbucket.json"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_eq!(strip(&before), strip(&after));
    assert_eq!(
        after.get("v/cryptbucket.json"),
        after.get("v/cryptbucket.json.bak")
    );
    assert_ne!(
        before.get("v/cryptbucket.json"),
        after.get("v/cryptbucket.json")
    );
    let list = run(
        &mut Volume::s3(vol.store.clone(), &ep, Key::Nothing).cmd("key", &["list", &vol.store]),
        CMD_TIMEOUT,
    );
    assert!(list.stdout.contains("2 key slot(s)"), "{list}");
    // "two" was replaced by "three"; "one" still works.
    let mut c = vol
        .with_key(Key::Passphrase("two".into()))
        .cmd("key", &["remove", &vol.store, "0"]);
    run(&mut c, CMD_TIMEOUT)
        .assert_clean_failure()
        .assert_stderr_mentions(&["wrong passphrase"]);
    let mut c = vol
        .with_key(Key::Passphrase("three".into()))
        .cmd("key", &["remove", &vol.store, "0"]);
    run(&mut c, CMD_TIMEOUT).assert_ok();
}
