//! The store: every command commits its state change, its outbox events and its idempotency
//! record in one database transaction, on SQLite (the embedded default) or PostgreSQL.
//!
//! Everything the store does is written once, over `exec::Exec`: a statement's text (with
//! `$n` placeholders) and its arguments, run on one engine's connection, whose rows read back
//! through one decoder per record. An engine adds only how it binds and runs a statement, the
//! SQL that differs in its dialect, and the mechanisms that really differ (SQLite's single
//! writer and group commit, PostgreSQL's advisory locks, batches and the relay's sequencing).
//! No SQL lives outside this crate.
//!
//! # Layout
//!
//! - [`tx`]: the [`Tx`] trait, the primitives one command transaction is made of (the
//!   `tally-commands` crate composes them into commands), implemented
//!   once by `EngineTx` over the statements of `write`.
//! - `write`: every statement of a command or effect transaction. A new table a command writes
//!   gets its statements here.
//! - `read`: every read and maintenance statement outside a transaction. A new read gets its
//!   statement here and its method on [`Store`] in `backend`.
//! - `backend`: [`Store`] written once for both engines over what each engine gives it.
//! - [`effect`]: a consumer's or webhook's effect on an order and its one write path.
//! - `rows`: rows read back into [`records`], once for both engines.
//! - [`records`]: row types the store returns and accepts; separate from wire and domain types.
//! - [`log`]: the partition function and the shape of log reads shared by both engines.
//! - [`sqlite`] and [`postgres`]: the two engines (connections, group commit, locking, leases),
//!   each with its migrations under `migrations/`. A new table needs a migration in each.

pub mod audit;
mod backend;
mod codec;
pub mod effect;
mod exec;
pub mod lease;
pub mod log;
pub mod postgres;
mod read;
pub mod records;
mod rows;
pub mod sqlite;
pub mod stock;
pub mod tx;
pub mod webhook;
mod write;

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tally_domain::ids::{EventId, OrderId, ProductId, TenantId};
use uuid::Uuid;

pub use lease::Lease;
pub use records::*;
pub use tx::Tx;

/// The status of a dead letter an operator gave up on for good. Discarding one also records
/// its event in the group's inbox, so that reading the log again never applies it.
pub const DISCARDED: &str = "discarded";

/// Which database engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// Failures of the store itself; business refusals are [`Refusal`]s, not errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row does not parse back into its record: data was edited outside Tally or a
    /// migration is missing. Never retried.
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// The database transaction this one was committed with failed to commit (on SQLite,
    /// several commands' transactions commit as one): nothing of it was stored, and a retry may
    /// succeed.
    #[error("the commit failed: {0}")]
    CommitFailed(String),
    #[error("unsupported database URL '{0}': use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("cannot start a thread of the store: {0}")]
    Thread(std::io::Error),
    #[error("cannot create the data directory {path}: {source}")]
    DataDirectory {
        path: String,
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether this is a unique-key violation, which a command reads as "already exists".
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(e)) => e.is_unique_violation(),
            StoreError::Sqlite(e) => matches!(
                e.sqlite_error().map(|e| e.extended_code),
                Some(
                    rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                        | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                )
            ),
            _ => false,
        }
    }

    /// Whether the database is unreachable right now (a retry later may succeed), rather than
    /// the request or the data being wrong.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Database(
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
            ) | StoreError::CommitFailed(_)
        ) || matches!(
            self,
            StoreError::Sqlite(e) if matches!(
                e.sqlite_error_code(),
                Some(
                    rusqlite::ErrorCode::DatabaseBusy
                        | rusqlite::ErrorCode::DatabaseLocked
                        | rusqlite::ErrorCode::SystemIoFailure
                        | rusqlite::ErrorCode::DiskFull
                        | rusqlite::ErrorCode::CannotOpen
                )
            )
        )
    }

    /// Whether this is a foreign-key violation, such as a key for a tenant that does not exist.
    pub fn is_foreign_key_violation(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(e)) => e.is_foreign_key_violation(),
            StoreError::Sqlite(e) => {
                e.sqlite_error().map(|e| e.extended_code)
                    == Some(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY)
            }
            _ => false,
        }
    }
}

/// Pool sizes and other connection settings.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Connections of the PostgreSQL pool, or readers of the SQLite pool (SQLite always has one
    /// writer connection: it allows one writer at a time anyway, and queueing in the pool is
    /// cheaper than spinning on SQLITE_BUSY).
    pub connections_max: u32,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connections_max: 16,
        }
    }
}

/// Opens the store named by `url` (`sqlite://PATH` or `postgres://…`) and applies migrations.
pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(url, options).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(postgres::PgStore::connect(url, options).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}

/// Everything outside a command transaction: reads, tenant set-up, the log and maintenance.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    fn engine(&self) -> Engine;

    /// Starts one command transaction. Dropping it without `commit` rolls it back.
    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError>;

    /// Stores a consumer's effect whose rows are all made, in a transaction of its own, and
    /// returns once it committed (or what kept it from being stored).
    async fn write_effect(
        &self,
        effect: effect::PreparedEffect,
    ) -> Result<effect::EffectOutcome, StoreError>;

    /// Records `events` as applied by `group`, in one transaction: the inbox rows of effects
    /// that wrote nothing else. Rows already there stay as they are.
    async fn record_inbox(
        &self,
        group: &str,
        events: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Checks that the database answers; used by `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn create_tenant(&self, tenant: &NewTenant) -> Result<(), StoreError>;
    async fn create_api_key(&self, key: &NewApiKey) -> Result<(), StoreError>;
    async fn find_api_key(&self, key_hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// The idempotency record of a key, read outside any transaction so that a replay does not
    /// take the writer.
    async fn find_idempotency_record(
        &self,
        tenant: TenantId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;
    /// Deletes up to `limit` records that expired before `now`; returns how many.
    async fn purge_idempotency_records(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError>;

    async fn product(
        &self,
        tenant: TenantId,
        id: ProductId,
    ) -> Result<Option<ProductRecord>, StoreError>;
    /// Stock of a SKU at every location, or `None` when the tenant has no such SKU.
    async fn stock_levels(
        &self,
        tenant: TenantId,
        sku: &str,
    ) -> Result<Option<Vec<StockRecord>>, StoreError>;
    /// The stock rows of `skus` as last committed, by SKU and location, read without a lock.
    async fn read_stock(
        &self,
        tenant: TenantId,
        skus: &[String],
    ) -> Result<Vec<LockedStock>, StoreError>;
    async fn order(&self, tenant: TenantId, id: OrderId)
    -> Result<Option<OrderRecord>, StoreError>;
    /// Every event about `subject`, oldest first, whether or not the relay has logged it yet.
    async fn timeline(
        &self,
        tenant: TenantId,
        subject: &str,
    ) -> Result<Vec<TimelineEntry>, StoreError>;
    /// The order and its timeline (every event about it, oldest first) as of one moment: an
    /// order's status and the events that led to it are written together, and read apart they
    /// could show a status its timeline does not.
    async fn order_and_timeline(
        &self,
        tenant: TenantId,
        id: OrderId,
    ) -> Result<Option<(OrderRecord, Vec<TimelineEntry>)>, StoreError>;
    /// Orders matching `filter`, newest first, at most `limit`.
    async fn orders(
        &self,
        tenant: TenantId,
        filter: &OrderFilter,
        limit: u32,
    ) -> Result<Vec<OrderRecord>, StoreError>;

    /// Number of partitions of the embedded log, fixed when the database was created.
    fn log_partitions(&self) -> u32;
    /// Gives log positions to up to `limit` committed outbox rows, in an order that keeps every
    /// partition key's events in commit order. Returns how many rows were positioned. On SQLite,
    /// rows are positioned when inserted and this returns 0.
    async fn sequence_outbox(&self, limit: u32) -> Result<u64, StoreError>;
    /// Events after `after` in log order, of one partition or of all.
    async fn read_log(
        &self,
        partition: Option<u32>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LogEvent>, StoreError>;
    /// The last position a consumer group has processed in a partition (0 when it has none).
    async fn consumer_offset(&self, group: &str, partition: u32) -> Result<i64, StoreError>;
    async fn commit_consumer_offset(
        &self,
        group: &str,
        partition: u32,
        position: i64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// The last log position of `partition` whose event happened before `time` (0 if none):
    /// where a consumer group rewound to `time` resumes.
    async fn position_before(&self, partition: u32, time: DateTime<Utc>)
    -> Result<i64, StoreError>;
    /// Outbox rows not yet in the log: the relay's lag.
    async fn outbox_pending(&self) -> Result<i64, StoreError>;
    /// Events in the log past `group`'s offsets, over every partition: how far the group lags.
    /// Counted up to [`log::BACKLOG_COUNT_MAX`] per partition, so that a gauge read every second
    /// costs little however far behind the group is.
    async fn log_backlog(&self, group: &str) -> Result<i64, StoreError>;
    /// Joins the processes sharing `group`'s leases, for as long as the returned membership is
    /// held (it ends with the process, like a lease).
    async fn join(&self, group: &str) -> Result<Box<dyn Lease>, StoreError>;
    /// How many live processes have joined `group`: each takes its fair share of the leases.
    async fn members(&self, group: &str) -> Result<u32, StoreError>;
    /// Takes the lease of `group` on `partition` if no live process holds it (see [`lease`]).
    async fn try_lease(
        &self,
        group: &str,
        partition: u32,
    ) -> Result<Option<Box<dyn Lease>>, StoreError>;
    /// One event by id, whether or not it is in the log yet.
    async fn event(&self, id: EventId) -> Result<Option<LogEvent>, StoreError>;
    /// Which of `events` `group` has applied (read outside any transaction, as a shortcut: a
    /// consumer skips them without calling partners again).
    async fn inbox_holds(
        &self,
        group: &str,
        events: &[EventId],
    ) -> Result<HashSet<EventId>, StoreError>;
    /// Whether `group` has applied `event`.
    async fn inbox_contains(&self, group: &str, event: EventId) -> Result<bool, StoreError> {
        Ok(self.inbox_holds(group, &[event]).await?.contains(&event))
    }

    /// Whether `group` parked `event` as a dead letter that is open or being retried: its
    /// effect is not applied, and what its partner call did is unknown.
    async fn dead_letter_unsettled(&self, group: &str, event: EventId) -> Result<bool, StoreError>;
    /// A tenant's dead letters, newest first, optionally of one status.
    async fn dead_letters(
        &self,
        tenant: TenantId,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeadLetterRecord>, StoreError>;
    async fn dead_letter(
        &self,
        tenant: TenantId,
        id: Uuid,
    ) -> Result<Option<DeadLetterRecord>, StoreError>;
    /// Moves a letter from `from` to `to`; `false` when it was not in `from`.
    async fn set_dead_letter_status(
        &self,
        tenant: TenantId,
        id: Uuid,
        from: &str,
        to: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Seals up to `limit` audit drafts into their tenants' chains, in insertion order, one
    /// sealing transaction at a time. Returns how many were sealed.
    async fn seal_audit(&self, limit: u32) -> Result<u64, StoreError>;
    /// A tenant's sealed audit chain in sequence order, its stored head, and how many of its
    /// records are not sealed yet.
    async fn audit_chain(&self, tenant: TenantId) -> Result<AuditChain, StoreError>;
    /// The sealed and unsealed audit records about one entity, oldest first.
    async fn audit_of(
        &self,
        tenant: TenantId,
        entity_type: &str,
        entity_id: &str,
    ) -> Result<Vec<AuditRow>, StoreError>;
    async fn tenants(&self) -> Result<Vec<TenantId>, StoreError>;
    /// Every journal entry of a tenant with its postings, in insertion order.
    async fn journal(&self, tenant: TenantId) -> Result<Vec<StoredEntry>, StoreError>;
    /// Postings of one account, oldest first, with their entry's kind.
    async fn account_postings(
        &self,
        tenant: TenantId,
        account: &str,
    ) -> Result<Vec<AccountPosting>, StoreError>;
    /// Orders in a terminal status, with their currency: their receivables must be zero.
    async fn settled_orders(&self, tenant: TenantId) -> Result<Vec<(OrderId, String)>, StoreError>;
    /// Every stock row with the sums of its movements.
    async fn stock_reconciliation(&self) -> Result<Vec<StockReconciliation>, StoreError>;
    /// How many orders of a tenant are in each status.
    async fn order_status_counts(&self, tenant: TenantId)
    -> Result<Vec<(String, i64)>, StoreError>;
    /// Letters of `group` an operator asked to retry.
    async fn dead_letters_to_retry(
        &self,
        group: &str,
        limit: u32,
    ) -> Result<Vec<DeadLetterRecord>, StoreError>;
}

/// Microseconds since the Unix epoch, SQLite's representation of a time.
pub(crate) fn to_micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

pub(crate) fn from_micros(micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {micros} is out of range")))
}

pub(crate) fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {error}"))
}
