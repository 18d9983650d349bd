//! Consumer groups over the embedded log. A group reads each partition in position order and
//! keeps, per partition, the last position it has processed in the store, so a restarted
//! consumer continues where the group left off. Delivery is at-least-once: a consumer that
//! crashes after applying an event but before committing its offset sees the event again.
//!
//! # Layout
//!
//! - [`Subscription`]: one consumer's cursor over a set of partitions.

use std::sync::Arc;

use tally_domain::clock::Clock;
use tally_store::{LogEvent, Store, StoreError};

/// Events read from one partition per poll; bounds memory and the length of one read.
pub const POLL_COUNT_MAX: u32 = 500;

/// A consumer group member reading a set of partitions.
#[derive(Debug)]
pub struct Subscription {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    group: String,
    /// (partition, last position read) for every partition this member owns.
    cursors: Vec<(u32, i64)>,
}

impl Subscription {
    /// Joins `group` on `partitions`, starting after each partition's committed offset.
    pub async fn open(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        group: &str,
        partitions: impl IntoIterator<Item = u32>,
    ) -> Result<Self, StoreError> {
        let mut cursors = Vec::new();
        for partition in partitions {
            assert!(
                partition < store.log_partitions(),
                "partition {partition} out of range"
            );
            cursors.push((partition, store.consumer_offset(group, partition).await?));
        }
        Ok(Self {
            store,
            clock,
            group: group.to_owned(),
            cursors,
        })
    }

    /// Joins `group` on every partition of the log.
    pub async fn open_all(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        group: &str,
    ) -> Result<Self, StoreError> {
        let partitions = 0..store.log_partitions();
        Self::open(store, clock, group, partitions).await
    }

    /// The next events of every owned partition, each partition's in position order. Advances
    /// the read cursors but not the committed offsets.
    pub async fn poll(&mut self) -> Result<Vec<LogEvent>, StoreError> {
        let mut batch = Vec::new();
        for (partition, cursor) in &mut self.cursors {
            let events = self
                .store
                .read_log(Some(*partition), *cursor, POLL_COUNT_MAX)
                .await?;
            if let Some(last) = events.last() {
                assert!(last.position > *cursor, "the log went backwards");
                *cursor = last.position;
            }
            batch.extend(events);
        }
        Ok(batch)
    }

    /// Records that every event up to `position` in `partition` has been processed.
    pub async fn commit(&self, partition: u32, position: i64) -> Result<(), StoreError> {
        self.store
            .commit_consumer_offset(&self.group, partition, position, self.clock.now())
            .await
    }

    /// Commits the read cursor of every partition.
    pub async fn commit_all(&self) -> Result<(), StoreError> {
        for (partition, cursor) in &self.cursors {
            self.commit(*partition, *cursor).await?;
        }
        Ok(())
    }
}
