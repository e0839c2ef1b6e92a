//! What the vault made of each access token, told to whoever hands the tokens out.
//!
//! The official Key Vault clients answer a 401 by asking the credential for a token again, but the
//! credentials keep their own caches and hand back the very token the vault just refused (a
//! revoked one, or one a continuous-access-evaluation event invalidated). [`RefusalWatcher`] sits
//! in the client pipeline just below the SDK's authorization policy, where it sees each request's
//! bearer token and the vault's answer to it, and reports both verdicts to a [`TokenVerdicts`]
//! (kvfs's token cache, `crate::auth::CachedCredential`), which then drops a refused token and gets
//! a new one on its own schedule.
//!
//! A claims challenge (`error="invalid_token", claims="…"`) names no `resource` or `scope`, so the
//! SDK's Key Vault authorizer cannot parse it and fails the request instead of retrying. The
//! watcher adds the scope the refused token was issued for to that challenge, so the SDK's own,
//! single retry runs with the new token.

use std::sync::Arc;

use async_trait::async_trait;
use azure_core::http::headers::{AUTHORIZATION, HeaderName, WWW_AUTHENTICATE};
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{AsyncRawResponse, Context, Request, StatusCode};

/// Told the vault's verdict on each token it was shown. Never logs a token.
pub(crate) trait TokenVerdicts: Send + Sync + std::fmt::Debug {
    /// The vault answered a request made with `token` in a way that proves it authenticated it.
    fn accepted(&self, token: &str);

    /// The vault answered 401 to a request made with `token`, with a claims challenge's `claims`
    /// (base64, as sent) when there was one. Returns the scope this credential's tokens are for,
    /// when it has one.
    fn refused(&self, token: &str, claims: Option<&str>) -> Option<String>;
}

/// The pipeline policy that reports verdicts (see the module comment).
#[derive(Debug)]
pub(crate) struct RefusalWatcher {
    verdicts: Arc<dyn TokenVerdicts>,
}

impl RefusalWatcher {
    pub(crate) fn new(verdicts: Arc<dyn TokenVerdicts>) -> RefusalWatcher {
        RefusalWatcher { verdicts }
    }
}

#[async_trait]
impl Policy for RefusalWatcher {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let token = bearer_token(request);
        let response = next[0].send(ctx, request, &next[1..]).await?;
        let Some(token) = token else {
            // The first request of a client carries no token: its 401 is the challenge.
            return Ok(response);
        };
        let status = response.status();
        if status != StatusCode::Unauthorized {
            if proves_acceptance(u16::from(status)) {
                self.verdicts.accepted(&token);
            }
            return Ok(response);
        }
        let challenge = response
            .headers()
            .get_optional_str(&WWW_AUTHENTICATE)
            .map(str::to_string);
        let claims = challenge.as_deref().and_then(claims_of);
        let scope = self.verdicts.refused(&token, claims.as_deref());
        match (challenge, scope) {
            (Some(challenge), Some(scope)) if claims.is_some() && !names_scope(&challenge) => Ok(
                with_challenge(response, format!("{challenge}, scope=\"{scope}\"")),
            ),
            _ => Ok(response),
        }
    }
}

/// The token a request carries (`Authorization: Bearer …`), if any.
fn bearer_token(request: &Request) -> Option<String> {
    let value = request.headers().get_optional_str(&AUTHORIZATION)?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| token.trim().to_string())
}

/// An answer only an authenticated request gets: success, 403 (authenticated but not allowed),
/// 404 and the like. 408, 429 and 5xx may come from a gateway that never looked at the token.
fn proves_acceptance(status: u16) -> bool {
    (200..500).contains(&status) && !matches!(status, 401 | 407 | 408 | 429)
}

/// The `claims` parameter of a `Bearer` challenge, if it has one.
pub(crate) fn claims_of(challenge: &str) -> Option<String> {
    param(challenge, "claims").filter(|c| !c.is_empty())
}

/// Whether the challenge names what to ask a token for (the SDK's authorizer needs one).
fn names_scope(challenge: &str) -> bool {
    param(challenge, "resource").is_some() || param(challenge, "scope").is_some()
}

/// The quoted value of `name="…"` in a challenge's parameter list.
fn param(challenge: &str, name: &str) -> Option<String> {
    let params = challenge
        .strip_prefix("Bearer")
        .or_else(|| challenge.strip_prefix("bearer"))
        .unwrap_or(challenge);
    params.split(',').find_map(|part| {
        let (key, value) = part.trim().split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().trim_matches('"').to_string())
    })
}

/// The same answer with another `WWW-Authenticate`.
fn with_challenge(response: AsyncRawResponse, challenge: String) -> AsyncRawResponse {
    let (status, mut headers, body) = response.deconstruct();
    headers.insert(HeaderName::from_static("www-authenticate"), challenge);
    AsyncRawResponse::new(status, headers, Box::pin(body))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use azure_core::http::headers::Headers;
    use azure_core::http::{Method, Url};

    use super::*;

    #[test]
    fn challenge_parameters() {
        let cae = r#"Bearer authorization="https://login.example/t", error="invalid_token", error_description="User session has been revoked", claims="eyJhY2Nlc3NfdG9rZW4iOnt9fQ==""#;
        assert_eq!(
            claims_of(cae).as_deref(),
            Some("eyJhY2Nlc3NfdG9rZW4iOnt9fQ==")
        );
        assert!(!names_scope(cae));
        let plain =
            r#"Bearer authorization="https://login.example/t", resource="https://vault.azure.net""#;
        assert_eq!(claims_of(plain), None);
        assert!(names_scope(plain));
        assert!(names_scope(
            r#"Bearer authorization="x", scope="https://vault.azure.net/.default""#
        ));
        assert_eq!(claims_of(r#"Bearer claims="""#), None);
    }

    #[test]
    fn which_answers_prove_a_token_was_accepted() {
        for s in [200, 204, 403, 404, 409] {
            assert!(proves_acceptance(s), "{s}");
        }
        for s in [401, 408, 429, 500, 503] {
            assert!(!proves_acceptance(s), "{s}");
        }
    }

    /// Records verdicts; answers `refused` with a fixed scope.
    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl TokenVerdicts for Recorder {
        fn accepted(&self, token: &str) {
            self.0.lock().unwrap().push(format!("accepted {token}"));
        }
        fn refused(&self, token: &str, claims: Option<&str>) -> Option<String> {
            self.0
                .lock()
                .unwrap()
                .push(format!("refused {token} claims={}", claims.unwrap_or("-")));
            Some("https://vault.azure.net/.default".into())
        }
    }

    /// The transport end of a pipeline: one fixed answer.
    #[derive(Debug)]
    struct Answer(u16, Option<&'static str>);

    #[async_trait]
    impl Policy for Answer {
        async fn send(&self, _: &Context, _: &mut Request, _: &[Arc<dyn Policy>]) -> PolicyResult {
            let mut headers = Headers::new();
            if let Some(c) = self.1 {
                headers.insert(HeaderName::from_static("www-authenticate"), c);
            }
            Ok(AsyncRawResponse::from_bytes(
                StatusCode::from(self.0),
                headers,
                Vec::new(),
            ))
        }
    }

    async fn through(
        watcher: &RefusalWatcher,
        token: Option<&str>,
        answer: Answer,
    ) -> AsyncRawResponse {
        let mut request = Request::new(
            Url::parse("https://v.vault.azure.net/secrets/a").unwrap(),
            Method::Get,
        );
        if let Some(t) = token {
            request.insert_header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let next: Vec<Arc<dyn Policy>> = vec![Arc::new(answer)];
        watcher
            .send(&Context::new(), &mut request, &next)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn verdicts_are_reported_and_a_claims_challenge_gets_the_scope() {
        let recorder = Arc::new(Recorder::default());
        let watcher = RefusalWatcher::new(recorder.clone());
        through(&watcher, Some("t1"), Answer(200, None)).await;
        through(&watcher, Some("t1"), Answer(503, None)).await;
        // No token: the first challenge of a client, nobody's verdict.
        through(&watcher, None, Answer(401, Some("Bearer resource=\"r\""))).await;
        let plain = r#"Bearer authorization="a", resource="https://vault.azure.net""#;
        let r = through(&watcher, Some("t1"), Answer(401, Some(plain))).await;
        assert_eq!(r.headers().get_optional_str(&WWW_AUTHENTICATE), Some(plain));
        let cae = r#"Bearer authorization="a", error="invalid_token", claims="Yw==""#;
        let r = through(&watcher, Some("t2"), Answer(401, Some(cae))).await;
        assert_eq!(
            r.headers().get_optional_str(&WWW_AUTHENTICATE),
            Some(format!("{cae}, scope=\"https://vault.azure.net/.default\"").as_str())
        );
        assert_eq!(
            *recorder.0.lock().unwrap(),
            [
                "accepted t1",
                "refused t1 claims=-",
                "refused t2 claims=Yw=="
            ]
        );
    }
}
