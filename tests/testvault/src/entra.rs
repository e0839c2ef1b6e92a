//! Token endpoints over loopback, so credential code runs end to end:
//! Entra ID's v2 token endpoint (client secret, client certificate assertion, federated assertion),
//! its OpenID configuration document (MSAL reads it first), and the two managed-identity
//! endpoints: App Service (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`) and the instance metadata service.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use crate::identities::{Identity, IdentityKind};
use crate::ops::Op;
use crate::state::State;
use crate::store::now;

/// An identity endpoint's answer, with what the request log should say about it.
pub struct TokenReply {
    pub status: u16,
    pub body: Value,
    /// Who got the token: (identity name, client id).
    pub identity: Option<(String, String)>,
    pub grant: Option<&'static str>,
}

impl TokenReply {
    fn error(status: u16, body: Value) -> Self {
        TokenReply {
            status,
            body,
            identity: None,
            grant: None,
        }
    }
}

/// Which identity endpoint a request is for, if any.
pub fn route_identity(method: &str, path: &str) -> Option<(Op, Option<String>)> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("POST", [tenant, "oauth2", "v2.0", "token"]) => {
            Some((Op::Token, Some(tenant.to_string())))
        }
        ("GET", [tenant, "v2.0", ".well-known", "openid-configuration"]) => {
            Some((Op::OpenIdConfiguration, Some(tenant.to_string())))
        }
        ("GET", ["msi", "token"]) | ("GET", ["metadata", "identity", "oauth2", "token"]) => {
            Some((Op::ManagedIdentityToken, None))
        }
        _ => None,
    }
}

/// An Entra ID error body (`error`, `error_description` with the AADSTS code, `error_codes`).
fn aad_error(status: u16, error: &str, code: u32, description: &str) -> TokenReply {
    let now = chrono_like_now();
    TokenReply::error(
        status,
        json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {description} Trace ID: {} Correlation ID: {} Timestamp: {now}", uuid::Uuid::new_v4(), uuid::Uuid::new_v4()),
            "error_codes": [code],
            "timestamp": now,
            "trace_id": uuid::Uuid::new_v4().to_string(),
            "correlation_id": uuid::Uuid::new_v4().to_string(),
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}

/// `YYYY-MM-DD hh:mm:ssZ` without pulling in a date crate for one log-style string.
fn chrono_like_now() -> String {
    let secs = now();
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The client capabilities a token request declares in its `claims` parameter
/// (`{"access_token":{"xms_cc":{"values":["CP1"]}}}`, what MSAL sends for CAE-capable clients).
fn client_capabilities(fields: &[(String, String)]) -> Vec<String> {
    field(fields, "claims")
        .and_then(|c| serde_json::from_str::<Value>(c).ok())
        .and_then(|c| c.pointer("/access_token/xms_cc/values").cloned())
        .and_then(|v| v.as_array().cloned())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn success(
    state: &State,
    identity: &Identity,
    audience: &str,
    grant: &'static str,
    capabilities: Vec<String>,
) -> TokenReply {
    let lifetime = state.settings.read().token_lifetime_secs;
    let (token, _) =
        state
            .tokens
            .mint_with_capabilities(identity, audience, lifetime, grant, capabilities);
    TokenReply {
        status: 200,
        body: json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }),
        identity: Some((identity.name.clone(), identity.client_id.clone())),
        grant: Some(grant),
    }
}

/// `POST /{tenant}/oauth2/v2.0/token` with `grant_type=client_credentials`.
pub fn token(state: &State, authority: &str, tenant: &str, body: &[u8]) -> TokenReply {
    let fields = form(body);
    let directory = state.directory.read();
    if !directory.tenant_known(tenant) {
        return aad_error(
            400,
            "invalid_request",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        );
    }
    if field(&fields, "grant_type") != Some("client_credentials") {
        return aad_error(
            400,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type. testvault supports client_credentials only.",
        );
    }
    let Some(audience) = field(&fields, "scope").and_then(crate::tokens::audience_from_scope)
    else {
        return aad_error(
            400,
            "invalid_scope",
            1002012,
            "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).",
        );
    };
    let client_id = field(&fields, "client_id").unwrap_or("");
    let app = directory
        .by_client_id(client_id)
        .filter(|i| i.kind == IdentityKind::App && i.tenant_id.eq_ignore_ascii_case(tenant));
    let Some(app) = app else {
        return aad_error(
            400,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        );
    };
    if let Some(secret) = field(&fields, "client_secret") {
        return if app.client_secret.as_deref() == Some(secret) {
            crate::audit::record(crate::audit::Kind::ClientSecret, secret);
            success(
                state,
                app,
                &audience,
                "client_secret",
                client_capabilities(&fields),
            )
        } else {
            aad_error(
                401,
                "invalid_client",
                7000215,
                &format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                ),
            )
        };
    }
    let Some(assertion) = field(&fields, "client_assertion") else {
        return aad_error(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        );
    };
    crate::audit::record(crate::audit::Kind::Assertion, assertion);
    if !app.federations.is_empty() {
        let oidc_public = directory.oidc_key.public_spki_pem();
        return match check_federated(app, assertion, &oidc_public) {
            Ok(()) => success(
                state,
                app,
                &audience,
                "federated",
                client_capabilities(&fields),
            ),
            Err(reply) => *reply,
        };
    }
    match check_certificate_assertion(app, assertion, authority, tenant) {
        Ok(()) => success(
            state,
            app,
            &audience,
            "client_certificate",
            client_capabilities(&fields),
        ),
        Err(reply) => *reply,
    }
}

fn rsa_key(pem: &str) -> Option<DecodingKey> {
    DecodingKey::from_rsa_pem(pem.as_bytes()).ok()
}

/// A client assertion signed with the key of a certificate registered on the app
/// (`x5t` or `x5t#S256` in the header names the certificate).
fn check_certificate_assertion(
    app: &Identity,
    assertion: &str,
    authority: &str,
    tenant: &str,
) -> Result<(), Box<TokenReply>> {
    let invalid = |code: u32, msg: &str| Box::new(aad_error(401, "invalid_client", code, msg));
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|_| invalid(700025, "Client assertion is not a valid JWT."))?;
    // MSAL sends `x5t` (or `x5t#S256`), MSAL Python with base64 padding; some clients put the
    // hex SHA-1 thumbprint in `kid`.
    let unpadded = |t: Option<&str>| t.map(|t| t.trim_end_matches('=').to_string());
    let key = app.certificate_keys.iter().find(|c| {
        unpadded(header.x5t.as_deref()).as_deref() == Some(c.x5t.as_str())
            || unpadded(header.x5t_s256.as_deref()).as_deref() == Some(c.x5t_s256.as_str())
            || header.kid.as_deref().is_some_and(|kid| {
                crate::crypto::b64url_decode(&c.x5t)
                    .map(|b| hex::encode(b).eq_ignore_ascii_case(kid))
                    .unwrap_or(false)
            })
    });
    let Some(public) = key.map(|c| &c.public) else {
        return Err(invalid(
            700027,
            "The certificate with identifier used to sign the client assertion is not registered on application.",
        ));
    };
    let pem = public
        .public_key_to_pem()
        .ok()
        .and_then(|p| String::from_utf8(p).ok())
        .unwrap_or_default();
    let decoding = rsa_key(&pem).ok_or_else(|| invalid(700027, "Unsupported certificate key."))?;
    let alg = match header.alg {
        Algorithm::RS256 | Algorithm::PS256 => header.alg,
        _ => {
            return Err(invalid(
                700027,
                "Client assertion uses an unsupported algorithm.",
            ));
        }
    };
    let mut validation = Validation::new(alg);
    validation.validate_aud = false;
    validation.leeway = 300;
    validation.required_spec_claims = ["exp", "aud", "iss", "sub"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let data =
        jsonwebtoken::decode::<Value>(assertion, &decoding, &validation).map_err(|e| {
            match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => invalid(
                    700024,
                    "Client assertion is not within its valid time range.",
                ),
                _ => invalid(700027, "Client assertion contains an invalid signature."),
            }
        })?;
    let claims = data.claims;
    let aud_ok = match &claims["aud"] {
        Value::String(a) => audience_is_token_endpoint(a, authority, tenant),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .any(|x| audience_is_token_endpoint(x, authority, tenant)),
        _ => false,
    };
    if !aud_ok {
        return Err(invalid(
            700212,
            "No matching federated identity record found for presented assertion audience.",
        ));
    }
    let iss = claims["iss"].as_str().unwrap_or("");
    let sub = claims["sub"].as_str().unwrap_or("");
    if !iss.eq_ignore_ascii_case(&app.client_id) || !sub.eq_ignore_ascii_case(&app.client_id) {
        return Err(invalid(
            700023,
            "Client assertion audience claim does not match Realm issuer.",
        ));
    }
    Ok(())
}

/// Entra accepts the token endpoint URL (any host it answers on) as the assertion audience.
fn audience_is_token_endpoint(aud: &str, authority: &str, tenant: &str) -> bool {
    let aud = aud.trim_end_matches('/').to_ascii_lowercase();
    let tenant = tenant.to_ascii_lowercase();
    aud.ends_with(&format!("/{tenant}/oauth2/v2.0/token"))
        || aud.ends_with(&format!("/{tenant}/oauth2/token"))
        || aud == format!("{}/{tenant}/v2.0", authority.trim_end_matches('/')).to_ascii_lowercase()
}

/// A federated (workload identity) assertion: signed by the trusted issuer, matching a federated
/// credential's issuer, subject and audience.
fn check_federated(
    app: &Identity,
    assertion: &str,
    oidc_public_pem: &str,
) -> Result<(), Box<TokenReply>> {
    let invalid = |code: u32, msg: String| Box::new(aad_error(401, "invalid_client", code, &msg));
    let decoding = rsa_key(oidc_public_pem).expect("oidc key is RSA");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_aud = false;
    validation.leeway = 0;
    validation.required_spec_claims = ["exp", "aud", "iss", "sub"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let data = jsonwebtoken::decode::<Value>(assertion, &decoding, &validation).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => invalid(
            700024,
            "Client assertion is not within its valid time range.".into(),
        ),
        _ => invalid(
            700211,
            "No matching federated identity record found for presented assertion issuer: the signature does not verify with the issuer's keys.".into(),
        ),
    })?;
    let c = data.claims;
    let iss = c["iss"].as_str().unwrap_or("");
    let sub = c["sub"].as_str().unwrap_or("");
    let auds: Vec<&str> = match &c["aud"] {
        Value::String(a) => vec![a.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let matched = app
        .federations
        .iter()
        .any(|f| f.issuer == iss && f.subject == sub && auds.iter().any(|a| *a == f.audience));
    if matched {
        Ok(())
    } else {
        Err(invalid(
            70021,
            format!(
                "No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{}'.",
                auds.join(",")
            ),
        ))
    }
}

/// `GET /{tenant}/v2.0/.well-known/openid-configuration`, pointing at this server.
pub fn openid_configuration(state: &State, authority: &str, tenant: &str) -> TokenReply {
    if !state.directory.read().tenant_known(tenant) {
        return aad_error(
            400,
            "invalid_tenant",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    let a = authority.trim_end_matches('/');
    TokenReply {
        status: 200,
        body: json!({
            "token_endpoint": format!("{a}/{tenant}/oauth2/v2.0/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{a}/{tenant}/discovery/v2.0/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": format!("{a}/{tenant}/v2.0"),
            "request_uri_parameter_supported": false,
            "userinfo_endpoint": format!("{a}/oidc/userinfo"),
            "authorization_endpoint": format!("{a}/{tenant}/oauth2/v2.0/authorize"),
            "device_authorization_endpoint": format!("{a}/{tenant}/oauth2/v2.0/devicecode"),
            "http_logout_supported": true,
            "frontchannel_logout_supported": true,
            "end_session_endpoint": format!("{a}/{tenant}/oauth2/v2.0/logout"),
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "tid"],
            "kerberos_endpoint": format!("{a}/{tenant}/kerberos"),
            "tenant_region_scope": null,
            "cloud_instance_name": "testvault.localhost",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }),
        identity: None,
        grant: None,
    }
}

fn query_field<'a>(query: &'a [(String, String)], keys: &[&str]) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| keys.iter().any(|key| k.eq_ignore_ascii_case(key)))
        .map(|(_, v)| v.as_str())
}

/// Both managed-identity forms. The App Service form (`/msi/token`) wants `X-IDENTITY-HEADER`;
/// the metadata form (`/metadata/identity/oauth2/token`) wants `Metadata: true` and answers a
/// request without it with 400, which is how clients probe for it.
pub fn managed_identity(
    state: &State,
    path: &str,
    query: &[(String, String)],
    header: impl Fn(&str) -> Option<String>,
) -> TokenReply {
    let imds = path.trim_matches('/').starts_with("metadata");
    if imds {
        if header("metadata").as_deref() != Some("true") {
            return TokenReply::error(
                400,
                json!({ "error": "invalid_request", "error_description": "Required metadata header not specified" }),
            );
        }
    } else {
        let expected = state.info.read().identity_header.clone();
        if header("x-identity-header").as_deref() != Some(expected.as_str()) {
            return TokenReply::error(
                401,
                json!({ "statusCode": 401, "message": "Unauthorized request. The X-IDENTITY-HEADER header is missing or does not match IDENTITY_HEADER." }),
            );
        }
    }
    let Some(resource) = query_field(query, &["resource"]) else {
        return TokenReply::error(
            400,
            json!({ "error": "invalid_request", "error_description": "Required query variable 'resource' is missing" }),
        );
    };
    let audience = resource.trim_end_matches('/').to_string();
    let directory = state.directory.read();
    let client_id = query_field(query, &["client_id"]);
    let object_id = query_field(query, &["object_id", "principal_id"]);
    let resource_id = query_field(query, &["mi_res_id", "msi_res_id"]);
    let identity =
        directory
            .identities
            .values()
            .find(|i| match (client_id, object_id, resource_id) {
                (Some(c), _, _) => {
                    i.kind == IdentityKind::UserAssigned && i.client_id.eq_ignore_ascii_case(c)
                        || i.kind == IdentityKind::SystemAssigned
                            && i.client_id.eq_ignore_ascii_case(c)
                }
                (None, Some(o), _) => {
                    matches!(
                        i.kind,
                        IdentityKind::UserAssigned | IdentityKind::SystemAssigned
                    ) && i.object_id.eq_ignore_ascii_case(o)
                }
                (None, None, Some(r)) => {
                    i.kind == IdentityKind::UserAssigned
                        && i.resource_id
                            .as_deref()
                            .is_some_and(|x| x.eq_ignore_ascii_case(r))
                }
                (None, None, None) => i.kind == IdentityKind::SystemAssigned,
            });
    let Some(identity) = identity else {
        return TokenReply::error(
            400,
            if imds {
                json!({ "error": "invalid_request", "error_description": "Identity not found" })
            } else {
                json!({ "statusCode": 400, "message": "No managed identity found for the specified ClientId/ResourceId/PrincipalId." })
            },
        );
    };
    let lifetime = state.settings.read().token_lifetime_secs;
    let (token, claims) = state
        .tokens
        .mint(identity, &audience, lifetime, "managed_identity");
    let body = if imds {
        json!({
            "access_token": token,
            "client_id": identity.client_id,
            "expires_in": lifetime.to_string(),
            "expires_on": claims.exp.to_string(),
            "ext_expires_in": lifetime.to_string(),
            "not_before": claims.nbf.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        })
    } else {
        json!({
            "access_token": token,
            "expires_on": claims.exp.to_string(),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        })
    };
    TokenReply {
        status: 200,
        body,
        identity: Some((identity.name.clone(), identity.client_id.clone())),
        grant: Some("managed_identity"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_identity_paths() {
        assert_eq!(
            route_identity("POST", "/t1/oauth2/v2.0/token").map(|r| r.0),
            Some(Op::Token)
        );
        assert_eq!(
            route_identity("GET", "/metadata/identity/oauth2/token").map(|r| r.0),
            Some(Op::ManagedIdentityToken)
        );
        assert_eq!(
            route_identity("GET", "/msi/token").map(|r| r.0),
            Some(Op::ManagedIdentityToken)
        );
        assert!(route_identity("GET", "/secrets").is_none());
    }

    #[test]
    fn timestamp_is_well_formed() {
        let t = chrono_like_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20"));
        assert!(t.ends_with('Z'));
    }

    #[test]
    fn token_endpoint_audiences() {
        assert!(audience_is_token_endpoint(
            "https://127.0.0.1:5/T/oauth2/v2.0/token",
            "https://127.0.0.1:5",
            "t"
        ));
        assert!(!audience_is_token_endpoint(
            "https://127.0.0.1:5/other/oauth2/v2.0/token",
            "https://127.0.0.1:5",
            "t"
        ));
    }
}
