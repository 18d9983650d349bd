//! Partition leases: which process works on a partition of the log for a group, when several
//! could.
//!
//! A relay publishing to Kafka must be the only one publishing a partition, or two relays could
//! interleave one key's events. A lease is held for as long as the process lives and is lost the
//! moment it dies: on PostgreSQL it is a session advisory lock on a connection of its own, which
//! the server drops with the connection; on SQLite, one process owns the database anyway and the
//! lease is a mark in that process's memory.
//!
//! The holder records progress through [`Lease::commit_offset`], which runs on the lease's own
//! connection: it can only succeed while the lease is held, so a holder that lost its lease
//! learns it at the next commit instead of overwriting a successor's progress unnoticed.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::StoreError;

/// The exclusive right of one process to work on one partition for one group.
#[async_trait]
pub trait Lease: Send + Sync + std::fmt::Debug {
    fn group(&self) -> &str;
    fn partition(&self) -> u32;

    /// Checks that the lease is still held (its connection answers); an error means it is lost
    /// and the holder must stop working on the partition.
    async fn confirm(&mut self) -> Result<(), StoreError>;

    /// Records that the group has processed the partition up to `position`.
    async fn commit_offset(&mut self, position: i64, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Gives the partition up so that another process can take it.
    async fn release(self: Box<Self>) -> Result<(), StoreError>;
}
