//! Checkpoints off the writer's path.
//!
//! In WAL mode SQLite copies the log back into the database file (a checkpoint) once the log
//! passes a size, by default inside whichever commit crosses it. That commit then copies
//! thousands of pages and waits for a second flush, holding the one writer, and with it every
//! command, for several times a plain commit; under load that was a third of all commits. So
//! the writer checkpoints only as a backstop, and a thread of the store's own, on a connection
//! of its own, runs passive checkpoints often: they copy what the log holds beside the writer,
//! wait for nobody, and let the log start over from its beginning once it is all copied.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::Duration;

use crate::StoreError;

/// How often the checkpoint thread copies the log into the database file.
pub(super) const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// Log pages at which the writer checkpoints itself, should the thread fall behind: 64 MiB of
/// 4 KiB pages, against SQLite's default of 1,000.
pub(super) const WRITER_CHECKPOINT_PAGES: u32 = 16_384;

/// Runs passive checkpoints until dropped, with every clone of the store that holds it.
#[derive(Debug)]
pub(super) struct Checkpointer {
    /// Dropping it ends the thread.
    _stop: Sender<()>,
}

impl Checkpointer {
    pub(super) fn start(path: PathBuf) -> Result<Self, StoreError> {
        let connection = super::open(&path, false)?;
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("tally-sqlite-checkpoint".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_INTERVAL)
                {
                    if let Err(error) = connection.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                        tracing::warn!(%error, "a SQLite checkpoint failed; the next one retries");
                    }
                }
            })
            .map_err(StoreError::Thread)?;
        Ok(Self { _stop: stop })
    }
}
