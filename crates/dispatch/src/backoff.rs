//! Retry delays: capped exponential backoff with full jitter, so that many consumers retrying
//! against one failing partner spread out instead of hitting it in waves.

use std::time::Duration;

use rand::Rng;

/// Attempts per event before it becomes a dead letter. With the delays below, an event is
/// retried for about fifteen seconds: long enough to ride out a partner's brief outage.
pub const ATTEMPTS_MAX: u32 = 8;
/// The first retry waits up to this long.
pub const RETRY_DELAY_MS_BASE: u64 = 50;
/// No retry waits longer than this, however many attempts failed.
pub const RETRY_DELAY_MS_MAX: u64 = 5_000;

/// How long to wait after `failed_attempts` failures: uniform in (0, min(max, base × 2^(n-1))].
pub fn retry_delay(failed_attempts: u32) -> Duration {
    let exponent = failed_attempts.saturating_sub(1).min(20);
    let ceiling = RETRY_DELAY_MS_BASE
        .saturating_mul(1 << exponent)
        .min(RETRY_DELAY_MS_MAX);
    Duration::from_millis(rand::rng().random_range(1..=ceiling))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_under_the_cap() {
        for attempt in 1..30 {
            let delay = retry_delay(attempt);
            let ceiling = (RETRY_DELAY_MS_BASE << (attempt - 1).min(20)).min(RETRY_DELAY_MS_MAX);
            assert!(delay >= Duration::from_millis(1));
            assert!(
                delay <= Duration::from_millis(ceiling),
                "attempt {attempt}: {delay:?}"
            );
        }
    }
}
