//! The background refresher: a task that keeps the entries being read fresh ahead of their
//! expiry, by one list of their collection (which revalidates them, see `super::revalidate`) or a
//! GET each, and backs off per collection when the vault fails. What it does and why is in
//! doc/CACHE.md; this module holds the schedule and the per-collection state. It sees the cache
//! only through [`Refreshable`].

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::{Instant, MissedTickBehavior};

use super::entry::FIRST_RETRY;
use super::flights::Mode;
use super::request::Request;
use crate::vault::{Collection, VaultError};

/// Objects per list page (Key Vault's `maxresults` default and maximum).
const LIST_PAGE: usize = 25;

const MIN_TICK: Duration = Duration::from_millis(50);
const MAX_TICK: Duration = Duration::from_secs(5);

/// An entry is refreshed once its age passes `ttl × jitter`, jitter uniform in this range, drawn
/// per collection per refresh cycle (so a fleet of nodes does not refresh in lockstep). With the
/// tick of [`tick_interval`] (at most `ttl / 20`), a refresh starts by `(JITTER.1 + 1/20) × ttl`
/// at the latest, leaving the rest of the TTL for the fetch: a reader never finds its entry
/// expired while it is being refreshed.
const JITTER: (f64, f64) = (0.60, 0.80);

/// After the vault refuses to list a collection (an identity allowed to get objects but not to
/// list them, as an access policy with only `get` is), its objects are refreshed one GET each,
/// and listing is tried again after `max(ttl, this)`.
const LIST_REFUSED_RETRY: Duration = Duration::from_secs(600);

/// The refresher's log lines keep the target they had before it moved under `fs::cache`, so a
/// `KVFS_LOG` filter or a log pipeline that names it still matches them.
const LOG_TARGET: &str = "kvfs::fs::refresh";

/// How often the refresher looks at the cache: `clamp(ttl / 20, MIN_TICK, MAX_TICK)`.
fn tick_interval(ttl: Duration) -> Duration {
    (ttl / 20).clamp(MIN_TICK, MAX_TICK)
}

/// The cache as the refresher sees it: the entries being read, and background fetches.
pub(super) trait Refreshable: Send + Sync + 'static {
    /// The refresher's own state, which the cache holds.
    fn refresher(&self) -> &Refresher;

    /// The entries read since their state was stored (hot) that hold an answer, have no fetch
    /// under way, and are `due` (by collection and start of the fetch that got their answer).
    fn hot_entries(&self, due: &dyn Fn(Collection, Instant) -> bool) -> Vec<HotEntry>;

    /// Fetch `request` in the background, although its entry may still be fresh, unless a
    /// flight of its key that a reader could still join is under way.
    fn refresh(self: &Arc<Self>, request: Request);
}

/// A hot entry, as [`Refreshable::hot_entries`] gives it.
pub(super) struct HotEntry {
    /// As the reader that created the entry spelt it: what a refresh asks.
    pub(super) request: Request,
    /// Start of the fetch (or of the list that renewed it) that got the entry's answer.
    pub(super) fetched_at: Instant,
}

/// Per-collection refresh state, and whether the refresher task runs.
pub(super) struct Refresher {
    ttl: Duration,
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
    /// The refresher of a cache whose entries live `ttl`.
    pub(super) fn new(ttl: Duration) -> Refresher {
        Refresher {
            ttl,
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
    pub(super) fn start<C: Refreshable>(cache: &Arc<C>) {
        let refresher = cache.refresher();
        if refresher.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let tick = tick_interval(refresher.ttl);
        let weak = Arc::downgrade(cache);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval_at(Instant::now() + tick, tick);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(cache) = weak.upgrade() else { break };
                tick_once(&cache);
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
    ) {
        let mut state = self.state.lock();
        match failure {
            None | Some(VaultError::NotFound | VaultError::Disabled) => {
                if let Some(s) = state.collections.get_mut(&c) {
                    if s.outage.take().is_some() {
                        tracing::debug!(target: LOG_TARGET, collection = c.as_str(), "background refresh recovered");
                    }
                    if is_list {
                        s.list_refused_until = None;
                    }
                }
            }
            // A 403 on a list: the identity may `get` but not `list`. (A 401 is about the
            // token, not the permission: the token cache replaces it.)
            Some(VaultError::Forbidden(_)) if is_list => {
                let retry = self.ttl.max(LIST_REFUSED_RETRY);
                let s = state.collection(c);
                if s.list_refused_until.is_none() {
                    // The refusal itself is logged by the cache, with what is missing.
                    tracing::info!(
                        target: LOG_TARGET,
                        collection = c.as_str(),
                        ?retry,
                        "listing refused; refreshing objects one GET each until listing is allowed"
                    );
                }
                s.list_refused_until = Some(Instant::now() + retry);
            }
            Some(e) if e.is_transient() && mode == Mode::Background => {
                // The interval of an object's first retry (without its `MIN_RETRY` floor),
                // doubling up to `max(ttl, FIRST_RETRY)`.
                let first = self.ttl.min(FIRST_RETRY);
                let max = self.ttl.max(FIRST_RETRY);
                let u = state.uniform();
                let s = state.collection(c);
                let interval = s
                    .outage
                    .as_ref()
                    .map_or(first, |b| b.interval.saturating_mul(2).min(max));
                let wait = interval.mul_f64(u);
                // The failing request itself logs (once per outage); this is the schedule.
                tracing::debug!(
                    target: LOG_TARGET,
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
    fn refresh_points(&self) -> HashMap<Collection, Duration> {
        let mut state = self.state.lock();
        [
            Collection::Secrets,
            Collection::Keys,
            Collection::Certificates,
        ]
        .into_iter()
        .map(|c| (c, self.ttl.mul_f64(state.collection(c).jitter)))
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

/// One refresher tick: refresh the hot entries past their refresh point, by list or GET.
fn tick_once<C: Refreshable>(cache: &Arc<C>) {
    let now = Instant::now();
    let refresher = cache.refresher();
    let points = refresher.refresh_points();
    let due = |c: Collection, fetched_at: Instant| {
        now.saturating_duration_since(fetched_at) >= points[&c]
    };
    let mut plans: HashMap<Collection, Plan> = HashMap::new();
    for HotEntry {
        request,
        fetched_at,
    } in cache.hot_entries(&due)
    {
        let plan = plans.entry(request.collection()).or_default();
        if request.latest_name().is_some() {
            let expired = now.saturating_duration_since(fetched_at) >= refresher.ttl;
            plan.latest.push((request, expired));
        } else if matches!(request, Request::List(_)) {
            plan.list = true;
        } else {
            plan.other.push(request);
        }
    }
    for (c, plan) in plans {
        let Some(cycle) = refresher.begin_cycle(c, now) else {
            continue;
        };
        let by_list = cycle.may_list
            && (plan.list
                || (!plan.latest.is_empty()
                    && cycle.list_pages.is_none_or(|p| plan.latest.len() > p)));
        if by_list {
            // Revalidates every latest entry of the collection when it comes back, and
            // refetches the hot ones it shows changed.
            cache.refresh(Request::List(c));
        } else {
            // One GET per object and TTL at most, as a client polling each object would
            // make: refreshing ahead of expiry by GET would cost more than that (a list
            // ahead of expiry is one call for many objects). Readers that find the entry
            // expired meanwhile fetch it themselves, once, and this skips it.
            for (request, expired) in plan.latest {
                if expired {
                    cache.refresh(request);
                }
            }
        }
        for request in plan.other {
            cache.refresh(request);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::cache::Change;
    use crate::fs::cache::testing::{
        AGED, TTL, aged_secrets, listen, put_secrets, read, refreshing, secret,
    };
    use tokio::time::sleep;

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

    #[tokio::test(start_paused = true)]
    async fn a_list_per_refresh_cycle_keeps_500_hot_secrets_fresh() {
        let (vault, cache) = aged_secrets(500, |i| format!("v{i}")).await;
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
        let (vault, cache) = refreshing(TTL);
        put_secrets(&vault, 30, |i| format!("v{i}"));
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
        // 30 secrets: two list pages, so a cycle lists rather than GETs each.
        let (vault, cache) = aged_secrets(30, |_| "old".into()).await;
        let changes = listen(&cache);
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
    async fn a_deleted_secret_reads_as_not_found_after_the_ttl() {
        let (vault, cache) = aged_secrets(30, |_| "v".into()).await;
        let changes = listen(&cache);
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
    async fn cold_entries_are_not_refreshed() {
        let (vault, cache) = aged_secrets(10, |_| "v".into()).await;
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
        let (vault, cache) = aged_secrets(50, |i| format!("v{i}")).await;
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
        let (vault, cache) = refreshing(TTL);
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
            if cache
                .inner
                .flights
                .in_flight(&Request::List(Collection::Secrets))
            {
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
        let (vault, cache) = refreshing(TTL);
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
        let (_vault, cache) = refreshing(TTL);
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
