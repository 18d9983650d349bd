//! The relay moves committed outbox rows into the log, and seals committed audit records into
//! their tenants' hash chains.
//!
//! With the embedded log on PostgreSQL, "moving" means giving each committed row its log
//! position (see `tally_store::postgres`); on SQLite rows are positioned when inserted and the
//! relay has nothing to do. Any number of relays may run: the store serializes them.
//!
//! # Layout
//!
//! - [`run`]: the relay loop, woken by commits in this process and polling for the others'.

use std::sync::Arc;
use std::time::Duration;

use tally_store::Store;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Rows positioned per relay transaction. Large enough to amortize the transaction under load,
/// small enough that one transaction holds the log head for only milliseconds.
pub const RELAY_BATCH_COUNT_MAX: u32 = 1_000;
/// How often an idle relay looks for rows committed by other processes.
pub const RELAY_IDLE_POLL: Duration = Duration::from_millis(20);
/// How long the relay waits before retrying after a store error.
pub const RELAY_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// How often the relay reports its lag.
pub const LAG_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Runs until `shutdown` is cancelled. `appended` is notified by this process's commands after
/// they commit events; `logged` is notified whenever new events entered the log. With
/// `report_lag`, the gauge `tally_relay_lag_events` counts the rows not yet in the log (a
/// Kafka publisher reports it instead, counting what is not yet in Kafka).
pub async fn run(
    store: Arc<dyn Store>,
    appended: Arc<Notify>,
    logged: Arc<Notify>,
    shutdown: CancellationToken,
    report_lag: bool,
) {
    let mut lag_reported = tokio::time::Instant::now();
    loop {
        if report_lag && lag_reported.elapsed() >= LAG_REPORT_INTERVAL {
            lag_reported = tokio::time::Instant::now();
            if let Ok(pending) = store.outbox_pending().await {
                #[allow(clippy::cast_precision_loss)]
                metrics::gauge!("tally_relay_lag_events").set(pending as f64);
            }
        }
        if let Err(error) = store.seal_audit(RELAY_BATCH_COUNT_MAX).await {
            tracing::warn!(%error, "relay could not seal audit records; retrying");
        }
        let wait = match store.sequence_outbox(RELAY_BATCH_COUNT_MAX).await {
            Ok(positioned) if u64::from(RELAY_BATCH_COUNT_MAX) <= positioned => {
                metrics::counter!("tally_log_events_total").increment(positioned);
                logged.notify_waiters();
                Duration::ZERO
            }
            Ok(positioned) => {
                if positioned > 0 {
                    metrics::counter!("tally_log_events_total").increment(positioned);
                    logged.notify_waiters();
                }
                RELAY_IDLE_POLL
            }
            Err(error) => {
                tracing::warn!(%error, "relay could not position outbox rows; retrying");
                RELAY_ERROR_BACKOFF
            }
        };
        if wait.is_zero() {
            if shutdown.is_cancelled() {
                return;
            }
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            // On SQLite the appended events are in the log already: pass the wake-up on.
            () = appended.notified() => logged.notify_waiters(),
            () = tokio::time::sleep(wait) => {}
        }
    }
}
