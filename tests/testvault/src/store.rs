//! The vault's contents: secrets, keys and certificates with all their versions, and the
//! soft-deleted ones. No HTTP here: operations take plain inputs and return model values or a
//! [`VaultError`], so the rules (latest = last created, a certificate owns a key and a secret of the
//! same version, soft delete) are in one place and testable without a server.

use std::collections::BTreeMap;

use rand::Rng;
use serde_json::Value;

use crate::crypto::{CertBundle, KeyMaterial};
use crate::error::{Kind, VaultError};

pub type Tags = BTreeMap<String, String>;

/// Recovery settings of this vault (2022–2025 test vaults report these).
pub const RECOVERY_LEVEL: &str = "CustomizedRecoverable+Purgeable";
pub const RECOVERABLE_DAYS: i64 = 7;

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A new version id: 32 lower-case hex digits, like the service's.
pub fn new_version_id() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    hex::encode(bytes)
}

/// Key Vault object names: 1–127 of `[0-9A-Za-z-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 127
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn valid_version(version: &str) -> bool {
    version.len() == 32 && version.bytes().all(|b| b.is_ascii_hexdigit())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    pub enabled: bool,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
    pub created: i64,
    pub updated: i64,
}

impl Attributes {
    pub fn new_now() -> Self {
        let t = now();
        Attributes {
            enabled: true,
            nbf: None,
            exp: None,
            created: t,
            updated: t,
        }
    }
}

/// Changes a caller may make to an object's attributes (`PATCH`, or on create).
#[derive(Clone, Debug, Default)]
pub struct AttributePatch {
    pub enabled: Option<bool>,
    pub nbf: Option<Option<i64>>,
    pub exp: Option<Option<i64>>,
}

impl AttributePatch {
    fn apply(&self, attributes: &mut Attributes) {
        if let Some(enabled) = self.enabled {
            attributes.enabled = enabled;
        }
        if let Some(nbf) = self.nbf {
            attributes.nbf = nbf;
        }
        if let Some(exp) = self.exp {
            attributes.exp = exp;
        }
    }
}

#[derive(Clone, Debug)]
pub struct SecretVersion {
    pub version: String,
    pub value: String,
    pub content_type: Option<String>,
    pub attributes: Attributes,
    pub tags: Option<Tags>,
    /// Backs a certificate of the same name and version.
    pub managed: bool,
}

#[derive(Clone, Debug)]
pub struct KeyVersion {
    pub version: String,
    pub key: KeyMaterial,
    /// `RSA-HSM` / `EC-HSM` keys report that type; the material is software either way.
    pub hsm: bool,
    pub key_ops: Vec<String>,
    pub attributes: Attributes,
    pub tags: Option<Tags>,
    pub managed: bool,
}

impl KeyVersion {
    pub fn kty(&self) -> String {
        let base = self.key.kty();
        if self.hsm {
            format!("{base}-HSM")
        } else {
            base.to_string()
        }
    }
}

#[derive(Clone, Debug)]
pub struct CertVersion {
    pub version: String,
    pub bundle: CertBundle,
    pub attributes: Attributes,
    pub tags: Option<Tags>,
    /// Whether the private key went into the backing secret.
    pub exportable: bool,
}

/// A pending (or finished) create-certificate operation.
#[derive(Clone, Debug)]
pub struct CertOperation {
    pub issuer: String,
    pub csr: String,
    pub request_id: String,
    /// The 202 answer says inProgress; every later poll sees it finished.
    pub polled: bool,
    pub target_version: String,
}

/// One named object with its versions in creation order (the last one is "latest").
#[derive(Clone, Debug)]
pub struct Object<V> {
    pub name: String,
    pub versions: Vec<V>,
}

#[derive(Clone, Debug)]
pub struct CertObject {
    pub name: String,
    pub versions: Vec<CertVersion>,
    /// The management policy as stored (without `id`, which depends on the host asked).
    pub policy: Value,
    pub policy_attributes: Attributes,
    pub operation: Option<CertOperation>,
}

/// An object of any collection, as its lists see it: a name and versions in creation order.
pub trait Listed {
    type Version: Versioned + Clone;
    fn name(&self) -> &str;
    fn versions(&self) -> &[Self::Version];
}

impl<V: Versioned + Clone> Listed for Object<V> {
    type Version = V;
    fn name(&self) -> &str {
        &self.name
    }
    fn versions(&self) -> &[V] {
        &self.versions
    }
}

impl Listed for CertObject {
    type Version = CertVersion;
    fn name(&self) -> &str {
        &self.name
    }
    fn versions(&self) -> &[CertVersion] {
        &self.versions
    }
}

/// Versioned things that have a version id.
pub trait Versioned {
    fn version(&self) -> &str;
    fn attributes(&self) -> &Attributes;
}

macro_rules! versioned {
    ($t:ty) => {
        impl Versioned for $t {
            fn version(&self) -> &str {
                &self.version
            }
            fn attributes(&self) -> &Attributes {
                &self.attributes
            }
        }
    };
}
versioned!(SecretVersion);
versioned!(KeyVersion);
versioned!(CertVersion);

/// A soft-deleted object and when it went.
#[derive(Clone, Debug)]
pub struct Deleted<T> {
    pub object: T,
    pub deleted_date: i64,
    pub scheduled_purge_date: i64,
}

impl<T> Deleted<T> {
    fn now(object: T) -> Self {
        let t = now();
        Deleted {
            object,
            deleted_date: t,
            scheduled_purge_date: t + RECOVERABLE_DAYS * 86_400,
        }
    }
}

/// Find the version asked for: `None` or empty means latest.
fn pick<'a, V: Versioned>(
    kind: Kind,
    name: &str,
    versions: &'a [V],
    version: Option<&str>,
) -> Result<&'a V, VaultError> {
    match version.filter(|v| !v.is_empty()) {
        None => versions
            .last()
            .ok_or_else(|| VaultError::not_found(kind, name)),
        Some(v) => {
            let found = valid_version(v)
                .then(|| {
                    versions
                        .iter()
                        .find(|x| x.version().eq_ignore_ascii_case(v))
                })
                .flatten();
            found.ok_or_else(|| VaultError::not_found(kind, &format!("{name}/{v}")))
        }
    }
}

fn pick_mut<'a, V: Versioned>(
    kind: Kind,
    name: &str,
    versions: &'a mut [V],
    version: Option<&str>,
) -> Result<&'a mut V, VaultError> {
    let index = {
        let chosen = pick(kind, name, versions, version)?;
        let id = chosen.version().to_string();
        versions.iter().position(|x| x.version() == id).unwrap_or(0)
    };
    Ok(&mut versions[index])
}

/// Version lists come sorted by version id, not by time (recordings, observation 10).
pub fn sorted_by_version<V: Versioned + Clone>(versions: &[V]) -> Vec<V> {
    let mut out = versions.to_vec();
    out.sort_by(|a, b| a.version().cmp(b.version()));
    out
}

/// Map key: lists are sorted by upper-cased name, and names compare case-insensitively.
fn key(name: &str) -> String {
    name.to_ascii_uppercase()
}

fn check_name(name: &str) -> Result<(), VaultError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(VaultError::bad_parameter(format!(
            "The request URI contains an invalid name: {name}"
        )))
    }
}

/// What a caller gives to create a new secret version.
#[derive(Clone, Debug, Default)]
pub struct SecretInput {
    pub value: String,
    pub content_type: Option<String>,
    pub attributes: AttributePatch,
    pub tags: Option<Tags>,
    /// `created`/`updated` (Unix seconds) for a version seeded as if written earlier; `None`: now.
    pub written_at: Option<i64>,
}

/// What a caller gives to create a new key version.
#[derive(Clone, Debug)]
pub struct KeyInput {
    pub key: KeyMaterial,
    pub hsm: bool,
    pub key_ops: Option<Vec<String>>,
    pub attributes: AttributePatch,
    pub tags: Option<Tags>,
}

/// What a caller gives to create a new certificate version.
#[derive(Clone, Debug)]
pub struct CertInput {
    pub bundle: CertBundle,
    /// Full policy (defaults filled in by the caller).
    pub policy: Value,
    pub attributes: AttributePatch,
    pub tags: Option<Tags>,
    pub operation: Option<CertOperation>,
}

/// Default JWK operations the service grants a key of each type.
pub fn default_key_ops(kty: &str) -> Vec<String> {
    let ops: &[&str] = if kty.starts_with("EC") {
        &["sign", "verify"]
    } else {
        &[
            "encrypt",
            "decrypt",
            "sign",
            "verify",
            "wrapKey",
            "unwrapKey",
        ]
    };
    ops.iter().map(|s| s.to_string()).collect()
}

#[derive(Clone, Debug, Default)]
pub struct Store {
    pub secrets: BTreeMap<String, Object<SecretVersion>>,
    pub keys: BTreeMap<String, Object<KeyVersion>>,
    pub certificates: BTreeMap<String, CertObject>,
    pub deleted_secrets: BTreeMap<String, Deleted<Object<SecretVersion>>>,
    pub deleted_keys: BTreeMap<String, Deleted<Object<KeyVersion>>>,
    pub deleted_certificates: BTreeMap<String, Deleted<CertObject>>,
}

impl Store {
    // ---------------------------------------------------------------- secrets

    pub fn secret(&self, name: &str) -> Result<&Object<SecretVersion>, VaultError> {
        self.secrets
            .get(&key(name))
            .ok_or_else(|| VaultError::not_found(Kind::Secret, name))
    }

    /// GetSecret: the version asked for, refused when disabled.
    pub fn get_secret(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<(String, SecretVersion), VaultError> {
        let object = match self.secrets.get(&key(name)) {
            Some(o) => o,
            None => {
                let what = match version.filter(|v| !v.is_empty()) {
                    Some(v) => format!("{name}/{v}"),
                    None => name.to_string(),
                };
                return Err(VaultError::not_found(Kind::Secret, &what));
            }
        };
        let v = pick(Kind::Secret, &object.name, &object.versions, version)?;
        if !v.attributes.enabled {
            return Err(VaultError::secret_disabled());
        }
        Ok((object.name.clone(), v.clone()))
    }

    pub fn set_secret(
        &mut self,
        name: &str,
        input: SecretInput,
    ) -> Result<(String, SecretVersion), VaultError> {
        check_name(name)?;
        if self.deleted_secrets.contains_key(&key(name)) {
            return Err(VaultError::deleted_but_recoverable(Kind::Secret, name));
        }
        if let Some(o) = self.secrets.get(&key(name))
            && o.versions.last().is_some_and(|v| v.managed)
        {
            return Err(VaultError::managed_object(Kind::Secret, "set"));
        }
        let mut attributes = Attributes::new_now();
        if let Some(t) = input.written_at {
            attributes.created = t;
            attributes.updated = t;
        }
        input.attributes.apply(&mut attributes);
        let version = SecretVersion {
            version: new_version_id(),
            value: input.value,
            content_type: input.content_type,
            attributes,
            tags: input.tags,
            managed: false,
        };
        Ok(self.push_secret(name, version))
    }

    fn push_secret(&mut self, name: &str, version: SecretVersion) -> (String, SecretVersion) {
        let object = self.secrets.entry(key(name)).or_insert_with(|| Object {
            name: name.to_string(),
            versions: Vec::new(),
        });
        object.versions.push(version.clone());
        (object.name.clone(), version)
    }

    pub fn update_secret(
        &mut self,
        name: &str,
        version: Option<&str>,
        content_type: Option<String>,
        attributes: &AttributePatch,
        tags: Option<Tags>,
    ) -> Result<(String, SecretVersion), VaultError> {
        let object = self
            .secrets
            .get_mut(&key(name))
            .ok_or_else(|| VaultError::not_found(Kind::Secret, name))?;
        let v = pick_mut(Kind::Secret, name, &mut object.versions, version)?;
        if v.managed {
            return Err(VaultError::managed_object(Kind::Secret, "update"));
        }
        attributes.apply(&mut v.attributes);
        if content_type.is_some() {
            v.content_type = content_type;
        }
        if tags.is_some() {
            v.tags = tags;
        }
        v.attributes.updated = now();
        Ok((object.name.clone(), v.clone()))
    }

    pub fn delete_secret(
        &mut self,
        name: &str,
    ) -> Result<&Deleted<Object<SecretVersion>>, VaultError> {
        let k = key(name);
        match self.secrets.get(&k) {
            None => return Err(VaultError::not_found(Kind::Secret, name)),
            Some(o) if o.versions.last().is_some_and(|v| v.managed) => {
                return Err(VaultError::managed_object(Kind::Secret, "delete"));
            }
            Some(_) => {}
        }
        let object = self.secrets.remove(&k).expect("checked above");
        self.deleted_secrets.insert(k.clone(), Deleted::now(object));
        Ok(&self.deleted_secrets[&k])
    }

    // ------------------------------------------------------------------- keys

    pub fn key(&self, name: &str) -> Result<&Object<KeyVersion>, VaultError> {
        self.keys
            .get(&key(name))
            .ok_or_else(|| VaultError::not_found(Kind::Key, name))
    }

    pub fn get_key(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<(String, KeyVersion), VaultError> {
        let object = self.key(name)?;
        let v = pick(Kind::Key, &object.name, &object.versions, version)?;
        Ok((object.name.clone(), v.clone()))
    }

    pub fn add_key(
        &mut self,
        name: &str,
        input: KeyInput,
    ) -> Result<(String, KeyVersion), VaultError> {
        check_name(name)?;
        if self.deleted_keys.contains_key(&key(name)) {
            return Err(VaultError::deleted_but_recoverable(Kind::Key, name));
        }
        if let Some(o) = self.keys.get(&key(name))
            && o.versions.last().is_some_and(|v| v.managed)
        {
            return Err(VaultError::managed_object(Kind::Key, "create"));
        }
        let mut attributes = Attributes::new_now();
        input.attributes.apply(&mut attributes);
        let kty = input.key.kty();
        let version = KeyVersion {
            version: new_version_id(),
            key_ops: input.key_ops.unwrap_or_else(|| default_key_ops(kty)),
            key: input.key,
            hsm: input.hsm,
            attributes,
            tags: input.tags,
            managed: false,
        };
        Ok(self.push_key(name, version))
    }

    fn push_key(&mut self, name: &str, version: KeyVersion) -> (String, KeyVersion) {
        let object = self.keys.entry(key(name)).or_insert_with(|| Object {
            name: name.to_string(),
            versions: Vec::new(),
        });
        object.versions.push(version.clone());
        (object.name.clone(), version)
    }

    pub fn update_key(
        &mut self,
        name: &str,
        version: Option<&str>,
        attributes: &AttributePatch,
        key_ops: Option<Vec<String>>,
        tags: Option<Tags>,
    ) -> Result<(String, KeyVersion), VaultError> {
        let object = self
            .keys
            .get_mut(&key(name))
            .ok_or_else(|| VaultError::not_found(Kind::Key, name))?;
        let v = pick_mut(Kind::Key, name, &mut object.versions, version)?;
        if v.managed {
            return Err(VaultError::managed_object(Kind::Key, "update"));
        }
        attributes.apply(&mut v.attributes);
        if let Some(ops) = key_ops {
            v.key_ops = ops;
        }
        if tags.is_some() {
            v.tags = tags;
        }
        v.attributes.updated = now();
        Ok((object.name.clone(), v.clone()))
    }

    pub fn delete_key(&mut self, name: &str) -> Result<&Deleted<Object<KeyVersion>>, VaultError> {
        let k = key(name);
        match self.keys.get(&k) {
            None => return Err(VaultError::not_found(Kind::Key, name)),
            Some(o) if o.versions.last().is_some_and(|v| v.managed) => {
                return Err(VaultError::managed_object(Kind::Key, "delete"));
            }
            Some(_) => {}
        }
        let object = self.keys.remove(&k).expect("checked above");
        self.deleted_keys.insert(k.clone(), Deleted::now(object));
        Ok(&self.deleted_keys[&k])
    }

    // ----------------------------------------------------------- certificates

    pub fn certificate(&self, name: &str) -> Result<&CertObject, VaultError> {
        self.certificates
            .get(&key(name))
            .ok_or_else(|| VaultError::not_found(Kind::Certificate, name))
    }

    pub fn get_certificate(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<(&CertObject, CertVersion), VaultError> {
        let object = self.certificate(name)?;
        let v = pick(Kind::Certificate, &object.name, &object.versions, version)?;
        Ok((object, v.clone()))
    }

    /// Adds a certificate version together with its managed key and secret of the same version.
    /// `secret_value` renders the backing secret (PFX or PEM) from the bundle.
    pub fn add_certificate(
        &mut self,
        name: &str,
        input: CertInput,
        content_type: &str,
        secret_value: String,
    ) -> Result<(String, CertVersion), VaultError> {
        check_name(name)?;
        let k = key(name);
        if self.deleted_certificates.contains_key(&k) {
            return Err(VaultError::deleted_but_recoverable(Kind::Certificate, name));
        }
        // The certificate takes over the key and secret names; a plain secret or key of that name
        // would make the triple ambiguous.
        let plain_secret = self
            .secrets
            .get(&k)
            .is_some_and(|o| o.versions.last().is_some_and(|v| !v.managed));
        let plain_key = self
            .keys
            .get(&k)
            .is_some_and(|o| o.versions.last().is_some_and(|v| !v.managed));
        if plain_secret || plain_key {
            return Err(VaultError::new(
                409,
                "Conflict",
                format!(
                    "A secret or key named {name} already exists and is not managed by a certificate."
                ),
            ));
        }
        let exportable = input
            .policy
            .pointer("/key_props/exportable")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let info = crate::crypto::cert_info(&input.bundle.leaf);
        let mut attributes = Attributes::new_now();
        input.attributes.apply(&mut attributes);
        attributes.nbf = Some(info.not_before);
        attributes.exp = Some(info.not_after);
        let version_id = new_version_id();
        let version = CertVersion {
            version: version_id.clone(),
            bundle: input.bundle.clone(),
            attributes: attributes.clone(),
            // Only the tags the creator sent: 2025 certificates created without tags have no
            // `tags` (tests/recordings get_certificate[1], get_certificates[1]); the 2021 ones show
            // `{}` because the C++ client always sends `"tags": {}`.
            tags: input.tags.clone(),
            exportable,
        };
        let kty = input.bundle.key.kty();
        self.push_key(
            name,
            KeyVersion {
                version: version_id.clone(),
                key: input.bundle.key.clone(),
                hsm: false,
                key_ops: default_key_ops(kty),
                attributes: attributes.clone(),
                tags: Some(Tags::new()),
                managed: true,
            },
        );
        self.push_secret(
            name,
            SecretVersion {
                version: version_id.clone(),
                value: secret_value,
                content_type: Some(content_type.to_string()),
                attributes,
                tags: Some(Tags::new()),
                managed: true,
            },
        );
        let t = now();
        let object = self.certificates.entry(k).or_insert_with(|| CertObject {
            name: name.to_string(),
            versions: Vec::new(),
            policy: Value::Null,
            policy_attributes: Attributes {
                enabled: true,
                nbf: None,
                exp: None,
                created: t,
                updated: t,
            },
            operation: None,
        });
        if object.policy != input.policy {
            object.policy = input.policy;
            object.policy_attributes.updated = t;
        }
        if input.operation.is_some() {
            object.operation = input.operation;
        }
        object.versions.push(version.clone());
        Ok((object.name.clone(), version))
    }

    /// Enabling or disabling a certificate version carries over to its key and secret.
    pub fn update_certificate(
        &mut self,
        name: &str,
        version: Option<&str>,
        attributes: &AttributePatch,
        tags: Option<Tags>,
    ) -> Result<(String, CertVersion), VaultError> {
        let k = key(name);
        let object = self
            .certificates
            .get_mut(&k)
            .ok_or_else(|| VaultError::not_found(Kind::Certificate, name))?;
        let v = pick_mut(Kind::Certificate, name, &mut object.versions, version)?;
        attributes.apply(&mut v.attributes);
        if tags.is_some() {
            v.tags = tags;
        }
        let t = now();
        v.attributes.updated = t;
        let (id, enabled, out_name, out) = (
            v.version.clone(),
            v.attributes.enabled,
            object.name.clone(),
            v.clone(),
        );
        if let Some(kv) = self
            .keys
            .get_mut(&k)
            .and_then(|o| o.versions.iter_mut().find(|x| x.version == id))
        {
            kv.attributes.enabled = enabled;
            kv.attributes.updated = t;
        }
        if let Some(sv) = self
            .secrets
            .get_mut(&k)
            .and_then(|o| o.versions.iter_mut().find(|x| x.version == id))
        {
            sv.attributes.enabled = enabled;
            sv.attributes.updated = t;
        }
        Ok((out_name, out))
    }

    /// Deleting a certificate soft-deletes its key and secret with it.
    pub fn delete_certificate(&mut self, name: &str) -> Result<&Deleted<CertObject>, VaultError> {
        let k = key(name);
        let object = self
            .certificates
            .remove(&k)
            .ok_or_else(|| VaultError::not_found(Kind::Certificate, name))?;
        if let Some(o) = self.keys.remove(&k) {
            self.deleted_keys.insert(k.clone(), Deleted::now(o));
        }
        if let Some(o) = self.secrets.remove(&k) {
            self.deleted_secrets.insert(k.clone(), Deleted::now(o));
        }
        self.deleted_certificates
            .insert(k.clone(), Deleted::now(object));
        Ok(&self.deleted_certificates[&k])
    }

    // ------------------------------------------------------------ soft delete

    /// Purge removes a deleted object for good; a certificate takes its key and secret along.
    pub fn purge(&mut self, kind: Kind, name: &str) -> Result<(), VaultError> {
        let k = key(name);
        let found = match kind {
            Kind::Secret => self.deleted_secrets.remove(&k).is_some(),
            Kind::Key => self.deleted_keys.remove(&k).is_some(),
            Kind::Certificate => {
                let found = self.deleted_certificates.remove(&k).is_some();
                if found {
                    self.deleted_keys.remove(&k);
                    self.deleted_secrets.remove(&k);
                }
                found
            }
        };
        if found {
            Ok(())
        } else {
            Err(VaultError::deleted_not_found(kind, name))
        }
    }

    /// Recover brings a deleted object back with all its versions.
    pub fn recover(&mut self, kind: Kind, name: &str) -> Result<(), VaultError> {
        let k = key(name);
        let missing = || VaultError::deleted_not_found(kind, name);
        match kind {
            Kind::Secret => {
                let d = self.deleted_secrets.remove(&k).ok_or_else(missing)?;
                self.secrets.insert(k, d.object);
            }
            Kind::Key => {
                let d = self.deleted_keys.remove(&k).ok_or_else(missing)?;
                self.keys.insert(k, d.object);
            }
            Kind::Certificate => {
                let d = self.deleted_certificates.remove(&k).ok_or_else(missing)?;
                self.certificates.insert(k.clone(), d.object);
                if let Some(o) = self.deleted_keys.remove(&k) {
                    self.keys.insert(k.clone(), o.object);
                }
                if let Some(o) = self.deleted_secrets.remove(&k) {
                    self.secrets.insert(k, o.object);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(value: &str) -> SecretInput {
        SecretInput {
            value: value.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn latest_is_the_last_created_and_names_ignore_case() {
        let mut s = Store::default();
        let (_, v1) = s.set_secret("Db-Password", secret("one")).unwrap();
        let (_, v2) = s.set_secret("db-password", secret("two")).unwrap();
        let (name, latest) = s.get_secret("DB-PASSWORD", None).unwrap();
        assert_eq!(name, "Db-Password", "the first casing is kept");
        assert_eq!(latest.value, "two");
        assert_eq!(
            s.get_secret("db-password", Some(&v1.version))
                .unwrap()
                .1
                .value,
            "one"
        );
        assert_eq!(
            s.get_secret("db-password", Some(&v2.version.to_uppercase()))
                .unwrap()
                .1
                .value,
            "two"
        );
        assert_eq!(v1.version.len(), 32);
    }

    #[test]
    fn disabled_secret_is_forbidden_and_missing_one_is_not_found() {
        let mut s = Store::default();
        s.set_secret("a", secret("x")).unwrap();
        s.update_secret(
            "a",
            None,
            None,
            &AttributePatch {
                enabled: Some(false),
                ..Default::default()
            },
            None,
        )
        .unwrap();
        assert_eq!(s.get_secret("a", None).unwrap_err().status, 403);
        let e = s.get_secret("b", Some("0123")).unwrap_err();
        assert_eq!(e.code, "SecretNotFound");
        assert!(e.message.contains("(name/id) b/0123 was"));
        let e = s
            .get_secret("a", Some("00000000000000000000000000000000"))
            .unwrap_err();
        assert_eq!(e.status, 404);
    }

    #[test]
    fn soft_delete_blocks_the_name_until_purged_or_recovered() {
        let mut s = Store::default();
        s.set_secret("gone", secret("x")).unwrap();
        s.delete_secret("gone").unwrap();
        assert_eq!(s.get_secret("gone", None).unwrap_err().status, 404);
        assert_eq!(s.set_secret("gone", secret("y")).unwrap_err().status, 409);
        s.recover(Kind::Secret, "gone").unwrap();
        assert_eq!(s.get_secret("gone", None).unwrap().1.value, "x");
        s.delete_secret("gone").unwrap();
        s.purge(Kind::Secret, "gone").unwrap();
        s.set_secret("gone", secret("z")).unwrap();
        assert_eq!(s.purge(Kind::Secret, "gone").unwrap_err().status, 404);
    }

    #[test]
    fn invalid_names_are_refused() {
        let mut s = Store::default();
        assert_eq!(s.set_secret("a_b", secret("x")).unwrap_err().status, 400);
        assert_eq!(
            s.set_secret(&"a".repeat(128), secret("x"))
                .unwrap_err()
                .status,
            400
        );
        assert!(valid_name(&"a".repeat(127)));
    }
}
