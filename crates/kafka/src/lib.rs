//! Tally on Apache Kafka: when one machine is not enough, PostgreSQL stays the source of truth and
//! Kafka carries the log.
//!
//! The outbox and its gap-free, per-partition positions stay in PostgreSQL exactly as with the
//! embedded log. A [`Publisher`] (running in relay processes) leases partitions of that log and
//! publishes their events, in position order, with librdkafka's idempotent producer: one topic
//! per event category, the partition key as the Kafka key, the CloudEvents attributes as headers.
//! Its progress is a store offset committed after Kafka acknowledged the batch, so a crash
//! republishes at most one batch, which consumers dedupe in their inboxes.
//!
//! A [`ConsumerGroup`] (running in worker processes) consumes those topics in a Kafka consumer
//! group and hands each event to the same [`tally_dispatch::Dispatcher`] the embedded log uses: the
//! effect, the inbox row and any dead letter commit in one store transaction, and only then is the
//! Kafka offset stored for the next commit. A rebalance or crash re-delivers; the inbox makes it
//! harmless.
//!
//! # Layout
//!
//! - [`KafkaConfig`]: brokers, topic and group naming, partition count.
//! - [`cloudevents`]: an event as a Kafka record (the CloudEvents Kafka binding) and back.
//! - [`topics`]: topic names and their creation through the admin API.
//! - [`publisher`]: the relay's side.
//! - [`consumer`]: the workers' side.
//! - [`gaps`]: noticing records a fetch skipped, so that every offset is applied in order.
//! - [`stall`]: noticing partitions no live member of a group reads.
//! - [`replay`]: rewinding a consumer group to a time.

pub mod cloudevents;
pub mod consumer;
pub mod gaps;
pub mod publisher;
pub mod replay;
pub mod stall;
pub mod topics;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;

pub use consumer::ConsumerGroup;
pub use publisher::Publisher;

/// Records per producer batch when the operator does not say (see
/// [`KafkaConfig::batch_records_max`]).
pub const BATCH_RECORDS_DEFAULT: u32 = 1;
/// Partitions of each topic when the operator does not say.
pub const TOPIC_PARTITIONS_DEFAULT: i32 = 8;

/// Where the Kafka cluster is and how Tally names what it creates there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `host:port` of one or more brokers, comma-separated.
    pub brokers: String,
    /// Prefix of every topic and consumer group id, so that several deployments (or test runs)
    /// can share one cluster: topics are `{namespace}.{category}`.
    pub namespace: String,
    /// Partitions of each topic created at start. Topics that exist are left as they are.
    pub partitions: i32,
    /// Replicas of each topic created at start.
    pub replication: i32,
    /// Records the producer packs into one record batch (librdkafka's `batch.num.messages`).
    /// One by default: tansu 0.6 answers a fetch that starts inside a multi-record batch with the
    /// *next* batch, so a consumer group resuming mid-batch after a restart would silently skip
    /// records. On Apache Kafka, raise it for throughput.
    pub batch_records_max: u32,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            namespace: "tally".to_owned(),
            partitions: TOPIC_PARTITIONS_DEFAULT,
            replication: 1,
            batch_records_max: BATCH_RECORDS_DEFAULT,
        }
    }

    /// The Kafka consumer group id of one of Tally's consumer groups.
    pub fn group_id(&self, group: &str) -> String {
        format!("{}.{group}", self.namespace)
    }

    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers).set(
            "client.id",
            format!("{}-{}", self.namespace, std::process::id()),
        );
        config
    }
}

/// Failures talking to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("kafka: cannot create topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("store: {0}")]
    Store(#[from] tally_store::StoreError),
    /// Records Kafka acknowledged without an offset (a duplicate by the broker's reckoning),
    /// which is not proof that it stored them: the batch is published again.
    #[error("kafka acknowledged {0} records without an offset; publishing the batch again")]
    Unconfirmed(u64),
}
