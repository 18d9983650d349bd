//! The figures of a run: built once from the tallies, the settle phase and the lag scrapes,
//! serialized as JSON for `--json`; [`crate::summary`] displays them.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use uuid::Uuid;

use crate::args::Settings;
use crate::metrics_scrape::{GaugeTrack, LagTracker};
use crate::record::{Tallies, latency_histogram, record_latency};
use crate::schedule::Pacing;
use crate::settle::SettleRun;

/// Unsettled order ids named in the report; the count is always complete.
pub const UNSETTLED_EXAMPLES_MAX: usize = 10;

const MICROS_PER_MS: f64 = 1_000.0;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run: RunInfo,
    pub intake: IntakeReport,
    pub errors: ErrorReport,
    pub settle: SettleReport,
    pub lag: LagReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub url: String,
    /// Prefix of this run's idempotency keys and SKUs.
    pub run_tag: String,
    /// `open` (fixed arrival rate) or `closed` (as fast as the concurrency allows).
    pub mode: &'static str,
    pub rate_per_s: Option<f64>,
    pub concurrency: u32,
    pub seed: u64,
    /// How many SKUs orders were spread over.
    pub skus: usize,
    pub warmup_s: f64,
    /// From the end of the warm-up to the last counted answer: the throughput window.
    pub measured_s: f64,
    pub retry_share: f64,
    pub duplicate_share: f64,
    pub decline_share: f64,
    pub capture_failure_share: f64,
    pub cancel_share: f64,
    /// Most retries of one request after a transient failure; 0 when failures are errors.
    pub transient_retries_max: u32,
}

/// Latency percentiles in milliseconds, from an HDR histogram (0.1% precision).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl LatencySummary {
    /// From a histogram of microseconds.
    pub fn from_histogram(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let at = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / MICROS_PER_MS;
        Self {
            count: histogram.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: histogram.max() as f64 / MICROS_PER_MS,
            mean: histogram.mean() / MICROS_PER_MS,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct IntakeReport {
    pub orders_sent: u64,
    /// Orders the server created, warm-up included.
    pub accepted: u64,
    /// Orders created after the warm-up: the count behind the figures.
    pub accepted_measured: u64,
    /// Every `POST /v1/orders`, re-sends and duplicate copies included.
    pub requests_sent: u64,
    /// Counted orders accepted per second of the measured window.
    pub orders_per_s: f64,
    /// From each order's due time to the answer that created it.
    pub latency_ms: LatencySummary,
    /// Of answers replayed from the idempotency record, from their own send.
    pub replay_latency_ms: LatencySummary,
    pub retry_orders: u64,
    pub duplicate_orders: u64,
    /// Orders the channel asked to cancel once created: accepted (202), and too late (409,
    /// the order had been handed to the carrier or had ended).
    pub cancels_accepted: u64,
    pub cancels_too_late: u64,
    /// Copies beyond the first of duplicated orders; each should be a replay.
    pub duplicate_copies_extra: u64,
    /// 409 answers to duplicate copies (same key in flight), each retried after `Retry-After`.
    pub duplicate_conflicts: u64,
    /// Orders whose server `created_at` lies outside the client's send-to-answer window: the
    /// two clocks disagree and end-to-end figures carry the skew.
    pub clock_skew_suspect: u64,
    /// Requests sent again with the same key and body after a transient failure.
    pub transient_retries: u64,
    /// The same, by the failure's cause: a status, `connect`, `transport` or `timeout`, and
    /// `409` for a key still held by an earlier attempt.
    pub transient_retries_by_cause: BTreeMap<String, u64>,
    /// Orders that needed at least one transient retry.
    pub orders_retried: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorReport {
    /// Failed requests plus mismatches.
    pub total: u64,
    /// Failed requests by status, or `transport` and `timeout`.
    pub by_status: BTreeMap<String, u64>,
    /// Answers that broke the idempotency contract, by kind.
    pub mismatches: BTreeMap<String, u64>,
    pub mismatch_examples: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SettleReport {
    /// Accepted orders followed to a terminal status.
    pub tracked: u64,
    pub settled: u64,
    /// Orders not terminal when the settle timeout passed.
    pub unsettled: u64,
    pub unsettled_examples: Vec<Uuid>,
    /// Settled orders by terminal status.
    pub by_status: BTreeMap<String, u64>,
    /// Settled orders whose status is not the one their price steered to, as
    /// `expected->got`.
    pub unexpected_outcomes: BTreeMap<String, u64>,
    /// From each counted order's due time to its terminal event.
    pub e2e_ms: LatencySummary,
    /// Counted orders terminal per second, from the first counted order's due time to the
    /// last terminal event.
    pub e2e_orders_per_s: f64,
    pub polls: u64,
    pub poll_errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GaugeSummary {
    /// False while the server has never exposed the gauge.
    pub available: bool,
    pub max: Option<f64>,
    #[serde(rename = "final")]
    pub last: Option<f64>,
}

impl GaugeSummary {
    fn from_track(track: Option<&GaugeTrack>) -> Self {
        Self {
            available: track.is_some(),
            max: track.map(|t| t.max),
            last: track.map(|t| t.last),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LagReport {
    /// `tally_relay_lag_events`: outbox rows not yet in the log.
    pub relay: GaugeSummary,
    /// Whether `tally_consumer_lag_events` was ever exposed.
    pub consumers_available: bool,
    /// `tally_consumer_lag_events` per group.
    pub consumers: BTreeMap<String, GaugeSummary>,
    pub scrapes_ok: u64,
    pub scrapes_failed: u64,
    pub last_scrape_error: Option<String>,
}

/// The settle figures of `settle`'s orders. Pure, so tests can feed it made-up orders.
pub fn settle_report(settle: &SettleRun) -> anyhow::Result<SettleReport> {
    let mut e2e = latency_histogram()?;
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut unexpected_outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for settled in &settle.settled {
        *by_status.entry(settled.status.clone()).or_default() += 1;
        if !settled.placed.expected.contains(&settled.status.as_str()) {
            let outcome = format!("{}->{}", settled.placed.expected.join("|"), settled.status);
            *unexpected_outcomes.entry(outcome).or_default() += 1;
        }
        if settled.placed.measured {
            record_latency(&mut e2e, settled.end_to_end());
        }
    }
    let measured = settle.settled.iter().filter(|s| s.placed.measured);
    let first_due = measured.clone().map(|s| s.placed.scheduled_at).min();
    let last_terminal = measured.map(|s| s.terminal_at).max();
    let e2e_orders_per_s = match (first_due, last_terminal) {
        (Some(first), Some(last)) => {
            per_second(e2e.len(), (last - first).to_std().unwrap_or(Duration::ZERO))
        }
        _ => 0.0,
    };
    Ok(SettleReport {
        tracked: (settle.settled.len() + settle.pending.len()) as u64,
        settled: settle.settled.len() as u64,
        unsettled: settle.pending.len() as u64,
        unsettled_examples: settle
            .pending
            .iter()
            .take(UNSETTLED_EXAMPLES_MAX)
            .map(|p| p.id)
            .collect(),
        by_status,
        unexpected_outcomes,
        e2e_ms: LatencySummary::from_histogram(&e2e),
        e2e_orders_per_s,
        polls: settle.polls,
        poll_errors: settle.poll_errors,
    })
}

fn per_second(count: u64, window: Duration) -> f64 {
    if window.is_zero() {
        return 0.0;
    }
    count as f64 / window.as_secs_f64()
}

/// Everything a report is made from.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub settings: &'a Settings,
    pub run_tag: &'a str,
    pub tallies: &'a Tallies,
    pub settle: &'a SettleRun,
    pub lag: &'a LagTracker,
}

impl Report {
    /// Whether the run saw no failed request, no mismatch, no unsettled order and no order
    /// ending otherwise than its price steered it: what a CI gate on `tally bench` checks.
    pub fn is_clean(&self) -> bool {
        self.errors.total == 0
            && self.settle.unsettled == 0
            && self.settle.unexpected_outcomes.is_empty()
    }

    pub fn build(inputs: &Inputs<'_>) -> anyhow::Result<Self> {
        let Inputs {
            settings,
            run_tag,
            tallies,
            settle,
            lag,
        } = inputs;
        let warmup = settings.schedule.warmup;
        let measured = tallies
            .last_measured_answer
            .map_or(Duration::ZERO, |last| last.saturating_sub(warmup));
        let (mode, rate_per_s) = match settings.schedule.pacing {
            Pacing::Open { rate_per_s } => ("open", Some(rate_per_s)),
            Pacing::Closed => ("closed", None),
        };
        Ok(Report {
            run: RunInfo {
                url: settings.base_url.clone(),
                run_tag: (*run_tag).to_owned(),
                mode,
                rate_per_s,
                concurrency: settings.concurrency,
                seed: settings.seed,
                skus: settings.skus,
                warmup_s: warmup.as_secs_f64(),
                measured_s: measured.as_secs_f64(),
                retry_share: settings.shares.retry,
                duplicate_share: settings.shares.duplicate,
                decline_share: settings.shares.decline,
                capture_failure_share: settings.shares.capture_failure,
                cancel_share: settings.shares.cancel,
                transient_retries_max: settings.transient_retries,
            },
            intake: IntakeReport {
                orders_sent: tallies.orders_sent,
                accepted: tallies.accepted_total,
                accepted_measured: tallies.accepted_measured,
                requests_sent: tallies.requests_sent,
                orders_per_s: per_second(tallies.accepted_measured, measured),
                latency_ms: LatencySummary::from_histogram(&tallies.intake),
                replay_latency_ms: LatencySummary::from_histogram(&tallies.replay),
                retry_orders: tallies.retry_orders,
                duplicate_orders: tallies.duplicate_orders,
                cancels_accepted: tallies.cancels_accepted,
                cancels_too_late: tallies.cancels_too_late,
                duplicate_copies_extra: tallies.duplicate_copies_extra,
                duplicate_conflicts: tallies.duplicate_conflicts,
                clock_skew_suspect: tallies.clock_skew_suspect,
                transient_retries: tallies.transient_retries.values().sum(),
                transient_retries_by_cause: tallies.transient_retries.clone(),
                orders_retried: tallies.orders_retried,
            },
            errors: ErrorReport {
                total: tallies.errors_total(),
                by_status: tallies.errors_by_status.clone(),
                mismatches: tallies
                    .mismatches
                    .iter()
                    .map(|(kind, count)| (kind.as_str().to_owned(), *count))
                    .collect(),
                mismatch_examples: tallies.mismatch_examples.clone(),
            },
            settle: settle_report(settle)?,
            lag: LagReport {
                relay: GaugeSummary::from_track(lag.relay.as_ref()),
                consumers_available: !lag.consumers.is_empty(),
                consumers: lag
                    .consumers
                    .iter()
                    .map(|(group, track)| (group.clone(), GaugeSummary::from_track(Some(track))))
                    .collect(),
                scrapes_ok: lag.scrapes_ok,
                scrapes_failed: lag.scrapes_failed,
                last_scrape_error: lag.last_error.clone(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::record::Placed;
    use crate::settle::Settled;

    #[test]
    fn percentiles_come_from_the_histogram_in_milliseconds() {
        let mut histogram = latency_histogram().expect("histogram");
        for millis in 1..=1_000 {
            record_latency(&mut histogram, Duration::from_millis(millis));
        }
        let summary = LatencySummary::from_histogram(&histogram);
        assert_eq!(summary.count, 1_000);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(close(summary.p50, 500.0), "{summary:?}");
        assert!(close(summary.p90, 900.0), "{summary:?}");
        assert!(close(summary.p99, 990.0), "{summary:?}");
        assert!(close(summary.p999, 999.0), "{summary:?}");
        assert!(close(summary.max, 1_000.0), "{summary:?}");
        assert!(close(summary.mean, 500.5), "{summary:?}");
        let empty = latency_histogram().expect("histogram");
        assert_eq!(
            LatencySummary::from_histogram(&empty),
            LatencySummary::default()
        );
    }

    fn at(millis: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::milliseconds(millis)
    }

    fn settled(due_ms: i64, terminal_ms: i64, measured: bool, status: &str) -> Settled {
        Settled {
            placed: Placed {
                id: Uuid::now_v7(),
                scheduled_at: at(due_ms),
                measured,
                expected: &["completed"],
            },
            status: status.to_owned(),
            terminal_at: at(terminal_ms),
        }
    }

    #[test]
    fn settle_figures_count_only_measured_orders_from_first_due_to_last_terminal() {
        let run = SettleRun {
            settled: vec![
                settled(0, 5_000, false, "completed"),
                settled(1_000, 1_200, true, "completed"),
                settled(2_000, 2_400, true, "cancelled"),
                settled(3_000, 5_000, true, "completed"),
            ],
            pending: vec![settled(4_000, 0, true, "placed").placed],
            polls: 9,
            poll_errors: 1,
        };
        let report = settle_report(&run).expect("report");
        assert_eq!(
            (report.tracked, report.settled, report.unsettled),
            (5, 4, 1)
        );
        assert_eq!(report.e2e_ms.count, 3);
        assert!((report.e2e_ms.max - 2_000.0).abs() < 2.0);
        assert!((report.e2e_ms.p50 - 400.0).abs() < 1.0);
        // Three counted orders from 1 s to 5 s.
        assert!((report.e2e_orders_per_s - 0.75).abs() < 1e-9);
        assert_eq!(report.by_status["completed"], 3);
        assert_eq!(report.unexpected_outcomes["completed->cancelled"], 1);
        assert_eq!(report.unsettled_examples.len(), 1);
    }

    #[test]
    fn clock_skew_never_makes_a_negative_latency() {
        let early = settled(1_000, 900, true, "completed");
        assert_eq!(early.end_to_end(), Duration::ZERO);
    }
}
