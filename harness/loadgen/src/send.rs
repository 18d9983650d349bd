//! Sending one order as its plan says (once, re-sent after its answer, or by concurrent
//! duplicates), checking every answer against the idempotency contract, and recording it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::client::{Answer, Api, CancelAnswer, PlacedOrder};
use crate::mix::{Catalog, Intake, Mix};
use crate::record::{Mismatch, Placed, Recorder, Tallies, record_latency};
use crate::retry::{self, RETRY_AFTER_MAX};
use crate::schedule::Schedule;

/// How often one request is sent while it gets 409 (its key held by a concurrent copy, or by
/// an earlier attempt of its own). With the server's one second `Retry-After` this bounds the
/// wait to about [`RETRY_AFTER_MAX`] times this.
pub const DUPLICATE_ATTEMPTS_MAX: u32 = 20;
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
    /// How often a request that failed transiently is sent again (see [`crate::retry`]).
    pub transient_retries: u32,
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

/// Who else may hold a request's key, which decides what a 409 means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sender {
    /// The key's only sender: a 409 can only come from an earlier attempt of its own that
    /// failed transiently and may still run on the server.
    Alone,
    /// One of several concurrent copies: a 409 means another copy holds the key.
    Copy,
}

/// The last answer to one request, after its retries.
#[derive(Debug)]
struct Sent {
    exchange: Exchange,
    /// When the first attempt went out: an order created by it is no older than this.
    first_sent_at: Instant,
    /// Whether an earlier attempt may have been applied, so that a replay or a 409 is right.
    uncertain: bool,
    /// Whether any attempt was a transient retry.
    retried: bool,
}

/// What sending an order's requests found.
#[derive(Debug)]
struct Outcome {
    created: Option<Created>,
    retried: bool,
}

fn failure_label(answer: &Answer) -> Option<String> {
    match answer {
        Answer::Order(_) | Answer::InFlight { .. } => None,
        Answer::Refused { .. } | Answer::Transport { .. } => Some(retry::cause(answer)),
    }
}

fn retry_after(answer: &Answer) -> Option<Duration> {
    match answer {
        Answer::Refused { retry_after, .. } | Answer::InFlight { retry_after } => *retry_after,
        Answer::Order(_) | Answer::Transport { .. } => None,
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
        let outcome = match plan.intake {
            Intake::Single | Intake::Retry => self.send_once(&key, &body).await,
            Intake::Duplicate { copies } => self.send_copies(&key, &body, copies).await,
        };
        let Some(created) = outcome.created else {
            let mut tallies = self.recorder.lock();
            tallies.orders_answered += 1;
            tallies.orders_retried += u64::from(outcome.retried);
            return;
        };
        let expected = match plan.cancel {
            true if self.cancel(&key, created.order.id).await => &["cancelled", "completed"],
            _ => plan.payment.expected(),
        };
        let placed = Placed {
            id: created.order.id,
            scheduled_at: self.clock.wall(self.clock.start + offset),
            measured: self.schedule.measured(offset),
            expected,
        };
        self.record_created(&created, offset, placed, plan.sampled);
        let mut retried = outcome.retried;
        if plan.intake == Intake::Retry {
            let again = self.send_retrying(&key, &body, Sender::Alone).await;
            retried |= again.retried;
            let mut tallies = self.recorder.lock();
            check_replay(&mut tallies, &key, created.order.id, &again);
        }
        self.recorder.lock().orders_retried += u64::from(retried);
    }

    /// Asks to cancel the order placed under `key`, as soon as it exists, sending again after
    /// transient failures (and a 409 while the key is held) with the same key; `true` when the
    /// cancellation was accepted, `false` when it came too late or failed (an error).
    async fn cancel(&self, key: &str, id: Uuid) -> bool {
        let key = format!("{key}-cancel");
        let mut retries = 0;
        loop {
            self.recorder.lock().requests_sent += 1;
            let answer = match self.api.cancel_order(&key, id).await {
                CancelAnswer::Accepted => {
                    self.recorder.lock().cancels_accepted += 1;
                    return true;
                }
                CancelAnswer::TooLate => {
                    self.recorder.lock().cancels_too_late += 1;
                    return false;
                }
                CancelAnswer::Other(answer) => answer,
            };
            let again = matches!(answer, Answer::InFlight { .. }) || retry::is_transient(&answer);
            if !again || retries >= self.transient_retries.max(1) {
                let label = format!("cancel {}", retry::cause(&answer));
                self.recorder.lock().error(label);
                return false;
            }
            retries += 1;
            self.recorder.lock().transient_retry(retry::cause(&answer));
            tokio::time::sleep(retry::wait_before(retries, retry_after(&answer))).await;
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

    /// Sends one request, and again with the same key and body while it fails transiently
    /// (up to `transient_retries` times) or gets a 409 that a concurrent holder of its key
    /// explains (honouring `Retry-After`, up to [`DUPLICATE_ATTEMPTS_MAX`] attempts).
    async fn send_retrying(&self, key: &str, body: &[u8], sender: Sender) -> Sent {
        let mut exchange = self.exchange(key, body).await;
        let first_sent_at = exchange.sent_at;
        let (mut retries, mut conflicts, mut uncertain) = (0, 0, false);
        // Each turn sends once more and uses up a retry or a conflict attempt, so the two
        // limits bound the loop.
        loop {
            let answer = &exchange.answer;
            let wait = match answer {
                Answer::InFlight { .. } if sender == Sender::Copy || uncertain => {
                    if conflicts + 1 >= DUPLICATE_ATTEMPTS_MAX {
                        break;
                    }
                    conflicts += 1;
                    self.conflict_wait(key, sender, retry_after(answer))
                }
                _ if retry::is_transient(answer) && retries < self.transient_retries => {
                    retries += 1;
                    uncertain |= retry::may_have_applied(answer);
                    self.recorder.lock().transient_retry(retry::cause(answer));
                    retry::wait_before(retries, retry_after(answer))
                }
                _ => break,
            };
            tokio::time::sleep(wait).await;
            exchange = self.exchange(key, body).await;
        }
        if matches!(exchange.answer, Answer::InFlight { .. }) && conflicts > 0 {
            let detail = format!("{key} got 409 {DUPLICATE_ATTEMPTS_MAX} times");
            self.recorder
                .lock()
                .mismatch(Mismatch::ConflictForever, detail);
        }
        Sent {
            exchange,
            first_sent_at,
            uncertain,
            retried: retries > 0,
        }
    }

    /// Counts a 409 and says how long to wait before sending again.
    fn conflict_wait(&self, key: &str, sender: Sender, retry_after: Option<Duration>) -> Duration {
        let mut tallies = self.recorder.lock();
        match sender {
            Sender::Copy => tallies.duplicate_conflicts += 1,
            Sender::Alone => tallies.transient_retry("409".to_owned()),
        }
        match retry_after {
            Some(wait) => wait.min(RETRY_AFTER_MAX),
            None => {
                let detail = format!("{key} got 409 without Retry-After");
                tallies.mismatch(Mismatch::ConflictWithoutRetryAfter, detail);
                RETRY_AFTER_MISSING
            }
        }
    }

    /// A key used by one request: a fresh order is the only right answer, unless an attempt
    /// that failed transiently may have placed it, in which case a replay is right too.
    async fn send_once(&self, key: &str, body: &[u8]) -> Outcome {
        let sent = self.send_retrying(key, body, Sender::Alone).await;
        let mut tallies = self.recorder.lock();
        let created = match sent.exchange.answer {
            Answer::Order(order) => {
                if order.replayed && !sent.uncertain {
                    let detail = format!("{key} answered as a replay of order {}", order.id);
                    tallies.mismatch(Mismatch::FirstAnswerReplayed, detail);
                }
                Some(Created {
                    order,
                    sent_at: sent.first_sent_at,
                    answered_at: sent.exchange.answered_at,
                })
            }
            Answer::InFlight { .. } if !sent.uncertain => {
                let detail = format!("{key} got 409 though no other request used it");
                tallies.mismatch(Mismatch::UnexpectedConflict, detail);
                None
            }
            // A 409 past the conflict limit is counted as a mismatch already.
            Answer::InFlight { .. } => None,
            Answer::Refused { .. } | Answer::Transport { .. } => {
                tallies.error(failure_label(&sent.exchange.answer).unwrap_or_default());
                None
            }
        };
        Outcome {
            created,
            retried: sent.retried,
        }
    }

    /// A key sent by `copies` concurrent requests: exactly one may create the order, and every
    /// other must be answered with the same order as a replay.
    async fn send_copies(&self, key: &str, body: &[u8], copies: u64) -> Outcome {
        let sends = (0..copies).map(|_| self.send_retrying(key, body, Sender::Copy));
        let all_sent = futures::future::join_all(sends).await;
        let retried = all_sent.iter().any(|sent| sent.retried);
        // A copy whose attempt may have created the order without an answer leaves every
        // answer a replay.
        let mut unanswered = all_sent.iter().any(|sent| sent.uncertain);
        let mut tallies = self.recorder.lock();
        let mut fresh: Option<Created> = None;
        let mut first_replay: Option<Created> = None;
        for sent in all_sent {
            let Answer::Order(order) = &sent.exchange.answer else {
                if let Some(label) = failure_label(&sent.exchange.answer) {
                    tallies.error(label);
                    unanswered = true;
                }
                continue;
            };
            let created = Created {
                order: order.clone(),
                sent_at: sent.first_sent_at,
                answered_at: sent.exchange.answered_at,
            };
            if order.replayed {
                let latency = sent.exchange.answered_at - sent.exchange.sent_at;
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
        let created = match (fresh, first_replay) {
            (Some(fresh), Some(replay)) if fresh.order.id != replay.order.id => {
                let detail = format!("{key} gave {} and {}", fresh.order.id, replay.order.id);
                tallies.mismatch(Mismatch::DifferentOrder, detail);
                Some(fresh)
            }
            (Some(fresh), _) => Some(fresh),
            // The creating copy's answer was lost: the order exists, known from a replay.
            (None, Some(replay)) => {
                if !unanswered {
                    let detail = format!("{key}: every copy was a replay of {}", replay.order.id);
                    tallies.mismatch(Mismatch::NeverCreated, detail);
                }
                Some(replay)
            }
            (None, None) => None,
        };
        Outcome { created, retried }
    }
}

/// Checks the answer to a re-send of `key`, whose first answer created `expected`.
fn check_replay(tallies: &mut Tallies, key: &str, expected: Uuid, sent: &Sent) {
    let exchange = &sent.exchange;
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
        // Past the conflict limit of a retried re-send: counted as a mismatch already.
        Answer::InFlight { .. } if sent.uncertain => {}
        Answer::InFlight { .. } => {
            let detail = format!("{key}'s re-send got 409 after the first was answered");
            tallies.mismatch(Mismatch::ReplayRefused, detail);
        }
        Answer::Refused { status, .. } if !retry::is_transient(&exchange.answer) => {
            let detail = format!("{key}'s re-send got {status}");
            tallies.mismatch(Mismatch::ReplayRefused, detail);
        }
        Answer::Refused { .. } | Answer::Transport { .. } => {
            tallies.error(failure_label(&exchange.answer).unwrap_or_default());
        }
    }
}
