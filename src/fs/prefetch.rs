//! Prefetch for programs that stat what they list (`ls -l`, `stat *`, a file manager).
//!
//! A file's attributes need its value (`st_size` is the value's length), so `ls -l` of a
//! collection costs one LOOKUP and one GET per name, one after the other: 10,000 names on a
//! vault that answers in 10 ms take minutes. The kernel gives no reliable sign in advance:
//! with `FUSE_READDIRPLUS_AUTO` it asks for attributes with the *first* chunk of every listing,
//! plain `ls` included, so READDIRPLUS cannot tell `ls` from `ls -l`. What does tell is the
//! LOOKUPs themselves: a program that stats what it lists looks the names up in the order of
//! the listing. So:
//!
//! - **Trigger.** Each `opendir` of a collection directory (`secrets`, `keys`, `certs`) hands its
//!   entries (sorted by name, the order `readdir` gives them) to the [`Prefetcher`]. A LOOKUP of a
//!   listed name that follows the previous one within [`MAX_GAP`] places (names the kernel still
//!   knows are skipped by it) and [`RUN_IDLE`] extends a *run*; after [`TRIGGER`] names in a run
//!   the names after the last one looked up are fetched ahead. A plain `ls`, a glob or
//!   `find -name` look nothing up and fetch nothing; a `cat` of one file is a run of one.
//! - **Window.** Prefetch runs at most as far ahead of the last name looked up as the run is
//!   long (up to [`MAX_AHEAD`]), as the kernel's readahead grows with sequential reads: a program
//!   that stops after `k` names has cost at most `k` GETs more than it asked for, and prefetch
//!   stops by itself when the lookups stop (the mount is idle, or the listing is done).
//! - **Bounds.** At most `--prefetch-concurrency` fetches in flight (default
//!   [`DEFAULT_CONCURRENCY`]), and a token bucket shared by all prefetching of the mount: Key
//!   Vault throttles a vault past 4,000 GETs per 10 s, for every application that uses it, so
//!   prefetch keeps to [`BUDGET`] per [`WINDOW`] and leaves the rest to readers. The GETs the
//!   listing program makes itself, for names it reaches before the prefetch does, are charged to
//!   the same bucket, so the two together stay within the budget (unless that program alone,
//!   without any prefetch, is faster than the budget: then prefetch adds nothing).
//! - **Through the cache.** A prefetch is a flight of the cache's single-flight map, so the
//!   reader of a name being prefetched joins it (one GET), and its entry is stored unread: the
//!   refresher keeps only values somebody read fresh.
//! - **Errors** (429, 5xx, a refused token): the prefetch of the whole mount pauses for
//!   [`PAUSE`] with one log line; reads go on as without prefetch, and a failed prefetch leaves
//!   no error in the cache for a reader to get.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::cache::{Cache, Prefetched, Request};
use super::core::DirEntry;
use crate::vault::{Collection, VaultError};

/// Fetches in flight at most (`--prefetch-concurrency`): with 16, a vault that answers in 20 ms
/// gets up to 800 requests a second, more than the budget below allows.
pub(crate) const DEFAULT_CONCURRENCY: usize = 16;
/// The largest `--prefetch-concurrency` accepted.
pub(crate) const MAX_CONCURRENCY: usize = 256;

/// Key Vault's service limit is 4,000 GETs per 10 s per vault; prefetch takes at most this
/// many per [`WINDOW`], leaving a quarter to the mount's readers and the vault's other clients.
pub(crate) const BUDGET: u32 = 3_000;
pub(crate) const WINDOW: Duration = Duration::from_secs(10);
/// Tokens the bucket holds when full: what a small directory gets at once. The bucket refills
/// at `(BUDGET - BURST) / WINDOW`, so no window of 10 s ever holds more than [`BUDGET`].
pub(crate) const BURST: u32 = 300;

/// Lookups in listing order that make a run worth prefetching for.
pub(crate) const TRIGGER: usize = 4;
/// How far apart (in listing places) two lookups of one run may be: names whose attributes the
/// kernel still holds are not looked up again.
pub(crate) const MAX_GAP: usize = 16;
/// A lookup later than this after the previous one starts a new run.
pub(crate) const RUN_IDLE: Duration = Duration::from_secs(5);
/// The furthest prefetch runs ahead of the last name looked up.
pub(crate) const MAX_AHEAD: usize = 1024;
/// How long prefetch stops after a fetch failed for another reason than a missing object.
pub(crate) const PAUSE: Duration = Duration::from_secs(30);

/// Vault calls a fetch of `collection` costs (a certificate is read with its backing secret).
fn cost(collection: Collection) -> u32 {
    match collection {
        Collection::Certificates => 2,
        _ => 1,
    }
}

/// A token bucket whose balance may go below zero: GETs it could not refuse (a reader's) are
/// charged as debt, which the prefetch then waits out.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    const CAPACITY: f64 = BURST as f64;

    fn rate() -> f64 {
        f64::from(BUDGET - BURST) / WINDOW.as_secs_f64()
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * Self::rate()).min(Self::CAPACITY);
        self.at = now;
    }
}

/// What the prefetcher knows of one collection directory.
struct Dir {
    /// The entries of its latest `opendir` (`.` and `..` first, then the names sorted).
    listing: Arc<Vec<DirEntry>>,
    /// Bumped with every new listing: a pump of an older one stops.
    generation: u64,
    /// Listing place and time of the last lookup.
    last: Option<(usize, Instant)>,
    /// Lookups in the current run.
    run: usize,
    /// The next place the prefetch looks at; places before it are done, under way, or were
    /// looked up before the prefetch got there.
    next: usize,
    /// Prefetch stops before this place.
    until: usize,
    /// A pump task works on this directory.
    pumping: bool,
}

struct Shared {
    cache: Cache,
    concurrency: usize,
    in_flight: Arc<Semaphore>,
    bucket: Mutex<Bucket>,
    dirs: Mutex<HashMap<Collection, Dir>>,
    paused_until: Mutex<Option<Instant>>,
    stats: Mutex<PrefetchStats>,
}

/// Counters, for tests and the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PrefetchStats {
    /// Prefetches that called the vault.
    pub fetched: u64,
    /// Names looked up before the prefetch reached them (charged to the budget).
    pub overtaken: u64,
    /// Times prefetch paused after a failure.
    pub pauses: u64,
}

/// Prefetch of listed names for a run of lookups (module docs). Cloning shares it.
#[derive(Clone)]
pub(crate) struct Prefetcher {
    shared: Arc<Shared>,
}

impl Prefetcher {
    /// A prefetcher on `cache` with at most `concurrency` fetches in flight; 0 turns prefetch
    /// off (lookups and listings are then not even tracked).
    pub(crate) fn new(cache: Cache, concurrency: usize) -> Prefetcher {
        Prefetcher {
            shared: Arc::new(Shared {
                cache,
                concurrency,
                in_flight: Arc::new(Semaphore::new(concurrency)),
                bucket: Mutex::new(Bucket {
                    tokens: Bucket::CAPACITY,
                    at: Instant::now(),
                }),
                dirs: Mutex::new(HashMap::new()),
                paused_until: Mutex::new(None),
                stats: Mutex::new(PrefetchStats::default()),
            }),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.shared.concurrency > 0
    }

    #[cfg(test)]
    pub(crate) fn stats(&self) -> PrefetchStats {
        self.shared.stats.lock().clone()
    }

    /// A collection directory was opened with these entries. An unchanged listing keeps the run
    /// under way (another `opendir` of the same directory while `ls -l` runs).
    pub(crate) fn listed(
        &self,
        collection: Collection,
        entries: Arc<Vec<DirEntry>>,
        unchanged: bool,
    ) {
        if !self.enabled() {
            return;
        }
        let mut dirs = self.shared.dirs.lock();
        let dir = dirs.entry(collection).or_insert_with(|| Dir {
            listing: Arc::new(Vec::new()),
            generation: 0,
            last: None,
            run: 0,
            next: 0,
            until: 0,
            pumping: false,
        });
        if unchanged && dir.listing.len() == entries.len() {
            dir.listing = entries;
            return;
        }
        *dir = Dir {
            listing: entries,
            generation: dir.generation + 1,
            last: None,
            run: 0,
            next: 0,
            until: 0,
            pumping: false,
        };
    }

    /// A LOOKUP of `name` in a collection directory, before it is answered: extend or start a
    /// run, and fetch ahead of a run long enough. Never waits.
    pub(crate) fn looked_up(&self, collection: Collection, name: &str) {
        if !self.enabled() {
            return;
        }
        let now = Instant::now();
        let mut dirs = self.shared.dirs.lock();
        let Some(dir) = dirs.get_mut(&collection) else {
            return;
        };
        // `.` and `..` first, then the names in byte order (see `FsCore::readdir`).
        let names = dir.listing.get(2..).unwrap_or_default();
        let Ok(place) = names.binary_search_by(|e| e.name.as_str().cmp(name)) else {
            return;
        };
        let follows = dir.last.is_some_and(|(previous, at)| {
            previous < place
                && place - previous <= MAX_GAP
                && now.saturating_duration_since(at) <= RUN_IDLE
        });
        dir.last = Some((place, now));
        if !follows {
            // A new run (or none): whatever ran ahead of the old one is not wanted any more.
            dir.run = 1;
            dir.next = place + 1;
            dir.until = place + 1;
            return;
        }
        dir.run += 1;
        if dir.run < TRIGGER {
            dir.next = dir.next.max(place + 1);
            return;
        }
        if place >= dir.next {
            // The program got here before the prefetch: it fetches this name itself, which
            // counts against the budget like a prefetch.
            dir.next = place + 1;
            self.shared.stats.lock().overtaken += 1;
            self.shared.bucket.lock().tokens -= f64::from(cost(collection));
        }
        let ahead = dir.run.min(MAX_AHEAD);
        dir.until = dir.until.max((place + 1 + ahead).min(names.len()));
        if dir.next < dir.until && !dir.pumping && !self.paused(now) {
            dir.pumping = true;
            tokio::spawn(self.clone().pump(collection, dir.generation));
        }
    }

    fn paused(&self, now: Instant) -> bool {
        self.shared.paused_until.lock().is_some_and(|t| now < t)
    }

    /// Wait until the budget allows `tokens` more calls, and take them.
    async fn take(&self, tokens: u32) {
        loop {
            let wait = {
                let mut bucket = self.shared.bucket.lock();
                bucket.refill(Instant::now());
                let want = f64::from(tokens);
                if bucket.tokens >= want {
                    bucket.tokens -= want;
                    return;
                }
                // At least a millisecond: a wait that rounds to nothing would spin.
                Duration::from_secs_f64((want - bucket.tokens) / Bucket::rate())
                    .max(Duration::from_millis(1))
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The next place to prefetch in `collection`'s directory, or `None` when there is nothing
    /// (more) to do for this pump, which then ends.
    fn claim(&self, collection: Collection, generation: u64) -> Option<String> {
        let mut dirs = self.shared.dirs.lock();
        let dir = dirs.get_mut(&collection)?;
        if dir.generation != generation {
            // A new listing took over, and with it a pump of its own if it needs one.
            return None;
        }
        if dir.next >= dir.until || self.paused(Instant::now()) {
            dir.pumping = false;
            return None;
        }
        let place = dir.next;
        dir.next += 1;
        dir.listing.get(2 + place).map(|e| e.name.clone())
    }

    /// Prefetch the places of a run one after the other, each as its own task under the
    /// concurrency and rate bounds, until the run's window is done. A place is claimed only once
    /// a permit and the tokens are in hand: claimed earlier, the program would often reach it
    /// during the wait and fetch it itself, and the tokens would go to a name already fetched
    /// instead of the next one.
    async fn pump(self, collection: Collection, generation: u64) {
        loop {
            let Ok(permit) = self.shared.in_flight.clone().acquire_owned().await else {
                return;
            };
            self.take(cost(collection)).await;
            let Some(name) = self.claim(collection, generation) else {
                self.refund(cost(collection));
                return;
            };
            let request = Request::latest(collection, &name);
            if !self.shared.cache.prefetch_needed(&request).await {
                self.refund(cost(collection));
                continue;
            }
            let this = self.clone();
            tokio::spawn(async move {
                let outcome = this.shared.cache.prefetch(request).await;
                drop(permit);
                match outcome {
                    Prefetched::Fetched => this.shared.stats.lock().fetched += 1,
                    Prefetched::Failed(e) => this.failed(&e),
                    // A reader started it between the check and here: its GET had the tokens.
                    Prefetched::Cached | Prefetched::InFlight => {}
                }
            });
        }
    }

    /// Give back tokens taken for a call that is not made.
    fn refund(&self, tokens: u32) {
        let mut bucket = self.shared.bucket.lock();
        bucket.tokens = (bucket.tokens + f64::from(tokens)).min(Bucket::CAPACITY);
    }

    /// A prefetch failed (throttled, vault failing, access refused): stop prefetching for a
    /// while. The cache has logged the failure (rate-limited); this logs the pause once.
    fn failed(&self, error: &VaultError) {
        let now = Instant::now();
        let mut paused = self.shared.paused_until.lock();
        let already = paused.is_some_and(|t| now < t);
        *paused = Some(now + PAUSE);
        if !already {
            self.shared.stats.lock().pauses += 1;
            tracing::info!(
                cause = %error,
                pause = ?PAUSE,
                "prefetch paused: the vault failed a prefetch; reads go on one at a time"
            );
        }
    }

    /// Pace a fetch that a listing itself needs (the key type check of `keys/`): wait for the
    /// budget unless the cache answers without a call. Not limited when prefetch is off.
    pub(crate) async fn pace(&self, collection: Collection, name: &str) {
        if self.enabled()
            && self
                .shared
                .cache
                .prefetch_needed(&Request::latest(collection, name))
                .await
        {
            self.take(cost(collection)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::cache::CacheConfig;
    use crate::fs::core::{FsCore, Ownership};
    use crate::fs::inodes::ROOT;
    use crate::vault::memory::{MemoryVault, wall_clock};
    use tokio::time::sleep;

    const TTL: Duration = Duration::from_secs(60);
    /// A vault with real latency.
    const LATENCY: Duration = Duration::from_millis(10);

    fn setup(n: usize, concurrency: usize) -> (Arc<MemoryVault>, FsCore) {
        let vault = Arc::new(MemoryVault::new());
        for i in 0..n {
            vault.set_secret(&name(i), value(i).as_bytes());
        }
        vault.set_delay(LATENCY);
        let cache = Cache::with_wall_clock(
            vault.clone(),
            CacheConfig {
                ttl: TTL,
                max_stale: Duration::from_secs(3600),
                ..CacheConfig::default()
            },
            wall_clock,
        );
        cache.reseed_refresher(7);
        let owner = Ownership {
            uid: 0,
            gid: 0,
            file_mode: 0o400,
            dir_mode: 0o500,
        };
        let core = FsCore::new(cache, owner, TTL).with_prefetch(concurrency);
        (vault, core)
    }

    fn name(i: usize) -> String {
        format!("s-{i:05}")
    }

    /// Values of different lengths, so a wrong size shows.
    fn value(i: usize) -> String {
        "v".repeat(1 + i % 50)
    }

    async fn secrets_dir(core: &FsCore) -> u64 {
        core.lookup(ROOT, "secrets").await.unwrap().attr.ino
    }

    /// What GNU `ls -l` asks: open the directory, then look up its names in order (`first` of
    /// them), one at a time. Returns the sizes.
    async fn ls_l(core: &FsCore, first: usize) -> Vec<(String, u64)> {
        let dir = secrets_dir(core).await;
        let opened = core.opendir(dir).await.unwrap();
        let entries = core.dir_entries(opened.fh).unwrap();
        let mut sizes = Vec::new();
        for e in entries.iter().skip(2).take(first) {
            let got = core.lookup(dir, &e.name).await.unwrap();
            sizes.push((e.name.clone(), got.attr.size));
        }
        core.releasedir(opened.fh);
        sizes
    }

    #[tokio::test(start_paused = true)]
    async fn ls_l_fetches_each_value_once_and_ahead_of_the_lookups() {
        let (vault, core) = setup(300, 16);
        let start = Instant::now();
        let sizes = ls_l(&core, usize::MAX).await;
        let took = start.elapsed();
        assert_eq!(sizes.len(), 300);
        for (i, (n, size)) in sizes.iter().enumerate() {
            assert_eq!(
                (n.as_str(), *size),
                (name(i).as_str(), value(i).len() as u64)
            );
        }
        // One GET per value: the lookups that caught up with a prefetch joined its flight.
        assert_eq!(vault.calls("get_secret"), 300);
        // One at a time, 300 GETs of 10 ms are 3 s; 16 at a time, a small fraction of it.
        assert!(took < Duration::from_millis(600), "{took:?}");
        let stats = core.prefetcher().stats();
        assert!(stats.fetched >= 250, "{stats:?}");
        assert_eq!(stats.pauses, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn without_prefetch_ls_l_is_one_get_at_a_time() {
        let (vault, core) = setup(100, 0);
        let start = Instant::now();
        assert_eq!(ls_l(&core, usize::MAX).await.len(), 100);
        assert_eq!(vault.calls("get_secret"), 100);
        assert!(start.elapsed() >= 100 * LATENCY);
        assert_eq!(core.prefetcher().stats(), PrefetchStats::default());
    }

    #[tokio::test(start_paused = true)]
    async fn a_listing_or_a_few_lookups_fetch_nothing_ahead() {
        let (vault, core) = setup(100, 16);
        // `ls`, a glob, `find -name`: the listing only.
        ls_l(&core, 0).await;
        sleep(Duration::from_secs(1)).await;
        assert_eq!(vault.calls("get_secret"), 0);
        // `cat` of one file, then of three names in the listing's order (a run of three).
        let dir = secrets_dir(&core).await;
        core.lookup(dir, &name(50)).await.unwrap();
        for i in [10, 11, 12] {
            core.lookup(dir, &name(i)).await.unwrap();
        }
        // Names not in listing order are no run either.
        for i in [90, 20, 70, 30, 80] {
            core.lookup(dir, &name(i)).await.unwrap();
        }
        sleep(Duration::from_secs(1)).await;
        assert_eq!(vault.calls("get_secret"), 9);
        assert_eq!(core.prefetcher().stats().fetched, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn prefetch_runs_ahead_no_further_than_the_run_is_long() {
        let (vault, core) = setup(1000, 16);
        // A program that stats 40 names and stops.
        ls_l(&core, 40).await;
        sleep(Duration::from_secs(5)).await;
        let gets = vault.calls("get_secret");
        assert!(
            (40..=80).contains(&gets),
            "{gets} GETs for 40 names looked up"
        );
        sleep(Duration::from_secs(60)).await;
        assert_eq!(
            vault.calls("get_secret"),
            gets,
            "prefetch stops with the lookups"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn prefetched_values_nobody_read_are_not_kept_fresh() {
        let (vault, core) = setup(200, 16);
        // Old enough that a list may vouch for them (see `crate::vault::clock`).
        sleep(Duration::from_secs(120)).await;
        core.cache().start_refresher();
        ls_l(&core, 20).await;
        sleep(Duration::from_secs(1)).await;
        let gets = vault.calls("get_secret");
        assert!(gets > 20, "{gets}: something was prefetched");
        // Ten TTLs: the refresher renews the 20 values that were looked up (by listing), and
        // neither renews nor fetches again the ones only prefetched.
        sleep(10 * TTL).await;
        // (A renewed value is cold again until read, so only the first list renews anything.)
        let stats = core.cache().stats();
        assert!(stats.list_revalidations >= 1);
        assert_eq!(stats.revalidated, 20, "{stats:?}");
        assert_eq!(vault.calls("get_secret"), gets);
    }

    /// Prefetch keeps to 3,000 vault calls in any 10 s, the reads of the listing program
    /// included, and 10,000 names take about as long as that allows.
    #[tokio::test(start_paused = true)]
    async fn ten_thousand_names_keep_to_the_budget() {
        let (vault, core) = setup(10_000, 16);
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sampler = {
            let (vault, samples) = (vault.clone(), samples.clone());
            tokio::spawn(async move {
                loop {
                    samples
                        .lock()
                        .push((Instant::now(), vault.calls("get_secret")));
                    sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let start = Instant::now();
        assert_eq!(ls_l(&core, usize::MAX).await.len(), 10_000);
        let took = start.elapsed();
        sampler.abort();
        assert_eq!(vault.calls("get_secret"), 10_000);
        let samples = samples.lock();
        let mut peak = 0;
        for (i, (t0, c0)) in samples.iter().enumerate() {
            let within = samples[i..]
                .iter()
                .take_while(|(t, _)| t.duration_since(*t0) <= WINDOW)
                .last()
                .map_or(0, |(_, c)| c - c0);
            peak = peak.max(within);
        }
        // A sample every 100 ms: a window may begin up to 100 ms before its first sample,
        // when 16 GETs of 10 ms each at most could have been made.
        assert!(peak <= u64::from(BUDGET) + 160, "{peak} GETs in 10 s");
        // (10,000 - 300 at once) / 270 a second = 36 s; one at a time, 100 s.
        assert!(
            (Duration::from_secs(30)..Duration::from_secs(45)).contains(&took),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_vault_pauses_prefetch_and_reads_do_not_inherit_its_errors() {
        let (vault, core) = setup(100, 16);
        // Old enough that the listing renews the cached values rather than fetch them again.
        sleep(Duration::from_secs(120)).await;
        let dir = secrets_dir(&core).await;
        // The first names are cached, so the run that triggers prefetch costs no call.
        for i in 0..4 {
            core.lookup(dir, &name(i)).await.unwrap();
        }
        vault.fail_op("get_secret", Some(VaultError::Throttled));
        let opened = core.opendir(dir).await.unwrap();
        for i in 0..4 {
            core.lookup(dir, &name(i)).await.unwrap();
        }
        sleep(Duration::from_secs(1)).await;
        let failed = vault.calls("get_secret") - 4;
        assert!((1..=4).contains(&failed), "{failed} prefetches");
        assert_eq!(core.prefetcher().stats().pauses, 1);
        vault.fail_op("get_secret", None);
        // The names whose prefetch failed read at once, each with a GET of its own; the run
        // goes on, but prefetch waits out its pause.
        for i in 4..20 {
            let got = core.lookup(dir, &name(i)).await.unwrap();
            assert_eq!(got.attr.size, value(i).len() as u64);
        }
        sleep(Duration::from_secs(1)).await;
        assert_eq!(vault.calls("get_secret"), 4 + failed + 16);
        core.releasedir(opened.fh);
        // After the pause a run prefetches again.
        sleep(PAUSE).await;
        for i in 20..30 {
            core.lookup(dir, &name(i)).await.unwrap();
        }
        sleep(Duration::from_secs(1)).await;
        assert!(core.prefetcher().stats().fetched > 0);
    }
}
