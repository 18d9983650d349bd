//! When each order is due, whether it counts, and when sending stops. Pure: offsets are
//! durations from the run's start, so tests need no clock.
//!
//! In the open loop, order `i` is due at `i / rate` whatever happened before it, and its
//! latency is measured from that time. A server that stalls therefore shows its stall in the
//! latency of every order that arrived during it, instead of silently slowing the sender down
//! (coordinated omission). In the closed loop an order is due when a slot frees up.

use std::time::Duration;

const NANOS_PER_SECOND: f64 = 1_000_000_000.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// A fixed arrival rate, whatever the server's speed.
    Open { rate_per_s: f64 },
    /// As fast as the in-flight limit allows: each answer makes room for the next order.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Send for this long after the warm-up.
    Duration(Duration),
    /// Send this many orders after the warm-up.
    Orders(u64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub pacing: Pacing,
    /// Orders due before this offset are placed and settled but left out of the figures.
    pub warmup: Duration,
    pub stop: Stop,
}

impl Schedule {
    pub fn new(pacing: Pacing, warmup: Duration, stop: Stop) -> Self {
        if let Pacing::Open { rate_per_s } = pacing {
            assert!(rate_per_s.is_finite() && rate_per_s > 0.0);
        }
        Self {
            pacing,
            warmup,
            stop,
        }
    }

    /// The offset at which open-loop order `index` is due: `index / rate`, rounded to the
    /// nanosecond. Not cumulative, so rounding never drifts.
    pub fn open_offset(rate_per_s: f64, index: u64) -> Duration {
        // Indexes stay far below 2^53, where f64 is exact.
        let nanos = (index as f64 * NANOS_PER_SECOND / rate_per_s).round();
        Duration::from_nanos(nanos as u64)
    }

    /// Whether an order due at `offset` counts in the figures.
    pub fn measured(&self, offset: Duration) -> bool {
        offset >= self.warmup
    }

    /// Whether an order due at `offset` is still sent, when `measured_started` counted orders
    /// were sent before it.
    pub fn admits(&self, offset: Duration, measured_started: u64) -> bool {
        match self.stop {
            Stop::Duration(duration) => offset < self.warmup.saturating_add(duration),
            Stop::Orders(count) => !self.measured(offset) || measured_started < count,
        }
    }

    /// How many orders the run will send, when that is known before it starts (open loop).
    pub fn expected_orders(&self) -> Option<u64> {
        let Pacing::Open { rate_per_s } = self.pacing else {
            return None;
        };
        let in_window = |window: Duration| (window.as_secs_f64() * rate_per_s).ceil() as u64;
        Some(match self.stop {
            Stop::Duration(duration) => in_window(self.warmup.saturating_add(duration)),
            Stop::Orders(count) => in_window(self.warmup).saturating_add(count),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// Every offset the open loop would send, in order.
    fn open_offsets(schedule: &Schedule) -> Vec<Duration> {
        let Pacing::Open { rate_per_s } = schedule.pacing else {
            panic!("open loop only");
        };
        let mut offsets = Vec::new();
        let mut measured = 0;
        for index in 0..1_000_000 {
            let offset = Schedule::open_offset(rate_per_s, index);
            if !schedule.admits(offset, measured) {
                break;
            }
            measured += u64::from(schedule.measured(offset));
            offsets.push(offset);
        }
        offsets
    }

    #[test]
    fn open_loop_orders_are_due_at_index_over_rate() {
        assert_eq!(Schedule::open_offset(100.0, 0), Duration::ZERO);
        assert_eq!(Schedule::open_offset(100.0, 3), ms(30));
        assert_eq!(
            Schedule::open_offset(3.0, 1),
            Duration::from_nanos(333_333_333)
        );
        assert_eq!(Schedule::open_offset(3.0, 3), Duration::from_secs(1));
        assert_eq!(Schedule::open_offset(0.5, 2), Duration::from_secs(4));
        // No drift: the millionth order at 1000/s is due at exactly 1000 s.
        assert_eq!(
            Schedule::open_offset(1_000.0, 1_000_000),
            Duration::from_secs(1_000)
        );
    }

    #[test]
    fn a_duration_run_sends_rate_times_warmup_plus_duration() {
        let open = Pacing::Open { rate_per_s: 10.0 };
        let schedule = Schedule::new(open, ms(500), Stop::Duration(ms(2_000)));
        let offsets = open_offsets(&schedule);
        assert_eq!(offsets.len(), 25);
        assert_eq!(offsets.last(), Some(&ms(2_400)));
        assert_eq!(
            offsets.iter().filter(|o| schedule.measured(**o)).count(),
            20
        );
        assert_eq!(schedule.expected_orders(), Some(25));
    }

    #[test]
    fn a_count_run_sends_that_many_after_the_warmup() {
        let open = Pacing::Open { rate_per_s: 4.0 };
        let schedule = Schedule::new(open, ms(1_000), Stop::Orders(7));
        let offsets = open_offsets(&schedule);
        assert_eq!(offsets.len(), 11, "4 warm-up orders and 7 counted");
        assert!(!schedule.measured(offsets[3]));
        assert!(schedule.measured(offsets[4]));
        assert_eq!(schedule.expected_orders(), Some(11));
    }

    #[test]
    fn the_closed_loop_stops_by_time_or_count_only() {
        let by_count = Schedule::new(Pacing::Closed, Duration::ZERO, Stop::Orders(2));
        assert!(by_count.admits(ms(9_999), 1));
        assert!(!by_count.admits(ms(1), 2));
        assert_eq!(by_count.expected_orders(), None);
        let by_time = Schedule::new(Pacing::Closed, ms(100), Stop::Duration(ms(100)));
        assert!(by_time.admits(ms(199), 1_000));
        assert!(!by_time.admits(ms(200), 0));
    }
}
