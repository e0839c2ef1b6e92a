//! What the cache is asked ([`Request`], which is also its key) and what it holds ([`Value`]):
//! how a request names its object in logs, which vault call answers it, and what its answer weighs.

use std::fmt;
use std::sync::Arc;

use crate::vault::{
    CertificateValue, Collection, KeyValue, ObjectProps, SecretValue, VaultClient, VaultError,
    valid_name, valid_version,
};

/// What was asked, as the caller spelt it (names go to the vault and to logs this way).
/// Its [`Request::key`] form, with names upper-cased, is the cache key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(in crate::fs) enum Request {
    /// One object of a collection: its latest version when `version` is `None`.
    Object {
        collection: Collection,
        name: String,
        version: Option<String>,
    },
    List(Collection),
    Versions(Collection, String),
}

impl Request {
    /// The latest version of `name` in `collection`.
    pub(in crate::fs) fn latest(collection: Collection, name: &str) -> Request {
        Request::Object {
            collection,
            name: name.to_owned(),
            version: None,
        }
    }

    /// An object request, or `NotFound` for a name or version the vault cannot have: those cost
    /// no call (and no entry).
    pub(super) fn object(
        collection: Collection,
        name: &str,
        version: Option<&str>,
    ) -> Result<Request, VaultError> {
        if !valid_name(name) || version.is_some_and(|v| !valid_version(v)) {
            return Err(VaultError::NotFound);
        }
        Ok(Request::Object {
            collection,
            name: name.to_owned(),
            version: version.map(str::to_owned),
        })
    }

    /// The collection the request is about.
    pub(super) fn collection(&self) -> Collection {
        match self {
            Request::Object { collection: c, .. } | Request::List(c) | Request::Versions(c, _) => {
                *c
            }
        }
    }

    /// The object name of a latest-version request (what a list item can revalidate).
    pub(super) fn latest_name(&self) -> Option<&str> {
        match self {
            Request::Object {
                name,
                version: None,
                ..
            } => Some(name),
            _ => None,
        }
    }

    /// The cache key: the request with its name upper-cased (names compare case-insensitively).
    pub(super) fn key(&self) -> Request {
        match self {
            Request::Object {
                collection,
                name,
                version,
            } => Request::Object {
                collection: *collection,
                name: name.to_ascii_uppercase(),
                version: version.clone(),
            },
            Request::List(c) => Request::List(*c),
            Request::Versions(c, name) => Request::Versions(*c, name.to_ascii_uppercase()),
        }
    }

    /// Ask the vault.
    pub(super) async fn fetch(&self, client: &dyn VaultClient) -> Result<Value, VaultError> {
        match self {
            Request::Object {
                collection,
                name,
                version,
            } => {
                let version = version.as_deref();
                match collection {
                    Collection::Secrets => client
                        .get_secret(name, version)
                        .await
                        .map(|s| Value::Secret(Arc::new(s))),
                    Collection::Keys => client
                        .get_key(name, version)
                        .await
                        .map(|k| Value::Key(Arc::new(k))),
                    Collection::Certificates => client
                        .get_certificate(name, version)
                        .await
                        .map(|c| Value::Certificate(Arc::new(c))),
                }
            }
            Request::List(c) => client.list(*c).await.map(|l| Value::Props(Arc::new(l))),
            Request::Versions(c, name) => client
                .list_versions(*c, name)
                .await
                .map(|l| Value::Props(Arc::new(l))),
        }
    }
}

/// How logs name the object: `secrets/db-password`, `secrets/db-password/<version>`,
/// `secrets (list)`, `secrets/db-password (versions)`.
impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Object {
                collection: c,
                name,
                version: None,
            } => write!(f, "{}/{name}", c.as_str()),
            Request::Object {
                collection: c,
                name,
                version: Some(v),
            } => write!(f, "{}/{name}/{v}", c.as_str()),
            Request::List(c) => write!(f, "{} (list)", c.as_str()),
            Request::Versions(c, name) => write!(f, "{}/{name} (versions)", c.as_str()),
        }
    }
}

/// A vault answer the cache holds.
#[derive(Clone)]
pub(super) enum Value {
    Secret(Arc<SecretValue>),
    Key(Arc<KeyValue>),
    Certificate(Arc<CertificateValue>),
    Props(Arc<Vec<ObjectProps>>),
}

impl Value {
    /// Metadata of an object value (`None` for lists).
    pub(super) fn props(&self) -> Option<&ObjectProps> {
        match self {
            Value::Secret(s) => Some(&s.props),
            Value::Key(k) => Some(&k.props),
            Value::Certificate(c) => Some(&c.props),
            Value::Props(_) => None,
        }
    }

    /// Approximate heap footprint, for the byte bound.
    pub(super) fn bytes(&self) -> u64 {
        let n = match self {
            Value::Secret(s) => s.value.len() + props_bytes(&s.props),
            Value::Key(k) => k.jwk.to_string().len() + props_bytes(&k.props),
            Value::Certificate(c) => {
                c.cer.len()
                    + props_bytes(&c.props)
                    + c.secret
                        .as_ref()
                        .map(|s| s.value.len() + props_bytes(&s.props))
                        .unwrap_or(0)
            }
            Value::Props(list) => list.iter().map(props_bytes).sum(),
        };
        n as u64
    }
}

fn props_bytes(p: &ObjectProps) -> usize {
    std::mem::size_of::<ObjectProps>()
        + p.name.len()
        + p.version.as_ref().map_or(0, String::len)
        + p.content_type.as_ref().map_or(0, String::len)
        + p.tags
            .iter()
            .map(|(k, v)| k.len() + v.len() + 64)
            .sum::<usize>()
}

/// The types a caller gets out of a [`Value`]: each public getter of the cache is one of these.
pub(super) trait Held: Sized {
    /// The value, if `value` holds this type (else the entry is of another kind).
    fn pick(value: Value) -> Option<Arc<Self>>;
}

impl Held for SecretValue {
    fn pick(value: Value) -> Option<Arc<Self>> {
        match value {
            Value::Secret(s) => Some(s),
            _ => None,
        }
    }
}

impl Held for KeyValue {
    fn pick(value: Value) -> Option<Arc<Self>> {
        match value {
            Value::Key(k) => Some(k),
            _ => None,
        }
    }
}

impl Held for CertificateValue {
    fn pick(value: Value) -> Option<Arc<Self>> {
        match value {
            Value::Certificate(c) => Some(c),
            _ => None,
        }
    }
}

impl Held for Vec<ObjectProps> {
    fn pick(value: Value) -> Option<Arc<Self>> {
        match value {
            Value::Props(p) => Some(p),
            _ => None,
        }
    }
}
