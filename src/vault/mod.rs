//! The vault client layer: what the filesystem needs from Key Vault, behind a trait.
//!
//! `azure` implements it with Microsoft's `azure_security_keyvault_*` crates; `memory` is an
//! in-memory vault for tests of the layers above, with fault injection; `challenge` learns the
//! vault's authentication challenge once per process; `clock` learns the vault's clock;
//! `refusals` tells the token cache what the vault made of each token. Nothing here knows
//! about inodes or FUSE.

pub mod azure;
pub(crate) mod challenge;
pub mod clock;
pub(crate) mod guard;
#[cfg(test)]
pub(crate) mod memory;
pub(crate) mod pages;
pub(crate) mod refusals;

use std::collections::BTreeMap;
use std::time::SystemTime;

use async_trait::async_trait;

/// The three object collections of a vault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Collection {
    Secrets,
    Keys,
    Certificates,
}

impl Collection {
    pub fn as_str(self) -> &'static str {
        match self {
            Collection::Secrets => "secrets",
            Collection::Keys => "keys",
            Collection::Certificates => "certificates",
        }
    }
}

/// Metadata of one object version, as list and get operations return it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectProps {
    /// The object's name as the vault stores it (its casing).
    pub name: String,
    /// Version id; `None` in vault-wide lists, which carry base ids.
    pub version: Option<String>,
    pub enabled: bool,
    /// Backs a certificate (the key and secret of a certificate).
    pub managed: bool,
    pub created: Option<SystemTime>,
    pub updated: Option<SystemTime>,
    pub not_before: Option<SystemTime>,
    pub expires: Option<SystemTime>,
    pub content_type: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// A secret version with its value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue {
    pub props: ObjectProps,
    pub value: Vec<u8>,
}

/// Values never reach logs through `Debug`.
impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field("props", &self.props)
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .finish()
    }
}

/// Wiped when dropped, spare capacity too, whether or not the zeroing allocator is built in.
impl Drop for SecretValue {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.value);
    }
}

/// A key version: its metadata and public JWK (wire form: base64url members).
#[derive(Clone, Debug, PartialEq)]
pub struct KeyValue {
    pub props: ObjectProps,
    pub jwk: serde_json::Value,
}

/// A certificate version with what its files are made from: the leaf's DER (`cer`) and the
/// backing secret of the same version (private key and chain), when it can be read.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateValue {
    pub props: ObjectProps,
    pub cer: Vec<u8>,
    /// `None` when the secret is missing or the identity may not read it: then only the
    /// public files exist.
    pub secret: Option<SecretValue>,
}

impl std::fmt::Debug for CertificateValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateValue")
            .field("props", &self.props)
            .field("cer", &format_args!("<{} bytes>", self.cer.len()))
            .field("secret", &self.secret)
            .finish()
    }
}

/// Why a vault call failed, in the terms the filesystem acts on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    /// 404, or a name the vault cannot have.
    #[error("not found")]
    NotFound,
    /// 403 `SecretDisabled`: the object exists but is disabled.
    #[error("disabled")]
    Disabled,
    /// 401 the client could not get past, or a credential that cannot get a token.
    #[error("not authenticated: {0}")]
    Unauthorized(String),
    /// 403 access denied; the message names what is missing (role or access-policy permission).
    #[error("access denied: {0}")]
    Forbidden(String),
    /// 429 after the client's own retries.
    #[error("throttled by the vault")]
    Throttled,
    /// 5xx, timeouts, connection failures: the vault is not answering properly.
    #[error("vault unavailable: {0}")]
    Unavailable(String),
    /// Anything else (400, an answer that does not parse, …).
    #[error("unexpected vault answer: {0}")]
    Unexpected(String),
}

impl VaultError {
    /// Transient failures, through which the last good value is served (up to `--max-stale`).
    pub fn is_transient(&self) -> bool {
        matches!(self, VaultError::Throttled | VaultError::Unavailable(_))
    }
}

/// What the filesystem asks of a vault. Implementations must be cheap to share across tasks.
#[async_trait]
pub trait VaultClient: Send + Sync + 'static {
    /// What this client learns of the vault's clock from its answers (`Date` headers), shared
    /// with the cache, which adds the `updated` stamps it sees. `None`: nothing is learnt, and
    /// the cache keeps a clock of its own.
    fn clock(&self) -> Option<std::sync::Arc<clock::VaultClock>> {
        None
    }

    /// Every object of a collection (following `nextLink` across all pages), latest metadata each.
    async fn list(&self, collection: Collection) -> Result<Vec<ObjectProps>, VaultError>;

    /// Every version of one object. An unknown name gives an empty list.
    async fn list_versions(
        &self,
        collection: Collection,
        name: &str,
    ) -> Result<Vec<ObjectProps>, VaultError>;

    /// A secret's value: the latest version when `version` is `None`.
    async fn get_secret(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<SecretValue, VaultError>;

    /// A key's public JWK: the latest version when `version` is `None`.
    async fn get_key(&self, name: &str, version: Option<&str>) -> Result<KeyValue, VaultError>;

    /// A certificate and its backing secret, both of one version (latest when `None`), so that
    /// every file rendered from them belongs to that version.
    async fn get_certificate(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<CertificateValue, VaultError>;
}

/// Key Vault refuses to store a secret value over 25 KiB (25,600 bytes), so an answer carrying
/// a larger one is not the vault's: it is refused rather than cached and served.
pub(crate) const MAX_SECRET_VALUE_BYTES: usize = 25_600;

/// A listing with one entry per name, names compared case-insensitively as the vault compares
/// them: two entries that differ only in case (which a real vault never lists, but a broken or
/// hostile server can) would be two files for one object. The newest `updated` is kept, the
/// first seen on a tie, in the first one's place. Returns the listing and the names dropped.
pub(crate) fn one_per_name(items: Vec<ObjectProps>) -> (Vec<ObjectProps>, Vec<String>) {
    let mut kept: Vec<ObjectProps> = Vec::with_capacity(items.len());
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut dropped = Vec::new();
    for item in items {
        match index.entry(item.name.to_ascii_lowercase()) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(kept.len());
                kept.push(item);
            }
            std::collections::hash_map::Entry::Occupied(slot) => {
                let held = &mut kept[*slot.get()];
                if item.updated > held.updated {
                    dropped.push(std::mem::replace(held, item).name);
                } else {
                    dropped.push(item.name);
                }
            }
        }
    }
    (kept, dropped)
}

/// Key Vault object names: 1–127 of `[0-9A-Za-z-]`. Anything else cannot exist, so the
/// filesystem answers it without asking the vault.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 127
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Version ids are 32 hex digits.
pub fn valid_version(version: &str) -> bool {
    version.len() == 32 && version.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions() {
        assert!(valid_name("db-password"));
        assert!(valid_name(&"a".repeat(127)));
        assert!(!valid_name(&"a".repeat(128)));
        assert!(!valid_name(""));
        assert!(!valid_name("a_b"));
        assert!(!valid_name("a.b"));
        assert!(!valid_name(".."));
        assert!(valid_version("0123456789abcdef0123456789ABCDEF"));
        assert!(!valid_version("0123"));
    }

    #[test]
    fn names_differing_only_in_case_are_listed_once() {
        let at = |secs| Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs));
        let item = |name: &str, updated| ObjectProps {
            name: name.into(),
            updated,
            ..Default::default()
        };
        let (kept, dropped) = one_per_name(vec![
            item("db", at(10)),
            item("api", at(5)),
            item("DB", at(20)),
            item("Api", at(5)),
            item("dB", at(15)),
            item("other", None),
        ]);
        let names: Vec<&str> = kept.iter().map(|p| p.name.as_str()).collect();
        // The newest "db" in the first one's place; "api" ties, so the first seen stays.
        assert_eq!(names, ["DB", "api", "other"]);
        assert_eq!(dropped, ["db", "Api", "dB"]);
        let (kept, dropped) = one_per_name(vec![item("a", None), item("b", None)]);
        assert_eq!(kept.len(), 2);
        assert!(dropped.is_empty());
    }

    #[test]
    fn secret_debug_hides_the_value() {
        let s = SecretValue {
            props: ObjectProps::default(),
            value: b"hunter2".to_vec(),
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("<7 bytes>"));
    }
}
