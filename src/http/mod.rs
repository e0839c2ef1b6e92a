//! HTTP and TLS setup shared by the vault client ([`crate::vault::azure`]) and the credentials
//! ([`crate::auth`]): one client with the same trust roots and timeouts for both, the bounded
//! retry policy of every Azure pipeline ([`retry`]), and the one-line wording of an error's cause
//! chain ([`errors`]). It imports nothing from the rest of the crate, so both layers can use it.

pub(crate) mod errors;
pub(crate) mod retry;

use std::sync::Arc;
use std::time::Duration;

use azure_core::http::{ClientOptions, Transport};

pub(crate) use errors::error_chain;
pub(crate) use retry::{RETRY_MAX_DELAY, retry_options};

/// Retries after the first attempt, unless the caller says otherwise.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// Deadline of one HTTP attempt (connect, request, whole response body).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connecting gets at most this long, so a black-holed address fails fast even with a long
/// `request_timeout` meant for slow list pages.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The HTTP client for the vault and the credential: system roots plus `extra_ca_pem`,
/// `timeout` per attempt (connect capped at 5 s), no redirects (Key Vault never redirects, and a
/// redirect is no place to follow a bearer token). Proxies from the environment are honoured.
pub fn http_client(extra_ca_pem: &[Vec<u8>], timeout: Duration) -> Result<reqwest::Client, String> {
    let mut roots = Vec::new();
    for (i, pem) in extra_ca_pem.iter().enumerate() {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("extra CA file #{}: {}", i + 1, error_chain(&e)))?;
        if certs.is_empty() {
            return Err(format!(
                "extra CA file #{}: no PEM certificate in it",
                i + 1
            ));
        }
        roots.extend(certs);
    }
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
        .redirect(reqwest::redirect::Policy::none())
        .tcp_keepalive(Duration::from_secs(30));
    if !roots.is_empty() {
        // Merge, not replace: a corporate CA for a TLS-inspecting proxy must not cost the
        // public roots that login.microsoftonline.com and *.vault.azure.net chain to.
        builder = builder.tls_certs_merge(roots);
    }
    builder
        .build()
        .map_err(|e| format!("HTTP client: {}", error_chain(&e)))
}

/// `ClientOptions` for a credential's own pipeline: the shared HTTP client (same trust, same
/// timeouts) and the same bounded retries, so a token endpoint outage surfaces as quickly as a
/// vault outage.
pub(crate) fn credential_client_options(http: &reqwest::Client) -> ClientOptions {
    ClientOptions {
        transport: Some(Transport::new(Arc::new(http.clone()))),
        retry: retry_options(DEFAULT_MAX_RETRIES, DEFAULT_REQUEST_TIMEOUT),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_ca_files_must_hold_a_certificate() {
        assert!(http_client(&[b"not a certificate".to_vec()], DEFAULT_REQUEST_TIMEOUT).is_err());
        assert!(http_client(&[], DEFAULT_REQUEST_TIMEOUT).is_ok());
    }
}
