//! What kvfs knows of the vault's clock: a lower bound on the time the vault's clock showed at
//! a given moment of ours, learned from the answers themselves.
//!
//! A list item carries no version id, only the latest version's `updated` (whole seconds, on
//! the vault's clock). For a list to vouch that a cached value is still the latest, a version
//! written after that value was fetched must have a later `updated`. A version written after our
//! fetch read the vault has `updated ≥ floor(vault time when the fetch started)`, so if
//! `updated + 1 s ≤` a time the vault's clock had surely reached when the fetch started, any
//! newer version is stamped later and shows in the list. This module gives that time.
//!
//! Two kinds of samples bound the vault's clock from below:
//!
//! * the `Date` header of every answer (observed by [`ClockWatch`] in the transport): the vault
//!   wrote the answer before we received it, so its clock read at least `Date` then. `Date` is
//!   the front end's clock, not necessarily the one that stamps `updated`; [`CLOCK_ALLOWANCE`]
//!   covers the front end running ahead of it (in Microsoft's recorded answers it runs behind:
//!   values read back within the second they were written carry an `updated` one second after
//!   the answer's `Date`, so the bound is conservative there).
//! * the `updated` stamps of the values and lists the cache receives: the object was written
//!   before we received it, so the stamping clock read at least `updated` then.
//!
//! Samples are kept relative to our monotonic clock (tokio's `Instant`), so a step of our own
//! wall clock (NTP, a suspended VM) does not move them; they age out after [`SAMPLE_WINDOW`],
//! so a step of the vault's clock, or drift, is forgotten within that time. Each sample's
//! truncation to the second and our round trip only make the bound lower (safer); the best one
//! in the window wins, so after a few answers the bound is within a few milliseconds of the
//! vault's clock minus the allowance.
//!
//! With no `Date` seen yet (the in-memory vault of tests, a transport that strips headers), the
//! bound falls back to our own wall clock minus [`UNKNOWN_CLOCK_MARGIN`]: the assumption that
//! NTP keeps the two clocks within a minute, which is what kvfs relied on before it learned the
//! vault's clock.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use azure_core::http::{AsyncRawResponse, HttpClient, Request};
use parking_lot::Mutex;
use tokio::time::Instant;

/// How far the clock behind `Date` may run ahead of the clock that stamps `updated`.
pub(crate) const CLOCK_ALLOWANCE: Duration = Duration::from_secs(1);

/// Samples older than this are forgotten (kept in two buckets of half this length).
pub(crate) const SAMPLE_WINDOW: Duration = Duration::from_secs(600);

/// The margin assumed when the vault's clock is unknown (no `Date` header seen).
pub(crate) const UNKNOWN_CLOCK_MARGIN: Duration = Duration::from_secs(60);

/// Lower bounds on the vault's clock. Shared (`Arc`) by the transport that sees `Date` headers
/// and the cache that sees `updated` stamps.
pub struct VaultClock {
    /// Samples are stored as "vault time at `anchor`", so that one number per sample suffices.
    anchor: Instant,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// From `Date` headers (the allowance already taken off).
    dated: Window,
    /// From `updated` stamps.
    stamped: Window,
}

/// The best sample of the current and of the previous half-window.
#[derive(Default)]
struct Window {
    started: Option<Instant>,
    current: Option<SystemTime>,
    previous: Option<SystemTime>,
}

impl Window {
    fn rotate(&mut self, now: Instant) {
        let half = SAMPLE_WINDOW / 2;
        match self.started {
            Some(s) if now.saturating_duration_since(s) < half => {}
            Some(s) if now.saturating_duration_since(s) < SAMPLE_WINDOW => {
                self.previous = self.current.take();
                self.started = Some(s + half);
            }
            _ => {
                self.previous = None;
                self.current = None;
                self.started = Some(now);
            }
        }
    }

    fn add(&mut self, at_anchor: SystemTime, now: Instant) {
        self.rotate(now);
        self.current = Some(self.current.map_or(at_anchor, |c| c.max(at_anchor)));
    }

    fn best(&mut self, now: Instant) -> Option<SystemTime> {
        self.rotate(now);
        match (self.current, self.previous) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

impl fmt::Debug for VaultClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultClock").finish_non_exhaustive()
    }
}

impl Default for VaultClock {
    fn default() -> Self {
        VaultClock::new()
    }
}

impl VaultClock {
    pub(crate) fn new() -> VaultClock {
        VaultClock {
            anchor: Instant::now(),
            state: Mutex::new(State::default()),
        }
    }

    /// `instant` as a shift of the anchor: `t + (instant - anchor)`.
    fn shift(&self, t: SystemTime, instant: Instant) -> SystemTime {
        if instant >= self.anchor {
            t + (instant - self.anchor)
        } else {
            t - (self.anchor - instant)
        }
    }

    /// `t - (instant - anchor)`: what a vault time seen at `instant` says about the anchor.
    fn unshift(&self, t: SystemTime, instant: Instant) -> SystemTime {
        if instant >= self.anchor {
            t - (instant - self.anchor)
        } else {
            t + (self.anchor - instant)
        }
    }

    /// An answer received at `received` carried `Date: date`.
    pub(crate) fn observe_date(&self, date: SystemTime, received: Instant) {
        let bound = self
            .unshift(date, received)
            .checked_sub(CLOCK_ALLOWANCE)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.state.lock().dated.add(bound, Instant::now());
    }

    /// An answer received at `received` carried an object stamped `updated`.
    pub(crate) fn observe_stamp(&self, updated: SystemTime, received: Instant) {
        let bound = self.unshift(updated, received);
        self.state.lock().stamped.add(bound, Instant::now());
    }

    /// A time the vault's stamping clock had surely reached at `at` (ours, monotonic), given
    /// that our wall clock read `wall_at` then.
    pub(crate) fn reached_at(&self, at: Instant, wall_at: SystemTime) -> SystemTime {
        let now = Instant::now();
        let mut state = self.state.lock();
        let stamped = state.stamped.best(now).map(|t| self.shift(t, at));
        match state.dated.best(now) {
            Some(dated) => {
                let dated = self.shift(dated, at);
                stamped.map_or(dated, |s| s.max(dated))
            }
            None => {
                let assumed = wall_at
                    .checked_sub(UNKNOWN_CLOCK_MARGIN)
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                stamped.map_or(assumed, |s| s.max(assumed))
            }
        }
    }
}

/// Whether a cached value stamped `updated`, fetched by a request that started when the vault's
/// clock had reached `reached`, can be told apart from any version written after it: a later
/// version is stamped at least `floor(reached)`, and `updated + 1 s ≤ reached` puts that later.
pub(crate) fn distinguishable(updated: SystemTime, reached: SystemTime) -> bool {
    updated
        .checked_add(Duration::from_secs(1))
        .is_some_and(|u| u <= reached)
}

/// The transport layer that reads the `Date` header of every answer into a [`VaultClock`].
pub(crate) struct ClockWatch {
    inner: Arc<dyn HttpClient>,
    clock: Arc<VaultClock>,
}

impl fmt::Debug for ClockWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClockWatch").finish_non_exhaustive()
    }
}

impl ClockWatch {
    pub(crate) fn new(inner: Arc<dyn HttpClient>, clock: Arc<VaultClock>) -> ClockWatch {
        ClockWatch { inner, clock }
    }
}

#[async_trait]
impl HttpClient for ClockWatch {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let response = self.inner.execute_request(request).await?;
        // Headers arrive before the body: the vault had written them by now.
        let received = Instant::now();
        if let Some(date) = response
            .headers()
            .get_optional_str(&azure_core::http::headers::HeaderName::from_static("date"))
            .and_then(|d| azure_core::time::parse_rfc7231(d).ok())
        {
            self.clock.observe_date(SystemTime::from(date), received);
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_date_the_bound_is_our_wall_clock_minus_a_minute() {
        let clock = VaultClock::new();
        let now = Instant::now();
        assert_eq!(clock.reached_at(now, at(1000)), at(1000 - 60));
        // A stamp seen later than that raises it.
        clock.observe_stamp(at(990), now);
        assert_eq!(clock.reached_at(now, at(1000)), at(990));
    }

    #[tokio::test(start_paused = true)]
    async fn a_date_bounds_the_clock_minus_the_allowance_and_moves_with_ours() {
        let clock = VaultClock::new();
        let t0 = Instant::now();
        clock.observe_date(at(5000), t0);
        // The vault's clock was behind ours by 100 s: the wall clock is not used.
        assert_eq!(clock.reached_at(t0, at(5100)), at(4999));
        tokio::time::advance(Duration::from_secs(3)).await;
        let t1 = Instant::now();
        assert_eq!(clock.reached_at(t1, at(5103)), at(5002));
        // The best sample wins; a worse one changes nothing.
        clock.observe_date(at(5003), t1);
        assert_eq!(clock.reached_at(t1, at(5103)), at(5002));
        clock.observe_date(at(5004), t1);
        assert_eq!(clock.reached_at(t1, at(5103)), at(5003));
        // A fetch that started before a sample is bounded by it, shifted back.
        assert_eq!(clock.reached_at(t0, at(5100)), at(5000));
    }

    #[tokio::test(start_paused = true)]
    async fn samples_age_out() {
        let clock = VaultClock::new();
        clock.observe_date(at(5000), Instant::now());
        tokio::time::advance(SAMPLE_WINDOW / 2 + Duration::from_secs(1)).await;
        assert!(clock.reached_at(Instant::now(), at(0)) > at(5000));
        tokio::time::advance(SAMPLE_WINDOW).await;
        // Forgotten: back to the assumption.
        assert_eq!(clock.reached_at(Instant::now(), at(7000)), at(7000 - 60));
    }

    #[test]
    fn a_value_is_distinguishable_when_its_second_ended_before_the_read() {
        assert!(distinguishable(at(100), at(101)));
        assert!(!distinguishable(
            at(100),
            at(101) - Duration::from_millis(1)
        ));
        assert!(!distinguishable(at(100), at(100)));
    }
}
