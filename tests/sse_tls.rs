//! Server-side encryption and TLS of the S3 backend, against the S3 test server (moto):
//! every request is recorded by an SDK interceptor and its SSE headers checked (moto accepts
//! but does not enforce SSE-C, so the headers are what we can verify); a volume round trip
//! under SSE-C; the binary's SSE-C mismatch messages; HTTPS through a local TLS proxy with a
//! self-signed CA (works with --ca-bundle, refused without); plain http to a non-loopback
//! host refused unless --allow-insecure-http.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::{Intercept, SharedInterceptor};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use bytes::Bytes;

use cryptbucket::backend::s3::{S3Config, S3Store};
use cryptbucket::backend::sse::{SseCustomerKey, SseMode};
use cryptbucket::backend::{ObjectStore, PutMode};
use cryptbucket::crypto::{Argon2Params, KeySource, VolumeParams};
use cryptbucket::meta::ROOT_INO;
use cryptbucket::vfs::Ctx;
use cryptbucket::volume::{self, HEADER_BACKUP_KEY, HEADER_KEY};

use common::{
    run, s3_create_bucket, s3_endpoint, tempdir, unique_bucket, Key, Volume, CMD_TIMEOUT,
};

/// One request as sent: method, path and query, and its SSE headers (lowercase names).
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    sse: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.sse
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Intercept for Recorder {
    fn name(&self) -> &'static str {
        "test request recorder"
    }

    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let req = ctx.request();
        let sse = req
            .headers()
            .iter()
            .filter(|(n, _)| {
                n.to_ascii_lowercase()
                    .starts_with("x-amz-server-side-encryption")
            })
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
            .collect();
        self.0.lock().expect("lock").push(Seen {
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            sse,
        });
        Ok(())
    }
}

impl Recorder {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.lock().expect("lock"))
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn config(ep: &str, bucket: &str, rec: &Recorder) -> S3Config {
    let mut cfg = S3Config::new(bucket, Some(ep.to_string())).with_region("us-east-1");
    cfg.interceptors = vec![SharedInterceptor::new(rec.clone())];
    cfg.sse_c_exempt = vec![HEADER_KEY.to_string(), HEADER_BACKUP_KEY.to_string()];
    cfg
}

/// The object key of a request to `bucket`, or None for bucket-level requests (list, head bucket).
fn object_key<'a>(seen: &'a Seen, bucket: &str) -> Option<&'a str> {
    let path = seen.uri.split("://").nth(1)?.split_once('/')?.1;
    let path = path.split('?').next()?;
    let key = path.strip_prefix(bucket)?.strip_prefix('/')?;
    (!key.is_empty()).then_some(key)
}

#[test]
fn sse_s3_kms_dsse_headers_on_every_put() {
    let Some(ep) = s3_endpoint() else {
        common::note_skip("sse_s3_kms_dsse_headers_on_every_put", "no S3 test server");
        return;
    };
    let bucket = unique_bucket("sse");
    s3_create_bucket(&ep, &bucket);
    let cases = [
        (SseMode::S3, "AES256", None, None),
        (
            SseMode::Kms {
                kms_key_id: Some("alias/cryptbucket-test".into()),
                bucket_key: true,
            },
            "aws:kms",
            Some("alias/cryptbucket-test"),
            Some("true"),
        ),
        (
            SseMode::Kms {
                kms_key_id: None,
                bucket_key: false,
            },
            "aws:kms",
            None,
            None,
        ),
        (
            SseMode::Dsse {
                kms_key_id: Some("alias/d".into()),
            },
            "aws:kms:dsse",
            Some("alias/d"),
            None,
        ),
    ];
    for (i, (mode, want, key_id, bucket_key)) in cases.into_iter().enumerate() {
        let rec = Recorder::default();
        let mut cfg = config(&ep, &bucket, &rec).with_prefix(format!("case{i}"));
        cfg.sse = Some(mode.clone());
        block_on(async {
            let s = S3Store::connect(cfg).await.expect("connect");
            s.put("a", Bytes::from_static(b"one"), PutMode::Create)
                .await
                .expect("put create");
            let m = s
                .put("a", Bytes::from_static(b"two"), PutMode::Overwrite)
                .await
                .expect("put");
            s.put(
                "a",
                Bytes::from_static(b"three"),
                PutMode::IfMatch(m.etag.expect("etag")),
            )
            .await
            .expect("put if-match");
            s.put(HEADER_KEY, Bytes::from_static(b"{}"), PutMode::Overwrite)
                .await
                .expect("put header");
            assert_eq!(
                s.get("a", None).await.expect("get"),
                Bytes::from_static(b"three")
            );
        });
        let seen = rec.take();
        let puts: Vec<&Seen> = seen.iter().filter(|r| r.method == "PUT").collect();
        assert_eq!(puts.len(), 4, "{mode:?}: {seen:#?}");
        for p in puts {
            assert_eq!(
                p.header("x-amz-server-side-encryption"),
                Some(want),
                "{mode:?}: {p:?}"
            );
            assert_eq!(
                p.header("x-amz-server-side-encryption-aws-kms-key-id"),
                key_id,
                "{mode:?}: {p:?}"
            );
            assert_eq!(
                p.header("x-amz-server-side-encryption-bucket-key-enabled"),
                bucket_key,
                "{mode:?}: {p:?}"
            );
            assert!(p
                .header("x-amz-server-side-encryption-customer-key")
                .is_none());
        }
        // Reads need no SSE headers for these modes.
        assert!(seen
            .iter()
            .filter(|r| r.method == "GET")
            .all(|r| r.sse.is_empty()));
    }
}

const CTX: Ctx = Ctx {
    uid: 1000,
    gid: 1000,
    umask: 0o022,
};

#[test]
fn sse_c_volume_round_trip_sends_the_key_on_every_request() {
    let Some(ep) = s3_endpoint() else {
        common::note_skip(
            "sse_c_volume_round_trip_sends_the_key_on_every_request",
            "no S3 test server",
        );
        return;
    };
    let bucket = unique_bucket("ssec");
    s3_create_bucket(&ep, &bucket);
    let raw = [0x5au8; 32];
    let key_b64 = aws_smithy_types::base64::encode(raw);
    let md5_b64 = {
        use md5::{Digest, Md5};
        aws_smithy_types::base64::encode(Md5::digest(raw))
    };
    let ssec = Arc::new(SseCustomerKey::from_file_bytes(&raw).expect("key"));
    let rec = Recorder::default();
    let mut cfg = config(&ep, &bucket, &rec).with_prefix("vol");
    cfg.sse = Some(SseMode::CustomerKey);
    cfg.sse_customer_key = Some(ssec.clone());
    let pass = || KeySource::Passphrase(zeroize::Zeroizing::new("pw".to_string()));
    let params = VolumeParams {
        chunk_size: 64 * 1024,
        block_size: 4096,
        ..VolumeParams::default()
    };
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let connect = |cfg: S3Config| -> Arc<dyn ObjectStore> {
        Arc::new(block_on(S3Store::connect(cfg)).expect("connect"))
    };
    let store = connect(cfg.clone());
    let mut ext = serde_json::Map::new();
    SseMode::CustomerKey.to_ext(&mut ext).expect("ext");
    let rt = volume::runtime().expect("runtime");
    volume::create_with_ext(
        &rt,
        store.clone(),
        params,
        &pass(),
        Argon2Params::MINIMUM,
        ext,
    )
    .expect("create");
    {
        let cache = tempdir();
        let v = volume::open(
            volume::runtime().expect("rt"),
            store.clone(),
            &pass(),
            Some(cache.path().to_owned()),
        )
        .expect("open");
        let (_, fh) = v.vfs.create(&CTX, ROOT_INO, b"f", 0o644).expect("create");
        v.vfs.write(fh, 0, &content).expect("write");
        v.vfs.release(fh).expect("release");
        v.unmount().expect("unmount");
    }
    // A fresh cache: everything is read back from the store.
    let store = connect(cfg);
    let cache = tempdir();
    let v = volume::open(
        volume::runtime().expect("rt"),
        store,
        &pass(),
        Some(cache.path().to_owned()),
    )
    .expect("reopen");
    let ino = v.vfs.lookup(ROOT_INO, b"f").expect("lookup").ino;
    let fh = v.vfs.open(ino).expect("open");
    let mut got = Vec::new();
    loop {
        let b = v.vfs.read(fh, got.len() as u64, 1 << 20).expect("read");
        if b.is_empty() {
            break;
        }
        got.extend_from_slice(&b);
    }
    assert!(got == content, "content differs after the round trip");
    // The stored mode is in the (authenticated) header.
    let ext = block_on(volume::peek_ext(&*connect(
        S3Config::new(&bucket, Some(ep.clone())).with_prefix("vol"),
    )))
    .expect("peek")
    .expect("a volume");
    assert_eq!(
        SseMode::from_ext(&ext).expect("sse"),
        Some(SseMode::CustomerKey)
    );

    let seen = rec.take();
    let mut checked = [0usize; 3];
    for r in &seen {
        let Some(key) = object_key(r, &bucket) else {
            continue;
        };
        let exempt = key.ends_with(HEADER_KEY) || key.ends_with(HEADER_BACKUP_KEY);
        let slot = match r.method.as_str() {
            "PUT" => 0,
            "GET" => 1,
            "HEAD" => 2,
            _ => continue,
        };
        if exempt {
            assert!(
                r.sse.is_empty(),
                "the header is stored without SSE-C: {r:?}"
            );
            continue;
        }
        assert_eq!(
            r.header("x-amz-server-side-encryption-customer-algorithm"),
            Some("AES256"),
            "{r:?}"
        );
        assert_eq!(
            r.header("x-amz-server-side-encryption-customer-key"),
            Some(key_b64.as_str()),
            "{key}"
        );
        assert_eq!(
            r.header("x-amz-server-side-encryption-customer-key-md5"),
            Some(md5_b64.as_str()),
            "{key}"
        );
        assert!(r.header("x-amz-server-side-encryption").is_none(), "{r:?}");
        checked[slot] += 1;
    }
    assert!(
        checked[0] >= 5,
        "PUTs of chunks and metadata were seen: {checked:?}"
    );
    assert!(
        checked[1] >= 5,
        "GETs of chunks and metadata were seen: {checked:?}"
    );
    assert!(
        seen.iter().any(
            |r| object_key(r, &bucket).is_some_and(|k| k.contains("/d/")) && r.method == "GET"
        ),
        "chunk reads recorded"
    );
    // A HEAD on a data object carries the key too.
    let rec2 = Recorder::default();
    let mut cfg = config(&ep, &bucket, &rec2).with_prefix("vol");
    cfg.sse = Some(SseMode::CustomerKey);
    cfg.sse_customer_key = Some(ssec);
    let s = block_on(S3Store::connect(cfg)).expect("connect");
    block_on(s.head("m/head")).expect("head");
    let heads: Vec<Seen> = rec2
        .take()
        .into_iter()
        .filter(|r| r.method == "HEAD" && object_key(r, &bucket).is_some())
        .collect();
    assert_eq!(heads.len(), 1);
    assert_eq!(
        heads[0].header("x-amz-server-side-encryption-customer-key"),
        Some(key_b64.as_str())
    );
}

#[test]
fn sse_c_mismatch_messages_from_the_binary() {
    let Some(ep) = s3_endpoint() else {
        common::note_skip(
            "sse_c_mismatch_messages_from_the_binary",
            "no S3 test server",
        );
        return;
    };
    let dir = tempdir();
    let keyfile = dir.path().join("ssec.key");
    std::fs::write(&keyfile, hex::encode([9u8; 32])).expect("write key");
    let bucket = unique_bucket("ssecli");
    s3_create_bucket(&ep, &bucket);
    let vol = Volume::s3(
        format!("s3://{bucket}/c"),
        &ep,
        Key::Passphrase("pw".into()),
    );
    let mut c = vol.cmd("init", &[&vol.store]);
    c.arg("--sse-c-key-file").arg(&keyfile);
    let o = run(&mut c, CMD_TIMEOUT);
    o.assert_ok();
    assert!(o.stdout.contains("SSE-C"), "{o}");
    // Without the key: refused with the message that says what to do.
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mut c = vol.cmd("mount", &[&vol.store, mnt.to_str().expect("utf-8")]);
    c.arg("--foreground")
        .arg("--cache-dir")
        .arg(dir.path().join("cache"));
    run(&mut c, CMD_TIMEOUT)
        .assert_clean_failure()
        .assert_stderr_mentions(&["this volume uses SSE-C; pass --sse-c-key-file"]);
    let mut c = vol.cmd("key", &["add", &vol.store]);
    c.env("CRYPTBUCKET_NEW_PASSPHRASE", "x");
    run(&mut c, CMD_TIMEOUT)
        .assert_clean_failure()
        .assert_stderr_mentions(&["this volume uses SSE-C; pass --sse-c-key-file"]);
    // With the key: key management works.
    let mut c = vol.cmd("key", &["add", &vol.store]);
    c.env("CRYPTBUCKET_NEW_PASSPHRASE", "x")
        .arg("--sse-c-key-file")
        .arg(&keyfile);
    run(&mut c, CMD_TIMEOUT).assert_ok();
    // An SSE-C key for a volume without SSE-C is refused too.
    let plain = Volume::s3(
        format!("s3://{bucket}/p"),
        &ep,
        Key::Passphrase("pw".into()),
    );
    let mut c = plain.cmd("init", &[&plain.store]);
    c.args(["--sse", "aws:kms", "--bucket-key"]);
    run(&mut c, CMD_TIMEOUT).assert_ok();
    let mut c = plain.cmd("key", &["add", &plain.store]);
    c.env("CRYPTBUCKET_NEW_PASSPHRASE", "x")
        .arg("--sse-c-key-file")
        .arg(&keyfile);
    run(&mut c, CMD_TIMEOUT)
        .assert_clean_failure()
        .assert_stderr_mentions(&["does not use SSE-C"]);
    // A bad SSE-C key file is a clear error.
    std::fs::write(&keyfile, b"too short").expect("write");
    let mut c = vol.cmd("key", &["list", &vol.store]);
    c.arg("--sse-c-key-file").arg(&keyfile);
    run(&mut c, CMD_TIMEOUT)
        .assert_clean_failure()
        .assert_stderr_mentions(&["32 bytes"]);
}

// ------------------------------------------------------------------------------------------------
// TLS

struct TlsProxy {
    addr: SocketAddr,
    ca_pem: String,
}

/// A TLS-terminating proxy on 127.0.0.1 in front of `upstream` (host:port), with a server
/// certificate for localhost/127.0.0.1 signed by a fresh self-signed CA.
fn start_tls_proxy(upstream: String) -> TlsProxy {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "cryptbucket test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    let cert = params.signed_by(&key, &ca, &ca_key).expect("server cert");

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    // A client that rejects our certificate fails the handshake: that is fine.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
    });
    TlsProxy {
        addr,
        ca_pem: ca.pem(),
    }
}

#[test]
fn https_with_private_ca_and_insecure_http_policy() {
    let Some(ep) = s3_endpoint() else {
        common::note_skip(
            "https_with_private_ca_and_insecure_http_policy",
            "no S3 test server",
        );
        return;
    };
    let upstream = ep
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let proxy = start_tls_proxy(upstream.clone());
    let dir = tempdir();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &proxy.ca_pem).expect("write ca");
    let bucket = unique_bucket("tls");
    s3_create_bucket(&ep, &bucket);
    let https = format!("https://localhost:{}", proxy.addr.port());
    let vol = Volume::s3(
        format!("s3://{bucket}/t"),
        &https,
        Key::Passphrase("pw".into()),
    );

    // Without the CA: the certificate is refused, nothing is created.
    let o = run(&mut vol.cmd("init", &[&vol.store]), CMD_TIMEOUT);
    o.assert_clean_failure()
        .assert_stderr_mentions(&["certificate", "UnknownIssuer"]);
    // With it: init and key list work over TLS.
    let mut c = vol.cmd("init", &[&vol.store]);
    c.arg("--ca-bundle").arg(&ca);
    run(&mut c, CMD_TIMEOUT).assert_ok();
    let mut c = vol.cmd("key", &["list", &vol.store]);
    c.arg("--ca-bundle").arg(&ca);
    let o = run(&mut c, CMD_TIMEOUT);
    o.assert_ok();
    assert!(o.stdout.contains("1 key slot(s)"), "{o}");
    // A bad CA file: a clear error before any connection.
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate\n").expect("write");
    let mut c = vol.cmd("key", &["list", &vol.store]);
    c.arg("--ca-bundle").arg(&bad);
    run(&mut c, CMD_TIMEOUT)
        .assert_clean_failure()
        .assert_stderr_mentions(&["CA bundle"]);
    let mut c = vol.cmd("key", &["list", &vol.store]);
    c.arg("--ca-bundle").arg(dir.path().join("missing.pem"));
    run(&mut c, CMD_TIMEOUT)
        .assert_clean_failure()
        .assert_stderr_mentions(&["cannot read CA bundle"]);

    // Plain http to a non-loopback address (0.0.0.0 reaches this machine on Linux, but is
    // not a loopback address): refused, unless --allow-insecure-http (with a warning).
    let port = upstream.rsplit(':').next().expect("port");
    let insecure = Volume::s3(
        format!("s3://{bucket}/t"),
        &format!("http://0.0.0.0:{port}"),
        Key::Nothing,
    );
    run(&mut insecure.cmd("key", &["list", &vol.store]), CMD_TIMEOUT)
        .assert_clean_failure()
        .assert_stderr_mentions(&["--allow-insecure-http"]);
    let mut c = insecure.cmd("key", &["list", &vol.store]);
    c.arg("--allow-insecure-http");
    let o = run(&mut c, CMD_TIMEOUT);
    o.assert_ok();
    assert!(o.stdout.contains("1 key slot(s)"), "{o}");
    assert!(o.stderr.contains("plain http"), "a warning is printed: {o}");
}

/// The TLS versions a ClientHello offers (`supported_versions`, else its legacy version),
/// GREASE values left out; None if `rec` is not a complete ClientHello record.
fn offered_tls_versions(rec: &[u8]) -> Option<Vec<u16>> {
    let u16_at = |b: &[u8], i: usize| Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]));
    if *rec.first()? != 0x16 {
        return None;
    }
    let body = rec.get(5..5 + usize::from(u16_at(rec, 3)?))?;
    if *body.first()? != 1 {
        return None;
    }
    let len = usize::from(*body.get(1)?) << 16 | usize::from(u16_at(body, 2)?);
    let h = body.get(4..4 + len)?;
    let legacy = u16_at(h, 0)?;
    let mut i = 2 + 32;
    i += 1 + usize::from(*h.get(i)?); // session id
    i += 2 + usize::from(u16_at(h, i)?); // cipher suites
    i += 1 + usize::from(*h.get(i)?); // compression methods
    let end = i + 2 + usize::from(u16_at(h, i)?);
    i += 2;
    while i + 4 <= end {
        let (ty, n) = (u16_at(h, i)?, usize::from(u16_at(h, i + 2)?));
        let data = h.get(i + 4..i + 4 + n)?;
        if ty == 0x002b {
            let list = data.get(1..1 + usize::from(*data.first()?))?;
            return Some(
                list.chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .filter(|v| v & 0x0f0f != 0x0a0a)
                    .collect(),
            );
        }
        i += 4 + n;
    }
    Some(vec![legacy])
}

#[test]
fn the_s3_client_offers_only_tls_1_2_and_1_3() {
    use std::io::Read;
    // A listener that records each ClientHello and hangs up: what the client offers is
    // visible there, whatever a server would pick. Both clients: the SDK's default (system
    // roots) and the one built for --ca-bundle.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hellos = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    {
        let hellos = hellos.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { continue };
                let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = c.read(&mut chunk) {
                    buf.extend_from_slice(&chunk[..n]);
                    let want = buf
                        .get(3..5)
                        .map(|l| 5 + usize::from(u16::from_be_bytes([l[0], l[1]])));
                    if want.is_some_and(|w| buf.len() >= w) {
                        break;
                    }
                }
                hellos.lock().expect("lock").push(buf);
            }
        });
    }
    let dir = tempdir();
    let ca = dir.path().join("ca.pem");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&ca, params.self_signed(&ca_key).expect("ca").pem()).expect("write ca");
    let https = format!("https://127.0.0.1:{port}");
    let vol = Volume::s3("s3://b/t".into(), &https, Key::Nothing);
    for with_ca in [false, true] {
        let before = hellos.lock().expect("lock").len();
        let mut c = vol.cmd("key", &["list", &vol.store]);
        c.args(["--io-timeout", "1"]);
        if with_ca {
            c.arg("--ca-bundle").arg(&ca);
        }
        run(&mut c, CMD_TIMEOUT).assert_clean_failure();
        let seen = hellos.lock().expect("lock");
        assert!(
            seen.len() > before,
            "no TLS connection (ca bundle: {with_ca})"
        );
        for h in &seen[before..] {
            let v = offered_tls_versions(h)
                .unwrap_or_else(|| panic!("not a ClientHello: {:02x?}", &h[..h.len().min(16)]));
            assert!(
                !v.is_empty() && v.iter().all(|v| *v == 0x0303 || *v == 0x0304),
                "offered TLS versions {v:04x?} (ca bundle: {with_ca}); only 1.2 (0303) and 1.3 (0304) allowed"
            );
            // Parsed from supported_versions (a legacy-only hello would read [0303]).
            assert!(v.contains(&0x0304), "TLS 1.3 not offered: {v:04x?}");
        }
    }
}
