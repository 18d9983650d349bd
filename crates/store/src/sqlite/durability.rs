//! Durability of group commit: the write-ahead log flushed away from the writer, and readers
//! kept from seeing a group before it is on disk (see [`super::group`]).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use rusqlite::Connection;
use tokio::sync::{Mutex, RwLock};

use super::group::{end_transaction, frame};
use crate::StoreError;

/// The statements that begin a reader's snapshot: SQLite takes it at a read transaction's
/// first read, not at its `BEGIN`.
const BEGIN_READ: &str = "BEGIN";
const FIRST_READ: &str = "SELECT 1 FROM sqlite_schema LIMIT 1";

/// Makes committed groups durable away from the writer, and keeps readers from seeing a group
/// before it is.
///
/// The writer runs with `synchronous=NORMAL`: SQLite's `COMMIT` writes the group's pages to
/// the write-ahead log and returns without waiting for the disk. The group's committer then
/// lets go of the writer and flushes the log itself (`fdatasync`, what `synchronous=FULL`
/// would have done inside the `COMMIT`), and only then tells the members how it went. So a
/// commit that returned is durable exactly as before, but the writer is not held while the
/// disk confirms: the next group's members run their statements meanwhile, and its committer
/// waits for the flush before it commits, so one group at a time is between its `COMMIT` and
/// its flush. Under load the flush was a third of the time the writer was held.
///
/// What a reader sees must be durable too: an event the saga acts on, or an idempotency record
/// it replays, must not vanish in a power cut. So a reader begins its snapshot only while no
/// group is between its `COMMIT` and its flush: readers hold `visible` shared for the moment
/// it takes to begin a read transaction, and a committer holds it exclusively from before its
/// `COMMIT` until the log is flushed. Readers that arrive meanwhile wait for the flush, and are
/// let in before the next group's commit (the lock is fair). The writer itself may read a group
/// before it is flushed (the next group's members run meanwhile); those members commit after
/// it, and one that rolls back first in its group waits for that flush (see `group::undo`).
#[derive(Debug)]
pub(crate) struct Durability {
    /// The write-ahead log's path, for messages.
    wal: PathBuf,
    /// The write-ahead log, open for the store's life: the operating system reports a failed
    /// write-back once to each open file, so a file opened afresh for each flush could miss a
    /// failure another connection's sync (the checkpoint's) was told of.
    log: std::fs::File,
    pub(super) visible: RwLock<()>,
    /// Held by a committer from before it takes the writer until its group is flushed.
    pub(super) flushing: Mutex<()>,
    /// Set when a flush failed: what was committed may not be on disk, and nothing may read or
    /// write until the store is opened again (the log is then read from the disk as it is).
    failed: OnceLock<String>,
    /// Tests hold it exclusively to keep flushes from starting.
    #[cfg(test)]
    pub(super) flushes: RwLock<()>,
    /// Tests set it to make flushes fail.
    #[cfg(test)]
    pub(super) refuse: std::sync::atomic::AtomicBool,
}

impl Durability {
    /// Opens the write-ahead log of the database `writer` is connected to, which must be in WAL
    /// mode and have read from it (SQLite creates the log then). The path is SQLite's own, with
    /// links resolved, as SQLite names its log after it.
    pub(crate) fn open(writer: &Connection) -> Result<Self, StoreError> {
        let database = writer
            .path()
            .filter(|path| !path.is_empty())
            .ok_or_else(|| StoreError::Corrupt("the SQLite writer has no database file".into()))?;
        let wal = PathBuf::from(format!("{database}-wal"));
        let log = std::fs::File::open(&wal).map_err(|source| StoreError::DataDirectory {
            path: wal.display().to_string(),
            source,
        })?;
        Ok(Self {
            wal,
            log,
            visible: RwLock::new(()),
            flushing: Mutex::new(()),
            failed: OnceLock::new(),
            #[cfg(test)]
            flushes: RwLock::new(()),
            #[cfg(test)]
            refuse: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Fails once a flush failed.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        match self.failed.get() {
            Some(reason) => Err(StoreError::CommitFailed(format!(
                "the store stopped: {reason}; restart it"
            ))),
            None => Ok(()),
        }
    }

    /// Waits until no group is between its `COMMIT` and its flush; while the guard is held,
    /// none is, so a read transaction begun meanwhile ([`begin_snapshot`]) sees durable groups
    /// only. The guard must not be held across anything that waits.
    pub(crate) async fn readable(
        &self,
    ) -> Result<tokio::sync::RwLockReadGuard<'_, ()>, StoreError> {
        let visible = self.visible.read().await;
        self.check()?;
        Ok(visible)
    }

    /// Flushes the write-ahead log to the disk; what went wrong, if anything.
    pub(super) fn flush(&self) -> Result<(), String> {
        let started = Instant::now();
        let flushed = self.log.sync_data();
        #[cfg(test)]
        let flushed = flushed.and_then(|()| {
            if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
                Err(std::io::Error::other("refused by the test"))
            } else {
                Ok(())
            }
        });
        metrics::histogram!("tally_sqlite_wal_flush_seconds")
            .record(started.elapsed().as_secs_f64());
        flushed.map_err(|error| {
            self.fail(format!(
                "the disk did not confirm the write-ahead log {}: {error}",
                self.wal.display()
            ))
        })
    }

    /// Stops the store: a committed group may not be on disk, and readers would see it.
    pub(super) fn fail(&self, reason: String) -> String {
        tracing::error!(%reason, "the SQLite store stops: committed groups may not be durable");
        self.failed.get_or_init(|| reason.clone());
        reason
    }

    /// [`Durability::flush`] on a thread of its own, so that the runtime's threads run on.
    pub(super) async fn flush_aside(self: Arc<Self>) -> Result<(), String> {
        #[cfg(test)]
        drop(self.flushes.read().await);
        let durability = Arc::clone(&self);
        tokio::task::spawn_blocking(move || durability.flush())
            .await
            .unwrap_or_else(|error| {
                // Whether the log reached the disk is unknown.
                Err(self.fail(format!(
                    "the flush of the write-ahead log did not finish: {error}"
                )))
            })
    }
}

/// Begins a read transaction on `connection`, its snapshot taken now: call it holding
/// [`Durability::readable`]'s guard.
pub(crate) fn begin_snapshot(connection: &Connection) -> Result<(), StoreError> {
    frame(connection, BEGIN_READ)?;
    let begun = connection
        .prepare_cached(FIRST_READ)
        .and_then(|mut first| first.query([])?.next().map(|_| ()));
    if let Err(error) = begun {
        end_transaction(connection);
        return Err(error.into());
    }
    Ok(())
}
