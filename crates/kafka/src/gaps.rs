//! Noticing records that a fetch skipped or repeated, so that a consumer group applies every
//! offset of a partition in order.
//!
//! Tally's topics are never compacted and its producer is not transactional, so their offsets
//! run without gaps: a record whose offset is past the one expected next means the broker
//! answered a fetch without a record it had given an offset to. tansu 0.6 does so: its storage
//! raises a partition's high watermark before it writes the record, so a fetch that arrives
//! between the two, while another producer's later record is already written, returns the later
//! record alone, and the consumer moves past the earlier one for good. A skipped event would
//! never take effect (a notification never sent, an order never shipped).
//!
//! So each assigned partition keeps the offset it expects next. A record past it is dropped and
//! the partition is read again from the expected offset; once the record is written, the re-read
//! returns it (tansu writes it within milliseconds). A gap that outlasts [`GAP_ACCEPTED_AFTER`]
//! and [`GAP_REREADS_MIN`] re-reads is one the broker means (a topic an operator made compacted,
//! records deleted by retention before the group read them) and the partition goes on past it,
//! logging an error that names the offsets, since their events may never take effect: replay
//! the group over them once they are found. A record before the expected offset (a repeated
//! fetch) was handed on already and is dropped.

use std::ops::Range;
use std::time::{Duration, Instant};

/// How long a gap is read again before it is taken as one the broker means: far longer than
/// tansu takes to write a record whose offset it gave out, even on a starved machine.
pub const GAP_ACCEPTED_AFTER: Duration = Duration::from_secs(30);
/// Re-reads of a gap, at least, before it is taken as one the broker means.
pub const GAP_REREADS_MIN: u32 = 5;

/// What to do with a record that arrived for a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// The record expected next (or the first of the assignment): apply it.
    Next,
    /// A record before the expected one, handed on already: drop it.
    Repeat,
    /// Records before this one are missing: drop it and read the partition again from `from`.
    Gap { from: i64 },
    /// The records in `missing` stayed missing through every re-read: apply this one and go on.
    GapAccepted { missing: Range<i64> },
}

/// Where the records of one assigned partition stand.
#[derive(Debug, Default, Clone)]
pub struct Sequence {
    /// The offset of the record expected next.
    next: Option<i64>,
    /// Whether a record of this assignment was handed on: until then, `next` (the group's
    /// committed offset) only bounds the first record from above, since the broker may start
    /// the assignment earlier than the offset read when it began.
    started: bool,
    gap: Option<Gap>,
}

/// Records missing before the one expected next: how often they were read again, and since when.
#[derive(Debug, Clone)]
struct Gap {
    rereads: u32,
    since: Instant,
}

impl Sequence {
    /// A partition read from `start` (the group's committed offset, or for a group that
    /// committed none the partition's first offset), when known.
    pub fn starting_at(start: Option<i64>) -> Self {
        Self {
            next: start,
            ..Self::default()
        }
    }

    /// Takes the record at `offset` that arrived at `now`.
    pub fn arrive(&mut self, offset: i64, now: Instant) -> Arrival {
        let Some(next) = self.next else {
            return self.hand_on(offset);
        };
        if offset == next || (!self.started && offset < next) {
            return self.hand_on(offset);
        }
        if offset < next {
            return Arrival::Repeat;
        }
        // A gap is always the one at `next`: handing a record on ends it.
        let gap = self.gap.get_or_insert(Gap {
            rereads: 0,
            since: now,
        });
        gap.rereads += 1;
        if gap.rereads > GAP_REREADS_MIN && now.duration_since(gap.since) >= GAP_ACCEPTED_AFTER {
            self.hand_on(offset);
            return Arrival::GapAccepted {
                missing: next..offset,
            };
        }
        Arrival::Gap { from: next }
    }

    fn hand_on(&mut self, offset: i64) -> Arrival {
        self.next = Some(offset + 1);
        self.started = true;
        self.gap = None;
        Arrival::Next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_order_are_applied() {
        let now = Instant::now();
        let mut sequence = Sequence::starting_at(Some(10));
        for offset in 10..15 {
            assert_eq!(sequence.arrive(offset, now), Arrival::Next);
        }
    }

    #[test]
    fn a_skipped_record_is_read_again_until_it_arrives() {
        let now = Instant::now();
        let mut sequence = Sequence::starting_at(Some(368));
        assert_eq!(sequence.arrive(368, now), Arrival::Next);
        assert_eq!(sequence.arrive(369, now), Arrival::Next);
        // 370 not yet written when the fetch was answered: 371 came first.
        assert_eq!(sequence.arrive(371, now), Arrival::Gap { from: 370 });
        assert_eq!(sequence.arrive(371, now), Arrival::Gap { from: 370 });
        // The re-read brings it.
        assert_eq!(sequence.arrive(370, now), Arrival::Next);
        assert_eq!(sequence.arrive(371, now), Arrival::Next);
        assert_eq!(sequence.arrive(371, now), Arrival::Repeat);
    }

    #[test]
    fn a_gap_before_the_first_record_is_noticed() {
        let now = Instant::now();
        let mut sequence = Sequence::starting_at(Some(40));
        assert_eq!(sequence.arrive(41, now), Arrival::Gap { from: 40 });
        assert_eq!(sequence.arrive(40, now), Arrival::Next);
    }

    #[test]
    fn an_assignment_may_start_before_the_committed_offset_read() {
        let now = Instant::now();
        let mut sequence = Sequence::starting_at(Some(40));
        assert_eq!(sequence.arrive(38, now), Arrival::Next);
        assert_eq!(sequence.arrive(39, now), Arrival::Next);
        assert_eq!(sequence.arrive(38, now), Arrival::Repeat);
    }

    #[test]
    fn without_a_committed_offset_the_first_record_sets_the_start() {
        let now = Instant::now();
        let mut sequence = Sequence::starting_at(None);
        assert_eq!(sequence.arrive(7, now), Arrival::Next);
        assert_eq!(sequence.arrive(9, now), Arrival::Gap { from: 8 });
    }

    #[test]
    fn a_gap_that_lasts_is_accepted_only_after_enough_time_and_rereads() {
        let start = Instant::now();
        let mut sequence = Sequence::starting_at(Some(0));
        assert_eq!(sequence.arrive(0, start), Arrival::Next);
        assert_eq!(sequence.arrive(5, start), Arrival::Gap { from: 1 });
        // Many re-reads in a moment are not enough…
        for _ in 0..GAP_REREADS_MIN {
            assert_eq!(sequence.arrive(5, start), Arrival::Gap { from: 1 });
        }
        // …nor is time alone with one re-read.
        let mut patient = Sequence::starting_at(Some(1));
        let later = start + GAP_ACCEPTED_AFTER;
        assert_eq!(patient.arrive(5, start), Arrival::Gap { from: 1 });
        assert_eq!(patient.arrive(5, later), Arrival::Gap { from: 1 });
        // Both together accept it, and the partition goes on from there.
        assert_eq!(
            sequence.arrive(5, later),
            Arrival::GapAccepted { missing: 1..5 }
        );
        assert_eq!(sequence.arrive(6, later), Arrival::Next);
        assert_eq!(sequence.arrive(4, later), Arrival::Repeat);
    }

    #[test]
    fn a_new_gap_starts_its_own_count() {
        let start = Instant::now();
        let later = start + GAP_ACCEPTED_AFTER;
        let mut sequence = Sequence::starting_at(Some(0));
        for _ in 0..=GAP_REREADS_MIN {
            assert_eq!(sequence.arrive(3, start), Arrival::Gap { from: 0 });
        }
        assert_eq!(sequence.arrive(0, later), Arrival::Next);
        // The gap at 1 is new: its time counts from now.
        assert_eq!(sequence.arrive(3, later), Arrival::Gap { from: 1 });
    }
}
