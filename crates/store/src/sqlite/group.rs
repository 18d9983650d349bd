//! Group commit on SQLite's single writer: many commands' transactions share one SQLite
//! transaction, and so one wait for the disk.
//!
//! With `synchronous=FULL` every SQLite commit waits for the disk to confirm the write-ahead
//! log (about a millisecond or more), and with one writer that caps the store at some hundreds
//! of commits a second however much CPU is idle. So a command's transaction is a *member*: a
//! savepoint inside the writer's open SQLite transaction. Committing a member releases its
//! savepoint and waits for the group's outcome without holding the writer. The first member to
//! commit into a group queues a *committer* for the writer, behind the commands that were
//! waiting meanwhile; those join the same SQLite transaction, and when the committer reaches the
//! head of the queue it commits the whole group and tells every member at once. The committer
//! is a task of its own, so a caller that gives up waiting cannot leave a group uncommitted, and
//! the writer passes from command to command once per command, not once more to hand out the
//! outcome. Rolling a member back (or dropping it) undoes its savepoint alone.
//!
//! Passing the writer from task to task costs more than many a member's statements: the next
//! holder waits for the runtime to run it. So work whose statements are all known before it
//! takes the writer is a *job* ([`Writer::run`]): it queues, and whoever takes the writer next
//! runs every queued job, each a member in a savepoint of its own, before its own work.
//!
//! A group's `COMMIT` only writes its pages to the write-ahead log; the wait for the disk to
//! confirm them (the flush) comes after, with the writer free again, so the next group's
//! members run their statements meanwhile instead of queueing behind the disk (see
//! [`Durability`]). Members learn their group's outcome only once the log is flushed, and no
//! reader takes a snapshot while a group is committed but not yet flushed.
//!
//! What a command relies on is unchanged: its writes are atomic, readers see them only once
//! they are durable, and a commit that returned is durable. A member sees the writes of the
//! members before it in its group; it commits with them or fails with them.

use std::collections::VecDeque;
use std::sync::{Arc, PoisonError};

use rusqlite::Connection;
use std::time::Instant;

use tokio::sync::{Mutex, OwnedMutexGuard, oneshot, watch};

pub(crate) use super::durability::{Durability, begin_snapshot};
#[cfg(test)]
use super::sql::Query;
use crate::StoreError;

/// Members committed by one SQLite transaction at most, unless the group before it is still
/// being flushed (then its committer, waiting for that flush, commits it). Bounds how long the
/// first member of a group waits for the others and how much one failed commit takes down
/// with it.
pub const GROUP_COUNT_MAX: u32 = 256;

/// The statements that frame members and groups. Members run one at a time, so one savepoint
/// level is ever open, under one name.
const BEGIN: &str = "BEGIN";
const SAVEPOINT: &str = "SAVEPOINT tally_member";
const RELEASE: &str = "RELEASE tally_member";
const ROLLBACK_TO: &str = "ROLLBACK TO tally_member";
const COMMIT: &str = "COMMIT";
const ROLLBACK: &str = "ROLLBACK";

/// What a member's commit fails with when SQLite itself ended the group's transaction.
const TRANSACTION_LOST: &str = "SQLite rolled back the whole transaction after an error";

/// Runs one of the framing statements, prepared once: they run several times per command.
pub(super) fn frame(connection: &Connection, statement: &str) -> Result<(), rusqlite::Error> {
    connection.prepare_cached(statement)?.execute([])?;
    Ok(())
}

/// The store's single writer connection, shared by group commit.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    group: Arc<Mutex<Group>>,
    /// Jobs waiting for whoever holds the writer next (see [`Writer::run`]).
    queue: Arc<std::sync::Mutex<VecDeque<Queued>>>,
}

/// Work whose statements are all known before it takes the writer: it runs on the writer
/// connection inside a savepoint of its own and answers whether to keep what it wrote.
pub(crate) type Job = Box<dyn FnOnce(&Connection) -> Result<bool, StoreError> + Send>;

/// A job in the queue, with where to say what became of it.
struct Queued {
    job: Job,
    ran: oneshot::Sender<Ran>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued").finish_non_exhaustive()
    }
}

/// What became of a queued job.
enum Ran {
    /// Released into the group: it commits with it.
    Kept(watch::Receiver<Outcome>),
    /// Undone. When members were before it in the group, its answer may rest on their writes,
    /// so it waits for their outcome too.
    Undone(Option<watch::Receiver<Outcome>>),
    /// Failed, perhaps on what the writes before it wrote: with their outcome, to wait for.
    Failed(StoreError, Option<watch::Receiver<Outcome>>),
}

#[derive(Debug)]
struct Group {
    connection: Connection,
    open: Option<Open>,
    /// Numbers the SQLite transactions, so that a committer knows its own.
    generation: u64,
    durability: Arc<Durability>,
    /// The outcome of the last group whose `COMMIT` succeeded: until it is flushed, what the
    /// writer reads may rest on writes not yet durable.
    committed: Option<watch::Receiver<Outcome>>,
}

/// What a group's commit came to: `None` until whoever ends the transaction sets it.
type Outcome = Option<Result<(), String>>;

/// The writer's open SQLite transaction.
#[derive(Debug)]
struct Open {
    /// Members released into the transaction, waiting for it to commit.
    members: u32,
    /// A member was dropped without ending: its savepoint must be rolled back before anything
    /// else runs in the transaction.
    abandoned: bool,
    /// What the group's commit came to, sent once by whoever ends the transaction.
    outcome: watch::Sender<Outcome>,
    generation: u64,
}

impl Open {
    fn end(self, outcome: Result<(), String>) {
        self.outcome.send_replace(Some(outcome));
    }
}

impl Writer {
    /// The writer over `connection`, which must run with `synchronous=NORMAL` (see
    /// [`Durability`]).
    pub(crate) fn new(connection: Connection, durability: Arc<Durability>) -> Self {
        Self {
            group: Arc::new(Mutex::new(Group {
                connection,
                open: None,
                generation: 0,
                durability,
                committed: None,
            })),
            queue: Arc::default(),
        }
    }

    /// Runs `job` like [`Writer::run`] and returns its answer once its group committed; the job
    /// answers whether to keep its writes, and what to return.
    pub(crate) async fn answer<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Connection) -> Result<(bool, T), StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let answer = Arc::new(std::sync::Mutex::new(None));
        let slot = Arc::clone(&answer);
        self.run(Box::new(move |connection| {
            let (keep, value) = job(connection)?;
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
            Ok(keep)
        }))
        .await?;
        let value = answer.lock().unwrap_or_else(PoisonError::into_inner).take();
        value.ok_or_else(|| StoreError::Corrupt("a queued job did not run".into()))
    }

    /// Runs `job` as a member of its own and returns, once its group committed, whether it
    /// kept its writes. The job queues, and whoever takes the writer next runs every queued
    /// job back to back, each in its own savepoint, before its own work: one hold of the
    /// writer for them all, where members each taking it would pass it from task to task,
    /// tens of microseconds each time, while the next holder waits for the runtime to run it.
    pub(crate) async fn run(&self, job: Job) -> Result<bool, StoreError> {
        let (sender, mut ran) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(Queued { job, ran: sender });
        let ran = tokio::select! {
            biased;
            ran = &mut ran => ran,
            mut guard = Held::lock(Arc::clone(&self.group)) => {
                // Queued before the writer was taken, so run by now or by this drain.
                self.drain(&mut guard);
                drop(guard);
                ran.await
            }
        };
        let ran = ran.map_err(|_| StoreError::CommitFailed("a queued job was dropped".into()))?;
        match ran {
            Ran::Kept(outcome) => outcome_of(outcome).await.map(|()| true),
            Ran::Undone(Some(outcome)) => outcome_of(outcome).await.map(|()| false),
            Ran::Undone(None) => Ok(false),
            Ran::Failed(error, before) => {
                if let Some(before) = before {
                    outcome_of(before).await?;
                }
                Err(error)
            }
        }
    }

    /// Runs every queued job, in the order they queued.
    fn drain(&self, guard: &mut Held) {
        loop {
            let next = self
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_front();
            let Some(Queued { job, ran }) = next else {
                return;
            };
            let outcome = run_job(guard, &self.group, job);
            // A caller that gave up waiting leaves the job as it ran, like a member whose
            // caller stopped waiting for its commit.
            let _ = ran.send(outcome);
        }
    }

    /// Begins a member: waits for the writer, opening a SQLite transaction if none is open.
    pub(crate) async fn begin(&self) -> Result<Member, StoreError> {
        let mut guard = Held::lock(Arc::clone(&self.group)).await;
        self.drain(&mut guard);
        enter(&mut guard)?;
        Ok(Member {
            group: Arc::clone(&self.group),
            guard: Some(guard),
        })
    }

    /// Runs one statement as a member of its own; the number of rows it changed.
    #[cfg(test)]
    pub(crate) async fn execute(&self, query: Query<'_>) -> Result<u64, StoreError> {
        let member = self.begin().await?;
        let changed = query.execute(member.connection()?)?;
        member.commit().await?;
        Ok(changed)
    }
}

/// One command's transaction: a savepoint in the writer's SQLite transaction, holding the
/// writer until it commits or rolls back.
#[derive(Debug)]
pub(crate) struct Member {
    group: Arc<Mutex<Group>>,
    /// The writer, held for the member's life; `None` once it ended.
    guard: Option<Held>,
}

impl super::sql::OnSqlite for Member {
    fn connection(&self) -> Result<&Connection, StoreError> {
        Member::connection(self)
    }
}

impl Member {
    /// The writer connection, inside this member's savepoint.
    pub(crate) fn connection(&self) -> Result<&Connection, StoreError> {
        let guard = self
            .guard
            .as_ref()
            .filter(|guard| guard.open.is_some())
            .ok_or_else(|| StoreError::Corrupt("a transaction was used after it ended".into()))?;
        if guard.connection.is_autocommit() {
            // SQLite ended the whole transaction (a full disk, an I/O error, `OR ROLLBACK`):
            // a statement now would commit on its own, outside the group.
            return Err(StoreError::CommitFailed(TRANSACTION_LOST.into()));
        }
        Ok(&guard.connection)
    }

    /// Releases the savepoint into the group and returns once the group committed.
    pub(crate) async fn commit(mut self) -> Result<(), StoreError> {
        let Some(mut guard) = self.guard.take() else {
            return Err(StoreError::Corrupt("a transaction ended twice".into()));
        };
        if guard.open.is_none() {
            return Err(StoreError::Corrupt("a member outlived its group".into()));
        }
        let outcome = join(&mut guard, &self.group)?;
        drop(guard);
        outcome_of(outcome).await
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
        // With members before it in the group, its answer may rest on their writes: it waits
        // for the group's outcome, which their committer (queued already) delivers, or which
        // undoing this savepoint delivers at once if the SQLite transaction broke.
        let outcome = undo(&mut guard);
        drop(guard);
        match outcome {
            Some(outcome) => outcome_of(outcome).await,
            None => Ok(()),
        }
    }
}

/// Opens a member in the held writer: a savepoint, in a SQLite transaction opened if none is.
fn enter(guard: &mut Held) -> Result<(), StoreError> {
    settle(guard);
    guard.durability.check()?;
    if guard.open.is_none() {
        // A rollback that failed earlier may have left SQLite inside a transaction.
        end_transaction(&guard.connection);
        frame(&guard.connection, BEGIN)?;
        guard.generation += 1;
        guard.open = Some(Open {
            members: 0,
            abandoned: false,
            outcome: watch::Sender::new(None),
            generation: guard.generation,
        });
    }
    if let Err(error) = frame(&guard.connection, SAVEPOINT) {
        // Nothing of this member exists yet; the group goes on without it.
        settle(guard);
        return Err(error.into());
    }
    Ok(())
}

/// Releases the open member's savepoint into the group; what the group's commit comes to.
fn join(
    guard: &mut Held,
    group: &Arc<Mutex<Group>>,
) -> Result<watch::Receiver<Outcome>, StoreError> {
    if guard.open.is_none() {
        return Err(StoreError::Corrupt("a member outlived its group".into()));
    }
    if guard.connection.is_autocommit() {
        fail_group(guard, TRANSACTION_LOST);
        return Err(StoreError::CommitFailed(TRANSACTION_LOST.into()));
    }
    if let Err(error) = frame(&guard.connection, RELEASE) {
        // Only a dead SQLite transaction refuses to release a savepoint.
        fail_group(guard, &error.to_string());
        return Err(error.into());
    }
    let Some(open) = guard.open.as_mut() else {
        return Err(StoreError::Corrupt("a member outlived its group".into()));
    };
    open.members += 1;
    let outcome = open.outcome.subscribe();
    if open.members >= GROUP_COUNT_MAX {
        commit_full_group(guard);
    } else if open.members == 1 {
        // The first member in: it queues the group's committer.
        let (group, generation) = (Arc::clone(group), open.generation);
        let durability = Arc::clone(&guard.durability);
        tokio::spawn(async move {
            // Waits for the group before to be flushed, then queues behind the commands
            // waiting now: they join the group meanwhile.
            let flushing = durability.flushing.lock().await;
            let guard = Held::lock(group).await;
            if guard
                .open
                .as_ref()
                .is_some_and(|open| open.generation == generation)
            {
                commit_group(guard).await;
            }
            drop(flushing);
        });
    }
    Ok(outcome)
}

/// Runs a queued job as a member: kept in the group, or undone.
fn run_job(guard: &mut Held, group: &Arc<Mutex<Group>>, job: Job) -> Ran {
    if let Err(error) = enter(guard) {
        return Ran::Failed(error, None);
    }
    let kept = match job(&guard.connection) {
        Ok(kept) => kept,
        Err(error) => {
            let before = undo(guard);
            return Ran::Failed(error, before);
        }
    };
    if !kept {
        return Ran::Undone(undo(guard));
    }
    match join(guard, group) {
        Ok(outcome) => Ran::Kept(outcome),
        Err(error) => Ran::Failed(error, None),
    }
}

/// Undoes the open member's savepoint. With members before it in the group, what it read may
/// rest on their writes: then the group's outcome, to wait for. Without, it may rest on the
/// group committed before, which may not be flushed yet: then that group's outcome.
fn undo(guard: &mut Held) -> Option<watch::Receiver<Outcome>> {
    let outcome = guard
        .open
        .as_ref()
        .filter(|open| open.members > 0)
        .map(|open| open.outcome.subscribe());
    if guard.connection.is_autocommit() {
        fail_group(guard, TRANSACTION_LOST);
    } else if let Some(open) = guard.open.as_mut() {
        open.abandoned = true;
    }
    undo_abandoned(guard);
    if outcome.is_none() {
        settle(guard);
    }
    outcome.or_else(|| {
        guard
            .committed
            .clone()
            .filter(|committed| committed.borrow().is_none())
    })
}

/// Waits until the group ends and returns its outcome.
async fn outcome_of(mut outcome: watch::Receiver<Outcome>) -> Result<(), StoreError> {
    let ended = outcome.wait_for(Option::is_some).await;
    match ended.as_deref() {
        Ok(Some(Ok(()))) => Ok(()),
        Ok(Some(Err(error))) => Err(StoreError::CommitFailed(error.clone())),
        Ok(None) | Err(_) => Err(StoreError::CommitFailed(
            "the group ended without an outcome".into(),
        )),
    }
}

impl Drop for Member {
    /// A member dropped half-way (its task was cancelled, or an error returned early) must not
    /// leave its writes in the group: its savepoint is rolled back at once, and the SQLite
    /// transaction ended if no member is in it, so that the writer is free again.
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        if let Some(open) = guard.open.as_mut() {
            open.abandoned = true;
        }
        settle(&mut guard);
    }
}

/// The writer, held: reports how long it was held, so that an operator sees how busy the
/// single writer is (the sum of `tally_sqlite_writer_hold_seconds` against wall time).
#[derive(Debug)]
struct Held {
    guard: OwnedMutexGuard<Group>,
    since: Instant,
}

impl Held {
    async fn lock(group: Arc<Mutex<Group>>) -> Self {
        let guard = group.lock_owned().await;
        Self {
            guard,
            since: Instant::now(),
        }
    }
}

impl std::ops::Deref for Held {
    type Target = Group;

    fn deref(&self) -> &Group {
        &self.guard
    }
}

impl std::ops::DerefMut for Held {
    fn deref_mut(&mut self) -> &mut Group {
        &mut self.guard
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        metrics::histogram!("tally_sqlite_writer_hold_seconds")
            .record(self.since.elapsed().as_secs_f64());
    }
}

/// Rolls back an abandoned savepoint, and ends the SQLite transaction when no member is in it.
fn settle(group: &mut Group) {
    undo_abandoned(group);
    if let Some(open) = group.open.take_if(|open| open.members == 0) {
        open.end(Ok(()));
        if let Err(error) = frame(&group.connection, ROLLBACK) {
            tracing::warn!(%error, "an empty SQLite transaction did not roll back");
        }
    }
}

/// Rolls back the savepoint of a member that was dropped half-way, if there is one.
fn undo_abandoned(group: &mut Group) {
    if !group.open.as_ref().is_some_and(|open| open.abandoned) {
        return;
    }
    let undone =
        frame(&group.connection, ROLLBACK_TO).and_then(|()| frame(&group.connection, RELEASE));
    match undone {
        Ok(()) => {
            if let Some(open) = group.open.as_mut() {
                open.abandoned = false;
            }
        }
        Err(error) => fail_group(group, &error.to_string()),
    }
}

/// Commits the group, lets go of the writer, flushes the log and tells every member how it
/// went. The caller holds `flushing`.
async fn commit_group(mut guard: Held) {
    let durability = Arc::clone(&guard.durability);
    // Readers that began their snapshot before this finish beginning it; no reader begins one
    // from here until the log is flushed. Readers begin theirs without waiting on anything,
    // so holding the writer meanwhile is brief.
    let visible = durability.visible.write().await;
    let Some((open, committed)) = commit_statement(&mut guard) else {
        return;
    };
    drop(guard);
    let outcome = match committed {
        Ok(()) => Arc::clone(&durability).flush_aside().await,
        Err(error) => Err(error),
    };
    drop(visible);
    open.end(outcome);
}

/// Commits a group that reached [`GROUP_COUNT_MAX`] members from inside its last member's
/// commit, flushing the log with the writer held, unless the group before it is still being
/// flushed: then this group's committer, waiting for that flush, commits it.
fn commit_full_group(group: &mut Group) {
    let durability = Arc::clone(&group.durability);
    let (Ok(_flushing), Ok(_visible)) = (
        durability.flushing.try_lock(),
        durability.visible.try_write(),
    ) else {
        return;
    };
    let Some((open, committed)) = commit_statement(group) else {
        return;
    };
    open.end(committed.and_then(|()| durability.flush()));
}

/// Runs the group's `COMMIT`, which writes its pages to the log without waiting for the disk;
/// the ended group and what its `COMMIT` came to, `None` when no group was open.
fn commit_statement(group: &mut Group) -> Option<(Open, Result<(), String>)> {
    undo_abandoned(group);
    let open = group.open.take()?;
    if let Err(error) = group.durability.check() {
        end_transaction(&group.connection);
        return Some((open, Err(error.to_string())));
    }
    let started = Instant::now();
    // The commit runs on this runtime thread, as statements do: it only writes to the
    // operating system's cache. The wait for the disk is the flush, off the writer.
    let outcome = frame(&group.connection, COMMIT).map_err(|error| error.to_string());
    metrics::histogram!("tally_sqlite_group_commit_seconds")
        .record(started.elapsed().as_secs_f64());
    metrics::histogram!("tally_sqlite_group_members").record(f64::from(open.members));
    match &outcome {
        Ok(()) => group.committed = Some(open.outcome.subscribe()),
        Err(error) => {
            tracing::error!(%error, members = open.members, "a group commit failed; its members roll back");
            // A refused COMMIT (a deferred constraint, a full disk) leaves the transaction open.
            end_transaction(&group.connection);
        }
    }
    Some((open, outcome))
}

/// Rolls the whole group back after its SQLite transaction broke; every member fails.
fn fail_group(group: &mut Group, error: &str) {
    let Some(open) = group.open.take() else {
        return;
    };
    open.end(Err(error.to_owned()));
    end_transaction(&group.connection);
}

/// Rolls back whatever transaction is still open on the writer.
pub(super) fn end_transaction(connection: &Connection) {
    if !connection.is_autocommit()
        && let Err(error) = frame(connection, ROLLBACK)
    {
        tracing::warn!(%error, "a broken SQLite transaction did not roll back");
    }
}

#[cfg(test)]
mod tests;
