//! The transport the Key Vault clients send through, with two guards no answer can talk past.
//!
//! * **Requests go only to the vault's own origin** (scheme, host, port). The SDK attaches the
//!   bearer token to every request of its pipeline, so a URL taken from an answer (a `nextLink`,
//!   an id) that names another origin would hand the token to whoever that is. Such a request is
//!   refused here, before anything is sent. The listing code checks `nextLink`s itself too
//!   (`super::pages`); this is the backstop for every other path.
//! * **Response bodies are read up to [`MAX_BODY_BYTES`]**, streamed chunk by chunk, and a body
//!   that goes past it is refused: a hostile or broken server cannot make kvfs buffer 50 MiB.
//!
//! Token requests do not come through here: every credential gets its own client
//! (`crate::http::credential_client_options`), since the token endpoint is, by design, another
//! origin.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::Bytes;
use azure_core::error::ErrorKind;
use azure_core::http::headers::HeaderName;
use azure_core::http::{AsyncRawResponse, HttpClient, Request};
use futures::{Stream, StreamExt};

/// No Key Vault answer comes near this: a secret value is at most 25 KiB, and a full list page
/// of 25 items with tags is tens of KiB.
pub(crate) const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Why the guard refused. Carried inside the SDK's error (kind `Other`, which its retry policy
/// does not retry) and recognised by `azure::map_error`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// A request to another origin than the vault's. Only the origin is named: a URL's path and
    /// query are the answer's to choose and could carry anything.
    #[error("refused to send the vault's token to {to}, which is not the vault ({vault})")]
    ForeignOrigin { to: String, vault: String },
    /// A response body over the cap (`declared` when the server said so up front).
    #[error("the vault's answer is larger than the {cap}-byte cap{}", declared.map(|d| format!(" ({d} bytes declared)")).unwrap_or_default())]
    BodyTooLarge { cap: usize, declared: Option<u64> },
}

impl Refused {
    fn into_error(self) -> azure_core::Error {
        azure_core::Error::new(ErrorKind::Other, self)
    }

    /// The guard's refusal somewhere down an SDK error's `source()` chain.
    pub(crate) fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
        let mut next = Some(err);
        while let Some(e) = next {
            if let Some(refused) = e.downcast_ref::<Refused>() {
                return Some(refused);
            }
            if let Some(core) = e.downcast_ref::<azure_core::Error>()
                && let Some(refused) = core.downcast_ref::<Refused>()
            {
                return Some(refused);
            }
            next = e.source();
        }
        None
    }
}

/// Whether `url` is on `vault`'s scheme, host and port (an explicit default port is the same
/// port; hosts compare case-insensitively, as the URL parser lowercases them).
pub(crate) fn same_origin(vault: &url::Url, url: &url::Url) -> bool {
    url.origin() == vault.origin() && url.origin().is_tuple()
}

/// `scheme://host[:port]` of a URL, for messages.
pub(crate) fn origin_of(url: &url::Url) -> String {
    url.origin().ascii_serialization()
}

/// An [`HttpClient`] that sends only to one origin and reads bodies up to a cap.
pub(crate) struct GuardedTransport {
    vault: url::Url,
    inner: Arc<dyn HttpClient>,
    max_body: usize,
}

impl fmt::Debug for GuardedTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedTransport")
            .field("vault", &origin_of(&self.vault))
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl GuardedTransport {
    pub(crate) fn new(vault: url::Url, inner: Arc<dyn HttpClient>) -> Self {
        Self::with_cap(vault, inner, MAX_BODY_BYTES)
    }

    pub(crate) fn with_cap(vault: url::Url, inner: Arc<dyn HttpClient>, max_body: usize) -> Self {
        GuardedTransport {
            vault,
            inner,
            max_body,
        }
    }
}

#[async_trait]
impl HttpClient for GuardedTransport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        if !same_origin(&self.vault, request.url()) {
            let refused = Refused::ForeignOrigin {
                to: origin_of(request.url()),
                vault: origin_of(&self.vault),
            };
            // Not logged here: the error reaches the filesystem, which logs it once.
            return Err(refused.into_error());
        }
        // Counted by the shape of the path only (never the name or version in it).
        let op = crate::metrics::VaultOp::classify(request.method().as_str(), request.url().path());
        let started = std::time::Instant::now();
        let response = self.inner.execute_request(request).await;
        let status = response.as_ref().ok().map(|r| u16::from(r.status()));
        crate::metrics::vault_request(op, status, started.elapsed());
        let response = response?;
        let cap = self.max_body;
        let declared = response
            .headers()
            .get_optional_str(&HeaderName::from_static("content-length"))
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|d| d > cap as u64) {
            // Refused before a byte of the body is read; dropping the response closes it.
            return Err(Refused::BodyTooLarge { cap, declared }.into_error());
        }
        let (status, headers, body) = response.deconstruct();
        Ok(AsyncRawResponse::new(
            status,
            headers,
            Box::pin(capped(body, cap)),
        ))
    }
}

/// The body's chunks while their total stays within `cap`; then one error, and the body is
/// not polled again (so at most `cap` plus one chunk is ever held).
fn capped(
    body: impl Stream<Item = azure_core::Result<Bytes>> + Send + 'static,
    cap: usize,
) -> impl Stream<Item = azure_core::Result<Bytes>> + Send + 'static {
    body.scan((0usize, false), move |(seen, failed), chunk| {
        if *failed {
            return futures::future::ready(None);
        }
        let item = chunk.and_then(|chunk| {
            *seen = seen.saturating_add(chunk.len());
            if *seen > cap {
                Err(Refused::BodyTooLarge {
                    cap,
                    declared: None,
                }
                .into_error())
            } else {
                Ok(chunk)
            }
        });
        *failed = item.is_err();
        futures::future::ready(Some(item))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::http::headers::Headers;
    use azure_core::http::{Method, StatusCode};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers every request with `chunks` chunks of `chunk` bytes, counting requests.
    #[derive(Debug)]
    struct Endless {
        chunk: usize,
        chunks: usize,
        content_length: Option<u64>,
        sent: AtomicUsize,
        pulled: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl HttpClient for Endless {
        async fn execute_request(&self, _: &Request) -> azure_core::Result<AsyncRawResponse> {
            self.sent.fetch_add(1, Ordering::SeqCst);
            let mut headers = Headers::new();
            if let Some(len) = self.content_length {
                headers.insert("content-length", len.to_string());
            }
            let chunk = Bytes::from(vec![b'a'; self.chunk]);
            let pulled = self.pulled.clone();
            let body = futures::stream::iter(0..self.chunks).map(move |_| {
                pulled.fetch_add(1, Ordering::SeqCst);
                Ok(chunk.clone())
            });
            Ok(AsyncRawResponse::new(
                StatusCode::Ok,
                headers,
                Box::pin(body),
            ))
        }
    }

    fn endless(chunk: usize, chunks: usize, content_length: Option<u64>) -> Arc<Endless> {
        Arc::new(Endless {
            chunk,
            chunks,
            content_length,
            sent: AtomicUsize::new(0),
            pulled: Arc::new(AtomicUsize::new(0)),
        })
    }

    const VAULT: &str = "https://myvault.vault.azure.net";

    fn request(url: &str) -> Request {
        Request::new(url.parse().unwrap(), Method::Get)
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let vault: url::Url = VAULT.parse().unwrap();
        let same = |u: &str| same_origin(&vault, &u.parse().unwrap());
        assert!(same("https://myvault.vault.azure.net/secrets?x=1"));
        assert!(same("https://MyVault.Vault.Azure.Net:443/secrets"));
        assert!(!same("http://myvault.vault.azure.net/secrets"));
        assert!(!same("https://myvault.vault.azure.net:8443/secrets"));
        assert!(!same("https://other.vault.azure.net/secrets"));
        assert!(!same(
            "https://myvault.vault.azure.net.evil.example/secrets"
        ));
        assert!(!same("https://user@evil.example/secrets"));
    }

    #[tokio::test]
    async fn a_foreign_request_is_never_sent() {
        let inner = endless(10, 1, None);
        let guard = GuardedTransport::new(VAULT.parse().unwrap(), inner.clone());
        for foreign in [
            "https://127.0.0.2/secrets",
            "https://myvault.vault.azure.net:444/secrets",
            "http://myvault.vault.azure.net/secrets",
        ] {
            let err = guard.execute_request(&request(foreign)).await.unwrap_err();
            let refused = Refused::find(&err).expect("the guard's error");
            assert!(
                matches!(refused, Refused::ForeignOrigin { .. }),
                "{refused:?}"
            );
            assert!(!err.to_string().contains("/secrets"), "{err}");
        }
        assert_eq!(inner.sent.load(Ordering::SeqCst), 0);
        guard
            .execute_request(&request("https://myvault.vault.azure.net/secrets"))
            .await
            .unwrap();
        assert_eq!(inner.sent.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_within_the_cap_reads_whole() {
        let guard =
            GuardedTransport::with_cap(VAULT.parse().unwrap(), endless(100, 10, None), 1000);
        let response = guard.execute_request(&request(VAULT)).await.unwrap();
        let body = response.into_body().collect().await.unwrap();
        assert_eq!(body.len(), 1000);
    }

    #[tokio::test]
    async fn a_body_over_the_cap_stops_being_read() {
        let inner = endless(1024, 1_000_000, None);
        let guard = GuardedTransport::with_cap(VAULT.parse().unwrap(), inner.clone(), 64 * 1024);
        let response = guard.execute_request(&request(VAULT)).await.unwrap();
        let err = response.into_body().collect().await.unwrap_err();
        assert_eq!(
            Refused::find(&err),
            Some(&Refused::BodyTooLarge {
                cap: 64 * 1024,
                declared: None
            })
        );
        // One chunk past the cap, not the gigabyte on offer.
        assert_eq!(inner.pulled.load(Ordering::SeqCst), 65);
    }

    #[tokio::test]
    async fn a_declared_length_over_the_cap_is_refused_unread() {
        let inner = endless(1024, 100, Some(50 * 1024 * 1024));
        let guard = GuardedTransport::new(VAULT.parse().unwrap(), inner.clone());
        let err = guard.execute_request(&request(VAULT)).await.unwrap_err();
        assert!(
            matches!(
                Refused::find(&err),
                Some(Refused::BodyTooLarge {
                    declared: Some(52428800),
                    ..
                })
            ),
            "{err:?}"
        );
        assert_eq!(inner.pulled.load(Ordering::SeqCst), 0);
    }
}
