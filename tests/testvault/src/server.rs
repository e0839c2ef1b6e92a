//! HTTP plumbing: TLS and plain listeners, and the one dispatch every request goes through
//! (control API, identity endpoints, then the vault: challenge, faults, api-version, RBAC, operation).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use openssl::ssl::{Ssl, SslAcceptor};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::error::VaultError;
use crate::faults::FaultAction;
use crate::identities::{Caller, VaultPlace};
use crate::observe::{LogEntry, now_ms};
use crate::ops::{NoRoute, Op, route_vault};
use crate::state::State;
use crate::tokens::TokenProblem;
use crate::vault::{self, VaultRequest};

/// Returned by the service function to make hyper close the connection without answering.
#[derive(Debug)]
pub struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by an injected fault")
    }
}

impl std::error::Error for DropConnection {}

type Reply = Result<Response<AnswerBody>, DropConnection>;

/// An answer's body: all of it in one frame. Its length is announced to hyper, except for a
/// truncated answer, whose `Content-Length` (set by the fault) claims more than it holds: hyper
/// then sends what there is and closes the connection mid-body, as a broken server would.
pub struct AnswerBody {
    data: Option<Bytes>,
    exact: bool,
}

impl AnswerBody {
    fn sized(data: Bytes) -> Self {
        AnswerBody {
            data: Some(data),
            exact: true,
        }
    }

    fn length_unannounced(data: Bytes) -> Self {
        AnswerBody {
            data: Some(data),
            exact: false,
        }
    }
}

impl hyper::body::Body for AnswerBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let data = self.get_mut().data.take();
        std::task::Poll::Ready(data.map(|d| Ok(hyper::body::Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match (&self.data, self.exact) {
            (Some(d), true) => hyper::body::SizeHint::with_exact(d.len() as u64),
            (None, _) => hyper::body::SizeHint::with_exact(0),
            (Some(_), false) => hyper::body::SizeHint::default(),
        }
    }
}

/// Request bodies larger than this are refused (the largest real one, a PFX import, is far smaller).
const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// API versions the service accepts (7.x with optional preview suffixes and the dated ones).
pub fn api_version_supported(v: &str) -> bool {
    const DATED: &[&str] = &["2025-07-01", "2026-04-01"];
    if DATED.contains(&v) {
        return true;
    }
    let (main, preview) = match v.split_once("-preview") {
        Some((m, p)) => (m, Some(p)),
        None => (v, None),
    };
    let main_ok = matches!(main, "7.0" | "7.1" | "7.2" | "7.3" | "7.4" | "7.5" | "7.6");
    let preview_ok = preview.is_none_or(|p| {
        p.is_empty() || (p.starts_with('.') && p[1..].chars().all(|c| c.is_ascii_digit()))
    });
    main_ok && preview_ok
}

pub const LATEST_API_VERSION: &str = "2026-04-01";

/// Serve HTTPS on `listener` until `shutdown` turns true.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: Arc<SslAcceptor>,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let Ok(ssl) = Ssl::new(acceptor.context()) else {
                return;
            };
            let Ok(mut stream) = tokio_openssl::SslStream::new(ssl, tcp) else {
                return;
            };
            if std::pin::Pin::new(&mut stream).accept().await.is_err() {
                return;
            }
            serve_connection(TokioIo::new(stream), state, true, peer, shutdown).await;
        });
    }
}

/// Serve plain HTTP (managed-identity endpoints only, as IMDS and App Service speak it).
pub async fn serve_plain(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(serve_connection(
            TokioIo::new(tcp),
            state,
            false,
            peer,
            shutdown,
        ));
    }
}

async fn serve_connection<I>(
    io: I,
    state: Arc<State>,
    tls: bool,
    _peer: std::net::SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { dispatch(&state, req, tls).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.changed() => {}
    }
}

/// The standard headers of every Key Vault answer (recordings, observation 4).
fn vault_headers(headers: &mut HeaderMap, request_headers: &HeaderMap) {
    let set = |h: &mut HeaderMap, k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set(headers, "cache-control", "no-cache");
    set(headers, "pragma", "no-cache");
    set(headers, "content-type", "application/json; charset=utf-8");
    set(headers, "expires", "-1");
    set(headers, "x-ms-keyvault-region", "local");
    set(
        headers,
        "x-ms-request-id",
        &uuid::Uuid::new_v4().to_string(),
    );
    set(
        headers,
        "x-ms-keyvault-service-version",
        "1.9.0.0-testvault",
    );
    set(
        headers,
        "x-ms-keyvault-network-info",
        "conn_type=Ipv4;addr=127.0.0.1;act_addr_fam=InterNetwork;",
    );
    set(
        headers,
        "strict-transport-security",
        "max-age=31536000;includeSubDomains",
    );
    set(headers, "x-content-type-options", "nosniff");
    if let Some(id) = request_headers.get("x-ms-client-request-id") {
        headers.insert("x-ms-client-request-id", id.clone());
    }
}

fn json_response(
    status: u16,
    body: Option<&Value>,
    request_headers: &HeaderMap,
) -> Response<AnswerBody> {
    let bytes = body
        .map(|b| Bytes::from(serde_json::to_vec(b).expect("JSON serialises")))
        .unwrap_or_default();
    let mut response = Response::new(AnswerBody::sized(bytes));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    vault_headers(response.headers_mut(), request_headers);
    if body.is_none() {
        response.headers_mut().remove("content-type");
    }
    if status == 429 {
        // The service's 429 status line has an empty reason phrase (tests/recordings/throttled_429.json).
        response
            .extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(b""));
    }
    response
}

/// A 200 whose body a misbehaviour fault has bent; `claimed_length` (when set) is sent as the
/// `Content-Length` though fewer bytes follow, so the connection closes mid-body.
fn bent_response(
    bent: crate::misbehave::Bent,
    request_headers: &HeaderMap,
) -> Response<AnswerBody> {
    let mut response = Response::new(if bent.claimed_length.is_some() {
        AnswerBody::length_unannounced(Bytes::from(bent.body))
    } else {
        AnswerBody::sized(Bytes::from(bent.body))
    });
    vault_headers(response.headers_mut(), request_headers);
    if let Some(length) = bent.claimed_length {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    response
}

/// The request's query as decoded pairs.
fn query_pairs(uri: &hyper::Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// Host as the client addressed us (ids and links point back at it).
fn host_of(req_headers: &HeaderMap, uri: &hyper::Uri, state: &State) -> String {
    req_headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| {
            state
                .info
                .read()
                .vault_url
                .trim_start_matches("https://")
                .to_string()
        })
}

/// For a `*.vault.localhost` host the challenge names `https://vault.localhost:PORT`, so clients can
/// keep their challenge-resource check on; otherwise the real resource.
fn resource_for(host: &str) -> String {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) if p.chars().all(|c| c.is_ascii_digit()) => (n, Some(p)),
        _ => (host, None),
    };
    if name.to_ascii_lowercase().ends_with(".vault.localhost") {
        match port {
            Some(p) => format!("https://vault.localhost:{p}"),
            None => "https://vault.localhost".into(),
        }
    } else {
        "https://vault.azure.net".into()
    }
}

struct Pending {
    entry: LogEntry,
}

impl Pending {
    fn new(method: &str, path: &str, op: &str) -> Self {
        Pending {
            entry: LogEntry {
                seq: 0,
                at_ms: now_ms(),
                method: method.to_string(),
                path: path.to_string(),
                op: op.to_string(),
                name: None,
                version: None,
                status: 0,
                identity: None,
                client_id: None,
                grant: None,
                fault: None,
            },
        }
    }

    fn finish(mut self, state: &State, status: u16) {
        self.entry.status = status;
        state.observed.lock().record(self.entry);
    }
}

async fn dispatch(state: &Arc<State>, req: Request<Incoming>, tls: bool) -> Reply {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, BODY_LIMIT).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let e = VaultError::bad_parameter("The request body is too large or was cut off.");
            return Ok(json_response(400, Some(&e.body()), &parts.headers));
        }
    };
    let method = parts.method.as_str().to_string();
    let path = parts.uri.path().to_string();
    let query = query_pairs(&parts.uri);
    let host = host_of(&parts.headers, &parts.uri, state);
    let scheme = if tls { "https" } else { "http" };
    let base = format!("{scheme}://{host}");

    if let Some(rest) = path.strip_prefix("/_testvault") {
        let (status, value) = crate::control::handle(state, &method, rest, &body);
        return Ok(json_response(status, Some(&value), &parts.headers));
    }

    if let Some((op, tenant)) = crate::entra::route_identity(&method, &path) {
        return identity_endpoint(state, op, tenant, &parts, &query, &body, &base, &path, tls)
            .await;
    }
    if !tls {
        let e = VaultError::new(
            404,
            "NotFound",
            "This port serves the managed-identity endpoints only.",
        );
        return Ok(json_response(404, Some(&e.body()), &parts.headers));
    }
    vault_request(state, &parts, &method, &path, &query, &body, &host, &base).await
}

#[allow(clippy::too_many_arguments)]
async fn identity_endpoint(
    state: &Arc<State>,
    op: Op,
    tenant: Option<String>,
    parts: &hyper::http::request::Parts,
    query: &[(String, String)],
    body: &[u8],
    base: &str,
    path: &str,
    tls: bool,
) -> Reply {
    let mut pending = Pending::new(parts.method.as_str(), path, op.name());
    state.observed.lock().count(op.name());
    if let Some(reply) = apply_fault(
        state,
        op,
        None,
        &mut pending,
        &parts.headers,
        None,
        &mut None,
    )
    .await?
    {
        return Ok(reply);
    }
    // Entra ID is HTTPS only; the managed-identity endpoints are plain HTTP in real life, and
    // answer on both here.
    let reply = match (op, tenant) {
        (Op::Token, Some(t)) if tls => crate::entra::token(state, base, &t, body),
        (Op::OpenIdConfiguration, Some(t)) if tls => {
            crate::entra::openid_configuration(state, base, &t)
        }
        (Op::ManagedIdentityToken, _) => {
            crate::entra::managed_identity(state, path, query, |name| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            })
        }
        _ => {
            let e = VaultError::new(
                404,
                "NotFound",
                "Entra ID endpoints are served over HTTPS only.",
            );
            pending.finish(state, 404);
            return Ok(json_response(404, Some(&e.body()), &parts.headers));
        }
    };
    if let Some((name, client_id)) = &reply.identity {
        pending.entry.identity = Some(name.clone());
        pending.entry.client_id = Some(client_id.clone());
    }
    pending.entry.grant = reply.grant.map(str::to_string);
    pending.finish(state, reply.status);
    let mut response = json_response(reply.status, Some(&reply.body), &parts.headers);
    // Token answers must not be cached by anything in between.
    response.headers_mut().insert(
        "cache-control",
        HeaderValue::from_static("no-store, no-cache"),
    );
    Ok(response)
}

/// Apply the first matching fault, if any. `Ok(Some(reply))` answers instead of the operation.
/// `caller` is the vault request's host and token claims (`None` for identity endpoints).
/// A fault that bends the operation's answer instead goes to `bend_answer`.
async fn apply_fault(
    state: &State,
    op: Op,
    name: Option<&str>,
    pending: &mut Pending,
    request_headers: &HeaderMap,
    caller: Option<(&str, &crate::tokens::Claims)>,
    bend_answer: &mut Option<FaultAction>,
) -> Result<Option<Response<AnswerBody>>, DropConnection> {
    let action = state.faults.lock().take(op.name(), name);
    let Some(action) = action else {
        return Ok(None);
    };
    if action.shapes_the_answer() {
        pending.entry.fault = Some(format!("{action:?}").chars().take(80).collect());
        *bend_answer = Some(action);
        return Ok(None);
    }
    match action {
        FaultAction::Delay { ms } => {
            pending.entry.fault = Some(format!("delay {ms}ms"));
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(None)
        }
        FaultAction::Drop => {
            pending.entry.fault = Some("drop".into());
            let p = std::mem::replace(pending, Pending::new("", "", ""));
            p.finish(state, 0);
            Err(DropConnection)
        }
        FaultAction::Status {
            status,
            retry_after,
        } => {
            let e = match status {
                429 => VaultError::throttled(),
                s if s >= 500 => VaultError::server_error(s),
                s => VaultError::new(s, "InjectedFault", "Injected by testvault."),
            };
            pending.entry.fault = Some(format!("status {status}"));
            let p = std::mem::replace(pending, Pending::new("", "", ""));
            p.finish(state, status);
            let mut response = json_response(status, Some(&e.body()), request_headers);
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from(secs));
            }
            Ok(Some(response))
        }
        FaultAction::ForeignNextLink { .. }
        | FaultAction::SelfLink
        | FaultAction::LinkLoop
        | FaultAction::HugeValue { .. }
        | FaultAction::Truncate
        | FaultAction::WrongShape
        | FaultAction::ForeignId { .. } => unreachable!("answer-shaping faults return above"),
        FaultAction::Revoke | FaultAction::RevokeBare | FaultAction::RevokeWithClaims => {
            state.tokens.revoke_all();
            let host = caller.map_or("", |(host, _)| host);
            let cae_client = caller.is_some_and(|(_, claims)| claims.handles_claims_challenges());
            let (label, problem) = match action {
                // The same answer the revoked token gets from now on.
                FaultAction::Revoke if cae_client => {
                    ("revoke", TokenProblem::RevokedClaimsChallenge)
                }
                FaultAction::Revoke => ("revoke", TokenProblem::Revoked),
                FaultAction::RevokeBare => ("revoke_bare", TokenProblem::Revoked),
                _ => ("revoke_with_claims", TokenProblem::RevokedClaimsChallenge),
            };
            pending.entry.fault = Some(label.into());
            Ok(Some(challenge(
                state,
                host,
                &problem,
                request_headers,
                pending,
            )))
        }
    }
}

/// 401 with `WWW-Authenticate` and the AKV message.
fn challenge(
    state: &State,
    host: &str,
    problem: &TokenProblem,
    request_headers: &HeaderMap,
    pending: &mut Pending,
) -> Response<AnswerBody> {
    let tenant = state.directory.read().tenant_id.clone();
    let resource = resource_for(host);
    let settings = state.settings.read();
    let authority = if settings.challenge_authority_self {
        format!("{}/{tenant}", state.info.read().authority_host)
    } else {
        format!("https://login.windows.net/{tenant}")
    };
    drop(settings);
    let e = VaultError::unauthorized(&problem.message(&resource, &tenant));
    let mut response = json_response(401, Some(&e.body()), request_headers);
    let header = if *problem == TokenProblem::RevokedClaimsChallenge {
        // A CAE claims challenge: the client must get a new token (not one from its cache)
        // carrying these claims. Sent only to clients that declared capability CP1.
        use base64::Engine;
        let claims = format!(
            r#"{{"access_token":{{"nbf":{{"essential":true, "value":"{}"}}}}}}"#,
            crate::store::now()
        );
        format!(
            "Bearer authorization=\"{authority}\", error=\"invalid_token\", error_description=\"User session has been revoked\", claims=\"{}\"",
            base64::engine::general_purpose::STANDARD.encode(claims)
        )
    } else {
        format!("Bearer authorization=\"{authority}\", resource=\"{resource}\"")
    };
    if let Ok(v) = HeaderValue::from_str(&header) {
        response.headers_mut().insert("www-authenticate", v);
    }
    let p = std::mem::replace(pending, Pending::new("", "", ""));
    p.finish(state, 401);
    response
}

#[allow(clippy::too_many_arguments)]
async fn vault_request(
    state: &Arc<State>,
    parts: &hyper::http::request::Parts,
    method: &str,
    path: &str,
    query: &[(String, String)],
    body: &[u8],
    host: &str,
    base: &str,
) -> Reply {
    let headers = &parts.headers;
    let route = match route_vault(method, path) {
        Ok(r) => r,
        Err(NoRoute::NotFound) => {
            let e = VaultError::new(
                404,
                "NotFound",
                format!("The requested path {path} was not found."),
            );
            return Ok(json_response(404, Some(&e.body()), headers));
        }
        Err(NoRoute::MethodNotAllowed) => {
            let e = VaultError::new(
                405,
                "MethodNotAllowed",
                format!("The method {method} is not allowed on {path}."),
            );
            return Ok(json_response(405, Some(&e.body()), headers));
        }
    };
    let mut pending = Pending::new(method, path, route.op.name());
    pending.entry.name = route.name.clone();
    pending.entry.version = route.version.clone();

    // 1. The challenge: no token, or one this vault does not accept.
    let token = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let tenant = state.directory.read().tenant_id.clone();
    let audiences = vec![resource_for(host), "https://vault.azure.net".to_string()];
    let claims = match token {
        None => Err(TokenProblem::Missing),
        Some(t) => state.tokens.validate(t.trim(), &audiences, &tenant),
    };
    let claims = match claims {
        Ok(c) => c,
        Err(problem) => {
            state.observed.lock().count("Unauthorized");
            return Ok(challenge(state, host, &problem, headers, &mut pending));
        }
    };
    pending.entry.identity = Some(claims.xms_tv_identity.clone());
    pending.entry.client_id = Some(claims.appid.clone());
    state.observed.lock().count(route.op.name());

    // 2. Injected faults.
    let mut bend_answer = None;
    if let Some(reply) = apply_fault(
        state,
        route.op,
        route.name.as_deref(),
        &mut pending,
        headers,
        Some((host, &claims)),
        &mut bend_answer,
    )
    .await?
    {
        return Ok(reply);
    }
    // The second page of a link loop carries a skip token the paging code never issued.
    let asked_query = query;
    let query_for_op: Vec<(String, String)> = if crate::misbehave::is_loop_page(query) {
        query
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("$skiptoken"))
            .cloned()
            .collect()
    } else {
        query.to_vec()
    };
    let query = &query_for_op[..];

    let answer = |pending: Pending, e: VaultError| {
        pending.finish(state, e.status);
        Ok(json_response(e.status, Some(&e.body()), headers))
    };

    // 3. api-version is mandatory and must be one the service knows.
    let api_version = match query.iter().find(|(k, _)| k == "api-version") {
        Some((_, v)) if api_version_supported(v) => v.clone(),
        Some((_, v)) => {
            return answer(
                pending,
                VaultError::bad_parameter(format!(
                    "The specified version ({v}) is not recognized. Consider using the latest supported version ({LATEST_API_VERSION})."
                )),
            );
        }
        None => {
            return answer(
                pending,
                VaultError::bad_parameter("The api-version query parameter is missing."),
            );
        }
    };

    // 4. Permissions of the caller.
    let identity = state.directory.read().get(&claims.xms_tv_identity).cloned();
    let Some(identity) = identity else {
        return answer(
            pending,
            VaultError::unauthorized("AKV10032: Invalid issuer: the identity no longer exists."),
        );
    };
    let caller = Caller {
        identity: identity.name.clone(),
        client_id: claims.appid.clone(),
        object_id: claims.oid.clone(),
        tenant_id: claims.tid.clone(),
    };
    let settings = state.settings.read().clone();
    let object_path = match &route.name {
        Some(n) => format!(
            "/{}/{n}",
            route.op.kind().map(|k| k.collection()).unwrap_or("")
        ),
        None => path.to_string(),
    };
    if let Err(e) = identity.authorize(
        settings.permission_model,
        route.op,
        &object_path,
        &caller,
        &VaultPlace {
            vault_name: &settings.vault_name,
            location: &settings.location,
        },
    ) {
        return answer(pending, e);
    }

    // 5. The operation.
    let result = vault::handle(
        state,
        &VaultRequest {
            route: &route,
            base,
            path,
            api_version: &api_version,
            query,
            body,
        },
    );
    match result {
        Ok(reply) => {
            pending.finish(state, reply.status);
            let mut response = match &bend_answer {
                Some(action) if reply.status == 200 => bent_response(
                    crate::misbehave::bend(
                        action,
                        reply.body.clone(),
                        &crate::misbehave::Asked {
                            base,
                            path,
                            query: asked_query,
                        },
                    ),
                    headers,
                ),
                _ => json_response(reply.status, reply.body.as_ref(), headers),
            };
            for (k, v) in reply.headers {
                if let (Ok(k), Ok(v)) = (
                    hyper::header::HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(&v),
                ) {
                    response.headers_mut().insert(k, v);
                }
            }
            Ok(response)
        }
        Err(e) => answer(pending, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        for ok in [
            "7.0",
            "7.3",
            "7.4-preview.1",
            "7.6-preview.2",
            "7.3-preview",
            "2025-07-01",
            "2026-04-01",
        ] {
            assert!(api_version_supported(ok), "{ok}");
        }
        for bad in ["", "7", "8.0", "2020-01-01", "7.4-previewx", "latest"] {
            assert!(!api_version_supported(bad), "{bad}");
        }
    }

    #[test]
    fn challenge_resource_follows_the_host() {
        assert_eq!(resource_for("127.0.0.1:8443"), "https://vault.azure.net");
        assert_eq!(
            resource_for("myvault.vault.localhost:8443"),
            "https://vault.localhost:8443"
        );
    }
}
