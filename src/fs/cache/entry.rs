//! The state of one cache entry ([`Slot`]) and its transitions: what a fetch makes of it
//! ([`settle`]), what a list that vouches for it makes of it ([`Slot::renewed`]), and the answers
//! it gives without a vault call. All of it pure: no lock, no clock read, no counter, no log line.
//! The callers read the clocks, count, and log what [`settle`] reports (doc/CACHE.md).

use std::collections::BTreeSet;
use std::mem::discriminant;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::flights::Mode;
use super::request::{Request, Value};
use super::{CacheConfig, Change};
use crate::vault::VaultError;

/// The first retry interval after a failed fetch is `min(ttl, this)`.
pub(super) const FIRST_RETRY: Duration = Duration::from_secs(5);
/// However short the TTL, an object is not retried more than once per this interval in an outage.
pub(super) const MIN_RETRY: Duration = Duration::from_secs(1);

/// What a request gets when it succeeds.
#[derive(Clone)]
pub(super) struct Reply {
    pub(super) value: Value,
    pub(super) valid_for: Duration,
    pub(super) stale: bool,
}

pub(super) type Answer = Result<Reply, VaultError>;

/// The cached state of one key. Immutable (but for the `read` mark): every change stores a new
/// `Arc<Slot>`.
pub(super) struct Slot {
    /// The last answer the vault gave (a value, `NotFound` or `Disabled`).
    pub(super) known: Option<Known>,
    /// Set while fetches of this key fail; cleared by the next answer.
    outage: Option<Outage>,
    /// Start of the fetch (or of the renewing list) that produced this state: a slower fetch that
    /// started earlier does not overwrite it.
    pub(super) as_of: Instant,
    /// Value bytes, for the weigher.
    pub(super) bytes: u64,
    /// The request as the reader that created the entry spelt it: what a background refresh asks.
    pub(super) request: Request,
    /// Read (answered from, or fetched for a reader) since this state was stored: "hot".
    read: AtomicBool,
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
struct Outage {
    /// The latest failure.
    error: VaultError,
    /// First failure of this outage (for the recovery log line).
    since: Instant,
    /// No vault call for this key before then.
    retry_at: Instant,
    /// The interval that led to `retry_at`; the next failure doubles it.
    backoff: Duration,
    /// The "older than --max-stale" line has been reported for this outage.
    expiry_reported: bool,
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

    /// The last answer, while it is fresh (younger than the TTL).
    pub(super) fn fresh(&self, now: Instant, ttl: Duration) -> Option<Answer> {
        let known = self.known.as_ref()?;
        let age = now.saturating_duration_since(known.fetched_at);
        (age < ttl).then(|| match &known.answer {
            Ok(value) => Ok(Reply {
                value: value.clone(),
                valid_for: ttl - age,
                stale: false,
            }),
            Err(e) => Err(e.clone()),
        })
    }

    /// The last failure, while the entry waits out its retry interval (no vault call before).
    pub(super) fn backing_off(&self, now: Instant) -> Option<&VaultError> {
        let outage = self.outage.as_ref()?;
        (now < outage.retry_at).then_some(&outage.error)
    }

    /// Fetches of the key fail transiently (`Throttled`, `Unavailable`): the last answer may be
    /// served stale.
    pub(super) fn in_transient_outage(&self) -> bool {
        self.outage.as_ref().is_some_and(|o| o.error.is_transient())
    }

    /// Whether a fetch of the key would get anything: not while the entry is fresh, nor while
    /// it waits out the retry interval of a failure (the cache's own backoff stands).
    pub(super) fn wants_fetch(&self, now: Instant, ttl: Duration) -> bool {
        let fresh = self
            .known
            .as_ref()
            .is_some_and(|k| now.saturating_duration_since(k.fetched_at) < ttl);
        !fresh && self.backing_off(now).is_none()
    }

    /// Whether [`Slot::last_good`] answers.
    pub(super) fn has_last_good(&self, now: Instant, max_stale: Duration) -> bool {
        self.known
            .as_ref()
            .is_some_and(|known| now.saturating_duration_since(known.fetched_at) <= max_stale)
    }

    /// The last answer, served stale, if it is not older than `max_stale`.
    pub(super) fn last_good(&self, now: Instant, max_stale: Duration) -> Option<Answer> {
        let known = self.known.as_ref()?;
        (now.saturating_duration_since(known.fetched_at) <= max_stale).then(|| stale_answer(known))
    }

    /// This state, made fresh as of `listed_at` by a list that showed it unchanged: it ends an
    /// outage (the list proves the value current), and it is not hot until read again. `None`
    /// for an entry that knows nothing.
    pub(super) fn renewed(&self, listed_at: Instant) -> Option<Slot> {
        let known = self.known.as_ref()?;
        Some(Slot {
            known: Some(Known {
                fetched_at: listed_at,
                ..known.clone()
            }),
            outage: None,
            as_of: listed_at,
            bytes: self.bytes,
            request: self.request.clone(),
            read: AtomicBool::new(false),
        })
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

/// What a fetch brings to [`settle`]: whose it was, what the vault said, and when it started.
pub(super) struct Fetch<'a> {
    /// As the caller spelt it.
    pub(super) request: &'a Request,
    pub(super) mode: Mode,
    pub(super) result: Result<Value, VaultError>,
    /// On tokio's clock: the entry's age counts from here.
    pub(super) started: Instant,
    /// A time the vault's clock had surely reached at `started`.
    pub(super) vault_reached: SystemTime,
}

/// The outcome of [`settle`].
pub(super) struct Settled {
    /// The entry's next state.
    pub(super) state: Slot,
    /// What the fetch's callers get.
    pub(super) answer: Answer,
    /// What happened, for the caller to log and count.
    pub(super) report: Report,
}

/// What a fetch's outcome means for the logs. Never carries a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Report {
    /// The vault answered (a value, `NotFound` or `Disabled`); `ended_outage`: how long the
    /// failures it ended had lasted, if there were any.
    Answered { ended_outage: Option<Duration> },
    /// Refused (401/403) or not understood: the entry no longer holds anything to serve.
    /// `new_condition`: the first such failure of the outage, or another kind than the last.
    Refused {
        error: VaultError,
        new_condition: bool,
    },
    /// A transient failure (`Throttled`, `Unavailable`); the next call waits `retry_in`.
    Failing {
        error: VaultError,
        new_condition: bool,
        retry_in: Duration,
        fallback: Fallback,
    },
}

/// What the callers of a transiently failing fetch get instead of a fresh answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Fallback {
    /// The last good answer, `age` old (within `max_stale`), served stale.
    Stale { age: Duration },
    /// The error: the last good answer is older than `max_stale`. `first`: the first such failure
    /// of this outage.
    Expired { first: bool },
    /// The error: nothing was ever fetched (or it was dropped).
    Nothing,
}

/// The new state of a key after a fetch, what the fetch's callers get, and what to report;
/// `previous` is the state as it is now (a slower fetch may have stored one since this started),
/// `now` the time the fetch ended.
pub(super) fn settle(
    previous: Option<&Slot>,
    fetch: Fetch<'_>,
    now: Instant,
    config: &CacheConfig,
) -> Settled {
    let Fetch {
        request,
        mode,
        result,
        started,
        vault_reached,
    } = fetch;
    let for_reader = mode == Mode::Reader;
    let previous_outage = previous.and_then(|s| s.outage.as_ref());
    let error = match result {
        Ok(_) | Err(VaultError::NotFound | VaultError::Disabled) => {
            let answer = match &result {
                Ok(value) => Ok(Reply {
                    value: value.clone(),
                    valid_for: config
                        .ttl
                        .saturating_sub(now.saturating_duration_since(started)),
                    stale: false,
                }),
                Err(e) => Err(e.clone()),
            };
            let bytes = result.as_ref().map_or(0, Value::bytes);
            let state = Slot {
                known: Some(Known {
                    answer: result,
                    fetched_at: started,
                    vault_reached,
                }),
                outage: None,
                as_of: started,
                bytes,
                request: request.clone(),
                read: AtomicBool::new(for_reader),
            };
            let ended_outage = previous_outage.map(|o| now.saturating_duration_since(o.since));
            return Settled {
                state,
                answer,
                report: Report::Answered { ended_outage },
            };
        }
        Err(error) => error,
    };
    // Reported once per outage (and again if its kind changes, e.g. 503 → 403), not per read:
    // reads inside a retry interval never get here.
    let new_condition =
        previous_outage.is_none_or(|o| discriminant(&o.error) != discriminant(&error));
    let retry_in = if matches!(error, VaultError::Unauthorized(_)) {
        // The token cache spaces out fresh tokens after a refusal, and until it has one a call
        // fails locally without reaching the vault: a short, flat interval costs nothing and lets
        // the object recover within a second of a good token.
        MIN_RETRY
    } else {
        let first = config.ttl.min(FIRST_RETRY).max(MIN_RETRY);
        previous_outage.map_or(first, |o| {
            o.backoff.saturating_mul(2).min(config.ttl.max(first))
        })
    };
    let mut outage = Outage {
        error: error.clone(),
        since: previous_outage.map_or(now, |o| o.since),
        retry_at: now + retry_in,
        backoff: retry_in,
        expiry_reported: previous_outage.is_some_and(|o| o.expiry_reported),
    };
    if !error.is_transient() {
        // Access revoked (401/403) or an answer we do not understand: what we hold may no longer
        // be served, so drop it.
        let state = Slot {
            known: None,
            outage: Some(outage),
            as_of: started,
            bytes: 0,
            request: request.clone(),
            read: AtomicBool::new(for_reader),
        };
        return Settled {
            state,
            answer: Err(error.clone()),
            report: Report::Refused {
                error,
                new_condition,
            },
        };
    }
    let known = previous.and_then(|s| s.known.clone());
    let (answer, fallback) = match &known {
        Some(k) if now.saturating_duration_since(k.fetched_at) <= config.max_stale => {
            let age = now.saturating_duration_since(k.fetched_at);
            (stale_answer(k), Fallback::Stale { age })
        }
        Some(_) => {
            let first = !outage.expiry_reported;
            outage.expiry_reported = true;
            (Err(error.clone()), Fallback::Expired { first })
        }
        None => (Err(error.clone()), Fallback::Nothing),
    };
    let bytes = known
        .as_ref()
        .and_then(|k| k.answer.as_ref().ok())
        .map_or(0, Value::bytes);
    // Still hot if it was: a failed refresh validated nothing.
    let read = for_reader || previous.is_some_and(Slot::is_hot);
    let state = Slot {
        known,
        outage: Some(outage),
        as_of: started,
        bytes,
        request: request.clone(),
        read: AtomicBool::new(read),
    };
    Settled {
        state,
        answer,
        report: Report::Failing {
            error,
            new_condition,
            retry_in,
            fallback,
        },
    }
}

/// What a fetch that replaced `old` with `new` tells the change listener: a latest-version entry
/// that now holds another version or another kind of answer, or a list of another set of enabled
/// names. Nothing for a first fetch (nothing to invalidate) or a failed one (nothing learnt).
pub(super) fn changed(old: &Slot, new: &Slot, request: &Request) -> Option<Change> {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::vault::{Collection, ObjectProps, SecretValue};

    const TTL: Duration = Duration::from_secs(60);
    const MAX_STALE: Duration = Duration::from_secs(600);
    /// How long every fetch of these tests takes.
    const FETCH: Duration = Duration::from_secs(1);
    const R: Mode = Mode::Reader;
    const B: Mode = Mode::Background;

    fn config() -> CacheConfig {
        CacheConfig {
            ttl: TTL,
            max_stale: MAX_STALE,
            ..CacheConfig::default()
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn request() -> Request {
        Request::latest(Collection::Secrets, "db")
    }

    fn value(version: &str) -> Value {
        Value::Secret(Arc::new(SecretValue {
            props: ObjectProps {
                name: "db".into(),
                version: Some(version.into()),
                enabled: true,
                ..ObjectProps::default()
            },
            value: b"hunter2".to_vec(),
        }))
    }

    fn version(value: &Value) -> String {
        value.props().and_then(|p| p.version.clone()).unwrap()
    }

    fn unavailable() -> VaultError {
        VaultError::Unavailable("503 Service Unavailable".into())
    }

    fn forbidden() -> VaultError {
        VaultError::Forbidden("the Key Vault Secrets User role".into())
    }

    fn refused() -> VaultError {
        VaultError::Unauthorized("the vault refused the token".into())
    }

    /// A fetch of the table: it starts `at` seconds into the test, by a reader or in the
    /// background, and the vault answers a value of that version, or fails.
    type Step = (u64, Mode, Result<&'static str, VaultError>);

    /// What a fetch made of the entry, as a table states it.
    #[derive(Debug, PartialEq)]
    struct Seen {
        /// The version the entry holds, or the answer it remembers instead.
        holds: Option<Result<String, VaultError>>,
        /// The retry interval, while the entry is in an outage.
        retry_in: Option<Duration>,
        hot: bool,
        /// What the fetch's callers got: version, validity and staleness, or the error.
        answer: Result<(String, Duration, bool), VaultError>,
        report: Report,
    }

    /// Settle `steps` one after the other, from no entry: what each made of the entry.
    fn run(steps: &[Step]) -> Vec<Seen> {
        let zero = Instant::from_std(std::time::Instant::now());
        let request = request();
        let mut entry: Option<Slot> = None;
        let mut seen = Vec::new();
        for (at, mode, result) in steps.iter().cloned() {
            let started = zero + secs(at);
            let fetch = Fetch {
                request: &request,
                mode,
                result: result.map(value),
                started,
                vault_reached: SystemTime::UNIX_EPOCH,
            };
            let settled = settle(entry.as_ref(), fetch, started + FETCH, &config());
            let state = settled.state;
            seen.push(Seen {
                holds: state
                    .known
                    .as_ref()
                    .map(|k| k.answer.as_ref().map(version).map_err(Clone::clone)),
                retry_in: state.outage.as_ref().map(|o| o.backoff),
                hot: state.is_hot(),
                answer: settled
                    .answer
                    .map(|r| (version(&r.value), r.valid_for, r.stale)),
                report: settled.report,
            });
            entry = Some(state);
        }
        seen
    }

    /// What the last of `steps` made of the entry.
    fn last(steps: &[Step]) -> Seen {
        run(steps).pop().expect("a step")
    }

    fn answered(
        holds: Result<&str, VaultError>,
        hot: bool,
        ended_outage: Option<Duration>,
    ) -> Seen {
        Seen {
            holds: Some(holds.clone().map(str::to_owned)),
            retry_in: None,
            hot,
            answer: holds.map(|v| (v.to_owned(), TTL - FETCH, false)),
            report: Report::Answered { ended_outage },
        }
    }

    fn failing(
        holds: Option<&str>,
        error: VaultError,
        retry_in: Duration,
        new_condition: bool,
        fallback: Fallback,
    ) -> Seen {
        Seen {
            holds: holds.map(|v| Ok(v.to_owned())),
            retry_in: Some(retry_in),
            hot: true,
            answer: match &fallback {
                Fallback::Stale { .. } => Ok((holds.unwrap().to_owned(), Duration::ZERO, true)),
                _ => Err(error.clone()),
            },
            report: Report::Failing {
                error,
                new_condition,
                retry_in,
                fallback,
            },
        }
    }

    fn refusal(error: VaultError, retry_in: Duration, new_condition: bool) -> Seen {
        Seen {
            holds: None,
            retry_in: Some(retry_in),
            hot: true,
            answer: Err(error.clone()),
            report: Report::Refused {
                error,
                new_condition,
            },
        }
    }

    #[test]
    fn transitions_of_an_entry_after_a_fetch() {
        let cases: Vec<(&str, Vec<Step>, Seen)> = vec![
            (
                "a first value, valid for the TTL from the start of its fetch",
                vec![(0, R, Ok("v1"))],
                answered(Ok("v1"), true, None),
            ),
            (
                "a background fetch stores an entry nobody has read",
                vec![(0, B, Ok("v1"))],
                answered(Ok("v1"), false, None),
            ),
            (
                "a new value replaces the last",
                vec![(0, R, Ok("v1")), (60, B, Ok("v2"))],
                answered(Ok("v2"), false, None),
            ),
            (
                "the same value again",
                vec![(0, R, Ok("v1")), (60, R, Ok("v1"))],
                answered(Ok("v1"), true, None),
            ),
            (
                "not found is an answer, cached like a value",
                vec![(0, R, Err(VaultError::NotFound))],
                answered(Err(VaultError::NotFound), true, None),
            ),
            (
                "disabled too",
                vec![(0, R, Ok("v1")), (60, R, Err(VaultError::Disabled))],
                answered(Err(VaultError::Disabled), true, None),
            ),
            (
                "a transient failure serves the last good value stale",
                vec![(0, R, Ok("v1")), (60, R, Err(unavailable()))],
                failing(
                    Some("v1"),
                    unavailable(),
                    FIRST_RETRY,
                    true,
                    Fallback::Stale { age: secs(61) },
                ),
            ),
            (
                "retries back off, doubling up to the TTL",
                vec![
                    (0, R, Ok("v1")),
                    (60, R, Err(unavailable())),
                    (70, R, Err(unavailable())),
                    (90, B, Err(unavailable())),
                    (120, B, Err(unavailable())),
                    (200, B, Err(unavailable())),
                ],
                failing(
                    Some("v1"),
                    unavailable(),
                    TTL,
                    false,
                    Fallback::Stale { age: secs(201) },
                ),
            ),
            (
                "another kind of failure is a new condition",
                vec![
                    (0, R, Ok("v1")),
                    (60, R, Err(unavailable())),
                    (70, R, Err(VaultError::Throttled)),
                ],
                failing(
                    Some("v1"),
                    VaultError::Throttled,
                    2 * FIRST_RETRY,
                    true,
                    Fallback::Stale { age: secs(71) },
                ),
            ),
            (
                "a transient failure with nothing fetched before is the error",
                vec![(0, R, Err(unavailable()))],
                failing(None, unavailable(), FIRST_RETRY, true, Fallback::Nothing),
            ),
            (
                "past max_stale the error is returned, reported once as expired",
                vec![
                    (0, R, Ok("v1")),
                    (60, R, Err(unavailable())),
                    (700, R, Err(unavailable())),
                ],
                failing(
                    Some("v1"),
                    unavailable(),
                    2 * FIRST_RETRY,
                    false,
                    Fallback::Expired { first: true },
                ),
            ),
            (
                "and not reported as expired again in that outage",
                vec![
                    (0, R, Ok("v1")),
                    (60, R, Err(unavailable())),
                    (700, R, Err(unavailable())),
                    (720, R, Err(unavailable())),
                ],
                failing(
                    Some("v1"),
                    unavailable(),
                    4 * FIRST_RETRY,
                    false,
                    Fallback::Expired { first: false },
                ),
            ),
            (
                "an answer ends the outage, reporting how long it lasted",
                vec![
                    (0, R, Ok("v1")),
                    (60, R, Err(unavailable())),
                    (70, R, Ok("v2")),
                ],
                answered(Ok("v2"), true, Some(secs(10))),
            ),
            (
                "a refusal drops what the entry held",
                vec![(0, R, Ok("v1")), (60, R, Err(forbidden()))],
                refusal(forbidden(), FIRST_RETRY, true),
            ),
            (
                "a refusal after a transient failure is a new condition, on the same backoff",
                vec![
                    (0, R, Ok("v1")),
                    (60, R, Err(unavailable())),
                    (70, R, Err(forbidden())),
                ],
                refusal(forbidden(), 2 * FIRST_RETRY, true),
            ),
            (
                "an answer the cache does not understand is refused too",
                vec![
                    (0, R, Ok("v1")),
                    (60, R, Err(VaultError::Unexpected("?".into()))),
                ],
                refusal(VaultError::Unexpected("?".into()), FIRST_RETRY, true),
            ),
            (
                "a refused token is retried after MIN_RETRY, however often",
                vec![
                    (0, R, Ok("v1")),
                    (60, R, Err(refused())),
                    (62, R, Err(refused())),
                    (64, R, Err(refused())),
                ],
                refusal(refused(), MIN_RETRY, false),
            ),
        ];
        for (name, steps, expected) in cases {
            assert_eq!(last(&steps), expected, "{name}");
        }
    }

    #[test]
    fn a_failed_refresh_leaves_the_entry_as_hot_as_it_was() {
        let hot = |steps: &[Step]| last(steps).hot;
        assert!(hot(&[(0, R, Ok("v1")), (60, B, Err(unavailable()))]));
        assert!(!hot(&[(0, B, Ok("v1")), (60, B, Err(unavailable()))]));
        assert!(hot(&[(0, B, Ok("v1")), (60, R, Err(unavailable()))]));
        // A successful background refresh is a new state nobody has read yet.
        assert!(!hot(&[(0, R, Ok("v1")), (60, B, Ok("v1"))]));
    }

    #[test]
    fn the_retry_interval_is_at_least_min_retry_and_at_most_the_ttl() {
        let short = CacheConfig {
            ttl: Duration::from_millis(100),
            ..config()
        };
        let zero = Instant::from_std(std::time::Instant::now());
        let request = request();
        let fail = |previous: Option<&Slot>, at: u64| {
            let fetch = Fetch {
                request: &request,
                mode: R,
                result: Err(unavailable()),
                started: zero + secs(at),
                vault_reached: SystemTime::UNIX_EPOCH,
            };
            settle(previous, fetch, zero + secs(at), &short).state
        };
        let first = fail(None, 0);
        let second = fail(Some(&first), 1);
        let backoff = |s: &Slot| s.outage.as_ref().map(|o| o.backoff);
        // `min(ttl, FIRST_RETRY)` is 100 ms here, below the floor; and the floor is also the most.
        assert_eq!(backoff(&first), Some(MIN_RETRY));
        assert_eq!(backoff(&second), Some(MIN_RETRY));
    }

    #[test]
    fn what_a_fetch_tells_the_change_listener() {
        let request = request();
        let state = |answer: Option<Result<Value, VaultError>>| Slot {
            known: answer.map(|answer| Known {
                answer,
                fetched_at: Instant::from_std(std::time::Instant::now()),
                vault_reached: SystemTime::UNIX_EPOCH,
            }),
            outage: None,
            as_of: Instant::from_std(std::time::Instant::now()),
            bytes: 0,
            request: request.clone(),
            read: AtomicBool::new(false),
        };
        let db = Change::Object {
            collection: Collection::Secrets,
            name: "db".into(),
        };
        let not_found = || Some(Err(VaultError::NotFound));
        let cases = [
            ("first fetch", None, Some(Ok(value("v1"))), None),
            (
                "same version",
                Some(Ok(value("v1"))),
                Some(Ok(value("v1"))),
                None,
            ),
            (
                "new version",
                Some(Ok(value("v1"))),
                Some(Ok(value("v2"))),
                Some(&db),
            ),
            ("deleted", Some(Ok(value("v1"))), not_found(), Some(&db)),
            ("created", not_found(), Some(Ok(value("v1"))), Some(&db)),
            ("still missing", not_found(), not_found(), None),
            (
                "disabled",
                not_found(),
                Some(Err(VaultError::Disabled)),
                Some(&db),
            ),
            (
                "a failure learns nothing",
                Some(Ok(value("v1"))),
                None,
                None,
            ),
        ];
        for (name, old, new, expected) in cases {
            assert_eq!(
                changed(&state(old), &state(new), &request).as_ref(),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn a_renewal_makes_the_entry_fresh_as_of_the_list_and_ends_its_outage() {
        let zero = Instant::from_std(std::time::Instant::now());
        let request = request();
        let fetch = |at: u64, result| Fetch {
            request: &request,
            mode: R,
            result,
            started: zero + secs(at),
            vault_reached: SystemTime::UNIX_EPOCH + secs(at),
        };
        let held = settle(None, fetch(0, Ok(value("v1"))), zero + FETCH, &config()).state;
        let failing = settle(
            Some(&held),
            fetch(60, Err(unavailable())),
            zero + secs(61),
            &config(),
        );
        let renewed = failing
            .state
            .renewed(zero + secs(62))
            .expect("it holds a value");
        let known = renewed.known.as_ref().unwrap();
        assert_eq!(known.fetched_at, zero + secs(62));
        // The vault's clock as of the fetch of the value, not of the list: what the next list
        // compares `updated` with.
        assert_eq!(known.vault_reached, SystemTime::UNIX_EPOCH);
        assert!(renewed.outage.is_none() && !renewed.is_hot());
        assert_eq!(
            renewed
                .fresh(zero + secs(62), TTL)
                .unwrap()
                .ok()
                .unwrap()
                .valid_for,
            TTL
        );
        let refused = settle(
            Some(&held),
            fetch(60, Err(forbidden())),
            zero + secs(61),
            &config(),
        );
        assert!(refused.state.renewed(zero + secs(62)).is_none());
    }
}
