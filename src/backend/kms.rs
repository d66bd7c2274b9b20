//! AWS KMS client for KMS key slots (envelope encryption): GenerateDataKey when a slot is
//! made, Decrypt of the slot's ciphertext blob once per unlock (never per object).
//!
//! One of the two places outside `crypto` that handle key material: the plaintext data key
//! goes straight from the SDK response into `crypto::KmsKey` (zeroized on drop) and is never
//! logged. Every call names the volume in the KMS encryption context
//! (`cryptbucket-volume` = volume id hex), so a blob only decrypts for its own volume and
//! the audit log (CloudTrail) says which volume asked.
//!
//! Endpoint: `KmsConfig::endpoint`, else `AWS_ENDPOINT_URL_KMS`, else `AWS_ENDPOINT_URL`,
//! else AWS's regional endpoint; the same https policy as the S3 backend (plain http only to
//! loopback unless allowed). Region and credentials: the standard AWS chain.

use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use aws_sdk_kms::Client;
use aws_smithy_runtime_api::client::interceptors::SharedInterceptor;
use zeroize::Zeroizing;

use super::{BackendError, Result};
use crate::crypto::KmsKey;

/// Encryption-context key naming the volume a data key belongs to.
pub const CONTEXT_KEY: &str = "cryptbucket-volume";

#[derive(Clone, Default)]
pub struct KmsConfig {
    /// Custom endpoint (e.g. a local KMS emulator); see the module doc for the fallbacks.
    pub endpoint: Option<String>,
    /// `None`: from the AWS chain, else `us-east-1`.
    pub region: Option<String>,
    /// PEM certificates to trust instead of the platform's roots.
    pub ca_bundle: Option<Vec<u8>>,
    /// Allow `http://` to a host that is not this machine.
    pub allow_insecure_http: bool,
    /// Extra SDK interceptors (tests count calls with one).
    pub interceptors: Vec<SharedInterceptor>,
}

impl std::fmt::Debug for KmsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsConfig")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

pub struct KmsClient {
    client: Client,
    where_: String,
}

fn env_endpoint() -> Option<String> {
    ["AWS_ENDPOINT_URL_KMS", "AWS_ENDPOINT_URL"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|v| !v.is_empty())
}

impl KmsClient {
    /// Build the client (no request is sent yet).
    pub async fn connect(cfg: KmsConfig) -> Result<KmsClient> {
        let endpoint = cfg.endpoint.clone().or_else(env_endpoint);
        if let Some(ep) = &endpoint {
            super::tls::check_endpoint(ep, cfg.allow_insecure_http)?;
        }
        let region = RegionProviderChain::first_try(cfg.region.clone().map(Region::new))
            .or_default_provider()
            .or_else(Region::new("us-east-1"));
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(20))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .timeout_config(timeouts);
        if let Some(pem) = &cfg.ca_bundle {
            loader = loader.http_client(super::tls::client_with_ca_bundle(pem)?);
        }
        let sdk = loader.load().await;
        let mut b = aws_sdk_kms::config::Builder::from(&sdk);
        if let Some(ep) = &endpoint {
            b = b.endpoint_url(ep);
        }
        for i in &cfg.interceptors {
            b.push_interceptor(i.clone());
        }
        let where_ = endpoint.unwrap_or_else(|| "AWS KMS".to_string());
        Ok(KmsClient {
            client: Client::from_conf(b.build()),
            where_,
        })
    }

    /// GenerateDataKey (AES_256) under `key_id` for volume `volume_id`.
    pub async fn generate_data_key(&self, key_id: &str, volume_id: &[u8; 16]) -> Result<KmsKey> {
        let out = self
            .client
            .generate_data_key()
            .key_id(key_id)
            .key_spec(DataKeySpec::Aes256)
            .encryption_context(CONTEXT_KEY, hex::encode(volume_id))
            .send()
            .await
            .map_err(|e| self.map_err(e, key_id, "GenerateDataKey"))?;
        let plain = Zeroizing::new(
            out.plaintext
                .map(Blob::into_inner)
                .ok_or_else(|| BackendError::Other("KMS returned no plaintext data key".into()))?,
        );
        let blob = out
            .ciphertext_blob
            .map(Blob::into_inner)
            .ok_or_else(|| BackendError::Other("KMS returned no ciphertext blob".into()))?;
        // Keep the id the user gave (an alias stays an alias); KMS's answer names the ARN.
        KmsKey::new(key_id.to_string(), blob, plain).map_err(|e| BackendError::Other(e.to_string()))
    }

    /// Decrypt a slot's blob (one call per unlock).
    pub async fn decrypt(&self, key_id: &str, blob: &[u8], volume_id: &[u8; 16]) -> Result<KmsKey> {
        let out = self
            .client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(blob.to_vec()))
            .encryption_context(CONTEXT_KEY, hex::encode(volume_id))
            .send()
            .await
            .map_err(|e| self.map_err(e, key_id, "Decrypt"))?;
        let plain = Zeroizing::new(
            out.plaintext
                .map(Blob::into_inner)
                .ok_or_else(|| BackendError::Other("KMS returned no plaintext".into()))?,
        );
        KmsKey::new(key_id.to_string(), blob.to_vec(), plain)
            .map_err(|e| BackendError::Other(e.to_string()))
    }

    fn map_err<E>(&self, e: SdkError<E>, key_id: &str, op: &str) -> BackendError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let code = e.code().unwrap_or("").to_string();
        let msg = e.message().unwrap_or("").to_string();
        let at = &self.where_;
        match code.as_str() {
            "DisabledException" => BackendError::AccessDenied(format!(
                "KMS key {key_id} is disabled ({op} at {at}): enable it (EnableKey), or unlock with another key slot"
            )),
            "NotFoundException" => BackendError::AccessDenied(format!(
                "KMS key {key_id} does not exist ({op} at {at}): check the key id or alias and the region"
            )),
            "KMSInvalidStateException" => BackendError::AccessDenied(format!(
                "KMS key {key_id} cannot be used in its current state ({op} at {at}): {msg}"
            )),
            "InvalidCiphertextException" | "IncorrectKeyException" => {
                BackendError::AccessDenied(format!(
                    "KMS key {key_id} did not make this key slot's data key ({op} at {at}): {code}"
                ))
            }
            "AccessDeniedException" | "UnrecognizedClientException" => {
                BackendError::AccessDenied(format!(
                    "KMS denied {op} with key {key_id} at {at}: {msg}"
                ))
            }
            "" => match e {
                SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                    BackendError::Transient(format!("cannot reach KMS at {at} ({op})"))
                }
                other => BackendError::Other(format!(
                    "KMS {op} with key {key_id} at {at} failed: {}",
                    aws_smithy_types::error::display::DisplayErrorContext(&other)
                )),
            },
            _ => BackendError::Other(format!(
                "KMS {op} with key {key_id} at {at} failed: {code}: {msg}"
            )),
        }
    }
}
