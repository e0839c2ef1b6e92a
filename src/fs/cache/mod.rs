//! The cache between the filesystem core and a [`VaultClient`]: TTL freshness, single-flight
//! fetches, negative caching, stale-on-outage with backoff, a memory bound, revalidation by
//! listing, a background refresher and change events.
//!
//! # API
//!
//! ```text
//! Cache::new(client: Arc<dyn VaultClient>, config: CacheConfig) -> Cache      (Clone: shares state)
//! Cache::with_wall_clock(client, config, wall: fn() -> SystemTime) -> Cache   (tests)
//! cache.secret(name, version: Option<&str>).await -> Result<Cached<SecretValue>, VaultError>
//! cache.key(..), cache.certificate(..)            (the same, for keys and certificates)
//! cache.list(collection).await                    -> Result<Cached<Vec<ObjectProps>>, VaultError>
//! cache.versions(collection, name).await          -> Result<Cached<Vec<ObjectProps>>, VaultError>
//! cache.stats()                                   -> CacheStats
//! cache.start_refresher()                         (once, on a tokio runtime)
//! cache.set_change_listener(Arc<dyn Fn(Change)>)  -> bool (installed; only the first call is)
//! Cached<T> { value: Arc<T>, valid_for: Duration, stale: bool }
//! Change::Object { collection, name } | Change::Listing(collection)
//! ```
//!
//! `Cached::valid_for` is the *remaining validity*: how long the kernel may cache what was just
//! returned. It is `ttl - age` of the entry (age measured from the **start** of the fetch, or of
//! the list that renewed it) and zero for a stale value, so the kernel never caches longer than
//! this cache does. An open file keeps its `Arc<SecretValue>` as its snapshot.
//!
//! # Semantics
//!
//! - Keys: object names compare case-insensitively (`DB-Password` and `db-password` are one entry);
//!   the latest value and each explicit version are separate entries; lists and version lists
//!   are entries of their own. Names or versions the vault cannot have are `NotFound` at once.
//! - Fresh (`age < ttl`): answered without a vault call. Age counts from the start of the fetch, so
//!   a read that starts more than one TTL after a change never gets a value fetched before it.
//! - Single flight: callers of a key that needs fetching share one vault call, cold or refresh.
//!   A caller does not join a flight that started more than a TTL ago (it could only return a
//!   value older than the contract allows); it starts the next one, which later callers join.
//! - Patience: a caller that has a last answer (within `max_stale`) waits for a refresh at most
//!   [`READER_PATIENCE`] (2 s) counted from the start of the flight, then gets the last answer
//!   marked `stale` (`valid_for` zero); the flight goes on and stores its answer for the next
//!   read. Such a caller never starts a flight beside one still running that is older than a
//!   TTL: it gets the last answer at once. So a slow vault delays no read of a known value by
//!   more than 2 s, at the price of the freshness bound above while a refresh is that slow.
//! - `NotFound`/`Disabled` are cached like values, for the TTL.
//! - Transient errors (`Throttled`, `Unavailable`): the last answer (value or `NotFound`) is served
//!   as long as `now - last successful fetch <= max_stale`, marked `stale` with `valid_for` zero.
//!   The next attempt waits a retry interval: `min(ttl, 5 s)` (at least 1 s), doubling per failed
//!   attempt up to `max(ttl, that first interval)`. Reads inside the interval get the stale value (or
//!   the error) without a call, and while a retry is in flight other readers get the stale value
//!   at once instead of waiting for a vault that may hang. One warning per object per outage.
//!   Past `max_stale`, or with nothing ever fetched, the error is returned (the fs maps it to EIO).
//! - `Unauthorized`/`Forbidden`/`Unexpected`: returned at once and the cached value is dropped
//!   (access was revoked, or the vault answers nonsense: stop serving). Logged once per condition
//!   with the message, which names the missing role or permission; retried with the same backoff,
//!   except `Unauthorized`, retried after a flat `MIN_RETRY`: the token cache paces the vault and
//!   the token endpoint after a refused token, and the object should recover as soon as it has a
//!   good one.
//! - Memory: LRU bounded by entries and bytes (see [`ENTRY_OVERHEAD`]). An evicted entry loses its
//!   last good value, so it cannot be served stale in an outage.
//! - Values never reach logs or `Debug` output: logs name the object and the error only.
//!
//! # Revalidation by listing
//!
//! A list item carries no version id, only the name and the latest version's `updated`,
//! `enabled`, `contentType` and `tags`, so one list call (25 objects a page) can vouch for many
//! cached latest-version entries. After every successful `List(collection)` fetch that started at
//! `L` (a reader's or the refresher's), each cached latest-version entry of that collection that
//! was fetched (or last renewed) before `L` is judged against its item (names compared
//! case-insensitively):
//!
//! - a value whose item has the same `updated`, `enabled`, `contentType` and `tags`, with its
//!   `updated` second over by the time the vault's clock surely showed when the GET that fetched
//!   it started (`crate::vault::clock`: learnt from `Date` headers and stamps, a minute of margin
//!   while nothing is known), is unchanged: the entry is **renewed**, fresh as of `L`, without a
//!   GET. `updated` has 1-second resolution: a version written in the same second as the fetch
//!   would look the same. (A certificate's `contentType` is compared only when its item carries
//!   one; it does not.)
//! - a cached `NotFound` whose name is not listed, or a cached `Disabled` whose item is still
//!   `enabled: false`, is renewed the same way.
//! - anything else (changed, too recent to tell, deleted, a `NotFound` now listed, a `Disabled`
//!   now enabled) is not renewed; a hot entry (below) is refetched in the background at once, a
//!   cold one expires normally (a cold `NotFound` now listed is dropped, so the next read fetches).
//! - Only hot entries are renewed: renewing is a write, which would keep unread entries at the
//!   head of the LRU; a cold entry read after its expiry is fetched as before.
//! - A renewal never replaces another state than the one judged (a fetch that stored meanwhile
//!   wins), and it ends a transient outage of the entry (the list proves the value current).
//!
//! Renewal keeps the contract: the list read the vault after `L`, so a change before `L` shows in
//! it (or makes the entry ambiguous), and the renewed entry counts its age from `L`.
//!
//! # Background refresher
//!
//! `start_refresher` spawns a task (holding the cache weakly; it ends once the last `Cache` clone
//! is dropped) that wakes every `clamp(ttl / 20, 50 ms, 5 s)`. An entry is **hot** if it was read
//! (answered from the cache, or fetched for a reader) since its state was stored or renewed; only
//! hot entries with a known answer are refreshed, cold ones expire and the LRU evicts them. Per
//! collection and refresh cycle a jitter `j` is drawn uniformly from [0.60, 0.80] (so a fleet
//! does not refresh in lockstep); hot entries older than `ttl × j` are due:
//!
//! - due latest-version entries: by one `List(collection)` fetch, which revalidates as above and
//!   refetches the hot entries it shows changed, unless there are no more of them than the pages
//!   the last list of the collection took (`ceil(len / 25)`) or the vault refuses lists (403: an
//!   identity with `get` but not `list`; listing is tried again after `max(ttl, 10 min)`). Then
//!   they are fetched one GET each, and only once expired: one GET per object per TTL at most,
//!   as a client polling each object would make (a reader that finds one expired first fetches
//!   it itself, and the refresher skips it).
//! - A reader of an expired latest-version entry whose collection's list is in flight (started
//!   after the entry's state) waits for that list, up to [`READER_PATIENCE`], instead of sending
//!   a GET: the list renews the entry or starts its refetch, which the reader then joins.
//! - a due `List` entry is refreshed by its own fetch (which also revalidates); due explicit
//!   versions and version lists are refetched each.
//! - Background fetches go through the single-flight map (one flight per key; a reader whose
//!   entry expires while one runs joins it) but start although the entry is still fresh: readers
//!   keep getting the cached value at once meanwhile, so warm reads never wait on the network.
//! - A transient failure (`Throttled`, `Unavailable`) of a background fetch puts the collection
//!   in an outage: no background fetch of it before a retry time drawn with full jitter from
//!   `[0, interval]`, the interval starting at `min(ttl, 5 s)` and doubling up to `max(ttl, 5 s)`
//!   (`Retry-After` is not used). During that outage, readers of entries with a last good answer
//!   within `max_stale` get it stale at once instead of each making a call (the refresher retries
//!   for them: the read makes the entry hot). Any answer from the vault ends the outage. The
//!   failing request logs its one warning per outage, as above.
//!
//! # Change events
//!
//! `set_change_listener` installs a function told, outside any lock and never with a value,
//! `Change::Object { collection, name }` when a fetch of a latest-version entry (a reader's or a
//! background one) stores an answer other than the one the entry held (another version, or a
//! value became `NotFound`/`Disabled` or back), and `Change::Listing(collection)` when a list
//! names another set of enabled objects than the list it replaces. A first fetch (nothing held)
//! tells nothing.
//!
//! Fetches run as tokio tasks (`tokio::spawn`), so the methods must be called on a tokio runtime.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::mem::discriminant;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::error::FsError;
use super::refresh::Refresher;
use crate::vault::clock::VaultClock;
use crate::vault::{
    CertificateValue, Collection, KeyValue, ObjectProps, SecretValue, VaultClient, VaultError,
    valid_name, valid_version,
};

/// Bytes charged per entry on top of its value: the key, the entry struct, moka's bookkeeping.
/// Also makes negative and error entries (which hold no value) count against the byte bound.
pub const ENTRY_OVERHEAD: u64 = 256;

/// The first retry interval after a failed fetch is `min(ttl, this)`.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// However short the TTL, an object is not retried more than once per this interval in an outage.
const MIN_RETRY: Duration = Duration::from_secs(1);
/// How long a reader that has a last answer waits for a refresh of it, counted from the start of
/// the refresh: a slow vault delays a read by at most this, then the read gets the last answer.
pub const READER_PATIENCE: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
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
pub struct Cached<T> {
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
pub enum Change {
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
pub type ChangeListener = Arc<dyn Fn(Change) + Send + Sync>;

/// Vault call failures by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    pub not_found: u64,
    pub disabled: u64,
    pub unauthorized: u64,
    pub forbidden: u64,
    pub throttled: u64,
    pub unavailable: u64,
    pub unexpected: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
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
pub struct Cache {
    pub(super) inner: Arc<Inner>,
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
    pub fn new(client: Arc<dyn VaultClient>, config: CacheConfig) -> Cache {
        Cache::with_wall_clock(client, config, SystemTime::now)
    }

    /// [`Cache::new`] with another wall clock than `SystemTime::now` (tests pass one that follows
    /// tokio's paused clock). The wall clock only serves to compare fetch times with the vault's
    /// `updated` timestamps; freshness is measured on tokio's monotonic clock.
    pub fn with_wall_clock(
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
                config,
                slots,
                flights: Mutex::new(HashMap::new()),
                next_flight: AtomicU64::new(0),
                counters: Counters::default(),
                wall,
                listener: OnceLock::new(),
                refresher: Refresher::new(),
                log_limits: crate::logging::RateLimiter::default(),
            }),
        }
    }

    /// Start the background refresher (see the module docs): a tokio task that keeps entries that
    /// are being read fresh ahead of their expiry. Call it once, on a tokio runtime; later calls do
    /// nothing. The task holds the cache weakly and ends after the last `Cache` clone is dropped.
    pub fn start_refresher(&self) {
        Refresher::start(&self.inner);
    }

    /// Install the function told about every [`Change`] a fetch finds. It is called on the
    /// fetching task, outside any lock of the cache, and must not block. Only the first call
    /// installs; later ones are ignored (returns whether this one was installed).
    pub fn set_change_listener(&self, listener: ChangeListener) -> bool {
        self.inner.listener.set(listener).is_ok()
    }

    /// A secret's value: the latest version when `version` is `None`.
    pub async fn secret(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Cached<SecretValue>, VaultError> {
        let (name, version) = object_key(name, version)?;
        self.typed(Request::Secret { name, version }, |v| match v {
            Value::Secret(s) => Some(s),
            _ => None,
        })
        .await
    }

    /// A key's public JWK: the latest version when `version` is `None`.
    pub async fn key(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Cached<KeyValue>, VaultError> {
        let (name, version) = object_key(name, version)?;
        self.typed(Request::Key { name, version }, |v| match v {
            Value::Key(k) => Some(k),
            _ => None,
        })
        .await
    }

    /// A certificate with its backing secret, both of one version (latest when `None`).
    pub async fn certificate(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Cached<CertificateValue>, VaultError> {
        let (name, version) = object_key(name, version)?;
        self.typed(Request::Certificate { name, version }, |v| match v {
            Value::Certificate(c) => Some(c),
            _ => None,
        })
        .await
    }

    /// Every object of a collection, latest metadata each.
    pub async fn list(
        &self,
        collection: Collection,
    ) -> Result<Cached<Vec<ObjectProps>>, VaultError> {
        self.props(Request::List(collection)).await
    }

    /// Every version of one object (empty for an unknown name, as the vault answers).
    pub async fn versions(
        &self,
        collection: Collection,
        name: &str,
    ) -> Result<Cached<Vec<ObjectProps>>, VaultError> {
        if !valid_name(name) {
            return Err(VaultError::NotFound);
        }
        self.props(Request::Versions(collection, name.to_owned()))
            .await
    }

    /// Let the cache finish its pending bookkeeping, so that [`Cache::stats`]'s entry count and
    /// size are current (moka settles them lazily, on later operations). For a metrics scrape.
    pub async fn settle(&self) {
        self.inner.slots.run_pending_tasks().await;
    }

    pub fn stats(&self) -> CacheStats {
        let c = &self.inner.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            hits: n(&c.hits),
            misses: n(&c.misses),
            coalesced: n(&c.coalesced),
            stale_served: n(&c.stale_served),
            deferred_errors: n(&c.deferred_errors),
            revalidated: n(&c.revalidated),
            background_fetches: n(&c.background_fetches),
            list_revalidations: n(&c.list_revalidations),
            errors: ErrorCounts {
                not_found: n(&c.not_found),
                disabled: n(&c.disabled),
                unauthorized: n(&c.unauthorized),
                forbidden: n(&c.forbidden),
                throttled: n(&c.throttled),
                unavailable: n(&c.unavailable),
                unexpected: n(&c.unexpected),
            },
            entries: self.inner.slots.entry_count(),
            bytes: self.inner.slots.weighted_size(),
        }
    }

    async fn props(&self, request: Request) -> Result<Cached<Vec<ObjectProps>>, VaultError> {
        self.typed(request, |v| match v {
            Value::Props(p) => Some(p),
            _ => None,
        })
        .await
    }

    /// The answer for `request`, as the type its variant holds.
    async fn typed<T>(
        &self,
        request: Request,
        pick: fn(Value) -> Option<Arc<T>>,
    ) -> Result<Cached<T>, VaultError> {
        let Reply {
            value,
            valid_for,
            stale,
        } = self.get(request).await?;
        pick(value)
            .map(|value| Cached {
                value,
                valid_for,
                stale,
            })
            .ok_or_else(wrong_kind)
    }

    /// Answer from the entry if it may, else wait for the key's flight, starting one if needed.
    async fn get(&self, request: Request) -> Result<Reply, VaultError> {
        let inner = &self.inner;
        let key = request.key();
        let mut waited_for_list = false;
        let (now, slot) = loop {
            let now = Instant::now();
            let slot = inner.slots.get(&key).await;
            let Some(current) = slot.as_deref() else {
                break (now, slot);
            };
            if let Some(answer) = inner.cached_answer(current, now) {
                current.mark_read();
                return answer;
            }
            // The refresher is retrying this collection after a transient failure: it will
            // refetch this entry too (the read makes it hot), so the reader does not add a call.
            if inner.refresher.in_outage(key.collection())
                && let Some(answer) = inner.last_good(current, now)
            {
                current.mark_read();
                return answer;
            }
            // A list of the collection is under way that will judge this entry when it comes
            // back: renew it, or start its refetch (which this reader then joins). Wait for it
            // rather than send a GET beside it: one request per object, whoever asks. Once.
            if waited_for_list {
                break (now, slot);
            }
            let Some(list) = inner.list_vouching_for(&key, current, now) else {
                break (now, slot);
            };
            waited_for_list = true;
            // Hot, so that the list renews (or refetches) it rather than leaving it to expire.
            current.mark_read();
            Counters::bump(&inner.counters.coalesced);
            if tokio::time::timeout_at(now + READER_PATIENCE, list)
                .await
                .is_err()
                && let Some(answer) = inner.last_good(current, Instant::now())
            {
                // A slow list delays a read of a known value no longer than a slow GET would.
                return answer;
            }
        };
        // Whether this reader has a last answer to fall back on if the vault is slow.
        let fallback = slot.as_deref().filter(|s| inner.has_last_good(s, now));
        let (flight, started, background) = {
            let mut flights = inner.flights.lock();
            match flights.get(&key) {
                Some(flight)
                    if now.saturating_duration_since(flight.started) <= inner.config.ttl =>
                {
                    // A retry during a known outage may hang until the client times out; readers
                    // that have a stale answer to fall back on take it now instead of waiting.
                    if let Some(slot) = slot.as_deref()
                        && let Some(answer) = inner.stale(slot, now)
                    {
                        slot.mark_read();
                        return answer;
                    }
                    inner.counters.coalesced.fetch_add(1, Ordering::Relaxed);
                    (
                        flight.result.clone(),
                        flight.started,
                        flight.mode == Mode::Background,
                    )
                }
                // A flight older than a TTL and still running: it cannot give this reader a
                // value young enough, and a second call beside it would only queue behind the
                // same slow vault. A reader with a last answer gets it; it is long past its
                // patience.
                Some(flight) if fallback.is_some() && flight.result.peek().is_none() => {
                    let slot = fallback.expect("checked");
                    slot.mark_read();
                    return inner.last_good(slot, now).expect("checked");
                }
                // No flight, or one too old to join: start the next one. An older flight that is
                // replaced here still finishes, but will not overwrite a newer answer. (This also
                // retires a flight whose task panicked and so never removed itself.)
                _ => (
                    inner.start_flight(&mut flights, request, key.clone(), now, Mode::Reader),
                    now,
                    false,
                ),
            }
        };
        let answer = match fallback {
            // A reader of a cached value never waits long for its refresh: past
            // [`READER_PATIENCE`] from the start of the flight it gets the last answer, and the
            // flight goes on to store the new one for the next reader.
            Some(slot) => {
                let patience_ends = started + READER_PATIENCE;
                match tokio::time::timeout_at(patience_ends, flight.clone()).await {
                    Ok(answer) => answer,
                    Err(_) => match inner.last_good(slot, Instant::now()) {
                        Some(answer) => {
                            slot.mark_read();
                            return answer;
                        }
                        None => flight.await,
                    },
                }
            }
            None => flight.await,
        };
        if background {
            // A background flight stores a slot nobody has read yet; this reader did.
            if let Some(slot) = inner.slots.get(&key).await {
                slot.mark_read();
            }
        }
        answer
    }
}

/// Names and versions the vault cannot have cost no call (and no entry).
fn object_key(name: &str, version: Option<&str>) -> Result<(String, Option<String>), VaultError> {
    if !valid_name(name) || version.is_some_and(|v| !valid_version(v)) {
        return Err(VaultError::NotFound);
    }
    Ok((name.to_owned(), version.map(str::to_owned)))
}

fn wrong_kind() -> VaultError {
    VaultError::Unexpected("cache entry of the wrong kind".into())
}

/// What was asked, as the caller spelt it (names go to the vault and to logs this way).
/// Its [`Request::key`] form, with names upper-cased, is the cache key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) enum Request {
    Secret {
        name: String,
        version: Option<String>,
    },
    Key {
        name: String,
        version: Option<String>,
    },
    Certificate {
        name: String,
        version: Option<String>,
    },
    List(Collection),
    Versions(Collection, String),
}

impl Request {
    /// The collection the request is about.
    pub(super) fn collection(&self) -> Collection {
        match self {
            Request::Secret { .. } => Collection::Secrets,
            Request::Key { .. } => Collection::Keys,
            Request::Certificate { .. } => Collection::Certificates,
            Request::List(c) | Request::Versions(c, _) => *c,
        }
    }

    /// The object name of a latest-version request (what a list item can revalidate).
    pub(super) fn latest_name(&self) -> Option<&str> {
        match self {
            Request::Secret {
                name,
                version: None,
            }
            | Request::Key {
                name,
                version: None,
            }
            | Request::Certificate {
                name,
                version: None,
            } => Some(name),
            _ => None,
        }
    }

    pub(super) fn key(&self) -> Request {
        match self {
            Request::Secret { name, version } => Request::Secret {
                name: name.to_ascii_uppercase(),
                version: version.clone(),
            },
            Request::Key { name, version } => Request::Key {
                name: name.to_ascii_uppercase(),
                version: version.clone(),
            },
            Request::Certificate { name, version } => Request::Certificate {
                name: name.to_ascii_uppercase(),
                version: version.clone(),
            },
            Request::List(c) => Request::List(*c),
            Request::Versions(c, name) => Request::Versions(*c, name.to_ascii_uppercase()),
        }
    }
}

/// How logs name the object: `secrets/db-password`, `secrets/db-password/<version>`,
/// `secrets (list)`, `secrets/db-password (versions)`.
impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Secret {
                name,
                version: None,
            } => write!(f, "secrets/{name}"),
            Request::Secret {
                name,
                version: Some(v),
            } => write!(f, "secrets/{name}/{v}"),
            Request::Key { name, version } => {
                write!(f, "keys/{name}")?;
                version.iter().try_for_each(|v| write!(f, "/{v}"))
            }
            Request::Certificate { name, version } => {
                write!(f, "certificates/{name}")?;
                version.iter().try_for_each(|v| write!(f, "/{v}"))
            }
            Request::List(c) => write!(f, "{} (list)", c.as_str()),
            Request::Versions(c, name) => write!(f, "{}/{name} (versions)", c.as_str()),
        }
    }
}

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
    fn bytes(&self) -> u64 {
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

/// What a request gets when it succeeds.
#[derive(Clone)]
struct Reply {
    value: Value,
    valid_for: Duration,
    stale: bool,
}

type Answer = Result<Reply, VaultError>;

/// The cached state of one key. Immutable (but for the `read` mark): every change stores a new
/// `Arc<Slot>`.
pub(super) struct Slot {
    /// The last answer the vault gave (a value, `NotFound` or `Disabled`).
    pub(super) known: Option<Known>,
    /// Set while fetches of this key fail; cleared by the next answer.
    pub(super) outage: Option<Outage>,
    /// Start of the fetch (or of the renewing list) that produced this state: a slower fetch that
    /// started earlier does not overwrite it.
    pub(super) as_of: Instant,
    /// Value bytes, for the weigher.
    pub(super) bytes: u64,
    /// The request as the reader that created the entry spelt it: what a background refresh asks.
    pub(super) request: Request,
    /// Read (answered from, or fetched for a reader) since this state was stored: "hot".
    pub(super) read: AtomicBool,
}

impl Slot {
    pub(super) fn mark_read(&self) {
        // Checked first so that hot reads do not keep writing the cache line.
        if !self.read.load(Ordering::Relaxed) {
            self.read.store(true, Ordering::Relaxed);
        }
    }

    pub(super) fn is_hot(&self) -> bool {
        self.read.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
pub(super) struct Known {
    pub(super) answer: Result<Value, VaultError>,
    /// Start of the successful fetch, or of the list that renewed it; freshness and `max_stale`
    /// are measured from here.
    pub(super) fetched_at: Instant,
    /// A time the vault's clock had surely reached when the fetch that got `answer` started
    /// (not moved by renewals): a list may renew the entry only if the value's `updated` second
    /// ended by then (see `crate::vault::clock`).
    pub(super) vault_reached: SystemTime,
}

#[derive(Clone)]
pub(super) struct Outage {
    /// The latest failure.
    error: VaultError,
    /// First failure of this outage (for the recovery log line).
    since: Instant,
    /// No vault call for this key before then.
    retry_at: Instant,
    /// The interval that led to `retry_at`; the next failure doubles it.
    backoff: Duration,
    /// The "older than --max-stale" line has been logged for this outage.
    expiry_logged: bool,
}

struct Flight {
    id: u64,
    started: Instant,
    mode: Mode,
    result: Shared<BoxFuture<'static, Answer>>,
}

/// Who started a flight: a reader waiting for it, or the refresher ahead of expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Reader,
    Background,
}

#[derive(Default)]
pub(super) struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    coalesced: AtomicU64,
    stale_served: AtomicU64,
    deferred_errors: AtomicU64,
    pub(super) revalidated: AtomicU64,
    background_fetches: AtomicU64,
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

    fn error(&self, e: &VaultError) {
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
}

pub(super) struct Inner {
    client: Arc<dyn VaultClient>,
    pub(super) config: CacheConfig,
    /// Bounded LRU of the cached states. Its TTL features are not used: expiry here does not
    /// evict (a stale value is what an outage serves), and moka's clock is not tokio's.
    pub(super) slots: moka::future::Cache<Request, Arc<Slot>>,
    /// Fetches in flight, by key. Written by hand because moka's `get_with` coalesces only the
    /// initialisation of an absent entry, not the refresh of one that is present but expired.
    /// INVARIANT: a flight removes itself (if still the current one for its key) only after
    /// storing its slot, so a caller that finds no flight finds the slot.
    flights: Mutex<HashMap<Request, Flight>>,
    next_flight: AtomicU64,
    pub(super) counters: Counters,
    /// Wall clock (`SystemTime::now` but in tests).
    pub(super) wall: fn() -> SystemTime,
    /// The vault's clock as its answers show it: the client's, which sees `Date` headers, fed
    /// here with the `updated` stamps of what the cache receives.
    clock: Arc<VaultClock>,
    listener: OnceLock<ChangeListener>,
    pub(super) refresher: Refresher,
    /// Outage lines are once per object per outage; across objects (every secret of a vault that
    /// went away) they are a few a minute per kind, with a count.
    log_limits: crate::logging::RateLimiter,
}

impl Inner {
    fn remaining(&self, fetched_at: Instant, now: Instant) -> Duration {
        self.config
            .ttl
            .saturating_sub(now.saturating_duration_since(fetched_at))
    }

    fn first_retry(&self) -> Duration {
        self.config.ttl.min(FIRST_RETRY).max(MIN_RETRY)
    }

    fn max_retry(&self) -> Duration {
        self.config.ttl.max(self.first_retry())
    }

    /// The answer a slot gives without a vault call, if it may give one now.
    fn cached_answer(&self, slot: &Slot, now: Instant) -> Option<Answer> {
        if let Some(known) = &slot.known {
            let age = now.saturating_duration_since(known.fetched_at);
            if age < self.config.ttl {
                Counters::bump(&self.counters.hits);
                return Some(match &known.answer {
                    Ok(value) => Ok(Reply {
                        value: value.clone(),
                        valid_for: self.config.ttl - age,
                        stale: false,
                    }),
                    Err(e) => Err(e.clone()),
                });
            }
        }
        let outage = slot.outage.as_ref()?;
        if now >= outage.retry_at {
            return None;
        }
        self.stale(slot, now).or_else(|| {
            Counters::bump(&self.counters.deferred_errors);
            Some(Err(outage.error.clone()))
        })
    }

    /// The last answer, served stale, if the slot is in a transient outage within `max_stale`.
    fn stale(&self, slot: &Slot, now: Instant) -> Option<Answer> {
        let outage = slot.outage.as_ref()?;
        if !outage.error.is_transient() {
            return None;
        }
        self.last_good(slot, now)
    }

    /// The last answer, served stale, if it is not older than `max_stale`.
    /// Whether [`Inner::last_good`] would answer (without counting it).
    fn has_last_good(&self, slot: &Slot, now: Instant) -> bool {
        slot.known.as_ref().is_some_and(|known| {
            now.saturating_duration_since(known.fetched_at) <= self.config.max_stale
        })
    }

    fn last_good(&self, slot: &Slot, now: Instant) -> Option<Answer> {
        let known = slot.known.as_ref()?;
        if now.saturating_duration_since(known.fetched_at) > self.config.max_stale {
            return None;
        }
        Counters::bump(&self.counters.stale_served);
        Some(stale_answer(known))
    }

    /// Start a flight of `key` and register it (the caller holds the flight map).
    fn start_flight(
        self: &Arc<Self>,
        flights: &mut HashMap<Request, Flight>,
        request: Request,
        key: Request,
        now: Instant,
        mode: Mode,
    ) -> Shared<BoxFuture<'static, Answer>> {
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        // Spawned, so the fetch completes and is cached even if every caller waiting on it is
        // cancelled (an interrupted FUSE request), or when nobody waits (a background refresh).
        let task = tokio::spawn(Arc::clone(self).fly(request, id, now, mode));
        let result = async move {
            task.await
                .unwrap_or_else(|e| Err(VaultError::Unexpected(format!("cache fetch failed: {e}"))))
        }
        .boxed()
        .shared();
        flights.insert(
            key,
            Flight {
                id,
                started: now,
                mode,
                result: result.clone(),
            },
        );
        result
    }

    /// The list of `key`'s collection in flight that will judge `slot` when it comes back, if
    /// `key` is a latest-version entry such a list vouches for and a reader may still wait for
    /// it: it started after the entry's state was stored, not more than a TTL ago.
    fn list_vouching_for(
        &self,
        key: &Request,
        slot: &Slot,
        now: Instant,
    ) -> Option<Shared<BoxFuture<'static, Answer>>> {
        key.latest_name()?;
        let known = slot.known.as_ref()?;
        let flights = self.flights.lock();
        let list = flights.get(&Request::List(key.collection()))?;
        let judges = list.started > known.fetched_at && list.started >= slot.as_of;
        let young = now.saturating_duration_since(list.started) <= self.config.ttl;
        (judges && young && list.result.peek().is_none()).then(|| list.result.clone())
    }

    /// A flight of `key` is under way.
    pub(super) fn in_flight(&self, key: &Request) -> bool {
        self.flights.lock().contains_key(key)
    }

    /// Fetch `request` in the background, although its entry may still be fresh, unless a flight
    /// of its key (that a reader could still join) is under way. Readers keep getting the entry
    /// while it runs; the outcome is stored like a reader's. Returns whether a flight started.
    pub(super) fn refresh(self: &Arc<Self>, request: Request) -> bool {
        // Nobody waits here: the spawned task runs on its own (readers may join it via the map).
        self.start_background(request, Instant::now()).is_some()
    }

    /// Start a background flight of `request` as of `now`, unless a flight of its key that a
    /// reader could still join is under way; the flight's outcome, for a caller that waits.
    fn start_background(
        self: &Arc<Self>,
        request: Request,
        now: Instant,
    ) -> Option<Shared<BoxFuture<'static, Answer>>> {
        let key = request.key();
        let mut flights = self.flights.lock();
        if flights
            .get(&key)
            .is_some_and(|f| now.saturating_duration_since(f.started) <= self.config.ttl)
        {
            return None;
        }
        Some(self.start_flight(&mut flights, request, key, now, Mode::Background))
    }

    /// One flight: fetch, store the outcome, leave the flight map.
    async fn fly(
        self: Arc<Self>,
        request: Request,
        id: u64,
        started: Instant,
        mode: Mode,
    ) -> Answer {
        let key = request.key();
        let answer = self.fetch_and_store(&request, &key, started, mode).await;
        let mut flights = self.flights.lock();
        if flights.get(&key).is_some_and(|f| f.id == id) {
            flights.remove(&key);
        }
        answer
    }

    async fn fetch_and_store(
        self: &Arc<Self>,
        request: &Request,
        key: &Request,
        started: Instant,
        mode: Mode,
    ) -> Answer {
        // The previous flight may have stored its slot and left between our caller's look at
        // the slot and its look at the flight map; its answer stands. (A background refresh is
        // meant to fetch a fresh entry.)
        if mode == Mode::Reader
            && let Some(slot) = self.slots.get(key).await
            && let Some(answer) = self.cached_answer(&slot, Instant::now())
        {
            slot.mark_read();
            return answer;
        }
        Counters::bump(&self.counters.misses);
        if mode == Mode::Background {
            Counters::bump(&self.counters.background_fetches);
        }
        let started_wall = (self.wall)();
        let fetched = match request {
            Request::Secret { name, version } => self
                .client
                .get_secret(name, version.as_deref())
                .await
                .map(|s| Value::Secret(Arc::new(s))),
            Request::Key { name, version } => self
                .client
                .get_key(name, version.as_deref())
                .await
                .map(|k| Value::Key(Arc::new(k))),
            Request::Certificate { name, version } => self
                .client
                .get_certificate(name, version.as_deref())
                .await
                .map(|c| Value::Certificate(Arc::new(c))),
            Request::List(c) => self
                .client
                .list(*c)
                .await
                .map(|l| Value::Props(Arc::new(l))),
            Request::Versions(c, name) => self
                .client
                .list_versions(*c, name)
                .await
                .map(|l| Value::Props(Arc::new(l))),
        };
        if let Err(e) = &fetched {
            self.counters.error(e);
        }
        // The newest stamp received bounds the vault's clock from below (`crate::vault::clock`).
        let newest = match &fetched {
            Ok(Value::Props(list)) => list.iter().filter_map(|p| p.updated).max(),
            Ok(value) => value.props().and_then(|p| p.updated),
            Err(_) => None,
        };
        if let Some(updated) = newest {
            self.clock.observe_stamp(updated, Instant::now());
        }
        // After the answer, so that its own `Date` counts.
        let vault_reached = self.clock.reached_at(started, started_wall);
        let failure = fetched.as_ref().err().cloned();
        let listed = match (request, &fetched) {
            (Request::List(c), Ok(Value::Props(list))) => Some((*c, Arc::clone(list))),
            _ => None,
        };
        let mut answer = None;
        let mut change = None;
        // Settled against the slot as it is now, under moka's per-key lock, so two overlapping
        // flights of one key cannot lose each other's outage state.
        self.slots
            .entry(key.clone())
            .and_compute_with(|current| {
                let current = current.map(|entry| entry.into_value());
                let (slot, reply) = self.settle(
                    current.as_deref(),
                    fetched,
                    started,
                    vault_reached,
                    Instant::now(),
                    request,
                    mode,
                );
                answer = Some(reply);
                let newer_stored = current.as_ref().is_some_and(|c| c.as_of > started);
                if !newer_stored {
                    change = current.as_deref().and_then(|c| changed(c, &slot, request));
                }
                std::future::ready(if newer_stored {
                    Op::Nop
                } else {
                    Op::Put(Arc::new(slot))
                })
            })
            .await;
        self.refresher.fetched(
            request.collection(),
            mode,
            matches!(request, Request::List(_)),
            failure.as_ref(),
            &self.config,
        );
        // Outside every lock: the listener may call back into the filesystem.
        if let Some(change) = change
            && let Some(listener) = self.listener.get()
        {
            listener(change);
        }
        if let Some((collection, list)) = listed {
            self.refresher.listed(collection, list.len());
            self.revalidate(collection, &list, started).await;
        }
        answer.unwrap_or_else(|| Err(VaultError::Unexpected("cache update did not run".into())))
    }

    /// The new state of a key after a fetch, and what the fetch's callers get.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &self,
        current: Option<&Slot>,
        fetched: Result<Value, VaultError>,
        started: Instant,
        vault_reached: SystemTime,
        now: Instant,
        object: &Request,
        mode: Mode,
    ) -> (Slot, Answer) {
        let for_reader = mode == Mode::Reader;
        let previous_outage = current.and_then(|s| s.outage.as_ref());
        match fetched {
            Ok(_) | Err(VaultError::NotFound | VaultError::Disabled) => {
                if let Some(outage) = previous_outage {
                    tracing::info!(
                        object = %object,
                        outage = ?now.saturating_duration_since(outage.since),
                        "vault answers again"
                    );
                }
                let answer = match &fetched {
                    Ok(value) => Ok(Reply {
                        value: value.clone(),
                        valid_for: self.remaining(started, now),
                        stale: false,
                    }),
                    Err(e) => Err(e.clone()),
                };
                let bytes = fetched.as_ref().map_or(0, Value::bytes);
                let slot = Slot {
                    known: Some(Known {
                        answer: fetched,
                        fetched_at: started,
                        vault_reached,
                    }),
                    outage: None,
                    as_of: started,
                    bytes,
                    request: object.clone(),
                    read: AtomicBool::new(for_reader),
                };
                (slot, answer)
            }
            Err(error) => {
                // Log once per outage (and again if its kind changes, e.g. 503 → 403), not per
                // read: reads inside a retry interval never get here.
                let new_condition =
                    previous_outage.is_none_or(|o| discriminant(&o.error) != discriminant(&error));
                let backoff = if matches!(error, VaultError::Unauthorized(_)) {
                    // The token cache spaces out fresh tokens after a refusal, and until it has
                    // one a call fails locally without reaching the vault: a short, flat interval
                    // costs nothing and lets the object recover within a second of a good token.
                    MIN_RETRY
                } else {
                    previous_outage.map_or(self.first_retry(), |o| {
                        o.backoff.saturating_mul(2).min(self.max_retry())
                    })
                };
                let mut outage = Outage {
                    error: error.clone(),
                    since: previous_outage.map_or(now, |o| o.since),
                    retry_at: now + backoff,
                    backoff,
                    expiry_logged: previous_outage.is_some_and(|o| o.expiry_logged),
                };
                // The fields every outage line carries (`--log-format json` filters on them).
                let kind = object.collection().as_str();
                let errno = FsError::from(error.clone()).errno_name();
                if !error.is_transient() {
                    // Access revoked (401/403) or an answer we do not understand: what we hold
                    // may no longer be served, so drop it.
                    if new_condition {
                        crate::log_limited!(self.log_limits, "vault refused", error,
                            kind,
                            object = %object,
                            op = "get",
                            errno,
                            cause = %error,
                            "vault refused the request; not serving a cached value for it"
                        );
                    }
                    let slot = Slot {
                        known: None,
                        outage: Some(outage),
                        as_of: started,
                        bytes: 0,
                        request: object.clone(),
                        read: AtomicBool::new(for_reader),
                    };
                    return (slot, Err(error));
                }
                let known = current.and_then(|s| s.known.clone());
                let answer = match &known {
                    Some(k)
                        if now.saturating_duration_since(k.fetched_at) <= self.config.max_stale =>
                    {
                        if new_condition {
                            crate::log_limited!(self.log_limits, "vault failing, served stale", warn,
                                kind,
                                object = %object,
                                op = "get",
                                cause = %error,
                                age = ?now.saturating_duration_since(k.fetched_at),
                                retry_in = ?backoff,
                                "vault failing; serving the last good answer until it recovers or --max-stale passes"
                            );
                        }
                        if for_reader {
                            Counters::bump(&self.counters.stale_served);
                        }
                        stale_answer(k)
                    }
                    Some(_) => {
                        if !outage.expiry_logged {
                            crate::log_limited!(self.log_limits, "vault failing, too stale", warn,
                                kind,
                                object = %object,
                                op = "get",
                                errno,
                                cause = %error,
                                "vault failing and the last good answer is older than --max-stale; reads fail until it recovers"
                            );
                            outage.expiry_logged = true;
                        }
                        Err(error)
                    }
                    None => {
                        if new_condition {
                            crate::log_limited!(self.log_limits, "vault failing, nothing cached", warn,
                                kind,
                                object = %object,
                                op = "get",
                                errno,
                                cause = %error,
                                "vault failing and nothing cached for this object; reads fail (EIO) until it recovers"
                            );
                        }
                        Err(error)
                    }
                };
                if !new_condition {
                    tracing::debug!(object = %object, retry_in = ?backoff, "vault still failing");
                }
                let bytes = known
                    .as_ref()
                    .and_then(|k| k.answer.as_ref().ok())
                    .map_or(0, Value::bytes);
                // Still hot if it was: a failed refresh validated nothing.
                let read = for_reader || current.is_some_and(Slot::is_hot);
                let slot = Slot {
                    known,
                    outage: Some(outage),
                    as_of: started,
                    bytes,
                    request: object.clone(),
                    read: AtomicBool::new(read),
                };
                (slot, answer)
            }
        }
    }
}

/// The last answer as a stale reply.
fn stale_answer(known: &Known) -> Answer {
    match &known.answer {
        Ok(value) => Ok(Reply {
            value: value.clone(),
            valid_for: Duration::ZERO,
            stale: true,
        }),
        Err(e) => Err(e.clone()),
    }
}

/// What a fetch that replaced `old` with `new` tells the change listener: a latest-version entry
/// that now holds another version or another kind of answer, or a list of another set of enabled
/// names. Nothing for a first fetch (nothing to invalidate) or a failed one (nothing learnt).
fn changed(old: &Slot, new: &Slot, request: &Request) -> Option<Change> {
    let (Some(old), Some(new)) = (&old.known, &new.known) else {
        return None;
    };
    match request {
        Request::List(collection) => {
            let names = |known: &Known| -> Option<BTreeSet<String>> {
                match &known.answer {
                    Ok(Value::Props(list)) => Some(
                        list.iter()
                            .filter(|p| p.enabled)
                            .map(|p| p.name.to_ascii_uppercase())
                            .collect(),
                    ),
                    _ => None,
                }
            };
            (names(old) != names(new)).then_some(Change::Listing(*collection))
        }
        _ => {
            let name = request.latest_name()?;
            let version = |v: &Value| v.props().and_then(|p| p.version.clone());
            let differs = match (&old.answer, &new.answer) {
                (Ok(a), Ok(b)) => version(a) != version(b),
                (Err(a), Err(b)) => discriminant(a) != discriminant(b),
                _ => true,
            };
            let spelt = [&new.answer, &old.answer]
                .into_iter()
                .find_map(|a| a.as_ref().ok().and_then(Value::props))
                .map_or(name, |p| p.name.as_str());
            differs.then(|| Change::Object {
                collection: request.collection(),
                name: spelt.to_owned(),
            })
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Prefetch (`super::prefetch`): fetches for values nobody has asked for yet. Kept in this block of
// its own: it only uses the flight map and the slots, as a reader or the refresher does.
// ------------------------------------------------------------------------------------------------

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

impl Inner {
    /// Whether a fetch of the key would get anything: not while its entry is fresh, nor while
    /// it waits out the retry interval of a failure (the cache's own backoff stands).
    fn wants_fetch(&self, slot: &Slot, now: Instant) -> bool {
        let fresh = slot
            .known
            .as_ref()
            .is_some_and(|k| now.saturating_duration_since(k.fetched_at) < self.config.ttl);
        let backing_off = slot.outage.as_ref().is_some_and(|o| now < o.retry_at);
        !fresh && !backing_off
    }
}

impl Cache {
    /// Whether [`Cache::prefetch`] of `request` would call the vault now (no entry that answers,
    /// no flight). A hint: a reader may start the fetch a moment later.
    pub(super) async fn prefetch_needed(&self, request: &Request) -> bool {
        let key = request.key();
        let now = Instant::now();
        if let Some(slot) = self.inner.slots.get(&key).await
            && !self.inner.wants_fetch(&slot, now)
        {
            return false;
        }
        !self.inner.in_flight(&key)
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
            && !inner.wants_fetch(&slot, now)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::memory::MemoryVault;
    use tokio::time::advance;

    const TTL: Duration = Duration::from_secs(60);

    fn config(ttl: Duration) -> CacheConfig {
        CacheConfig {
            ttl,
            max_stale: Duration::from_secs(3600),
            ..CacheConfig::default()
        }
    }

    fn setup(config: CacheConfig) -> (Arc<MemoryVault>, Cache) {
        let vault = Arc::new(MemoryVault::new());
        let cache = Cache::new(vault.clone(), config);
        (vault, cache)
    }

    fn unavailable() -> VaultError {
        VaultError::Unavailable("503 Service Unavailable".into())
    }

    async fn read(cache: &Cache, name: &str) -> Result<Vec<u8>, VaultError> {
        cache
            .secret(name, None)
            .await
            .map(|c| c.value.value.clone())
    }

    #[tokio::test(start_paused = true)]
    async fn names_are_case_insensitive_and_versions_are_separate_entries() {
        let (vault, cache) = setup(config(TTL));
        let v1 = vault.set_secret("DB-Password", b"one");
        assert_eq!(read(&cache, "DB-Password").await.unwrap(), b"one");
        assert_eq!(read(&cache, "db-password").await.unwrap(), b"one");
        assert_eq!(read(&cache, "DB-PASSWORD").await.unwrap(), b"one");
        assert_eq!(vault.calls("get_secret"), 1);

        let got = cache.secret("db-password", Some(&v1)).await.unwrap();
        assert_eq!(got.value.value, b"one");
        assert_eq!(vault.calls("get_secret"), 2);
        cache.secret("DB-PASSWORD", Some(&v1)).await.unwrap();
        assert_eq!(vault.calls("get_secret"), 2);

        cache
            .versions(Collection::Secrets, "db-password")
            .await
            .unwrap();
        cache
            .versions(Collection::Secrets, "DB-Password")
            .await
            .unwrap();
        assert_eq!(vault.calls("list_versions"), 1);
        assert_eq!(cache.stats().misses, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn impossible_names_cost_no_call() {
        let (vault, cache) = setup(config(TTL));
        assert_eq!(read(&cache, "a_b").await, Err(VaultError::NotFound));
        assert_eq!(read(&cache, "").await, Err(VaultError::NotFound));
        assert_eq!(
            cache.secret("ok", Some("not-a-version")).await.unwrap_err(),
            VaultError::NotFound
        );
        assert_eq!(
            cache.versions(Collection::Secrets, "..").await.unwrap_err(),
            VaultError::NotFound
        );
        assert_eq!(vault.calls("get_secret") + vault.calls("list_versions"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_entries_cost_no_call_and_rotation_shows_after_one_ttl() {
        let (vault, cache) = setup(config(TTL));
        vault.set_secret("api", b"old");
        let first = cache.secret("api", None).await.unwrap();
        assert_eq!(first.valid_for, TTL);
        assert!(!first.stale);

        vault.set_secret("api", b"new");
        advance(Duration::from_secs(20)).await;
        let cached = cache.secret("api", None).await.unwrap();
        assert_eq!(cached.value.value, b"old");
        // The kernel may keep it only for what is left of the daemon's TTL.
        assert_eq!(cached.valid_for, Duration::from_secs(40));
        assert_eq!(vault.calls("get_secret"), 1);
        // The open-file snapshot outlives the entry.
        let snapshot = Arc::clone(&cached.value);

        advance(Duration::from_secs(40)).await;
        assert_eq!(read(&cache, "api").await.unwrap(), b"new");
        assert_eq!(vault.calls("get_secret"), 2);
        assert_eq!(snapshot.value, b"old");

        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn validity_counts_from_the_start_of_the_fetch() {
        let (vault, cache) = setup(config(TTL));
        vault.set_secret("slow", b"v");
        vault.set_delay(Duration::from_secs(2));
        let got = cache.secret("slow", None).await.unwrap();
        assert_eq!(got.valid_for, Duration::from_secs(58));
        // And the entry expires a TTL after the fetch started, not after it ended.
        advance(Duration::from_secs(58)).await;
        cache.secret("slow", None).await.unwrap();
        assert_eq!(vault.calls("get_secret"), 2);
    }

    /// Let spawned tasks run up to their next timer, without moving the clock.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    async fn storm(cache: &Cache, name: &str, n: usize) -> Vec<Result<Vec<u8>, VaultError>> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let cache = cache.clone();
                let name = name.to_owned();
                tokio::spawn(async move { read(&cache, &name).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_cold_reads_make_one_call() {
        for n in [32, 64] {
            let (vault, cache) = setup(config(TTL));
            vault.set_secret("cold", b"value");
            vault.set_delay(Duration::from_millis(200));
            let results = storm(&cache, "cold", n).await;
            assert!(results.iter().all(|r| r.as_deref() == Ok(&b"value"[..])));
            assert_eq!(vault.calls("get_secret"), 1, "{n} readers");
            assert_eq!(cache.stats().coalesced, n as u64 - 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_refreshes_of_an_expired_entry_make_one_call() {
        for n in [32, 64] {
            let (vault, cache) = setup(config(TTL));
            vault.set_secret("warm", b"one");
            read(&cache, "warm").await.unwrap();
            vault.set_secret("warm", b"two");
            vault.set_delay(Duration::from_millis(200));
            advance(TTL).await;
            let results = storm(&cache, "warm", n).await;
            assert!(results.iter().all(|r| r.as_deref() == Ok(&b"two"[..])));
            assert_eq!(vault.calls("get_secret"), 2, "{n} readers");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lists_and_version_lists_are_cached_and_coalesced() {
        let (vault, cache) = setup(config(TTL));
        vault.set_secret("a", b"1");
        vault.set_secret("b", b"2");
        vault.set_delay(Duration::from_millis(100));
        let lists: Vec<_> = (0..32)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.list(Collection::Secrets).await })
            })
            .collect();
        for l in lists {
            assert_eq!(l.await.unwrap().unwrap().value.len(), 2);
        }
        assert_eq!(vault.calls("list"), 1);
        cache.list(Collection::Secrets).await.unwrap();
        assert_eq!(vault.calls("list"), 1);

        assert_eq!(
            cache
                .versions(Collection::Secrets, "a")
                .await
                .unwrap()
                .value
                .len(),
            1
        );
        vault.set_secret("a", b"3");
        assert_eq!(
            cache
                .versions(Collection::Secrets, "a")
                .await
                .unwrap()
                .value
                .len(),
            1
        );
        advance(TTL).await;
        assert_eq!(
            cache
                .versions(Collection::Secrets, "a")
                .await
                .unwrap()
                .value
                .len(),
            2
        );
        assert_eq!(vault.calls("list_versions"), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flight_older_than_the_ttl_is_not_joined() {
        let ttl = Duration::from_secs(1);
        let (vault, cache) = setup(config(ttl));
        vault.set_secret("s", b"v");
        vault.set_delay(Duration::from_secs(3));
        let spawn_read = || {
            let cache = cache.clone();
            tokio::spawn(async move { read(&cache, "s").await })
        };
        let first = spawn_read();
        settle().await;
        advance(Duration::from_millis(500)).await;
        let joiner = spawn_read();
        settle().await;
        advance(Duration::from_millis(1000)).await;
        // 1.5 s into the first flight: joining it could return a value older than the TTL.
        let late = spawn_read();
        let later = spawn_read();
        for t in [first, joiner, late, later] {
            assert_eq!(t.await.unwrap().unwrap(), b"v");
        }
        assert_eq!(vault.calls("get_secret"), 2);
        assert_eq!(cache.stats().coalesced, 2);
    }

    /// Reads `name` and says how long it took (on tokio's clock) and whether it was stale.
    async fn timed_read(cache: &Cache, name: &str) -> (Vec<u8>, Duration, bool) {
        let started = Instant::now();
        let got = cache.secret(name, None).await.unwrap();
        (got.value.value.clone(), started.elapsed(), got.stale)
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_of_a_cached_value_waits_for_a_slow_refresh_no_longer_than_its_patience() {
        let ttl = Duration::from_secs(5);
        let (vault, cache) = setup(config(ttl));
        vault.set_secret("s", b"one");
        read(&cache, "s").await.unwrap();
        vault.set_secret("s", b"two");
        vault.set_delay(Duration::from_secs(20));
        advance(ttl).await;

        let first = {
            let cache = cache.clone();
            tokio::spawn(async move { timed_read(&cache, "s").await })
        };
        settle().await;
        // Joining the refresh 1.5 s after it started: the patience counts from its start.
        advance(Duration::from_millis(1500)).await;
        let (value, waited, stale) = timed_read(&cache, "s").await;
        assert_eq!(
            (value.as_slice(), waited, stale),
            (
                &b"one"[..],
                READER_PATIENCE - Duration::from_millis(1500),
                true
            )
        );
        let (value, waited, stale) = first.await.unwrap();
        assert_eq!(
            (value.as_slice(), waited, stale),
            (&b"one"[..], READER_PATIENCE, true)
        );
        // More than a TTL into the refresh: the last value at once, and no second call beside it.
        advance(ttl).await;
        let (value, waited, _) = timed_read(&cache, "s").await;
        assert_eq!((value.as_slice(), waited), (&b"one"[..], Duration::ZERO));
        assert_eq!(vault.calls("get_secret"), 2);

        // The refresh goes on and stores its answer: once it is done (and expired, since it took
        // longer than a TTL), the next slow refresh falls back on it.
        advance(Duration::from_secs(20)).await;
        settle().await;
        let (value, waited, stale) = timed_read(&cache, "s").await;
        assert_eq!(
            (value.as_slice(), waited, stale),
            (&b"two"[..], READER_PATIENCE, true)
        );
        assert_eq!(vault.calls("get_secret"), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quick_refresh_is_waited_for_and_a_cold_read_waits_for_its_fetch() {
        let (vault, cache) = setup(config(TTL));
        vault.set_secret("s", b"one");
        read(&cache, "s").await.unwrap();
        vault.set_secret("s", b"two");
        vault.set_delay(Duration::from_millis(1500));
        advance(TTL).await;
        // Within the patience: the reader gets the new value, as the TTL promises.
        let (value, waited, stale) = timed_read(&cache, "s").await;
        assert_eq!(
            (value.as_slice(), waited, stale),
            (&b"two"[..], Duration::from_millis(1500), false)
        );
        // Nothing to fall back on: a first read waits for the vault however slow.
        vault.set_secret("cold", b"c");
        vault.set_delay(Duration::from_secs(20));
        let (value, waited, _) = timed_read(&cache, "cold").await;
        assert_eq!(
            (value.as_slice(), waited),
            (&b"c"[..], Duration::from_secs(20))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn not_found_and_disabled_are_cached_for_the_ttl() {
        let (vault, cache) = setup(config(TTL));
        for _ in 0..100 {
            assert_eq!(read(&cache, "missing").await, Err(VaultError::NotFound));
        }
        assert_eq!(vault.calls("get_secret"), 1);
        vault.set_secret("missing", b"now here");
        advance(TTL).await;
        assert_eq!(read(&cache, "missing").await.unwrap(), b"now here");
        assert_eq!(vault.calls("get_secret"), 2);

        vault.set_secret("off", b"v");
        vault.set_enabled("off", false);
        for _ in 0..100 {
            assert_eq!(read(&cache, "off").await, Err(VaultError::Disabled));
        }
        assert_eq!(vault.calls("get_secret"), 3);
        let stats = cache.stats();
        assert_eq!((stats.errors.not_found, stats.errors.disabled), (1, 1));
        assert_eq!(stats.hits, 99 + 99);
    }

    #[tokio::test(start_paused = true)]
    async fn deleted_or_disabled_after_a_value_existed_is_not_served_stale() {
        let (vault, cache) = setup(config(TTL));
        vault.set_secret("gone", b"v");
        vault.set_secret("off", b"v");
        read(&cache, "gone").await.unwrap();
        read(&cache, "off").await.unwrap();
        vault.remove("gone");
        vault.set_enabled("off", false);
        advance(TTL).await;
        assert_eq!(read(&cache, "gone").await, Err(VaultError::NotFound));
        assert_eq!(read(&cache, "off").await, Err(VaultError::Disabled));
        assert_eq!(cache.stats().stale_served, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_serve_the_last_good_value_until_max_stale() {
        let (vault, cache) = setup(CacheConfig {
            ttl: TTL,
            max_stale: Duration::from_secs(600),
            ..CacheConfig::default()
        });
        vault.set_secret("db", b"good");
        read(&cache, "db").await.unwrap();
        vault.fail_with(Some(VaultError::Throttled));
        advance(TTL).await;
        let stale = cache.secret("db", None).await.unwrap();
        assert_eq!(stale.value.value, b"good");
        assert!(stale.stale);
        assert_eq!(stale.valid_for, Duration::ZERO);
        assert_eq!(cache.stats().errors.throttled, 1);

        // 601 s after the last successful fetch: the outage has outlived --max-stale.
        advance(Duration::from_secs(541)).await;
        assert_eq!(read(&cache, "db").await, Err(VaultError::Throttled));
        // Inside the retry interval too, without a call.
        let calls = vault.calls("get_secret");
        assert_eq!(read(&cache, "db").await, Err(VaultError::Throttled));
        assert_eq!(vault.calls("get_secret"), calls);

        vault.fail_with(None);
        vault.set_secret("db", b"rotated");
        advance(TTL).await;
        let back = cache.secret("db", None).await.unwrap();
        assert_eq!(back.value.value, b"rotated");
        assert!(!back.stale);
    }

    #[tokio::test(start_paused = true)]
    async fn a_known_not_found_is_served_stale_through_an_outage() {
        let (vault, cache) = setup(config(TTL));
        assert_eq!(read(&cache, "nope").await, Err(VaultError::NotFound));
        vault.fail_with(Some(unavailable()));
        advance(TTL).await;
        assert_eq!(read(&cache, "nope").await, Err(VaultError::NotFound));
        assert_eq!(cache.stats().stale_served, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_does_not_become_a_request_storm() {
        // 1 s TTL, a read every 10 ms for 10 s of outage: about one call per second, not 1000.
        let ttl = Duration::from_secs(1);
        let (vault, cache) = setup(config(ttl));
        vault.set_secret("hot", b"good");
        read(&cache, "hot").await.unwrap();
        vault.fail_with(Some(unavailable()));
        for _ in 0..1000 {
            advance(Duration::from_millis(10)).await;
            assert_eq!(read(&cache, "hot").await.unwrap(), b"good");
        }
        let calls = vault.calls("get_secret");
        assert!((9..=11).contains(&calls), "{calls} calls");
        assert!(cache.stats().stale_served >= 900);

        // Recovery is picked up by the first attempt after the retry interval.
        vault.fail_with(None);
        vault.set_secret("hot", b"rotated");
        advance(ttl).await;
        let back = cache.secret("hot", None).await.unwrap();
        assert_eq!(back.value.value, b"rotated");
        assert!(!back.stale);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_exponentially_up_to_the_ttl() {
        let (vault, cache) = setup(config(TTL));
        vault.set_secret("s", b"good");
        read(&cache, "s").await.unwrap();
        vault.fail_with(Some(unavailable()));
        advance(TTL).await;
        read(&cache, "s").await.unwrap();
        assert_eq!(vault.calls("get_secret"), 2);
        // Retry intervals 5, 10, 20, 40, 60, 60 s.
        let mut expected = 2;
        for interval in [5u64, 10, 20, 40, 60, 60] {
            advance(Duration::from_secs(interval) - Duration::from_millis(1)).await;
            read(&cache, "s").await.unwrap();
            assert_eq!(
                vault.calls("get_secret"),
                expected,
                "before the {interval} s retry"
            );
            advance(Duration::from_millis(1)).await;
            read(&cache, "s").await.unwrap();
            expected += 1;
            assert_eq!(
                vault.calls("get_secret"),
                expected,
                "at the {interval} s retry"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn readers_do_not_wait_for_a_retry_during_a_known_outage() {
        let (vault, cache) = setup(config(TTL));
        vault.set_secret("s", b"good");
        read(&cache, "s").await.unwrap();
        vault.fail_with(Some(unavailable()));
        advance(TTL).await;
        read(&cache, "s").await.unwrap();
        // The vault now hangs for 30 s on each call.
        vault.set_delay(Duration::from_secs(30));
        advance(Duration::from_secs(5)).await;
        let start = Instant::now();
        let prober = {
            let cache = cache.clone();
            tokio::spawn(async move { read(&cache, "s").await })
        };
        settle().await;
        assert_eq!(read(&cache, "s").await.unwrap(), b"good");
        assert_eq!(
            Instant::now(),
            start,
            "served without waiting for the retry"
        );
        assert_eq!(prober.await.unwrap().unwrap(), b"good");
        assert_eq!(vault.calls("get_secret"), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn never_fetched_and_transient_is_an_error_without_hammering() {
        let (vault, cache) = setup(config(TTL));
        vault.set_secret("new", b"v");
        vault.fail_with(Some(unavailable()));
        for _ in 0..50 {
            assert_eq!(read(&cache, "new").await, Err(unavailable()));
        }
        assert_eq!(vault.calls("get_secret"), 1);
        assert_eq!(cache.stats().deferred_errors, 49);
        vault.fail_with(None);
        advance(Duration::from_secs(5)).await;
        assert_eq!(read(&cache, "new").await.unwrap(), b"v");
    }

    #[tokio::test(start_paused = true)]
    async fn revoked_access_is_returned_at_once_not_served_stale() {
        for error in [
            VaultError::Forbidden("the Key Vault Secrets User role".into()),
            VaultError::Unauthorized("token expired".into()),
        ] {
            let (vault, cache) = setup(config(TTL));
            vault.set_secret("s", b"good");
            read(&cache, "s").await.unwrap();
            vault.fail_with(Some(error.clone()));
            advance(TTL).await;
            assert_eq!(read(&cache, "s").await, Err(error.clone()));
            // Not served stale later in the outage either, even if the vault turns transient.
            vault.fail_with(Some(unavailable()));
            advance(TTL).await;
            assert_eq!(read(&cache, "s").await, Err(unavailable()));
            assert_eq!(cache.stats().stale_served, 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_token_is_retried_after_a_second_not_a_growing_backoff() {
        let refused = VaultError::Unauthorized("the vault refused the token".into());
        let (vault, cache) = setup(config(TTL));
        vault.set_secret("s", b"good");
        vault.fail_with(Some(refused.clone()));
        for _ in 0..5 {
            assert_eq!(read(&cache, "s").await, Err(refused.clone()));
            advance(MIN_RETRY).await;
        }
        // One call per second, however long the refusals went on.
        assert_eq!(vault.calls("get_secret"), 5);
        assert_eq!(read(&cache, "s").await, Err(refused.clone()));
        vault.fail_with(None);
        assert_eq!(read(&cache, "s").await, Err(refused), "inside the interval");
        advance(MIN_RETRY).await;
        assert_eq!(read(&cache, "s").await.unwrap(), b"good");
    }

    #[tokio::test(start_paused = true)]
    async fn lru_bounds_entries() {
        let (vault, cache) = setup(CacheConfig {
            max_entries: 4,
            max_bytes: 1 << 20,
            ..config(TTL)
        });
        for i in 0..10 {
            vault.set_secret(&format!("s{i}"), b"v");
        }
        for i in 0..4 {
            read(&cache, &format!("s{i}")).await.unwrap();
        }
        cache.inner.slots.run_pending_tasks().await;
        // Touch s0 so that s1 is the least recently used.
        read(&cache, "s0").await.unwrap();
        cache.inner.slots.run_pending_tasks().await;
        read(&cache, "s4").await.unwrap();
        cache.inner.slots.run_pending_tasks().await;
        assert_eq!(cache.stats().entries, 4);
        let calls = vault.calls("get_secret");
        read(&cache, "s0").await.unwrap();
        assert_eq!(vault.calls("get_secret"), calls, "s0 was recently used");
        read(&cache, "s1").await.unwrap();
        assert_eq!(vault.calls("get_secret"), calls + 1, "s1 was evicted");

        for i in 0..10 {
            read(&cache, &format!("s{i}")).await.unwrap();
        }
        cache.inner.slots.run_pending_tasks().await;
        assert!(cache.stats().entries <= 4);
    }

    #[tokio::test(start_paused = true)]
    async fn lru_bounds_bytes() {
        let (vault, cache) = setup(CacheConfig {
            max_entries: 1000,
            max_bytes: 10_000,
            ..config(TTL)
        });
        let big = vec![b'x'; 3000];
        for i in 0..10 {
            vault.set_secret(&format!("big{i}"), &big);
            read(&cache, &format!("big{i}")).await.unwrap();
        }
        cache.inner.slots.run_pending_tasks().await;
        let stats = cache.stats();
        assert!(stats.entries <= 3, "{stats:?}");
        assert!(stats.bytes <= 10_000, "{stats:?}");
        assert!(stats.bytes >= 3000, "{stats:?}");
    }

    /// Captures log lines of the current thread (the paused-clock runtime runs every task on it).
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn capture(&self) -> tracing::subscriber::DefaultGuard {
            let logs = self.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || logs.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::DEBUG)
                .finish();
            // tracing caches each callsite's interest process-wide. While one dispatcher is
            // registered it asks the *current thread's* default, so a callsite first hit on
            // another test's thread (no subscriber there) would be cached as "never" for this
            // one too. A second registered dispatcher makes it consult every dispatcher, and
            // the rebuild corrects callsites cached before this test started.
            static SECOND: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
            SECOND.get_or_init(|| {
                tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default())
            });
            let guard = tracing::subscriber::set_default(subscriber);
            tracing::callsite::rebuild_interest_cache();
            guard
        }

        fn lines(&self, level: &str) -> Vec<String> {
            String::from_utf8_lossy(&self.0.lock())
                .lines()
                .filter(|l| l.contains(level))
                .map(str::to_owned)
                .collect()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_warning_per_object_per_outage_naming_object_and_error_not_value() {
        let logs = Logs::default();
        let _guard = logs.capture();
        let ttl = Duration::from_secs(1);
        let (vault, cache) = setup(config(ttl));
        vault.set_secret("db-password", b"hunter2");
        vault.set_secret("other", b"correct-horse");
        read(&cache, "db-password").await.unwrap();
        read(&cache, "other").await.unwrap();
        vault.fail_with(Some(unavailable()));
        for _ in 0..300 {
            advance(Duration::from_millis(100)).await;
            read(&cache, "db-password").await.unwrap();
            read(&cache, "other").await.unwrap();
        }
        let warnings = logs.lines("WARN");
        assert_eq!(warnings.len(), 2, "{warnings:#?}");
        assert!(warnings.iter().any(|l| l.contains("secrets/db-password")));
        assert!(warnings.iter().any(|l| l.contains("secrets/other")));
        assert!(
            warnings
                .iter()
                .all(|l| l.contains("503 Service Unavailable"))
        );

        // Recovery is logged; the next outage warns again.
        vault.fail_with(None);
        advance(ttl).await;
        read(&cache, "db-password").await.unwrap();
        assert_eq!(logs.lines("vault answers again").len(), 1);
        vault.fail_with(Some(VaultError::Throttled));
        advance(ttl).await;
        read(&cache, "db-password").await.unwrap();
        assert_eq!(logs.lines("WARN").len(), 3);

        // Revoked access: logged with the message that names the missing role.
        vault.fail_with(Some(VaultError::Forbidden(
            "caller lacks the Key Vault Secrets User role".into(),
        )));
        advance(ttl * 2).await;
        assert!(read(&cache, "other").await.is_err());
        let errors = logs.lines("ERROR");
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].contains("Key Vault Secrets User") && errors[0].contains("secrets/other")
        );

        let all = String::from_utf8_lossy(&logs.0.lock()).into_owned();
        assert!(!all.contains("hunter2") && !all.contains("correct-horse"));
    }

    #[tokio::test(start_paused = true)]
    async fn values_never_appear_in_debug_output() {
        let (vault, cache) = setup(config(TTL));
        vault.set_secret("s", b"hunter2");
        let got = cache.secret("s", None).await.unwrap();
        assert!(!format!("{got:?}").contains("hunter2"));
        assert!(!format!("{cache:?}").contains("hunter2"));
        assert!(format!("{cache:?}").contains("misses: 1"));
    }
}
