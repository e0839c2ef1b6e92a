//! The single-flight map: at most one vault call per key at a time, which every caller of the key
//! joins, a reader's or the refresher's. Written by hand because moka's `get_with` coalesces only
//! the initialisation of an absent entry, not the refresh of one that is present but expired.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::{Mutex, MutexGuard};
use tokio::time::Instant;

use super::entry::Answer;
use super::request::Request;
use crate::vault::{Collection, VaultError};

/// A flight's outcome, for every caller that waits for it.
pub(super) type Pending = Shared<BoxFuture<'static, Answer>>;

/// Who started a flight: a reader waiting for it, or the refresher ahead of expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Reader,
    Background,
}

/// Fetches in flight, by key.
/// INVARIANT: a flight leaves the map (if still the current one for its key) only after storing
/// its entry, so a caller that finds no flight finds the entry.
#[derive(Default)]
pub(super) struct Flights {
    map: Mutex<HashMap<Request, Flight>>,
    next_id: AtomicU64,
}

pub(super) struct Flight {
    id: u64,
    pub(super) started: Instant,
    pub(super) mode: Mode,
    pub(super) result: Pending,
}

impl Flight {
    /// A caller may still join it: it started at most a TTL ago, so its answer is young enough.
    pub(super) fn joinable(&self, now: Instant, ttl: Duration) -> bool {
        now.saturating_duration_since(self.started) <= ttl
    }

    pub(super) fn running(&self) -> bool {
        self.result.peek().is_none()
    }
}

/// The map, locked: look a key's flight up and start the next one under one lock.
pub(super) struct Locked<'a> {
    map: MutexGuard<'a, HashMap<Request, Flight>>,
    next_id: &'a AtomicU64,
}

impl Flights {
    pub(super) fn lock(&self) -> Locked<'_> {
        Locked {
            map: self.map.lock(),
            next_id: &self.next_id,
        }
    }

    /// A flight of `key` is under way.
    pub(super) fn in_flight(&self, key: &Request) -> bool {
        self.map.lock().contains_key(key)
    }

    /// The list of `collection` under way, if a caller may still join it: when it started, and
    /// its outcome.
    pub(super) fn running_list(
        &self,
        collection: Collection,
        now: Instant,
        ttl: Duration,
    ) -> Option<(Instant, Pending)> {
        let map = self.map.lock();
        let list = map.get(&Request::List(collection))?;
        (list.joinable(now, ttl) && list.running()).then(|| (list.started, list.result.clone()))
    }

    /// Flight `id` of `key` has stored its entry: it leaves the map, unless a newer flight of the
    /// key replaced it there.
    pub(super) fn landed(&self, key: &Request, id: u64) {
        let mut map = self.map.lock();
        if map.get(key).is_some_and(|f| f.id == id) {
            map.remove(key);
        }
    }
}

impl Locked<'_> {
    pub(super) fn get(&self, key: &Request) -> Option<&Flight> {
        self.map.get(key)
    }

    /// Start a flight of `key` as of `now` and register it (replacing an older one, which still
    /// finishes). `fly(id)` is the fetch, which must call [`Flights::landed`] when it is done.
    pub(super) fn start<F>(
        &mut self,
        key: Request,
        now: Instant,
        mode: Mode,
        fly: impl FnOnce(u64) -> F,
    ) -> Pending
    where
        F: Future<Output = Answer> + Send + 'static,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Spawned, so the fetch completes and is cached even if every caller waiting on it is
        // cancelled (an interrupted FUSE request), or when nobody waits (a background refresh).
        let task = tokio::spawn(fly(id));
        let result = async move {
            task.await
                .unwrap_or_else(|e| Err(VaultError::Unexpected(format!("cache fetch failed: {e}"))))
        }
        .boxed()
        .shared();
        self.map.insert(
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
}
