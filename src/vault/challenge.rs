//! The Key Vault authentication challenge, learned once per process by a probe that names no
//! object.
//!
//! The official Key Vault clients do not know which scope to ask a token for until the vault
//! tells them: each client (secrets, keys, certificates) sends its *first* request without a
//! token, reads the scope from the 401's `WWW-Authenticate`, and sends the request again with a
//! token. On a fresh mount that first request is a reader's GET of an object, so the object was
//! requested twice (once 401, once 200), and each of the three clients paid a challenge of its
//! own.
//!
//! [`ChallengeTransport`] answers those token-less requests itself. The first one (or
//! [`ChallengeTransport::prime`], run in the background when a worker starts) sends one
//! token-less probe of the secrets list (`GET {vault}/secrets?api-version=…&maxresults=1`),
//! shared by every token-less request that arrives meanwhile; when the vault answers it with a 401
//! and a challenge, the challenge is kept and every token-less request gets a 401 carrying it,
//! made up here without sending anything. So the discovery costs one request per vault per
//! process, and never an object's request.
//!
//! What it leaves alone:
//! * **Requests with a token pass untouched**, and so do their answers: a 401 to a token (a
//!   revoked one, a claims challenge) is the vault's verdict, which the SDK and
//!   [`super::refusals`] act on. The challenge kept here only names the authority and resource a
//!   token is for; should that ever change, the vault's 401 to the token the SDK then sends
//!   carries the new challenge, and the SDK follows it.
//! * **A vault that does not challenge** (an emulator without authentication; an answer other
//!   than a 401 with `WWW-Authenticate`): the request is sent as it is, as without this layer,
//!   and a definite answer (anything but 408, 429 or 5xx) is remembered, so such a vault is not
//!   probed again.
//! * **A probe that fails** (no connection, timeout) fails the requests that waited for it with
//!   its error, as their own request would have, and is not remembered: the next token-less
//!   request (the SDK's retry) probes again.
//!
//! Nothing here logs or keeps a token or a value: the challenge names a tenant and a resource.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::Bytes;
use azure_core::error::ErrorKind;
use azure_core::http::headers::{AUTHORIZATION, HeaderName, Headers, WWW_AUTHENTICATE};
use azure_core::http::{AsyncRawResponse, HttpClient, Method, Request, StatusCode};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;

use super::guard::{origin_of, same_origin};

/// What the layer knows about the vault's challenge.
enum State {
    /// Nothing yet, or the last probe failed.
    Unknown,
    /// A probe is under way; token-less requests wait for it.
    Probing(Shared<BoxFuture<'static, Outcome>>),
    /// The vault's `WWW-Authenticate` to a token-less request.
    Known(Arc<str>),
    /// The vault answered a token-less probe without a challenge: token-less requests are sent.
    Unchallenged,
}

enum Consult {
    Answer(Arc<str>),
    Send,
    Wait(Shared<BoxFuture<'static, Outcome>>),
}

/// How one probe ended (cloned to every request that waited for it).
#[derive(Clone, Debug)]
enum Outcome {
    Challenge(Arc<str>),
    /// A definite answer without a challenge.
    NoChallenge,
    /// 408, 429 or 5xx: says nothing about the challenge.
    Transient,
    /// No answer: the error, as kind and message (an SDK error cannot be cloned).
    Failed(ErrorKind, String),
}

/// An [`HttpClient`] that answers the SDK's token-less requests with the vault's challenge,
/// learned by one probe (see the module comment).
pub(crate) struct ChallengeTransport {
    vault: url::Url,
    inner: Arc<dyn HttpClient>,
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for ChallengeTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*self.state.lock() {
            State::Unknown => "unknown",
            State::Probing(_) => "probing",
            State::Known(_) => "known",
            State::Unchallenged => "unchallenged",
        };
        f.debug_struct("ChallengeTransport")
            .field("vault", &origin_of(&self.vault))
            .field("challenge", &state)
            .finish_non_exhaustive()
    }
}

impl ChallengeTransport {
    pub(crate) fn new(vault: url::Url, inner: Arc<dyn HttpClient>) -> Self {
        ChallengeTransport {
            vault,
            inner,
            state: Arc::new(Mutex::new(State::Unknown)),
        }
    }

    /// Learn the challenge now, if nobody has yet (a worker starts this in the background, so
    /// the first reader finds it known). Failures are only logged: the first token-less
    /// request probes again.
    pub(crate) async fn prime(&self, api_version: &str) {
        if let Consult::Wait(probe) = self.consult(api_version) {
            probe.await;
        }
    }

    /// What to do with a token-less request: answer it, send it, or wait for the probe (started
    /// here when none is under way).
    fn consult(&self, api_version: &str) -> Consult {
        let mut state = self.state.lock();
        match &*state {
            State::Known(challenge) => Consult::Answer(challenge.clone()),
            State::Unchallenged => Consult::Send,
            State::Probing(probe) => Consult::Wait(probe.clone()),
            State::Unknown => {
                let probe = self.start_probe(api_version);
                *state = State::Probing(probe.clone());
                Consult::Wait(probe)
            }
        }
    }

    /// One token-less `GET` of the secrets list (at most one item): it names no object. The
    /// future records its own outcome, so a probe whose first waiter went away still counts
    /// once another waiter drives it to the end.
    fn start_probe(&self, api_version: &str) -> Shared<BoxFuture<'static, Outcome>> {
        let url = probe_url(&self.vault, api_version);
        let inner = self.inner.clone();
        let state = self.state.clone();
        async move {
            let outcome = send_probe(inner.as_ref(), url).await;
            match &outcome {
                Outcome::Challenge(_) => {
                    tracing::debug!("learned the vault's authentication challenge (one probe)")
                }
                Outcome::NoChallenge => {
                    tracing::debug!("the vault answered a token-less probe without a challenge")
                }
                Outcome::Transient => {
                    tracing::debug!("the vault's challenge probe met a transient answer")
                }
                Outcome::Failed(_, why) => {
                    tracing::debug!("the vault's challenge probe failed: {why}")
                }
            }
            *state.lock() = match &outcome {
                Outcome::Challenge(challenge) => State::Known(challenge.clone()),
                Outcome::NoChallenge => State::Unchallenged,
                // Not remembered: the next token-less request asks again.
                Outcome::Transient | Outcome::Failed(..) => State::Unknown,
            };
            outcome
        }
        .boxed()
        .shared()
    }
}

/// A token-less request that the vault answers with its challenge and that names no object:
/// the secrets list, one item at most.
pub(crate) fn probe_url(vault: &url::Url, api_version: &str) -> url::Url {
    let mut url = vault.join("secrets").unwrap_or_else(|_| vault.clone());
    url.query_pairs_mut()
        .clear()
        .append_pair("api-version", api_version)
        .append_pair("maxresults", "1");
    url
}

async fn send_probe(inner: &dyn HttpClient, url: url::Url) -> Outcome {
    let probe = Request::new(url, Method::Get);
    let response = match inner.execute_request(&probe).await {
        Ok(response) => response,
        Err(e) => return Outcome::Failed(e.kind().clone(), crate::http::error_chain(&e)),
    };
    let status = response.status();
    let challenge = response
        .headers()
        .get_optional_str(&WWW_AUTHENTICATE)
        .map(str::to_owned);
    // Read to the end (it is small, and capped below us), so the connection is kept for the
    // request that follows; a body that fails to read changes nothing about the challenge.
    let _ = response.into_body().collect().await;
    match (status, challenge) {
        (StatusCode::Unauthorized, Some(challenge)) if !challenge.trim().is_empty() => {
            Outcome::Challenge(challenge.into())
        }
        (status, _) if transient(u16::from(status)) => Outcome::Transient,
        _ => Outcome::NoChallenge,
    }
}

fn transient(status: u16) -> bool {
    matches!(status, 408 | 429) || status >= 500
}

/// The answer the vault gives a token-less request, without asking it.
fn challenged(challenge: &str) -> AsyncRawResponse {
    let mut headers = Headers::new();
    headers.insert(WWW_AUTHENTICATE, challenge.to_owned());
    headers.insert(HeaderName::from_static("content-length"), "0");
    AsyncRawResponse::from_bytes(StatusCode::Unauthorized, headers, Bytes::new())
}

#[async_trait]
impl HttpClient for ChallengeTransport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let token_less = request.headers().get_optional_str(&AUTHORIZATION).is_none();
        // The api-version of the request is the one the probe uses. Requests elsewhere are the
        // guard's to refuse, and one without an api-version is not one the SDK makes: both are
        // sent as they are.
        let api_version = request
            .url()
            .query_pairs()
            .find(|(k, _)| k == "api-version")
            .map(|(_, v)| v.into_owned());
        let consult = match api_version {
            Some(v) if token_less && same_origin(&self.vault, request.url()) => self.consult(&v),
            _ => Consult::Send,
        };
        let outcome = match consult {
            Consult::Answer(challenge) => Outcome::Challenge(challenge),
            Consult::Send => Outcome::NoChallenge,
            Consult::Wait(probe) => probe.await,
        };
        match outcome {
            Outcome::Challenge(challenge) => Ok(challenged(&challenge)),
            // Worded without "challenge": `azure::map_error` reads that word as an authorizer
            // failure (EACCES), and this is the vault not answering.
            Outcome::Failed(kind, why) => Err(azure_core::Error::with_message(
                kind,
                format!("no answer to the first, token-less request: {why}"),
            )),
            Outcome::NoChallenge | Outcome::Transient => self.inner.execute_request(request).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const VAULT: &str = "https://myvault.vault.azure.net";
    const CHALLENGE: &str =
        r#"Bearer authorization="https://login.windows.net/t", resource="https://vault.azure.net""#;

    /// What the fake vault does with a token-less request.
    #[derive(Clone, Copy, Debug)]
    enum Answer {
        Challenge,
        /// 401 without `WWW-Authenticate`.
        BareUnauthorized,
        Status(u16),
        /// A transport error.
        Error,
    }

    /// A fake vault: token-less requests get `answers` in turn (the last one repeats), requests
    /// with a token get 200, or 401 with a claims challenge when `refuse_tokens`. Every request is
    /// recorded (URL and whether it had a token); each waits for `gate` when one is set.
    #[derive(Debug)]
    struct Fake {
        answers: Mutex<Vec<Answer>>,
        refuse_tokens: bool,
        sent: Mutex<Vec<(String, bool)>>,
        gate: Option<tokio::sync::Semaphore>,
        waiting: AtomicUsize,
    }

    impl Fake {
        fn new(answers: &[Answer]) -> Arc<Fake> {
            Arc::new(Fake {
                answers: Mutex::new(answers.to_vec()),
                refuse_tokens: false,
                sent: Mutex::new(Vec::new()),
                gate: None,
                waiting: AtomicUsize::new(0),
            })
        }

        /// [`Fake::new`] whose requests wait until the test opens the gate.
        fn gated(answers: &[Answer]) -> Arc<Fake> {
            Arc::new(Fake {
                gate: Some(tokio::sync::Semaphore::new(0)),
                ..Arc::into_inner(Fake::new(answers)).expect("not shared yet")
            })
        }

        fn sent(&self) -> Vec<(String, bool)> {
            self.sent.lock().clone()
        }
    }

    #[async_trait]
    impl HttpClient for Fake {
        async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
            let token = request.headers().get_optional_str(&AUTHORIZATION).is_some();
            self.sent.lock().push((request.url().to_string(), token));
            if let Some(gate) = &self.gate {
                self.waiting.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.unwrap().forget();
            }
            let mut headers = Headers::new();
            if token {
                if self.refuse_tokens {
                    headers.insert(
                        WWW_AUTHENTICATE,
                        r#"Bearer error="invalid_token", claims="e30=""#,
                    );
                    return Ok(AsyncRawResponse::from_bytes(
                        StatusCode::Unauthorized,
                        headers,
                        Bytes::new(),
                    ));
                }
                return Ok(AsyncRawResponse::from_bytes(
                    StatusCode::Ok,
                    headers,
                    Bytes::from_static(b"{}"),
                ));
            }
            let answer = {
                let mut answers = self.answers.lock();
                if answers.len() > 1 {
                    answers.remove(0)
                } else {
                    answers[0]
                }
            };
            let status = match answer {
                Answer::Challenge => {
                    headers.insert(WWW_AUTHENTICATE, CHALLENGE);
                    401
                }
                Answer::BareUnauthorized => 401,
                Answer::Status(s) => s,
                Answer::Error => {
                    return Err(azure_core::Error::with_message(
                        ErrorKind::Io,
                        "connection reset",
                    ));
                }
            };
            Ok(AsyncRawResponse::from_bytes(
                StatusCode::from(status),
                headers,
                Bytes::from_static(b"{\"error\":{}}"),
            ))
        }
    }

    fn get(path: &str, token: bool) -> Request {
        let mut r = Request::new(
            format!("{VAULT}{path}?api-version=2025-07-01")
                .parse()
                .unwrap(),
            Method::Get,
        );
        if token {
            r.insert_header("authorization", "Bearer tok");
        }
        r
    }

    fn layer(fake: &Arc<Fake>) -> Arc<ChallengeTransport> {
        Arc::new(ChallengeTransport::new(
            VAULT.parse().unwrap(),
            fake.clone(),
        ))
    }

    fn challenge_of(r: &AsyncRawResponse) -> Option<String> {
        r.headers()
            .get_optional_str(&WWW_AUTHENTICATE)
            .map(str::to_owned)
    }

    fn is_probe(url: &str) -> bool {
        url == format!("{VAULT}/secrets?api-version=2025-07-01&maxresults=1")
    }

    #[tokio::test]
    async fn many_token_less_requests_share_one_probe_and_no_object_is_sent() {
        let fake = Fake::gated(&[Answer::Challenge]);
        let t = layer(&fake);
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let t = t.clone();
                tokio::spawn(async move {
                    let path = match i % 3 {
                        0 => "/secrets/db-password",
                        1 => "/keys/signing",
                        _ => "/certificates/web",
                    };
                    t.execute_request(&get(path, false)).await
                })
            })
            .collect();
        // Held at the vault until every request has joined it (polled, not timed).
        while fake.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        fake.gate.as_ref().unwrap().add_permits(1000);
        for task in tasks {
            let response = task.await.unwrap().unwrap();
            assert_eq!(response.status(), StatusCode::Unauthorized);
            assert_eq!(challenge_of(&response).as_deref(), Some(CHALLENGE));
        }
        // Later token-less requests (another client's first) get it without a request.
        let response = t.execute_request(&get("/keys/other", false)).await.unwrap();
        assert_eq!(challenge_of(&response).as_deref(), Some(CHALLENGE));
        let sent = fake.sent();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert!(is_probe(&sent[0].0) && !sent[0].1, "{sent:?}");
        t.prime("2025-07-01").await;
        assert_eq!(
            fake.sent().len(),
            1,
            "a known challenge is not probed again"
        );
    }

    #[tokio::test]
    async fn prime_learns_the_challenge_ahead_of_the_first_request() {
        let fake = Fake::new(&[Answer::Challenge]);
        let t = layer(&fake);
        t.prime("7.6").await;
        let response = t.execute_request(&get("/secrets/x", false)).await.unwrap();
        assert_eq!(challenge_of(&response).as_deref(), Some(CHALLENGE));
        let sent = fake.sent();
        assert_eq!(
            sent,
            vec![(
                format!("{VAULT}/secrets?api-version=7.6&maxresults=1"),
                false
            )]
        );
    }

    #[tokio::test]
    async fn requests_with_a_token_and_their_401s_pass_untouched() {
        let fake = Arc::new(Fake {
            refuse_tokens: true,
            ..Arc::into_inner(Fake::new(&[Answer::Challenge])).unwrap()
        });
        let t = layer(&fake);
        // Before anything is known, and after.
        for _ in 0..2 {
            let response = t
                .execute_request(&get("/secrets/db-password", true))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::Unauthorized);
            assert!(challenge_of(&response).unwrap().contains("claims="));
            let _ = t.execute_request(&get("/secrets/x", false)).await.unwrap();
        }
        let sent = fake.sent();
        assert_eq!(sent.len(), 3, "{sent:?}");
        assert!(sent[0].0.contains("/secrets/db-password") && sent[0].1);
        assert!(is_probe(&sent[1].0) && !sent[1].1);
        assert!(sent[2].0.contains("/secrets/db-password") && sent[2].1);
    }

    #[tokio::test]
    async fn a_vault_that_does_not_challenge_gets_the_request_as_it_is() {
        for answer in [
            Answer::Status(200),
            Answer::BareUnauthorized,
            Answer::Status(404),
        ] {
            let fake = Fake::new(&[answer]);
            let t = layer(&fake);
            for name in ["a", "b"] {
                let response = t
                    .execute_request(&get(&format!("/secrets/{name}"), false))
                    .await
                    .unwrap();
                assert!(challenge_of(&response).is_none(), "{answer:?}");
            }
            let sent: Vec<String> = fake.sent().into_iter().map(|(u, _)| u).collect();
            // One probe; then both requests as they were, the second without a probe.
            assert_eq!(sent.len(), 3, "{answer:?}: {sent:?}");
            assert!(is_probe(&sent[0]));
            assert!(sent[1].contains("/secrets/a") && sent[2].contains("/secrets/b"));
        }
    }

    #[tokio::test]
    async fn a_transient_answer_is_not_remembered() {
        let fake = Fake::new(&[Answer::Status(503), Answer::Status(503), Answer::Challenge]);
        let t = layer(&fake);
        let response = t.execute_request(&get("/secrets/a", false)).await.unwrap();
        assert_eq!(response.status(), StatusCode::ServiceUnavailable);
        let response = t.execute_request(&get("/secrets/a", false)).await.unwrap();
        assert_eq!(challenge_of(&response).as_deref(), Some(CHALLENGE));
        let sent: Vec<String> = fake.sent().into_iter().map(|(u, _)| u).collect();
        assert_eq!(sent.len(), 3, "{sent:?}");
        assert!(is_probe(&sent[0]) && sent[1].contains("/secrets/a") && is_probe(&sent[2]));
    }

    #[tokio::test]
    async fn a_failed_probe_fails_the_request_and_is_not_remembered() {
        let fake = Fake::new(&[Answer::Error, Answer::Challenge]);
        let t = layer(&fake);
        let err = t
            .execute_request(&get("/secrets/a", false))
            .await
            .unwrap_err();
        // The SDK's retry policy retries I/O errors: the kind is kept.
        assert_eq!(err.kind(), &ErrorKind::Io);
        assert!(err.to_string().contains("connection reset"), "{err}");
        let response = t.execute_request(&get("/secrets/a", false)).await.unwrap();
        assert_eq!(challenge_of(&response).as_deref(), Some(CHALLENGE));
        let sent: Vec<String> = fake.sent().into_iter().map(|(u, _)| u).collect();
        assert_eq!(sent.len(), 2, "two probes, no object: {sent:?}");
        assert!(sent.iter().all(|u| is_probe(u)));
    }

    #[tokio::test]
    async fn an_abandoned_probe_is_finished_by_the_next_request() {
        let fake = Fake::gated(&[Answer::Challenge]);
        let t = layer(&fake);
        let first = tokio::spawn({
            let t = t.clone();
            async move { t.execute_request(&get("/secrets/a", false)).await }
        });
        while fake.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // The first reader gives up (its call deadline), the probe stays under way.
        first.abort();
        let _ = first.await;
        fake.gate.as_ref().unwrap().add_permits(10);
        let response = t.execute_request(&get("/secrets/a", false)).await.unwrap();
        assert_eq!(challenge_of(&response).as_deref(), Some(CHALLENGE));
        assert_eq!(fake.sent().len(), 1, "{:?}", fake.sent());
    }

    #[tokio::test]
    async fn requests_elsewhere_are_not_probed_for() {
        let fake = Fake::new(&[Answer::Challenge]);
        let t = layer(&fake);
        let mut r = Request::new(
            "https://other.example/secrets/a?api-version=7.6"
                .parse()
                .unwrap(),
            Method::Get,
        );
        r.insert_header("accept", "application/json");
        let _ = t.execute_request(&r).await.unwrap();
        let sent = fake.sent();
        assert_eq!(sent.len(), 1);
        assert!(sent[0].0.starts_with("https://other.example/"));
    }
}
