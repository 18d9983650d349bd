//! Rewinding a consumer group on Kafka: its committed offsets move back to the first record at
//! or after a time (or to the beginning), and the group's workers resume there. Events applied
//! before are skipped by the group's inbox; effects are not repeated.
//!
//! Kafka accepts offsets from outside a group only while the group has no live members: stop
//! the group's workers, rewind, start them again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::{BusError, KafkaConfig, topics};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Where a rewound group resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewind {
    Beginning,
    /// The first record whose time is at or after this one.
    Time(DateTime<Utc>),
}

/// A partition of a topic and the offset the group resumes at in it (`None`: at the end).
pub type Resumes = Vec<(String, i32, Option<i64>)>;

/// Moves `group`'s committed offsets on every topic to `to`. Blocking: run it off the runtime.
pub fn rewind(config: &KafkaConfig, group: &str, to: Rewind) -> Result<Resumes, BusError> {
    let consumer: BaseConsumer = config
        .client()
        .set("group.id", config.group_id(group))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut wanted = TopicPartitionList::new();
    for topic in topics::all(config) {
        let metadata = consumer.fetch_metadata(Some(&topic), TIMEOUT)?;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let offset = match to {
                Rewind::Beginning => Offset::Beginning,
                Rewind::Time(time) => Offset::Offset(time.timestamp_millis()),
            };
            wanted.add_partition_offset(&topic, partition.id(), offset)?;
        }
    }
    let resolved = match to {
        Rewind::Time(_) => consumer.offsets_for_times(wanted, TIMEOUT)?,
        Rewind::Beginning => {
            let mut resolved = TopicPartitionList::new();
            for element in wanted.elements() {
                let (low, _) =
                    consumer.fetch_watermarks(element.topic(), element.partition(), TIMEOUT)?;
                resolved.add_partition_offset(
                    element.topic(),
                    element.partition(),
                    Offset::Offset(low),
                )?;
            }
            resolved
        }
    };
    let mut commit = TopicPartitionList::new();
    let mut resumes = Vec::new();
    for element in resolved.elements() {
        let offset = match element.offset() {
            Offset::Offset(offset) => Some(offset),
            // No record at or after the time: the group resumes at the end.
            _ => None,
        };
        let at = match offset {
            Some(offset) => Offset::Offset(offset),
            None => {
                let (_, high) =
                    consumer.fetch_watermarks(element.topic(), element.partition(), TIMEOUT)?;
                Offset::Offset(high)
            }
        };
        commit.add_partition_offset(element.topic(), element.partition(), at)?;
        resumes.push((element.topic().to_owned(), element.partition(), offset));
    }
    consumer.commit(&commit, CommitMode::Sync)?;
    Ok(resumes)
}
