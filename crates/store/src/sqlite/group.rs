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
        if open.members < GROUP_COUNT_MAX {
            // Let the commands queued meanwhile join; they are ahead of us now.
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

    /// Undoes this member's savepoint; the group goes on without it.
    pub(crate) async fn rollback(mut self) -> Result<(), StoreError> {
        let Some(mut guard) = self.guard.take() else {
            return Ok(());
        };
        if let Some(open) = guard.open.as_mut() {
            open.abandoned = true;
        }
        settle(&mut guard).await;
        Ok(())
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
