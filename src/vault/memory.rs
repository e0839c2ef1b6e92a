//! An in-memory vault for tests of the cache and filesystem core: versions, enable/disable,
//! managed objects, call counters, a delay and an injectable failure.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{Collection, ObjectProps, SecretValue, VaultClient, VaultError};

#[derive(Default)]
struct Inner {
    /// Keyed by upper-cased name (names compare case-insensitively); versions in creation order.
    secrets: BTreeMap<String, Vec<SecretValue>>,
    failure: Option<VaultError>,
    delay: Duration,
    calls: BTreeMap<&'static str, u64>,
    next_version: u64,
}

#[derive(Default)]
pub struct MemoryVault {
    inner: Mutex<Inner>,
}

impl MemoryVault {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a version; returns its id.
    pub fn set_secret(&self, name: &str, value: &[u8]) -> String {
        let mut inner = self.inner.lock();
        inner.next_version += 1;
        let version = format!("{:032x}", inner.next_version);
        let now = SystemTime::now();
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

    pub fn set_enabled(&self, name: &str, enabled: bool) {
        let mut inner = self.inner.lock();
        if let Some(s) = Self::latest_mut(&mut inner, name) {
            s.props.enabled = enabled;
            s.props.updated = Some(SystemTime::now());
        }
    }

    pub fn set_managed(&self, name: &str) {
        let mut inner = self.inner.lock();
        if let Some(s) = Self::latest_mut(&mut inner, name) {
            s.props.managed = true;
        }
    }

    pub fn set_tag(&self, name: &str, key: &str, value: &str) {
        let mut inner = self.inner.lock();
        if let Some(s) = Self::latest_mut(&mut inner, name) {
            s.props.tags.insert(key.into(), value.into());
        }
    }

    pub fn remove(&self, name: &str) {
        self.inner.lock().secrets.remove(&name.to_ascii_uppercase());
    }

    /// Every call fails with this error until cleared with `None`.
    pub fn fail_with(&self, failure: Option<VaultError>) {
        self.inner.lock().failure = failure;
    }

    /// Every call waits this long first (so concurrent callers overlap).
    pub fn set_delay(&self, delay: Duration) {
        self.inner.lock().delay = delay;
    }

    /// How many times an operation was called (`list`, `list_versions`, `get_secret`).
    pub fn calls(&self, op: &str) -> u64 {
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
        match &self.inner.lock().failure {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl VaultClient for MemoryVault {
    async fn list(&self, collection: Collection) -> Result<Vec<ObjectProps>, VaultError> {
        self.enter("list").await?;
        if collection != Collection::Secrets {
            return Ok(Vec::new());
        }
        let inner = self.inner.lock();
        Ok(inner
            .secrets
            .values()
            .filter_map(|versions| versions.last())
            .map(|s| ObjectProps {
                version: None,
                ..s.props.clone()
            })
            .collect())
    }

    async fn list_versions(
        &self,
        collection: Collection,
        name: &str,
    ) -> Result<Vec<ObjectProps>, VaultError> {
        self.enter("list_versions").await?;
        if collection != Collection::Secrets {
            return Ok(Vec::new());
        }
        let inner = self.inner.lock();
        Ok(inner
            .secrets
            .get(&name.to_ascii_uppercase())
            .map(|v| v.iter().map(|s| s.props.clone()).collect())
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
}
