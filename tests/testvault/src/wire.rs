//! JSON shapes of the data plane, as the live service writes them (see `tests/recordings/`):
//! bundles for single GETs, items for lists, and the deleted-object wrappers.

use serde_json::{Map, Value, json};

use crate::crypto;
use crate::store::{
    Attributes, CertObject, CertOperation, CertVersion, Deleted, KeyVersion, RECOVERABLE_DAYS,
    RECOVERY_LEVEL, SecretVersion, Tags,
};

/// Newer API versions add `exportable` and `hsmPlatform` to key attributes (recordings, obs. 17).
pub fn api_has_key_extras(api_version: &str) -> bool {
    api_version >= "7.6" || api_version.starts_with("20")
}

/// `recovery`: whether to include `recoveryLevel`/`recoverableDays` (certificate list items omit them).
pub fn attributes(a: &Attributes, recovery: bool) -> Value {
    let mut m = Map::new();
    m.insert("enabled".into(), json!(a.enabled));
    if let Some(nbf) = a.nbf {
        m.insert("nbf".into(), json!(nbf));
    }
    if let Some(exp) = a.exp {
        m.insert("exp".into(), json!(exp));
    }
    m.insert("created".into(), json!(a.created));
    m.insert("updated".into(), json!(a.updated));
    if recovery {
        m.insert("recoveryLevel".into(), json!(RECOVERY_LEVEL));
        m.insert("recoverableDays".into(), json!(RECOVERABLE_DAYS));
    }
    Value::Object(m)
}

fn key_attributes(a: &Attributes, api_version: &str) -> Value {
    let mut v = attributes(a, true);
    if api_has_key_extras(api_version) {
        v["exportable"] = json!(false);
        v["hsmPlatform"] = json!("0");
    }
    v
}

fn put_tags(m: &mut Map<String, Value>, tags: &Option<Tags>) {
    if let Some(tags) = tags {
        m.insert("tags".into(), json!(tags));
    }
}

pub fn object_id(base: &str, collection: &str, name: &str, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("{base}/{collection}/{name}/{v}"),
        None => format!("{base}/{collection}/{name}"),
    }
}

/// GetSecret / SetSecret answer. `value` may differ from the stored one (PEM conversion).
pub fn secret_bundle(
    base: &str,
    name: &str,
    v: &SecretVersion,
    value: &str,
    content_type: Option<&str>,
) -> Value {
    let mut m = Map::new();
    m.insert("value".into(), json!(value));
    if let Some(ct) = content_type {
        m.insert("contentType".into(), json!(ct));
    }
    m.insert(
        "id".into(),
        json!(object_id(base, "secrets", name, Some(&v.version))),
    );
    if v.managed {
        m.insert("managed".into(), json!(true));
    }
    m.insert("attributes".into(), attributes(&v.attributes, true));
    put_tags(&mut m, &v.tags);
    if v.managed {
        m.insert(
            "kid".into(),
            json!(object_id(base, "keys", name, Some(&v.version))),
        );
    }
    Value::Object(m)
}

/// Secret list item: base id in vault-wide lists, versioned id in version lists; never a value.
pub fn secret_item(base: &str, name: &str, v: &SecretVersion, versioned: bool) -> Value {
    let mut m = Map::new();
    if let Some(ct) = &v.content_type {
        m.insert("contentType".into(), json!(ct));
    }
    let version = versioned.then_some(v.version.as_str());
    m.insert(
        "id".into(),
        json!(object_id(base, "secrets", name, version)),
    );
    if v.managed {
        m.insert("managed".into(), json!(true));
    }
    m.insert("attributes".into(), attributes(&v.attributes, true));
    put_tags(&mut m, &v.tags);
    Value::Object(m)
}

pub fn jwk(base: &str, name: &str, v: &KeyVersion) -> Value {
    let mut m = Map::new();
    m.insert(
        "kid".into(),
        json!(object_id(base, "keys", name, Some(&v.version))),
    );
    m.insert("kty".into(), json!(v.kty()));
    m.insert("key_ops".into(), json!(v.key_ops));
    for (k, val) in v.key.public_jwk() {
        if k != "kty" {
            m.insert(k, val);
        }
    }
    Value::Object(m)
}

pub fn key_bundle(base: &str, name: &str, v: &KeyVersion, api_version: &str) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), jwk(base, name, v));
    m.insert(
        "attributes".into(),
        key_attributes(&v.attributes, api_version),
    );
    put_tags(&mut m, &v.tags);
    if v.managed {
        m.insert("managed".into(), json!(true));
    }
    Value::Object(m)
}

/// Key list item: `kid`, not `id`.
pub fn key_item(
    base: &str,
    name: &str,
    v: &KeyVersion,
    versioned: bool,
    api_version: &str,
) -> Value {
    let mut m = Map::new();
    let version = versioned.then_some(v.version.as_str());
    m.insert("kid".into(), json!(object_id(base, "keys", name, version)));
    m.insert(
        "attributes".into(),
        key_attributes(&v.attributes, api_version),
    );
    put_tags(&mut m, &v.tags);
    if v.managed {
        m.insert("managed".into(), json!(true));
    }
    Value::Object(m)
}

pub fn policy(base: &str, object: &CertObject) -> Value {
    let mut p = match &object.policy {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    let mut out = Map::new();
    out.insert(
        "id".into(),
        json!(format!("{base}/certificates/{}/policy", object.name)),
    );
    for k in [
        "key_props",
        "secret_props",
        "x509_props",
        "lifetime_actions",
        "issuer",
    ] {
        if let Some(v) = p.remove(k) {
            out.insert(k.into(), v);
        }
    }
    out.extend(p);
    out.insert(
        "attributes".into(),
        json!({
            "enabled": object.policy_attributes.enabled,
            "created": object.policy_attributes.created,
            "updated": object.policy_attributes.updated,
        }),
    );
    Value::Object(out)
}

/// GetCertificate: the latest carries `policy` and `pending`; an explicit version carries
/// `subject`, `issuer` and `serialnumber` instead (recordings, obs. 14).
pub fn cert_bundle(base: &str, object: &CertObject, v: &CertVersion, latest_form: bool) -> Value {
    let name = &object.name;
    let info = crypto::cert_info(&v.bundle.leaf);
    let mut m = Map::new();
    m.insert(
        "id".into(),
        json!(object_id(base, "certificates", name, Some(&v.version))),
    );
    m.insert(
        "kid".into(),
        json!(object_id(base, "keys", name, Some(&v.version))),
    );
    m.insert(
        "sid".into(),
        json!(object_id(base, "secrets", name, Some(&v.version))),
    );
    m.insert("x5t".into(), json!(info.x5t));
    m.insert("cer".into(), json!(crypto::b64std(&info.der)));
    m.insert("attributes".into(), attributes(&v.attributes, true));
    put_tags(&mut m, &v.tags);
    if latest_form {
        m.insert("policy".into(), policy(base, object));
        m.insert(
            "pending".into(),
            json!({ "id": format!("{base}/certificates/{name}/pending") }),
        );
    } else {
        m.insert("subject".into(), json!(info.subject));
        m.insert("issuer".into(), json!(info.issuer));
        m.insert("serialnumber".into(), json!(info.serial_hex));
    }
    Value::Object(m)
}

/// Certificate list item: `subject` is always an empty string, attributes without recovery fields.
pub fn cert_item(base: &str, name: &str, v: &CertVersion, versioned: bool) -> Value {
    let info = crypto::cert_info(&v.bundle.leaf);
    let mut m = Map::new();
    let version = versioned.then_some(v.version.as_str());
    m.insert(
        "id".into(),
        json!(object_id(base, "certificates", name, version)),
    );
    m.insert("x5t".into(), json!(info.x5t));
    m.insert("attributes".into(), attributes(&v.attributes, false));
    put_tags(&mut m, &v.tags);
    m.insert("subject".into(), json!(""));
    Value::Object(m)
}

/// The create-certificate operation; `done` decides between inProgress and completed.
pub fn cert_operation(base: &str, name: &str, op: &CertOperation, done: bool) -> Value {
    let mut v = json!({
        "id": format!("{base}/certificates/{name}/pending"),
        "issuer": { "name": op.issuer },
        "csr": op.csr,
        "cancellation_requested": false,
        "request_id": op.request_id,
    });
    if done {
        v["status"] = json!("completed");
        v["target"] = json!(format!("{base}/certificates/{name}"));
    } else {
        v["status"] = json!("inProgress");
        v["status_details"] = json!(
            "Pending certificate created. Certificate request is in progress. This may take some time based on the issuer provider. Please check again later."
        );
    }
    v
}

/// Adds the soft-delete fields to a bundle.
pub fn deleted<T>(
    base: &str,
    deleted_collection: &str,
    name: &str,
    d: &Deleted<T>,
    mut bundle: Value,
) -> Value {
    bundle["recoveryId"] = json!(format!("{base}/{deleted_collection}/{name}"));
    bundle["deletedDate"] = json!(d.deleted_date);
    bundle["scheduledPurgeDate"] = json!(d.scheduled_purge_date);
    bundle
}
