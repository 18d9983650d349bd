//! The embedded engine: one SQLite file in WAL mode, flushed to disk before a commit returns,
//! so a commit that returned survives a power cut.
//!
//! SQLite allows one writer at a time, so the store keeps exactly one writer connection (commands
//! queue for it instead of spinning on `SQLITE_BUSY`) and a pool of readers that WAL lets run
//! beside the writer. Commands that queue for the writer together commit together (see
//! [`group`]), so the disk's latency is paid once per group, not once per command, and the
//! writer is not held while the disk confirms a group (see [`group::Durability`]): what
//! `synchronous=FULL` does inside each `COMMIT`, the store does after it. Because writes are
//! serialized, the order in which events are inserted is their commit order: an event's
//! position is given when it is inserted, and the log is gap-free by construction.
//!
//! Statements run on the calling thread (see [`sql`]): they take microseconds. So does a
//! group's `COMMIT`, which writes to the operating system's cache; the flush runs aside.

mod backend;
mod checkpoint;
mod durability;
mod group;
mod lease;
pub(crate) mod sql;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use sqlx::ConnectOptions as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

use crate::{ConnectOptions, StoreError};

/// How long a connection waits for a lock held by another process before failing. Within one
/// process the single writer connection means Tally itself never waits on it.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The writer's page cache: 16 MiB, so that the working set of a busy store (orders, stock, the
/// log's recent end, the right edges of the indexes) stays in memory; the default of 2 MiB made
/// every step re-read index pages. Not larger: SQLite walks the whole cache at the end of every
/// transaction while the database is under 1 GiB. When a b-tree page splits, SQLite renumbers
/// pages through a spare number past the 1 GiB mark, and its cache then counts that number as
/// its highest; at the transaction's end it drops pages past the database's end, and with the
/// highest number that far off it visits every page in the cache rather than the few at the
/// end. With 64 MiB that walk was about 3 % of the server's CPU (`perf`, one walk per group
/// commit); with 16 MiB, end to end rose 5 to 7 % (BENCHMARKS.md, 2026-12-05, sixth session).
const WRITER_CACHE_KIB: i64 = 16_384;
/// A reader's page cache. In WAL mode a reader drops its whole cache whenever another
/// connection wrote since its last read, which on a busy store is before nearly every read;
/// emptying a large cache each time cost more than the pages it kept (they come back from the
/// operating system's cache). So it holds 16 pages, about what one read's statements touch:
/// against 2 MiB, 2 to 4 % less CPU per settled order and as much more end to end on SQLite
/// (BENCHMARKS.md, 2026-12-05, second session). Pages a statement's cursors stand on stay in
/// the cache whatever its size, so a long scan is not slowed beyond re-reading evicted pages.
const READER_CACHE_KIB: i64 = 64;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: group::Writer,
    readers: Arc<Readers>,
    /// Keeps the checkpoint thread running while any clone of the store is alive.
    _checkpointer: Arc<checkpoint::Checkpointer>,
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
            .busy_timeout(BUSY_TIMEOUT);
        let path = connect.get_filename().to_path_buf();
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::DataDirectory {
                path: parent.display().to_string(),
                source,
            })?;
        }
        // The schema's migrations, recorded as they always were; then the engine's own
        // connections take over.
        let mut migrating = connect.connect().await?;
        sqlx::migrate!("migrations/sqlite")
            .run(&mut migrating)
            .await?;
        sqlx::Connection::close(migrating).await?;

        let writer = open(&path, false)?;
        writer.pragma_update(
            None,
            "wal_autocheckpoint",
            checkpoint::WRITER_CHECKPOINT_PAGES,
        )?;
        // Each group's commit is flushed by the store after the writer is free again (see
        // `group::Durability`); the checkpoint thread's connection keeps `FULL`, so the log is
        // flushed before a checkpoint copies it into the database file.
        writer.pragma_update(None, "synchronous", "NORMAL")?;
        let checkpointer = checkpoint::Checkpointer::start(path.clone())?;
        let partitions: i64 =
            sql::query("SELECT partitions FROM log_head WHERE id = 1").fetch_scalar(&writer)?;
        // After the writer's first read, by which SQLite has opened the log.
        let durability = Arc::new(group::Durability::open(&writer)?);
        let partitions =
            u32::try_from(partitions).map_err(|e| crate::corrupt("log partitions", e))?;
        Ok(Self {
            writer: group::Writer::new(writer, Arc::clone(&durability)),
            readers: Arc::new(Readers {
                path,
                durability,
                idle: Mutex::new(Vec::new()),
                idle_max: usize::try_from(options.connections_max.max(1)).unwrap_or(usize::MAX),
            }),
            _checkpointer: Arc::new(checkpointer),
            partitions,
            leases: lease::Held::default(),
        })
    }
}

/// Opens one of the engine's connections: the writer, or a read-only one beside it.
fn open(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let connection = Connection::open_with_flags(path, flags)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.set_prepared_statement_cache_capacity(sql::STATEMENT_CACHE_CAPACITY);
    // Group commit runs each command in a savepoint, whose statement journal would otherwise
    // be a temporary file written on every change.
    let cache_kib = if read_only {
        READER_CACHE_KIB
    } else {
        WRITER_CACHE_KIB
    };
    connection.execute_batch(&format!(
        "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL; PRAGMA temp_store = MEMORY; \
         PRAGMA cache_size = -{cache_kib};"
    ))?;
    if !read_only {
        let mode: String =
            connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt(format!(
                "the database would not switch to WAL mode (it is in {mode} mode)"
            )));
        }
    }
    Ok(connection)
}

/// Read-only connections, opened on demand and kept for reuse. A reader is held only for the
/// statements of one call, which never wait on anything else, so the pool never makes a caller
/// wait (beginning a snapshot may wait for a group's flush, see [`group::Durability`]); it
/// keeps at most `idle_max` connections between calls.
#[derive(Debug)]
pub(crate) struct Readers {
    path: PathBuf,
    durability: Arc<group::Durability>,
    idle: Mutex<Vec<Connection>>,
    idle_max: usize,
}

impl Readers {
    /// A reader connection for one call, back to the pool when dropped, inside a read
    /// transaction: every read made through it sees one snapshot, of durable writes only.
    pub(crate) async fn get(&self) -> Result<Reader<'_>, StoreError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let connection = match idle {
            // A read transaction left open would pin an old snapshot for every later call.
            Some(connection) if connection.is_autocommit() => connection,
            Some(_) | None => open(&self.path, true)?,
        };
        // Opened before the guard is taken: committers wait for whoever holds it.
        let visible = self.durability.readable().await?;
        group::begin_snapshot(&connection)?;
        drop(visible);
        Ok(Reader {
            readers: self,
            connection: Some(connection),
        })
    }
}

/// A reader connection lent for one call.
pub(crate) struct Reader<'a> {
    readers: &'a Readers,
    connection: Option<Connection>,
}

impl Deref for Reader<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        // Taken only in `drop`.
        self.connection
            .as_ref()
            .unwrap_or_else(|| unreachable!("a reader is used after it was returned"))
    }
}

impl sql::OnSqlite for Reader<'_> {
    fn connection(&self) -> Result<&Connection, StoreError> {
        Ok(self)
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        // Ends the call's read transaction; a connection that cannot is not kept.
        if connection
            .prepare_cached("COMMIT")
            .and_then(|mut end| end.execute([]))
            .is_err()
        {
            return;
        }
        let mut idle = self
            .readers
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.readers.idle_max {
            idle.push(connection);
        }
    }
}
