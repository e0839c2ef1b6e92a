//! The cache's API, as the filesystem uses it: freshness, single flight, patience, outages,
//! the LRU bounds and what reaches the logs.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::{Instant, advance};

use super::entry::MIN_RETRY;
use super::read::READER_PATIENCE;
use super::testing::{TTL, read, settle};
use super::*;
use crate::vault::memory::MemoryVault;

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

/// Once the vault answers again, with a rotated value of `name`, the first read after `wait`
/// gets that value, fresh.
async fn recovers_with_a_rotation(vault: &MemoryVault, cache: &Cache, name: &str, wait: Duration) {
    vault.fail_with(None);
    vault.set_secret(name, b"rotated");
    advance(wait).await;
    let back = cache.secret(name, None).await.unwrap();
    assert_eq!(back.value.value, b"rotated");
    assert!(!back.stale);
}

/// A cache with a TTL of `ttl` that read `one` from secret `name` a TTL ago; the vault holds `two`
/// since, and takes `delay` to answer a call.
async fn rotated_behind_a_slow_vault(
    ttl: Duration,
    name: &str,
    delay: Duration,
) -> (Arc<MemoryVault>, Cache) {
    let (vault, cache) = setup(config(ttl));
    vault.set_secret(name, b"one");
    read(&cache, name).await.unwrap();
    vault.set_secret(name, b"two");
    vault.set_delay(delay);
    advance(ttl).await;
    (vault, cache)
}

/// A cache that read secret `s` a TTL ago, and the vault failing with `error` since.
async fn failing_since_a_ttl(error: VaultError) -> (Arc<MemoryVault>, Cache) {
    let (vault, cache) = setup(config(TTL));
    vault.set_secret("s", b"good");
    read(&cache, "s").await.unwrap();
    vault.fail_with(Some(error));
    advance(TTL).await;
    (vault, cache)
}

fn unavailable() -> VaultError {
    VaultError::Unavailable("503 Service Unavailable".into())
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
        let (vault, cache) =
            rotated_behind_a_slow_vault(TTL, "warm", Duration::from_millis(200)).await;
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

    let versions_of_a = || async {
        let versions = cache.versions(Collection::Secrets, "a").await.unwrap();
        versions.value.len()
    };
    assert_eq!(versions_of_a().await, 1);
    vault.set_secret("a", b"3");
    assert_eq!(versions_of_a().await, 1);
    advance(TTL).await;
    assert_eq!(versions_of_a().await, 2);
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
    let (vault, cache) = rotated_behind_a_slow_vault(ttl, "s", Duration::from_secs(20)).await;

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
    let (vault, cache) = rotated_behind_a_slow_vault(TTL, "s", Duration::from_millis(1500)).await;
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

    recovers_with_a_rotation(&vault, &cache, "db", TTL).await;
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
    recovers_with_a_rotation(&vault, &cache, "hot", ttl).await;
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_exponentially_up_to_the_ttl() {
    let (vault, cache) = failing_since_a_ttl(unavailable()).await;
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
    let (vault, cache) = failing_since_a_ttl(unavailable()).await;
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
        let (vault, cache) = failing_since_a_ttl(error.clone()).await;
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
        SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
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
    assert!(errors[0].contains("Key Vault Secrets User") && errors[0].contains("secrets/other"));

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
