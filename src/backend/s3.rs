//! S3 `ObjectStore` (AWS S3 and S3-compatible servers: MinIO, Garage, moto, ...), built on
//! the official AWS SDK.
//!
//! Choices worth knowing:
//! - Credentials and region come from the standard AWS chain (env, profile, SSO, IMDS);
//!   the region falls back to `us-east-1`.
//! - Request checksums only when required: some S3-compatible stores reject the SDK's
//!   default CRC headers.
//! - Timeouts are bounded (connect 5 s, each attempt 30 s) and the SDK's own retries are
//!   off: `RetryStore` owns retrying, so an unreachable endpoint fails in seconds.
//! - `AWS_CA_BUNDLE`: the Rust SDK (aws-config 1.x) does not read this variable at all,
//!   so the value these machines set does not break plain-http endpoints. A private CA for
//!   https endpoints is `S3Config::ca_bundle` (`--ca-bundle`); see [`super::tls`].
//! - Plain `http://` is refused for non-loopback endpoints unless `allow_insecure_http`.
//! - Server-side encryption ([`super::sse`]): SSE-S3/KMS/DSSE headers on every PUT; SSE-C
//!   headers on every PUT, GET and HEAD, except for the keys in `sse_c_exempt` (the volume
//!   header, which must be readable to learn that the volume uses SSE-C).
//! - Credentials that cannot be loaded are reported as such (not as "cannot reach
//!   endpoint", which is how the SDK surfaces them): `AccessDenied` when none are
//!   configured, `Transient` when a provider (IMDS, STS, SSO) failed or timed out.
//! - Keys are stored under `prefix` (normalised to end in `/` when non-empty); callers see
//!   their own keys, the prefix stripped.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use aws_sdk_s3::Client;
use aws_smithy_runtime_api::client::interceptors::SharedInterceptor;
use bytes::Bytes;

use super::memory::resolve_range;
use super::sse::{SseCustomerKey, SseMode};
use super::{BackendError, ObjectMeta, ObjectStore, PutMode, Result};

/// How to reach a bucket.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket; may be empty. A trailing `/` is added if missing.
    pub prefix: String,
    /// Custom endpoint, e.g. `http://127.0.0.1:9000`; `None` for AWS.
    pub endpoint: Option<String>,
    /// `None`: from the AWS chain, else `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); needed by most S3-compatible servers.
    pub path_style: bool,
    pub connect_timeout: Duration,
    /// Limit for one attempt of one request (including reading its body).
    pub operation_timeout: Duration,
    /// PEM certificates to trust instead of the platform's roots (private CA).
    pub ca_bundle: Option<Vec<u8>>,
    /// Allow `http://` to a host that is not this machine (a warning is logged).
    pub allow_insecure_http: bool,
    /// Server-side encryption of the objects written (and, for SSE-C, read).
    pub sse: Option<SseMode>,
    /// The SSE-C key; required exactly when `sse` is `SseMode::CustomerKey`.
    pub sse_customer_key: Option<Arc<SseCustomerKey>>,
    /// Keys never sent with SSE-C (stored without it), e.g. the volume header.
    pub sse_c_exempt: Vec<String>,
    /// Extra SDK interceptors (tests record requests with one).
    pub interceptors: Vec<SharedInterceptor>,
}

impl S3Config {
    /// A config with the default timeouts; path-style when an endpoint is given.
    pub fn new(bucket: impl Into<String>, endpoint: Option<String>) -> Self {
        let path_style = endpoint.is_some();
        S3Config {
            bucket: bucket.into(),
            prefix: String::new(),
            endpoint,
            region: None,
            path_style,
            connect_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(30),
            ca_bundle: None,
            allow_insecure_http: false,
            sse: None,
            sse_customer_key: None,
            sse_c_exempt: Vec::new(),
            interceptors: Vec::new(),
        }
    }

    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }
}

/// A bucket (and optional prefix) on an S3-compatible server.
#[derive(Debug)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    endpoint: Option<String>,
    conditional: AtomicBool,
    sse: Option<SseMode>,
    sse_customer_key: Option<Arc<SseCustomerKey>>,
    sse_c_exempt: Vec<String>,
}

/// SSE-C needs its key and the key needs SSE-C.
fn check_sse(mode: &Option<SseMode>, key: &Option<Arc<SseCustomerKey>>) -> Result<()> {
    match (mode, key) {
        (Some(SseMode::CustomerKey), None) => Err(BackendError::Other(
            "this volume uses SSE-C; pass --sse-c-key-file".into(),
        )),
        (Some(other), Some(_)) if *other != SseMode::CustomerKey => Err(BackendError::Other(
            format!("an SSE-C key cannot be combined with {}", other.describe()),
        )),
        _ => Ok(()),
    }
}

/// Build an SDK client from `cfg` (no network traffic). Public so tests and tools can
/// create buckets with exactly the settings the store uses. Fails on a bad CA bundle or
/// an endpoint that `cfg` does not allow.
pub async fn make_client(cfg: &S3Config) -> Result<Client> {
    if let Some(ep) = &cfg.endpoint {
        super::tls::check_endpoint(ep, cfg.allow_insecure_http)?;
    }
    let region = RegionProviderChain::first_try(cfg.region.clone().map(Region::new))
        .or_default_provider()
        .or_else(Region::new("us-east-1"));
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(cfg.connect_timeout)
        .operation_attempt_timeout(cfg.operation_timeout)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .timeout_config(timeouts)
        .retry_config(RetryConfig::standard().with_max_attempts(1));
    if let Some(pem) = &cfg.ca_bundle {
        loader = loader.http_client(super::tls::client_with_ca_bundle(pem)?);
    }
    let sdk = loader.load().await;
    let mut b = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(cfg.path_style)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if let Some(ep) = &cfg.endpoint {
        b = b.endpoint_url(ep);
    }
    for i in &cfg.interceptors {
        b.push_interceptor(i.clone());
    }
    Ok(Client::from_conf(b.build()))
}

impl S3Store {
    /// Build the client and check that the bucket exists and is reachable.
    pub async fn connect(cfg: S3Config) -> Result<S3Store> {
        check_sse(&cfg.sse, &cfg.sse_customer_key)?;
        let client = make_client(&cfg).await?;
        let mut prefix = cfg.prefix.trim_start_matches('/').to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        let store = S3Store {
            client,
            bucket: cfg.bucket.clone(),
            prefix,
            endpoint: cfg.endpoint.clone(),
            conditional: AtomicBool::new(true),
            sse: cfg.sse.clone(),
            sse_customer_key: cfg.sse_customer_key.clone(),
            sse_c_exempt: cfg.sse_c_exempt.clone(),
        };
        store.check_bucket().await?;
        Ok(store)
    }

    async fn check_bucket(&self) -> Result<()> {
        let where_ = self.endpoint.as_deref().unwrap_or("AWS S3");
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                if let Some(ce) = credentials_error(&e) {
                    return Err(ce);
                }
                let status = e.raw_response().map(|r| r.status().as_u16());
                Err(match (&e, status) {
                    (SdkError::ServiceError(_), Some(404)) => BackendError::StoreNotFound(format!(
                        "bucket {} does not exist at {where_}",
                        self.bucket
                    )),
                    (SdkError::ServiceError(_), Some(403)) => BackendError::AccessDenied(format!(
                        "bucket {} at {where_}: {}",
                        self.bucket,
                        Brief(&e)
                    )),
                    (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_), _) => {
                        BackendError::Transient(format!(
                            "cannot reach endpoint {where_}: {}",
                            Brief(&e)
                        ))
                    }
                    _ => map_err(e, &format!("bucket {}", self.bucket)),
                })
            }
        }
    }

    /// Find out whether the server honours `If-None-Match: *` on PUT (some S3-compatible
    /// stores silently ignore it): put a probe object twice in `Create` mode, then delete
    /// it. The answer is kept for `supports_conditional()` and returned.
    pub async fn probe_conditional(&self) -> Result<bool> {
        let mut rnd = [0u8; 8];
        getrandom::getrandom(&mut rnd)
            .map_err(|e| BackendError::Other(format!("no randomness for probe key: {e}")))?;
        let key = format!("probe-{}", hex::encode(rnd));
        let data = Bytes::from_static(b"cryptbucket conditional-put probe");
        self.put(&key, data.clone(), PutMode::Create).await?;
        let second = self.put(&key, data, PutMode::Create).await;
        let deleted = self.delete(&key).await;
        let honoured = match second {
            Err(BackendError::PreconditionFailed(_)) => true,
            Ok(_) => false,
            Err(e) => return Err(e),
        };
        deleted?;
        self.conditional.store(honoured, Ordering::Relaxed);
        if !honoured {
            tracing::warn!(store = %self.describe(), "server ignores conditional puts (If-None-Match)");
        }
        Ok(honoured)
    }

    /// Change the server-side encryption used from now on (e.g. to what the volume header
    /// says, once it has been read).
    pub fn set_sse(
        &mut self,
        mode: Option<SseMode>,
        key: Option<Arc<SseCustomerKey>>,
    ) -> Result<()> {
        check_sse(&mode, &key)?;
        self.sse = mode;
        self.sse_customer_key = key;
        Ok(())
    }

    /// The SSE-C key to send with a request for `key`, if any.
    fn ssec(&self, key: &str) -> Option<&SseCustomerKey> {
        if self.sse_c_exempt.iter().any(|k| k == key) {
            return None;
        }
        match self.sse {
            Some(SseMode::CustomerKey) => self.sse_customer_key.as_deref(),
            _ => None,
        }
    }

    /// The SDK client, for callers that need an operation this trait does not offer.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    async fn size_of(&self, key: &str) -> Result<u64> {
        Ok(self.head(key).await?.size)
    }
}

/// If `err` failed because no credentials could be loaded, say so (the SDK reports that
/// as a dispatch failure, which would otherwise read as "cannot reach endpoint").
/// Missing or misconfigured credentials are final; a provider that timed out or failed
/// (IMDS, STS, SSO hiccups during a long mount) is transient.
fn credentials_error(err: &(dyn std::error::Error + 'static)) -> Option<BackendError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(ce) = e.downcast_ref::<CredentialsError>() {
            let msg = format!(
                "cannot load AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, \
                 AWS_PROFILE or another source of the AWS chain): {}",
                Brief(ce)
            );
            return Some(match ce {
                CredentialsError::CredentialsNotLoaded(_)
                | CredentialsError::InvalidConfiguration(_) => BackendError::AccessDenied(msg),
                _ => BackendError::Transient(msg),
            });
        }
        cur = e.source();
    }
    None
}

/// Map an SDK error to ours. `what` names the key (or bucket) for the message.
fn map_err<E>(err: SdkError<E>, what: &str) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let Some(e) = credentials_error(&err) {
        return e;
    }
    let detail = || format!("{what}: {}", Brief(&err));
    match &err {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => BackendError::Transient(detail()),
        SdkError::DispatchFailure(d) if d.is_user() => BackendError::Other(detail()),
        SdkError::DispatchFailure(_) => BackendError::Transient(detail()),
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = s.err().code().unwrap_or("");
            match (status, code) {
                (_, "NoSuchBucket") => BackendError::StoreNotFound(detail()),
                (404, _) | (_, "NoSuchKey") | (_, "NotFound") => {
                    BackendError::NotFound(what.to_string())
                }
                (412, _) | (_, "PreconditionFailed") => {
                    BackendError::PreconditionFailed(what.to_string())
                }
                // Real S3: a concurrent conditional write won the race.
                (409, "ConditionalRequestConflict") => {
                    BackendError::PreconditionFailed(what.to_string())
                }
                (400, "InvalidRequest")
                    if s.err()
                        .message()
                        .is_some_and(|m| m.contains("Server Side Encryption")) =>
                {
                    BackendError::AccessDenied(format!(
                        "{what}: stored with SSE-C: this volume uses SSE-C; pass --sse-c-key-file"
                    ))
                }
                (403, _)
                | (_, "AccessDenied")
                | (_, "InvalidAccessKeyId")
                | (_, "SignatureDoesNotMatch") => BackendError::AccessDenied(detail()),
                (500..=599, _) | (429, _) => BackendError::Transient(detail()),
                (_, "SlowDown") | (_, "RequestTimeout") | (_, "InternalError") => {
                    BackendError::Transient(detail())
                }
                _ => BackendError::Other(detail()),
            }
        }
        _ => BackendError::Other(detail()),
    }
}

/// Most of a body's announced length allocated up front (a bigger one grows as it arrives,
/// so a bogus Content-Length cannot make us reserve gigabytes).
const PREALLOC_MAX: u64 = 64 << 20;

fn is_invalid_range<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    match err {
        SdkError::ServiceError(s) => {
            s.raw().status().as_u16() == 416 || s.err().code() == Some("InvalidRange")
        }
        _ => false,
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        let size = data.len() as u64;
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .content_length(size as i64)
            .body(ByteStream::from(data));
        req = match &self.sse {
            None | Some(SseMode::CustomerKey) => req,
            Some(SseMode::S3) => req.server_side_encryption(ServerSideEncryption::Aes256),
            Some(SseMode::Kms {
                kms_key_id,
                bucket_key,
            }) => {
                let r = req
                    .server_side_encryption(ServerSideEncryption::AwsKms)
                    .set_ssekms_key_id(kms_key_id.clone());
                if *bucket_key {
                    r.bucket_key_enabled(true)
                } else {
                    r
                }
            }
            Some(SseMode::Dsse { kms_key_id }) => req
                .server_side_encryption(ServerSideEncryption::AwsKmsDsse)
                .set_ssekms_key_id(kms_key_id.clone()),
        };
        if let Some(k) = self.ssec(key) {
            req = req
                .sse_customer_algorithm("AES256")
                .sse_customer_key(k.header_key().as_str())
                .sse_customer_key_md5(k.header_key_md5());
        }
        req = match &mode {
            PutMode::Overwrite => req,
            PutMode::Create => req.if_none_match("*"),
            PutMode::IfMatch(etag) => req.if_match(etag),
        };
        let out = req
            .send()
            .await
            .map_err(|e| match (map_err(e, key), &mode) {
                // S3 answers If-Match on a missing key with 404; the trait says precondition.
                (BackendError::NotFound(k), PutMode::IfMatch(_)) => {
                    BackendError::PreconditionFailed(k)
                }
                (other, _) => other,
            })?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size,
            etag: out.e_tag,
            // The store's clock is not ours; PUT does not return it, and callers of put
            // only use the etag.
            modified: None,
        })
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        let mut req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key));
        if let Some(k) = self.ssec(key) {
            req = req
                .sse_customer_algorithm("AES256")
                .sse_customer_key(k.header_key().as_str())
                .sse_customer_key_md5(k.header_key_md5());
        }
        if let Some(r) = &range {
            if r.end <= r.start {
                // Not expressible as an HTTP range (S3 would ignore it and send everything).
                let size = self.size_of(key).await?;
                resolve_range(key, Some(r.clone()), size)?;
                return Ok(Bytes::new());
            }
            req = req.range(format!("bytes={}-{}", r.start, r.end - 1));
        }
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) if is_invalid_range(&e) => {
                let size = self.size_of(key).await?;
                // Normally an error; if the object grew meanwhile, report that as transient.
                resolve_range(key, range.clone(), size)?;
                return Err(BackendError::Transient(format!(
                    "{key}: range rejected but object is {size} bytes"
                )));
            }
            Err(e) => return Err(map_err(e, key)),
        };
        let expected = out.content_length.and_then(|n| u64::try_from(n).ok());
        // Copied segment by segment into one buffer of the announced size: each segment is
        // dropped at once, so the HTTP client reuses its read buffer instead of holding the
        // whole body in fresh ones until `collect` copies it all again.
        let mut stream = out.body;
        let cap = expected.unwrap_or(0).min(PREALLOC_MAX) as usize;
        let mut buf = super::bufpool::pool().take(cap);
        while let Some(seg) = stream
            .try_next()
            .await
            .map_err(|e| BackendError::Transient(format!("{key}: reading body: {e}")))?
        {
            buf.extend_from_slice(&seg);
        }
        let body = super::bufpool::freeze(buf);
        if let Some(n) = expected {
            if n != body.len() as u64 {
                return Err(BackendError::Transient(format!(
                    "{key}: truncated body ({} of {n} bytes)",
                    body.len()
                )));
            }
        }
        if let Some(r) = &range {
            // A server that ignored the Range header sent the whole object.
            if out.content_range.is_none() {
                let size = body.len() as u64;
                let rr = resolve_range(key, Some(r.clone()), size)?;
                return Ok(body.slice(rr.start as usize..rr.end as usize));
            }
        }
        Ok(body)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let mut req = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key));
        if let Some(k) = self.ssec(key) {
            req = req
                .sse_customer_algorithm("AES256")
                .sse_customer_key(k.header_key().as_str())
                .sse_customer_key_md5(k.header_key_md5());
        }
        let out = req.send().await.map_err(|e| map_err(e, key))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: out
                .content_length
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
            etag: out.e_tag,
            modified: out
                .last_modified
                .and_then(|t| std::time::SystemTime::try_from(t).ok()),
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match map_err(e, key) {
                BackendError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let full_prefix = self.full_key(prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| map_err(e, &format!("list {prefix:?}")))?;
            for obj in page.contents() {
                let Some(k) = obj.key() else { continue };
                let Some(k) = k.strip_prefix(&self.prefix) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key: k.to_string(),
                    size: obj.size().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                    etag: obj.e_tag().map(str::to_string),
                    modified: obj
                        .last_modified()
                        .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                });
            }
            match (page.is_truncated(), page.next_continuation_token()) {
                (Some(true), Some(t)) => token = Some(t.to_string()),
                (Some(true), None) => {
                    return Err(BackendError::Other(format!(
                        "list {prefix:?}: truncated page without continuation token"
                    )))
                }
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn supports_conditional(&self) -> bool {
        self.conditional.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        let at = self.endpoint.as_deref().unwrap_or("AWS");
        format!("s3://{}/{} at {at}", self.bucket, self.prefix)
    }
}

/// An error and its causes as one plain line (the SDK's own rendering appends Debug output,
/// which is no use to a user).
struct Brief<'a, E: std::error::Error + 'static>(&'a E);

impl<E: std::error::Error + 'static> std::fmt::Display for Brief<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self.0);
        while let Some(e) = cur {
            let msg = e.to_string();
            if !msg.is_empty() && !parts.iter().any(|p| p.contains(&msg)) {
                parts.push(msg);
            }
            cur = e.source();
        }
        f.write_str(&parts.join(": "))
    }
}
