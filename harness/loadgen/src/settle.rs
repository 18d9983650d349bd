//! Following accepted orders to a terminal status without hammering the server: rounds of
//! `GET /v1/orders/{id}` with bounded concurrency, a pause between rounds, oldest orders first.
//!
//! The time an order settled is read from its timeline (the terminal event's time), not from
//! when a poll noticed it, so the polling cadence does not distort end-to-end figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::client::{Api, OrderView};
use crate::record::{Placed, Recorder, record_latency};

/// Statuses after which the checkout saga takes no further step.
pub const TERMINAL_STATUSES: [&str; 3] = ["completed", "cancelled", "refunded"];
/// The pause between two rounds over the orders still pending.
pub const ROUND_PAUSE: Duration = Duration::from_secs(1);
/// Concurrent polls of the sampler that runs during the load: light, since the server is
/// being measured meanwhile.
pub const SAMPLE_CONCURRENCY: usize = 2;
/// Most orders the sampler polls per round, oldest first, so that a round stays short and
/// the sampler stops promptly when the load ends.
pub const SAMPLE_POLLS_PER_ROUND_MAX: usize = 200;
/// A round ends after this many non-terminal answers in a row per concurrent poll: enough
/// that out-of-order completions are still found, few enough that a round over orders the
/// saga has not reached yet costs a handful of requests, not one per order.
pub const ROUND_MISSES_PER_SLOT: usize = 2;

/// An order that reached a terminal status.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub placed: Placed,
    pub status: String,
    /// The terminal event's time on the server's clock.
    pub terminal_at: DateTime<Utc>,
}

impl Settled {
    /// From due time to terminal event. Negative spans (clock skew) count as zero.
    pub fn end_to_end(&self) -> Duration {
        (self.terminal_at - self.placed.scheduled_at)
            .to_std()
            .unwrap_or(Duration::ZERO)
    }
}

/// What following a set of orders found.
#[derive(Debug, Default)]
pub struct SettleRun {
    pub settled: Vec<Settled>,
    pub pending: Vec<Placed>,
    pub polls: u64,
    pub poll_errors: u64,
}

impl SettleRun {
    pub fn absorb(&mut self, other: SettleRun) {
        self.settled.extend(other.settled);
        self.pending.extend(other.pending);
        self.polls += other.polls;
        self.poll_errors += other.poll_errors;
    }
}

/// When `order` reached its terminal status, if it has: the time of the event named after
/// the status (`tally.order.completed.v1`…), else the order's last update.
pub fn terminal_time(order: &OrderView) -> Option<DateTime<Utc>> {
    if !TERMINAL_STATUSES.contains(&order.status.as_str()) {
        return None;
    }
    let event_type = format!("tally.order.{}.v1", order.status);
    let from_timeline = order
        .timeline
        .iter()
        .find(|e| e.event_type == event_type)
        .map(|e| e.time);
    Some(from_timeline.unwrap_or(order.updated_at))
}

/// What one poll of one order found.
#[derive(Debug)]
pub enum Polled {
    Terminal {
        status: String,
        terminal_at: DateTime<Utc>,
    },
    Pending,
    Failed,
}

async fn poll(api: &Api, id: Uuid) -> Polled {
    match api.order(id).await {
        Ok(order) => match terminal_time(&order) {
            Some(terminal_at) => Polled::Terminal {
                status: order.status,
                terminal_at,
            },
            None => Polled::Pending,
        },
        Err(_) => Polled::Failed,
    }
}

/// Polls `orders` in their order, at most `concurrency` at a time, and ends the round early
/// after `misses_max` answers in a row that were not terminal: the saga settles orders roughly
/// in arrival order, so a run of pending answers means the orders after them are pending too.
/// No poll starts after `deadline`. Orders polled and still pending go behind those not
/// polled, so that the next round starts with fresh ones and a stuck order never blocks it.
async fn round<P, F>(
    poller: P,
    orders: Vec<Placed>,
    concurrency: usize,
    misses_max: usize,
    deadline: Option<Instant>,
) -> SettleRun
where
    P: Fn(Uuid) -> F,
    F: Future<Output = Polled>,
{
    let mut run = SettleRun::default();
    let mut results: Vec<Option<Polled>> =
        std::iter::repeat_with(|| None).take(orders.len()).collect();
    {
        let ids: Vec<(usize, Uuid)> = orders.iter().map(|p| p.id).enumerate().collect();
        let mut polls = futures::stream::iter(ids)
            .map(|(index, id)| {
                let in_time = deadline.is_none_or(|deadline| Instant::now() < deadline);
                let polled = in_time.then(|| poller(id));
                async move {
                    match polled {
                        Some(polled) => (index, Some(polled.await)),
                        None => (index, None),
                    }
                }
            })
            .buffer_unordered(concurrency.max(1));
        let mut misses = 0;
        while let Some((index, polled)) = polls.next().await {
            let Some(polled) = polled else { continue };
            run.polls += 1;
            misses = match polled {
                Polled::Terminal { .. } => 0,
                Polled::Pending | Polled::Failed => misses + 1,
            };
            results[index] = Some(polled);
            if misses >= misses_max.max(1) {
                break;
            }
        }
    }
    let mut polled_pending = Vec::new();
    for (placed, result) in orders.into_iter().zip(results) {
        match result {
            None => run.pending.push(placed),
            Some(Polled::Terminal {
                status,
                terminal_at,
            }) => run.settled.push(Settled {
                placed,
                status,
                terminal_at,
            }),
            Some(Polled::Pending) => polled_pending.push(placed),
            Some(Polled::Failed) => {
                run.poll_errors += 1;
                polled_pending.push(placed);
            }
        }
    }
    run.pending.extend(polled_pending);
    run
}

/// Follows `orders` until every one is terminal or `deadline` passes; with `verbose`, prints
/// one line per round on standard error.
pub async fn settle_all(
    api: &Api,
    mut orders: Vec<Placed>,
    deadline: Instant,
    concurrency: usize,
    verbose: bool,
) -> SettleRun {
    orders.sort_by_key(|p| p.scheduled_at);
    let total = orders.len();
    let started = Instant::now();
    let mut outcome = SettleRun {
        pending: orders,
        ..SettleRun::default()
    };
    while !outcome.pending.is_empty() && Instant::now() < deadline {
        let pending = std::mem::take(&mut outcome.pending);
        let misses_max = concurrency * ROUND_MISSES_PER_SLOT;
        let poller = |id| poll(api, id);
        outcome.absorb(round(poller, pending, concurrency, misses_max, Some(deadline)).await);
        if verbose {
            eprintln!(
                "settle {:>5.0}s  terminal {} of {total}  pending {}  poll errors {}",
                started.elapsed().as_secs_f64(),
                outcome.settled.len(),
                outcome.pending.len(),
                outcome.poll_errors,
            );
        }
        if !outcome.pending.is_empty() {
            let pause_until = (Instant::now() + ROUND_PAUSE).min(deadline);
            tokio::time::sleep_until(pause_until.into()).await;
        }
    }
    outcome
}

/// Follows the sampled orders that arrive on `orders` while the load runs, recording the
/// end-to-end latency of counted ones in the recorder for the progress line. Returns, once
/// `stop` turns true, what it settled and what is still pending.
pub async fn sample_during_load(
    api: Api,
    recorder: Arc<Recorder>,
    mut orders: mpsc::UnboundedReceiver<Placed>,
    mut stop: watch::Receiver<bool>,
) -> SettleRun {
    let mut outcome = SettleRun::default();
    // Ends when the load does: `stop` turns true or its sender goes.
    loop {
        let stopped = tokio::select! {
            changed = stop.changed() => changed.is_err() || *stop.borrow_and_update(),
            () = tokio::time::sleep(ROUND_PAUSE) => false,
        };
        if stopped {
            break;
        }
        while let Ok(placed) = orders.try_recv() {
            outcome.pending.push(placed);
        }
        let split = outcome.pending.len().min(SAMPLE_POLLS_PER_ROUND_MAX);
        let due: Vec<Placed> = outcome.pending.drain(..split).collect();
        let misses_max = SAMPLE_CONCURRENCY * ROUND_MISSES_PER_SLOT;
        let poller = |id| poll(&api, id);
        let polled = round(poller, due, SAMPLE_CONCURRENCY, misses_max, None).await;
        {
            let mut tallies = recorder.lock();
            for settled in polled.settled.iter().filter(|s| s.placed.measured) {
                record_latency(&mut tallies.e2e_sampled, settled.end_to_end());
            }
        }
        // Orders polled this round go behind those not yet polled.
        outcome.absorb(polled);
    }
    orders.close();
    while let Ok(placed) = orders.try_recv() {
        outcome.pending.push(placed);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use futures::future;

    use super::*;

    fn orders(count: usize) -> Vec<Placed> {
        (0..count)
            .map(|i| Placed {
                id: Uuid::from_u128(i as u128),
                scheduled_at: DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(i as i64),
                measured: true,
                expected: &["completed"],
            })
            .collect()
    }

    /// A poller under which the first `done` orders are completed, recording what it polled.
    fn settled_up_to(
        done: u128,
        polled: &Mutex<Vec<u128>>,
    ) -> impl Fn(Uuid) -> future::Ready<Polled> + '_ {
        move |id| {
            polled.lock().expect("lock").push(id.as_u128());
            future::ready(if id.as_u128() < done {
                Polled::Terminal {
                    status: "completed".to_owned(),
                    terminal_at: DateTime::<Utc>::UNIX_EPOCH,
                }
            } else {
                Polled::Pending
            })
        }
    }

    #[tokio::test]
    async fn a_round_stops_after_a_run_of_pending_answers() {
        let polled = Mutex::new(Vec::new());
        let run = round(settled_up_to(30, &polled), orders(100), 1, 4, None).await;
        assert_eq!(run.settled.len(), 30);
        assert_eq!(
            run.polls, 34,
            "30 terminal answers, then 4 pending ones end the round"
        );
        assert_eq!(run.pending.len(), 70);
        // The 66 orders never polled come first, the 4 polled ones last.
        let ids: Vec<u128> = run.pending.iter().map(|p| p.id.as_u128()).collect();
        assert_eq!(ids[0], 34);
        assert_eq!(&ids[66..], &[30, 31, 32, 33]);
    }

    #[tokio::test]
    async fn stuck_orders_rotate_so_later_ones_are_reached() {
        // Orders 0 to 3 never settle; every other one has.
        let polled = Mutex::new(Vec::new());
        let poller = |id: Uuid| {
            polled.lock().expect("lock").push(id.as_u128());
            future::ready(if id.as_u128() < 4 {
                Polled::Pending
            } else {
                Polled::Terminal {
                    status: "completed".to_owned(),
                    terminal_at: DateTime::<Utc>::UNIX_EPOCH,
                }
            })
        };
        let first = round(poller, orders(10), 1, 2, None).await;
        assert!(first.settled.is_empty());
        let second = round(poller, first.pending, 1, 2, None).await;
        assert!(second.settled.is_empty());
        let third = round(poller, second.pending, 1, 2, None).await;
        assert_eq!(third.settled.len(), 6);
        let left: HashSet<u128> = third.pending.iter().map(|p| p.id.as_u128()).collect();
        assert_eq!(left, HashSet::from([0, 1, 2, 3]));
    }

    #[tokio::test]
    async fn no_poll_starts_after_the_deadline() {
        let polled = Mutex::new(Vec::new());
        let past = Instant::now();
        let run = round(settled_up_to(10, &polled), orders(10), 2, 4, Some(past)).await;
        assert_eq!(run.polls, 0);
        assert_eq!(run.pending.len(), 10);
        assert!(polled.lock().expect("lock").is_empty());
    }

    #[test]
    fn the_terminal_time_is_the_terminal_event_s() {
        let order = |status: &str, events: &[(&str, i64)]| OrderView {
            id: Uuid::nil(),
            status: status.to_owned(),
            updated_at: DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(99),
            timeline: events
                .iter()
                .map(|(kind, at)| crate::client::TimelineEntry {
                    event_type: format!("tally.order.{kind}.v1"),
                    time: DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(*at),
                })
                .collect(),
        };
        let seconds = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp());
        let completed = order(
            "completed",
            &[("placed", 1), ("delivered", 5), ("completed", 6)],
        );
        assert_eq!(seconds(terminal_time(&completed)), Some(6));
        let cancelled = order("cancelled", &[("placed", 1), ("cancelled", 2)]);
        assert_eq!(seconds(terminal_time(&cancelled)), Some(2));
        assert_eq!(terminal_time(&order("shipped", &[("placed", 1)])), None);
        // Without its event, the last update stands in.
        assert_eq!(seconds(terminal_time(&order("refunded", &[]))), Some(99));
    }
}
