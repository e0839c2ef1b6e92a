//! The token cache every credential is wrapped in ([`CachedCredential`]): tokens reused until
//! shortly before they expire, one refresh at a time, and tokens the vault refuses dropped, with
//! fresh ones spaced out while it keeps refusing them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use azure_core::time::OffsetDateTime;

use super::failure::{is_transient, root_cause, token_source_down};
use crate::http::error_chain;
use crate::vault::refusals::TokenVerdicts;

/// A token source that timed out (a hung `az`) is an outage, not a refusal: say so in the
/// chain (an `Io` error) so the vault client's mapping keeps serving cached values.
fn mark_timeouts_transient(e: azure_core::Error) -> azure_core::Error {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    let mut timed_out = false;
    while let Some(x) = next {
        timed_out |= x
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        next = x.source();
    }
    if !timed_out || is_transient(&e) {
        return e;
    }
    azure_core::Error::with_error(
        ErrorKind::Credential,
        azure_core::Error::with_message(ErrorKind::Io, root_cause(&e)),
        "the token source timed out",
    )
}

/// When a token obtained at `obtained` and expiring at `expires` should be replaced: 5 minutes
/// before it expires, or halfway through its life when that is shorter than 10 minutes (so short
/// test tokens are still reused, and still renewed while reads go on).
pub(crate) fn refresh_at(obtained: OffsetDateTime, expires: OffsetDateTime) -> OffsetDateTime {
    let lifetime = expires - obtained;
    let margin = if lifetime < azure_core::time::Duration::minutes(10) {
        lifetime / 2
    } else {
        azure_core::time::Duration::minutes(5)
    };
    expires - margin
}

/// A failed refresh still returns the old token while it has at least this long to live.
const STALE_TOKEN_FLOOR: azure_core::time::Duration = azure_core::time::Duration::seconds(30);

/// The longest wait between two fresh-token attempts while the vault refuses every token.
pub(crate) const MAX_FRESH_TOKEN_DELAY: Duration = Duration::from_secs(60);

/// How long to wait before the next fresh token after `strikes` refused tokens (or failed
/// attempts) in a row: none after the first, then 1 s, 2 s, 4 s … up to
/// [`MAX_FRESH_TOKEN_DELAY`]. A vault that refuses every token hears from kvfs about once a minute.
pub(crate) fn fresh_token_delay(strikes: u32) -> Duration {
    match strikes {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(1u64 << (n - 2).min(6)).min(MAX_FRESH_TOKEN_DELAY),
    }
}

type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// Builds the credential a [`CachedCredential`] wraps afresh. The official credentials keep a
/// token cache of their own (renewing only inside 5 minutes of expiry) that would hand back the
/// very token the vault refused; a new credential has an empty one.
pub(crate) type Rebuild = Arc<dyn Fn() -> Result<Arc<dyn TokenCredential>, String> + Send + Sync>;

struct CachedToken {
    token: AccessToken,
    refresh_at: OffsetDateTime,
    /// The vault has authenticated a request made with it.
    accepted: bool,
    /// The vault answered 401 to it: never handed out again.
    refused: bool,
}

/// Refused tokens and failed token requests since the vault last accepted a token.
#[derive(Default)]
struct Strikes {
    count: u32,
    /// No fresh token is asked for before then.
    not_before: Option<OffsetDateTime>,
}

/// Reuses each scope's token until [`refresh_at`], one refresh at a time. When a refresh fails
/// and the old token still has `STALE_TOKEN_FLOOR` to live, the old token is served (and the
/// failure logged), so a token endpoint blip does not fail reads.
///
/// It is also told the vault's verdict on each token ([`TokenVerdicts`], through the vault
/// client's pipeline). A token the vault refuses (401: revoked, or a continuous-access-evaluation
/// event) is dropped and the credential rebuilt, so the next token is newly issued rather than
/// the refused one from the credential's own cache. Fresh tokens after a refusal are spaced by
/// [`fresh_token_delay`]; in between, `get_token` fails at once (the read is `EACCES`) without
/// asking the token endpoint or the vault. The spacing resets when the vault accepts a token.
pub(crate) struct CachedCredential {
    inner: parking_lot::Mutex<Arc<dyn TokenCredential>>,
    rebuild: Option<Rebuild>,
    clock: Clock,
    tokens: parking_lot::Mutex<HashMap<String, CachedToken>>,
    strikes: parking_lot::Mutex<Strikes>,
    /// One token request at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for CachedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedCredential").finish_non_exhaustive()
    }
}

impl CachedCredential {
    pub(crate) fn new(inner: Arc<dyn TokenCredential>) -> CachedCredential {
        Self::with_clock(inner, Arc::new(OffsetDateTime::now_utc))
    }

    /// A cache that builds its credential with `rebuild`, again after each refused token.
    pub(crate) fn rebuildable(rebuild: Rebuild) -> Result<CachedCredential, String> {
        let mut c = Self::new(rebuild()?);
        c.rebuild = Some(rebuild);
        Ok(c)
    }

    pub(crate) fn with_clock(inner: Arc<dyn TokenCredential>, clock: Clock) -> CachedCredential {
        CachedCredential {
            inner: parking_lot::Mutex::new(inner),
            rebuild: None,
            clock,
            tokens: parking_lot::Mutex::new(HashMap::new()),
            strikes: parking_lot::Mutex::new(Strikes::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The cached token of `key`, if it may still be handed out without a refresh.
    fn current(&self, key: &str, now: OffsetDateTime) -> Option<AccessToken> {
        let tokens = self.tokens.lock();
        let c = tokens.get(key)?;
        (!c.refused && now < c.refresh_at).then(|| c.token.clone())
    }

    /// One more strike; returns the wait before the next fresh token.
    fn strike(&self, now: OffsetDateTime) -> Duration {
        let mut s = self.strikes.lock();
        s.count = s.count.saturating_add(1);
        let delay = fresh_token_delay(s.count);
        s.not_before = Some(now + delay);
        delay
    }

    /// After a refusal: the wait left before a fresh token may be asked for, if any.
    fn backoff_left(&self, now: OffsetDateTime) -> Option<Duration> {
        let s = self.strikes.lock();
        let left = s.not_before? - now;
        (left > azure_core::time::Duration::ZERO)
            .then(|| Duration::try_from(left).unwrap_or_default())
    }

    /// A new credential (with an empty cache of its own), where one can be built.
    fn rebuild_inner(&self, now: OffsetDateTime) -> azure_core::Result<()> {
        let Some(rebuild) = &self.rebuild else {
            return Ok(());
        };
        match rebuild() {
            Ok(c) => {
                *self.inner.lock() = c;
                Ok(())
            }
            Err(e) => {
                self.strike(now);
                Err(azure_core::Error::with_message(ErrorKind::Credential, e))
            }
        }
    }
}

/// The answer while fresh tokens are spaced out after refusals. Not transient: the read is
/// `EACCES`, not a stale value (see doc/SEMANTICS.md).
fn waiting_error(wait: Duration) -> azure_core::Error {
    azure_core::Error::with_message(
        ErrorKind::Credential,
        format!(
            "the vault refused the last access token; the next one is asked for in {}s",
            wait.as_secs_f64().ceil()
        ),
    )
}

#[async_trait]
impl TokenCredential for CachedCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let key = scopes.join(" ");
        if let Some(token) = self.current(&key, (self.clock)()) {
            return Ok(token);
        }
        let _one = self.fetching.lock().await;
        let now = (self.clock)();
        if let Some(token) = self.current(&key, now) {
            return Ok(token);
        }
        let refused = self
            .tokens
            .lock()
            .get(&key)
            .filter(|c| c.refused)
            .map(|c| c.token.token.secret().to_string());
        let after_strikes = refused.is_some() || self.strikes.lock().count > 0;
        if after_strikes {
            if let Some(wait) = self.backoff_left(now) {
                return Err(waiting_error(wait));
            }
            self.rebuild_inner(now)?;
        }
        let inner = self.inner.lock().clone();
        let got = inner.get_token(scopes, options).await;
        crate::metrics::token_request(got.is_ok());
        match got {
            Ok(token) => {
                let now = (self.clock)();
                if refused.as_deref() == Some(token.token.secret()) {
                    // Only a token source with a cache kvfs cannot empty does this (az's own).
                    tracing::warn!(
                        "the token source handed back the access token the vault refused; it will be refused again"
                    );
                }
                self.tokens.lock().insert(
                    key,
                    CachedToken {
                        refresh_at: refresh_at(now, token.expires_on),
                        token: token.clone(),
                        accepted: false,
                        refused: false,
                    },
                );
                Ok(token)
            }
            Err(e) => {
                let e = mark_timeouts_transient(e);
                // A token source that refuses (not one that is down) is paced like a vault
                // that refuses: its answer will not change from one read to the next.
                if after_strikes || !token_source_down(&e) {
                    self.strike(now);
                }
                let tokens = self.tokens.lock();
                match tokens.get(&key) {
                    Some(c) if !c.refused && c.token.expires_on - now >= STALE_TOKEN_FLOOR => {
                        tracing::warn!(
                            "could not renew the access token, using the current one until it expires: {}",
                            error_chain(&e)
                        );
                        Ok(c.token.clone())
                    }
                    _ => Err(e),
                }
            }
        }
    }
}

impl TokenVerdicts for CachedCredential {
    fn accepted(&self, token: &str) {
        let mut tokens = self.tokens.lock();
        let Some(c) = tokens
            .values_mut()
            .find(|c| c.token.token.secret() == token)
        else {
            return;
        };
        c.accepted = true;
        drop(tokens);
        let mut s = self.strikes.lock();
        if s.count > 0 {
            tracing::info!(
                refused = s.count,
                "the vault accepts the new access token; reads are served again"
            );
            *s = Strikes::default();
        }
    }

    fn refused(&self, token: &str, claims: Option<&str>) -> Option<String> {
        let now = (self.clock)();
        let mut tokens = self.tokens.lock();
        let Some((scope, c)) = tokens
            .iter_mut()
            .find(|(_, c)| c.token.token.secret() == token)
        else {
            // A token already replaced (a request that was in flight with it): the SDK's retry
            // gets the current one.
            return tokens.keys().next().cloned();
        };
        let scope = scope.clone();
        if c.refused {
            return Some(scope);
        }
        c.refused = true;
        let was_accepted = c.accepted;
        drop(tokens);
        let delay = self.strike(now);
        // A claims challenge asks for a token issued after the event; a new token is that. The
        // claims themselves cannot be passed on: azure_identity 1.0's `TokenRequestOptions` has
        // no field for them and the managed-identity endpoints take none.
        let how = if claims.is_some() {
            "401 with a claims challenge"
        } else {
            "401"
        };
        if was_accepted {
            tracing::warn!(
                "the vault refused an access token it had accepted ({how}: revoked, or a continuous access evaluation event); getting a new one"
            );
        } else {
            tracing::warn!(
                next_in = ?delay,
                "the vault refused a new access token too ({how}); asking for another after a pause"
            );
        }
        Some(scope)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use azure_core::credentials::Secret;
    use azure_core::time::Duration as TimeDelta;
    use parking_lot::Mutex;

    use super::*;
    use crate::auth::VAULT_SCOPE;

    #[test]
    fn tokens_are_renewed_five_minutes_early_or_halfway_when_short() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let at = |life: TimeDelta| refresh_at(t0, t0 + life) - t0;
        assert_eq!(at(TimeDelta::hours(1)), TimeDelta::minutes(55));
        assert_eq!(at(TimeDelta::minutes(10)), TimeDelta::minutes(5));
        assert_eq!(at(TimeDelta::minutes(9)), TimeDelta::seconds(270));
        assert_eq!(at(TimeDelta::seconds(5)), TimeDelta::milliseconds(2500));
    }

    /// Counts fetches; each token lives `life`, from the shared clock; fails while `fail` is set.
    #[derive(Debug)]
    struct Counting {
        now: Arc<Mutex<OffsetDateTime>>,
        life: TimeDelta,
        calls: AtomicUsize,
        fail: Mutex<bool>,
    }

    #[async_trait]
    impl TokenCredential for Counting {
        async fn get_token(
            &self,
            _: &[&str],
            _: Option<TokenRequestOptions<'_>>,
        ) -> azure_core::Result<AccessToken> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if *self.fail.lock() {
                let inner = azure_core::Error::with_message(ErrorKind::Connection, "refused");
                return Err(azure_core::Error::with_error(
                    ErrorKind::Credential,
                    inner,
                    "down",
                ));
            }
            Ok(AccessToken::new(
                Secret::new(format!("token-{n}")),
                *self.now.lock() + self.life,
            ))
        }
    }

    fn cached(life: TimeDelta) -> (CachedCredential, Arc<Counting>, Arc<Mutex<OffsetDateTime>>) {
        let now = Arc::new(Mutex::new(
            OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
        ));
        let inner = Arc::new(Counting {
            now: now.clone(),
            life,
            calls: AtomicUsize::new(0),
            fail: Mutex::new(false),
        });
        let clock = now.clone();
        let c = CachedCredential::with_clock(inner.clone(), Arc::new(move || *clock.lock()));
        (c, inner, now)
    }

    async fn token(c: &CachedCredential) -> azure_core::Result<String> {
        c.get_token(&[VAULT_SCOPE], None)
            .await
            .map(|t| t.token.secret().to_string())
    }

    #[tokio::test]
    async fn the_cache_reuses_a_token_until_its_refresh_time() {
        let (c, inner, now) = cached(TimeDelta::seconds(5));
        assert_eq!(token(&c).await.unwrap(), "token-1");
        *now.lock() += TimeDelta::seconds(2);
        assert_eq!(token(&c).await.unwrap(), "token-1");
        *now.lock() += TimeDelta::milliseconds(600);
        assert_eq!(
            token(&c).await.unwrap(),
            "token-2",
            "renewed halfway through a 5 s life"
        );
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);

        let (c, inner, now) = cached(TimeDelta::hours(1));
        assert_eq!(token(&c).await.unwrap(), "token-1");
        *now.lock() += TimeDelta::minutes(54);
        assert_eq!(token(&c).await.unwrap(), "token-1");
        *now.lock() += TimeDelta::minutes(2);
        // The endpoint is down 4 minutes before expiry: the current token is still served.
        *inner.fail.lock() = true;
        assert_eq!(token(&c).await.unwrap(), "token-1");
        // Less than 30 s left: the failure is the answer, and it stays transient.
        *now.lock() += TimeDelta::seconds(230);
        let err = token(&c).await.unwrap_err();
        assert!(is_transient(&err));
        *inner.fail.lock() = false;
        assert_eq!(token(&c).await.unwrap(), "token-4");
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_refresh() {
        let (c, inner, _) = cached(TimeDelta::hours(1));
        let c = Arc::new(c);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { token(&c).await.unwrap() })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), "token-1");
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
    }

    // ---- refused tokens ----

    #[test]
    fn fresh_tokens_after_refusals_wait_0_1_2_4_up_to_60_seconds() {
        let delays: Vec<u64> = (1..=10).map(|n| fresh_token_delay(n).as_secs()).collect();
        assert_eq!(delays, [0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(fresh_token_delay(u32::MAX), MAX_FRESH_TOKEN_DELAY);
    }

    #[tokio::test]
    async fn a_refused_token_is_replaced_at_once_then_fresh_tokens_back_off() {
        let (c, inner, now) = cached(TimeDelta::hours(1));
        assert_eq!(token(&c).await.unwrap(), "token-1");
        c.accepted("token-1");
        assert_eq!(c.refused("token-1", None).as_deref(), Some(VAULT_SCOPE));
        // Revoked mid-session: a new token at once.
        assert_eq!(token(&c).await.unwrap(), "token-2");
        // The vault refuses every token: each next one waits twice as long, up to a minute;
        // meanwhile the answer is an error (not transient: EACCES), without a token request.
        let mut n = 2;
        for wait in [1, 2, 4, 8, 16, 32, 60, 60] {
            c.refused(&format!("token-{n}"), None);
            *now.lock() += TimeDelta::seconds(wait - 1);
            let err = token(&c).await.unwrap_err();
            assert!(!token_source_down(&err), "{}", error_chain(&err));
            assert!(
                error_chain(&err).contains("refused"),
                "{}",
                error_chain(&err)
            );
            assert_eq!(inner.calls.load(Ordering::SeqCst), n);
            *now.lock() += TimeDelta::seconds(1);
            n += 1;
            assert_eq!(token(&c).await.unwrap(), format!("token-{n}"));
        }
        // A refusal reported twice (requests in flight together) counts once.
        c.refused(&format!("token-{n}"), None);
        c.refused(&format!("token-{n}"), None);
        *now.lock() += TimeDelta::seconds(60);
        n += 1;
        assert_eq!(token(&c).await.unwrap(), format!("token-{n}"));
        // Accepted: the pause is over, and the next revocation is handled at once again.
        c.accepted(&format!("token-{n}"));
        c.refused(&format!("token-{n}"), Some("eyJ9"));
        n += 1;
        assert_eq!(token(&c).await.unwrap(), format!("token-{n}"));
        // A token already replaced still names the scope (the SDK's retry takes the current one).
        assert_eq!(c.refused("token-1", None).as_deref(), Some(VAULT_SCOPE));
        assert_eq!(token(&c).await.unwrap(), format!("token-{n}"));
    }

    #[tokio::test]
    async fn a_refused_token_is_never_handed_out_again() {
        let (c, inner, _) = cached(TimeDelta::hours(1));
        assert_eq!(token(&c).await.unwrap(), "token-1");
        c.refused("token-1", None);
        // The token source is down: the refused token has an hour left but is not served.
        *inner.fail.lock() = true;
        assert!(token(&c).await.is_err());
        // And the next attempt waits its turn.
        let err = token(&c).await.unwrap_err();
        assert!(
            error_chain(&err).contains("next one"),
            "{}",
            error_chain(&err)
        );
    }

    /// A credential with a token cache of its own (as azure_identity's are): every instance
    /// hands out one token, forever.
    #[derive(Debug)]
    struct SelfCaching(String);

    #[async_trait]
    impl TokenCredential for SelfCaching {
        async fn get_token(
            &self,
            _: &[&str],
            _: Option<TokenRequestOptions<'_>>,
        ) -> azure_core::Result<AccessToken> {
            Ok(AccessToken::new(
                Secret::new(self.0.clone()),
                OffsetDateTime::now_utc() + TimeDelta::hours(1),
            ))
        }
    }

    #[tokio::test]
    async fn the_credential_is_rebuilt_so_its_own_cache_cannot_hand_back_the_refused_token() {
        let built = Arc::new(AtomicUsize::new(0));
        let counter = built.clone();
        let c = CachedCredential::rebuildable(Arc::new(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Arc::new(SelfCaching(format!("instance-{n}"))) as Arc<dyn TokenCredential>)
        }))
        .unwrap();
        assert_eq!(token(&c).await.unwrap(), "instance-1");
        c.accepted("instance-1");
        c.refused("instance-1", None);
        assert_eq!(token(&c).await.unwrap(), "instance-2");
        assert_eq!(built.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_token_endpoint_that_is_down_is_not_paused() {
        let (c, inner, _) = cached(TimeDelta::hours(1));
        *inner.fail.lock() = true;
        // `Counting` fails with a connection error: down, not refusing; no pause.
        for _ in 0..3 {
            assert!(token(&c).await.is_err());
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
        *inner.fail.lock() = false;
        assert_eq!(token(&c).await.unwrap(), "token-4");
    }
}
