//! The relay's side: publishing the log's events to Kafka, partition by partition, in position
//! order, each partition by one relay at a time.
//!
//! Relay processes share the log's partitions: each takes the [`Lease`] of up to its fair share
//! of partitions that no live relay holds, hands partitions back when more relays join, and
//! takes a dead relay's partitions within [`LEASE_POLL`]. Within a partition, a batch is sent, every record of it is acknowledged by
//! Kafka (`acks=all`, idempotent producer, so retries inside librdkafka neither duplicate nor
//! reorder), and only then is the partition's offset committed through the lease. If the relay
//! dies between the acknowledgement and the commit, its successor publishes that batch again:
//! consumers find those events in their inboxes and skip them, and the republication is counted.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tally_domain::clock::Clock;
use tally_domain::event::EventType;
use tally_store::log::partition_of;
use tally_store::{Lease, LogEvent, Store, StoreError};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{BusError, KafkaConfig, cloudevents, topics};

/// The group under which publishing progress is kept in the store's offsets.
pub const PUBLISHER_GROUP: &str = "relay.kafka";
/// Events sent per batch of one partition before waiting for Kafka's acknowledgements.
pub const PUBLISH_BATCH_COUNT_MAX: u32 = 250;
/// Records handed to the producer and not yet acknowledged, over every partition a relay
/// publishes. librdkafka counts a record's time-out from when it is handed over, so records
/// queued behind a slow broker time out (and a timed-out record fences the idempotent producer,
/// which the relay then replaces) unless few enough wait: under a backlog of thousands of
/// orders, eight partitions of 1,000 records each waited about 30 s on tansu, which takes a few
/// hundred one-record batches a second. Apache Kafka acknowledges thousands in a few
/// milliseconds, so the bound costs it nothing.
pub const RECORDS_IN_FLIGHT_MAX: u32 = 1_000;
// A batch takes its permits at once: a larger one would wait for good.
const _: () = assert!(PUBLISH_BATCH_COUNT_MAX <= RECORDS_IN_FLIGHT_MAX);
/// How often a relay looks for partitions whose lease no live relay holds.
pub const LEASE_POLL: Duration = Duration::from_secs(1);
/// How often an idle partition looks for new events when no wake-up arrives.
pub const PUBLISH_IDLE_POLL: Duration = Duration::from_millis(10);
/// How long to wait after Kafka or the store failed before trying the batch again.
pub const PUBLISH_ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// How long librdkafka keeps retrying one record before reporting it failed.
const MESSAGE_TIMEOUT_MS: &str = "30000";
/// How long the producer waits to fill a batch; small, since the relay sends whole batches.
const LINGER_MS: &str = "2";

/// Publishes the log of one store to Kafka.
#[derive(Clone)]
pub struct Publisher {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: KafkaConfig,
    /// Shared by the partitions' tasks; replaced when the broker fences it (see
    /// [`Publisher::renew_producer`]).
    producer: Arc<RwLock<Generation>>,
    /// One permit per record in flight (see [`RECORDS_IN_FLIGHT_MAX`]), taken in batch order.
    in_flight: Arc<Semaphore>,
}

/// A producer and the number of producers before it.
struct Generation {
    number: u64,
    producer: FutureProducer,
}

/// The relay's idempotent producer.
fn create_producer(config: &KafkaConfig) -> Result<FutureProducer, BusError> {
    Ok(config
        .client()
        // Set explicitly, never by default: no duplicates or reordering from the producer's
        // own retries, and a record counts as published only once every in-sync replica has it.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("message.timeout.ms", MESSAGE_TIMEOUT_MS)
        .set("linger.ms", LINGER_MS)
        .set("batch.num.messages", config.batch_records_max.to_string())
        .create()?)
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: KafkaConfig,
    ) -> Result<Self, BusError> {
        let producer = Arc::new(RwLock::new(Generation {
            number: 0,
            producer: create_producer(&config)?,
        }));
        Ok(Self {
            store,
            clock,
            config,
            producer,
            in_flight: Arc::new(Semaphore::new(RECORDS_IN_FLIGHT_MAX as usize)),
        })
    }

    /// The producer now in use, and its generation.
    fn producer(&self) -> (u64, FutureProducer) {
        let current = self.producer.read().unwrap_or_else(PoisonError::into_inner);
        (current.number, current.producer.clone())
    }

    /// Replaces a producer that can never send again (fenced by the broker, or failed fatally)
    /// with a new one, which gets a new producer id; `generation` is the one that failed, so
    /// that partitions failing together replace it once.
    fn renew_producer(&self, generation: u64) {
        let mut current = self
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if current.number != generation {
            return;
        }
        match create_producer(&self.config) {
            Ok(producer) => {
                tracing::warn!(
                    generation,
                    "the Kafka producer was fenced or failed fatally; a new one takes over"
                );
                metrics::counter!("tally_relay_producers_renewed_total").increment(1);
                *current = Generation {
                    number: generation + 1,
                    producer,
                };
            }
            Err(error) => tracing::warn!(%error, "cannot create a new Kafka producer; retrying"),
        }
    }

    /// Publishes until `shutdown`. Every relay joins the publishers' group and holds a fair
    /// share of the log's partitions: ⌈partitions / relays⌉. A relay above its share (another
    /// joined) hands partitions back after their current batch; one below it (another died)
    /// takes free ones. `logged` is notified when this process's relay puts new events into
    /// the log.
    pub async fn run(self, logged: Arc<Notify>, shutdown: CancellationToken) {
        let membership = loop {
            match self.store.join(PUBLISHER_GROUP).await {
                Ok(membership) => break Some(membership),
                Err(error) => tracing::warn!(%error, "relay cannot join the publishers; retrying"),
            }
            tokio::select! {
                () = shutdown.cancelled() => break None,
                () = tokio::time::sleep(PUBLISH_ERROR_BACKOFF) => {}
            }
        };
        let (lost_tx, mut lost_rx) = mpsc::unbounded_channel::<u32>();
        let mut held: BTreeMap<u32, CancellationToken> = BTreeMap::new();
        let mut tasks = JoinSet::new();
        while membership.is_some() && !shutdown.is_cancelled() {
            while let Ok(partition) = lost_rx.try_recv() {
                held.remove(&partition);
            }
            let share = self.fair_share().await;
            while held.len() > share {
                if let Some((partition, stop)) = held.pop_last() {
                    tracing::info!(partition, "relay hands the partition to another relay");
                    stop.cancel();
                }
            }
            for partition in 0..self.store.log_partitions() {
                if held.len() >= share {
                    break;
                }
                if held.contains_key(&partition) {
                    continue;
                }
                match self.store.try_lease(PUBLISHER_GROUP, partition).await {
                    Ok(Some(lease)) => {
                        tracing::info!(partition, "relay publishes this log partition to Kafka");
                        let stop = shutdown.child_token();
                        held.insert(partition, stop.clone());
                        let this = self.clone();
                        let (logged, lost) = (Arc::clone(&logged), lost_tx.clone());
                        tasks.spawn(async move {
                            this.publish_partition(lease, logged, stop).await;
                            let _ = lost.send(partition);
                        });
                    }
                    Ok(None) => {}
                    Err(error) => tracing::warn!(partition, %error, "cannot take a lease"),
                }
            }
            self.record_lag().await;
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(LEASE_POLL) => {}
            }
        }
        while tasks.join_next().await.is_some() {}
        if let Some(membership) = membership
            && let Err(error) = membership.release().await
        {
            tracing::debug!(%error, "membership not released; it ends with the session");
        }
        // Records handed to librdkafka are acknowledged already; this only drains what is left.
        if let Err(error) = self.producer().1.flush(Duration::from_secs(5)) {
            tracing::warn!(%error, "the Kafka producer did not flush");
        }
    }

    /// How many partitions this relay should hold: all of them when the store cannot say how
    /// many relays there are (holding too many only idles the others).
    async fn fair_share(&self) -> usize {
        let partitions = self.store.log_partitions() as usize;
        match self.store.members(PUBLISHER_GROUP).await {
            Ok(members) => partitions.div_ceil((members as usize).max(1)),
            Err(error) => {
                tracing::warn!(%error, "cannot count the relays");
                partitions
            }
        }
    }

    async fn record_lag(&self) {
        let pending = self.store.outbox_pending().await;
        let backlog = self.store.log_backlog(PUBLISHER_GROUP).await;
        if let (Ok(pending), Ok(backlog)) = (pending, backlog) {
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!("tally_relay_lag_events").set((pending + backlog) as f64);
        }
    }

    /// Publishes one leased partition until `shutdown` or until the lease is lost.
    async fn publish_partition(
        &self,
        mut lease: Box<dyn Lease>,
        logged: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        let partition = lease.partition();
        while !shutdown.is_cancelled() {
            let wait = match self.publish_batch(lease.as_mut()).await {
                Ok(0) => PUBLISH_IDLE_POLL,
                Ok(_) => continue,
                Err(BusError::Store(error)) => {
                    tracing::warn!(partition, %error, "relay lost its lease on the partition");
                    return;
                }
                Err(error) => {
                    tracing::warn!(partition, %error, "relay could not publish; retrying the batch");
                    PUBLISH_ERROR_BACKOFF
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = logged.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        if let Err(error) = lease.release().await {
            tracing::warn!(partition, %error, "cannot release the lease; it ends with the session");
        }
    }

    /// Publishes the next batch of the leased partition; returns how many events it published.
    async fn publish_batch(&self, lease: &mut dyn Lease) -> Result<usize, BusError> {
        lease.confirm().await?;
        let partition = lease.partition();
        let offset = self
            .store
            .consumer_offset(PUBLISHER_GROUP, partition)
            .await?;
        let events = self
            .store
            .read_log(Some(partition), offset, PUBLISH_BATCH_COUNT_MAX)
            .await?;
        let Some(last) = events.last() else {
            return Ok(0);
        };
        let last_position = last.position;
        // Never closed, so acquiring fails only if that changes; then send unbounded.
        let in_flight = self
            .in_flight
            .acquire_many(u32::try_from(events.len()).unwrap_or(PUBLISH_BATCH_COUNT_MAX))
            .await
            .ok();
        let sent = self.send_all(&events).await;
        drop(in_flight);
        sent?;
        lease
            .commit_offset(last_position, self.clock.now())
            .await
            .inspect_err(|_: &StoreError| {
                metrics::counter!("tally_relay_unconfirmed_batches_total").increment(1);
            })?;
        metrics::counter!("tally_kafka_published_total").increment(events.len() as u64);
        Ok(events.len())
    }

    /// Sends every event and waits until Kafka acknowledged each one. A producer that can
    /// never send again is replaced before the error is returned, so the retry uses a new one.
    async fn send_all(&self, events: &[LogEvent]) -> Result<(), BusError> {
        let (generation, producer) = self.producer();
        let sent = self.send_with(&producer, events).await;
        if let Err(BusError::Kafka(error)) = &sent
            && (producer.client().fatal_error().is_some()
                || error.rdkafka_error_code() == Some(RDKafkaErrorCode::ProducerFenced))
        {
            self.renew_producer(generation);
        }
        sent
    }

    async fn send_with(
        &self,
        producer: &FutureProducer,
        events: &[LogEvent],
    ) -> Result<(), BusError> {
        let mut deliveries = Vec::with_capacity(events.len());
        for event in events {
            let record = cloudevents::encode(event);
            let topic = topics::topic(&self.config, category(&event.event_type));
            let mut future_record = FutureRecord::to(&topic)
                .partition(kafka_partition(&record.key, self.config.partitions))
                .key(&record.key)
                .payload(&record.value)
                .headers(record.kafka_headers())
                .timestamp(event.time.timestamp_millis());
            loop {
                match producer.send_result(future_record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        future_record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((error, _)) => return Err(error.into()),
                }
            }
        }
        let mut unconfirmed = 0_u64;
        for delivery in deliveries {
            match delivery.await {
                // An acknowledgement without an offset is librdkafka passing on a broker's
                // DuplicateSequenceNumber as success: the broker says it has the record, but
                // tansu 0.6 answers so also for records whose sequence it advanced without
                // storing them. Unconfirmed: the batch is sent again as new records.
                Ok(Ok(delivered)) if delivered.offset < 0 => unconfirmed += 1,
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(error.into()),
                Err(_) => return Err(KafkaError::Canceled.into()),
            }
        }
        if unconfirmed > 0 {
            metrics::counter!("tally_relay_unconfirmed_deliveries_total").increment(unconfirmed);
            return Err(BusError::Unconfirmed(unconfirmed));
        }
        Ok(())
    }
}

/// The topic category of an event type; an unknown type (from a newer version) goes to the
/// topic of its second dotted segment, which is how types are named.
fn category(event_type: &str) -> &str {
    match EventType::parse(event_type) {
        Some(known) => known.category(),
        None => event_type.split('.').nth(1).unwrap_or("unknown"),
    }
}

/// The Kafka partition of a partition key: Tally's own stable hash, so that every producer
/// version and client library agrees.
pub fn kafka_partition(partition_key: &str, partitions: i32) -> i32 {
    let partitions = u32::try_from(partitions.max(1)).unwrap_or(1);
    // Below a u32 that came from a positive i32.
    i32::try_from(partition_of(partition_key, partitions)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_map_to_their_category() {
        assert_eq!(category("tally.order.placed.v1"), "order");
        assert_eq!(category("tally.widget.made.v3"), "widget");
    }

    #[test]
    fn kafka_partitions_are_stable_and_in_range() {
        for key in ["a", "order-1", "SKU-9"] {
            let partition = kafka_partition(key, 6);
            assert!((0..6).contains(&partition));
            assert_eq!(partition, kafka_partition(key, 6));
        }
        assert_eq!(kafka_partition("x", 0), 0);
    }
}
