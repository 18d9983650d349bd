//! Noticing partitions of a consumer group that no live member reads.
//!
//! A Kafka broker gives a dead member's partitions to the others once its session expires. A
//! broker can fail to: tansu 0.6, when a member is killed and a new one joins before the dead
//! one's session has expired, assigns partitions to the dead member, and when it later drops the
//! dead member it tells one live member to rejoin but answers that rejoin with the old
//! assignment. Those partitions then stay unread for good, and their events never take effect.
//!
//! So every worker watches the partitions it does not own: one whose committed offset stays
//! behind its end, without moving, for [`STALL_AFTER`] has no live reader, and the worker leaves
//! the group and joins it again. A leave starts a new generation on any broker, in which the
//! members that are alive share every partition. A false alarm (an owner busy on one batch for
//! that long) costs one rebalance; the inbox makes the re-delivery harmless.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a partition owned by another member may lag without its committed offset moving
/// before this worker makes the group rebalance: several session timeouts, so that a broker
/// that works has long since moved the partition.
pub const STALL_AFTER: Duration = Duration::from_secs(30);
/// How often a worker reads the group's committed offsets and the partitions' ends.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// A topic and partition.
pub type PartitionKey = (String, i32);

/// What one check read of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub partition: PartitionKey,
    /// The group's committed offset; `None` when the group has committed none for it.
    pub committed: Option<i64>,
    /// The partition's first and next offsets (its low and high watermarks).
    pub low: i64,
    pub high: i64,
    /// Whether this member owns the partition now.
    pub owned: bool,
}

impl Reading {
    /// Records written and not yet committed by the group.
    fn lag(&self) -> i64 {
        self.high - self.committed.unwrap_or(self.low).max(self.low)
    }
}

/// Since when each lagging partition has kept the same committed offset.
#[derive(Debug, Default)]
pub struct StallWatch {
    since: HashMap<PartitionKey, (Option<i64>, Instant)>,
}

impl StallWatch {
    /// Takes one check's readings; returns the partitions that another member owns (or no one
    /// does) and that have lagged without progress for [`STALL_AFTER`] or more, in order.
    pub fn observe(&mut self, now: Instant, readings: &[Reading]) -> Vec<PartitionKey> {
        let mut stalled = Vec::new();
        let mut since = HashMap::with_capacity(readings.len());
        for reading in readings {
            if reading.owned || reading.lag() <= 0 {
                continue;
            }
            let first_seen = match self.since.get(&reading.partition) {
                Some((committed, at)) if *committed == reading.committed => *at,
                _ => now,
            };
            if now.duration_since(first_seen) >= STALL_AFTER {
                stalled.push(reading.partition.clone());
            }
            since.insert(reading.partition.clone(), (reading.committed, first_seen));
        }
        self.since = since;
        stalled.sort_unstable();
        stalled
    }

    /// Forgets what was seen: after a rejoin every partition gets a new owner and a new chance.
    pub fn reset(&mut self) {
        self.since.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(partition: i32, committed: Option<i64>, high: i64, owned: bool) -> Reading {
        Reading {
            partition: ("tally.order".to_owned(), partition),
            committed,
            low: 0,
            high,
            owned,
        }
    }

    #[test]
    fn a_partition_lagging_without_progress_is_stalled_after_the_threshold() {
        let mut watch = StallWatch::default();
        let start = Instant::now();
        let lagging = [reading(3, Some(10), 25, false)];
        assert!(watch.observe(start, &lagging).is_empty());
        assert!(
            watch
                .observe(start + STALL_AFTER - Duration::from_secs(1), &lagging)
                .is_empty()
        );
        assert_eq!(
            watch.observe(start + STALL_AFTER, &lagging),
            vec![("tally.order".to_owned(), 3)]
        );
    }

    #[test]
    fn progress_a_caught_up_partition_or_owning_it_clears_the_clock() {
        let mut watch = StallWatch::default();
        let start = Instant::now();
        watch.observe(start, &[reading(1, Some(10), 25, false)]);
        // The committed offset moved: its owner reads it.
        let later = start + STALL_AFTER;
        assert!(
            watch
                .observe(later, &[reading(1, Some(11), 25, false)])
                .is_empty()
        );
        assert!(
            watch
                .observe(
                    later + STALL_AFTER - Duration::from_secs(1),
                    &[reading(1, Some(11), 25, false)]
                )
                .is_empty()
        );
        // Caught up, then lagging again: the clock starts again.
        let mut watch = StallWatch::default();
        watch.observe(start, &[reading(2, Some(25), 25, false)]);
        watch.observe(later, &[reading(2, Some(25), 30, false)]);
        assert!(
            watch
                .observe(
                    later + Duration::from_secs(1),
                    &[reading(2, Some(25), 30, false)]
                )
                .is_empty()
        );
        // A partition this member owns is its own business, however long it lags.
        let mut watch = StallWatch::default();
        watch.observe(start, &[reading(4, Some(0), 9, true)]);
        assert!(
            watch
                .observe(later, &[reading(4, Some(0), 9, true)])
                .is_empty()
        );
    }

    #[test]
    fn a_partition_the_group_never_committed_lags_from_its_first_offset() {
        let mut watch = StallWatch::default();
        let start = Instant::now();
        let never_read = Reading {
            partition: ("tally.order".to_owned(), 5),
            committed: None,
            low: 4,
            high: 7,
            owned: false,
        };
        watch.observe(start, std::slice::from_ref(&never_read));
        assert_eq!(
            watch.observe(start + STALL_AFTER, std::slice::from_ref(&never_read)),
            vec![("tally.order".to_owned(), 5)]
        );
        let emptied = Reading {
            high: 4,
            ..never_read
        };
        let mut watch = StallWatch::default();
        watch.observe(start, std::slice::from_ref(&emptied));
        assert!(
            watch
                .observe(start + STALL_AFTER, std::slice::from_ref(&emptied))
                .is_empty()
        );
    }

    #[test]
    fn reset_forgets_every_clock() {
        let mut watch = StallWatch::default();
        let start = Instant::now();
        let lagging = [reading(0, Some(1), 2, false)];
        watch.observe(start, &lagging);
        watch.reset();
        assert!(watch.observe(start + STALL_AFTER, &lagging).is_empty());
    }
}
