//! The cache's background work: revalidation of latest-version entries by a list of their
//! collection, and the refresher task that keeps entries that are being read fresh ahead of
//! their expiry. The semantics are documented with the cache (`super::cache`); this module holds
//! the mechanics, as `impl Inner` blocks and the per-collection [`Refresher`] state.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use moka::ops::compute::Op;
use parking_lot::Mutex;
use tokio::time::{Instant, MissedTickBehavior};

use super::cache::{CacheConfig, Counters, Inner, Known, Mode, Request, Slot};
use crate::vault::{Collection, ObjectProps, VaultError};

/// A list may renew a cached value only if the value's `updated` is at least this much older
/// than the wall-clock start of the GET that fetched it. A list item carries no version id, only
/// the latest version's attributes, and `updated` has 1-second resolution: a second version
/// written in the same second as the one we fetched (or a little after, as the vault's clock and
/// ours disagree) would look exactly like it. Any version written after our GET started has an
/// `updated` of at least that start minus the clock skew, so with the margin it differs from the
/// cached one as long as the skew is under a minute (NTP keeps it far below).
pub const AMBIGUITY_MARGIN: Duration = Duration::from_secs(60);

/// Objects per list page (Key Vault's `maxresults` default and maximum).
pub const LIST_PAGE: usize = 25;

const MIN_TICK: Duration = Duration::from_millis(50);
const MAX_TICK: Duration = Duration::from_secs(5);

/// An entry is refreshed once its age passes `ttl × jitter`, jitter uniform in this range, drawn
/// per collection per refresh cycle (so a fleet of nodes does not refresh in lockstep).
const JITTER: (f64, f64) = (0.70, 0.90);

/// The first background retry interval after a transient failure is `min(ttl, this)`; it
/// doubles up to `max(ttl, this)`.
const FIRST_BACKOFF: Duration = Duration::from_secs(5);

/// How often the refresher looks at the cache: `clamp(ttl / 10, 50 ms, 5 s)`.
pub fn tick_interval(ttl: Duration) -> Duration {
    (ttl / 10).clamp(MIN_TICK, MAX_TICK)
}

/// Per-collection refresh state, and whether the refresher task runs.
pub(super) struct Refresher {
    started: AtomicBool,
    state: Mutex<State>,
}

struct State {
    /// splitmix64 state, for the jitter.
    rng: u64,
    collections: HashMap<Collection, CollectionState>,
}

struct CollectionState {
    /// Of the current refresh cycle.
    jitter: f64,
    /// Objects the last successful list returned (how many pages a list costs).
    list_len: Option<usize>,
    /// Set while background fetches of the collection fail transiently.
    outage: Option<Backoff>,
}

struct Backoff {
    interval: Duration,
    /// No background fetch of the collection before then.
    retry_at: Instant,
}

impl State {
    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn jitter(&mut self) -> f64 {
        JITTER.0 + (JITTER.1 - JITTER.0) * self.uniform()
    }

    fn collection(&mut self, c: Collection) -> &mut CollectionState {
        if !self.collections.contains_key(&c) {
            let jitter = self.jitter();
            self.collections.insert(
                c,
                CollectionState {
                    jitter,
                    list_len: None,
                    outage: None,
                },
            );
        }
        self.collections.get_mut(&c).expect("inserted above")
    }
}

impl Refresher {
    pub(super) fn new() -> Refresher {
        Refresher {
            started: AtomicBool::new(false),
            state: Mutex::new(State {
                rng: RandomState::new().hash_one(0u64),
                collections: HashMap::new(),
            }),
        }
    }

    /// A fixed seed for the jitter, so that a test's schedule is the same on every run.
    #[cfg(test)]
    pub(super) fn reseed(&self, seed: u64) {
        let mut state = self.state.lock();
        state.rng = seed;
        state.collections.clear();
    }

    /// Spawn the refresher task (once). It holds the cache weakly: it ends at the first tick
    /// after the last `Cache` clone is gone.
    pub(super) fn start(inner: &Arc<Inner>) {
        if inner.refresher.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let tick = tick_interval(inner.config.ttl);
        let weak = Arc::downgrade(inner);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval_at(Instant::now() + tick, tick);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                inner.tick();
            }
        });
    }

    /// The refresher retries this collection after a transient failure: readers of expired
    /// entries get their last good answer from the cache rather than a call of their own.
    pub(super) fn in_outage(&self, c: Collection) -> bool {
        self.started.load(Ordering::Relaxed)
            && self
                .state
                .lock()
                .collections
                .get(&c)
                .is_some_and(|s| s.outage.is_some())
    }

    /// Record a fetch's outcome: any answer ends the collection's outage; a transient failure of
    /// a background fetch starts or extends it, with full jitter on the retry interval.
    pub(super) fn fetched(
        &self,
        c: Collection,
        mode: Mode,
        failure: Option<&VaultError>,
        config: &CacheConfig,
    ) {
        let mut state = self.state.lock();
        match failure {
            None | Some(VaultError::NotFound | VaultError::Disabled) => {
                if let Some(s) = state.collections.get_mut(&c)
                    && s.outage.take().is_some()
                {
                    tracing::debug!(collection = c.as_str(), "background refresh recovered");
                }
            }
            Some(e) if e.is_transient() && mode == Mode::Background => {
                let first = config.ttl.min(FIRST_BACKOFF);
                let max = config.ttl.max(FIRST_BACKOFF);
                let u = state.uniform();
                let s = state.collection(c);
                let interval = s
                    .outage
                    .as_ref()
                    .map_or(first, |b| b.interval.saturating_mul(2).min(max));
                let wait = interval.mul_f64(u);
                // The failing request itself logs (once per outage); this is the schedule.
                tracing::debug!(
                    collection = c.as_str(),
                    ?interval,
                    ?wait,
                    "background refresh backing off"
                );
                s.outage = Some(Backoff {
                    interval,
                    retry_at: Instant::now() + wait,
                });
            }
            Some(_) => {}
        }
    }

    /// A list of the collection came back with `len` objects.
    pub(super) fn listed(&self, c: Collection, len: usize) {
        self.state.lock().collection(c).list_len = Some(len);
    }

    /// The age past which hot entries of each collection are refreshed, this cycle.
    fn refresh_points(&self, ttl: Duration) -> HashMap<Collection, Duration> {
        let mut state = self.state.lock();
        [
            Collection::Secrets,
            Collection::Keys,
            Collection::Certificates,
        ]
        .into_iter()
        .map(|c| (c, ttl.mul_f64(state.collection(c).jitter)))
        .collect()
    }

    /// Start a refresh cycle of a collection: `None` while it backs off, else how many list
    /// pages a list costs (`None` inside when no list has been seen). Draws the next jitter.
    fn begin_cycle(&self, c: Collection, now: Instant) -> Option<Option<usize>> {
        let mut state = self.state.lock();
        let jitter = state.jitter();
        let s = state.collection(c);
        if s.outage.as_ref().is_some_and(|b| now < b.retry_at) {
            return None;
        }
        s.jitter = jitter;
        Some(s.list_len.map(|n| n.div_ceil(LIST_PAGE).max(1)))
    }

    #[cfg(test)]
    pub(super) fn backoff(&self, c: Collection) -> Option<Duration> {
        let state = self.state.lock();
        state
            .collections
            .get(&c)?
            .outage
            .as_ref()
            .map(|b| b.interval)
    }
}

/// What one refresher tick does for a collection.
#[derive(Default)]
struct Plan {
    /// Hot latest-version entries past their refresh point.
    latest: Vec<Request>,
    /// The collection's list entry is hot and past its refresh point.
    list: bool,
    /// Hot explicit versions and version lists past their refresh point.
    other: Vec<Request>,
}

/// What a list item says about a cached latest-version entry.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Unchanged and unambiguous: the entry may be renewed.
    Same,
    /// Changed, deleted, or too close to its fetch to tell: refetch if hot.
    Changed,
    /// Cached as `NotFound`, listed now: refetch if hot, else drop.
    Appeared,
}

fn verdict(collection: Collection, known: &Known, item: Option<&ObjectProps>) -> Verdict {
    match (&known.answer, item) {
        (Ok(value), Some(item)) => match value.props() {
            Some(props)
                if same_attributes(collection, props, item)
                    && unambiguous(props.updated, known.fetched_wall) =>
            {
                Verdict::Same
            }
            _ => Verdict::Changed,
        },
        (Err(VaultError::NotFound), None) => Verdict::Same,
        (Err(VaultError::NotFound), Some(_)) => Verdict::Appeared,
        (Err(VaultError::Disabled), Some(item)) if !item.enabled => Verdict::Same,
        _ => Verdict::Changed,
    }
}

/// The attributes a list item carries for the latest version are those of the cached value.
/// A certificate's `contentType` is not in its list item (the value's is taken from its backing
/// secret), so for certificates it is compared only when the item has one; it changes only with
/// a new version, which changes `updated` anyway.
fn same_attributes(collection: Collection, cached: &ObjectProps, item: &ObjectProps) -> bool {
    cached.updated == item.updated
        && cached.enabled == item.enabled
        && cached.tags == item.tags
        && (cached.content_type == item.content_type
            || (collection == Collection::Certificates && item.content_type.is_none()))
}

/// `updated` is at least [`AMBIGUITY_MARGIN`] before the fetch started (unknown: ambiguous).
fn unambiguous(updated: Option<SystemTime>, fetched_wall: SystemTime) -> bool {
    updated
        .and_then(|u| u.checked_add(AMBIGUITY_MARGIN))
        .is_some_and(|u| u <= fetched_wall)
}

impl Inner {
    /// One refresher tick: refresh the hot entries past their refresh point, by list or GET.
    pub(super) fn tick(self: &Arc<Self>) {
        let now = Instant::now();
        let points = self.refresher.refresh_points(self.config.ttl);
        let mut plans: HashMap<Collection, Plan> = HashMap::new();
        for (key, slot) in self.slots.iter() {
            if !slot.is_hot() {
                continue;
            }
            // Nothing known (never fetched, or access revoked): readers drive those.
            let Some(known) = &slot.known else { continue };
            let c = key.collection();
            if now.saturating_duration_since(known.fetched_at) < points[&c] || self.in_flight(&key)
            {
                continue;
            }
            let plan = plans.entry(c).or_default();
            if key.latest_name().is_some() {
                plan.latest.push(slot.request.clone());
            } else if matches!(*key, Request::List(_)) {
                plan.list = true;
            } else {
                plan.other.push(slot.request.clone());
            }
        }
        for (c, plan) in plans {
            let Some(pages) = self.refresher.begin_cycle(c, now) else {
                continue;
            };
            let by_list = plan.list
                || (!plan.latest.is_empty() && pages.is_none_or(|p| plan.latest.len() > p));
            if by_list {
                // Revalidates every latest entry of the collection when it comes back, and
                // refetches the hot ones it shows changed.
                self.refresh(Request::List(c));
            } else {
                for request in plan.latest {
                    self.refresh(request);
                }
            }
            for request in plan.other {
                self.refresh(request);
            }
        }
    }

    /// Apply a list of `collection`, whose fetch started at `listed_at`, to the cached
    /// latest-version entries of that collection (see the module docs of the cache).
    pub(super) async fn revalidate(
        self: &Arc<Self>,
        collection: Collection,
        items: &[ObjectProps],
        listed_at: Instant,
    ) {
        Counters::bump(&self.counters.list_revalidations);
        let by_name: HashMap<String, &ObjectProps> = items
            .iter()
            .map(|p| (p.name.to_ascii_uppercase(), p))
            .collect();
        let entries: Vec<_> = self
            .slots
            .iter()
            .filter(|(key, _)| key.collection() == collection && key.latest_name().is_some())
            .collect();
        for (key, slot) in entries {
            let Some(known) = &slot.known else { continue };
            // A list that started before the entry's own fetch says nothing new about it.
            if slot.as_of > listed_at || known.fetched_at >= listed_at {
                continue;
            }
            let name = key.latest_name().unwrap_or_default();
            let hot = slot.is_hot();
            match verdict(collection, known, by_name.get(name).copied()) {
                // Cold entries are left to expire: renewing them would keep unread entries at
                // the head of the LRU, and a read after expiry refetches them anyway.
                Verdict::Same if hot => self.renew(&key, &slot, listed_at).await,
                Verdict::Changed | Verdict::Appeared if hot => {
                    self.refresh(slot.request.clone());
                }
                Verdict::Appeared => self.drop_if_current(&key, &slot).await,
                _ => {}
            }
        }
    }

    /// Make `seen` fresh as of `listed_at`, unless another state replaced it meanwhile.
    async fn renew(&self, key: &Request, seen: &Arc<Slot>, listed_at: Instant) {
        let Some(known) = &seen.known else { return };
        let mut renewed = false;
        self.slots
            .entry(key.clone())
            .and_compute_with(|current| {
                let op = match current.map(|entry| entry.into_value()) {
                    Some(current) if Arc::ptr_eq(&current, seen) => {
                        renewed = true;
                        Op::Put(Arc::new(Slot {
                            known: Some(Known {
                                fetched_at: listed_at,
                                ..known.clone()
                            }),
                            outage: None,
                            as_of: listed_at,
                            bytes: seen.bytes,
                            request: seen.request.clone(),
                            read: AtomicBool::new(false),
                        }))
                    }
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        if renewed {
            Counters::bump(&self.counters.revalidated);
        }
    }

    /// Forget `seen` (a `NotFound` for an object that now exists), unless it was replaced.
    async fn drop_if_current(&self, key: &Request, seen: &Arc<Slot>) {
        self.slots
            .entry(key.clone())
            .and_compute_with(|current| {
                std::future::ready(match current.map(|entry| entry.into_value()) {
                    Some(current) if Arc::ptr_eq(&current, seen) => Op::Remove,
                    _ => Op::Nop,
                })
            })
            .await;
    }
}
