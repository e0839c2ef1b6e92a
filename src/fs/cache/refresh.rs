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
use crate::vault::clock::distinguishable;
use crate::vault::{Collection, ObjectProps, VaultError};

/// Objects per list page (Key Vault's `maxresults` default and maximum).
pub const LIST_PAGE: usize = 25;

const MIN_TICK: Duration = Duration::from_millis(50);
const MAX_TICK: Duration = Duration::from_secs(5);

/// An entry is refreshed once its age passes `ttl × jitter`, jitter uniform in this range, drawn
/// per collection per refresh cycle (so a fleet of nodes does not refresh in lockstep). With the
/// tick of [`tick_interval`], a refresh starts by 0.85 × TTL at the latest, leaving the rest of
/// the TTL for the fetch: a reader never finds its entry expired while it is being refreshed.
const JITTER: (f64, f64) = (0.60, 0.80);

/// The first background retry interval after a transient failure is `min(ttl, this)`; it
/// doubles up to `max(ttl, this)`.
const FIRST_BACKOFF: Duration = Duration::from_secs(5);

/// After the vault refuses to list a collection (an identity allowed to get objects but not to
/// list them, as an access policy with only `get` is), its objects are refreshed one GET each,
/// and listing is tried again after `max(ttl, this)`.
const LIST_REFUSED_RETRY: Duration = Duration::from_secs(600);

/// How often the refresher looks at the cache: `clamp(ttl / 20, 50 ms, 5 s)`.
pub fn tick_interval(ttl: Duration) -> Duration {
    (ttl / 20).clamp(MIN_TICK, MAX_TICK)
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
    /// The vault refused to list the collection (403): no list before then.
    list_refused_until: Option<Instant>,
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
                    list_refused_until: None,
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
    /// a background fetch starts or extends it, with full jitter on the retry interval. A list
    /// the vault refuses makes the refresher fall back to GETs for a while.
    pub(super) fn fetched(
        &self,
        c: Collection,
        mode: Mode,
        is_list: bool,
        failure: Option<&VaultError>,
        config: &CacheConfig,
    ) {
        let mut state = self.state.lock();
        match failure {
            None | Some(VaultError::NotFound | VaultError::Disabled) => {
                if let Some(s) = state.collections.get_mut(&c) {
                    if s.outage.take().is_some() {
                        tracing::debug!(collection = c.as_str(), "background refresh recovered");
                    }
                    if is_list {
                        s.list_refused_until = None;
                    }
                }
            }
            // A 403 on a list: the identity may `get` but not `list`. (A 401 is about the
            // token, not the permission: the token cache replaces it.)
            Some(VaultError::Forbidden(_)) if is_list => {
                let retry = config.ttl.max(LIST_REFUSED_RETRY);
                let s = state.collection(c);
                if s.list_refused_until.is_none() {
                    // The refusal itself is logged by the cache, with what is missing.
                    tracing::info!(
                        collection = c.as_str(),
                        ?retry,
                        "listing refused; refreshing objects one GET each until listing is allowed"
                    );
                }
                s.list_refused_until = Some(Instant::now() + retry);
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

    /// Start a refresh cycle of a collection: `None` while it backs off, else how it may be
    /// refreshed. Draws the next jitter.
    fn begin_cycle(&self, c: Collection, now: Instant) -> Option<Cycle> {
        let mut state = self.state.lock();
        let jitter = state.jitter();
        let s = state.collection(c);
        if s.outage.as_ref().is_some_and(|b| now < b.retry_at) {
            return None;
        }
        s.jitter = jitter;
        Some(Cycle {
            list_pages: s.list_len.map(|n| n.div_ceil(LIST_PAGE).max(1)),
            may_list: s.list_refused_until.is_none_or(|until| now >= until),
        })
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

/// How a collection may be refreshed this cycle.
struct Cycle {
    /// How many pages a list of it costs (`None` until a list has been seen).
    list_pages: Option<usize>,
    /// Listing it is allowed (not refused recently).
    may_list: bool,
}

/// What one refresher tick does for a collection.
#[derive(Default)]
struct Plan {
    /// Hot latest-version entries past their refresh point, and whether they have expired.
    latest: Vec<(Request, bool)>,
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
                    && unambiguous(props.updated, known.vault_reached) =>
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

/// A list item with the same attributes vouches for the cached value only if no later version
/// could carry the same `updated` (see `crate::vault::clock`; unknown: ambiguous).
fn unambiguous(updated: Option<SystemTime>, vault_reached: SystemTime) -> bool {
    updated.is_some_and(|u| distinguishable(u, vault_reached))
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
                let expired = now.saturating_duration_since(known.fetched_at) >= self.config.ttl;
                plan.latest.push((slot.request.clone(), expired));
            } else if matches!(*key, Request::List(_)) {
                plan.list = true;
            } else {
                plan.other.push(slot.request.clone());
            }
        }
        for (c, plan) in plans {
            let Some(cycle) = self.refresher.begin_cycle(c, now) else {
                continue;
            };
            let by_list = cycle.may_list
                && (plan.list
                    || (!plan.latest.is_empty()
                        && cycle.list_pages.is_none_or(|p| plan.latest.len() > p)));
            if by_list {
                // Revalidates every latest entry of the collection when it comes back, and
                // refetches the hot ones it shows changed.
                self.refresh(Request::List(c));
            } else {
                // One GET per object and TTL at most, as a client polling each object would
                // make: refreshing ahead of expiry by GET would cost more than that (a list
                // ahead of expiry is one call for many objects). Readers that find the entry
                // expired meanwhile fetch it themselves, once, and this skips it.
                for (request, expired) in plan.latest {
                    if expired {
                        self.refresh(request);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::cache::{Cache, Change};
    use crate::vault::memory::{MemoryVault, wall_clock};
    use tokio::time::sleep;

    const TTL: Duration = Duration::from_secs(60);
    /// Objects written this long before they are first read are not ambiguous.
    const AGED: Duration = Duration::from_secs(120);

    fn setup(ttl: Duration) -> (Arc<MemoryVault>, Cache) {
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
        cache.inner.refresher.reseed(7);
        (vault, cache)
    }

    fn listen(cache: &Cache) -> Arc<Mutex<Vec<Change>>> {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&changes);
        assert!(cache.set_change_listener(Arc::new(move |c| sink.lock().push(c))));
        changes
    }

    async fn read(cache: &Cache, name: &str) -> Result<Vec<u8>, VaultError> {
        cache
            .secret(name, None)
            .await
            .map(|c| c.value.value.clone())
    }

    /// Let spawned tasks (background flights) run, without moving the clock.
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    fn secret(name: &str) -> Change {
        Change::Object {
            collection: Collection::Secrets,
            name: name.into(),
        }
    }

    #[test]
    fn tick_is_a_twentieth_of_the_ttl_within_bounds() {
        assert_eq!(tick_interval(TTL), Duration::from_secs(3));
        assert_eq!(
            tick_interval(Duration::from_secs(10)),
            Duration::from_millis(500)
        );
        assert_eq!(tick_interval(Duration::from_secs(3600)), MAX_TICK);
        assert_eq!(tick_interval(Duration::from_millis(100)), MIN_TICK);
    }

    #[test]
    fn list_items_vouch_only_for_the_same_attributes_well_after_the_write() {
        let written = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let cached = ObjectProps {
            name: "c".into(),
            version: Some("0".repeat(32)),
            enabled: true,
            updated: Some(written),
            content_type: Some("application/x-pem-file".into()),
            ..Default::default()
        };
        let item = ObjectProps {
            version: None,
            ..cached.clone()
        };
        assert!(same_attributes(Collection::Secrets, &cached, &item));
        for other in [
            ObjectProps {
                updated: Some(written + Duration::from_secs(1)),
                ..item.clone()
            },
            ObjectProps {
                enabled: false,
                ..item.clone()
            },
            ObjectProps {
                tags: [("env".to_string(), "prod".to_string())].into(),
                ..item.clone()
            },
            ObjectProps {
                content_type: Some("text/plain".into()),
                ..item.clone()
            },
        ] {
            assert!(!same_attributes(Collection::Certificates, &cached, &other));
        }
        // A certificate's list item has no contentType (the value's comes from its secret).
        let bare = ObjectProps {
            content_type: None,
            ..item.clone()
        };
        assert!(same_attributes(Collection::Certificates, &cached, &bare));
        assert!(!same_attributes(Collection::Secrets, &cached, &bare));

        let second = Duration::from_secs(1);
        assert!(unambiguous(Some(written), written + second));
        assert!(!unambiguous(
            Some(written),
            written + second - Duration::from_millis(1)
        ));
        assert!(!unambiguous(None, written + second));
    }

    #[tokio::test(start_paused = true)]
    async fn keys_and_certificates_are_revalidated_by_their_lists() {
        let (vault, cache) = setup(TTL);
        let changes = listen(&cache);
        vault.set_key("k", serde_json::json!({"kty": "EC"}));
        vault.set_certificate("c", vec![1, 2, 3], Some(("application/x-pem-file", "PEM")));
        sleep(AGED).await;
        cache.key("k", None).await.unwrap();
        cache.certificate("C", None).await.unwrap();
        sleep(Duration::from_secs(10)).await;
        cache.list(Collection::Keys).await.unwrap();
        cache.list(Collection::Certificates).await.unwrap();
        settle().await;
        assert_eq!(cache.stats().revalidated, 2);
        assert_eq!(cache.key("k", None).await.unwrap().valid_for, TTL);
        assert_eq!(cache.certificate("c", None).await.unwrap().valid_for, TTL);
        assert_eq!(
            (vault.calls("get_key"), vault.calls("get_certificate")),
            (1, 1)
        );

        // New versions: the lists show another `updated`; both hot entries are refetched.
        vault.set_key("k", serde_json::json!({"kty": "RSA"}));
        vault.set_certificate("c", vec![4, 5, 6], None);
        sleep(TTL).await;
        cache.list(Collection::Keys).await.unwrap();
        cache.list(Collection::Certificates).await.unwrap();
        settle().await;
        assert_eq!(
            (vault.calls("get_key"), vault.calls("get_certificate")),
            (2, 2)
        );
        let key = cache.key("k", None).await.unwrap();
        assert_eq!(key.value.jwk["kty"], "RSA");
        assert_eq!(
            cache.certificate("c", None).await.unwrap().value.cer,
            [4, 5, 6]
        );
        assert_eq!(
            *changes.lock(),
            vec![
                Change::Object {
                    collection: Collection::Keys,
                    name: "k".into()
                },
                Change::Object {
                    collection: Collection::Certificates,
                    name: "c".into()
                },
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_per_refresh_cycle_keeps_500_hot_secrets_fresh() {
        let (vault, cache) = setup(TTL);
        for i in 0..500 {
            vault.set_secret(&format!("s{i}"), format!("v{i}").as_bytes());
        }
        sleep(AGED).await;
        cache.start_refresher();
        // Every secret read once a second for 10 TTLs.
        for _ in 0..=600 {
            for i in 0..500 {
                let got = read(&cache, &format!("s{i}")).await.unwrap();
                assert_eq!(got, format!("v{i}").as_bytes());
            }
            sleep(Duration::from_secs(1)).await;
        }
        // The first reads fetch; after that one list per refresh cycle renews all 500. Cycles
        // are at least 0.6 × 60 s = 36 s apart, so at most 600 / 36 = 16 lists; at most
        // 0.8 × 60 s plus a 3 s tick = 51 s: at least 11.
        let (gets, lists) = (vault.calls("get_secret"), vault.calls("list"));
        assert_eq!(gets, 500);
        assert!((11..=16).contains(&lists), "{lists} lists");
        let stats = cache.stats();
        assert_eq!(stats.revalidated, 500 * lists);
        assert_eq!(stats.list_revalidations, lists);
        assert_eq!(stats.background_fetches, lists);
        assert_eq!(stats.misses, gets + lists);
        assert_eq!(stats.stale_served, 0);
    }

    /// An identity that may get secrets but not list them (an access policy with only `get`):
    /// the refresher falls back to one GET per hot secret, and does not ask for the refused list
    /// again every tick.
    #[tokio::test(start_paused = true)]
    async fn a_refused_list_falls_back_to_gets() {
        let (vault, cache) = setup(TTL);
        for i in 0..30 {
            vault.set_secret(&format!("s{i}"), format!("v{i}").as_bytes());
        }
        vault.fail_op(
            "list",
            Some(VaultError::Forbidden(
                "the 'list' permission on secrets".into(),
            )),
        );
        sleep(AGED).await;
        cache.start_refresher();
        for _ in 0..=300 {
            for i in 0..30 {
                let got = read(&cache, &format!("s{i}")).await.unwrap();
                assert_eq!(got, format!("v{i}").as_bytes());
            }
            sleep(Duration::from_secs(1)).await;
        }
        // One refused list (30 hot secrets are more than the pages a list would take, as far as
        // the refresher knows), then GETs: every secret once per TTL, no more (a client polling
        // each object would make as many): read every second, each expires at 60, 120, … s and
        // its first reader after that fetches it (or joins the refresher's GET): 0, 60, …, 300.
        assert_eq!(vault.calls("list"), 1);
        assert_eq!(vault.calls("get_secret"), 30 * 6);
        assert_eq!(cache.stats().stale_served, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rotation_is_seen_within_a_ttl_and_reported_once() {
        let (vault, cache) = setup(TTL);
        let changes = listen(&cache);
        // 30 secrets: two list pages, so a cycle lists rather than GETs each.
        for i in 0..30 {
            vault.set_secret(&format!("s{i}"), b"old");
        }
        sleep(AGED).await;
        cache.start_refresher();
        let start = Instant::now();
        let mut rotated_at = None;
        let mut first_seen = None;
        while start.elapsed() < 5 * TTL {
            if rotated_at.is_none() && start.elapsed() >= Duration::from_secs(100) {
                vault.set_secret("s7", b"new");
                rotated_at = Some(Instant::now());
            }
            for i in 0..30 {
                let got = read(&cache, &format!("s{i}")).await.unwrap();
                let expected: &[u8] = match rotated_at {
                    Some(at) if i == 7 && at.elapsed() > TTL => b"new",
                    _ if i == 7 && got == b"new" => b"new",
                    _ => b"old",
                };
                assert_eq!(got, expected, "s{i} at {:?}", start.elapsed());
                if i == 7 && got == b"new" && first_seen.is_none() {
                    first_seen = rotated_at.map(|at| at.elapsed());
                }
            }
            sleep(Duration::from_secs(1)).await;
        }
        // Seen before the TTL was up: the next cycle's list showed it changed.
        let first_seen = first_seen.expect("rotation seen");
        assert!(first_seen < TTL, "seen {first_seen:?} after the rotation");
        assert_eq!(*changes.lock(), vec![secret("s7")]);
        // 30 first GETs, everything else by lists but for s7 after its rotation: the list after
        // the rotation shows it changed (one GET, seconds after the write, so the lists after
        // it can tell the new value from any later one and renew it).
        assert_eq!(vault.calls("get_secret"), 30 + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_value_too_close_to_its_fetch_is_refetched_not_renewed() {
        let (vault, cache) = setup(TTL);
        vault.set_secret("old", b"o");
        sleep(AGED).await;
        // Written in the second it is fetched: a list cannot tell it from a newer version.
        vault.set_secret("fresh", b"f");
        read(&cache, "old").await.unwrap();
        read(&cache, "fresh").await.unwrap();
        sleep(Duration::from_secs(10)).await;
        cache.list(Collection::Secrets).await.unwrap();
        settle().await;
        assert_eq!(vault.calls("get_secret"), 3, "fresh refetched by GET");
        let stats = cache.stats();
        assert_eq!((stats.revalidated, stats.background_fetches), (1, 1));
        // The renewed entry is fresh as of the list: a whole TTL again.
        assert_eq!(cache.secret("old", None).await.unwrap().valid_for, TTL);
        assert_eq!(cache.secret("fresh", None).await.unwrap().valid_for, TTL);

        // Refetched ten seconds after its write, the value is no longer ambiguous: the next
        // list renews it.
        let gets = vault.calls("get_secret");
        sleep(TTL - Duration::from_secs(5)).await;
        read(&cache, "fresh").await.unwrap();
        read(&cache, "old").await.unwrap();
        sleep(Duration::from_secs(6)).await; // the list's own entry expires
        cache.list(Collection::Secrets).await.unwrap();
        settle().await;
        assert_eq!(vault.calls("get_secret"), gets);
        assert_eq!(cache.stats().revalidated, 1 + 2, "old again, and fresh");
    }

    /// Fetch `name` once, `written_before` after writing it, then list a few seconds later:
    /// whether the list renewed it (else it refetched it).
    async fn renewed_after(vault: &MemoryVault, cache: &Cache, written_before: Duration) -> bool {
        let gets = vault.calls("get_secret");
        let renewed = cache.stats().revalidated;
        vault.set_secret("s", b"v");
        sleep(written_before).await;
        read(cache, "s").await.unwrap();
        sleep(Duration::from_secs(5)).await;
        cache.list(Collection::Secrets).await.unwrap();
        settle().await;
        let refetched = vault.calls("get_secret") - gets == 2;
        let was_renewed = cache.stats().revalidated > renewed;
        assert_ne!(refetched, was_renewed);
        // Expire it, so the next round fetches afresh.
        sleep(TTL).await;
        was_renewed
    }

    /// The margin comes from the vault's `Date`s, whatever the skew between its clock and ours:
    /// a value written 3 s before its fetch is vouched for by lists at once; one written in the
    /// second it is fetched is refetched (a later version could carry the same `updated`).
    #[tokio::test(start_paused = true)]
    async fn the_margin_follows_the_vault_clock_seen_in_its_dates() {
        for skew_ms in [0, 90_000, -90_000, 1_500, -1_500] {
            let (vault, cache) = setup(TTL);
            vault.set_clock_skew(skew_ms);
            // The clock's first samples: a list's Date (the vault is empty).
            cache.list(Collection::Secrets).await.unwrap();
            sleep(TTL).await;
            assert!(
                renewed_after(&vault, &cache, Duration::from_secs(3)).await,
                "skew {skew_ms} ms: 3 s"
            );
            assert!(
                !renewed_after(&vault, &cache, Duration::ZERO).await,
                "skew {skew_ms} ms: same second"
            );
        }
    }

    /// Without a `Date` (a vault whose clock kvfs cannot see) and before any stamp teaches it
    /// better, the old assumption stands: the clocks agree within a minute, so a value written
    /// 3 s before its fetch is not vouched for, one written a minute before is.
    #[tokio::test(start_paused = true)]
    async fn without_dates_the_margin_starts_at_a_minute() {
        let (vault, cache) = setup(TTL);
        vault.set_dates(false);
        assert!(!renewed_after(&vault, &cache, Duration::from_secs(3)).await);
        let (vault, cache) = setup(TTL);
        vault.set_dates(false);
        assert!(renewed_after(&vault, &cache, Duration::from_secs(61)).await);
    }

    /// A vault clock two minutes behind ours, and a rotation written in the same second (on its
    /// clock) as the fetch of the value it replaces, with the same attributes: the list cannot
    /// tell them apart, and must not renew the old value. (Assuming a minute of skew at most,
    /// as kvfs did before it read the vault's `Date`s, it would have: forever.)
    #[tokio::test(start_paused = true)]
    async fn a_rotation_in_the_second_of_the_fetch_is_not_hidden_by_a_skewed_clock() {
        let (vault, cache) = setup(TTL);
        vault.set_clock_skew(-120_000);
        // 30 others read along, so that the refresher lists rather than GETs.
        for i in 0..30 {
            vault.set_secret(&format!("o{i}"), b"o");
        }
        cache.list(Collection::Secrets).await.unwrap();
        sleep(TTL).await;
        vault.set_secret("s", b"old");
        sleep(Duration::from_secs(90)).await;
        vault.set_secret("s", b"old-again");
        read(&cache, "s").await.unwrap();
        vault.set_secret("s", b"new");
        cache.start_refresher();
        for _ in 0..(2 * 60) {
            read(&cache, "s").await.unwrap();
            for i in 0..30 {
                read(&cache, &format!("o{i}")).await.unwrap();
            }
            sleep(Duration::from_secs(1)).await;
        }
        assert!(vault.calls("list") >= 3, "the refresher listed");
        assert_eq!(read(&cache, "s").await.unwrap(), b"new");
    }

    /// Readers whose entries expire while their collection's list is in flight wait for that
    /// list (which renews them) instead of each sending a GET.
    #[tokio::test(start_paused = true)]
    async fn readers_of_expired_entries_wait_for_the_list_in_flight() {
        let ttl = Duration::from_secs(2);
        let (vault, cache) = setup(ttl);
        for i in 0..30 {
            vault.set_secret(&format!("s{i}"), format!("v{i}").as_bytes());
        }
        sleep(AGED).await;
        for i in 0..30 {
            read(&cache, &format!("s{i}")).await.unwrap();
        }
        // A list that starts 1.8 s into the entries' TTL and takes half a second.
        vault.set_delay(Duration::from_millis(500));
        sleep(Duration::from_millis(1800)).await;
        let lister = tokio::spawn({
            let cache = cache.clone();
            async move { cache.list(Collection::Secrets).await.map(|_| ()) }
        });
        sleep(Duration::from_millis(300)).await;
        // Expired now, and the list is still out.
        assert!(cache.inner.in_flight(&Request::List(Collection::Secrets)));
        let readers: Vec<_> = (0..30)
            .map(|i| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    let got = cache.secret(&format!("s{i}"), None).await.unwrap();
                    (i, got.value.value.clone(), got.stale, got.valid_for)
                })
            })
            .collect();
        for reader in readers {
            let (i, value, stale, valid_for) = reader.await.unwrap();
            assert_eq!(value, format!("v{i}").as_bytes());
            assert!(!stale);
            // Fresh as of the list's start, 0.3 s before the read and 0.2 s before its answer.
            assert_eq!(valid_for, ttl - Duration::from_millis(500));
        }
        lister.await.unwrap().unwrap();
        assert_eq!(vault.calls("get_secret"), 30);
        assert_eq!(cache.stats().revalidated, 30);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_secret_reads_as_not_found_after_the_ttl() {
        let (vault, cache) = setup(TTL);
        let changes = listen(&cache);
        for i in 0..30 {
            vault.set_secret(&format!("s{i}"), b"v");
        }
        sleep(AGED).await;
        cache.start_refresher();
        let start = Instant::now();
        let mut gone_at = None;
        while start.elapsed() < 3 * TTL {
            // After the first background list (45 to 55 s), so that the next one differs.
            if gone_at.is_none() && start.elapsed() >= Duration::from_secs(70) {
                vault.remove("s3");
                gone_at = Some(Instant::now());
            }
            for i in 0..30 {
                let got = read(&cache, &format!("s{i}")).await;
                if i == 3 && gone_at.is_some_and(|at| at.elapsed() > TTL) {
                    assert_eq!(got, Err(VaultError::NotFound));
                } else if i != 3 {
                    assert_eq!(got.unwrap(), b"v");
                }
            }
            sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(
            *changes.lock(),
            vec![Change::Listing(Collection::Secrets), secret("s3")]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cached_not_found_is_renewed_while_absent_and_dropped_once_created() {
        let (vault, cache) = setup(TTL);
        let changes = listen(&cache);
        vault.set_secret("other", b"x");
        assert_eq!(read(&cache, "new").await, Err(VaultError::NotFound));
        sleep(Duration::from_secs(10)).await;
        // Hot and absent from the list: renewed.
        cache.list(Collection::Secrets).await.unwrap();
        assert_eq!(cache.stats().revalidated, 1);
        assert_eq!(read(&cache, "new").await, Err(VaultError::NotFound));

        // Created, then listed while the entry is hot: refetched at once, reported.
        vault.set_secret("new", b"here");
        sleep(Duration::from_secs(5)).await;
        assert_eq!(read(&cache, "new").await, Err(VaultError::NotFound));
        sleep(TTL - Duration::from_secs(5)).await; // the list entry expires, the object's not yet
        cache.list(Collection::Secrets).await.unwrap();
        settle().await;
        assert_eq!(read(&cache, "new").await.unwrap(), b"here");
        assert_eq!(vault.calls("get_secret"), 2);
        assert_eq!(
            *changes.lock(),
            vec![Change::Listing(Collection::Secrets), secret("new")]
        );

        // A cold NotFound (renewed, not read since) is dropped: the next read fetches.
        assert_eq!(read(&cache, "later").await, Err(VaultError::NotFound));
        sleep(TTL).await;
        cache.list(Collection::Secrets).await.unwrap(); // renews the hot "later"
        vault.set_secret("later", b"hi");
        sleep(TTL).await;
        cache.list(Collection::Secrets).await.unwrap(); // "later" is cold now: dropped
        settle().await;
        let gets = vault.calls("get_secret");
        assert_eq!(read(&cache, "later").await.unwrap(), b"hi");
        assert_eq!(vault.calls("get_secret"), gets + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn cold_entries_are_not_refreshed() {
        let (vault, cache) = setup(TTL);
        for i in 0..10 {
            vault.set_secret(&format!("s{i}"), b"v");
        }
        sleep(AGED).await;
        cache.start_refresher();
        for i in 0..10 {
            read(&cache, &format!("s{i}")).await.unwrap();
        }
        // Read once (fetched for a reader): one background revalidation, a list (ten entries,
        // no list seen yet), then nothing however long nobody reads.
        sleep(TTL).await;
        assert_eq!((vault.calls("get_secret"), vault.calls("list")), (10, 1));
        sleep(10 * TTL).await;
        assert_eq!((vault.calls("get_secret"), vault.calls("list")), (10, 1));
        // Renewed by that list at about 0.8 TTL and expired since: a read fetches again.
        read(&cache, "s0").await.unwrap();
        assert_eq!(vault.calls("get_secret"), 11);
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_lists_back_off_without_a_get_storm_and_values_stay_served() {
        let (vault, cache) = setup(TTL);
        for i in 0..50 {
            vault.set_secret(&format!("s{i}"), format!("v{i}").as_bytes());
        }
        sleep(AGED).await;
        cache.start_refresher();
        let read_all = || async {
            for i in 0..50 {
                let got = cache.secret(&format!("s{i}"), None).await.unwrap();
                assert_eq!(got.value.value, format!("v{i}").as_bytes());
            }
        };
        read_all().await;
        sleep(Duration::from_secs(1)).await;
        vault.fail_with(Some(VaultError::Throttled));
        // Ten minutes of throttling, every secret read every second.
        for _ in 0..600 {
            read_all().await;
            sleep(Duration::from_secs(1)).await;
        }
        let lists = vault.calls("list");
        assert_eq!(vault.calls("get_secret"), 50, "no GET in the outage");
        // Retry intervals 5, 10, 20, 40 s, then 60 s, each waited with full jitter (uniform in
        // [0, interval], on 5 s ticks): about 600 / 35 attempts, not one per object per interval.
        assert!((5..=30).contains(&lists), "{lists} lists");
        assert_eq!(
            cache.inner.refresher.backoff(Collection::Secrets),
            Some(TTL)
        );
        assert!(cache.stats().stale_served > 40 * 500);

        // Recovery: the next background list renews everything; a rotation shows within a TTL.
        vault.fail_with(None);
        vault.set_secret("s1", b"v1-new");
        for _ in 0..=90 {
            for i in [0, 2, 3] {
                assert_eq!(
                    read(&cache, &format!("s{i}")).await.unwrap(),
                    format!("v{i}").as_bytes()
                );
            }
            read(&cache, "s1").await.unwrap();
            sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(read(&cache, "s1").await.unwrap(), b"v1-new");
        assert_eq!(cache.inner.refresher.backoff(Collection::Secrets), None);
        assert!(!cache.secret("s0", None).await.unwrap().stale);
    }

    #[tokio::test(start_paused = true)]
    async fn readers_never_wait_for_a_background_refresh() {
        let (vault, cache) = setup(TTL);
        vault.set_secret("s", b"v");
        sleep(AGED).await;
        cache.start_refresher();
        read(&cache, "s").await.unwrap();
        // The vault now takes 30 s per call.
        vault.set_delay(Duration::from_secs(30));
        let mut waited_on = 0;
        for _ in 0..59 {
            let before = Instant::now();
            let got = cache.secret("s", None).await.unwrap();
            assert_eq!(Instant::now(), before, "a warm read waited");
            assert_eq!(got.value.value, b"v");
            assert!(!got.stale);
            if cache.inner.in_flight(&Request::List(Collection::Secrets)) {
                waited_on += 1;
            }
            sleep(Duration::from_secs(1)).await;
        }
        assert!(
            waited_on > 5,
            "a background list was in flight during {waited_on} reads"
        );
        assert_eq!(vault.calls("get_secret"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn hot_version_lists_are_refreshed_ahead_of_expiry() {
        let (vault, cache) = setup(TTL);
        vault.set_secret("s", b"1");
        sleep(AGED).await;
        cache.start_refresher();
        for _ in 0..(3 * 60) {
            let got = cache.versions(Collection::Secrets, "s").await.unwrap();
            assert!(!got.stale);
            sleep(Duration::from_secs(1)).await;
        }
        // One reader fetch, then a background fetch per cycle (45 to 55 s): every read a hit.
        let calls = vault.calls("list_versions");
        assert!((3..=5).contains(&calls), "{calls}");
        let stats = cache.stats();
        assert_eq!(stats.hits, 3 * 60 - 1);
        assert_eq!(stats.background_fetches, calls - 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_refresher_ends_with_the_last_cache_clone() {
        let (_vault, cache) = setup(TTL);
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        cache.start_refresher();
        cache.start_refresher();
        assert_eq!(metrics.num_alive_tasks(), before + 1);
        let clone = cache.clone();
        drop(cache);
        sleep(2 * MAX_TICK).await;
        assert_eq!(metrics.num_alive_tasks(), before + 1);
        drop(clone);
        sleep(2 * MAX_TICK).await;
        assert_eq!(metrics.num_alive_tasks(), before);
    }
}
