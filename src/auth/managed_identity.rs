//! Managed identity over HTTP, both forms: the instance metadata service and App Service's
//! `IDENTITY_ENDPOINT`.

use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use azure_core::time::OffsetDateTime;

use crate::http::error_chain;

/// Managed identity over HTTP, both forms: the instance metadata service and App Service's
/// `IDENTITY_ENDPOINT`.
///
/// Hand-written rather than the crate's `ManagedIdentityCredential` because that one hard-codes
/// the metadata service at 169.254.169.254 (tests and `--imds-endpoint` need another address)
/// and retries connection failures for about 72 s whatever retry options it is given, which
/// would stall `auto` and every read during an outage. It also picks its source from the
/// process environment, which would make `auto`'s decision (taken from an
/// [`Env`](super::Env)) and the credential disagree. Here each request has a bounded timeout
/// and no retries: the cache and the vault client's retry policy decide what happens next.
#[derive(Debug)]
pub(crate) struct MsiCredential {
    url: url::Url,
    header: (&'static str, String),
    client_id: Option<String>,
    http: reqwest::Client,
    timeout: Duration,
}

impl MsiCredential {
    /// `GET {endpoint}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=…` with
    /// `Metadata: true`.
    pub(crate) fn imds(
        endpoint: &str,
        client_id: Option<String>,
        timeout: Duration,
    ) -> Result<MsiCredential, String> {
        #[cfg(test)]
        assert!(
            !endpoint.contains("169.254.169.254"),
            "tests must never reach the real instance metadata service"
        );
        let base = endpoint.trim_end_matches('/');
        let mut url = parse_http_url(&format!("{base}/metadata/identity/oauth2/token"))
            .map_err(|e| format!("--imds-endpoint {endpoint:?}: {e}"))?;
        url.query_pairs_mut()
            .append_pair("api-version", "2018-02-01");
        Self::new(url, ("Metadata", "true".into()), client_id, timeout)
    }

    /// `GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=…` with `X-IDENTITY-HEADER`.
    pub(crate) fn app_service(
        endpoint: &str,
        header: &str,
        client_id: Option<String>,
        timeout: Duration,
    ) -> Result<MsiCredential, String> {
        let mut url =
            parse_http_url(endpoint).map_err(|e| format!("IDENTITY_ENDPOINT {endpoint:?}: {e}"))?;
        url.query_pairs_mut()
            .append_pair("api-version", "2019-08-01");
        Self::new(
            url,
            ("X-IDENTITY-HEADER", header.to_string()),
            client_id,
            timeout,
        )
    }

    fn new(
        url: url::Url,
        header: (&'static str, String),
        client_id: Option<String>,
        timeout: Duration,
    ) -> Result<MsiCredential, String> {
        // Its own client: these endpoints are link-local or loopback, and must never go through
        // an HTTP(S)_PROXY from the environment.
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {}", error_chain(&e)))?;
        Ok(MsiCredential {
            url,
            header,
            client_id,
            http,
            timeout,
        })
    }

    /// The request URL for one scope.
    pub(crate) fn request_url(&self, scope: &str) -> url::Url {
        let mut url = self.url.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("resource", resource_of(scope));
            if let Some(id) = &self.client_id {
                q.append_pair("client_id", id);
            }
        }
        url
    }
}

fn parse_http_url(s: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(s).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("not an http:// URL".into());
    }
    Ok(url)
}

/// `https://vault.azure.net/.default` → `https://vault.azure.net`.
fn resource_of(scope: &str) -> &str {
    scope.strip_suffix("/.default").unwrap_or(scope)
}

#[async_trait]
impl TokenCredential for MsiCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let [scope] = scopes else {
            return Err(azure_core::Error::with_message(
                ErrorKind::Credential,
                "managed identity takes exactly one scope",
            ));
        };
        let url = self.request_url(scope);
        let where_ = format!(
            "managed identity endpoint {}",
            url.origin().ascii_serialization()
        );
        let answer = self
            .http
            .get(url)
            .header(self.header.0, &self.header.1)
            .timeout(self.timeout)
            .send()
            .await;
        let response = answer.map_err(|e| {
            let inner = azure_core::Error::new(ErrorKind::Connection, e);
            azure_core::Error::with_error(
                ErrorKind::Credential,
                inner,
                format!("{where_}: no answer"),
            )
        })?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| {
            let inner = azure_core::Error::new(ErrorKind::Io, e);
            azure_core::Error::with_error(
                ErrorKind::Credential,
                inner,
                format!("{where_}: answer cut short"),
            )
        })?;
        if !(200..300).contains(&status) {
            let detail = msi_error_text(&body);
            let message = format!("{where_} answered HTTP {status}: {detail}");
            return Err(if status == 408 || status == 429 || status >= 500 {
                let inner = ErrorKind::HttpResponse {
                    status: azure_core::http::StatusCode::from(status),
                    error_code: None,
                    raw_response: None,
                }
                .into_error();
                azure_core::Error::with_error(ErrorKind::Credential, inner, message)
            } else {
                azure_core::Error::with_message(ErrorKind::Credential, message)
            });
        }
        parse_msi_token(&body, OffsetDateTime::now_utc()).map_err(|e| {
            azure_core::Error::with_message(ErrorKind::Credential, format!("{where_}: {e}"))
        })
    }
}

/// The interesting part of a managed-identity error body (IMDS: `error_description`; App
/// Service: `message`), else its first line.
fn msi_error_text(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    for key in ["error_description", "message", "error"] {
        if let Some(s) = v.get(key).and_then(|x| x.as_str()) {
            return s.to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        "(no body)".into()
    } else {
        line.chars().take(200).collect()
    }
}

/// A managed-identity token answer: `access_token` and `expires_on` (Unix seconds, as a string
/// in both IMDS and App Service answers, sometimes a number), else `expires_in` from `now`.
pub(crate) fn parse_msi_token(body: &[u8], now: OffsetDateTime) -> Result<AccessToken, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    let token = v
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or("answer has no access_token")?;
    let number = |key: &str| -> Option<i64> {
        match v.get(key)? {
            serde_json::Value::String(s) => s.trim().parse().ok(),
            serde_json::Value::Number(n) => n.as_i64(),
            _ => None,
        }
    };
    let expires_on = match (number("expires_on"), number("expires_in")) {
        (Some(at), _) => OffsetDateTime::from_unix_timestamp(at)
            .map_err(|_| format!("expires_on {at} is out of range"))?,
        (None, Some(secs)) => now + azure_core::time::Duration::seconds(secs),
        (None, None) => return Err("answer has neither expires_on nor expires_in".into()),
    };
    Ok(AccessToken::new(Secret::new(token.to_string()), expires_on))
}

#[cfg(test)]
mod tests {
    use azure_core::time::Duration as TimeDelta;

    use super::*;
    use crate::auth::failure::is_transient;
    use crate::auth::testing::{closed_endpoint, request, selected_token, vault, vault_http};
    use crate::auth::{AuthMethod, Env, VAULT_SCOPE};

    #[test]
    fn managed_identity_answers_parse() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let imds = br#"{"access_token":"eyJ0","client_id":"c","expires_in":"3599","expires_on":"1700003599","ext_expires_in":"3599","not_before":"1699999999","resource":"https://vault.azure.net","token_type":"Bearer"}"#;
        let t = parse_msi_token(imds, now).unwrap();
        assert_eq!(t.token.secret(), "eyJ0");
        assert_eq!(t.expires_on.unix_timestamp(), 1_700_003_599);
        let numeric = br#"{"access_token":"a","expires_on":1700000100}"#;
        assert_eq!(
            parse_msi_token(numeric, now)
                .unwrap()
                .expires_on
                .unix_timestamp(),
            1_700_000_100
        );
        let only_in = br#"{"access_token":"a","expires_in":"60"}"#;
        assert_eq!(
            parse_msi_token(only_in, now)
                .unwrap()
                .expires_on
                .unix_timestamp(),
            1_700_000_060
        );
        assert!(
            parse_msi_token(br#"{"expires_on":"1"}"#, now)
                .unwrap_err()
                .contains("access_token")
        );
        assert!(
            parse_msi_token(br#"{"access_token":"a"}"#, now)
                .unwrap_err()
                .contains("expires")
        );
        assert!(
            parse_msi_token(b"<html>", now)
                .unwrap_err()
                .contains("not JSON")
        );
        assert_eq!(
            msi_error_text(
                br#"{"error":"invalid_request","error_description":"Identity not found"}"#
            ),
            "Identity not found"
        );
        assert_eq!(
            msi_error_text(br#"{"statusCode":400,"message":"No managed identity"}"#),
            "No managed identity"
        );
        assert_eq!(msi_error_text(b""), "(no body)");
    }

    #[test]
    fn managed_identity_requests_name_the_resource_and_identity() {
        let c = MsiCredential::imds(
            "http://127.0.0.1:9/",
            Some("abc".into()),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            c.request_url(VAULT_SCOPE).as_str(),
            "http://127.0.0.1:9/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id=abc"
        );
        let c = MsiCredential::app_service(
            "http://127.0.0.1:9/msi/token",
            "h",
            None,
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            c.request_url(VAULT_SCOPE).as_str(),
            "http://127.0.0.1:9/msi/token?api-version=2019-08-01&resource=https%3A%2F%2Fvault.azure.net"
        );
        assert!(MsiCredential::imds("127.0.0.1", None, Duration::from_secs(1)).is_err());
    }

    #[tokio::test]
    async fn imds_credential_against_testvault() {
        let v = vault(3600);
        let i = v.info().clone();
        // auto with nothing else set probes the metadata service and keeps the token it got.
        let mut req = request(AuthMethod::Auto);
        req.imds_endpoint = Some(i.imds_endpoint.clone());
        let (credential, _) = selected_token(
            &req,
            &Env::default(),
            &vault_http(&v),
            AuthMethod::ManagedIdentity,
        )
        .await;
        credential.get_token(&[VAULT_SCOPE], None).await.unwrap();
        assert_eq!(v.count("ManagedIdentityToken"), 1);
        let log = v.requests();
        assert_eq!(
            log.last().unwrap().client_id.as_deref(),
            Some(i.system_assigned_client_id.as_str())
        );

        // User-assigned by client id, explicitly.
        let mut req = request(AuthMethod::ManagedIdentity);
        req.client_id = Some(i.user_assigned_client_id.clone());
        req.imds_endpoint = Some(i.imds_endpoint.clone());
        let (_, t) = selected_token(
            &req,
            &Env::default(),
            &vault_http(&v),
            AuthMethod::ManagedIdentity,
        )
        .await;
        assert!(t.expires_on > OffsetDateTime::now_utc() + TimeDelta::minutes(50));
        assert_eq!(
            v.requests().last().unwrap().client_id.as_deref(),
            Some(i.user_assigned_client_id.as_str())
        );

        // An unknown identity is refused (not transient: the vault client maps it to EACCES).
        let c = MsiCredential::imds(
            &i.imds_endpoint,
            Some("nobody".into()),
            Duration::from_secs(5),
        )
        .unwrap();
        let err = c.get_token(&[VAULT_SCOPE], None).await.unwrap_err();
        assert!(!is_transient(&err));
        assert!(
            error_chain(&err).contains("HTTP 400"),
            "{}",
            error_chain(&err)
        );

        // The App Service form, from the environment.
        let env = Env::from_pairs([
            ("IDENTITY_ENDPOINT", i.identity_endpoint.as_str()),
            ("IDENTITY_HEADER", i.identity_header.as_str()),
        ]);
        let mut req = request(AuthMethod::Auto);
        req.imds_endpoint = Some(closed_endpoint());
        selected_token(&req, &env, &vault_http(&v), AuthMethod::ManagedIdentity).await;
        assert_eq!(v.requests().last().unwrap().path, "/msi/token");
    }
}
