//! The load phase: the loop that releases orders on schedule into at most `concurrency`
//! in-flight tasks, and the progress line.
//!
//! Both loops share one shape: an order is due at an offset, takes a slot, and is sent. In the
//! open loop the offset is fixed in advance; waiting for a slot delays the send but not the
//! offset, so the wait shows up as latency. In the closed loop the order is due when it gets
//! its slot.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::args::ORDERS_COUNT_MAX;
use crate::record::Tallies;
use crate::report::LatencySummary;
use crate::schedule::{Pacing, Schedule};
use crate::send::Run;

pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Sends every order the schedule admits and waits for all of them to be answered.
pub async fn drive(run: Arc<Run>, concurrency: u32) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(concurrency as usize));
    let mut tasks = JoinSet::new();
    let mut measured_started: u64 = 0;
    for index in 0..ORDERS_COUNT_MAX {
        let due = match run.schedule.pacing {
            Pacing::Open { rate_per_s } => {
                let offset = Schedule::open_offset(rate_per_s, index);
                if !run.schedule.admits(offset, measured_started) {
                    break;
                }
                tokio::time::sleep_until((run.clock.start + offset).into()).await;
                Some(offset)
            }
            Pacing::Closed => None,
        };
        let slot = Arc::clone(&slots).acquire_owned().await?;
        let offset = due.unwrap_or_else(|| run.clock.start.elapsed());
        if !run.schedule.admits(offset, measured_started) {
            break;
        }
        measured_started += u64::from(run.schedule.measured(offset));
        let order_run = Arc::clone(&run);
        tasks.spawn(async move {
            order_run.send_order(index, offset).await;
            drop(slot);
        });
        // Reap finished tasks as we go, so the set holds only those in flight.
        while let Some(finished) = tasks.try_join_next() {
            finished?;
        }
    }
    while let Some(finished) = tasks.join_next().await {
        finished?;
    }
    Ok(())
}

/// One progress line: elapsed, sent, answered, answers per second over the last interval,
/// p99 intake latency over the last interval, errors, and the sampler's end-to-end p99.
fn progress_line(tallies: &Tallies, elapsed: Duration, answered_per_s: f64) -> String {
    let interval = LatencySummary::from_histogram(&tallies.intake_interval);
    let mut line = format!(
        "bench {:>5.0}s  sent {}  answered {}  {:.1}/s  p99 {:.1} ms  errors {}",
        elapsed.as_secs_f64(),
        tallies.orders_sent,
        tallies.orders_answered,
        answered_per_s,
        interval.p99,
        tallies.errors_total(),
    );
    if !tallies.e2e_sampled.is_empty() {
        let e2e = LatencySummary::from_histogram(&tallies.e2e_sampled);
        line.push_str(&format!(
            "  sampled e2e {} p99 {:.0} ms",
            e2e.count, e2e.p99
        ));
    }
    line
}

/// Prints a progress line on standard error every [`PROGRESS_INTERVAL`] until `stop`.
pub async fn progress(run: Arc<Run>, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // The first tick is immediate: nothing to say yet.
    ticker.tick().await;
    let mut answered_before = 0;
    let mut last_tick = tokio::time::Instant::now();
    while !*stop.borrow() {
        tokio::select! {
            changed = stop.changed() => if changed.is_err() { break },
            _ = ticker.tick() => {
                let since = last_tick.elapsed();
                last_tick = tokio::time::Instant::now();
                let line = {
                    let mut tallies = run.recorder.lock();
                    let answered = tallies.orders_answered - answered_before;
                    answered_before = tallies.orders_answered;
                    let rate = answered as f64 / since.as_secs_f64().max(f64::EPSILON);
                    let line = progress_line(&tallies, run.clock.start.elapsed(), rate);
                    tallies.intake_interval.reset();
                    line
                };
                eprintln!("{line}");
            }
        }
    }
}
