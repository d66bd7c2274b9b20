//! Transport security for the S3 backend: plain `http://` only to loopback hosts (unless the
//! user insists), and an HTTPS client trusting a private CA bundle when one is given.
//!
//! TLS itself is rustls (via the AWS SDK's client): TLS 1.2 and 1.3 only, AEAD cipher suites
//! only, certificates checked against the platform roots, or only against `--ca-bundle`.

use std::net::IpAddr;

use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::BackendError;

/// The host part of an endpoint URL (without brackets, user info or port), and whether the
/// scheme is plain http. `None` if the URL has no `scheme://host`.
fn scheme_and_host(endpoint: &str) -> Option<(String, String)> {
    let (scheme, rest) = endpoint.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    if host.is_empty() {
        return None;
    }
    Some((scheme.to_ascii_lowercase(), host.to_ascii_lowercase()))
}

/// Whether `host` is this machine over the loopback interface.
pub fn is_loopback_host(host: &str) -> bool {
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuse `http://` to a non-loopback host unless `allow_insecure` (then warn).
pub fn check_endpoint(endpoint: &str, allow_insecure: bool) -> Result<(), BackendError> {
    let Some((scheme, host)) = scheme_and_host(endpoint) else {
        return Err(BackendError::Other(format!(
            "endpoint {endpoint:?} is not a URL (expected https://host[:port])"
        )));
    };
    match scheme.as_str() {
        "https" => Ok(()),
        "http" if is_loopback_host(&host) => Ok(()),
        "http" if allow_insecure => {
            tracing::warn!(
                "endpoint {endpoint} uses plain http: anyone on the network path sees object names, sizes and request signatures, and can replay or drop requests (contents stay encrypted by cryptbucket)"
            );
            Ok(())
        }
        "http" => Err(BackendError::Other(format!(
            "refusing plain http to {host}, which is not this machine: use https://, or pass --allow-insecure-http if the network path is trusted"
        ))),
        other => Err(BackendError::Other(format!(
            "endpoint scheme {other:?} is not supported (use https://)"
        ))),
    }
}

/// Check that `pem` holds at least one parseable certificate; returns how many.
pub fn check_ca_bundle(pem: &[u8]) -> Result<usize, BackendError> {
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| BackendError::Other(format!("CA bundle: invalid PEM: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(BackendError::Other(
            "CA bundle: no PEM certificate (-----BEGIN CERTIFICATE-----) found".into(),
        ));
    }
    Ok(n)
}

/// An HTTPS client (rustls) that trusts only the certificates of `pem`.
pub fn client_with_ca_bundle(pem: &[u8]) -> Result<SharedHttpClient, BackendError> {
    check_ca_bundle(pem)?;
    let ctx = TlsContext::builder()
        .with_trust_store(TrustStore::empty().with_pem_certificate(pem.to_vec()))
        .build()
        .map_err(|e| BackendError::Other(format!("CA bundle: {e}")))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(ctx)
        .build_https())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_policy() {
        for ok in [
            "https://s3.example.com",
            "https://10.0.0.1:9000/x",
            "http://127.0.0.1:9000",
            "http://127.9.9.9",
            "http://localhost:9000/",
            "http://[::1]:9000",
            "http://user@localhost:1",
        ] {
            check_endpoint(ok, false).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "http://s3.example.com",
            "http://10.0.0.1:9000",
            "http://0.0.0.0:9000",
            "http://[::2]:9000",
            "http://localhost.evil.com",
            "ftp://localhost",
            "s3.example.com",
            "http://:9000",
        ] {
            assert!(check_endpoint(bad, false).is_err(), "{bad} accepted");
        }
        check_endpoint("http://s3.example.com", true).expect("allowed when insisted");
        let e = check_endpoint("http://s3.example.com", false).expect_err("refused");
        assert!(e.to_string().contains("--allow-insecure-http"), "{e}");
    }

    #[test]
    fn ca_bundle_checked() {
        assert!(check_ca_bundle(b"").is_err());
        assert!(check_ca_bundle(b"not a certificate").is_err());
        assert!(
            check_ca_bundle(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }
}
