//! The embedded engine: one SQLite file in WAL mode with `synchronous=FULL`, so a commit that
//! returned survives a power cut.
//!
//! SQLite allows one writer at a time, so the store keeps exactly one writer connection (commands
//! queue for it instead of spinning on `SQLITE_BUSY`) and a pool of readers that WAL lets run
//! beside the writer. Commands that queue for the writer together commit together (see
//! [`group`]), so the disk's latency is paid once per group, not once per command. Because writes are serialized, the order in which events are
//! inserted is their commit order: an event's position is given when it is inserted, and the
//! log is gap-free by construction.

mod group;
mod lease;
mod store;
mod tx;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::{ConnectOptions, StoreError};

/// How long a connection waits for a lock held by another process before failing. Within one
/// process the single writer connection means Tally itself never waits on it.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Page cache per connection, in KiB when negative (SQLite's convention): 64 MiB, so that the
/// working set of a busy store (orders, stock, the log's recent end) stays in memory; the
/// default of 2 MiB made every step re-read index pages.
const CACHE_SIZE_PRAGMA: &str = "-65536";

#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: group::Writer,
    reader: SqlitePool,
    partitions: u32,
    /// Partition leases held by this process.
    leases: lease::Held,
}

impl SqliteStore {
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            // Group commit runs each command in a savepoint, whose statement journal would
            // otherwise be a temporary file written on every change.
            .pragma("temp_store", "memory")
            .pragma("cache_size", CACHE_SIZE_PRAGMA);
        if let Some(parent) = connect.get_filename().parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::DataDirectory {
                path: parent.display().to_string(),
                source,
            })?;
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(connect.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&writer).await?;
        let writer = group::Writer::new(writer);
        let reader = SqlitePoolOptions::new()
            .max_connections(options.connections_max.max(1))
            .connect_with(connect.read_only(true))
            .await?;
        let partitions: i64 = sqlx::query_scalar("SELECT partitions FROM log_head WHERE id = 1")
            .fetch_one(&reader)
            .await?;
        let partitions =
            u32::try_from(partitions).map_err(|e| crate::corrupt("log partitions", e))?;
        Ok(Self {
            writer,
            reader,
            partitions,
            leases: lease::Held::default(),
        })
    }
}
