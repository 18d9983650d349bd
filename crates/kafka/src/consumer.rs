//! The workers' side: one Kafka consumer group per Tally consumer group, applying each event
//! through the same [`Dispatcher`] as the embedded log.
//!
//! Records are handed to one task per assigned Kafka partition, so a slow partition holds up
//! only itself (until its queue of [`PARTITION_QUEUE_COUNT_MAX`] records fills). The task takes
//! what has queued as one batch and applies it like the embedded log's batches: one key's
//! events in order, different keys concurrently. After every effect of the batch committed (or
//! became a dead letter), the batch's last offset is *stored*; librdkafka commits stored offsets
//! every [`AUTO_COMMIT_INTERVAL_MS`] and on every rebalance. A worker that dies loses at most the
//! stored-but-uncommitted offsets: those events come again, and the inbox skips them.
//!
//! When a rebalance takes partitions away, their tasks stop before their next record; a record
//! in flight finishes, and the new owner's duplicate of it is skipped by the inbox (or, for an
//! effect that writes nothing but its inbox row, whose row its batch records at the end, repeats
//! its partner call under the same idempotency key, which the partner applies once).
//!
//! Each partition's records are handed on only in offset order, without gaps: one past the
//! offset expected next makes the partition be read again from there (see [`crate::gaps`]).
//!
//! Each worker also watches the partitions the others own, and makes the group rebalance when
//! one has no live reader (see [`crate::stall`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use tally_dispatch::Dispatcher;
use tally_store::{LogEvent, Store};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::gaps::{Arrival, Sequence};
use crate::stall::{self, PartitionKey, Reading, StallWatch};
use crate::{BusError, KafkaConfig, cloudevents, topics};

/// Records queued per partition task; bounds memory when one partition is slow.
pub const PARTITION_QUEUE_COUNT_MAX: usize = 1_000;
/// Records a partition task applies as one batch at most: what a crash re-delivers.
pub const PARTITION_BATCH_COUNT_MAX: usize = 200;
/// How often librdkafka commits the offsets stored after effects.
pub const AUTO_COMMIT_INTERVAL_MS: &str = "200";
/// How long the group coordinator waits for a silent worker before giving its partitions to
/// the others: the re-delivery delay after a worker is killed.
const SESSION_TIMEOUT_MS: &str = "6000";
const HEARTBEAT_INTERVAL_MS: &str = "1000";
/// The longest a fetch waits for records, which bounds each saga step's hop through Kafka.
/// tansu 0.6 answers every fetch only after this long, records or not, and reads every record
/// batch of a partition's storage for each fetch of it: at 10 ms its fetches took most of its CPU
/// and the closed-loop bench carried 57 orders/s end to end, at 50 ms 151, at 100 ms 137.
const FETCH_WAIT_MAX_MS: &str = "50";
/// How long to wait after the store failed before applying the same record again.
const STORE_ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// How long one read of the group's offsets or a partition's ends may take.
const OFFSETS_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The partitions assigned to this consumer, each with its task once a record arrived for it;
/// shared with the rebalance callbacks, which add assigned partitions and remove (and stop)
/// revoked ones. A record for a partition not in the map belongs to an earlier assignment and
/// is dropped: whoever owns the partition now reads it again from the committed offset.
#[derive(Debug, Default, Clone)]
struct Assigned(Arc<Mutex<HashMap<PartitionKey, Slot>>>);

/// One assigned partition: where its records stand, and its task once one arrived.
#[derive(Debug, Default)]
struct Slot {
    sequence: Sequence,
    worker: Option<Worker>,
}

#[derive(Debug)]
struct Worker {
    queue: mpsc::Sender<OwnedMessage>,
    stop: CancellationToken,
}

impl Assigned {
    fn lock(&self) -> MutexGuard<'_, HashMap<PartitionKey, Slot>> {
        // Entries are inserted and removed whole; a panic cannot leave one half-made.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Stops the tasks of revoked partitions and reports the group's lag.
struct GroupContext {
    group: &'static str,
    assigned: Assigned,
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        let lag: i64 = statistics
            .topics
            .values()
            .flat_map(|topic| topic.partitions.values())
            .filter(|partition| partition.desired && partition.consumer_lag_stored > 0)
            .map(|partition| partition.consumer_lag_stored)
            .sum();
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("tally_consumer_lag_events", "group" => self.group).set(lag as f64);
    }
}

impl GroupContext {
    /// Where the group reads each assigned partition from: its committed offset, or for a
    /// partition it committed none in, the partition's first offset (`auto.offset.reset` is
    /// earliest). The first record must have that offset, so that a fetch that skips records
    /// from the start is noticed too (see [`crate::gaps`]); a partition left out (the read
    /// failed) takes its first record as the start. Blocking reads, made once per assignment,
    /// inside the rebalance callback so that no record of the assignment arrives before them.
    fn starts(
        &self,
        consumer: &BaseConsumer<Self>,
        list: &TopicPartitionList,
    ) -> HashMap<PartitionKey, i64> {
        let committed = match consumer.committed_offsets(list.clone(), OFFSETS_READ_TIMEOUT) {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(group = self.group, %error, "committed offsets not read at assignment; the first record of each partition sets its start");
                return HashMap::new();
            }
        };
        let mut starts = HashMap::with_capacity(committed.count());
        for element in committed.elements() {
            let key = (element.topic().to_owned(), element.partition());
            let start = match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => consumer
                    .fetch_watermarks(element.topic(), element.partition(), OFFSETS_READ_TIMEOUT)
                    .map(|(low, _)| low)
                    .inspect_err(|error| tracing::warn!(group = self.group, topic = element.topic(), partition = element.partition(), %error, "first offset not read at assignment"))
                    .ok(),
            };
            // A negative offset is one of librdkafka's logical ones (end, beginning), never a
            // record's: seeking to it would skip the partition.
            if let Some(start) = start.filter(|start| *start >= 0) {
                starts.insert(key, start);
            }
        }
        starts
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let revoked = match rebalance {
            Rebalance::Revoke(list) => list.elements(),
            Rebalance::Assign(_) | Rebalance::Error(_) => return,
        };
        let mut assigned = self.assigned.lock();
        for element in revoked {
            let key = (element.topic().to_owned(), element.partition());
            if let Some(Slot {
                worker: Some(worker),
                ..
            }) = assigned.remove(&key)
            {
                worker.stop.cancel();
            }
        }
        tracing::info!(group = self.group, "Kafka partitions revoked");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let starts = self.starts(consumer, list);
            let mut assigned = self.assigned.lock();
            for element in list.elements() {
                let key = (element.topic().to_owned(), element.partition());
                let start = starts.get(&key).copied();
                assigned.entry(key).or_insert_with(|| Slot {
                    sequence: Sequence::starting_at(start),
                    worker: None,
                });
            }
            let partitions: Vec<String> = list
                .elements()
                .iter()
                .map(|e| format!("{}/{}", e.topic(), e.partition()))
                .collect();
            tracing::info!(group = self.group, ?partitions, "Kafka partitions assigned");
        }
    }
}

/// One Tally consumer group on Kafka.
#[derive(Debug)]
pub struct ConsumerGroup {
    store: Arc<dyn Store>,
    dispatcher: Dispatcher,
    config: KafkaConfig,
}

impl ConsumerGroup {
    pub fn new(store: Arc<dyn Store>, dispatcher: Dispatcher, config: KafkaConfig) -> Self {
        Self {
            store,
            dispatcher,
            config,
        }
    }

    fn consumer(&self, assigned: &Assigned) -> Result<StreamConsumer<GroupContext>, BusError> {
        let context = GroupContext {
            group: self.dispatcher.group(),
            assigned: assigned.clone(),
        };
        let consumer: StreamConsumer<GroupContext> = self
            .config
            .client()
            .set("group.id", self.config.group_id(self.dispatcher.group()))
            // Offsets are stored by hand after each effect commits, and committed from there.
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", AUTO_COMMIT_INTERVAL_MS)
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", SESSION_TIMEOUT_MS)
            .set("heartbeat.interval.ms", HEARTBEAT_INTERVAL_MS)
            .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS)
            .set("statistics.interval.ms", "1000")
            .create_with_context(context)?;
        let topics = topics::all(&self.config);
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(consumer)
    }

    /// Whether `message` is the record its partition expects next (see [`crate::gaps`]). A record
    /// past it is dropped and the partition read again from the expected offset; one before it
    /// was handed on already.
    fn in_sequence(
        &self,
        consumer: &StreamConsumer<GroupContext>,
        sequence: &mut Sequence,
        message: &OwnedMessage,
    ) -> bool {
        let group = self.dispatcher.group();
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        match sequence.arrive(offset, Instant::now()) {
            Arrival::Next => true,
            Arrival::Repeat => {
                tracing::debug!(
                    group,
                    topic,
                    partition,
                    offset,
                    "record handed on already dropped"
                );
                false
            }
            Arrival::Gap { from } => {
                tracing::debug!(
                    group,
                    topic,
                    partition,
                    offset,
                    from,
                    "records missing before this one; reading the partition again from the first"
                );
                metrics::counter!("tally_kafka_offset_gaps_total", "group" => group, "outcome" => "read_again").increment(1);
                // Without waiting: the seek is applied by librdkafka's own thread, and records
                // of the fetches before it are discarded.
                if let Err(error) =
                    consumer.seek(topic, partition, Offset::Offset(from), Duration::ZERO)
                {
                    tracing::debug!(group, topic, partition, %error, "partition not read again; revoked meanwhile");
                }
                false
            }
            Arrival::GapAccepted { missing } => {
                tracing::error!(
                    group,
                    topic,
                    partition,
                    from = missing.start,
                    to = missing.end,
                    "offsets missing from the partition through every re-read; going on past them: their events, if any, have not taken effect in this group"
                );
                metrics::counter!("tally_kafka_offset_gaps_total", "group" => group, "outcome" => "accepted").increment(1);
                true
            }
        }
    }

    /// Consumes until `shutdown`; also retries the dead letters an operator asks to retry.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BusError> {
        let assigned = Assigned::default();
        let consumer = Arc::new(self.consumer(&assigned)?);
        let mut tasks = JoinSet::new();
        let retries = self.dispatcher.clone();
        let retry_shutdown = shutdown.clone();
        tasks.spawn(async move { retries.retry_loop(retry_shutdown).await });
        tasks.spawn(
            Watchdog {
                consumer: Arc::clone(&consumer),
                assigned: assigned.clone(),
                group: self.dispatcher.group(),
                topics: topics::all(&self.config),
                partitions: self.config.partitions,
            }
            .run(shutdown.clone()),
        );
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => break,
                message = consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message.detach(),
                Err(error) => {
                    tracing::warn!(group = self.dispatcher.group(), %error, "Kafka consumer error");
                    continue;
                }
            };
            let key = (message.topic().to_owned(), message.partition());
            if tracing::enabled!(tracing::Level::TRACE) {
                let id = message
                    .headers()
                    .and_then(|headers| headers.iter().find(|h| h.key == "ce_id"))
                    .and_then(|h| h.value)
                    .map(String::from_utf8_lossy);
                tracing::trace!(group = self.dispatcher.group(), topic = %key.0, partition = key.1, offset = message.offset(), ?id, "record received");
            }
            let queue = {
                let mut workers = assigned.lock();
                let Some(slot) = workers.get_mut(&key) else {
                    tracing::debug!(group = self.dispatcher.group(), topic = %key.0, partition = key.1, "record of a partition no longer assigned dropped");
                    continue;
                };
                if !self.in_sequence(&consumer, &mut slot.sequence, &message) {
                    continue;
                }
                let worker = slot.worker.get_or_insert_with(|| {
                    let (queue, records) = mpsc::channel(PARTITION_QUEUE_COUNT_MAX);
                    let stop = shutdown.child_token();
                    let task = PartitionTask {
                        dispatcher: self.dispatcher.clone(),
                        consumer: Arc::clone(&consumer),
                        log_partitions: self.store.log_partitions(),
                        stop: stop.clone(),
                    };
                    tasks.spawn(task.run(records));
                    Worker { queue, stop }
                });
                worker.queue.clone()
            };
            // A full queue holds up the whole consumer: backpressure, bounded memory.
            if queue.send(message).await.is_err() {
                tracing::debug!(
                    group = self.dispatcher.group(),
                    "record for a revoked partition dropped"
                );
            }
        }
        assigned.lock().clear();
        while tasks.join_next().await.is_some() {}
        if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(%error, "no offsets committed at shutdown");
        }
        Ok(())
    }
}

/// Makes the group rebalance when a partition another member owns has no live reader.
struct Watchdog {
    consumer: Arc<StreamConsumer<GroupContext>>,
    assigned: Assigned,
    group: &'static str,
    topics: Vec<String>,
    partitions: i32,
}

impl Watchdog {
    async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let mut watch = StallWatch::default();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(stall::CHECK_INTERVAL) => {}
            }
            let reader = Arc::clone(&this);
            let readings = match tokio::task::spawn_blocking(move || reader.read()).await {
                Ok(Ok(readings)) => readings,
                Ok(Err(error)) => {
                    // Mid-rebalance or the broker is away: the next check reads again.
                    tracing::debug!(group = this.group, %error, "group offsets not read");
                    continue;
                }
                Err(panicked) => {
                    tracing::error!(group = this.group, %panicked, "reading group offsets panicked");
                    continue;
                }
            };
            let stalled = watch.observe(Instant::now(), &readings);
            if stalled.is_empty() {
                continue;
            }
            let partitions: Vec<String> = stalled
                .iter()
                .map(|(topic, partition)| format!("{topic}/{partition}"))
                .collect();
            tracing::warn!(
                group = this.group,
                ?partitions,
                "partitions owned by another member have not moved for {}s; leaving the group and joining again so that the live members share them",
                stall::STALL_AFTER.as_secs()
            );
            metrics::counter!("tally_kafka_group_rejoins_total", "group" => this.group)
                .increment(1);
            if let Err(error) = this.rejoin() {
                tracing::error!(group = this.group, %error, "rejoining the group failed");
            }
            watch.reset();
        }
    }

    /// The group's committed offset and the ends of every partition of its topics.
    fn read(&self) -> Result<Vec<Reading>, KafkaError> {
        let owned: HashSet<PartitionKey> = self.assigned.lock().keys().cloned().collect();
        let mut list = TopicPartitionList::new();
        for topic in &self.topics {
            for partition in 0..self.partitions {
                list.add_partition(topic, partition);
            }
        }
        let committed = self
            .consumer
            .committed_offsets(list, OFFSETS_READ_TIMEOUT)?;
        let mut readings = Vec::with_capacity(committed.count());
        for element in committed.elements() {
            if element.error().is_err() {
                continue;
            }
            let (low, high) = self.consumer.fetch_watermarks(
                element.topic(),
                element.partition(),
                OFFSETS_READ_TIMEOUT,
            )?;
            let partition = (element.topic().to_owned(), element.partition());
            readings.push(Reading {
                owned: owned.contains(&partition),
                partition,
                committed: match element.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                },
                low,
                high,
            });
        }
        Ok(readings)
    }

    /// Leaves the group and joins it again as a new member: a new generation on any broker.
    /// librdkafka revokes this member's partitions first (stopping their tasks, committing
    /// their offsets) and subscribes again once the leave is done.
    fn rejoin(&self) -> Result<(), KafkaError> {
        self.consumer.unsubscribe();
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        self.consumer.subscribe(&topics)
    }
}

/// Applies the records of one assigned Kafka partition, in order.
struct PartitionTask {
    dispatcher: Dispatcher,
    consumer: Arc<StreamConsumer<GroupContext>>,
    log_partitions: u32,
    stop: CancellationToken,
}

impl PartitionTask {
    async fn run(self, mut records: mpsc::Receiver<OwnedMessage>) {
        while let Some(first) = tokio::select! {
            () = self.stop.cancelled() => None,
            message = records.recv() => message,
        } {
            // Whatever else has arrived joins the batch: its keys are applied concurrently.
            let first_offset = first.offset();
            let mut batch = vec![first];
            while batch.len() < PARTITION_BATCH_COUNT_MAX {
                match records.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(_) => break,
                }
            }
            let events: Vec<LogEvent> = batch.iter().filter_map(|m| self.decode(m)).collect();
            if !self.apply(events).await {
                return;
            }
            let Some(last) = batch.last() else { continue };
            tracing::trace!(
                group = self.dispatcher.group(),
                topic = last.topic(),
                partition = last.partition(),
                first = first_offset,
                last = last.offset(),
                "batch applied; storing its offset"
            );
            if let Err(error) =
                self.consumer
                    .store_offset(last.topic(), last.partition(), last.offset())
            {
                // The partition was revoked meanwhile; its new owner starts from the last
                // committed offset and skips what this task applied.
                tracing::debug!(%error, "offset not stored");
                return;
            }
        }
    }

    /// The event a record carries; `None` for a record that is not one of Tally's events.
    fn decode(&self, message: &OwnedMessage) -> Option<LogEvent> {
        let group = self.dispatcher.group();
        let headers: Vec<(String, Vec<u8>)> = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        match cloudevents::decode(
            message.key(),
            message.payload(),
            &headers,
            self.log_partitions,
        ) {
            Ok(event) => Some(event),
            Err(malformed) => {
                // Not one of Tally's events (another producer wrote to the topic): nothing to
                // apply and nothing to dead-letter, since it names no event of the store.
                tracing::error!(group, topic = message.topic(), partition = message.partition(), offset = message.offset(), %malformed, "record skipped");
                metrics::counter!("tally_kafka_malformed_records_total", "group" => group)
                    .increment(1);
                None
            }
        }
    }

    /// Applies a batch's events; `false` when the task must stop without storing its offset.
    async fn apply(&self, events: Vec<LogEvent>) -> bool {
        let group = self.dispatcher.group();
        loop {
            match self.dispatcher.apply_all(events.clone(), &self.stop).await {
                Ok(()) => return !self.stop.is_cancelled(),
                Err(error) => {
                    tracing::warn!(group, %error, "store failed; applying the batch again");
                    tokio::select! {
                        () = self.stop.cancelled() => return false,
                        () = tokio::time::sleep(STORE_ERROR_BACKOFF) => {}
                    }
                }
            }
        }
    }
}
