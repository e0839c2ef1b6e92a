//! An in-memory vault for tests of the cache and filesystem core: versions, enable/disable,
//! managed objects, call counters, a delay and an injectable failure.
//!
//! Its clock is [`wall_clock`]: wall time that moves with tokio's clock (so a paused test clock
//! that is advanced moves it too), and `updated`/`created` are whole seconds, as Key Vault's are.
//! [`MemoryVault::set_clock_skew`] puts the vault's clock ahead of or behind that; every call
//! reports a `Date` (whole seconds of the vault's clock) to [`VaultClient::clock`], as the real
//! vault's answers do through the transport.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::clock::VaultClock;
use super::{
    CertificateValue, Collection, KeyValue, ObjectProps, SecretValue, VaultClient, VaultError,
};

/// Wall-clock time that follows tokio's clock: the system time when first called, plus however
/// far tokio's clock has moved since (in a test with a paused clock, what `advance` added).
pub(crate) fn wall_clock() -> SystemTime {
    static ANCHOR: OnceLock<(SystemTime, std::time::Instant)> = OnceLock::new();
    let (wall, instant) = *ANCHOR.get_or_init(|| (SystemTime::now(), std::time::Instant::now()));
    let now = tokio::time::Instant::now().into_std();
    match now.checked_duration_since(instant) {
        Some(ahead) => wall + ahead,
        None => wall - instant.duration_since(now),
    }
}

/// `t` truncated to whole seconds, the resolution of Key Vault's timestamps.
fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[derive(Default)]
struct Inner {
    /// Keyed by upper-cased name (names compare case-insensitively); versions in creation order.
    secrets: BTreeMap<String, Vec<SecretValue>>,
    keys: BTreeMap<String, Vec<KeyValue>>,
    certificates: BTreeMap<String, Vec<CertificateValue>>,
    failure: Option<VaultError>,
    /// Failures of one operation only (`list`, `get_secret`, …), checked before `failure`.
    op_failures: BTreeMap<&'static str, VaultError>,
    delay: Duration,
    calls: BTreeMap<&'static str, u64>,
    next_version: u64,
    /// The vault's clock minus [`wall_clock`], in milliseconds.
    skew_ms: i64,
    /// Whether calls report a `Date` to the clock.
    dates: bool,
}

pub(crate) struct MemoryVault {
    inner: Mutex<Inner>,
    clock: Arc<VaultClock>,
}

impl Default for MemoryVault {
    fn default() -> Self {
        MemoryVault {
            inner: Mutex::new(Inner {
                dates: true,
                ..Inner::default()
            }),
            clock: Arc::new(VaultClock::new()),
        }
    }
}

impl MemoryVault {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Put the vault's clock (its `updated` stamps and `Date`s) `ms` milliseconds ahead of
    /// [`wall_clock`] (behind when negative).
    pub(crate) fn set_clock_skew(&self, ms: i64) {
        self.inner.lock().skew_ms = ms;
    }

    /// Whether calls report a `Date` (on by default; off is a vault whose clock kvfs cannot see).
    pub(crate) fn set_dates(&self, on: bool) {
        self.inner.lock().dates = on;
    }

    /// The vault's clock now.
    fn vault_now(skew_ms: i64) -> SystemTime {
        let skew = Duration::from_millis(skew_ms.unsigned_abs());
        if skew_ms >= 0 {
            wall_clock() + skew
        } else {
            wall_clock() - skew
        }
    }

    /// The vault's clock in whole seconds (the caller holds the lock).
    fn now_seconds(inner: &Inner) -> SystemTime {
        whole_seconds(Self::vault_now(inner.skew_ms))
    }

    /// Add a version; returns its id.
    pub(crate) fn set_secret(&self, name: &str, value: &[u8]) -> String {
        let mut inner = self.inner.lock();
        inner.next_version += 1;
        let version = format!("{:032x}", inner.next_version);
        let now = Self::now_seconds(&inner);
        let key = name.to_ascii_uppercase();
        let stored_name = inner
            .secrets
            .get(&key)
            .and_then(|v| v.first())
            .map(|s| s.props.name.clone())
            .unwrap_or_else(|| name.to_string());
        let secret = SecretValue {
            props: ObjectProps {
                name: stored_name,
                version: Some(version.clone()),
                enabled: true,
                created: Some(now),
                updated: Some(now),
                content_type: Some("text/plain".into()),
                ..Default::default()
            },
            value: value.to_vec(),
        };
        inner.secrets.entry(key).or_default().push(secret);
        version
    }

    fn latest_mut<'a>(inner: &'a mut Inner, name: &str) -> Option<&'a mut SecretValue> {
        inner
            .secrets
            .get_mut(&name.to_ascii_uppercase())
            .and_then(|v| v.last_mut())
    }

    fn new_props(inner: &mut Inner, name: &str) -> ObjectProps {
        inner.next_version += 1;
        let now = Self::now_seconds(inner);
        ObjectProps {
            name: name.to_string(),
            version: Some(format!("{:032x}", inner.next_version)),
            enabled: true,
            created: Some(now),
            updated: Some(now),
            ..Default::default()
        }
    }

    /// Add a key version with this public JWK; returns its version id.
    pub(crate) fn set_key(&self, name: &str, jwk: serde_json::Value) -> String {
        let mut inner = self.inner.lock();
        let props = Self::new_props(&mut inner, name);
        let version = props.version.clone().unwrap_or_default();
        inner
            .keys
            .entry(name.to_ascii_uppercase())
            .or_default()
            .push(KeyValue { props, jwk });
        version
    }

    /// Add a certificate version: the leaf's DER and its backing secret's (content type, value).
    pub(crate) fn set_certificate(
        &self,
        name: &str,
        cer: Vec<u8>,
        secret: Option<(&str, &str)>,
    ) -> String {
        let mut inner = self.inner.lock();
        let props = Self::new_props(&mut inner, name);
        let version = props.version.clone().unwrap_or_default();
        let secret = secret.map(|(ct, value)| SecretValue {
            props: ObjectProps {
                content_type: Some(ct.to_string()),
                managed: true,
                ..props.clone()
            },
            value: value.as_bytes().to_vec(),
        });
        inner
            .certificates
            .entry(name.to_ascii_uppercase())
            .or_default()
            .push(CertificateValue { props, cer, secret });
        version
    }

    pub(crate) fn set_enabled(&self, name: &str, enabled: bool) {
        let mut inner = self.inner.lock();
        let now = Self::now_seconds(&inner);
        if let Some(s) = Self::latest_mut(&mut inner, name) {
            s.props.enabled = enabled;
            s.props.updated = Some(now);
        }
    }

    pub(crate) fn set_managed(&self, name: &str) {
        let mut inner = self.inner.lock();
        if let Some(s) = Self::latest_mut(&mut inner, name) {
            s.props.managed = true;
        }
    }

    pub(crate) fn set_tag(&self, name: &str, key: &str, value: &str) {
        let mut inner = self.inner.lock();
        if let Some(s) = Self::latest_mut(&mut inner, name) {
            s.props.tags.insert(key.into(), value.into());
        }
    }

    pub(crate) fn remove(&self, name: &str) {
        self.inner.lock().secrets.remove(&name.to_ascii_uppercase());
    }

    /// Every call fails with this error until cleared with `None`.
    pub(crate) fn fail_with(&self, failure: Option<VaultError>) {
        self.inner.lock().failure = failure;
    }

    /// Every call of `op` fails with this error until cleared with `None` (an identity that
    /// may get secrets but not list them: `fail_op("list", Some(Forbidden(..)))`).
    pub(crate) fn fail_op(&self, op: &'static str, failure: Option<VaultError>) {
        let mut inner = self.inner.lock();
        match failure {
            Some(e) => inner.op_failures.insert(op, e),
            None => inner.op_failures.remove(op),
        };
    }

    /// Every call waits this long first (so concurrent callers overlap).
    pub(crate) fn set_delay(&self, delay: Duration) {
        self.inner.lock().delay = delay;
    }

    /// How many times an operation was called (`list`, `list_versions`, `get_secret`).
    pub(crate) fn calls(&self, op: &str) -> u64 {
        self.inner.lock().calls.get(op).copied().unwrap_or(0)
    }

    async fn enter(&self, op: &'static str) -> Result<(), VaultError> {
        let delay = {
            let mut inner = self.inner.lock();
            *inner.calls.entry(op).or_default() += 1;
            inner.delay
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let inner = self.inner.lock();
        if inner.dates {
            let date = whole_seconds(Self::vault_now(inner.skew_ms));
            self.clock.observe_date(date, tokio::time::Instant::now());
        }
        match inner.op_failures.get(op).or(inner.failure.as_ref()) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl VaultClient for MemoryVault {
    fn clock(&self) -> Option<Arc<VaultClock>> {
        Some(Arc::clone(&self.clock))
    }

    async fn list(&self, collection: Collection) -> Result<Vec<ObjectProps>, VaultError> {
        self.enter("list").await?;
        let inner = self.inner.lock();
        let base = |p: &ObjectProps| ObjectProps {
            version: None,
            ..p.clone()
        };
        Ok(match collection {
            Collection::Secrets => inner
                .secrets
                .values()
                .filter_map(|v| v.last().map(|s| base(&s.props)))
                .collect(),
            Collection::Keys => inner
                .keys
                .values()
                .filter_map(|v| v.last().map(|k| base(&k.props)))
                .collect(),
            Collection::Certificates => inner
                .certificates
                .values()
                .filter_map(|v| v.last().map(|c| base(&c.props)))
                .collect(),
        })
    }

    async fn list_versions(
        &self,
        collection: Collection,
        name: &str,
    ) -> Result<Vec<ObjectProps>, VaultError> {
        self.enter("list_versions").await?;
        let inner = self.inner.lock();
        let key = name.to_ascii_uppercase();
        Ok(match collection {
            Collection::Secrets => inner
                .secrets
                .get(&key)
                .map(|v| v.iter().map(|s| s.props.clone()).collect()),
            Collection::Keys => inner
                .keys
                .get(&key)
                .map(|v| v.iter().map(|k| k.props.clone()).collect()),
            Collection::Certificates => inner
                .certificates
                .get(&key)
                .map(|v| v.iter().map(|c| c.props.clone()).collect()),
        }
        .unwrap_or_default())
    }

    async fn get_secret(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<SecretValue, VaultError> {
        self.enter("get_secret").await?;
        let inner = self.inner.lock();
        let versions = inner
            .secrets
            .get(&name.to_ascii_uppercase())
            .ok_or(VaultError::NotFound)?;
        let found = match version {
            None => versions.last(),
            Some(v) => versions
                .iter()
                .find(|s| s.props.version.as_deref() == Some(v)),
        }
        .ok_or(VaultError::NotFound)?;
        if !found.props.enabled {
            return Err(VaultError::Disabled);
        }
        Ok(found.clone())
    }

    async fn get_key(&self, name: &str, version: Option<&str>) -> Result<KeyValue, VaultError> {
        self.enter("get_key").await?;
        let inner = self.inner.lock();
        let versions = inner
            .keys
            .get(&name.to_ascii_uppercase())
            .ok_or(VaultError::NotFound)?;
        pick(versions, version, |k| &k.props).cloned()
    }

    async fn get_certificate(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<CertificateValue, VaultError> {
        self.enter("get_certificate").await?;
        let inner = self.inner.lock();
        let versions = inner
            .certificates
            .get(&name.to_ascii_uppercase())
            .ok_or(VaultError::NotFound)?;
        pick(versions, version, |c| &c.props).cloned()
    }
}

/// The latest or the asked-for version (keys and certificates stay readable when disabled, as
/// in Key Vault: only their `enabled` attribute says so).
fn pick<'a, T>(
    versions: &'a [T],
    version: Option<&str>,
    props: impl Fn(&T) -> &ObjectProps,
) -> Result<&'a T, VaultError> {
    match version {
        None => versions.last(),
        Some(v) => versions
            .iter()
            .find(|x| props(x).version.as_deref() == Some(v)),
    }
    .ok_or(VaultError::NotFound)
}
