//! What the load phase has seen so far, shared by every order task, the progress line and the
//! settle sampler behind one short-held lock.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use uuid::Uuid;

/// The longest latency a histogram holds, in microseconds (one hour); longer values are
/// recorded as one hour rather than dropped.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Histogram precision: three significant digits, 0.1% error on every figure.
pub const SIGNIFICANT_DIGITS: u8 = 3;
/// Mismatch descriptions kept for the report; the counts are always complete.
pub const MISMATCH_EXAMPLES_MAX: usize = 10;

/// An empty latency histogram in microseconds.
pub fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(
        1,
        LATENCY_US_MAX,
        SIGNIFICANT_DIGITS,
    )?)
}

/// Records `latency` in microseconds, at least 1 (the histogram's floor).
pub fn record_latency(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}

/// A way an answer broke the idempotency contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mismatch {
    /// A key's first and only request was answered as a replay: the key was used before.
    FirstAnswerReplayed,
    /// A key's first and only request got 409: nothing else used the key.
    UnexpectedConflict,
    /// A re-send or copy got a fresh answer where a replay was due (no `Idempotent-Replayed`).
    ReplayNotMarked,
    /// A re-send or copy got another order id than the key's first answer.
    DifferentOrder,
    /// A re-send or copy was refused where the stored answer was due.
    ReplayRefused,
    /// More than one concurrent copy created the order.
    CreatedTwice,
    /// Every copy got a replay, none created the order, and none failed.
    NeverCreated,
    /// A 409 came without `Retry-After`.
    ConflictWithoutRetryAfter,
    /// A copy got 409 on every attempt.
    ConflictForever,
}

impl Mismatch {
    pub fn as_str(self) -> &'static str {
        match self {
            Mismatch::FirstAnswerReplayed => "first_answer_replayed",
            Mismatch::UnexpectedConflict => "unexpected_conflict",
            Mismatch::ReplayNotMarked => "replay_not_marked",
            Mismatch::DifferentOrder => "different_order_id",
            Mismatch::ReplayRefused => "replay_refused",
            Mismatch::CreatedTwice => "created_twice",
            Mismatch::NeverCreated => "never_created",
            Mismatch::ConflictWithoutRetryAfter => "conflict_without_retry_after",
            Mismatch::ConflictForever => "conflict_forever",
        }
    }
}

/// An accepted order the settle phase must follow to a terminal status.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub id: Uuid,
    /// When the order was due to be sent, on the client's wall clock.
    pub scheduled_at: DateTime<Utc>,
    pub measured: bool,
    /// The terminal statuses the order may reach: the one its payment leads to, or for an
    /// order the channel cancelled, `cancelled` (or `completed`, should the saga have asked
    /// the carrier to ship before the cancellation reached it).
    pub expected: &'static [&'static str],
}

#[derive(Debug)]
pub struct Tallies {
    /// Intake latency of counted orders, from due time to the creating answer, in µs.
    pub intake: Histogram<u64>,
    /// Intake latency of every order answered since the last progress line.
    pub intake_interval: Histogram<u64>,
    /// Latency of replayed answers (re-sends and duplicate copies), from their own send.
    pub replay: Histogram<u64>,
    /// End-to-end latency of counted orders settled by the sampler during the load.
    pub e2e_sampled: Histogram<u64>,
    pub orders_sent: u64,
    pub orders_answered: u64,
    pub requests_sent: u64,
    pub accepted_total: u64,
    pub accepted_measured: u64,
    pub retry_orders: u64,
    pub duplicate_orders: u64,
    pub cancels_accepted: u64,
    pub cancels_too_late: u64,
    /// Copies beyond the first of duplicated orders: each should end in a replay.
    pub duplicate_copies_extra: u64,
    /// 409 answers to duplicate copies, each followed by a wait of `Retry-After`.
    pub duplicate_conflicts: u64,
    /// Failed requests by status code, or `connect`, `transport` and `timeout`: only those
    /// that were not retried, or whose retries ran out.
    pub errors_by_status: BTreeMap<String, u64>,
    /// Requests sent again with the same key and body after a transient failure, by the
    /// failure's cause (as in `errors_by_status`, and `409` for a key still held by an earlier
    /// attempt).
    pub transient_retries: BTreeMap<String, u64>,
    /// Orders that needed at least one transient retry.
    pub orders_retried: u64,
    pub mismatches: BTreeMap<Mismatch, u64>,
    pub mismatch_examples: Vec<String>,
    /// Orders whose server `created_at` lies outside the client's send-to-answer window: the
    /// clocks disagree and end-to-end figures are off by the skew.
    pub clock_skew_suspect: u64,
    /// Offset of the last answer to a counted order: the end of the throughput window.
    pub last_measured_answer: Option<Duration>,
    /// Accepted orders not handed to the sampler.
    pub placed: Vec<Placed>,
}

impl Tallies {
    pub fn error(&mut self, status: String) {
        *self.errors_by_status.entry(status).or_default() += 1;
    }

    pub fn transient_retry(&mut self, cause: String) {
        *self.transient_retries.entry(cause).or_default() += 1;
    }

    pub fn mismatch(&mut self, kind: Mismatch, detail: String) {
        *self.mismatches.entry(kind).or_default() += 1;
        if self.mismatch_examples.len() < MISMATCH_EXAMPLES_MAX {
            self.mismatch_examples
                .push(format!("{}: {detail}", kind.as_str()));
        }
    }

    pub fn errors_total(&self) -> u64 {
        self.errors_by_status.values().sum::<u64>() + self.mismatches.values().sum::<u64>()
    }
}

#[derive(Debug)]
pub struct Recorder {
    tallies: Mutex<Tallies>,
}

impl Recorder {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            tallies: Mutex::new(Tallies {
                intake: latency_histogram()?,
                intake_interval: latency_histogram()?,
                replay: latency_histogram()?,
                e2e_sampled: latency_histogram()?,
                orders_sent: 0,
                orders_answered: 0,
                requests_sent: 0,
                accepted_total: 0,
                accepted_measured: 0,
                retry_orders: 0,
                duplicate_orders: 0,
                cancels_accepted: 0,
                cancels_too_late: 0,
                duplicate_copies_extra: 0,
                duplicate_conflicts: 0,
                errors_by_status: BTreeMap::new(),
                transient_retries: BTreeMap::new(),
                orders_retried: 0,
                mismatches: BTreeMap::new(),
                mismatch_examples: Vec::new(),
                clock_skew_suspect: 0,
                last_measured_answer: None,
                placed: Vec::new(),
            }),
        })
    }

    /// The tallies, locked. Hold the guard briefly: every order task waits on it. A task that
    /// panicked while holding it left plain counters behind, which are still worth reading.
    pub fn lock(&self) -> MutexGuard<'_, Tallies> {
        self.tallies.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn into_tallies(self) -> Tallies {
        self.tallies
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
