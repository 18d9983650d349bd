//! Which failed requests a real sales channel sends again, and how long it waits first. Pure.
//!
//! A channel that gets no answer (the connection was refused, reset or timed out), a 5xx or a
//! 429 cannot know whether its order was placed; it sends the same request again under the
//! same `Idempotency-Key`, so that the server either places the order now or replays the answer
//! it stored. A retry therefore never loses an order nor places one twice, and a server process
//! killed mid-request costs the channel only a wait. Refusals that a retry cannot change (4xx
//! other than 409 and 429) are never retried.

use std::time::Duration;

use crate::client::Answer;

/// The wait before the first retry; it doubles with every retry up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The longest wait between two retries: a restarted server is found within this long of its
/// return.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The most retries of one request; with [`BACKOFF_MAX`] between them, about 17 minutes, past
/// which the server is down rather than restarting.
pub const TRANSIENT_RETRIES_MAX: u32 = 1_000;
/// The longest server-given `Retry-After` honoured; a longer one is shortened to this.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(5);

/// Whether `answer` is a failure a channel sends again with the same key and body.
pub fn is_transient(answer: &Answer) -> bool {
    match answer {
        Answer::Transport { .. } => true,
        Answer::Refused { status, .. } => *status == 429 || (500..=599).contains(status),
        Answer::Order(_) | Answer::InFlight { .. } => false,
    }
}

/// Whether the attempt that got `answer` may have reached the server and placed the order, so
/// that a later attempt may rightly be answered with a replay, or with 409 while the first is
/// still running. Only a refused connection proves that nothing was sent.
pub fn may_have_applied(answer: &Answer) -> bool {
    match answer {
        Answer::Transport { connect, .. } => !connect,
        Answer::Refused { status, .. } => (500..=599).contains(status),
        Answer::Order(_) | Answer::InFlight { .. } => false,
    }
}

/// How a failed request is named in the report: its status, or `connect`, `timeout` or
/// `transport` (a reset or a broken answer).
pub fn cause(answer: &Answer) -> String {
    match answer {
        Answer::Order(_) => "ok".to_owned(),
        Answer::InFlight { .. } => "409".to_owned(),
        Answer::Refused { status, .. } => status.to_string(),
        Answer::Transport { connect: true, .. } => "connect".to_owned(),
        Answer::Transport { timeout: true, .. } => "timeout".to_owned(),
        Answer::Transport { .. } => "transport".to_owned(),
    }
}

/// The wait before retry number `retry` (1 for the first): the server's `Retry-After` when it
/// gave one (at most [`RETRY_AFTER_MAX`]), else [`BACKOFF_MIN`] doubled per earlier retry, at
/// most [`BACKOFF_MAX`].
pub fn wait_before(retry: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(wait) = retry_after {
        return wait.min(RETRY_AFTER_MAX);
    }
    let doublings = retry.saturating_sub(1).min(16);
    BACKOFF_MIN
        .saturating_mul(1_u32 << doublings)
        .min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16) -> Answer {
        Answer::Refused {
            status,
            retry_after: None,
        }
    }

    fn transport(connect: bool, timeout: bool) -> Answer {
        Answer::Transport { connect, timeout }
    }

    #[test]
    fn only_failures_a_retry_can_mend_are_transient() {
        for answer in [
            transport(true, false),
            transport(false, true),
            transport(false, false),
            refused(500),
            refused(503),
            refused(429),
        ] {
            assert!(is_transient(&answer), "{answer:?} is transient");
        }
        for answer in [
            refused(400),
            refused(401),
            refused(422),
            Answer::InFlight { retry_after: None },
        ] {
            assert!(!is_transient(&answer), "{answer:?} is not transient");
        }
    }

    #[test]
    fn only_a_refused_connection_proves_nothing_was_applied() {
        assert!(!may_have_applied(&transport(true, false)));
        assert!(may_have_applied(&transport(false, true)));
        assert!(may_have_applied(&transport(false, false)));
        assert!(may_have_applied(&refused(502)));
        assert!(!may_have_applied(&refused(429)));
        assert_eq!(cause(&transport(true, true)), "connect");
        assert_eq!(cause(&transport(false, true)), "timeout");
        assert_eq!(cause(&refused(503)), "503");
    }

    #[test]
    fn waits_double_up_to_the_cap_and_honour_retry_after() {
        let ms = Duration::from_millis;
        assert_eq!(wait_before(1, None), ms(50));
        assert_eq!(wait_before(2, None), ms(100));
        assert_eq!(wait_before(5, None), ms(800));
        assert_eq!(wait_before(6, None), BACKOFF_MAX);
        assert_eq!(wait_before(u32::MAX, None), BACKOFF_MAX);
        assert_eq!(wait_before(1, Some(ms(2_000))), ms(2_000));
        assert_eq!(wait_before(1, Some(ms(60_000))), RETRY_AFTER_MAX);
    }
}
