//! One flight: the vault call, the entry's next state settled against the state stored by then,
//! and what follows from the answer (the refresher's bookkeeping, change events, revalidation of
//! the collection by a list).

use std::sync::Arc;

use moka::ops::compute::Op;
use tokio::time::Instant;

use super::Inner;
use super::counters::Counters;
use super::entry::{Answer, Fetch, Settled, changed, settle};
use super::flights::{Locked, Mode, Pending};
use super::request::{Request, Value};
use crate::vault::VaultError;

impl Inner {
    /// Start a flight of `key` as of `now` and register it (the caller holds the flight map).
    pub(super) fn start_flight(
        self: &Arc<Self>,
        flights: &mut Locked<'_>,
        request: Request,
        key: Request,
        now: Instant,
        mode: Mode,
    ) -> Pending {
        let inner = Arc::clone(self);
        flights.start(key, now, mode, move |id| inner.fly(request, id, now, mode))
    }

    /// Start a background flight of `request` as of `now`, unless a flight of its key that a
    /// reader could still join is under way; the flight's outcome, for a caller that waits.
    /// Readers keep getting the entry while it runs; the outcome is stored like a reader's.
    pub(super) fn start_background(
        self: &Arc<Self>,
        request: Request,
        now: Instant,
    ) -> Option<Pending> {
        let key = request.key();
        let mut flights = self.flights.lock();
        if flights
            .get(&key)
            .is_some_and(|f| f.joinable(now, self.config.ttl))
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
        self.flights.landed(&key, id);
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
        let fetched = request.fetch(self.client.as_ref()).await;
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
        let fetch = Fetch {
            request,
            mode,
            result: fetched,
            started,
            vault_reached,
        };
        let mut answer = None;
        let mut change = None;
        // Settled against the slot as it is now, under moka's per-key lock, so two overlapping
        // flights of one key cannot lose each other's outage state.
        self.slots
            .entry(key.clone())
            .and_compute_with(|current| {
                let current = current.map(|entry| entry.into_value());
                let Settled {
                    state,
                    answer: reply,
                    report,
                } = settle(current.as_deref(), fetch, Instant::now(), &self.config);
                self.record(request, mode, &report);
                answer = Some(reply);
                let newer_stored = current.as_ref().is_some_and(|c| c.as_of > started);
                if !newer_stored {
                    change = current.as_deref().and_then(|c| changed(c, &state, request));
                }
                std::future::ready(if newer_stored {
                    Op::Nop
                } else {
                    Op::Put(Arc::new(state))
                })
            })
            .await;
        self.refresher.fetched(
            request.collection(),
            mode,
            matches!(request, Request::List(_)),
            failure.as_ref(),
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
}
