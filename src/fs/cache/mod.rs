//! The cache between the filesystem core and a [`VaultClient`]: TTL freshness, single-flight
//! fetches, negative caching, stale-on-outage with backoff, a memory bound, revalidation by
//! listing, a background refresher and change events ([`Cache`] is its API).
//!
//! Its design, its modules and the constants that tune it are in doc/CACHE.md; what it promises
//! a user is in doc/SEMANTICS.md. Fetches run as tokio tasks, so the methods must be called on a
//! tokio runtime.

mod counters;
mod entry;
mod fetch;
mod flights;
mod read;
mod refresh;
mod request;
mod revalidate;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use tokio::time::Instant;

use super::error::FsError;
use crate::vault::clock::VaultClock;
use crate::vault::{
    CertificateValue, Collection, KeyValue, ObjectProps, SecretValue, VaultClient, VaultError,
    valid_name,
};
use counters::Counters;
use entry::{Fallback, Report, Slot};
use flights::{Flights, Mode};
use refresh::{HotEntry, Refreshable, Refresher};
use request::Held;
pub(super) use request::Request;

/// Bytes charged per entry on top of its value: the key, the entry struct, moka's bookkeeping.
/// Also makes negative and error entries (which hold no value) count against the byte bound.
pub(crate) const ENTRY_OVERHEAD: u64 = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CacheConfig {
    /// `--cache-ttl`: a value changed in the vault is served by every read that starts more than
    /// one TTL after the change.
    pub ttl: Duration,
    /// `--max-stale`: how long the last good value outlives an outage, measured from the start of
    /// its last successful fetch.
    pub max_stale: Duration,
    /// LRU bound on the number of entries.
    pub max_entries: u64,
    /// LRU bound on value bytes plus [`ENTRY_OVERHEAD`] per entry.
    pub max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: Duration::from_secs(60),
            max_stale: Duration::from_secs(24 * 3600),
            max_entries: 100_000,
            max_bytes: 256 << 20,
        }
    }
}

/// A cached answer and how long the kernel may keep it.
#[derive(Debug)]
pub(crate) struct Cached<T> {
    pub value: Arc<T>,
    /// Remaining freshness of the entry (zero when `stale`).
    pub valid_for: Duration,
    /// Served past its TTL because the vault is failing transiently.
    pub stale: bool,
}

// Manual impl: cloning shares the `Arc`, so `T` need not be `Clone`.
impl<T> Clone for Cached<T> {
    fn clone(&self) -> Self {
        Cached {
            value: Arc::clone(&self.value),
            valid_for: self.valid_for,
            stale: self.stale,
        }
    }
}

/// What changed in the vault, as a fetch found out: for the filesystem to drop exactly what
/// the kernel may hold of it. Never carries a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// The latest version of an object is another one than the cache held, or the object
    /// appeared, disappeared, was disabled or re-enabled. `name` as the vault (or, for a vanished
    /// object, the reader) spells it.
    Object {
        collection: Collection,
        name: String,
    },
    /// A collection's list names another set of enabled objects than the previous list did.
    Listing(Collection),
}

/// The function [`Cache::set_change_listener`] installs.
pub(crate) type ChangeListener = Arc<dyn Fn(Change) + Send + Sync>;

/// Vault call failures by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ErrorCounts {
    pub not_found: u64,
    pub disabled: u64,
    pub unauthorized: u64,
    pub forbidden: u64,
    pub throttled: u64,
    pub unavailable: u64,
    pub unexpected: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CacheStats {
    /// Requests answered from a fresh entry (values and cached `NotFound`/`Disabled`).
    pub hits: u64,
    /// Vault calls made.
    pub misses: u64,
    /// Requests that waited for a vault call another request had started.
    pub coalesced: u64,
    /// Requests answered with the last good answer past its TTL because of an outage.
    pub stale_served: u64,
    /// Requests answered with the last error, without a call, inside a retry interval.
    pub deferred_errors: u64,
    /// Entries made fresh again by a list that showed them unchanged, without a GET.
    pub revalidated: u64,
    /// Vault calls made ahead of expiry by the background refresher (also counted in `misses`).
    pub background_fetches: u64,
    /// Lists applied to the cached entries of their collection.
    pub list_revalidations: u64,
    /// Failed vault calls by kind (`NotFound`/`Disabled` included: they are answers too).
    pub errors: ErrorCounts,
    /// Entries held (moka's count: settles after its pending maintenance has run).
    pub entries: u64,
    /// Weighted size held: value bytes + overhead per entry, each at least
    /// `max_bytes / max_entries` (the weight that bounds the entry count).
    pub bytes: u64,
}

/// A cache in front of a vault client. Cloning is cheap and shares the cache.
#[derive(Clone)]
pub(crate) struct Cache {
    inner: Arc<Inner>,
}

impl fmt::Debug for Cache {
    /// Configuration and counters only: never a value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Cache {
    pub(crate) fn new(client: Arc<dyn VaultClient>, config: CacheConfig) -> Cache {
        Cache::with_wall_clock(client, config, SystemTime::now)
    }

    /// [`Cache::new`] with another wall clock than `SystemTime::now` (tests pass one that follows
    /// tokio's paused clock). The wall clock only serves to compare fetch times with the vault's
    /// `updated` timestamps; freshness is measured on tokio's monotonic clock.
    pub(crate) fn with_wall_clock(
        client: Arc<dyn VaultClient>,
        config: CacheConfig,
        wall: fn() -> SystemTime,
    ) -> Cache {
        // Every entry weighs at least `floor`, so `max_capacity(max_bytes)` also caps the count at
        // `max_entries`: one weighted LRU enforces both bounds.
        let floor = config.max_bytes.div_ceil(config.max_entries.max(1)).max(1);
        let slots = moka::future::Cache::builder()
            .max_capacity(config.max_bytes.max(1))
            .weigher(move |_key: &Request, slot: &Arc<Slot>| {
                let weight = slot.bytes.saturating_add(ENTRY_OVERHEAD).max(floor);
                u32::try_from(weight).unwrap_or(u32::MAX)
            })
            // Plain LRU: moka's default TinyLFU may refuse to admit a new entry, and a freshly
            // fetched secret is exactly what the next read wants.
            .eviction_policy(EvictionPolicy::lru())
            .build();
        let clock = client.clock().unwrap_or_default();
        Cache {
            inner: Arc::new(Inner {
                clock,
                client,
                refresher: Refresher::new(config.ttl),
                config,
                slots,
                flights: Flights::default(),
                counters: Counters::default(),
                wall,
                listener: OnceLock::new(),
                log_limits: crate::logging::RateLimiter::default(),
            }),
        }
    }

    /// Start the background refresher (see doc/CACHE.md): a tokio task that keeps entries that
    /// are being read fresh ahead of their expiry. Call it once, on a tokio runtime; later calls do
    /// nothing. The task holds the cache weakly and ends after the last `Cache` clone is dropped.
    pub(crate) fn start_refresher(&self) {
        Refresher::start(&self.inner);
    }

    /// Install the function told about every [`Change`] a fetch finds. It is called on the
    /// fetching task, outside any lock of the cache, and must not block. Only the first call
    /// installs; later ones are ignored (returns whether this one was installed).
    pub(crate) fn set_change_listener(&self, listener: ChangeListener) -> bool {
        self.inner.listener.set(listener).is_ok()
    }

    /// A secret's value: the latest version when `version` is `None`.
    pub(crate) async fn secret(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Cached<SecretValue>, VaultError> {
        self.typed(Request::object(Collection::Secrets, name, version)?)
            .await
    }

    /// A key's public JWK: the latest version when `version` is `None`.
    pub(crate) async fn key(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Cached<KeyValue>, VaultError> {
        self.typed(Request::object(Collection::Keys, name, version)?)
            .await
    }

    /// A certificate with its backing secret, both of one version (latest when `None`).
    pub(crate) async fn certificate(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Cached<CertificateValue>, VaultError> {
        self.typed(Request::object(Collection::Certificates, name, version)?)
            .await
    }

    /// Every object of a collection, latest metadata each.
    pub(crate) async fn list(
        &self,
        collection: Collection,
    ) -> Result<Cached<Vec<ObjectProps>>, VaultError> {
        self.typed(Request::List(collection)).await
    }

    /// Every version of one object (empty for an unknown name, as the vault answers).
    pub(crate) async fn versions(
        &self,
        collection: Collection,
        name: &str,
    ) -> Result<Cached<Vec<ObjectProps>>, VaultError> {
        if !valid_name(name) {
            return Err(VaultError::NotFound);
        }
        self.typed(Request::Versions(collection, name.to_owned()))
            .await
    }

    /// Let the cache finish its pending bookkeeping, so that [`Cache::stats`]'s entry count and
    /// size are current (moka settles them lazily, on later operations). For a metrics scrape.
    pub(crate) async fn settle(&self) {
        self.inner.slots.run_pending_tasks().await;
    }

    pub(crate) fn stats(&self) -> CacheStats {
        self.inner.counters.snapshot(
            self.inner.slots.entry_count(),
            self.inner.slots.weighted_size(),
        )
    }

    /// The answer for `request`, as the type its variant holds.
    async fn typed<T: Held>(&self, request: Request) -> Result<Cached<T>, VaultError> {
        let entry::Reply {
            value,
            valid_for,
            stale,
        } = self.get(request).await?;
        T::pick(value)
            .map(|value| Cached {
                value,
                valid_for,
                stale,
            })
            .ok_or_else(|| VaultError::Unexpected("cache entry of the wrong kind".into()))
    }

    /// A fixed seed for the refresher's jitter, so that a test's schedule is the same on every run.
    #[cfg(test)]
    pub(super) fn reseed_refresher(&self, seed: u64) {
        self.inner.refresher.reseed(seed);
    }
}

/// What [`Cache::prefetch`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Prefetched {
    /// The entry is fresh, or waits out a retry interval: nothing to do.
    Cached,
    /// A flight of the key is under way (a reader's, or an earlier prefetch): no second call.
    InFlight,
    /// Fetched: a value, or an answer that the object is missing or disabled.
    Fetched,
    /// The vault failed; nothing is left in the cache that a reader would get instead of asking.
    Failed(VaultError),
}

/// Prefetch (`super::prefetch`): fetches for values nobody has asked for yet, through the
/// single-flight map, as a reader or the refresher fetches.
impl Cache {
    /// Whether [`Cache::prefetch`] of `request` would call the vault now (no entry that answers,
    /// no flight). A hint: a reader may start the fetch a moment later.
    pub(super) async fn prefetch_needed(&self, request: &Request) -> bool {
        let key = request.key();
        if let Some(slot) = self.inner.slots.get(&key).await
            && !slot.wants_fetch(Instant::now(), self.inner.config.ttl)
        {
            return false;
        }
        !self.inner.flights.in_flight(&key)
    }

    /// Fetch `request` for a reader to come, through the single-flight map (a reader of the key
    /// joins this flight, and this joins a reader's). The entry is stored as a background fetch
    /// stores it: not read, so the refresher does not keep a value nobody read fresh, and the
    /// LRU may drop it. A failure leaves no entry behind that holds only the error (a reader
    /// then asks the vault itself rather than getting an error it never met); an entry with a
    /// last good value keeps it, as after a failed refresh.
    pub(super) async fn prefetch(&self, request: Request) -> Prefetched {
        let inner = &self.inner;
        let key = request.key();
        let now = Instant::now();
        if let Some(slot) = inner.slots.get(&key).await
            && !slot.wants_fetch(now, inner.config.ttl)
        {
            return Prefetched::Cached;
        }
        let Some(flight) = inner.start_background(request, now) else {
            return Prefetched::InFlight;
        };
        match flight.await {
            Ok(_) | Err(VaultError::NotFound | VaultError::Disabled) => Prefetched::Fetched,
            Err(error) => {
                inner
                    .slots
                    .entry(key)
                    .and_compute_with(|current| {
                        let drop_it = current.as_ref().is_some_and(|e| {
                            let slot = e.value();
                            slot.known.is_none() && !slot.is_hot() && slot.as_of == now
                        });
                        std::future::ready(if drop_it { Op::Remove } else { Op::Nop })
                    })
                    .await;
                Prefetched::Failed(error)
            }
        }
    }
}

/// The state all clones of a [`Cache`] share.
struct Inner {
    client: Arc<dyn VaultClient>,
    config: CacheConfig,
    /// Bounded LRU of the cached states. Its TTL features are not used: expiry here does not
    /// evict (a stale value is what an outage serves), and moka's clock is not tokio's.
    slots: moka::future::Cache<Request, Arc<Slot>>,
    flights: Flights,
    counters: Counters,
    /// Wall clock (`SystemTime::now` but in tests).
    wall: fn() -> SystemTime,
    /// The vault's clock as its answers show it: the client's, which sees `Date` headers, fed
    /// here with the `updated` stamps of what the cache receives.
    clock: Arc<VaultClock>,
    listener: OnceLock<ChangeListener>,
    refresher: Refresher,
    /// Outage lines are once per object per outage; across objects (every secret of a vault that
    /// went away) they are a few a minute per kind, with a count.
    log_limits: crate::logging::RateLimiter,
}

impl Inner {
    /// Log and count what settling a fetch of `object` reports (doc/CACHE.md lists the lines).
    /// Here in the module root, not in a submodule, so that the lines keep the target
    /// `kvfs::fs::cache` that `KVFS_LOG` filters and JSON lines carry.
    fn record(&self, object: &Request, mode: Mode, report: &Report) {
        // The fields every outage line carries (`--log-format json` filters on them).
        let kind = object.collection().as_str();
        let errno = |error: &VaultError| FsError::from(error.clone()).errno_name();
        match report {
            Report::Answered { ended_outage: None } => {}
            Report::Answered {
                ended_outage: Some(outage),
            } => {
                tracing::info!(object = %object, outage = ?outage, "vault answers again");
            }
            Report::Refused {
                error,
                new_condition,
            } => {
                if *new_condition {
                    let errno = errno(error);
                    crate::log_limited!(self.log_limits, "vault refused", error,
                        kind,
                        object = %object,
                        op = "get",
                        errno,
                        cause = %error,
                        "vault refused the request; not serving a cached value for it"
                    );
                }
            }
            Report::Failing {
                error,
                new_condition,
                retry_in,
                fallback,
            } => {
                match fallback {
                    Fallback::Stale { age } => {
                        if *new_condition {
                            crate::log_limited!(self.log_limits, "vault failing, served stale", warn,
                                kind,
                                object = %object,
                                op = "get",
                                cause = %error,
                                age = ?age,
                                retry_in = ?retry_in,
                                "vault failing; serving the last good answer until it recovers or --max-stale passes"
                            );
                        }
                        if mode == Mode::Reader {
                            Counters::bump(&self.counters.stale_served);
                        }
                    }
                    Fallback::Expired { first } => {
                        if *first {
                            let errno = errno(error);
                            crate::log_limited!(self.log_limits, "vault failing, too stale", warn,
                                kind,
                                object = %object,
                                op = "get",
                                errno,
                                cause = %error,
                                "vault failing and the last good answer is older than --max-stale; reads fail until it recovers"
                            );
                        }
                    }
                    Fallback::Nothing => {
                        if *new_condition {
                            let errno = errno(error);
                            crate::log_limited!(self.log_limits, "vault failing, nothing cached", warn,
                                kind,
                                object = %object,
                                op = "get",
                                errno,
                                cause = %error,
                                "vault failing and nothing cached for this object; reads fail (EIO) until it recovers"
                            );
                        }
                    }
                }
                if !new_condition {
                    tracing::debug!(object = %object, retry_in = ?retry_in, "vault still failing");
                }
            }
        }
    }
}

/// What the refresher sees of the cache.
impl Refreshable for Inner {
    fn refresher(&self) -> &Refresher {
        &self.refresher
    }

    fn hot_entries(&self, due: &dyn Fn(Collection, Instant) -> bool) -> Vec<HotEntry> {
        self.slots
            .iter()
            .filter(|(_, slot)| slot.is_hot())
            .filter_map(|(key, slot)| {
                // Nothing known (never fetched, or access revoked): readers drive those.
                let fetched_at = slot.known.as_ref()?.fetched_at;
                (due(key.collection(), fetched_at) && !self.flights.in_flight(&key)).then(|| {
                    HotEntry {
                        request: slot.request.clone(),
                        fetched_at,
                    }
                })
            })
            .collect()
    }

    fn refresh(self: &Arc<Self>, request: Request) {
        // Nobody waits here: the spawned task runs on its own (readers may join it via the map).
        self.start_background(request, Instant::now());
    }
}
