//! The partition loops and the dead-letter retry loop of one consumer group.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use tally_domain::clock::Clock;
use tally_domain::ids::EventId;
use tally_store::{DeadLetterRecord, Engine, LogEvent, Store, StoreError};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{ATTEMPTS_MAX, Deferred, Delivery, EffectError, Handler, Origin, retry_delay};

/// Events read from a partition at once; bounds memory and the length of one read.
pub const BATCH_COUNT_MAX: u32 = 200;
/// Lanes (partition keys) of one batch applied at once. Concurrent effects are what lets the
/// store commit many of them together (group commit on SQLite, concurrent WAL flushes on
/// PostgreSQL); the group's own bound below is the tighter one.
pub const LANES_IN_FLIGHT_MAX: usize = 128;
/// Lanes applied at once by one group over all its partitions on PostgreSQL (see
/// [`Dispatcher`]'s `lanes`): about what the connection pool serves, so that effects queue here
/// rather than time out waiting for a connection.
pub const GROUP_LANES_IN_FLIGHT_MAX: usize = 64;
/// The same on SQLite, where effects queue for the one writer (in order, with no time-out) and
/// each group commit carries more of them the more are under way: 64 gave 550 orders/s end to
/// end on two cores, 256 gave 700, 512 no more.
pub const SQLITE_GROUP_LANES_IN_FLIGHT_MAX: usize = 256;
/// How often an idle partition looks for new events when no wake-up arrives.
pub const IDLE_POLL: Duration = Duration::from_millis(50);
/// How often a busy partition stores its offset. The inbox, which every effect claims its event
/// in, is what keeps effects exactly once; the offset only saves re-reading, so after a crash up to
/// this much of the log is read again and skipped. Storing it after every batch cost a commit
/// per batch per partition and group, more than the effects themselves at low load.
pub const OFFSET_COMMIT_INTERVAL: Duration = Duration::from_millis(250);
/// How often the group looks for dead letters an operator asked to retry.
pub const RETRY_POLL: Duration = Duration::from_millis(500);
/// How often the group reports its lag.
pub const LAG_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How long to wait after the store failed before reading again.
pub const STORE_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// One consumer group, running.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    handler: Arc<dyn Handler>,
    /// Notified when events enter the log: wakes idle partitions, and is notified in turn after
    /// every effect that commits (on SQLite its events are in the log at once).
    logged: Arc<Notify>,
    /// Lanes of this group under way at once, over all its partitions: bounds what the group
    /// asks of the store's connection pool and of partners, so that under a backlog effects
    /// queue here rather than time out waiting for a connection and burn their attempts.
    lanes: Arc<Semaphore>,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        handler: Arc<dyn Handler>,
        logged: Arc<Notify>,
    ) -> Self {
        let lanes_max = match store.engine() {
            Engine::Sqlite => SQLITE_GROUP_LANES_IN_FLIGHT_MAX,
            Engine::Postgres => GROUP_LANES_IN_FLIGHT_MAX,
        };
        Self {
            store,
            clock,
            handler,
            logged,
            lanes: Arc::new(Semaphore::new(lanes_max)),
        }
    }

    /// The group this dispatcher runs.
    pub fn group(&self) -> &'static str {
        self.handler.group()
    }

    /// Whether the group acts on events of this type.
    pub fn wants(&self, event_type: &str) -> bool {
        self.handler.wants(event_type)
    }

    /// Consumes every partition of the embedded log until `shutdown`, and retries the dead
    /// letters an operator asks to retry. `logged` wakes idle partitions when new events enter
    /// the log.
    pub async fn run(self, shutdown: CancellationToken) {
        let logged = Arc::clone(&self.logged);
        let mut tasks = JoinSet::new();
        for partition in 0..self.store.log_partitions() {
            let this = self.clone();
            let (logged, shutdown) = (Arc::clone(&logged), shutdown.clone());
            tasks.spawn(async move { this.partition_loop(partition, logged, shutdown).await });
        }
        let this = self.clone();
        let retry_shutdown = shutdown.clone();
        tasks.spawn(async move { this.retry_loop(retry_shutdown).await });
        let this = self.clone();
        tasks.spawn(async move { this.lag_loop(shutdown).await });
        while tasks.join_next().await.is_some() {}
    }

    /// Reports how many events of the embedded log the group has yet to pass, once a second.
    async fn lag_loop(&self, shutdown: CancellationToken) {
        let group = self.handler.group();
        loop {
            if let Ok(backlog) = self.store.log_backlog(group).await {
                #[allow(clippy::cast_precision_loss)]
                metrics::gauge!("tally_consumer_lag_events", "group" => group).set(backlog as f64);
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(LAG_REPORT_INTERVAL) => {}
            }
        }
    }

    async fn partition_loop(
        &self,
        partition: u32,
        logged: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        let group = self.handler.group();
        let mut cursor: Option<Cursor> = None;
        while !shutdown.is_cancelled() {
            let wait = match self.consume_batch(partition, &mut cursor, &shutdown).await {
                Ok(0) => IDLE_POLL,
                Ok(_) => continue,
                Err(error) => {
                    // The cursor stays: it moves only past batches that were applied, and the
                    // stored offset may be behind it (events dead-lettered in between have no
                    // inbox row to skip them by).
                    tracing::warn!(group, partition, %error, "consumer could not apply a batch of the log; retrying");
                    STORE_ERROR_BACKOFF
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = logged.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        if let Some(cursor) = cursor.as_mut()
            && let Err(error) = self.store_offset(partition, cursor).await
        {
            tracing::warn!(group, partition, %error, "consumer could not store its offset at shutdown");
        }
    }

    /// Applies the next batch of one partition; returns how many events it read. The batch's
    /// lanes (one per partition key) run concurrently; the cursor moves past the batch only
    /// once all of them finished, and not at all when `shutdown` stopped them half-way. The
    /// offset is stored at most every [`OFFSET_COMMIT_INTERVAL`], and when the partition runs
    /// dry.
    async fn consume_batch(
        &self,
        partition: u32,
        cursor: &mut Option<Cursor>,
        shutdown: &CancellationToken,
    ) -> Result<usize, StoreError> {
        let group = self.handler.group();
        let cursor = match cursor {
            Some(cursor) => cursor,
            None => {
                let stored = self.store.consumer_offset(group, partition).await?;
                cursor.insert(Cursor {
                    applied: stored,
                    stored,
                    stored_at: Instant::now(),
                })
            }
        };
        let events = self
            .store
            .read_log(Some(partition), cursor.applied, BATCH_COUNT_MAX)
            .await?;
        let Some(last) = events.last().map(|event| event.position) else {
            self.store_offset(partition, cursor).await?;
            return Ok(0);
        };
        let count = events.len();
        self.apply_all(events, shutdown).await?;
        if shutdown.is_cancelled() {
            return Ok(count);
        }
        cursor.applied = last;
        if cursor.stored_at.elapsed() >= OFFSET_COMMIT_INTERVAL {
            self.store_offset(partition, cursor).await?;
        }
        Ok(count)
    }

    /// Stores the partition's offset if it moved since it was last stored.
    async fn store_offset(&self, partition: u32, cursor: &mut Cursor) -> Result<(), StoreError> {
        if cursor.applied == cursor.stored {
            return Ok(());
        }
        self.store
            .commit_consumer_offset(
                self.handler.group(),
                partition,
                cursor.applied,
                self.clock.now(),
            )
            .await?;
        cursor.stored = cursor.applied;
        cursor.stored_at = Instant::now();
        Ok(())
    }

    /// Applies a batch of one partition: the events the group wants, split into lanes by
    /// partition key, each lane in order, different lanes concurrently; events the inbox holds
    /// already are skipped. `Ok` once every lane finished (or `shutdown` stopped them): only
    /// then may the partition's offset move past the batch, and not after `shutdown`.
    pub async fn apply_all(
        &self,
        events: Vec<LogEvent>,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        let wanted: Vec<LogEvent> = events
            .into_iter()
            .filter(|e| self.handler.wants(&e.event_type))
            .collect();
        // One look at the inbox for the whole batch. The effect's own transaction is what
        // keeps it exactly once; this only spares partners the calls of events applied before
        // a crash or a rewind.
        let ids: Vec<EventId> = wanted.iter().map(|event| event.id).collect();
        let held = self.store.inbox_holds(self.handler.group(), &ids).await?;
        // Kafka may carry one event twice in a batch (a relay's re-publish, a rebalance): the
        // first copy is applied, the other passed over, as the inbox would once it committed.
        let mut seen = HashSet::new();
        let fresh = wanted
            .into_iter()
            .filter(|event| !held.contains(&event.id) && seen.insert(event.id));
        let deferred = Deferred::default();
        let applied = futures::stream::iter(lanes(fresh))
            .map(|lane| self.apply_lane(lane, &deferred, shutdown))
            .buffer_unordered(LANES_IN_FLIGHT_MAX)
            .try_collect::<()>()
            .await;
        // Also after a failed lane or on shutdown: those effects were applied, and recording
        // them spares their partner calls a repeat.
        let recorded = self.record_deferred(&deferred).await;
        applied.and(recorded)
    }

    /// Writes the inbox rows of the batch's effects that wrote nothing else, in one transaction.
    async fn record_deferred(&self, deferred: &Deferred) -> Result<(), StoreError> {
        let events = std::mem::take(
            &mut *deferred
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if events.is_empty() {
            return Ok(());
        }
        self.store
            .record_inbox(self.handler.group(), &events, self.clock.now())
            .await
    }

    /// Applies one key's events of a batch in order.
    async fn apply_lane(
        &self,
        lane: Vec<LogEvent>,
        deferred: &Deferred,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        // Never closed, so acquiring fails only if that changes; then run unbounded.
        let _permit = self.lanes.acquire().await.ok();
        for event in lane {
            if shutdown.is_cancelled() {
                break;
            }
            self.apply(event, deferred, shutdown).await?;
        }
        Ok(())
    }

    /// Applies one event from a partition of the embedded log or of Kafka, retrying; parks it
    /// as a dead letter when that fails. An effect that writes nothing but its inbox row leaves
    /// that to `deferred`, the batch's. `Ok` means the lane may go on; the partition moves past
    /// the event only once the batch recorded `deferred`. An early return on `shutdown` also
    /// answers `Ok` without applying it, and the offset must then not move, which holds because
    /// the caller stops too.
    async fn apply(
        &self,
        event: LogEvent,
        deferred: &Deferred,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        let delivery = Delivery::new(
            Arc::clone(&self.store),
            Arc::clone(&self.clock),
            self.handler.group(),
            event.clone(),
            Origin::Partition,
            Arc::clone(&self.logged),
        )
        .deferring_to(Arc::clone(deferred));
        let mut failures = Vec::new();
        for attempt in 1..=ATTEMPTS_MAX {
            match self.handler.handle(&event, &delivery).await {
                Ok(()) => {
                    metrics::counter!("tally_events_applied_total", "group" => self.handler.group()).increment(1);
                    return Ok(());
                }
                Err(error) => {
                    metrics::counter!("tally_effect_failures_total", "group" => self.handler.group()).increment(1);
                    let permanent = matches!(error, EffectError::Permanent(_));
                    failures.push(json!({"at": self.clock.now(), "error": error.to_string()}));
                    if permanent || attempt == ATTEMPTS_MAX {
                        break;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(retry_delay(attempt)) => {}
                    }
                }
            }
        }
        self.dead_letter(&event, failures).await
    }

    /// Parks an event the group could not apply; its partition then moves past it.
    async fn dead_letter(
        &self,
        event: &LogEvent,
        failures: Vec<serde_json::Value>,
    ) -> Result<(), StoreError> {
        let group = self.handler.group();
        let now = self.clock.now();
        let error = failures
            .last()
            .and_then(|f| f["error"].as_str())
            .unwrap_or("unknown")
            .to_owned();
        tracing::error!(group, event_id = %event.id, event_type = %event.event_type, %error, "event dead-lettered");
        metrics::counter!("tally_dead_letters_total", "group" => group).increment(1);
        let letter = DeadLetterRecord {
            id: self.clock.fresh_id(),
            tenant_id: event.tenant_id,
            group: group.to_owned(),
            event_id: event.id,
            partition: event.partition,
            position: event.position,
            event_type: event.event_type.clone(),
            subject: event.subject.clone(),
            error,
            attempts: serde_json::Value::Array(failures),
            status: "open".to_owned(),
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.store.begin().await?;
        tx.upsert_dead_letter(&letter).await?;
        tx.commit().await
    }

    /// Re-applies dead letters an operator asked to retry (status `retrying`), until `shutdown`.
    pub async fn retry_loop(&self, shutdown: CancellationToken) {
        let group = self.handler.group();
        while !shutdown.is_cancelled() {
            if let Err(error) = self.retry_requested().await {
                tracing::warn!(group, %error, "dead-letter retry failed; will try again");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RETRY_POLL) => {}
            }
        }
    }

    async fn retry_requested(&self) -> Result<(), StoreError> {
        let group = self.handler.group();
        for letter in self
            .store
            .dead_letters_to_retry(group, BATCH_COUNT_MAX)
            .await?
        {
            let Some(event) = self.store.event(letter.event_id).await? else {
                continue;
            };
            let delivery = Delivery::new(
                Arc::clone(&self.store),
                Arc::clone(&self.clock),
                group,
                event.clone(),
                Origin::DeadLetter(Box::new(letter.clone())),
                Arc::clone(&self.logged),
            );
            if let Err(error) = self.handler.handle(&event, &delivery).await {
                let mut attempts = letter.attempts.as_array().cloned().unwrap_or_default();
                attempts.push(json!({"at": self.clock.now(), "error": error.to_string()}));
                let reopened = DeadLetterRecord {
                    status: "open".to_owned(),
                    error: error.to_string(),
                    attempts: serde_json::Value::Array(attempts),
                    updated_at: self.clock.now(),
                    ..letter
                };
                let mut tx = self.store.begin().await?;
                tx.upsert_dead_letter(&reopened).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }
}

/// Where a partition loop stands in its partition.
#[derive(Debug)]
struct Cursor {
    /// The position of the last event applied (or skipped) by this loop.
    applied: i64,
    /// The offset as last stored, and when.
    stored: i64,
    stored_at: Instant,
}

/// Splits a batch into lanes, one per partition key, each in position order; lanes are in the
/// order of their first event.
fn lanes(events: impl IntoIterator<Item = LogEvent>) -> Vec<Vec<LogEvent>> {
    let mut lanes: Vec<Vec<LogEvent>> = Vec::new();
    let mut lane_of_key: HashMap<String, usize> = HashMap::new();
    for event in events {
        match lane_of_key.get(&event.partition_key) {
            Some(&lane) => lanes[lane].push(event),
            None => {
                lane_of_key.insert(event.partition_key.clone(), lanes.len());
                lanes.push(vec![event]);
            }
        }
    }
    lanes
}
