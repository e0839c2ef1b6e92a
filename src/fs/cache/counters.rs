//! The cache's counters, bumped as it works and read by [`super::Cache::stats`].

use std::sync::atomic::{AtomicU64, Ordering};

use super::{CacheStats, ErrorCounts};
use crate::vault::VaultError;

/// One counter per field of [`CacheStats`] that counts events (see there for their meaning).
#[derive(Default)]
pub(super) struct Counters {
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) coalesced: AtomicU64,
    pub(super) stale_served: AtomicU64,
    pub(super) deferred_errors: AtomicU64,
    pub(super) revalidated: AtomicU64,
    pub(super) background_fetches: AtomicU64,
    pub(super) list_revalidations: AtomicU64,
    not_found: AtomicU64,
    disabled: AtomicU64,
    unauthorized: AtomicU64,
    forbidden: AtomicU64,
    throttled: AtomicU64,
    unavailable: AtomicU64,
    unexpected: AtomicU64,
}

impl Counters {
    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A failed vault call, by kind.
    pub(super) fn error(&self, e: &VaultError) {
        Self::bump(match e {
            VaultError::NotFound => &self.not_found,
            VaultError::Disabled => &self.disabled,
            VaultError::Unauthorized(_) => &self.unauthorized,
            VaultError::Forbidden(_) => &self.forbidden,
            VaultError::Throttled => &self.throttled,
            VaultError::Unavailable(_) => &self.unavailable,
            VaultError::Unexpected(_) => &self.unexpected,
        });
    }

    /// The counts, with the size of the cache as its LRU reports it.
    pub(super) fn snapshot(&self, entries: u64, bytes: u64) -> CacheStats {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            hits: n(&self.hits),
            misses: n(&self.misses),
            coalesced: n(&self.coalesced),
            stale_served: n(&self.stale_served),
            deferred_errors: n(&self.deferred_errors),
            revalidated: n(&self.revalidated),
            background_fetches: n(&self.background_fetches),
            list_revalidations: n(&self.list_revalidations),
            errors: ErrorCounts {
                not_found: n(&self.not_found),
                disabled: n(&self.disabled),
                unauthorized: n(&self.unauthorized),
                forbidden: n(&self.forbidden),
                throttled: n(&self.throttled),
                unavailable: n(&self.unavailable),
                unexpected: n(&self.unexpected),
            },
            entries,
            bytes,
        }
    }
}
