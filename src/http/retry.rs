//! The retry policy of every Azure pipeline kvfs builds (the vault's and the credentials'),
//! chosen here rather than taken from the crates' defaults.
//!
//! **Retries are few and short.** The crate default (8 retries, up to 60 s) made a vault that
//! answers 503 take over a minute to fail. kvfs serves the last good value while the vault is
//! unwell, so it wants the failure *promptly*: [`super::DEFAULT_MAX_RETRIES`] retries, 200 ms
//! then 400 ms (plus jitter), delays capped at [`RETRY_MAX_DELAY`] even when the server's
//! `Retry-After` asks for longer, and no new retry once `request_timeout` has passed since the
//! first answer. 408/429/5xx and transport errors are retried; nothing else is.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use azure_core::http::headers::{RETRY_AFTER, RETRY_AFTER_MS, X_MS_RETRY_AFTER_MS};
use azure_core::http::policies::{RetryHeaders, RetryPolicy};
use azure_core::http::{RetryOptions, StatusCode};

/// First retry delay; doubles per retry.
pub(crate) const RETRY_INITIAL_DELAY: Duration = Duration::from_millis(200);
/// No retry waits longer than this, whatever `Retry-After` says: a throttled or failing vault is
/// reported (and the stale value served) rather than waited out.
pub(crate) const RETRY_MAX_DELAY: Duration = Duration::from_secs(2);

/// The bounded retry policy described in the module docs, for any `ClientOptions`.
pub(crate) fn retry_options(max_retries: u32, request_timeout: Duration) -> RetryOptions {
    RetryOptions::custom(Arc::new(BoundedRetry {
        max_retries,
        max_elapsed: request_timeout,
        headers: RetryHeaders {
            retry_headers: vec![X_MS_RETRY_AFTER_MS, RETRY_AFTER_MS, RETRY_AFTER],
        },
    }))
}

/// Exponential retries bounded in count, per-delay and total time; `Retry-After` honoured only
/// up to [`RETRY_MAX_DELAY`].
#[derive(Debug)]
struct BoundedRetry {
    max_retries: u32,
    /// No new retry once this much time has passed since the first answer.
    max_elapsed: Duration,
    headers: RetryHeaders,
}

/// What the SDK's own policies retry: timeouts, throttling and server errors.
const RETRY_STATUS_CODES: &[StatusCode] = &[
    StatusCode::RequestTimeout,
    StatusCode::TooManyRequests,
    StatusCode::InternalServerError,
    StatusCode::BadGateway,
    StatusCode::ServiceUnavailable,
    StatusCode::GatewayTimeout,
];

#[async_trait]
impl RetryPolicy for BoundedRetry {
    fn is_expired(&self, since_first_answer: azure_core::time::Duration, retry_count: u32) -> bool {
        retry_count >= self.max_retries || since_first_answer.unsigned_abs() >= self.max_elapsed
    }

    fn retry_headers(&self) -> Option<&RetryHeaders> {
        Some(&self.headers)
    }

    fn retry_status_codes(&self) -> &[StatusCode] {
        RETRY_STATUS_CODES
    }

    /// `retry_count` is 1 before the first retry: 200 ms, 400 ms, 800 ms… plus up to 25 %
    /// jitter (so many nodes throttled together do not come back in lockstep), capped.
    fn sleep_duration(&self, retry_count: u32) -> azure_core::time::Duration {
        let doublings = retry_count.saturating_sub(1).min(16);
        let base = RETRY_INITIAL_DELAY.saturating_mul(1 << doublings);
        let jitter = base.mul_f64(f64::from(random_u8()) / 1024.0);
        azure_core::time::Duration::try_from((base + jitter).min(RETRY_MAX_DELAY))
            .unwrap_or(azure_core::time::Duration::ZERO)
    }

    async fn wait(&self, retry_count: u32, retry_after: Option<azure_core::time::Duration>) {
        let ours = self.sleep_duration(retry_count).unsigned_abs();
        // A server asking for more than we are willing to wait gets RETRY_MAX_DELAY: the cache
        // above serves the stale value meanwhile and the next read tries again.
        let theirs = retry_after
            .map(|d| d.unsigned_abs().min(RETRY_MAX_DELAY))
            .unwrap_or_default();
        tokio::time::sleep(ours.max(theirs)).await;
    }
}

/// A random byte without a `rand` dependency: std's `RandomState` is randomly keyed per instance.
fn random_u8() -> u8 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos().into())
            .unwrap_or(0),
    );
    hasher.finish().to_le_bytes()[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_are_short_and_capped() {
        let policy = BoundedRetry {
            max_retries: 2,
            max_elapsed: Duration::from_secs(10),
            headers: RetryHeaders::default(),
        };
        let delay = |n| policy.sleep_duration(n).unsigned_abs();
        for _ in 0..50 {
            assert!((Duration::from_millis(200)..Duration::from_millis(251)).contains(&delay(1)));
            assert!((Duration::from_millis(400)..Duration::from_millis(501)).contains(&delay(2)));
            assert_eq!(delay(10), RETRY_MAX_DELAY);
            assert_eq!(delay(u32::MAX), RETRY_MAX_DELAY);
        }
        let zero = azure_core::time::Duration::ZERO;
        assert!(!policy.is_expired(zero, 0));
        assert!(!policy.is_expired(zero, 1));
        assert!(policy.is_expired(zero, 2));
        assert!(policy.is_expired(azure_core::time::Duration::seconds(10), 0));
    }
}
