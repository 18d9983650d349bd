//! The clock is injected so that decisions and tests never read the wall clock themselves, and
//! so are the identifiers: an order's, an event's, an audit record's id is minted by the clock
//! (see [`Clock::fresh_id`]), as time-ordered UUIDv7 are a timestamp and random bits. A clock
//! that is [`Seeded`] mints the same ids on every run, so a seeded run can be replayed.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, SubsecRound, Utc};
use uuid::Uuid;

/// Source of the current time and of fresh identifiers.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;

    /// A fresh identifier, ordered by the time it was minted.
    fn fresh_id(&self) -> Uuid {
        Uuid::now_v7()
    }
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    /// Truncated to microseconds, the precision both stores keep, so that a time returned in a
    /// response equals the time read back later.
    fn now(&self) -> DateTime<Utc> {
        Utc::now().trunc_subsecs(6)
    }
}

/// A clock whose identifiers follow from a seed: UUIDv7 whose timestamp is the inner clock's
/// time and whose random bits are the seed and a counter, so that two runs with one seed (and
/// the same times) mint the same ids in the same order.
#[derive(Debug)]
pub struct Seeded<C> {
    clock: C,
    seed: u64,
    minted: AtomicU64,
}

impl<C: Clock> Seeded<C> {
    pub fn new(clock: C, seed: u64) -> Self {
        Self {
            clock,
            seed,
            minted: AtomicU64::new(0),
        }
    }
}

impl<C: Clock> Clock for Seeded<C> {
    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn fresh_id(&self) -> Uuid {
        let millis = u64::try_from(self.clock.now().timestamp_millis()).unwrap_or(0);
        let count = self.minted.fetch_add(1, Ordering::Relaxed);
        // 10 bytes of "random" bits after the timestamp: the counter first, so that ids minted
        // in one millisecond still rise, then the seed.
        let mut random = [0_u8; 10];
        random[..6].copy_from_slice(&count.to_be_bytes()[2..]);
        random[6..].copy_from_slice(&self.seed.to_be_bytes()[4..]);
        uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(DateTime<Utc>);

    impl Clock for Fixed {
        fn now(&self) -> DateTime<Utc> {
            self.0
        }
    }

    #[test]
    fn a_seeded_clock_mints_the_same_rising_ids_on_every_run() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).expect("a time");
        let run = |seed| {
            let clock = Seeded::new(Fixed(at), seed);
            (0..5).map(|_| clock.fresh_id()).collect::<Vec<_>>()
        };
        let first = run(7);
        assert_eq!(first, run(7), "one seed, one sequence");
        assert_ne!(first, run(8), "another seed, other ids");
        assert!(first.windows(2).all(|w| w[0] < w[1]), "ids rise: {first:?}");
        for id in &first {
            assert_eq!(id.get_version_num(), 7);
            let (seconds, _) = id.get_timestamp().expect("a v7 timestamp").to_unix();
            assert_eq!(seconds, 1_800_000_000, "the id carries the clock's time");
        }
    }
}
