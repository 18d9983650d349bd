//! Dispatchers: consumer groups over the log that apply each event's effect exactly once.
//!
//! Delivery is at-least-once; exactness comes from the effect's own transaction, which also
//! records the event in the group's inbox. A duplicate delivery finds the event in the inbox
//! and does nothing. Partner calls made before that
//! transaction carry idempotency keys derived from (group, event id, step), so a call repeated
//! after a crash is applied by the partner once.
//!
//! Each partition is consumed by its own task, a batch at a time. Within a batch, events are
//! split into lanes by partition key: one key's events are applied one after another, in
//! position order, while different keys' lanes run concurrently (up to
//! [`runner::LANES_IN_FLIGHT_MAX`]), so a partition is not held to one partner call at a time
//! and concurrent effects share the store's commits. The partition's offset moves past the batch
//! once every lane has finished; a crash before that re-delivers the batch, and the inbox skips
//! what was applied. An effect that writes nothing to the store but its inbox row (a
//! notification, a step that no longer applies) leaves the row to its batch, which writes them
//! all in one transaction once its lanes finished, before the offset moves: the single SQLite
//! writer is taken once for them, not once per event. A failing event is retried with capped
//! exponential backoff and full jitter; a permanent failure, or the last failed attempt,
//! becomes a dead letter and its lane moves on.
//!
//! # Layout
//!
//! - [`Handler`] and [`Delivery`]: what a consumer group implements and the transaction helper
//!   it is handed.
//! - [`Dispatcher`]: the partition loops and the dead-letter retry loop.
//! - [`backoff`]: the retry delays.
//!
//! A new effect of events (a consumer group) is a [`Handler`] in the crate that owns the
//! effect (the saga and notifications live in `tally-checkout`), started by `tally::server`;
//! its writes go through [`Delivery`] so that they commit with the group's inbox row. Work that
//! runs later and retries for hours (a job) does not belong here: it goes on the job queue.

mod backoff;
mod runner;

use std::sync::Arc;

use async_trait::async_trait;
use tally_domain::clock::Clock;
use tally_domain::ids::EventId;
use tally_store::effect::{EffectOutcome, Once, OrderChange, PreparedEffect, settled};
use tally_store::{DeadLetterRecord, LogEvent, Store, StoreError, Tx};

pub use backoff::{ATTEMPTS_MAX, RETRY_DELAY_MS_BASE, RETRY_DELAY_MS_MAX, retry_delay};
pub use runner::Dispatcher;

/// Why applying an event failed, and so whether to try again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EffectError {
    /// Might succeed later: a partner timed out or answered 5xx, the store was unavailable.
    #[error("transient: {0}")]
    Transient(String),
    /// Will fail the same way every time: a malformed event, a partner refusing the request.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl From<StoreError> for EffectError {
    /// Exhaustive, so that a new kind of store error forces a decision here.
    fn from(error: StoreError) -> Self {
        match &error {
            // Serialization failures and deadlocks surface as database errors too; they are
            // worth another attempt, and a real bug exhausts the attempts and dead-letters.
            // `Corrupt` is tried again too, for now: besides stored data that does not parse
            // (which reads the same on every attempt), the SQLite writer reports its own broken
            // invariants under it ("a queued job did not run", "a member outlived its group"),
            // which a later attempt on a sound writer gets past. Those become errors of their
            // own before `Corrupt` goes straight to the dead letters.
            StoreError::Corrupt(_)
            | StoreError::Database(_)
            | StoreError::Sqlite(_)
            | StoreError::CommitFailed(_)
            | StoreError::Thread(_) => EffectError::Transient(format!("store: {error}")),
            // Failures of start-up, which an effect meets only if the store is being replaced
            // under it: nothing an attempt later changes.
            StoreError::Migrate(_)
            | StoreError::UnsupportedUrl(_)
            | StoreError::DataDirectory { .. } => EffectError::Permanent(format!("store: {error}")),
        }
    }
}

/// A consumer group's behaviour.
#[async_trait]
pub trait Handler: Send + Sync + std::fmt::Debug {
    /// The group's name: offsets, inbox rows and dead letters are kept under it.
    fn group(&self) -> &'static str;

    /// Whether the group acts on events of this type; others are passed over.
    fn wants(&self, event_type: &str) -> bool;

    /// Applies `event`: partner calls first (idempotently), then one transaction opened with
    /// [`Delivery::begin`] and closed with [`Delivery::finish`], or, when the effect writes
    /// nothing to the store, [`Delivery::applied`].
    async fn handle(&self, event: &LogEvent, delivery: &Delivery) -> Result<(), EffectError>;
}

/// Where a delivered event came from, which decides what its effect's transaction records
/// besides the effect.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A partition of the embedded log or of Kafka. The effect's transaction records only the
    /// inbox row: the partition's offset moves after every event before it was applied too
    /// (the embedded log's batch, Kafka's stored offset), which the effect cannot know.
    Partition,
    /// The retry of a dead letter, which must not move any offset (the partition is past it
    /// already); the letter is marked retried in the effect's transaction.
    DeadLetter(Box<DeadLetterRecord>),
}

/// Events of one batch whose effects wrote nothing to the store, waiting for their inbox rows,
/// which the dispatcher writes together in one transaction once the batch's lanes finished
/// (see [`Delivery::applied`]).
pub(crate) type Deferred = Arc<std::sync::Mutex<Vec<EventId>>>;

/// The transaction helper of one delivery of one event.
#[derive(Debug)]
pub struct Delivery {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    group: &'static str,
    event: LogEvent,
    origin: Origin,
    /// Woken after the effect commits: its events are the next steps of other consumers.
    wake: Arc<tokio::sync::Notify>,
    /// Where [`Delivery::applied`] leaves the event's inbox row, when the dispatcher writes the
    /// rows of a partition's batch together; `None` (a dead letter's retry) writes it at once.
    deferred: Option<Deferred>,
}

impl Delivery {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        group: &'static str,
        event: LogEvent,
        origin: Origin,
        wake: Arc<tokio::sync::Notify>,
    ) -> Self {
        Self {
            store,
            clock,
            group,
            event,
            origin,
            wake,
            deferred: None,
        }
    }

    /// Leaves the inbox row of an effect that writes nothing else to `deferred`, for the
    /// dispatcher to write with the rest of its batch.
    #[must_use]
    pub(crate) fn deferring_to(mut self, deferred: Deferred) -> Self {
        self.deferred = Some(deferred);
        self
    }

    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The idempotency key of `step` of this delivery, for partner calls.
    pub fn idempotency_key(&self, step: &str) -> String {
        tally_domain::idempotency::step_key(self.group, self.event.id, step)
    }

    /// Begins the effect's transaction and claims the event in the group's inbox. `None` means
    /// the event was applied already: the handler must stop, changing nothing.
    pub async fn begin(&self) -> Result<Option<Box<dyn Tx>>, EffectError> {
        let mut tx = self.store.begin().await?;
        if tx
            .insert_inbox(self.group, self.event.id, self.clock.now())
            .await?
        {
            return Ok(Some(tx));
        }
        match &self.origin {
            // A retried letter whose event was applied meanwhile is settled, not retried again.
            Origin::DeadLetter(letter) => {
                tx.upsert_dead_letter(&settled(letter, self.clock.now()))
                    .await?;
                tx.commit().await?;
            }
            Origin::Partition => tx.rollback().await?,
        }
        Ok(None)
    }

    /// Records the event as applied by an effect that wrote nothing to the store: a partner
    /// call alone (made with its idempotency key), or nothing at all because the event no
    /// longer applies. From a partition, the inbox row joins the batch's: the
    /// store's writer is taken once for them all, not once per event. A crash before that
    /// write delivers the event again, and the partner call repeats under the same key, which
    /// the partner applies once, as after a crash before any effect's commit. It is the last
    /// thing a handler does: once called, the event counts as applied even if the handler then
    /// returns an error.
    pub async fn applied(&self) -> Result<(), EffectError> {
        if let Some(deferred) = &self.deferred {
            deferred
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(self.event.id);
            return Ok(());
        }
        if let Some(tx) = self.begin().await? {
            self.finish(tx).await?;
        }
        Ok(())
    }

    /// Stores an effect whose rows are all made, with the event's inbox row, in a transaction
    /// of its own: on SQLite one of many run in a single hold of the writer, on PostgreSQL one
    /// round trip. `Ok(false)` when the order changed since `change` was made from it, or a
    /// reservation in it no longer fits its stock row, and nothing was stored: the effect must
    /// be made again from the order and stock as they are now.
    pub async fn write(&self, change: OrderChange) -> Result<bool, EffectError> {
        let settles = match &self.origin {
            Origin::Partition => None,
            Origin::DeadLetter(letter) => Some((**letter).clone()),
        };
        let effect = PreparedEffect {
            once: Once::Inbox {
                group: self.group,
                event: self.event.id,
            },
            settles,
            change,
        };
        match self.store.write_effect(effect).await? {
            EffectOutcome::Written => {
                self.wake.notify_waiters();
                Ok(true)
            }
            EffectOutcome::AlreadyApplied => Ok(true),
            EffectOutcome::OrderChanged | EffectOutcome::StockTaken => Ok(false),
        }
    }

    /// Marks a retried dead letter settled (for such a delivery) and commits.
    pub async fn finish(&self, mut tx: Box<dyn Tx>) -> Result<(), EffectError> {
        match &self.origin {
            Origin::Partition => {}
            Origin::DeadLetter(letter) => {
                tx.upsert_dead_letter(&settled(letter, self.clock.now()))
                    .await?;
            }
        }
        tx.commit().await?;
        self.wake.notify_waiters();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves that a failed commit, a thread that could not start and (for now, see the
    /// conversion) corrupt data are tried again, and that a store which cannot be opened is not.
    #[test]
    fn store_errors_are_transient_unless_nothing_later_changes_them() {
        let corrupt = EffectError::from(StoreError::Corrupt("saga: expected value".into()));
        assert!(matches!(corrupt, EffectError::Transient(_)), "{corrupt}");
        let url = EffectError::from(StoreError::UnsupportedUrl("mysql://".into()));
        assert!(matches!(url, EffectError::Permanent(_)), "{url}");
        let commit = EffectError::from(StoreError::CommitFailed("disk".into()));
        assert!(matches!(commit, EffectError::Transient(_)), "{commit}");
        let unreadable = EffectError::from(StoreError::Thread(std::io::Error::other("spawn")));
        assert!(
            matches!(unreadable, EffectError::Transient(_)),
            "{unreadable}"
        );
    }
}
