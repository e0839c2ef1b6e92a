//! Data-plane operations: parse the request body, change or read the store, render the answer.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::crypto::{self, CertBundle, CertRequest, Curve, KeyMaterial, KeySpec};
use crate::error::{Kind, VaultError};
use crate::ops::{Op, Route};
use crate::paging::{self, PageRequest};
use crate::state::State;
use crate::store::{
    self, AttributePatch, CertInput, CertObject, CertOperation, KeyInput, Listed, SecretInput,
    Store, Tags, Versioned,
};
use crate::wire;

pub const PKCS12: &str = "application/x-pkcs12";
pub const PEM: &str = "application/x-pem-file";

/// A routed, authenticated and authorised vault request.
pub struct VaultRequest<'a> {
    pub route: &'a Route,
    /// `https://host[:port]` as the client addressed us; ids and links are built from it.
    pub base: &'a str,
    pub path: &'a str,
    pub api_version: &'a str,
    pub query: &'a [(String, String)],
    pub body: &'a [u8],
}

/// A successful answer.
pub struct Reply {
    pub status: u16,
    /// `None` for 204.
    pub body: Option<Value>,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    fn ok(body: Value) -> Self {
        Reply {
            status: 200,
            body: Some(body),
            headers: Vec::new(),
        }
    }
}

fn body_json(body: &[u8]) -> Result<Map<String, Value>, VaultError> {
    if body.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(VaultError::bad_parameter(
            "The request body is not a valid JSON object.",
        )),
    }
}

fn opt_i64(v: Option<&Value>, field: &str) -> Result<Option<Option<i64>>, VaultError> {
    match v {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(|x| Some(Some(x)))
            .ok_or_else(|| VaultError::bad_parameter(format!("Invalid value for {field}."))),
        Some(_) => Err(VaultError::bad_parameter(format!(
            "Invalid value for {field}."
        ))),
    }
}

fn attribute_patch(body: &Map<String, Value>) -> Result<AttributePatch, VaultError> {
    let Some(a) = body.get("attributes") else {
        return Ok(AttributePatch::default());
    };
    let Some(a) = a.as_object() else {
        return Err(VaultError::bad_parameter("attributes must be an object."));
    };
    let enabled = match a.get("enabled") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(VaultError::bad_parameter("Invalid value for enabled.")),
    };
    Ok(AttributePatch {
        enabled,
        nbf: opt_i64(a.get("nbf"), "nbf")?,
        exp: opt_i64(a.get("exp"), "exp")?,
    })
}

fn tags(body: &Map<String, Value>) -> Result<Option<Tags>, VaultError> {
    match body.get("tags") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => {
            if m.len() > 15 {
                return Err(VaultError::bad_parameter(
                    "The number of tags exceeds the maximum of 15.",
                ));
            }
            m.iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    _ => Err(VaultError::bad_parameter(format!(
                        "Tag {k} must have a string value."
                    ))),
                })
                .collect::<Result<Tags, _>>()
                .map(Some)
        }
        Some(_) => Err(VaultError::bad_parameter("tags must be an object.")),
    }
}

fn opt_string(body: &Map<String, Value>, field: &str) -> Result<Option<String>, VaultError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(VaultError::bad_parameter(format!(
            "{field} must be a string."
        ))),
    }
}

fn name_of(route: &Route) -> &str {
    route.name.as_deref().unwrap_or("")
}

fn crypto_error(e: crypto::CryptoError) -> VaultError {
    VaultError::bad_parameter(e.0)
}

/// Answer one data-plane operation.
pub fn handle(state: &State, req: &VaultRequest<'_>) -> Result<Reply, VaultError> {
    let route = req.route;
    let name = name_of(route);
    let version = route.version.as_deref();
    let base = req.base;
    let api = req.api_version;
    use Op::*;
    match route.op {
        GetSecret => {
            let store = state.store.lock();
            let (name, v) = store.get_secret(name, version)?;
            let out_ct = paging_query(req.query, "outContentType");
            let (value, ct) = convert_secret_value(&store, &name, &v, out_ct)?;
            crate::audit::record(crate::audit::Kind::SecretValue, &value);
            Ok(Reply::ok(wire::secret_bundle(
                base,
                &name,
                &v,
                &value,
                ct.as_deref(),
            )))
        }
        GetSecrets => {
            let items = latest_items(&state.store.lock().secrets, |n, v| {
                wire::secret_item(base, n, v, false)
            });
            list(state, req, items)
        }
        GetSecretVersions => {
            let items = version_items(state.store.lock().secret(name), |n, v| {
                wire::secret_item(base, n, v, true)
            });
            list(state, req, items)
        }
        SetSecret => {
            let body = body_json(req.body)?;
            let value = match body.get("value") {
                Some(Value::String(s)) => s.clone(),
                _ => {
                    return Err(VaultError::bad_parameter(
                        "The parameter value is required and must be a string.",
                    ));
                }
            };
            if value.len() > 25 * 1024 {
                return Err(VaultError::bad_parameter(
                    "The secret value exceeds the maximum size of 25 KB.",
                ));
            }
            let input = SecretInput {
                value,
                content_type: opt_string(&body, "contentType")?,
                attributes: attribute_patch(&body)?,
                tags: tags(&body)?,
                written_at: None,
            };
            let (name, v) = state.store.lock().set_secret(name, input)?;
            Ok(Reply::ok(wire::secret_bundle(
                base,
                &name,
                &v,
                &v.value,
                v.content_type.as_deref(),
            )))
        }
        UpdateSecret => {
            let body = body_json(req.body)?;
            let (name, v) = state.store.lock().update_secret(
                name,
                version,
                opt_string(&body, "contentType")?,
                &attribute_patch(&body)?,
                tags(&body)?,
            )?;
            // PATCH answers without the value.
            let mut b = wire::secret_bundle(base, &name, &v, "", v.content_type.as_deref());
            b.as_object_mut().map(|m| m.remove("value"));
            Ok(Reply::ok(b))
        }
        DeleteSecret => {
            let mut store = state.store.lock();
            let d = store.delete_secret(name)?;
            Ok(Reply::ok(deleted_secret(base, d)))
        }
        GetDeletedSecret => {
            let store = state.store.lock();
            let d = store
                .deleted_secrets
                .get(&name.to_ascii_uppercase())
                .ok_or_else(|| VaultError::deleted_not_found(Kind::Secret, name))?;
            Ok(Reply::ok(deleted_secret(base, d)))
        }
        GetKey => {
            let (name, v) = state.store.lock().get_key(name, version)?;
            Ok(Reply::ok(wire::key_bundle(base, &name, &v, api)))
        }
        GetKeys => {
            let items = latest_items(&state.store.lock().keys, |n, v| {
                wire::key_item(base, n, v, false, api)
            });
            list(state, req, items)
        }
        GetKeyVersions => {
            let items = version_items(state.store.lock().key(name), |n, v| {
                wire::key_item(base, n, v, true, api)
            });
            list(state, req, items)
        }
        CreateKey => {
            let body = body_json(req.body)?;
            let (spec, hsm) = key_spec(&body)?;
            let key = KeyMaterial::generate(spec).map_err(crypto_error)?;
            let input = KeyInput {
                key,
                hsm,
                key_ops: key_ops(&body)?,
                attributes: attribute_patch(&body)?,
                tags: tags(&body)?,
            };
            let (name, v) = state.store.lock().add_key(name, input)?;
            Ok(Reply::ok(wire::key_bundle(base, &name, &v, api)))
        }
        ImportKey => {
            let body = body_json(req.body)?;
            let jwk = body
                .get("key")
                .filter(|k| k.is_object())
                .ok_or_else(|| VaultError::bad_parameter("The parameter key is required."))?;
            let key = KeyMaterial::from_private_jwk(jwk).map_err(crypto_error)?;
            let hsm = body.get("Hsm").and_then(Value::as_bool).unwrap_or(false)
                || jwk
                    .get("kty")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.ends_with("-HSM"));
            let jwk_map = jwk.as_object().cloned().unwrap_or_default();
            let input = KeyInput {
                key,
                hsm,
                key_ops: key_ops(&jwk_map)?,
                attributes: attribute_patch(&body)?,
                tags: tags(&body)?,
            };
            let (name, v) = state.store.lock().add_key(name, input)?;
            Ok(Reply::ok(wire::key_bundle(base, &name, &v, api)))
        }
        UpdateKey => {
            let body = body_json(req.body)?;
            let (name, v) = state.store.lock().update_key(
                name,
                version,
                &attribute_patch(&body)?,
                key_ops(&body)?,
                tags(&body)?,
            )?;
            Ok(Reply::ok(wire::key_bundle(base, &name, &v, api)))
        }
        DeleteKey => {
            let mut store = state.store.lock();
            let d = store.delete_key(name)?;
            let latest = d.object.versions.last().expect("objects have versions");
            let bundle = wire::key_bundle(base, &d.object.name, latest, api);
            Ok(Reply::ok(wire::deleted(
                base,
                "deletedkeys",
                &d.object.name,
                d,
                bundle,
            )))
        }
        GetDeletedKey => {
            let store = state.store.lock();
            let d = store
                .deleted_keys
                .get(&name.to_ascii_uppercase())
                .ok_or_else(|| VaultError::deleted_not_found(Kind::Key, name))?;
            let latest = d.object.versions.last().expect("objects have versions");
            let bundle = wire::key_bundle(base, &d.object.name, latest, api);
            Ok(Reply::ok(wire::deleted(
                base,
                "deletedkeys",
                &d.object.name,
                d,
                bundle,
            )))
        }
        Sign => {
            let body = body_json(req.body)?;
            let alg = opt_string(&body, "alg")?
                .ok_or_else(|| VaultError::bad_parameter("The parameter alg is required."))?;
            let digest = opt_string(&body, "value")?
                .ok_or_else(|| VaultError::bad_parameter("The parameter value is required."))?;
            let digest = crypto::b64url_decode(&digest).map_err(crypto_error)?;
            let (name, v) = state.store.lock().get_key(name, version)?;
            if !v.attributes.enabled {
                return Err(VaultError::key_disabled("sign"));
            }
            if !v.key_ops.iter().any(|o| o == "sign") {
                return Err(VaultError::new(
                    403,
                    "Forbidden",
                    "Operation sign is not permitted on this key.",
                )
                .with_inner("KeyOperationForbidden"));
            }
            let signature = v.key.sign_digest(&alg, &digest).map_err(crypto_error)?;
            Ok(Reply::ok(json!({
                "kid": wire::object_id(base, "keys", &name, Some(&v.version)),
                "value": crypto::b64url(&signature),
            })))
        }
        GetCertificate => {
            let store = state.store.lock();
            let (object, v) = store.get_certificate(name, version)?;
            Ok(Reply::ok(wire::cert_bundle(
                base,
                object,
                &v,
                version.is_none(),
            )))
        }
        GetCertificates => {
            let items = latest_items(&state.store.lock().certificates, |n, v| {
                wire::cert_item(base, n, v, false)
            });
            list(state, req, items)
        }
        GetCertificateVersions => {
            let items = version_items(state.store.lock().certificate(name), |n, v| {
                wire::cert_item(base, n, v, true)
            });
            list(state, req, items)
        }
        GetCertificatePolicy => {
            let store = state.store.lock();
            let object = store.certificate(name)?;
            Ok(Reply::ok(wire::policy(base, object)))
        }
        GetCertificateOperation => {
            let mut store = state.store.lock();
            let object = store
                .certificates
                .get_mut(&name.to_ascii_uppercase())
                .ok_or_else(|| VaultError::not_found(Kind::Certificate, name))?;
            let Some(op) = object.operation.as_mut() else {
                return Err(VaultError::new(
                    404,
                    "PendingCertificateNotFound",
                    format!("Pending certificate not found: {name}"),
                ));
            };
            op.polled = true;
            Ok(Reply::ok(wire::cert_operation(
                base,
                &object.name,
                op,
                true,
            )))
        }
        CreateCertificate => create_certificate(state, req, name),
        ImportCertificate => import_certificate(state, req, name),
        UpdateCertificate => {
            let body = body_json(req.body)?;
            let mut store = state.store.lock();
            let (name, _) =
                store.update_certificate(name, version, &attribute_patch(&body)?, tags(&body)?)?;
            let (object, v) = store.get_certificate(&name, version)?;
            Ok(Reply::ok(wire::cert_bundle(
                base,
                object,
                &v,
                version.is_none(),
            )))
        }
        DeleteCertificate => {
            let mut store = state.store.lock();
            let d = store.delete_certificate(name)?;
            Ok(Reply::ok(deleted_certificate(base, d)))
        }
        GetDeletedCertificate => {
            let store = state.store.lock();
            let d = store
                .deleted_certificates
                .get(&name.to_ascii_uppercase())
                .ok_or_else(|| VaultError::deleted_not_found(Kind::Certificate, name))?;
            Ok(Reply::ok(deleted_certificate(base, d)))
        }
        // The recycle bins: list items plus recoveryId, deletedDate and scheduledPurgeDate.
        GetDeletedSecrets => {
            let items = {
                let store = state.store.lock();
                store
                    .deleted_secrets
                    .iter()
                    .filter_map(|(k, d)| {
                        let v = d.object.versions.last()?;
                        let item = wire::secret_item(base, &d.object.name, v, false);
                        let item = wire::deleted(base, "deletedsecrets", &d.object.name, d, item);
                        Some((k.clone(), item))
                    })
                    .collect()
            };
            list(state, req, items)
        }
        GetDeletedKeys => {
            let items = {
                let store = state.store.lock();
                store
                    .deleted_keys
                    .iter()
                    .filter_map(|(k, d)| {
                        let v = d.object.versions.last()?;
                        let item = wire::key_item(base, &d.object.name, v, false, api);
                        let item = wire::deleted(base, "deletedkeys", &d.object.name, d, item);
                        Some((k.clone(), item))
                    })
                    .collect()
            };
            list(state, req, items)
        }
        GetDeletedCertificates => {
            let items = {
                let store = state.store.lock();
                store
                    .deleted_certificates
                    .iter()
                    .filter_map(|(k, d)| {
                        let v = d.object.versions.last()?;
                        let item = wire::cert_item(base, &d.object.name, v, false);
                        let item =
                            wire::deleted(base, "deletedcertificates", &d.object.name, d, item);
                        Some((k.clone(), item))
                    })
                    .collect()
            };
            list(state, req, items)
        }
        PurgeDeletedSecret | PurgeDeletedKey | PurgeDeletedCertificate => {
            let kind = route.op.kind().expect("vault op");
            state.store.lock().purge(kind, name)?;
            Ok(Reply {
                status: 204,
                body: None,
                headers: Vec::new(),
            })
        }
        RecoverDeletedSecret | RecoverDeletedKey | RecoverDeletedCertificate => {
            let kind = route.op.kind().expect("vault op");
            let mut store = state.store.lock();
            store.recover(kind, name)?;
            let body = match kind {
                Kind::Secret => {
                    let o = store.secret(name)?;
                    let v = o.versions.last().expect("objects have versions");
                    let mut b =
                        wire::secret_bundle(base, &o.name, v, "", v.content_type.as_deref());
                    b.as_object_mut().map(|m| m.remove("value"));
                    b
                }
                Kind::Key => {
                    let (n, v) = store.get_key(name, None)?;
                    wire::key_bundle(base, &n, &v, api)
                }
                Kind::Certificate => {
                    let (object, v) = store.get_certificate(name, None)?;
                    wire::cert_bundle(base, object, &v, true)
                }
            };
            Ok(Reply::ok(body))
        }
        Token | ManagedIdentityToken | OpenIdConfiguration => {
            Err(VaultError::new(404, "NotFound", "Not a vault operation."))
        }
    }
}

fn paging_query<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// One list item per object, for its latest version, keyed by the object's key (paging order).
fn latest_items<O: Listed>(
    objects: &BTreeMap<String, O>,
    item: impl Fn(&str, &O::Version) -> Value,
) -> Vec<(String, Value)> {
    objects
        .iter()
        .filter_map(|(k, o)| o.versions().last().map(|v| (k.clone(), item(o.name(), v))))
        .collect()
}

/// One list item per version of one object, in version-id order. The service answers an
/// unknown name with an empty list, not 404.
fn version_items<O: Listed>(
    object: Result<&O, VaultError>,
    item: impl Fn(&str, &O::Version) -> Value,
) -> Vec<(String, Value)> {
    let Ok(o) = object else {
        return Vec::new();
    };
    store::sorted_by_version(o.versions())
        .iter()
        .map(|v| (v.version().to_string(), item(o.name(), v)))
        .collect()
}

fn list(
    state: &State,
    req: &VaultRequest<'_>,
    items: Vec<(String, Value)>,
) -> Result<Reply, VaultError> {
    let settings = state.settings.read().clone();
    let body = paging::page(
        items,
        &PageRequest {
            base: req.base,
            path: req.path,
            api_version: req.api_version,
            query: req.query,
        },
        &settings,
    )?;
    Ok(Reply::ok(body))
}

/// `outContentType=application/x-pem-file` converts a PFX-backed certificate secret to PEM.
fn convert_secret_value(
    store: &Store,
    name: &str,
    v: &store::SecretVersion,
    out_content_type: Option<&str>,
) -> Result<(String, Option<String>), VaultError> {
    let current = (v.value.clone(), v.content_type.clone());
    let Some(wanted) = out_content_type else {
        return Ok(current);
    };
    if wanted != PEM && wanted != PKCS12 {
        return Err(VaultError::bad_parameter(format!(
            "The value of outContentType '{wanted}' is not supported; use {PEM}."
        )));
    }
    if !v.managed || v.content_type.as_deref() == Some(wanted) {
        return Ok(current);
    }
    if wanted != PEM {
        return Err(VaultError::bad_parameter(
            "Only conversion from application/x-pkcs12 to application/x-pem-file is supported.",
        ));
    }
    let (_, cert) = store.get_certificate(name, Some(&v.version))?;
    Ok((
        crypto::to_pem(&cert.bundle, cert.exportable),
        Some(PEM.to_string()),
    ))
}

fn deleted_secret(base: &str, d: &store::Deleted<store::Object<store::SecretVersion>>) -> Value {
    let latest = d.object.versions.last().expect("objects have versions");
    let mut bundle = wire::secret_bundle(
        base,
        &d.object.name,
        latest,
        "",
        latest.content_type.as_deref(),
    );
    bundle.as_object_mut().map(|m| m.remove("value"));
    wire::deleted(base, "deletedsecrets", &d.object.name, d, bundle)
}

fn deleted_certificate(base: &str, d: &store::Deleted<CertObject>) -> Value {
    let latest = d.object.versions.last().expect("objects have versions");
    let bundle = wire::cert_bundle(base, &d.object, latest, true);
    wire::deleted(base, "deletedcertificates", &d.object.name, d, bundle)
}

fn key_ops(body: &Map<String, Value>) -> Result<Option<Vec<String>>, VaultError> {
    const KNOWN: &[&str] = &[
        "encrypt",
        "decrypt",
        "sign",
        "verify",
        "wrapKey",
        "unwrapKey",
        "import",
        "export",
    ];
    match body.get("key_ops") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|o| match o.as_str() {
                Some(s) if KNOWN.contains(&s) => Ok(s.to_string()),
                _ => Err(VaultError::bad_parameter(format!(
                    "Invalid key operation: {o}"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(VaultError::bad_parameter("key_ops must be an array.")),
    }
}

/// kty / key_size / crv of a create-key body or a certificate policy's key_props.
fn key_spec(body: &Map<String, Value>) -> Result<(KeySpec, bool), VaultError> {
    let kty = body.get("kty").and_then(Value::as_str).unwrap_or("RSA");
    let hsm = kty.ends_with("-HSM");
    match kty {
        "RSA" | "RSA-HSM" => {
            let size = body.get("key_size").and_then(Value::as_u64).unwrap_or(2048);
            match size {
                2048 | 3072 | 4096 => Ok((KeySpec::Rsa(size as u32), hsm)),
                _ => Err(VaultError::bad_parameter(format!(
                    "Invalid key size {size}: RSA keys must be 2048, 3072 or 4096 bits."
                ))),
            }
        }
        "EC" | "EC-HSM" => {
            let crv = body.get("crv").and_then(Value::as_str).unwrap_or("P-256");
            Curve::from_jwk_name(crv)
                .map(|c| (KeySpec::Ec(c), hsm))
                .ok_or_else(|| {
                    VaultError::bad_parameter(format!(
                        "Invalid curve {crv}: supported curves are P-256, P-384 and P-521."
                    ))
                })
        }
        other => Err(VaultError::bad_parameter(format!(
            "Key type {other} is not supported by this vault."
        ))),
    }
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn obj(v: Option<&Value>) -> Map<String, Value> {
    v.and_then(Value::as_object).cloned().unwrap_or_default()
}

/// Fill in what the service fills in: a policy as a GET shows it. `derived` holds values taken
/// from the certificate itself (import) and is overridden by what the caller sent.
pub fn complete_policy(given: Option<&Value>, derived: Value) -> Value {
    let mut out = match derived {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let given = obj(given);
    for (k, v) in given {
        match (out.get_mut(&k), v) {
            (Some(Value::Object(existing)), Value::Object(new)) => {
                for (k2, v2) in new {
                    if !v2.is_null() {
                        existing.insert(k2, v2);
                    }
                }
            }
            (_, Value::Null) => {}
            (_, v) => {
                out.insert(k, v);
            }
        }
    }
    Value::Object(out)
}

pub(crate) fn default_policy_for(
    bundle: Option<&CertBundle>,
    content_type: &str,
    issuer: &str,
) -> Value {
    let mut key_props =
        json!({ "exportable": true, "kty": "RSA", "key_size": 2048, "reuse_key": false });
    let mut x509 = json!({
        "subject": "CN=DefaultPolicy",
        "ekus": ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"],
        "key_usage": ["digitalSignature", "keyEncipherment"],
        "validity_months": 12,
        "basic_constraints": { "ca": false },
    });
    if let Some(b) = bundle {
        match b.key.spec() {
            KeySpec::Rsa(bits) => {
                key_props = json!({ "exportable": true, "kty": "RSA", "key_size": bits, "reuse_key": false });
            }
            KeySpec::Ec(c) => {
                key_props = json!({ "exportable": true, "kty": "EC", "crv": c.jwk_name(), "reuse_key": false });
            }
        }
        let info = crypto::cert_info(&b.leaf);
        let months = ((info.not_after - info.not_before) / (30 * 86_400)).max(1);
        x509["subject"] = json!(info.subject);
        x509["validity_months"] = json!(months);
    }
    json!({
        "key_props": key_props,
        "secret_props": { "contentType": content_type },
        "x509_props": x509,
        "lifetime_actions": [ { "trigger": { "lifetime_percentage": 80 }, "action": { "action_type": if issuer == "Self" { "AutoRenew" } else { "EmailContacts" } } } ],
        "issuer": { "name": issuer },
    })
}

pub(crate) fn secret_value_for(
    bundle: &CertBundle,
    content_type: &str,
    exportable: bool,
) -> Result<String, VaultError> {
    if content_type == PEM {
        Ok(crypto::to_pem(bundle, exportable))
    } else {
        crypto::to_pfx_base64(bundle, exportable).map_err(crypto_error)
    }
}

fn content_type_of(policy: &Value) -> Result<String, VaultError> {
    let ct = policy
        .pointer("/secret_props/contentType")
        .and_then(Value::as_str)
        .unwrap_or(PKCS12);
    if ct == PKCS12 || ct == PEM {
        Ok(ct.to_string())
    } else {
        Err(VaultError::bad_parameter(format!(
            "Unsupported secret content type {ct}: use {PKCS12} or {PEM}."
        )))
    }
}

/// Self-signed certificates are made at once; the operation reports inProgress in the 202 and
/// completed on the first poll, as a fast real issuer would.
fn create_certificate(
    state: &State,
    req: &VaultRequest<'_>,
    name: &str,
) -> Result<Reply, VaultError> {
    let body = body_json(req.body)?;
    let Some(given) = body.get("policy").filter(|p| p.is_object()) else {
        return Err(VaultError::bad_parameter(
            "The parameter policy is required.",
        ));
    };
    let issuer = given
        .pointer("/issuer/name")
        .and_then(Value::as_str)
        .unwrap_or("Self");
    if !issuer.eq_ignore_ascii_case("Self") {
        return Err(VaultError::bad_parameter(format!(
            "testvault issues self-signed certificates only (issuer Self), not {issuer}."
        )));
    }
    let policy = complete_policy(Some(given), default_policy_for(None, PKCS12, "Self"));
    let content_type = content_type_of(&policy)?;
    let key_props = obj(policy.get("key_props"));
    let reuse = key_props
        .get("reuse_key")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let previous_key = if reuse {
        state
            .store
            .lock()
            .get_certificate(name, None)
            .ok()
            .map(|(_, v)| v.bundle.key.clone())
    } else {
        None
    };
    let key = match previous_key {
        Some(k) => k,
        None => KeyMaterial::generate(key_spec(&key_props)?.0).map_err(crypto_error)?,
    };
    let x509 = obj(policy.get("x509_props"));
    let sans = obj(x509.get("sans"));
    let subject = x509
        .get("subject")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if subject.is_empty() {
        return Err(VaultError::bad_parameter(
            "The policy's x509_props.subject is required.",
        ));
    }
    let request = CertRequest {
        subject: subject.clone(),
        dns_names: string_list(sans.get("dns_names")),
        emails: string_list(sans.get("emails")),
        ekus: string_list(x509.get("ekus")),
        key_usage: string_list(x509.get("key_usage")),
        validity_months: x509
            .get("validity_months")
            .and_then(Value::as_u64)
            .unwrap_or(12) as u32,
    };
    let leaf = crypto::self_signed(&key, &request).map_err(crypto_error)?;
    let csr = crypto::csr_base64(&key, &subject).map_err(crypto_error)?;
    let bundle = CertBundle {
        leaf,
        chain: Vec::new(),
        key,
    };
    let exportable = key_props
        .get("exportable")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let secret_value = secret_value_for(&bundle, &content_type, exportable)?;
    let operation = CertOperation {
        issuer: "Self".into(),
        csr,
        request_id: uuid::Uuid::new_v4().simple().to_string(),
        polled: false,
        target_version: String::new(),
    };
    let input = CertInput {
        bundle,
        policy,
        attributes: attribute_patch(&body)?,
        tags: tags(&body)?,
        operation: Some(operation.clone()),
    };
    let (name, v) = state
        .store
        .lock()
        .add_certificate(name, input, &content_type, secret_value)?;
    let op = CertOperation {
        target_version: v.version.clone(),
        ..operation
    };
    Ok(Reply {
        status: 202,
        body: Some(wire::cert_operation(req.base, &name, &op, false)),
        headers: vec![(
            "Location".into(),
            format!(
                "{}/certificates/{name}/pending?api-version={}&request_id={}",
                req.base, req.api_version, op.request_id
            ),
        )],
    })
}

fn import_certificate(
    state: &State,
    req: &VaultRequest<'_>,
    name: &str,
) -> Result<Reply, VaultError> {
    let body = body_json(req.body)?;
    let value = opt_string(&body, "value")?
        .ok_or_else(|| VaultError::bad_parameter("The parameter value is required."))?;
    let password = opt_string(&body, "pwd")?;
    let given_policy = body.get("policy").filter(|p| p.is_object());
    let stated_ct = given_policy
        .and_then(|p| p.pointer("/secret_props/contentType"))
        .and_then(Value::as_str);
    // PEM arrives as text; some clients base64 it anyway (the Python SDK always does, even with
    // a PEM policy), which the service also accepts ("PEM content or Base64 encoded PEM content").
    let (text, is_pem) = if value.trim_start().starts_with("-----BEGIN") {
        (value.clone(), true)
    } else {
        match crypto::b64std_decode(&value) {
            Ok(bytes) if bytes.trim_ascii_start().starts_with(b"-----BEGIN") => {
                (String::from_utf8_lossy(&bytes).into_owned(), true)
            }
            _ => (value.clone(), stated_ct == Some(PEM)),
        }
    };
    let bundle = crypto::parse_import(&text, password.as_deref(), is_pem).map_err(|e| {
        VaultError::bad_parameter(format!("The certificate could not be imported: {e}"))
    })?;
    let detected = if is_pem { PEM } else { PKCS12 };
    let policy = complete_policy(
        given_policy,
        default_policy_for(Some(&bundle), detected, "Unknown"),
    );
    let content_type = content_type_of(&policy)?;
    let exportable = policy
        .pointer("/key_props/exportable")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let secret_value = secret_value_for(&bundle, &content_type, exportable)?;
    let input = CertInput {
        bundle,
        policy,
        attributes: attribute_patch(&body)?,
        tags: tags(&body)?,
        operation: None,
    };
    let mut store = state.store.lock();
    let (name, _) = store.add_certificate(name, input, &content_type, secret_value)?;
    let (object, v) = store.get_certificate(&name, None)?;
    Ok(Reply::ok(wire::cert_bundle(req.base, object, &v, true)))
}
