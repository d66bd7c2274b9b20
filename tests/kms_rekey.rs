//! KMS key slots against the local KMS of the S3 test server (moto serves KMS on the same
//! port), and `rekey` (resumable after a kill -9) on a local directory.
//!
//! KMS calls are counted with an SDK interceptor (X-Amz-Target of each request). moto does
//! not enforce key state (a disabled key still decrypts there), so the disabled-key test
//! disables the key on moto and has the interceptor answer Decrypt the way AWS does for a
//! disabled key (400 DisabledException): what is tested is our handling of that answer.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextMut, BeforeTransmitInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::{Intercept, SharedInterceptor};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use cryptbucket::backend::kms::{KmsClient, KmsConfig};
use cryptbucket::backend::local::LocalStore;
use cryptbucket::backend::s3::{S3Config, S3Store};
use cryptbucket::backend::ObjectStore;
use cryptbucket::crypto::{Argon2Params, KeySource, VolumeParams};
use cryptbucket::meta::ROOT_INO;
use cryptbucket::vfs::Ctx;
use cryptbucket::volume;

use common::{
    run, s3_create_bucket, s3_endpoint, store_digest, tempdir, unique_bucket, Key, Volume,
    CMD_TIMEOUT,
};

const CTX: Ctx = Ctx {
    uid: 1000,
    gid: 1000,
    umask: 0o022,
};

fn pass(s: &str) -> KeySource {
    KeySource::Passphrase(zeroize::Zeroizing::new(s.to_string()))
}

fn data(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 31 + seed * 7) % 251) as u8).collect()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    volume::runtime().expect("runtime").block_on(f)
}

/// Counts KMS operations by name; optionally answers Decrypt as AWS does for a disabled key.
#[derive(Debug, Clone, Default)]
struct KmsCalls {
    seen: Arc<Mutex<Vec<String>>>,
    disabled: Arc<AtomicBool>,
}

impl KmsCalls {
    fn count(&self, op: &str) -> usize {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| *s == op)
            .count()
    }
    fn clear(&self) {
        self.seen.lock().expect("lock").clear();
    }
}

impl Intercept for KmsCalls {
    fn name(&self) -> &'static str {
        "test KMS call counter"
    }

    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = ctx
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or_default()
            .trim_start_matches("TrentService.")
            .to_string();
        self.seen.lock().expect("lock").push(target);
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        ctx: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let last = self.seen.lock().expect("lock").last().cloned();
        if self.disabled.load(Ordering::SeqCst) && last.as_deref() == Some("Decrypt") {
            let resp = ctx.response_mut();
            *resp.status_mut() = 400u16.try_into().expect("status");
            *resp.body_mut() = aws_smithy_types::body::SdkBody::from(
                r#"{"__type":"DisabledException","message":"key is disabled."}"#,
            );
        }
        Ok(())
    }
}

fn kms_client(ep: &str, calls: &KmsCalls) -> KmsClient {
    let cfg = KmsConfig {
        endpoint: Some(ep.to_string()),
        region: Some("us-east-1".into()),
        interceptors: vec![SharedInterceptor::new(calls.clone())],
        ..Default::default()
    };
    block_on(KmsClient::connect(cfg)).expect("kms client")
}

/// An SDK client for the test server's KMS (to set up keys and aliases).
fn kms_sdk(ep: &str) -> aws_sdk_kms::Client {
    let conf = aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new("us-east-1"))
        .endpoint_url(ep)
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .build();
    aws_sdk_kms::Client::from_conf(conf)
}

/// A new KMS key on the test server: (ARN, key id).
fn create_kms_key(ep: &str) -> (String, String) {
    let conf = aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new("us-east-1"))
        .endpoint_url(ep)
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .build();
    let c = aws_sdk_kms::Client::from_conf(conf);
    block_on(async {
        let k = c.create_key().send().await.expect("create key");
        let m = k.key_metadata().expect("metadata");
        (m.arn().expect("arn").to_string(), m.key_id().to_string())
    })
}

fn disable_kms_key(ep: &str, key_id: &str) {
    let conf = aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new("us-east-1"))
        .endpoint_url(ep)
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .build();
    let c = aws_sdk_kms::Client::from_conf(conf);
    block_on(c.disable_key().key_id(key_id).send()).expect("disable key");
}

fn s3_store(ep: &str, bucket: &str, prefix: &str) -> Arc<dyn ObjectStore> {
    let cfg = S3Config::new(bucket, Some(ep.to_string()))
        .with_region("us-east-1")
        .with_prefix(prefix);
    Arc::new(block_on(S3Store::connect(cfg)).expect("s3 store"))
}

fn write_file(v: &volume::Volume, name: &[u8], bytes: &[u8]) {
    let (_, fh) = v.vfs.create(&CTX, ROOT_INO, name, 0o644).expect("create");
    v.vfs.write(fh, 0, bytes).expect("write");
    v.vfs.release(fh).expect("release");
}

fn read_file(v: &volume::Volume, name: &[u8]) -> Vec<u8> {
    let ino = v.vfs.lookup(ROOT_INO, name).expect("lookup").ino;
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
    out
}

/// A TCP proxy on 127.0.0.1 in front of `upstream` that counts KMS operations in the
/// requests passing through (by their `X-Amz-Target: TrentService.<Op>` header), so calls
/// made by any process — the mount's parent and its daemon — are counted.
fn counting_proxy(upstream: &str) -> (String, Arc<Mutex<Vec<String>>>) {
    let upstream = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { return };
            let Ok(mut server) = std::net::TcpStream::connect(&upstream) else {
                return;
            };
            let (mut c2, mut s2) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Both);
            });
            let seen = seen2.clone();
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut window: Vec<u8> = Vec::new();
                let mut buf = [0u8; 16384];
                const NEEDLE: &[u8] = b"TrentService.";
                loop {
                    let n = match client.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    window.extend_from_slice(&buf[..n]);
                    // Count complete `TrentService.<Op>` tokens; keep an unfinished tail.
                    let mut start = 0;
                    while let Some(pos) = window[start..]
                        .windows(NEEDLE.len())
                        .position(|w| w == NEEDLE)
                    {
                        let op_start = start + pos + NEEDLE.len();
                        let Some(end) = window[op_start..]
                            .iter()
                            .position(|b| !b.is_ascii_alphanumeric())
                        else {
                            break;
                        };
                        let op = String::from_utf8_lossy(&window[op_start..op_start + end]);
                        seen.lock().expect("lock").push(op.into_owned());
                        start = op_start + end;
                    }
                    let keep = window.len().saturating_sub(start).min(64);
                    window.drain(..window.len() - keep);
                }
                let _ = server.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (format!("http://{addr}"), seen)
}

fn kms_cmd(vol: &Volume, ep: &str, sub: &[&str]) -> std::process::Command {
    let mut c = vol.cmd(sub[0], &sub[1..]);
    c.args(["--kms-endpoint", ep]);
    c
}

#[test]
fn kms_slot_add_unlock_with_one_decrypt_and_clear_errors() {
    let Some(ep) = s3_endpoint() else {
        common::note_skip(
            "kms_slot_add_unlock",
            "CRYPTBUCKET_TEST_S3_ENDPOINT not set",
        );
        return;
    };
    let bucket = unique_bucket("kms");
    s3_create_bucket(&ep, &bucket);
    let (arn, key_id) = create_kms_key(&ep);
    let vol = Volume::s3(
        format!("s3://{bucket}/v"),
        &ep,
        Key::Passphrase("pw".into()),
    );
    vol.init();

    // A wrong key id: a clear error, no slot added.
    let o = run(
        &mut kms_cmd(
            &vol,
            &ep,
            &[
                "key",
                "add",
                &vol.store,
                "--kms-key-id",
                "alias/no-such-key",
            ],
        ),
        CMD_TIMEOUT,
    );
    o.assert_clean_failure()
        .assert_stderr_mentions(&["alias/no-such-key", "does not exist"]);

    // Add a KMS slot through the binary; `key list` names its key.
    let o = run(
        &mut kms_cmd(&vol, &ep, &["key", "add", &vol.store, "--kms-key-id", &arn]),
        CMD_TIMEOUT,
    );
    o.assert_ok();
    assert!(o.stdout.contains("added key slot 1 (kms"), "{o}");
    let nokey = vol.with_key(Key::Nothing);
    let list = run(&mut nokey.cmd("key", &["list", &vol.store]), CMD_TIMEOUT);
    assert!(
        list.stdout.contains("2 key slot(s)")
            && list.stdout.contains(&format!("slot 1: kms ({arn})")),
        "{list}"
    );

    // Write a file with the passphrase.
    let store = s3_store(&ep, &bucket, "v");
    let cache = tempdir();
    let v = volume::open(
        volume::runtime().expect("rt"),
        store.clone(),
        &pass("pw"),
        Some(cache.path().into()),
    )
    .expect("open with passphrase");
    write_file(&v, b"f", &data(300_000, 1));
    v.unmount().expect("unmount");

    // Unlock with the KMS slot alone: exactly one KMS call (a Decrypt) for the whole mount,
    // however many objects are read.
    let calls = KmsCalls::default();
    let kms = kms_client(&ep, &calls);
    let rt = volume::runtime().expect("rt");
    let source = cryptbucket::admin::kms_key_source(&rt, &store, &kms, None).expect("kms unlock");
    let cache2 = tempdir();
    let v = volume::open(
        volume::runtime().expect("rt"),
        store.clone(),
        &source,
        Some(cache2.path().into()),
    )
    .expect("open with KMS");
    for _ in 0..3 {
        assert_eq!(read_file(&v, b"f"), data(300_000, 1));
    }
    write_file(&v, b"g", &data(10_000, 2));
    v.unmount().expect("unmount");
    assert_eq!(calls.count("Decrypt"), 1, "{:?}", calls.seen);
    assert_eq!(
        calls.seen.lock().expect("lock").len(),
        1,
        "{:?}",
        calls.seen
    );

    // Through the binary with no passphrase at all: the KMS slot is used automatically.
    let o = run(
        &mut kms_cmd(&nokey, &ep, &["key", "remove", &vol.store, "0"]),
        CMD_TIMEOUT,
    );
    o.assert_ok();
    let o = run(
        &mut kms_cmd(&nokey, &ep, &["key", "remove", &vol.store, "0"]),
        CMD_TIMEOUT,
    );
    o.assert_clean_failure()
        .assert_stderr_mentions(&["only key slot"]);
    assert!(
        volume::unlock(&rt, &store, &pass("pw")).is_err(),
        "passphrase slot removed"
    );

    // A disabled key: a clear error naming the key.
    disable_kms_key(&ep, &key_id);
    calls.clear();
    calls.disabled.store(true, Ordering::SeqCst);
    let err = cryptbucket::admin::kms_key_source(&rt, &store, &kms, None).expect_err("disabled");
    let msg = err.to_string();
    assert!(msg.contains("disabled") && msg.contains(&arn), "{msg}");
    assert_eq!(calls.count("Decrypt"), 1);
}

#[test]
fn kms_slot_added_by_alias_unlocks_the_volume() {
    let Some(ep) = s3_endpoint() else {
        common::note_skip(
            "kms_slot_added_by_alias_unlocks_the_volume",
            "CRYPTBUCKET_TEST_S3_ENDPOINT not set",
        );
        return;
    };
    let bucket = unique_bucket("kmsalias");
    s3_create_bucket(&ep, &bucket);
    let (arn, key_id) = create_kms_key(&ep);
    // Aliases are per account and region: a unique name per run.
    let alias = format!("alias/{bucket}");
    block_on(
        kms_sdk(&ep)
            .create_alias()
            .alias_name(&alias)
            .target_key_id(&key_id)
            .send(),
    )
    .expect("create alias");
    let vol = Volume::s3(
        format!("s3://{bucket}/v"),
        &ep,
        Key::Passphrase("pw".into()),
    );
    vol.init();
    let o = run(
        &mut kms_cmd(
            &vol,
            &ep,
            &["key", "add", &vol.store, "--kms-key-id", &alias],
        ),
        CMD_TIMEOUT,
    );
    o.assert_ok();
    assert!(o.stdout.contains("added key slot 1 (kms"), "{o}");
    let nokey = vol.with_key(Key::Nothing);
    let list = run(&mut nokey.cmd("key", &["list", &vol.store]), CMD_TIMEOUT);
    list.assert_ok();
    assert!(list.stdout.contains("slot 1: kms ("), "{list}");

    // The alias slot alone opens the volume: one Decrypt, and the data reads back.
    let store = s3_store(&ep, &bucket, "v");
    let cache = tempdir();
    let v = volume::open(
        volume::runtime().expect("rt"),
        store.clone(),
        &pass("pw"),
        Some(cache.path().into()),
    )
    .expect("open with passphrase");
    write_file(&v, b"f", &data(50_000, 3));
    v.unmount().expect("unmount");
    let calls = KmsCalls::default();
    let kms = kms_client(&ep, &calls);
    let rt = volume::runtime().expect("rt");
    let source = cryptbucket::admin::kms_key_source(&rt, &store, &kms, None)
        .expect("unlock with the slot added by alias");
    let cache2 = tempdir();
    let v = volume::open(
        volume::runtime().expect("rt"),
        store.clone(),
        &source,
        Some(cache2.path().into()),
    )
    .expect("open with KMS");
    assert_eq!(read_file(&v, b"f"), data(50_000, 3));
    v.unmount().expect("unmount");
    assert_eq!(calls.count("Decrypt"), 1, "{:?}", calls.seen);
    // The slot names the key (as given or as KMS resolved it), never nothing.
    assert!(
        list.stdout.contains(&alias) || list.stdout.contains(&arn) || list.stdout.contains(&key_id),
        "{list}"
    );
}

#[test]
fn init_with_kms_and_mount_with_it_alone() {
    let Some(ep) = s3_endpoint() else {
        common::note_skip("init_with_kms", "CRYPTBUCKET_TEST_S3_ENDPOINT not set");
        return;
    };
    let bucket = unique_bucket("kmsinit");
    s3_create_bucket(&ep, &bucket);
    let (arn, _) = create_kms_key(&ep);
    let vol = Volume::s3(format!("s3://{bucket}/v"), &ep, Key::Nothing);
    let o = run(
        &mut kms_cmd(&vol, &ep, &["init", &vol.store, "--kms-key-id", &arn]),
        CMD_TIMEOUT,
    );
    o.assert_ok();
    let list = run(&mut vol.cmd("key", &["list", &vol.store]), CMD_TIMEOUT);
    assert!(list.stdout.contains("slot 0: kms"), "{list}");
    // The blob is bound to this volume through the encryption context: unlock works and a
    // passphrase does not.
    let store = s3_store(&ep, &bucket, "v");
    let calls = KmsCalls::default();
    let kms = kms_client(&ep, &calls);
    let rt = volume::runtime().expect("rt");
    let source = cryptbucket::admin::kms_key_source(&rt, &store, &kms, None).expect("kms unlock");
    volume::unlock(&rt, &store, &source).expect("KMS slot opens the header");
    assert!(volume::unlock(&rt, &store, &pass("x")).is_err());
    assert_eq!(calls.count("Decrypt"), 1);

    // A real mount with the KMS slot alone (no passphrase anywhere), if FUSE is here.
    if let Some(why) = common::fuse_unavailable() {
        common::note_skip("init_with_kms_and_mount_with_it_alone (mount part)", &why);
        return;
    }
    let _g = common::heavy_lock();
    let dir = tempdir();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let (proxy, seen) = counting_proxy(&ep);
    let m = {
        let mut c = kms_cmd(
            &vol,
            &proxy,
            &["mount", &vol.store, mnt.to_str().expect("utf8")],
        );
        c.arg("--cache-dir").arg(dir.path().join("cache"));
        let o = run(&mut c, CMD_TIMEOUT);
        o.assert_ok();
        common::Mount::adopt(&mnt, &dir.path().join("cache"))
    };
    assert!(common::is_mounted(&mnt));
    for i in 0..20 {
        let name = mnt.join(format!("f{i}"));
        std::fs::write(&name, data(70_000, i)).expect("write through the mount");
        assert_eq!(std::fs::read(&name).expect("read"), data(70_000, i));
    }
    m.unmount();
    // The whole mount (parent and daemon, 20 files written and read) made one KMS call.
    assert_eq!(*seen.lock().expect("lock"), vec!["Decrypt".to_string()]);
}

/// A local volume with `n` multi-chunk files (chunk size 64 KiB); returns the file contents.
fn local_volume(root: &Path, n: usize) -> (Arc<dyn ObjectStore>, BTreeMap<String, Vec<u8>>) {
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
        &pass("pw"),
        Argon2Params::MINIMUM,
    )
    .expect("create");
    let cache = tempdir();
    let v = volume::open(
        volume::runtime().expect("rt"),
        store.clone(),
        &pass("pw"),
        Some(cache.path().into()),
    )
    .expect("open");
    let mut files = BTreeMap::new();
    for i in 0..n {
        let name = format!("file{i}");
        let bytes = data(150_000 + i * 1000, i);
        write_file(&v, name.as_bytes(), &bytes);
        files.insert(name, bytes);
    }
    write_file(&v, b"small", b"inline");
    files.insert("small".into(), b"inline".to_vec());
    v.unmount().expect("unmount");
    (store, files)
}

fn chunk_objects(root: &Path) -> Vec<PathBuf> {
    store_digest(root)
        .into_keys()
        .filter(|p| p.starts_with("d"))
        .collect()
}

fn check_files(store: &Arc<dyn ObjectStore>, key: &KeySource, files: &BTreeMap<String, Vec<u8>>) {
    let cache = tempdir();
    let v = volume::open(
        volume::runtime().expect("rt"),
        store.clone(),
        key,
        Some(cache.path().into()),
    )
    .expect("open after rekey");
    for (name, bytes) in files {
        assert_eq!(&read_file(&v, name.as_bytes()), bytes, "{name}");
    }
    v.unmount().expect("unmount");
}

#[test]
fn rekey_resumes_after_kill_and_keeps_slots() {
    let dir = tempdir();
    let root = dir.path().join("store");
    let (store, files) = local_volume(&root, 6);
    let kf = dir.path().join("second.key");
    std::fs::write(&kf, [9u8; 32]).expect("keyfile");
    let keyfile = KeySource::Keyfile(zeroize::Zeroizing::new(vec![9u8; 32]));
    let rt = volume::runtime().expect("rt");
    cryptbucket::admin::add_slot(&rt, &store, &pass("pw"), &keyfile, Argon2Params::MINIMUM)
        .expect("add keyfile slot");
    let old_chunks = chunk_objects(&root);
    assert!(old_chunks.len() >= 18, "{}", old_chunks.len());
    let old_header = std::fs::read(root.join("cryptbucket.json")).expect("header");
    let vol = Volume::local(&root, Key::Passphrase("pw".into()));

    // Refused while the volume is in use (its writer lease is held).
    {
        let cache = tempdir();
        let v = volume::open(
            volume::runtime().expect("rt"),
            store.clone(),
            &pass("pw"),
            Some(cache.path().into()),
        )
        .expect("open");
        run(
            &mut vol.cmd(
                "rekey",
                &[&vol.store, "--extra-keyfile", kf.to_str().expect("utf8")],
            ),
            CMD_TIMEOUT,
        )
        .assert_clean_failure()
        .assert_stderr_mentions(&["already mounted"]);
        v.unmount().expect("unmount");
    }
    // Refused without the secret of the other slot (and writes nothing).
    let before = store_digest(&root);
    run(&mut vol.cmd("rekey", &[&vol.store]), CMD_TIMEOUT)
        .assert_clean_failure()
        .assert_stderr_mentions(&["slot 1 (keyfile)", "--drop-other-slots"]);
    assert_eq!(before, store_digest(&root));

    // kill -9 after 5 chunks: old objects all still there, the new header pending.
    let mut c = vol.cmd(
        "rekey",
        &[&vol.store, "--extra-keyfile", kf.to_str().expect("utf8")],
    );
    c.env("CRYPTBUCKET_TEST_REKEY_KILL_AFTER", "5");
    let o = run(&mut c, CMD_TIMEOUT);
    assert!(!o.ok(), "the rekey was to be killed: {o}");
    let now = chunk_objects(&root);
    for c in &old_chunks {
        assert!(now.contains(c), "old chunk {c:?} deleted before the end");
    }
    assert!(
        now.len() > old_chunks.len(),
        "some chunks were re-sealed before the kill"
    );
    assert!(root.join("cryptbucket.json.rekey").exists());
    assert_eq!(
        std::fs::read(root.join("cryptbucket.json")).expect("header"),
        old_header
    );

    // Run it again: it finishes.
    let o = run(&mut vol.cmd("rekey", &[&vol.store]), CMD_TIMEOUT);
    o.assert_ok();
    assert!(
        o.stdout.contains("finished the interrupted rekey") || o.stderr.contains("resuming"),
        "{o}"
    );
    let after = chunk_objects(&root);
    assert_eq!(after.len(), old_chunks.len(), "one new chunk per old chunk");
    for c in &old_chunks {
        assert!(!after.contains(c), "old chunk {c:?} still there");
    }
    assert!(!root.join("cryptbucket.json.rekey").exists());
    assert!(!root.join("m/rekey").exists());
    assert_eq!(
        std::fs::read(root.join("cryptbucket.json")).expect("h"),
        std::fs::read(root.join("cryptbucket.json.bak")).expect("b")
    );

    // Every file reads correctly, with the passphrase and with the kept keyfile slot.
    check_files(&store, &pass("pw"), &files);
    check_files(&store, &keyfile, &files);

    // The old header (a copy an attacker kept) opens, but its key opens nothing any more.
    let old_store: Arc<dyn ObjectStore> =
        Arc::new(cryptbucket::backend::memory::MemoryStore::new());
    let old_keys = cryptbucket::crypto::open_header(&old_header, &pass("pw")).expect("old header");
    let remote = cryptbucket::meta::remote::RemoteMeta::new(
        store.clone(),
        Arc::new(old_keys),
        rt.handle().clone(),
    );
    assert!(
        remote.fetch_head().is_err(),
        "the old key still opens the metadata"
    );
    drop(old_store);

    // A second rekey with nothing interrupted is a fresh one, and works too.
    let o = run(
        &mut vol.cmd("rekey", &[&vol.store, "--drop-other-slots"]),
        CMD_TIMEOUT,
    );
    o.assert_ok();
    assert!(
        o.stderr
            .contains("key slot(s) 1 of the old header were removed"),
        "{o}"
    );
    check_files(&store, &pass("pw"), &files);
    assert!(volume::unlock(&rt, &store, &keyfile).is_err());
}
