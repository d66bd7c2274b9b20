//! One conformance suite for every `ObjectStore`: memory, local directory, and S3 (against a
//! real server when `CRYPTBUCKET_TEST_S3_ENDPOINT` is set, e.g. by `scripts/s3-server.sh`),
//! plus the retry wrapper over a deliberately flaky store.

use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cryptbucket::backend::local::LocalStore;
use cryptbucket::backend::memory::MemoryStore;
use cryptbucket::backend::retry::{RetryPolicy, RetryStore};
use cryptbucket::backend::s3::{make_client, S3Config, S3Store};
use cryptbucket::backend::{BackendError, ObjectMeta, ObjectStore, PutMode, Result};

fn bytes_of(n: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>(),
    )
}

fn keys(metas: &[ObjectMeta]) -> Vec<&str> {
    metas.iter().map(|m| m.key.as_str()).collect()
}

#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(r: Result<T>) {
    match r {
        Err(BackendError::NotFound(_)) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[track_caller]
fn assert_precondition<T: std::fmt::Debug>(r: Result<T>) {
    match r {
        Err(BackendError::PreconditionFailed(_)) => {}
        other => panic!("expected PreconditionFailed, got {other:?}"),
    }
}

#[track_caller]
fn assert_invalid_range<T: std::fmt::Debug>(r: Result<T>) {
    match r {
        Err(BackendError::InvalidRange { .. }) => {}
        other => panic!("expected InvalidRange, got {other:?}"),
    }
}

/// Put `n` small objects `{prefix}{i:05}` with `parallel` concurrent workers.
async fn put_many(store: &Arc<dyn ObjectStore>, prefix: &str, n: usize, parallel: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..parallel {
        let store = store.clone();
        let next = next.clone();
        let prefix = prefix.to_string();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let key = format!("{prefix}{i:05}");
                store
                    .put(&key, Bytes::from(format!("v{i}")), PutMode::Overwrite)
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// The shared suite. Every store starts empty.
async fn run_suite(store: Arc<dyn ObjectStore>) {
    let s = store.as_ref();
    let t0 = Instant::now();

    // Round trip; put, head and list agree on size and etag.
    let data = bytes_of(1000, 1);
    let put = s
        .put("rt/a", data.clone(), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(put.key, "rt/a");
    assert_eq!(put.size, 1000);
    assert!(put.etag.is_some(), "put returns an etag");
    assert_eq!(s.get("rt/a", None).await.unwrap(), data);
    let head = s.head("rt/a").await.unwrap();
    assert_eq!(head.size, 1000);
    assert_eq!(head.etag, put.etag);
    let listed = s.list("rt/").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, "rt/a");
    assert_eq!(listed[0].size, 1000);
    assert_eq!(listed[0].etag, put.etag);
    // gc relies on list (and head) reporting when an object was written.
    for (what, m) in [("list", listed[0].modified), ("head", head.modified)] {
        let m = m.unwrap_or_else(|| panic!("{what} reports no last-modified time"));
        let age = std::time::SystemTime::now()
            .duration_since(m)
            .unwrap_or_default();
        assert!(
            age < Duration::from_secs(600),
            "{what}: modified {age:?} ago"
        );
    }

    // Empty object.
    s.put("empty/e", Bytes::new(), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(s.get("empty/e", None).await.unwrap().len(), 0);
    assert_eq!(s.head("empty/e").await.unwrap().size, 0);
    assert_invalid_range(s.get("empty/e", Some(0..1)).await);

    // Ranged gets.
    let data = bytes_of(100, 7);
    s.put("range/r", data.clone(), PutMode::Overwrite)
        .await
        .unwrap();
    let cases: [(Range<u64>, Range<usize>); 6] = [
        (0..10, 0..10),
        (40..60, 40..60),
        (90..100, 90..100),
        (90..200, 90..100), // end clamped
        (99..100, 99..100),
        (0..100, 0..100),
    ];
    for (r, want) in cases {
        let got = s.get("range/r", Some(r.clone())).await.unwrap();
        assert_eq!(got, data.slice(want), "range {r:?}");
    }
    assert_eq!(s.get("range/r", Some(5..5)).await.unwrap().len(), 0);
    assert_invalid_range(s.get("range/r", Some(100..110)).await);
    assert_invalid_range(s.get("range/r", Some(150..160)).await);
    assert_not_found(s.get("range/missing", Some(0..10)).await);

    // Missing keys, delete.
    assert_not_found(s.get("missing/x", None).await);
    assert_not_found(s.head("missing/x").await);
    s.delete("missing/x").await.unwrap();
    s.put("del/d", bytes_of(10, 3), PutMode::Overwrite)
        .await
        .unwrap();
    s.delete("del/d").await.unwrap();
    assert_not_found(s.head("del/d").await);
    assert_not_found(s.get("del/d", None).await);
    assert!(s.list("del/").await.unwrap().is_empty());
    s.delete("del/d").await.unwrap();

    // Overwrite changes content, size and etag.
    let v1 = s
        .put("ow/o", bytes_of(50, 1), PutMode::Overwrite)
        .await
        .unwrap();
    let v2 = s
        .put("ow/o", bytes_of(70, 2), PutMode::Overwrite)
        .await
        .unwrap();
    assert_ne!(v1.etag, v2.etag);
    assert_eq!(s.get("ow/o", None).await.unwrap(), bytes_of(70, 2));
    let h = s.head("ow/o").await.unwrap();
    assert_eq!((h.size, &h.etag), (70, &v2.etag));

    // Conditional puts.
    if s.supports_conditional() {
        let c1 = s
            .put("cond/c", bytes_of(20, 1), PutMode::Create)
            .await
            .unwrap();
        assert_precondition(s.put("cond/c", bytes_of(20, 2), PutMode::Create).await);
        assert_eq!(s.get("cond/c", None).await.unwrap(), bytes_of(20, 1));
        let e1 = c1.etag.clone().unwrap();
        let c2 = s
            .put("cond/c", bytes_of(30, 3), PutMode::IfMatch(e1.clone()))
            .await
            .unwrap();
        assert_ne!(c2.etag, c1.etag);
        assert_precondition(s.put("cond/c", bytes_of(30, 4), PutMode::IfMatch(e1)).await);
        assert_eq!(s.get("cond/c", None).await.unwrap(), bytes_of(30, 3));
        assert_eq!(s.head("cond/c").await.unwrap().etag, c2.etag);
        assert_precondition(
            s.put(
                "cond/none",
                bytes_of(5, 0),
                PutMode::IfMatch("\"nope\"".into()),
            )
            .await,
        );
        s.delete("cond/c").await.unwrap();
        s.put("cond/c", bytes_of(20, 5), PutMode::Create)
            .await
            .unwrap();
    } else {
        eprintln!("{}: conditional puts not supported, skipped", s.describe());
    }

    // Nested keys and prefixes.
    for k in ["n/a/b/c/d.txt", "n/a/b/e", "n/a/bx", "n/a/f", "n/z"] {
        s.put(k, Bytes::from(k.to_string()), PutMode::Overwrite)
            .await
            .unwrap();
    }
    assert_eq!(
        s.get("n/a/b/c/d.txt", None).await.unwrap(),
        Bytes::from_static(b"n/a/b/c/d.txt")
    );
    assert_eq!(
        keys(&s.list("n/").await.unwrap()),
        ["n/a/b/c/d.txt", "n/a/b/e", "n/a/bx", "n/a/f", "n/z"]
    );
    assert_eq!(
        keys(&s.list("n/a/b/").await.unwrap()),
        ["n/a/b/c/d.txt", "n/a/b/e"]
    );
    assert_eq!(
        keys(&s.list("n/a/b").await.unwrap()),
        ["n/a/b/c/d.txt", "n/a/b/e", "n/a/bx"]
    );
    assert_eq!(keys(&s.list("n/a/b/c/d").await.unwrap()), ["n/a/b/c/d.txt"]);
    assert!(s.list("nothing-here/").await.unwrap().is_empty());
    assert!(s.list("n/q").await.unwrap().is_empty());
    s.delete("n/a/b/c/d.txt").await.unwrap();
    assert_eq!(keys(&s.list("n/a/b/").await.unwrap()), ["n/a/b/e"]);

    // Pagination past 1000 keys.
    let t_page = Instant::now();
    put_many(&store, "page/k", 1100, 32).await;
    let listed = s.list("page/").await.unwrap();
    let want: Vec<String> = (0..1100).map(|i| format!("page/k{i:05}")).collect();
    assert_eq!(
        keys(&listed),
        want.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(listed.iter().all(|m| m.size >= 2 && m.etag.is_some()));
    eprintln!(
        "{}: 1100 puts + list in {:?}",
        s.describe(),
        t_page.elapsed()
    );

    // The whole store is listed sorted.
    let all = s.list("").await.unwrap();
    assert!(
        all.windows(2).all(|w| w[0].key < w[1].key),
        "list is sorted"
    );
    for k in ["rt/a", "empty/e", "range/r", "ow/o", "n/z", "page/k01099"] {
        assert!(all.iter().any(|m| m.key == k), "{k} listed");
    }
    assert_eq!(
        all.len(),
        1100 + if s.supports_conditional() { 9 } else { 8 }
    );
    eprintln!("{}: suite passed in {:?}", s.describe(), t0.elapsed());
}

#[tokio::test]
async fn memory_store() {
    run_suite(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn local_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    run_suite(Arc::new(store.clone())).await;

    // Temp files (from a crashed writer) are not objects.
    std::fs::write(dir.path().join("rt/.tmp-123-0-abc"), b"junk").unwrap();
    assert_eq!(keys(&store.list("rt/").await.unwrap()), ["rt/a"]);
    // Empty directories left by deletes are pruned.
    store.delete("rt/a").await.unwrap();
    std::fs::remove_file(dir.path().join("rt/.tmp-123-0-abc")).unwrap();
    store
        .put("gone/x/y", Bytes::new(), PutMode::Overwrite)
        .await
        .unwrap();
    store.delete("gone/x/y").await.unwrap();
    assert!(!dir.path().join("gone").exists());
    // A key that is also a "directory" is an error, not a panic or a silent loss.
    assert!(store
        .put("n/a", Bytes::new(), PutMode::Overwrite)
        .await
        .is_err());
    assert!(store
        .put("n/z/w", Bytes::new(), PutMode::Overwrite)
        .await
        .is_err());
    assert_not_found(store.get("n/a", None).await);
    assert_not_found(store.head("n/a").await);
    // Keys that would escape the directory are refused.
    for bad in ["../x", "a/../../x", "/abs", "a//b", ""] {
        assert!(
            store
                .put(bad, Bytes::new(), PutMode::Overwrite)
                .await
                .is_err(),
            "{bad}"
        );
    }
    // Persisted: a fresh handle sees the same objects.
    let again = LocalStore::open(dir.path()).unwrap();
    assert_eq!(again.list("page/").await.unwrap().len(), 1100);
}

#[tokio::test]
async fn local_store_open_and_create() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    assert!(matches!(
        LocalStore::open(&missing),
        Err(BackendError::StoreNotFound(_))
    ));
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        LocalStore::open(&file),
        Err(BackendError::StoreNotFound(_))
    ));
    let created = LocalStore::create(missing.join("deeper")).unwrap();
    created
        .put("k", Bytes::from_static(b"v"), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(
        LocalStore::open(missing.join("deeper"))
            .unwrap()
            .get("k", None)
            .await
            .unwrap(),
        "v"
    );
}

#[tokio::test]
async fn local_store_concurrent_create_has_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open(dir.path()).unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16u8 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .put("lease", Bytes::from(vec![i]), PutMode::Create)
                .await
        });
    }
    let mut wins = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(_) => wins += 1,
            Err(BackendError::PreconditionFailed(_)) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(wins, 1);
    // Rapid rewrites of same-size content still get distinct etags.
    let mut etag = store.head("lease").await.unwrap().etag.unwrap();
    for i in 0..20u8 {
        let m = store
            .put(
                "lease",
                Bytes::from(vec![i]),
                PutMode::IfMatch(etag.clone()),
            )
            .await
            .unwrap();
        let e = m.etag.unwrap();
        assert_ne!(e, etag);
        etag = e;
    }
}

// ---------------------------------------------------------------- S3

fn s3_endpoint() -> Option<String> {
    std::env::var("CRYPTBUCKET_TEST_S3_ENDPOINT")
        .ok()
        .filter(|s| !s.is_empty())
}

fn unique(prefix: &str) -> String {
    let mut b = [0u8; 6];
    getrandom::getrandom(&mut b).unwrap();
    format!("{prefix}-{}", hex::encode(b))
}

async fn fresh_bucket(endpoint: &str) -> String {
    let bucket = unique("cb-test");
    let client = make_client(&S3Config::new(&bucket, Some(endpoint.to_string())))
        .await
        .unwrap();
    client.create_bucket().bucket(&bucket).send().await.unwrap();
    bucket
}

#[tokio::test]
async fn s3_store() {
    let Some(ep) = s3_endpoint() else {
        eprintln!("skipped: set CRYPTBUCKET_TEST_S3_ENDPOINT");
        return;
    };
    let bucket = fresh_bucket(&ep).await;
    let store = S3Store::connect(S3Config::new(&bucket, Some(ep.clone())))
        .await
        .unwrap();
    assert!(
        store.probe_conditional().await.unwrap(),
        "server honours If-None-Match"
    );
    assert!(store.supports_conditional());
    assert!(
        store.list("").await.unwrap().is_empty(),
        "probe object removed"
    );
    run_suite(Arc::new(store)).await;
}

#[tokio::test]
async fn s3_store_prefix_and_retry_wrapper() {
    let Some(ep) = s3_endpoint() else {
        eprintln!("skipped: set CRYPTBUCKET_TEST_S3_ENDPOINT");
        return;
    };
    let bucket = fresh_bucket(&ep).await;
    let root = S3Store::connect(S3Config::new(&bucket, Some(ep.clone())))
        .await
        .unwrap();
    let pfx = RetryStore::new(
        S3Store::connect(S3Config::new(&bucket, Some(ep.clone())).with_prefix("vol1"))
            .await
            .unwrap(),
    );
    assert!(pfx.describe().contains("vol1/"), "{}", pfx.describe());
    pfx.put("a/b", Bytes::from_static(b"x"), PutMode::Create)
        .await
        .unwrap();
    root.put("other", Bytes::from_static(b"y"), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(keys(&pfx.list("").await.unwrap()), ["a/b"]);
    assert_eq!(keys(&root.list("").await.unwrap()), ["other", "vol1/a/b"]);
    assert_eq!(root.get("vol1/a/b", None).await.unwrap(), "x");
    assert_precondition(pfx.put("a/b", Bytes::new(), PutMode::Create).await);
    assert_not_found(pfx.get("other", None).await);
}

#[tokio::test]
async fn s3_connect_missing_bucket() {
    let Some(ep) = s3_endpoint() else {
        eprintln!("skipped: set CRYPTBUCKET_TEST_S3_ENDPOINT");
        return;
    };
    let r = S3Store::connect(S3Config::new(unique("cb-missing"), Some(ep))).await;
    match r {
        Err(BackendError::StoreNotFound(m)) => assert!(m.contains("does not exist"), "{m}"),
        other => panic!("expected StoreNotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn s3_connect_unreachable_fails_fast() {
    // Needs no server: nothing listens on port 1.
    let t = Instant::now();
    let r = S3Store::connect(S3Config::new("b", Some("http://127.0.0.1:1".into()))).await;
    let elapsed = t.elapsed();
    let have_creds = std::env::var_os("AWS_ACCESS_KEY_ID").is_some();
    match r {
        Err(BackendError::Transient(m)) if have_creds => {
            assert!(m.contains("cannot reach"), "{m}")
        }
        // Without credentials in the environment the chain fails first; it must say so.
        Err(e) if !have_creds => assert!(e.to_string().contains("credentials"), "{e}"),
        other => panic!("expected Transient, got {other:?}"),
    }
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

// ---------------------------------------------------------------- retry

/// Fails the first `fail_first` calls with `Transient`; with `lose_put_response`, those
/// failing puts are applied first (a response lost after the server stored the object).
#[derive(Debug, Default)]
struct FlakyStore {
    inner: MemoryStore,
    fail_first: AtomicU32,
    lose_put_response: bool,
    calls: AtomicU32,
}

impl FlakyStore {
    fn new(fail_first: u32) -> Self {
        FlakyStore {
            fail_first: AtomicU32::new(fail_first),
            ..Default::default()
        }
    }

    fn trip(&self) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let left = self.fail_first.load(Ordering::SeqCst);
        if left > 0 {
            self.fail_first.store(left - 1, Ordering::SeqCst);
            return Err(BackendError::Transient("injected".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for FlakyStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        if self.lose_put_response && self.fail_first.load(Ordering::SeqCst) > 0 {
            self.inner.put(key, data.clone(), mode.clone()).await?;
        }
        self.trip()?;
        self.inner.put(key, data, mode).await
    }
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        self.trip()?;
        self.inner.get(key, range).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.trip()?;
        self.inner.head(key).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.trip()?;
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.trip()?;
        self.inner.list(prefix).await
    }
    fn supports_conditional(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        "flaky memory store".into()
    }
}

fn fast_policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        deadline: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn retry_recovers_from_transient_errors() {
    let s = RetryStore::with_policy(FlakyStore::new(3), fast_policy(6));
    s.put("k", Bytes::from_static(b"v"), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(s.inner().calls.load(Ordering::SeqCst), 4);
    assert_eq!(s.get("k", None).await.unwrap(), "v");
    // Non-transient errors are returned at once.
    let before = s.inner().calls.load(Ordering::SeqCst);
    assert_not_found(s.get("missing", None).await);
    assert_eq!(s.inner().calls.load(Ordering::SeqCst), before + 1);
    // The suite passes through the wrapper, with failures sprinkled in at the start.
    run_suite(Arc::new(RetryStore::with_policy(
        FlakyStore::new(5),
        fast_policy(6),
    )))
    .await;
}

#[tokio::test]
async fn retry_gives_up_after_max_attempts() {
    let s = RetryStore::with_policy(FlakyStore::new(100), fast_policy(4));
    match s.head("k").await {
        Err(BackendError::Transient(m)) => assert!(m.contains("4 attempts"), "{m}"),
        other => panic!("expected Transient, got {other:?}"),
    }
    assert_eq!(s.inner().calls.load(Ordering::SeqCst), 4);

    // The deadline bounds the total time even with many attempts allowed.
    let policy = RetryPolicy {
        max_attempts: 100,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(40),
        deadline: Duration::from_millis(150),
    };
    let s = RetryStore::with_policy(FlakyStore::new(1000), policy);
    let t = Instant::now();
    assert!(s.head("k").await.unwrap_err().is_transient());
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(s.inner().calls.load(Ordering::SeqCst) < 100);
}

#[tokio::test]
async fn retry_of_create_after_lost_response_reports_precondition() {
    // Documented choice: the first attempt stored the object but its answer was lost; the
    // retry sees the object and reports PreconditionFailed (the caller must re-read).
    let flaky = FlakyStore {
        fail_first: AtomicU32::new(1),
        lose_put_response: true,
        ..Default::default()
    };
    let s = RetryStore::with_policy(flaky, fast_policy(3));
    match s
        .put("lease", Bytes::from_static(b"me"), PutMode::Create)
        .await
    {
        Err(BackendError::PreconditionFailed(m)) => assert!(m.contains("transient"), "{m}"),
        other => panic!("expected PreconditionFailed, got {other:?}"),
    }
    assert_eq!(s.get("lease", None).await.unwrap(), "me");
}

#[test]
fn retry_delays_grow_and_are_capped() {
    let p = RetryPolicy::default();
    for retry in 1..20 {
        let d = p.delay(retry);
        let cap = (Duration::from_millis(100) * 2u32.saturating_pow(retry - 1))
            .min(Duration::from_secs(5));
        assert!(
            d <= cap && d >= cap / 2,
            "retry {retry}: {d:?} vs cap {cap:?}"
        );
    }
}
