//! The scale-out engine: PostgreSQL, with any number of Tally processes sharing one database.
//!
//! Commands from many connections commit concurrently, so an event's insertion order (`seq`) is
//! not its commit order. Two mechanisms keep the log gap-free and ordered per partition key:
//!
//! 1. A command takes a transaction-scoped advisory lock per partition key before appending its
//!    events, and keeps it until commit. Two transactions appending under one key therefore
//!    allocate `seq` in commit order.
//! 2. Events enter the log only when the relay gives them a position, in `seq` order, one relay
//!    transaction at a time (serialized on the `log_head` row). Positions thus become visible in
//!    strictly increasing order: a reader that has seen position P will never later find an
//!    event below P. An event that commits late simply gets a later position.

mod backend;
mod batch;
mod columns;
mod effect;
mod exec;
mod fields;
mod gather;
mod lease;
mod reads;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::{ConnectOptions, StoreError};

/// How long a command waits for a pool connection before failing with a store error.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Advisory lock classes (the first key of `pg_advisory_xact_lock(int, int)`), so that the two
/// uses of advisory locks never collide with each other.
pub(crate) const LOCK_CLASS_PARTITION_KEY: i32 = 0x7461_0001;
pub(crate) const LOCK_CLASS_IDEMPOTENCY_KEY: i32 = 0x7461_0002;
pub(crate) const LOCK_CLASS_AUDIT_SEALER: i32 = 0x7461_0003;
/// Session locks held by partition leases (see `crate::lease`).
pub(crate) const LOCK_CLASS_LEASE: i32 = 0x7461_0004;

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    partitions: u32,
    /// Prepared effects on their way to be stored in batches (see [`batch`]).
    effects: batch::EffectQueue,
    /// Reads of orders by id on their way to be made in batches (see [`reads`]).
    reads: reads::OrderReads,
}

impl PgStore {
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Self, StoreError> {
        let connect: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(options.connections_max.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(connect)
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        let partitions: i32 = sqlx::query_scalar("SELECT partitions FROM log_head WHERE id = 1")
            .fetch_one(&pool)
            .await?;
        let partitions =
            u32::try_from(partitions).map_err(|e| crate::corrupt("log partitions", e))?;
        let effects = batch::EffectQueue::start(pool.clone());
        let reads = reads::OrderReads::start(&pool);
        Ok(Self {
            pool,
            partitions,
            effects,
            reads,
        })
    }

    /// The pool, for tests that need to hold transactions open across an interleaving.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
