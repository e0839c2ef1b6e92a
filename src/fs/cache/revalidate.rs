//! Revalidation by listing: a list of a collection vouches for the cached latest versions of its
//! objects it shows unchanged (they are renewed without a GET), and shows which changed (those
//! being read are refetched at once). The rules are in doc/CACHE.md.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use moka::ops::compute::Op;
use tokio::time::Instant;

use super::Inner;
use super::counters::Counters;
use super::entry::{Known, Slot};
use super::request::Request;
use crate::vault::clock::distinguishable;
use crate::vault::{Collection, ObjectProps, VaultError};

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
    /// Apply a list of `collection`, whose fetch started at `listed_at`, to the cached
    /// latest-version entries of that collection.
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
                    self.start_background(slot.request.clone(), Instant::now());
                }
                Verdict::Appeared => self.drop_if_current(&key, &slot).await,
                _ => {}
            }
        }
    }

    /// Make `seen` fresh as of `listed_at`, unless another state replaced it meanwhile.
    async fn renew(&self, key: &Request, seen: &Arc<Slot>, listed_at: Instant) {
        let Some(renewed) = seen.renewed(listed_at) else {
            return;
        };
        if self
            .replace_if_current(key, seen, Op::Put(Arc::new(renewed)))
            .await
        {
            Counters::bump(&self.counters.revalidated);
        }
    }

    /// Forget `seen` (a `NotFound` for an object that now exists), unless it was replaced.
    async fn drop_if_current(&self, key: &Request, seen: &Arc<Slot>) {
        self.replace_if_current(key, seen, Op::Remove).await;
    }

    /// Apply `op` to `key`'s entry if it still holds `seen` (a fetch that stored meanwhile wins);
    /// whether it did.
    async fn replace_if_current(&self, key: &Request, seen: &Arc<Slot>, op: Op<Arc<Slot>>) -> bool {
        let mut applied = false;
        self.slots
            .entry(key.clone())
            .and_compute_with(|current| {
                let is_seen = current.is_some_and(|entry| Arc::ptr_eq(entry.value(), seen));
                applied = is_seen;
                std::future::ready(if is_seen { op } else { Op::Nop })
            })
            .await;
        applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::cache::testing::{
        AGED, TTL, listen, put_secrets, read, refreshing, secret, settle,
    };
    use crate::fs::cache::{Cache, Change};
    use crate::vault::memory::MemoryVault;
    use std::time::Duration;
    use tokio::time::sleep;

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
        let (vault, cache) = refreshing(TTL);
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
    async fn a_value_too_close_to_its_fetch_is_refetched_not_renewed() {
        let (vault, cache) = refreshing(TTL);
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
            let (vault, cache) = refreshing(TTL);
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
        let (vault, cache) = refreshing(TTL);
        vault.set_dates(false);
        assert!(!renewed_after(&vault, &cache, Duration::from_secs(3)).await);
        let (vault, cache) = refreshing(TTL);
        vault.set_dates(false);
        assert!(renewed_after(&vault, &cache, Duration::from_secs(61)).await);
    }

    /// A vault clock two minutes behind ours, and a rotation written in the same second (on its
    /// clock) as the fetch of the value it replaces, with the same attributes: the list cannot
    /// tell them apart, and must not renew the old value. (Assuming a minute of skew at most,
    /// as kvfs did before it read the vault's `Date`s, it would have: forever.)
    #[tokio::test(start_paused = true)]
    async fn a_rotation_in_the_second_of_the_fetch_is_not_hidden_by_a_skewed_clock() {
        let (vault, cache) = refreshing(TTL);
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
        let (vault, cache) = refreshing(ttl);
        put_secrets(&vault, 30, |i| format!("v{i}"));
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
        assert!(
            cache
                .inner
                .flights
                .in_flight(&Request::List(Collection::Secrets))
        );
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
    async fn a_cached_not_found_is_renewed_while_absent_and_dropped_once_created() {
        let (vault, cache) = refreshing(TTL);
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
}
