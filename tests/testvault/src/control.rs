//! The test-control API under `/_testvault/` (a prefix no Key Vault path can have): faults,
//! counters, the request log, tokens, identities, settings and seeding. JSON in, JSON out,
//! no authentication: it only ever listens on loopback.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::faults::Fault;
use crate::identities::IdentitySpec;
use crate::seed::{self, Seed};
use crate::settings::Settings;
use crate::state::State;

fn error(status: u16, message: impl Into<String>) -> (u16, Value) {
    (status, json!({ "error": message.into() }))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, (u16, Value)> {
    let text = if body.is_empty() {
        b"{}" as &[u8]
    } else {
        body
    };
    serde_json::from_slice(text).map_err(|e| error(400, format!("invalid request body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    identity: String,
    #[serde(default)]
    lifetime_secs: Option<i64>,
    #[serde(default)]
    audience: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FederatedRequest {
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    lifetime_secs: Option<i64>,
    /// Write the token to this file (as kubelet does with a projected token).
    #[serde(default)]
    file: Option<String>,
}

/// One control request; `rest` is the path after `/_testvault`.
pub fn handle(state: &State, method: &str, rest: &str, body: &[u8]) -> (u16, Value) {
    match run(state, method, rest.trim_end_matches('/'), body) {
        Ok(v) => v,
        Err(e) => e,
    }
}

fn run(state: &State, method: &str, rest: &str, body: &[u8]) -> Result<(u16, Value), (u16, Value)> {
    let ok = |v: Value| Ok((200, v));
    match (method, rest) {
        ("GET", "/info") => ok(json!(&*state.info.read())),
        ("GET", "/counters") => ok(json!(state.observed.lock().counters())),
        ("GET", "/log") => ok(json!(state.observed.lock().log())),
        ("POST", "/reset") => {
            state.observed.lock().reset();
            state.faults.lock().clear();
            ok(json!({ "reset": true }))
        }
        ("GET", "/faults") => ok(json!(state.faults.lock().list())),
        ("POST", "/faults") => {
            let fault: Fault = parse(body)?;
            if let crate::faults::FaultAction::Status { status, .. } = fault.action
                && !(400..=599).contains(&status)
            {
                return Err(error(400, "a status fault needs a 4xx or 5xx status"));
            }
            let id = state.faults.lock().add(fault);
            ok(json!({ "id": id }))
        }
        ("DELETE", "/faults") => {
            state.faults.lock().clear();
            ok(json!({ "cleared": true }))
        }
        ("DELETE", r) if r.starts_with("/faults/") => {
            let id: u64 = r["/faults/".len()..]
                .parse()
                .map_err(|_| error(400, "fault id must be a number"))?;
            if state.faults.lock().remove(id) {
                ok(json!({ "removed": id }))
            } else {
                Err(error(404, format!("no fault {id}")))
            }
        }
        ("POST", "/revoke-tokens") => {
            state.tokens.revoke_all();
            ok(json!({ "revoked": true }))
        }
        ("POST", "/tokens") => {
            let r: TokenRequest = parse(body)?;
            let directory = state.directory.read();
            let identity = directory
                .find(&r.identity)
                .ok_or_else(|| error(404, format!("no identity {}", r.identity)))?;
            let lifetime = r
                .lifetime_secs
                .unwrap_or_else(|| state.settings.read().token_lifetime_secs);
            let audience = r
                .audience
                .unwrap_or_else(|| "https://vault.azure.net".into());
            let (token, claims) = state.tokens.mint(identity, &audience, lifetime, "minted");
            ok(json!({
                "access_token": token,
                "expires_on": claims.exp,
                "tenant_id": claims.tid,
                "client_id": claims.appid,
            }))
        }
        ("POST", "/federated-token") => {
            let r: FederatedRequest = parse(body)?;
            let token = federated_token(
                state,
                r.subject.as_deref(),
                r.audience.as_deref(),
                r.lifetime_secs.unwrap_or(3600),
            )
            .map_err(|e| error(500, e))?;
            if let Some(file) = &r.file {
                write_atomically(std::path::Path::new(file), token.as_bytes())
                    .map_err(|e| error(400, format!("cannot write {file}: {e}")))?;
            }
            ok(json!({ "token": token }))
        }
        ("GET", "/identities") => ok(json!(state.directory.read().identities)),
        ("POST", "/identities") => {
            let spec: IdentitySpec = parse(body)?;
            let identity = state
                .directory
                .write()
                .add(spec)
                .map_err(|e| error(400, e))?;
            ok(json!(identity))
        }
        ("GET", "/settings") => ok(json!(&*state.settings.read())),
        ("PATCH", "/settings") => {
            let patch: Value = parse(body)?;
            let mut current =
                serde_json::to_value(&*state.settings.read()).expect("settings serialise");
            let Some(fields) = patch.as_object() else {
                return Err(error(400, "settings patch must be an object"));
            };
            for (k, v) in fields {
                current[k] = v.clone();
            }
            let new: Settings = serde_json::from_value(current)
                .map_err(|e| error(400, format!("invalid settings: {e}")))?;
            new.check().map_err(|e| error(400, e))?;
            *state.settings.write() = new.clone();
            ok(json!(new))
        }
        ("POST", "/seed") => {
            let s: Seed = parse(body)?;
            seed::apply(state, &s).map_err(|e| error(400, e))?;
            ok(json!({ "applied": true }))
        }
        _ => Err(error(
            404,
            format!("no control endpoint {method} /_testvault{rest}"),
        )),
    }
}

/// A service-account token as kubelet projects it for workload identity: RS256, signed by the
/// cluster's OIDC issuer key that the `workload` app's federated credential trusts.
pub fn federated_token(
    state: &State,
    subject: Option<&str>,
    audience: Option<&str>,
    lifetime_secs: i64,
) -> Result<String, String> {
    let directory = state.directory.read();
    let now = crate::store::now();
    let claims = json!({
        "aud": [audience.unwrap_or("api://AzureADTokenExchange")],
        "exp": now + lifetime_secs.max(1),
        "iat": now,
        "nbf": now,
        "iss": directory.oidc_issuer,
        "sub": subject.unwrap_or("system:serviceaccount:kvfs-system:kvfs"),
        "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": { "namespace": "kvfs-system", "serviceaccount": { "name": "kvfs" } },
    });
    let key =
        jsonwebtoken::EncodingKey::from_rsa_pem(directory.oidc_key.private_pkcs8_pem().as_bytes())
            .map_err(|e| format!("oidc key: {e}"))?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("testvault-oidc".into());
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| format!("signing: {e}"))
}

/// Replace a file the way kubelet does (write aside, rename), so a reader never sees half a token.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
