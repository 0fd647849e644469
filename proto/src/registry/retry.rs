//! The one retry loop every registry request goes through: the attempt count, the
//! backoff pause with jitter, `Retry-After`, and the decision to give up.
//!
//! Callers describe one attempt and say what became of it ([`Attempt`]); what counts as
//! transient stays with them (a 503 for [`super::Client::send`], a broken body for
//! [`super::Client::download_blob`]), how often and how long to wait lives here.

use super::error::{RegistryError, Result};
use std::future::Future;
use std::time::Duration;

/// How transient failures are retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Total attempts per request, including the first (at least 1).
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each time, with ±50% jitter.
    pub base_delay: Duration,
    /// Longest delay between attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `retry` (1-based), jittered.
    pub(crate) fn delay(&self, retry: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(
                1u32.checked_shl(retry.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(self.max_delay);
        exp.mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }
}

/// What became of one attempt.
pub(crate) enum Attempt<T> {
    /// It worked (or failed for good: put the error in `T` or return `Err`).
    Done(T),
    /// Try again at once without counting an attempt: the failure was ours to fix
    /// (a stale cached redirect dropped, a token refreshed) and the fix is bounded by
    /// the caller's own state.
    Again,
    /// A transient failure: try again after a pause unless the attempts ran out, in
    /// which case `give_up` is the error returned.
    Failed {
        /// What went wrong, for the log line.
        last: String,
        /// The pause the server asked for (`Retry-After`), within the policy's longest.
        after: Option<Duration>,
        /// The error to return if this was the last attempt.
        give_up: RegistryError,
    },
}

/// Runs `attempt` until it is [`Attempt::Done`], an `Err`, or has
/// [`Attempt::Failed`] [`RetryPolicy::max_attempts`] times.
///
/// `state` is moved into each attempt and handed back with its outcome, so attempts
/// can carry progress between them (bytes already written, a redirect to forget)
/// without borrowing across the loop. Each attempt is told its 1-based number.
pub(crate) async fn retry<S, T, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    mut state: S,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut(S, u32) -> Fut,
    Fut: Future<Output = (S, Result<Attempt<T>>)>,
{
    let max = policy.max_attempts.max(1);
    let mut number: u32 = 1;
    loop {
        let (next, outcome) = attempt(state, number).await;
        state = next;
        match outcome? {
            Attempt::Done(t) => return Ok(t),
            Attempt::Again => {}
            Attempt::Failed {
                last,
                after,
                give_up,
            } => {
                if number >= max {
                    return Err(give_up);
                }
                let delay = after
                    .map(|d| d.min(policy.max_delay))
                    .unwrap_or_else(|| policy.delay(number));
                tracing::info!(what, attempt = number, ?delay, error = %last, "retrying");
                tokio::time::sleep(delay).await;
                number += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        for retry in 1..40 {
            let d = p.delay(retry);
            assert!(d <= Duration::from_millis(1000), "{d:?}");
            assert!(d >= Duration::from_millis(50));
        }
        assert!(p.delay(1) <= Duration::from_millis(100));
        assert!(p.delay(5) >= Duration::from_millis(500));
    }

    fn quick(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        }
    }

    fn failed(n: u32) -> Attempt<u32> {
        Attempt::Failed {
            last: format!("failure {n}"),
            after: None,
            give_up: RegistryError::BadResponse {
                url: "u".into(),
                message: format!("gave up at {n}"),
            },
        }
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_with_the_last_error() {
        let err = retry(&quick(3), "t", 0u32, |calls, n| async move {
            (calls + 1, Ok(failed(n)))
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("gave up at 3"), "{err}");
    }

    #[tokio::test]
    async fn again_does_not_count_and_state_carries_over() {
        // Two uncounted retries, one failure, then success on attempt 2.
        let got = retry(&quick(2), "t", 0u32, |calls, n| async move {
            let outcome = match calls {
                0 | 1 => Attempt::Again,
                2 => failed(n),
                _ => Attempt::Done(n * 100 + calls),
            };
            (calls + 1, Ok(outcome))
        })
        .await
        .unwrap();
        assert_eq!(got, 203);
    }

    #[tokio::test]
    async fn errors_are_not_retried() {
        let err = retry(&quick(5), "t", 0u32, |calls, _| async move {
            let e = RegistryError::BadResponse {
                url: "u".into(),
                message: format!("fatal after {calls} calls"),
            };
            (calls + 1, Err::<Attempt<()>, _>(e))
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("fatal after 0 calls"), "{err}");
    }
}
