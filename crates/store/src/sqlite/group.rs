//! Group commit on SQLite's single writer: many commands' transactions share one SQLite
//! transaction, and so one wait for the disk.
//!
//! With `synchronous=FULL` every SQLite commit waits for the disk to confirm the write-ahead
//! log (about a millisecond or more), and with one writer that caps the store at some hundreds
//! of commits a second however much CPU is idle. So a command's transaction is a *member*: a
//! savepoint inside the writer's open SQLite transaction. Committing a member releases its
//! savepoint and queues for the writer again, behind the commands that were waiting meanwhile;
//! those join the same SQLite transaction, and the first member back at the head of the queue
//! commits the whole group. Every member's commit returns only after the group's did, with its
//! outcome. Rolling a member back (or dropping it) undoes its savepoint alone.
//!
//! What a command relies on is unchanged: its writes are atomic, readers see them only after
//! its commit returned, and a commit that returned is durable. A member sees the writes of the
//! members before it in its group; it commits with them or fails with them.

use std::sync::{Arc, OnceLock};

use sqlx::sqlite::{SqliteArguments, SqliteConnection, SqlitePool, SqliteQueryResult};
use sqlx::{Sqlite, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::StoreError;

/// Members committed by one SQLite transaction at most. Bounds how long the first member of a
/// group waits for the others and how much one failed commit takes down with it.
pub const GROUP_COUNT_MAX: u32 = 256;

/// The one savepoint name: members run one at a time, so one level is ever open.
const SAVEPOINT: &str = "tally_member";

/// The store's single writer connection, shared by group commit.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    pool: SqlitePool,
    group: Arc<Mutex<Group>>,
}

#[derive(Debug, Default)]
struct Group {
    open: Option<Open>,
}

/// The writer's open SQLite transaction.
#[derive(Debug)]
struct Open {
    tx: Transaction<'static, Sqlite>,
    /// Members released into `tx`, waiting for it to commit.
    members: u32,
    /// A member was dropped without ending: its savepoint must be rolled back before anything
    /// else runs on `tx`.
    abandoned: bool,
    /// What the group's commit came to, set once by whoever ends `tx`.
    outcome: Arc<OnceLock<Result<(), String>>>,
}

impl Writer {
    pub(crate) fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            group: Arc::new(Mutex::new(Group::default())),
        }
    }

    /// Begins a member: waits for the writer, opening a SQLite transaction if none is open.
    pub(crate) async fn begin(&self) -> Result<Member, StoreError> {
        let mut guard = Arc::clone(&self.group).lock_owned().await;
        settle(&mut guard).await;
        if guard.open.is_none() {
            guard.open = Some(Open {
                tx: self.pool.begin().await?,
                members: 0,
                abandoned: false,
                outcome: Arc::new(OnceLock::new()),
            });
        }
        let mut member = Member {
            group: Arc::clone(&self.group),
            guard: Some(guard),
        };
        sqlx::query(&format!("SAVEPOINT {SAVEPOINT}"))
            .execute(member.connection()?)
            .await?;
        Ok(member)
    }

    /// Runs one statement as a member of its own.
    pub(crate) async fn execute<'q>(
        &self,
        query: sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>,
    ) -> Result<SqliteQueryResult, StoreError> {
        let mut member = self.begin().await?;
        let done = query.execute(member.connection()?).await?;
        member.commit().await?;
        Ok(done)
    }
}

/// One command's transaction: a savepoint in the writer's SQLite transaction, holding the
/// writer until it commits or rolls back.
#[derive(Debug)]
pub(crate) struct Member {
    group: Arc<Mutex<Group>>,
    /// The writer, held for the member's life; `None` once it ended.
    guard: Option<OwnedMutexGuard<Group>>,
}

impl Member {
    /// The writer connection, inside this member's savepoint.
    pub(crate) fn connection(&mut self) -> Result<&mut SqliteConnection, StoreError> {
        self.guard
            .as_mut()
            .and_then(|guard| guard.open.as_mut())
            .map(|open| &mut *open.tx)
            .ok_or_else(|| StoreError::Corrupt("a transaction was used after it ended".into()))
    }

    /// Releases the savepoint into the group and returns once the group committed.
    pub(crate) async fn commit(mut self) -> Result<(), StoreError> {
        let Some(mut guard) = self.guard.take() else {
            return Err(StoreError::Corrupt("a transaction ended twice".into()));
        };
        let released = match guard.open.as_mut() {
            Some(open) => sqlx::query(&format!("RELEASE {SAVEPOINT}"))
                .execute(&mut *open.tx)
                .await
                .map(|_| ()),
            None => return Err(StoreError::Corrupt("a member outlived its group".into())),
        };
        if let Err(error) = released {
            // Only a dead SQLite transaction refuses to release a savepoint.
            fail_group(&mut guard, &error.to_string()).await;
            return Err(error.into());
        }
        let Some(open) = guard.open.as_mut() else {
            return Err(StoreError::Corrupt("a member outlived its group".into()));
        };
        open.members += 1;
        let outcome = Arc::clone(&open.outcome);
        let full = open.members >= GROUP_COUNT_MAX;
        self.await_group(guard, outcome, full).await
    }

    /// Undoes this member's savepoint; the group goes on without it. What the member read may
    /// include the uncommitted writes of the members before it (an idempotency record to
    /// replay, a webhook delivery already recorded, stock another command moved), so when there
    /// are any, the rollback returns only once they committed, and fails if they did not: an
    /// answer derived from them must not reach a client before they are durable.
    pub(crate) async fn rollback(mut self) -> Result<(), StoreError> {
        let Some(mut guard) = self.guard.take() else {
            return Ok(());
        };
        if let Some(open) = guard.open.as_mut() {
            open.abandoned = true;
        }
        undo_abandoned(&mut guard).await;
        match guard.open.as_ref() {
            Some(open) if open.members > 0 => {
                let outcome = Arc::clone(&open.outcome);
                self.await_group(guard, outcome, false).await
            }
            _ => {
                settle(&mut guard).await;
                Ok(())
            }
        }
    }

    /// Waits until the open group ends and returns its outcome: lets the commands queued
    /// meanwhile join (unless the group is `full`), then commits the group if nobody else has.
    async fn await_group(
        &self,
        mut guard: OwnedMutexGuard<Group>,
        outcome: Arc<OnceLock<Result<(), String>>>,
        full: bool,
    ) -> Result<(), StoreError> {
        if !full {
            // The commands queued meanwhile are ahead of us now, and join the group.
            drop(guard);
            guard = Arc::clone(&self.group).lock_owned().await;
        }
        if outcome.get().is_none() {
            // Nobody ended the group since: it is still ours, and everyone queued before us
            // is in it.
            commit_group(&mut guard).await;
        }
        drop(guard);
        match outcome.get() {
            Some(Ok(())) => Ok(()),
            Some(Err(error)) => Err(StoreError::CommitFailed(error.clone())),
            None => Err(StoreError::Corrupt(
                "a group ended without an outcome".into(),
            )),
        }
    }
}

impl Drop for Member {
    /// A member dropped half-way (its task was cancelled, or an error returned early) must not
    /// leave its writes in the group: mark its savepoint abandoned, and roll it back now on a
    /// task of its own, so that the writer is free again for work outside the group.
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        if let Some(open) = guard.open.as_mut() {
            open.abandoned = true;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { settle(&mut guard).await });
        }
        // Without a runtime, the next member to take the writer settles it first.
    }
}

/// Rolls back an abandoned savepoint, and ends the SQLite transaction when no member is in it,
/// which gives the writer connection back to the pool.
async fn settle(guard: &mut OwnedMutexGuard<Group>) {
    undo_abandoned(guard).await;
    if let Some(open) = guard.open.take_if(|open| open.members == 0) {
        let _ = open.outcome.set(Ok(()));
        if let Err(error) = open.tx.rollback().await {
            tracing::warn!(%error, "an empty SQLite transaction did not roll back");
        }
    }
}

/// Rolls back the savepoint of a member that was dropped half-way, if there is one.
async fn undo_abandoned(guard: &mut OwnedMutexGuard<Group>) {
    let Some(open) = guard.open.as_mut().filter(|open| open.abandoned) else {
        return;
    };
    let mut undone = sqlx::query(&format!("ROLLBACK TO {SAVEPOINT}"))
        .execute(&mut *open.tx)
        .await;
    if undone.is_ok() {
        undone = sqlx::query(&format!("RELEASE {SAVEPOINT}"))
            .execute(&mut *open.tx)
            .await;
    }
    match undone {
        Ok(_) => open.abandoned = false,
        Err(error) => fail_group(guard, &error.to_string()).await,
    }
}

/// Commits the group and tells every member how it went.
async fn commit_group(guard: &mut OwnedMutexGuard<Group>) {
    undo_abandoned(guard).await;
    let Some(open) = guard.open.take() else {
        return;
    };
    let outcome = open.tx.commit().await.map_err(|error| error.to_string());
    if let Err(error) = &outcome {
        tracing::error!(%error, members = open.members, "a group commit failed; its members roll back");
    }
    let _ = open.outcome.set(outcome);
}

/// Rolls the whole group back after its SQLite transaction broke; every member fails.
async fn fail_group(guard: &mut OwnedMutexGuard<Group>, error: &str) {
    let Some(open) = guard.open.take() else {
        return;
    };
    let _ = open.outcome.set(Err(error.to_owned()));
    if let Err(error) = open.tx.rollback().await {
        tracing::warn!(%error, "a broken SQLite transaction did not roll back");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    use super::*;

    /// A writer over a fresh file with a parent and a child table, foreign keys enforced.
    async fn writer(dir: &tempfile::TempDir) -> Writer {
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("group.db"))
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("open");
        sqlx::query(
            "CREATE TABLE parent (id INTEGER PRIMARY KEY); \
             CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER NOT NULL REFERENCES parent (id))",
        )
        .execute(&pool)
        .await
        .expect("schema");
        Writer::new(pool)
    }

    /// A member that rolls back after reading the uncommitted write of a member before it in
    /// its group fails when the group's commit fails, as that member's commit does: an answer
    /// derived from writes that never became durable must not reach a client.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_group_fails_the_members_that_read_it() {
        let dir = tempfile::tempdir().expect("dir");
        let writer = writer(&dir).await;
        let mut first = writer.begin().await.expect("begin");
        // A foreign key checked only at commit: the group's COMMIT fails.
        sqlx::query(
            "PRAGMA defer_foreign_keys = ON; INSERT INTO child (id, parent) VALUES (1, 99)",
        )
        .execute(first.connection().expect("connection"))
        .await
        .expect("insert");
        let second = tokio::spawn({
            let writer = writer.clone();
            async move {
                let mut second = writer.begin().await.expect("begin");
                let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM child")
                    .fetch_one(second.connection().expect("connection"))
                    .await
                    .expect("read");
                assert_eq!(seen, 1, "the member before it in the group is visible");
                second.rollback().await
            }
        });
        // Let the second member queue for the writer, so that it joins this group.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let committed = first.commit().await;
        assert!(
            matches!(committed, Err(StoreError::CommitFailed(_))),
            "the group's commit fails: {committed:?}"
        );
        let rolled_back = second.await.expect("task");
        assert!(
            matches!(rolled_back, Err(StoreError::CommitFailed(_))),
            "the member that read it fails too: {rolled_back:?}"
        );
        // Nothing of the group is stored, and the writer works again.
        let mut third = writer.begin().await.expect("begin");
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM child")
            .fetch_one(third.connection().expect("connection"))
            .await
            .expect("read");
        assert_eq!(left, 0);
        third.commit().await.expect("commit");
    }

    /// A member that rolls back alone (no member before it in the group) returns at once and
    /// leaves the writer free.
    #[tokio::test]
    async fn a_lone_rollback_ends_the_sqlite_transaction() {
        let dir = tempfile::tempdir().expect("dir");
        let writer = writer(&dir).await;
        let mut member = writer.begin().await.expect("begin");
        sqlx::query("INSERT INTO parent (id) VALUES (1)")
            .execute(member.connection().expect("connection"))
            .await
            .expect("insert");
        member.rollback().await.expect("rollback");
        assert!(writer.group.lock().await.open.is_none());
        let done = writer
            .execute(sqlx::query("INSERT INTO parent (id) VALUES (1)"))
            .await
            .expect("insert again");
        assert_eq!(done.rows_affected(), 1);
    }
}
