//! Helpers shared by the cache's unit tests.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{Cache, CacheConfig, Change};
use crate::vault::memory::{MemoryVault, wall_clock};
use crate::vault::{Collection, VaultError};

pub(super) const TTL: Duration = Duration::from_secs(60);
/// Objects written this long before they are first read are not ambiguous.
pub(super) const AGED: Duration = Duration::from_secs(120);

/// A cache of a fresh in-memory vault whose wall clock follows tokio's (paused) clock, so that
/// lists can vouch for values, and whose refresh jitter is the same on every run.
pub(super) fn refreshing(ttl: Duration) -> (Arc<MemoryVault>, Cache) {
    let vault = Arc::new(MemoryVault::new());
    let cache = Cache::with_wall_clock(
        vault.clone(),
        CacheConfig {
            ttl,
            max_stale: Duration::from_secs(3600),
            ..CacheConfig::default()
        },
        wall_clock,
    );
    cache.reseed_refresher(7);
    (vault, cache)
}

/// The changes the cache reports from now on.
pub(super) fn listen(cache: &Cache) -> Arc<Mutex<Vec<Change>>> {
    let changes = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&changes);
    assert!(cache.set_change_listener(Arc::new(move |c| sink.lock().push(c))));
    changes
}

/// The latest value of secret `name`.
pub(super) async fn read(cache: &Cache, name: &str) -> Result<Vec<u8>, VaultError> {
    cache
        .secret(name, None)
        .await
        .map(|c| c.value.value.clone())
}

/// Let spawned tasks (flights) run up to their next timer, without moving the clock.
pub(super) async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

pub(super) fn secret(name: &str) -> Change {
    Change::Object {
        collection: Collection::Secrets,
        name: name.into(),
    }
}

/// A [`refreshing`] cache with a TTL of [`TTL`], of a vault holding `n` secrets (as
/// [`put_secrets`] writes them) written [`AGED`] ago, its refresher started.
pub(super) async fn aged_secrets(
    n: usize,
    value: impl Fn(usize) -> String,
) -> (Arc<MemoryVault>, Cache) {
    let (vault, cache) = refreshing(TTL);
    put_secrets(&vault, n, value);
    tokio::time::sleep(AGED).await;
    cache.start_refresher();
    (vault, cache)
}

/// Secrets `s0`, `s1`, … of `vault`, `n` of them, each holding `value(i)`.
pub(super) fn put_secrets(vault: &MemoryVault, n: usize, value: impl Fn(usize) -> String) {
    for i in 0..n {
        vault.set_secret(&format!("s{i}"), value(i).as_bytes());
    }
}
