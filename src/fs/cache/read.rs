//! The reader's path through the cache: answer from the entry if it may, else wait for the key's
//! flight (or a list that will vouch for the entry), starting one if needed, and never wait past
//! [`READER_PATIENCE`] when there is a last answer to fall back on.

use std::time::Duration;

use tokio::time::Instant;

use super::counters::Counters;
use super::entry::{Answer, Slot};
use super::flights::{Mode, Pending};
use super::request::Request;
use super::{Cache, Inner};

/// How long a reader that has a last answer waits for a refresh of it, counted from the start of
/// the refresh: a slow vault delays a read by at most this, then the read gets the last answer.
pub(crate) const READER_PATIENCE: Duration = Duration::from_secs(2);

impl Cache {
    /// Answer from the entry if it may, else wait for the key's flight, starting one if needed.
    pub(super) async fn get(&self, request: Request) -> Answer {
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
        let fallback = slot
            .as_deref()
            .filter(|s| s.has_last_good(now, inner.config.max_stale));
        let (flight, started, background) = {
            let mut flights = inner.flights.lock();
            match flights.get(&key) {
                Some(flight) if flight.joinable(now, inner.config.ttl) => {
                    // A retry during a known outage may hang until the client times out; readers
                    // that have a stale answer to fall back on take it now instead of waiting.
                    if let Some(slot) = slot.as_deref()
                        && let Some(answer) = inner.stale(slot, now)
                    {
                        slot.mark_read();
                        return answer;
                    }
                    Counters::bump(&inner.counters.coalesced);
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
                Some(flight) if fallback.is_some() && flight.running() => {
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

/// The entry's answers to a reader, counted.
impl Inner {
    /// The answer a slot gives without a vault call, if it may give one now: fresh, or inside
    /// the retry interval of a failure (the last answer stale, or else the error).
    pub(super) fn cached_answer(&self, slot: &Slot, now: Instant) -> Option<Answer> {
        if let Some(answer) = slot.fresh(now, self.config.ttl) {
            Counters::bump(&self.counters.hits);
            return Some(answer);
        }
        let error = slot.backing_off(now)?;
        self.stale(slot, now).or_else(|| {
            Counters::bump(&self.counters.deferred_errors);
            Some(Err(error.clone()))
        })
    }

    /// The last answer, served stale, if the slot is in a transient outage within `max_stale`.
    fn stale(&self, slot: &Slot, now: Instant) -> Option<Answer> {
        if !slot.in_transient_outage() {
            return None;
        }
        self.last_good(slot, now)
    }

    /// The last answer, served stale, if it is not older than `max_stale`.
    fn last_good(&self, slot: &Slot, now: Instant) -> Option<Answer> {
        let answer = slot.last_good(now, self.config.max_stale)?;
        Counters::bump(&self.counters.stale_served);
        Some(answer)
    }

    /// The list of `key`'s collection in flight that will judge `slot` when it comes back, if
    /// `key` is a latest-version entry such a list vouches for and a reader may still wait for
    /// it: it started after the entry's state was stored, not more than a TTL ago.
    fn list_vouching_for(&self, key: &Request, slot: &Slot, now: Instant) -> Option<Pending> {
        key.latest_name()?;
        let known = slot.known.as_ref()?;
        let (started, list) = self
            .flights
            .running_list(key.collection(), now, self.config.ttl)?;
        (started > known.fetched_at && started >= slot.as_of).then_some(list)
    }
}
