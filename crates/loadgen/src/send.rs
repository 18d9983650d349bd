//! Sending one order as its plan says (once, re-sent after its answer, or by concurrent
//! duplicates), checking every answer against the idempotency contract, and recording it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::client::{Answer, Api, PlacedOrder};
use crate::mix::{Catalog, Intake, Mix};
use crate::record::{Mismatch, Placed, Recorder, Tallies, record_latency};
use crate::schedule::Schedule;

/// How often one duplicate copy is sent before giving up on 409s. With the server's one
/// second `Retry-After` this bounds a copy to about [`RETRY_AFTER_MAX`] times this.
pub const DUPLICATE_ATTEMPTS_MAX: u32 = 20;
/// The longest `Retry-After` honoured; a longer one is shortened to this.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(5);
/// The wait after a 409 that gave no `Retry-After`.
pub const RETRY_AFTER_MISSING: Duration = Duration::from_millis(100);
/// How far the server's `created_at` may lie outside the client's send-to-answer window before
/// the clocks are suspected to disagree: timer rounding and clock slewing over a long run.
pub const CLOCK_SKEW_TOLERANCE: Duration = Duration::from_millis(50);

/// The run's start on both clocks: `Instant` for latencies, wall time to compare with the
/// server's event times.
#[derive(Debug, Clone, Copy)]
pub struct RunClock {
    pub start: Instant,
    pub start_wall: DateTime<Utc>,
}

impl RunClock {
    pub fn now() -> Self {
        Self {
            start: Instant::now(),
            start_wall: Utc::now(),
        }
    }

    /// The wall time of `at`, as measured by the monotonic clock since the start.
    pub fn wall(&self, at: Instant) -> DateTime<Utc> {
        let since = at.saturating_duration_since(self.start);
        self.start_wall + chrono::Duration::from_std(since).unwrap_or_default()
    }
}

/// Everything an order task needs.
#[derive(Debug)]
pub struct Run {
    pub api: Api,
    pub catalog: Catalog,
    pub mix: Mix,
    pub schedule: Schedule,
    pub recorder: Arc<Recorder>,
    /// Unique per run: prefixes idempotency keys and SKUs, so that runs never collide.
    pub run_tag: String,
    pub clock: RunClock,
    /// Where sampled orders go to be followed while the load runs.
    pub sampler: Option<mpsc::UnboundedSender<Placed>>,
}

/// The answer that created the order, with its timing.
#[derive(Debug)]
struct Created {
    order: PlacedOrder,
    sent_at: Instant,
    answered_at: Instant,
}

/// One request's answer and its timing.
#[derive(Debug)]
struct Exchange {
    answer: Answer,
    sent_at: Instant,
    answered_at: Instant,
}

fn failure_label(answer: &Answer) -> Option<String> {
    match answer {
        Answer::Order(_) | Answer::InFlight { .. } => None,
        Answer::Refused { status } => Some(status.to_string()),
        Answer::Transport { timeout: true } => Some("timeout".to_owned()),
        Answer::Transport { timeout: false } => Some("transport".to_owned()),
    }
}

impl Run {
    async fn exchange(&self, key: &str, body: &[u8]) -> Exchange {
        self.recorder.lock().requests_sent += 1;
        let sent_at = Instant::now();
        let answer = self.api.place_order(key, body.to_vec()).await;
        Exchange {
            answer,
            sent_at,
            answered_at: Instant::now(),
        }
    }

    /// Places order `index`, due at `offset` from the start, and records what happened.
    pub async fn send_order(&self, index: u64, offset: Duration) {
        let plan = self.mix.plan(index);
        let key = format!("bench-{}-{index}", self.run_tag);
        // Serializing a `serde_json::Value` cannot fail.
        let body = serde_json::to_vec(&self.catalog.order_body(&plan)).unwrap_or_default();
        {
            let mut tallies = self.recorder.lock();
            tallies.orders_sent += 1;
            match plan.intake {
                Intake::Single => {}
                Intake::Retry => tallies.retry_orders += 1,
                Intake::Duplicate { copies } => {
                    tallies.duplicate_orders += 1;
                    tallies.duplicate_copies_extra += copies - 1;
                }
            }
        }
        let created = match plan.intake {
            Intake::Single | Intake::Retry => self.send_once(&key, &body).await,
            Intake::Duplicate { copies } => self.send_copies(&key, &body, copies).await,
        };
        let Some(created) = created else {
            self.recorder.lock().orders_answered += 1;
            return;
        };
        let placed = Placed {
            id: created.order.id,
            scheduled_at: self.clock.wall(self.clock.start + offset),
            measured: self.schedule.measured(offset),
            expected_status: plan.payment.expected_status(),
        };
        self.record_created(&created, offset, placed, plan.sampled);
        if plan.intake == Intake::Retry {
            let again = self.exchange(&key, &body).await;
            let mut tallies = self.recorder.lock();
            check_replay(&mut tallies, &key, created.order.id, &again);
        }
    }

    fn record_created(&self, created: &Created, offset: Duration, placed: Placed, sampled: bool) {
        let due = self.clock.start + offset;
        let latency = created.answered_at.saturating_duration_since(due);
        let earliest = self.clock.wall(created.sent_at) - CLOCK_SKEW_TOLERANCE;
        let latest = self.clock.wall(created.answered_at) + CLOCK_SKEW_TOLERANCE;
        let skewed = !(earliest..=latest).contains(&created.order.created_at);
        let mut tallies = self.recorder.lock();
        tallies.orders_answered += 1;
        tallies.accepted_total += 1;
        tallies.clock_skew_suspect += u64::from(skewed);
        record_latency(&mut tallies.intake_interval, latency);
        if placed.measured {
            tallies.accepted_measured += 1;
            record_latency(&mut tallies.intake, latency);
            let answered = created
                .answered_at
                .saturating_duration_since(self.clock.start);
            tallies.last_measured_answer = tallies.last_measured_answer.max(Some(answered));
        }
        match (&self.sampler, sampled) {
            // A closed channel means the sampler has stopped; the settle phase follows the order.
            (Some(sampler), true) => {
                if let Err(returned) = sampler.send(placed) {
                    tallies.placed.push(returned.0);
                }
            }
            (Some(_) | None, _) => tallies.placed.push(placed),
        }
    }

    /// A key used by one request: a fresh order is the only right answer.
    async fn send_once(&self, key: &str, body: &[u8]) -> Option<Created> {
        let exchange = self.exchange(key, body).await;
        let mut tallies = self.recorder.lock();
        match exchange.answer {
            Answer::Order(order) => {
                if order.replayed {
                    let detail = format!("{key} answered as a replay of order {}", order.id);
                    tallies.mismatch(Mismatch::FirstAnswerReplayed, detail);
                }
                Some(Created {
                    order,
                    sent_at: exchange.sent_at,
                    answered_at: exchange.answered_at,
                })
            }
            Answer::InFlight { .. } => {
                let detail = format!("{key} got 409 though no other request used it");
                tallies.mismatch(Mismatch::UnexpectedConflict, detail);
                None
            }
            Answer::Refused { .. } | Answer::Transport { .. } => {
                tallies.error(failure_label(&exchange.answer).unwrap_or_default());
                None
            }
        }
    }

    /// Sends one duplicate copy until it gets something other than 409, honouring
    /// `Retry-After`.
    async fn send_copy(&self, key: &str, body: &[u8]) -> Exchange {
        let mut exchange = self.exchange(key, body).await;
        for _ in 1..DUPLICATE_ATTEMPTS_MAX {
            let Answer::InFlight { retry_after } = exchange.answer else {
                return exchange;
            };
            let wait = {
                let mut tallies = self.recorder.lock();
                tallies.duplicate_conflicts += 1;
                match retry_after {
                    Some(wait) => wait.min(RETRY_AFTER_MAX),
                    None => {
                        let detail = format!("{key} got 409 without Retry-After");
                        tallies.mismatch(Mismatch::ConflictWithoutRetryAfter, detail);
                        RETRY_AFTER_MISSING
                    }
                }
            };
            tokio::time::sleep(wait).await;
            exchange = self.exchange(key, body).await;
        }
        if matches!(exchange.answer, Answer::InFlight { .. }) {
            let detail = format!("{key} got 409 {DUPLICATE_ATTEMPTS_MAX} times");
            self.recorder
                .lock()
                .mismatch(Mismatch::ConflictForever, detail);
        }
        exchange
    }

    /// A key sent by `copies` concurrent requests: exactly one may create the order, and every
    /// other must be answered with the same order as a replay.
    async fn send_copies(&self, key: &str, body: &[u8], copies: u64) -> Option<Created> {
        let sends = (0..copies).map(|_| self.send_copy(key, body));
        let exchanges = futures::future::join_all(sends).await;
        let mut tallies = self.recorder.lock();
        let mut fresh: Option<Created> = None;
        let mut first_replay: Option<Created> = None;
        let mut failed = false;
        for exchange in exchanges {
            let Answer::Order(order) = &exchange.answer else {
                if let Some(label) = failure_label(&exchange.answer) {
                    tallies.error(label);
                    failed = true;
                }
                continue;
            };
            let created = Created {
                order: order.clone(),
                sent_at: exchange.sent_at,
                answered_at: exchange.answered_at,
            };
            if order.replayed {
                let latency = exchange.answered_at - exchange.sent_at;
                record_latency(&mut tallies.replay, latency);
                if first_replay
                    .as_ref()
                    .is_none_or(|r| r.answered_at > created.answered_at)
                {
                    first_replay = Some(created);
                }
            } else if let Some(earlier) = &fresh {
                let detail = format!("{key} created {} and {}", earlier.order.id, order.id);
                tallies.mismatch(Mismatch::CreatedTwice, detail);
            } else {
                fresh = Some(created);
            }
        }
        match (fresh, first_replay) {
            (Some(fresh), Some(replay)) if fresh.order.id != replay.order.id => {
                let detail = format!("{key} gave {} and {}", fresh.order.id, replay.order.id);
                tallies.mismatch(Mismatch::DifferentOrder, detail);
                Some(fresh)
            }
            (Some(fresh), _) => Some(fresh),
            // The creating copy's answer was lost: the order exists, known from a replay.
            (None, Some(replay)) => {
                if !failed {
                    let detail = format!("{key}: every copy was a replay of {}", replay.order.id);
                    tallies.mismatch(Mismatch::NeverCreated, detail);
                }
                Some(replay)
            }
            (None, None) => None,
        }
    }
}

/// Checks the answer to a re-send of `key`, whose first answer created `expected`.
fn check_replay(tallies: &mut Tallies, key: &str, expected: Uuid, exchange: &Exchange) {
    match &exchange.answer {
        Answer::Order(order) if order.id != expected => {
            let detail = format!("{key} created {expected}, its re-send got {}", order.id);
            tallies.mismatch(Mismatch::DifferentOrder, detail);
        }
        Answer::Order(order) if !order.replayed => {
            let detail = format!("{key}'s re-send lacks Idempotent-Replayed: true");
            tallies.mismatch(Mismatch::ReplayNotMarked, detail);
        }
        Answer::Order(_) => {
            let latency = exchange.answered_at - exchange.sent_at;
            record_latency(&mut tallies.replay, latency);
        }
        Answer::InFlight { .. } => {
            let detail = format!("{key}'s re-send got 409 after the first was answered");
            tallies.mismatch(Mismatch::ReplayRefused, detail);
        }
        Answer::Refused { status } => {
            let detail = format!("{key}'s re-send got {status}");
            tallies.mismatch(Mismatch::ReplayRefused, detail);
        }
        Answer::Transport { .. } => {
            tallies.error(failure_label(&exchange.answer).unwrap_or_default());
        }
    }
}
